"""Whole-article benchmark (issue 16): encoder + decoder on one long article, Hugging Face against srsum.

    python benchmarks/whole_article.py                                  # full grid (long: see docs/BENCHMARKS.md)
    python benchmarks/whole_article.py --families t5-small --lengths 16384 --beams 1
    python benchmarks/whole_article.py --lengths 1024,4096 --json docs/benchmarks/whole_article.json

For each model shape (random weights), input length n (batch 1) and system, one process builds the
model, encodes one article of n random tokens, then decodes ``--max-new-tokens`` tokens (EOS banned until
then) greedily and with each beam count from that encoder output, each after a 2-token warm-up decode at the
same beam count (so a decode's peak holds the weight copies it reads, not an earlier one's). Systems, same
weights:

* ``hf``: the unconverted model; Hugging Face's encoder and ``generate`` (what users run today). Skipped as
  "does not fit" when its encoder's n x n tensors are estimated above ``--hf-limit-gb``.
* ``full``, ``srformer``: srsum (``convert`` with that cross-attention, the blocked encoder of
  ``srsum.engine.encoder`` with ``--encoder-block``, and ``srsum.decoding.generate``).
* ``ctranslate2`` (issue 13; ``pip install -e .[bench]``): the same random model converted to CTranslate2
  (``benchmarks/ct2_peer.py``), float32, ``Translator(inter_threads=1, intra_threads=--threads)``, fed the
  same n token ids. It decodes all ``--max-new-tokens`` ("total s"), EOS banned until then. It cannot hand
  back encoder outputs, so its "encoder s" is encoder + cross-attention keys/values + 1 step: greedy, the
  time to its first per-step callback in that same run; with beams (no callback), a separate 1-token decode
  (one run: noisy). "decode s" is the difference. Its peak RSS holds the converted model (the PyTorch one is
  freed). Reported as "skipped: ctranslate2 not installed" where the package is not importable.

Figures per cell: encoder seconds, decode seconds, total (their sum: what ``generate`` from token ids
does), and peak memory: the process's resident high-water mark (Linux VmHWM, model weights included),
reset before the encoder and before each decode, so a beam setting's peak is max(encoder, its decode).
Timing is one run per cell (no repeats: a 16k encoder takes minutes on a 2-core machine); the load average
at the start of each cell is recorded, since other processes share the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BART_BASE, T5_SMALL, machine, markdown_table, random_model  # noqa: E402

SYSTEMS = ("hf", "full", "srformer", "ctranslate2", "ctranslate2-int8")
CT2_COMPUTE = {"ctranslate2": "float32", "ctranslate2-int8": "int8"}


def parse_list(text: str, cast=int) -> list:
    return [cast(item) for item in str(text).split(",") if item]


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak() -> None:
    """Start the RSS high-water mark afresh (Linux clear_refs 5)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmHWM:"))


def hf_square_bytes(model_name: str, n: int) -> int:
    """Estimated n x n bytes of Hugging Face's encoder on one unpadded article (float32). T5: the relative
    position bias (1, H, n, n), kept for every layer, plus sdpa's contiguous copy of it per layer (x 2);
    BART without padding: sdpa gets no mask and runs its flash kernel, nothing n x n."""
    if model_name.startswith("t5"):
        return 2 * T5_SMALL["num_heads"] * n * n * 4
    return 0 * BART_BASE["encoder_attention_heads"]


def build(cell: dict):
    from srsum.engine import convert
    from srsum.precision import cast_model

    model = random_model(cell["model"])
    if cell["system"] != "hf":
        model = convert(model, cell["system"], seg_size=cell["seg_size"], schedule_length=cell["max_new_tokens"],
                        encoder_block=cell["encoder_block"]).eval()
    return cast_model(model, cell.get("dtype", "float32"))


def run_ct2_cell(cell: dict) -> list[dict]:
    """CTranslate2 (see the module docstring): per beam count a 1-token decode, then the whole decode."""
    import ct2_peer

    gen = torch.Generator().manual_seed(0)
    n, tokens = cell["n"], cell["max_new_tokens"]
    ids = torch.randint(3, 1000, (1, n), generator=gen)
    with ct2_peer.converted(random_model(cell["model"])) as (folder, vocabulary):
        model = ct2_peer.translator(folder, "cpu", CT2_COMPUTE[cell["system"]], cell.get("threads"))
        source = vocabulary.tokens(ids)
        ct2_peer.decode(model, [source[0][:520]], max(cell["beams"]), 2)  # warm up (short: not the encoder's n^2)
        baseline = rss_bytes()
        rows = []
        for beams in cell["beams"]:
            reset_peak()
            stamps: list = []  # greedy: the end of each step, so the encoder's share comes from the same run
            start = time.perf_counter()
            total_s = ct2_peer.decode(model, source, beams, tokens, stamps)
            first_s = stamps[0] - start if stamps else ct2_peer.decode(model, source, beams, 1)
            peak = peak_rss_bytes()
            rows.append(dict(cell, beams=beams, encoder_s=first_s, decode_s=total_s - first_s, total_s=total_s,
                             peak_mb=peak / 2**20, model_rss_mb=baseline / 2**20,
                             tokens_per_s=tokens / (total_s - first_s)))
    return rows


def run_cell(cell: dict) -> list[dict]:
    """One (model, n, system) in this process: the encoder once, then one decode per beam count."""
    if cell["system"] in CT2_COMPUTE:
        return run_ct2_cell(cell)
    from transformers.modeling_outputs import BaseModelOutput

    from srsum.decoding import generate

    if cell.get("threads"):
        torch.set_num_threads(cell["threads"])
    model = build(cell)
    gen = torch.Generator().manual_seed(0)
    n, tokens = cell["n"], cell["max_new_tokens"]
    ids = torch.randint(3, 1000, (1, n), generator=gen)
    mask = torch.ones_like(ids)
    encoder = model.get_encoder()

    def decode(states, beams, steps):
        options = dict(num_beams=beams, max_new_tokens=steps, min_new_tokens=steps)
        valid = mask[:, :states.shape[1]]
        if cell["system"] == "hf":
            return model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=states), attention_mask=valid,
                                  do_sample=False, **options)
        return generate(model, None, valid, encoder_states=states, step="eager", **options)

    with torch.no_grad():
        warm = min(n, (cell["encoder_block"] or 512) + 8)  # the blocked path too, when it applies
        encoder(input_ids=ids[:, :warm], attention_mask=mask[:, :warm])
        baseline = rss_bytes()
        reset_peak()
        start = time.perf_counter()
        states = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        encoder_s = time.perf_counter() - start
        encoder_peak = peak_rss_bytes()
        rows = []
        for beams in cell["beams"]:
            decode(states, beams, 2)  # warm-up at this beam count (srsum: its weight copies made, others freed)
            reset_peak()
            start = time.perf_counter()
            out = decode(states, beams, tokens)
            decode_s = time.perf_counter() - start
            assert out.shape[-1] >= tokens, out.shape
            peak = max(encoder_peak, peak_rss_bytes())
            rows.append(dict(cell, beams=beams, encoder_s=encoder_s, decode_s=decode_s, total_s=encoder_s + decode_s,
                             peak_mb=peak / 2**20, encoder_peak_mb=encoder_peak / 2**20,
                             model_rss_mb=baseline / 2**20, tokens_per_s=tokens / decode_s))
    return rows


def measure(cell: dict, timeout: int) -> list[dict]:
    """Run a cell in a fresh process (its own memory high-water mark); errors and timeouts become rows."""
    failed = lambda why: [dict(cell, beams=b, skipped=why) for b in cell["beams"]]  # noqa: E731
    try:
        proc = subprocess.run([sys.executable, __file__, "--cell", json.dumps(cell)], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return failed(f"timed out after {timeout} s")
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"]
        return failed("failed: " + lines[-1][:200])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def system_formats(systems: list[str], formats: list[str]) -> list[tuple[str, str]]:
    """(system, number format) cells: each srsum system once per format, the peers in their own."""
    pairs = []
    for system in systems:
        if system == "hf" or system in CT2_COMPUTE:
            pairs.append((system, CT2_COMPUTE.get(system, "float32")))
        else:
            pairs += [(system, name) for name in formats]
    return pairs


def ctranslate2_note() -> str | None:
    """Why the ctranslate2 system is skipped, or None when it runs."""
    import ct2_peer

    return None if ct2_peer.available() else ct2_peer.NOT_INSTALLED


def label(cell: dict) -> str:
    """The system as the table names it: srsum's with its number format."""
    if cell["system"] == "hf" or cell["system"] in CT2_COMPUTE:
        return cell["system"]
    return f"{cell['system']} {cell.get('dtype', 'float32')}"


def report(cells: list[dict]) -> str:
    """One row per cell; speeds as ratios of the same (model, n, beams) cell's total of Hugging Face float32
    and of CTranslate2 int8, and peak memory as a ratio of Hugging Face's, all from this run."""
    key = ("model", "n", "beams")

    def peer(cell, system):
        return next((c for c in cells if c["system"] == system and "total_s" in c and all(c[k] == cell[k] for k in key)),
                    None)

    rows = []
    for cell in cells:
        if "skipped" in cell:
            rows.append([cell["model"], cell["n"], cell["beams"], label(cell), cell["skipped"]] + [""] * 7)
            continue
        hf, ct2 = peer(cell, "hf"), peer(cell, "ctranslate2-int8")
        ratio = (lambda other, field, mine: f"{other[field] / mine:.2f}x" if other else "-")
        memory = f"{cell['peak_mb'] / hf['peak_mb']:.2f}" if hf else "-"
        rows.append([cell["model"], cell["n"], cell["beams"], label(cell), f"{cell['encoder_s']:.1f}",
                     f"{cell['decode_s']:.1f}", f"{cell['total_s']:.1f}", f"{cell['peak_mb']:.0f}", memory,
                     ratio(hf, "total_s", cell["total_s"]), ratio(ct2, "total_s", cell["total_s"]), f"{cell['load']:.1f}"])
    headers = ["model", "n", "beams", "system", "encoder s", "decode s", "total s", "peak RSS MB", "peak / hf",
               "speed vs hf", "speed vs ct2 int8", "load avg"]
    return markdown_table(headers, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default="t5-small,bart-base", help="model shapes: t5-small, bart-base")
    parser.add_argument("--lengths", default="1024,4096,16384", help="input lengths n")
    parser.add_argument("--beams", default="1,4", help="beam counts (1: greedy)")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--seg-size", type=int, default=64)
    parser.add_argument("--encoder-block", type=int, default=512, help="srsum's encoder block (0: off)")
    parser.add_argument("--hf-limit-gb", type=float, default=8.0,
                        help="skip Hugging Face where its encoder's n x n tensors would exceed this")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--dtype", default="float32",
                        help="srsum systems' number formats, comma separated: float32, bfloat16, int8, auto "
                             "(srsum.precision); hf runs float32, ctranslate2 float32, ctranslate2-int8 int8")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per (model, n, system) process")
    parser.add_argument("--json", type=Path, help="write all figures here (with the command line)")
    parser.add_argument("--cell", help=argparse.SUPPRESS)  # internal: run one cell, print JSON
    args = parser.parse_args()
    if args.cell:
        print(json.dumps(run_cell(json.loads(args.cell))))
        return
    command = "python benchmarks/whole_article.py " + " ".join(sys.argv[1:])
    print(f"machine: {machine()}\ncommand: {command}\n", flush=True)
    results = {"machine": machine(), "command": command, "cells": []}
    beams = parse_list(args.beams)
    for model_name in parse_list(args.families, str):
        for n in parse_list(args.lengths):
            for system, dtype in system_formats(parse_list(args.systems, str), parse_list(args.dtype, str)):
                cell = dict(model=model_name, n=n, system=system, beams=beams, max_new_tokens=args.max_new_tokens,
                            seg_size=args.seg_size, encoder_block=None if system == "hf" else args.encoder_block or None,
                            threads=args.threads, load=os.getloadavg()[0], dtype=dtype)
                if system in CT2_COMPUTE and ctranslate2_note():
                    rows = [dict(cell, beams=b, skipped=ctranslate2_note()) for b in beams]
                elif system == "hf" and hf_square_bytes(model_name, n) > args.hf_limit_gb * 1e9:
                    need = hf_square_bytes(model_name, n) / 1e9
                    rows = [dict(cell, beams=b, skipped=f"does not fit (~{need:.0f} GB of n x n encoder tensors "
                                 f"> {args.hf_limit_gb:g} GB)") for b in beams]
                else:
                    rows = measure(cell, args.timeout)
                for row in rows:
                    results["cells"].append(row)
                    print("  " + json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()
                                             if k in ("model", "n", "beams", "system", "encoder_s", "decode_s",
                                                      "total_s", "peak_mb", "skipped", "load")}), flush=True)
                if args.json:  # after every cell: a long run that is stopped keeps what it measured
                    args.json.write_text(json.dumps(results, indent=2))
    print()
    print(report(results["cells"]))


if __name__ == "__main__":
    main()
