"""Decode benchmark (issue 5): srsum's decoder against Hugging Face ``generate`` with full cross-attention.

    python benchmarks/decode.py                                   # CPU grid (t5-small), one run
    python benchmarks/decode.py --device cuda --dtype bfloat16 --batch 1,8,32 --models t5-small,bart-base
    python benchmarks/decode.py --systems peer,srformer --step eager,compiled     # the step both ways

Systems, same random weights: ``peer`` = Hugging Face ``generate`` on the unconverted model (ordinary
full cross-attention: what users run today); ``full``, ``segmented``, ``srformer`` = srsum's decoder
(one state per example, shared by its beams) with that cross-attention. Every cell decodes exactly
``--new-tokens`` tokens (EOS banned until then) from a random encoder output of length n; the encoder
is timed apart (batch 1: its self-attention is O(n^2) and identical for every system). On CPU each
cell runs in its own process and peak memory is the RSS high-water mark, reset just before the timed
decode (Linux ``clear_refs``), above the RSS at that moment; on CUDA peak memory is ``max_memory_allocated`` above the pre-decode level. ``--step``
picks how srsum's decoder runs a step (eager; graph: captured in a CUDA graph per decoding, which is
timed; compiled: torch.compile, whose compiling is not timed: a compiled cell first decodes once in
full untimed).

``generate`` (by name, issue 30): ``model.generate`` on the SRformer model (what a user of the Hugging Face API
runs; srsum routes it to its own decoder with the step ``auto``), timed like ``srformer``; a last table gives
its whole decode per token against srsum's ``generate`` on the same setting (target: within 5%).

``srformer-int8`` (likewise ``segmented-int8``, ``full-int8``; CPU, by name): srsum's decoder with the decode
step's linear layers quantised to int8 (``srsum.quantization``; ``srsum summarize --dtype int8``).

A second peer, CTranslate2 (issue 13; ``pip install -e .[bench]``; not in the default ``--systems``):
``ctranslate2`` (compute type = ``--dtype``) and ``ctranslate2-int8`` (int8 weights; on CPU int8_float32).
Each cell saves the same random model (same seed, same weights) with ``save_pretrained``, converts it
(``benchmarks/ct2_peer.py``: a stand-in vocabulary, BART's ``normalize_before``) and loads it as
``Translator(device, inter_threads=1, intra_threads=--threads)``. CTranslate2 cannot take encoder outputs:
it is fed random source token ids of length n (seed 0, ids 3..999) and runs its own encoder, so its step is
timed as a difference: ``ms_per_step`` = (time to decode 1+T tokens - time to decode 1) / T (T =
``--new-tokens``; min and max decoding length pinned, so EOS never ends a decode early: the hypothesis
lengths are checked; each time is the best of ``--ct2-repeats`` runs after one untimed decode), and
``decode_ms_per_token`` is the same figure. The 1-token run (``one_step_ms``: encoder + cross-attention
keys/values of every layer + 1 step) is listed in a table of its own. So CTranslate2's decode ms/token
leaves out building the cross-attention keys/values, which srsum's and the peer's include (their
``decode_ms_per_token`` covers everything after the encoder). Greedy cells also give the median interval
between CTranslate2's per-step callbacks (``ms_per_step_median``, StepClock's definition; shown in
brackets). Peak memory is that of the timed runs and includes CTranslate2's encoder (n x n scores). So the
table's "decode vs peer" and "memory vs peer" are left blank for CTranslate2; "step vs peer" compares steady
steps. Like for like, every cell also gets ``after_first_ms_per_token``, the mean time per token after the
first step (srsum and the peer: end of the decode minus the start of step 2, over T - 1; CTranslate2 greedy:
end of the decode minus its first callback, over T, which leaves its encoder out of the figure and with it
the encoder's run-to-run noise; CTranslate2 with beams, which calls back only when greedy: the difference
above). Neither side's encoder, cross-attention keys/values (srsum: state building) or first step is in it,
everything after is (srsum's RAF run-ahead windows included); the last table compares the cells on it. Where
ctranslate2 is not importable its rows say "skipped: ctranslate2 not installed" and the benchmark goes on.

Every cell first decodes once in full, untimed (kernels, allocator, CUDA graphs or compiling: the first
cell of a process pays no more than the others), then is timed: a decode of ``--new-tokens`` tokens
(``decode_ms_per_token``: everything per token, state building included), whose steps are also clocked;
``ms_per_step`` is the steady step: the median interval between the starts of consecutive steps after the
first (``StepClock``: state building and the first step drop out, and so do load spikes). ``--max-gb`` defaults to 90% of the device's memory
(CUDA: the GPU's total; CPU: MemAvailable). ``--repeats N`` runs the grid N times, round-robin (every srsum
and peer cell once, CPU: each in a fresh process, then every cell again), and gives each cell the best of its
N runs, figure by figure (``best_of``: the smallest times, the largest peak), listing every run's figures in
the JSON. Where a grid has more than one n, a last table follows each srsum setting's steady step
across n (issue 13's "flat in n"), with the spread of its runs.

``--lockstep`` (after the grid, in this process): each srsum setting is decoded at every n of the grid
together, one step of each in turn (``Turnstile``: threads that hand each other the turn at every step, so
one decoding runs at a time and each step is timed alone), ``--repeats`` rounds, each decoding with its own
copy of the model. On a shared host a slow spell lasts from a few steps to minutes: a separate decode per n
can land in one and not the other (the same batch-8 cell gave 33 to 48 ms per step in consecutive decodes of
one process), while turn about it falls on every n alike. Its table gives each round's change across n and
their median.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, random_model, sync  # noqa: E402

SYSTEMS = ("peer", "full", "segmented", "srformer")  # the default --systems
CT2_SYSTEMS = ("ctranslate2", "ctranslate2-int8")  # the second peer (issue 13): asked for by name
INT8_SYSTEMS = tuple(f"{system}-int8" for system in SYSTEMS[1:])  # srsum with int8 step linears (CPU, by name)
GENERATE_SYSTEM = "generate"  # model.generate on the srformer model (issue 30): by name


def variant_of(system: str) -> str:
    """The cross-attention variant an srsum system's model is converted to."""
    return "srformer" if system == GENERATE_SYSTEM else system.removesuffix("-int8")


def parse_list(text: str, cast=int) -> list:
    return [cast(item) for item in text.split(",") if item]


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Start the process's RSS high-water mark afresh (Linux: clear_refs 5), so that building the model
    or compiling does not count; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """The RSS high-water mark (VmHWM) since the last reset."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def estimate_gb(cell: dict, d_model: int, layers: int, head_dim: int = 64) -> float:
    """Rough peak of the biggest decode buffers: cross-attention keys/values (+ the expanded encoder);
    for srsum's segmented variants the schedule's tables (each visited segment's keys/values, the R ring)."""
    bytes_per = 2 if cell["dtype"] in ("bfloat16", "float16") else 4
    peer = cell["system"] == "peer" or cell["system"] in CT2_SYSTEMS
    rows = cell["batch"] * (cell["beams"] if peer else 1)
    encoder = rows * cell["n"] * d_model * bytes_per
    if cell["system"] in CT2_SYSTEMS:  # it runs its own encoder: n x n scores per head, one layer at a time
        scores = 2 * cell["batch"] * (d_model // head_dim) * cell["n"] ** 2 * bytes_per
        return (layers * 2 * rows * cell["n"] * d_model * bytes_per + encoder + scores) / 1e9
    if cell["system"] in ("peer", "full"):
        return (layers * 2 * rows * cell["n"] * d_model * bytes_per + encoder) / 1e9
    from srsum.engine.state import RAF_WINDOW

    groups = cell["new_tokens"] + 1  # the compiled step's fixed table size (eager: min(M, G + 1))
    table_rows = groups * cell["seg_size"]  # the local contexts; R: a ring of RAF_WINDOW + 1 per head
    tables = layers * rows * (2 * table_rows * d_model * bytes_per + (RAF_WINDOW + 1) * d_model * head_dim * 4)
    return (tables + encoder) / 1e9


def device_gb(device: str) -> float:
    """Memory a cell may use: the GPU's total memory, or the host's MemAvailable (GB)."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_properties(torch.device(device)).total_memory / 1e9
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 / 1e9
    return 8.0


def build_model(cell: dict):
    from srsum.engine import convert

    model = random_model(cell["model"], dtype=getattr(torch, cell["dtype"]), device=cell["device"])
    if cell["system"] != "peer":
        model = convert(model, variant_of(cell["system"]), seg_size=cell["seg_size"],
                        schedule_length=cell["new_tokens"]).eval()
    if cell["system"] in INT8_SYSTEMS:
        from srsum.quantization import quantize_for_decoding

        quantize_for_decoding(model)
    return model


def decoding(model, cell: dict):
    """The cell's decode as a call: ``--new-tokens`` tokens, exactly, from a random encoder output of length n
    (seed 0), by ``generate`` (the peer, and the ``generate`` system on the converted model) or srsum's decoder
    with the cell's step."""
    from transformers.modeling_outputs import BaseModelOutput

    from srsum.decoding import generate

    device = torch.device(cell["device"])
    gen = torch.Generator(device=device).manual_seed(0)
    encoder = torch.randn(cell["batch"], cell["n"], model.config.d_model, generator=gen, device=device)
    encoder = encoder.to(getattr(torch, cell["dtype"]))
    mask = torch.ones(cell["batch"], cell["n"], dtype=torch.long, device=device)
    options = dict(num_beams=cell["beams"], max_new_tokens=cell["new_tokens"], min_new_tokens=cell["new_tokens"])
    if cell["system"] in ("peer", GENERATE_SYSTEM):  # a new BaseModelOutput per call: Hugging Face's loop
        return lambda: model.generate(  # expands the one it is given in place (beams), which the next call reads
            encoder_outputs=BaseModelOutput(last_hidden_state=encoder), attention_mask=mask, do_sample=False,
            **options)
    return functools.partial(generate, model, None, mask, encoder_states=encoder, step=cell["step"], **options)


def run_cell(cell: dict, models: dict | None = None) -> dict:
    """Decode one cell in this process and return its figures (``models`` caches built models)."""
    if cell["system"] in CT2_SYSTEMS:
        return run_ct2_cell(cell)
    device = torch.device(cell["device"])
    if cell.get("threads"):
        torch.set_num_threads(cell["threads"])
    key = (cell["model"], cell["system"], cell["seg_size"], cell["new_tokens"], cell["dtype"])  # what build_model reads
    if models is None:
        model = build_model(cell)
    else:
        model = models[key] = models.get(key) or build_model(cell)
    tokens = cell["new_tokens"]
    decode = decoding(model, cell)
    with torch.no_grad():
        decode()  # warm up kernels, allocator, CUDA graphs (and compile) at the timed shapes
        sync(device)
        fresh_peak = True
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        else:
            fresh_peak = reset_peak_rss()
            before = rss_bytes()
        with StepClock(model, cell["system"]) as clock:
            start = time.perf_counter()
            out = decode()
            sync(device)
            end = time.perf_counter()
            seconds = end - start
        peak = (torch.cuda.max_memory_allocated() if device.type == "cuda" else peak_rss_bytes()) - before
    assert out.shape == (cell["batch"], tokens + 1), out.shape
    if device.type != "cuda" and not fresh_peak:
        peak = None  # the high-water mark could not be reset: model building and compiling would count
    return dict(cell, decode_s=seconds, ms_per_step=clock.steady_ms(), decode_ms_per_token=seconds / tokens * 1000,
                after_first_ms_per_token=clock.after_first_ms(end),
                total_ms_per_token=seconds / tokens * 1000,  # the name: everything after the encoder
                tokens_per_s=cell["batch"] * tokens / seconds, peak_mb=None if peak is None else max(peak, 0) / 2**20,
                bytes_per_step=bytes_per_step(model, cell))


def run_ct2_cell(cell: dict) -> dict:
    """CTranslate2 on the cell's random model (converted in a temporary folder), fed random source ids.
    Steps are timed as a difference of a 1+T-token and a 1-token decode (see the module docstring)."""
    import ct2_peer

    if not ct2_peer.available():
        return dict(cell, skipped=ct2_peer.NOT_INSTALLED)
    if cell.get("threads"):
        torch.set_num_threads(cell["threads"])
    tokens, beams, repeats = cell["new_tokens"], cell["beams"], max(1, cell.get("ct2_repeats") or 1)
    traffic = bytes_per_step(random_model(cell["model"]), cell)
    # float32 (the compute type is CTranslate2's); no reference kept: the PyTorch weights leave memory
    with ct2_peer.converted(random_model(cell["model"])) as (folder, vocabulary):
        compute = ct2_peer.compute_type(cell["system"], cell["dtype"])
        translator = ct2_peer.translator(folder, cell["device"], compute, cell.get("threads"))
        gen = torch.Generator().manual_seed(0)
        source = vocabulary.tokens(torch.randint(3, 1000, (cell["batch"], cell["n"]), generator=gen))
        ct2_peer.decode(translator, source, beams, 1 + tokens)  # warm up (untimed)
        fresh_peak = reset_peak_rss()
        before = rss_bytes()
        one, whole, gaps, after_first = [], [], [], []
        for _ in range(repeats):
            one.append(ct2_peer.decode(translator, source, beams, 1))
            stamps: list = []
            whole.append(ct2_peer.decode(translator, source, beams, 1 + tokens, stamps))
            end = time.perf_counter()
            gaps += [b - a for a, b in zip(stamps, stamps[1:])]  # steps 2..1+T (the first holds the encoder)
            if len(stamps) > 1:  # from the end of step 1 (encoder, keys/values, 1 step) to the end: T steps
                after_first.append((end - stamps[0]) / (len(stamps) - 1))
        peak = peak_rss_bytes() - before
        del translator
    gaps.sort()
    step_s = (min(whole) - min(one)) / tokens
    return dict(cell, step=compute, decode_s=step_s * tokens, ms_per_step=step_s * 1000,
                decode_ms_per_token=step_s * 1000, tokens_per_s=cell["batch"] / step_s if step_s > 0 else None,
                ms_per_step_median=gaps[len(gaps) // 2] * 1000 if gaps else None,
                # greedy: timed within one decode (callbacks), free of the encoder's run-to-run noise, which at
                # n 4k and batch 8 (a 74 s encoder) can swamp the difference of two runs; beams: the difference
                after_first_ms_per_token=min(after_first) * 1000 if after_first else step_s * 1000,
                after_first_source="callbacks" if after_first else "difference",
                one_step_ms=min(one) * 1000, whole_ms=min(whole) * 1000, encoder_ms=(min(one) - step_s) * 1000,
                peak_mb=max(peak, 0) / 2**20 if fresh_peak and cell["device"] == "cpu" else None,  # CUDA: not measured
                ct2_version=ct2_version(),
                bytes_per_step=traffic)


def ct2_version() -> str | None:
    import ctranslate2

    return getattr(ctranslate2, "__version__", None)


class StepClock:
    """Times the steps of one decoding: the start of each model call (the peer: ``model.forward``, which
    ``generate`` calls once per step; srsum: ``SharedStateDecoder.logits``, outside any compiled region).
    ``steady_ms`` is the median interval between consecutive step starts after the first step (a step and
    its search bookkeeping; state building, the first step and load spikes on a shared host drop out).
    A decoding syncs with the device at every step (both stop-checks read a flag), so the intervals are
    device time on CUDA too."""

    def __init__(self, model, system: str):
        self.model, self.system, self.starts = model, system, []

    def _timed(self, call):
        @functools.wraps(call)  # generate checks its keyword arguments against forward's signature
        def run(*args, **kwargs):
            self.starts.append(time.perf_counter())
            return call(*args, **kwargs)

        return run

    def __enter__(self):
        if self.system == "peer":
            self.model.forward = self._timed(self.model.forward)
        else:
            import srsum.decoding

            self._original = srsum.decoding.SharedStateDecoder.logits
            srsum.decoding.SharedStateDecoder.logits = self._timed(self._original)
        return self

    def __exit__(self, *exc):
        if self.system == "peer":
            del self.model.forward  # back to the class's method
        else:
            import srsum.decoding

            srsum.decoding.SharedStateDecoder.logits = self._original

    def steady_ms(self) -> float | None:
        gaps = sorted(b - a for a, b in zip(self.starts[1:], self.starts[2:]))
        return gaps[len(gaps) // 2] * 1000 if gaps else None

    def after_first_ms(self, end: float) -> float | None:
        """The mean time per token after the first step: (end of the decoding - start of step 2) / (T - 1).
        Everything a decoding does per token is in it (the RAF run-ahead windows, search bookkeeping, load
        spikes), but not what happens once before step 2 (state building or the cross-attention projection,
        and the first step): CTranslate2's per-token figure (``run_ct2_cell``) has the same definition."""
        return (end - self.starts[1]) / (len(self.starts) - 1) * 1000 if len(self.starts) > 1 else None


def bytes_per_step(model, cell: dict) -> float:
    """The memory traffic a decode step cannot avoid: decoder + LM-head weights, the cross-attention
    reads of SPEC section 10 (per example for srsum, per beam row for the peer) and the average
    decoder self-attention cache."""
    from srsum.profiling import CostShape, decode_values_read

    config = model.config
    size = torch.finfo(getattr(torch, cell["dtype"])).bits // 8
    peer = cell["system"] == "peer" or cell["system"] in CT2_SYSTEMS  # full cross-attention read per beam row
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.decoder
    head = model.get_output_embeddings().weight
    head = head() if callable(head) else head  # an int8 head keeps its weight behind a method
    weights = sum(p.numel() for p in decoder.parameters()) + head.numel()  # (int8 linears hold no parameters)
    weight_size = 1 if cell["system"] == "ctranslate2-int8" else size
    heads = getattr(config, "num_heads", None) or config.decoder_attention_heads
    layers = getattr(config, "num_decoder_layers", None) or config.decoder_layers
    head_dim = config.d_model // heads
    rows = cell["batch"] * cell["beams"]
    readers = rows if peer else cell["batch"]
    variant = "full" if peer else variant_of(cell["system"])
    shape = CostShape(n=cell["n"], m=cell["new_tokens"], seg_size=cell["seg_size"], head_dim=head_dim)
    cross = decode_values_read(variant, shape) * heads * layers * readers
    self_cache = rows * layers * 2 * (cell["new_tokens"] / 2) * config.d_model
    return float(weights * weight_size + (cross + self_cache) * size)


def encoder_seconds(model_name: str, n: int, device: str, dtype: str) -> float | None:
    """The real encoder on one example of length n (None when its O(n^2) scores would not fit)."""
    model = random_model(model_name, dtype=getattr(torch, dtype), device=device)
    heads = getattr(model.config, "num_heads", None) or model.config.encoder_attention_heads
    limit = 40e9 if device.startswith("cuda") else 6e9
    if 3 * heads * n * n * 4 > limit:
        return None
    ids = torch.randint(3, 1000, (1, n), device=device)
    with torch.no_grad():
        model.get_encoder()(input_ids=ids[:, :64])
        sync(device)
        start = time.perf_counter()
        model.get_encoder()(input_ids=ids)
        sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="t5-small")
    parser.add_argument("--n", default="1024,4096,16384")
    parser.add_argument("--batch", default="1,8")
    parser.add_argument("--beams", default="1,4")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="of: " + ", ".join(SYSTEMS + INT8_SYSTEMS
                        + (GENERATE_SYSTEM,) + CT2_SYSTEMS)
                        + " (the CTranslate2 peer, issue 13: pip install -e .[bench])")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--seg-size", default="64", help="segment size(s) s of srsum's variants (a list runs each)")
    parser.add_argument("--step", default="auto", help="srsum's decoder step(s): auto, eager, graph, compiled (a "
                        "list runs each); auto is graph on CUDA, else eager")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--max-gb", type=float, help="skip cells whose buffers would exceed this (default: 90%% "
                        "of the device's memory)")
    parser.add_argument("--no-encoder", action="store_true", help="do not time the real encoder")
    parser.add_argument("--json", type=Path, help="write all figures here")
    parser.add_argument("--threads", type=int, help="torch CPU threads, and CTranslate2's intra_threads (default: "
                        "torch's and CTranslate2's choice)")
    parser.add_argument("--ct2-repeats", type=int, default=3, help="CTranslate2: best of this many 1-token and "
                        "1+T-token decodes")
    parser.add_argument("--repeats", type=int, default=1, help="run the grid this many times, round-robin (each "
                        "srsum and peer cell once per round, in a fresh process on CPU), and keep each cell's best "
                        "figures (every round's are kept in the JSON); CTranslate2 cells run once and repeat inside "
                        "(--ct2-repeats)")
    parser.add_argument("--in-process", action="store_true", help="CPU: run every srsum and peer cell in this "
                        "process (models built once), as CUDA runs do, instead of one process per cell: cells then "
                        "share one process's state, which takes the process-to-process spread out of a comparison "
                        "across n (peak MB is then less meaningful: freed memory is reused)")
    parser.add_argument("--lockstep", action="store_true", help="after the grid, decode each srsum setting at "
                        "every n of the grid together, one step of each in turn (in this process, one decoding "
                        "running at a time), --repeats times, for a flat-in-n comparison that a slow spell on the host "
                        "hits at every n alike")
    parser.add_argument("--cell", help=argparse.SUPPRESS)  # internal: run one cell, print JSON
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cell:
        print(json.dumps(run_cell(json.loads(args.cell))))
        return
    if args.lockstep and args.new_tokens < 3:
        raise SystemExit("--lockstep needs --new-tokens of 3 or more (the steady step leaves out the first step)")
    # a bad --systems or --step: one line and exit 1, before any cell runs
    runs(parse_list(args.systems, str), parse_list(args.step, str), args.device, parse_list(args.seg_size))
    if args.max_gb is None:
        args.max_gb = 0.9 * device_gb(args.device)
    print(f"machine: {machine()}  device: {args.device}  dtype: {args.dtype}  max GB: {args.max_gb:.1f}\n",
          flush=True)
    results = {"machine": machine(), "device": args.device, "dtype": args.dtype, "cells": [], "encoder": []}
    if args.device.startswith("cuda"):
        from srsum.profiling import gpu_bandwidth_gbps

        known = gpu_bandwidth_gbps(torch.cuda.get_device_name(0))
        results["bandwidth_gbps"] = known[0] if known else None
        print(f"assumed bandwidth: {known}", flush=True)
    grid = []  # the cells to time, in order; skipped cells go straight into the results
    for model_name in parse_list(args.models, str):
        shape = random_model(model_name).config
        layers = getattr(shape, "num_decoder_layers", None) or shape.decoder_layers
        for n in parse_list(args.n):
            enc = None if args.no_encoder else encoder_seconds(model_name, n, args.device, args.dtype)
            results["encoder"].append(dict(model=model_name, n=n, batch=1, seconds=enc))
            if not args.no_encoder:
                print(f"{model_name} encoder n={n} batch 1: " + (f"{enc * 1000:.1f} ms" if enc else
                      "skipped (O(n^2) memory)"), flush=True)
            for batch in parse_list(args.batch):
                for beams in parse_list(args.beams):
                    for system, step, seg_size in runs(parse_list(args.systems, str), parse_list(args.step, str),
                                                       args.device, parse_list(args.seg_size)):
                        cell = dict(model=model_name, n=n, batch=batch, beams=beams, system=system, step=step,
                                    new_tokens=args.new_tokens, seg_size=seg_size, device=args.device,
                                    dtype=args.dtype, threads=args.threads)
                        if system in CT2_SYSTEMS:
                            cell["ct2_repeats"] = args.ct2_repeats
                        heads = getattr(shape, "num_heads", None) or shape.decoder_attention_heads
                        need = estimate_gb(cell, shape.d_model, layers, shape.d_model // heads)
                        if need > args.max_gb:
                            print(f"  skip {cell} (~{need:.0f} GB)", flush=True)
                            cell = dict(cell, skipped=f"needs ~{need:.0f} GB")
                        grid.append(cell)
    results["cells"] = measure_grid(grid, args.device, args.repeats, args.in_process)
    if args.lockstep:
        results["lockstep"] = lockstep_grid(grid, args.repeats)
    print()
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


IN_PROCESS_MODELS: dict = {}  # models built once for the cells run in this process (CUDA, --in-process)


def runs(systems: list[str], steps: list[str], device: str, seg_sizes: list[int]) -> list[tuple[str, str, int]]:
    """(system, step, s) triples: the peer once (``generate`` has no step option, full attention no s),
    srsum once per step and segment size, with ``auto`` resolved as srsum resolves it."""
    from srsum.decoding import resolve_step
    from srsum.errors import UsageError

    triples = []
    for system in systems:
        if system == "peer":
            triples.append((system, "hf", seg_sizes[0]))
            continue
        if system in CT2_SYSTEMS:  # its step is CTranslate2's (the compute type fills it in)
            triples.append((system, "ct2", seg_sizes[0]))
            continue
        if system not in SYSTEMS + INT8_SYSTEMS + (GENERATE_SYSTEM,):
            raise SystemExit(f"--systems: unknown {system!r}; allowed: "
                             f"{', '.join(SYSTEMS + INT8_SYSTEMS + (GENERATE_SYSTEM,) + CT2_SYSTEMS)}")
        for step in (["auto"] if system == GENERATE_SYSTEM else steps):  # generate picks its step as summarize
            for seg_size in (seg_sizes[:1] if system == "full" else seg_sizes):
                try:
                    triple = (system, resolve_step(step, torch.device(device)), seg_size)
                except UsageError as error:  # one line, no traceback
                    raise SystemExit(f"--{error}") from None
                if triple not in triples:
                    triples.append(triple)
    return triples


def measure(cell: dict, device: str, in_process: bool = False) -> dict:
    if cell["system"] in CT2_SYSTEMS:
        import ct2_peer

        if not ct2_peer.available():
            return dict(cell, skipped=ct2_peer.NOT_INSTALLED)
    if device.startswith("cuda") or in_process:
        try:
            return run_cell(cell, IN_PROCESS_MODELS)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            return dict(cell, error="out of memory")
    proc = subprocess.run([sys.executable, __file__, "--cell", json.dumps(cell)], capture_output=True, text=True)
    if proc.returncode != 0:
        return dict(cell, error=(proc.stderr.strip().splitlines() or ["failed"])[-1])
    return json.loads(proc.stdout.strip().splitlines()[-1])


TIMED = ("decode_s", "ms_per_step", "after_first_ms_per_token", "decode_ms_per_token", "total_ms_per_token")


def measure_grid(grid: list[dict], device: str, repeats: int, in_process: bool = False) -> list[dict]:
    """Time every cell of ``grid`` (skipped cells pass through) in ``repeats`` rounds, round-robin: each
    round times every srsum and peer cell once (CPU: each in a fresh process unless ``in_process``), and
    CTranslate2's cells run in the first round only (they repeat inside, ``--ct2-repeats``). Each cell's
    figures are then ``best_of`` its rounds. Round-robin, not one cell's repeats back to back: on this
    shared 2-core host a slow spell lasts minutes (one process gave the same batch-8 cell 29.9, 31.5 and
    33.9 ms per step in three rounds, and its neighbour 30.9 then 37.8), so consecutive repeats would put a
    whole spell on one cell, and with it on one n of a comparison across n."""
    timed = [[] for _ in grid]
    for round_ in range(repeats):
        for cell, done in zip(grid, timed):
            if "skipped" in cell or (round_ and (cell["system"] in CT2_SYSTEMS or "decode_s" not in done[-1])):
                continue  # CTranslate2 repeats inside; a cell that failed or was skipped is not retried
            figures = measure(cell, device, in_process)
            done.append(figures)
            prefix = f"  [{round_ + 1}/{repeats}] " if repeats > 1 else "  "
            print(prefix + json.dumps({k: figures.get(k) for k in (
                "n", "batch", "beams", "system", "step", "seg_size", "ms_per_step", "ms_per_step_median",
                "after_first_ms_per_token", "decode_ms_per_token", "one_step_ms", "peak_mb", "skipped", "error")
                if k in figures}), flush=True)
    return [cell if not done else best_of(done) for cell, done in zip(grid, timed)]


def best_of(rounds: list[dict]) -> dict:
    """One cell's figures from its rounds: each time the smallest of the rounds (noise on a shared host only
    ever adds; ``tokens_per_s`` follows the fastest whole decode), peak memory the largest. Every round's
    steady step, mean after step 1 and whole decode per token are kept beside (``repeats_<figure>``)."""
    timed = [r for r in rounds if "decode_s" in r]
    if len(rounds) == 1 or not timed:
        return rounds[-1]
    best = dict(min(timed, key=lambda r: r["decode_s"]))
    for key in TIMED:
        values = [r[key] for r in timed if r.get(key) is not None]
        best[key] = min(values) if values else None
    peaks = [r["peak_mb"] for r in timed if r.get("peak_mb") is not None]
    best["peak_mb"] = max(peaks) if peaks else None
    for key in ("ms_per_step", "after_first_ms_per_token", "decode_ms_per_token"):
        best[f"repeats_{key}"] = [r.get(key) for r in timed]
    return best


class Turnstile:
    """Decodings that take turns, one step each: a decoding waits for its turn before it starts, and at every
    step (``SharedStateDecoder.logits``) hands the turn to the next one and waits for it back, so exactly one
    runs at any moment and each of its steps is timed alone, while host noise lasting longer than a few steps
    falls on all of them alike. ``steps[i]``: decoding i's step durations, from taking the turn to its next
    step call (the step and its search bookkeeping); [0] is its state building, [1] its first step."""

    def __init__(self, count: int):
        self.condition = threading.Condition()
        self.active, self.turn = list(range(count)), 0
        self.steps = [[] for _ in range(count)]
        self.since = [0.0] * count
        self.local = threading.local()  # .index: which decoding this thread runs

    def wait(self, index: int) -> None:
        with self.condition:
            self.condition.wait_for(lambda: self.turn == index)
        self.since[index] = time.perf_counter()

    def pass_on(self, index: int, leaving: bool = False) -> None:
        if not leaving:
            self.steps[index].append(time.perf_counter() - self.since[index])
        with self.condition:
            after = self.active[(self.active.index(index) + 1) % len(self.active)]
            if leaving:
                self.active.remove(index)
            self.turn = after if self.active else None
            self.condition.notify_all()

    def __enter__(self):
        import srsum.decoding

        self._original = original = srsum.decoding.SharedStateDecoder.logits

        @functools.wraps(original)
        def logits(decoder, tokens):
            index = getattr(self.local, "index", None)
            if index is not None:
                self.pass_on(index)
                self.wait(index)
            return original(decoder, tokens)

        srsum.decoding.SharedStateDecoder.logits = logits
        return self

    def __exit__(self, *exc):
        import srsum.decoding

        srsum.decoding.SharedStateDecoder.logits = self._original


def lockstep(cells: list[dict], rounds: int) -> list[list[float]]:
    """Decode ``cells`` (srsum cells of one setting, e.g. at several n) in turns, one step each
    (``Turnstile``), ``rounds`` times, each with its own copy of the model (a decoding swaps its model's step
    linears for its length), after one untimed decode of each alone. Returns, per round, each cell's steady
    step in ms: the median of its step durations after the first step (``StepClock``'s definition, each step
    timed alone instead of start to start)."""
    jobs = [decoding(build_model(cell), cell) for cell in cells]
    with torch.no_grad():
        for job in jobs:
            job()  # warm up alone: kernels, allocator, compiling
    return [in_turns(jobs, cells[0].get("threads")) for _ in range(rounds)]


def in_turns(jobs: list, threads: int | None) -> list[float]:
    """Run ``jobs`` (decodings) in threads that take turns one step each; each one's steady step in ms."""
    turnstile, errors = Turnstile(len(jobs)), []

    def run(index: int) -> None:
        if threads:
            torch.set_num_threads(threads)  # a new thread starts with the default
        turnstile.local.index = index
        turnstile.wait(index)
        try:
            with torch.no_grad():  # thread-local
                jobs[index]()
        except BaseException as error:  # noqa: BLE001 (raised again in the calling thread)
            errors.append(error)
        finally:
            turnstile.pass_on(index, leaving=True)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    with turnstile:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    if errors:
        raise errors[0]
    return [statistics.median(steps[2:]) * 1000 for steps in turnstile.steps]


SETTING = ("model", "batch", "beams", "system", "step", "seg_size")  # an srsum setting: a cell but for its n


def across_n(cells: list[dict]) -> dict[tuple, dict[int, dict]]:
    """srsum's cells (not the peers') grouped by setting, in grid order: {setting: {n: cell}}."""
    groups: dict[tuple, dict[int, dict]] = {}
    for cell in cells:
        if cell["system"] not in ("peer",) + CT2_SYSTEMS:
            groups.setdefault(tuple(cell[k] for k in SETTING), {})[cell["n"]] = cell
    return groups


def lockstep_grid(grid: list[dict], rounds: int) -> list[dict]:
    """``lockstep`` each srsum setting of the grid across its n, ``rounds`` times; printed when done."""
    results = []
    for setting, at in across_n([c for c in grid if "skipped" not in c]).items():
        cells = [at[n] for n in sorted(at)]
        if len(cells) < 2:
            continue
        result = dict(zip(SETTING, setting), n=sorted(at), rounds=lockstep(cells, rounds))
        results.append(result)
        for round_, run in enumerate(result["rounds"]):
            print(f"  lockstep [{round_ + 1}/{rounds}] {label(result)} {setting[4]} batch {setting[1]} beams "
                  f"{setting[2]}: " + ", ".join(f"n={n} {ms:.1f}" for n, ms in zip(result["n"], run)), flush=True)
    return results


def lockstep_table(results: list[dict]) -> str:
    """Each setting's steady step per n in lockstep, and against the smallest n: each round's change (the two
    steps of a round were timed turn about) and their median."""
    rows = []
    for result in results:
        changes = [[ms / run[0] - 1 for ms in run[1:]] for run in result["rounds"]]
        for j, n in enumerate(result["n"][1:]):
            each = [change[j] for change in changes]
            rows.append([result["model"], result["batch"], result["beams"], label(result), result["step"],
                         f"{result['n'][0]} -> {n}",
                         " / ".join(f"{run[0]:.1f} -> {run[j + 1]:.1f}" for run in result["rounds"]),
                         " ".join(f"{c:+.1%}" for c in each), f"{statistics.median(each):+.1%}"])
    return ("Flat in n, in lockstep (each round decodes every n together, one step each in turn; steady ms/step "
            "per round, its change against the smallest n, and the median change):\n"
            + markdown_table(["model", "batch", "beams", "system", "step", "n", "ms/step per round",
                              "change per round", "median change"], rows))


def label(cell: dict) -> str:
    """The system, with its segment size where it has one."""
    plain = ("peer", "full") + CT2_SYSTEMS
    return cell["system"] if cell["system"] in plain else f"{cell['system']} s={cell['seg_size']}"


def report(results: dict) -> str:
    """Markdown tables: one row per (model, n, batch, beams, system) with ratios to the peer."""
    rows, cells = [], results["cells"]
    for cell in cells:
        if "skipped" in cell or "error" in cell:
            rows.append([cell["model"], cell["n"], cell["batch"], cell["beams"], label(cell), cell.get("step", ""),
                         cell.get("skipped") or cell.get("error"), "", "", "", "", "", "", ""])
            continue
        peer = next((c for c in cells if c["system"] == "peer" and "ms_per_step" in c and
                     all(c[k] == cell[k] for k in ("model", "n", "batch", "beams"))), None)
        speed = f"{peer['ms_per_step'] / cell['ms_per_step']:.2f}x" if peer else "-"
        per_token = cell.get("decode_ms_per_token")
        whole = f"{peer['decode_ms_per_token'] / per_token:.2f}x" if peer and per_token else "-"
        known = cell["peak_mb"] is not None
        memory = f"{cell['peak_mb'] / peer['peak_mb']:.2f}" if known and peer and peer["peak_mb"] > 0 else "-"
        if cell["system"] in CT2_SYSTEMS:  # not like for like: its decode ms/token leaves out the cross-attention
            whole = memory = "-"  # keys/values the others build, its peak holds its encoder
        step = f"{cell['ms_per_step']:.1f}"
        if cell.get("ms_per_step_median") is not None:
            step += f" ({cell['ms_per_step_median']:.1f})"
        rows.append([cell["model"], cell["n"], cell["batch"], cell["beams"], label(cell), cell.get("step", ""),
                     f"{cell['decode_s']:.2f}", step,
                     f"{per_token:.1f}" if per_token else "-",
                     f"{cell['tokens_per_s']:.0f}" if cell.get("tokens_per_s") else "-",
                     f"{cell['peak_mb']:.0f}" if known else "n/a", speed, whole, memory])
    headers = ["model", "n", "batch", "beams", "system", "step", "decode s", "ms/step", "decode ms/token", "tokens/s",
               "peak MB", "step vs peer", "decode vs peer", "memory vs peer"]
    bandwidth = results.get("bandwidth_gbps")
    if bandwidth:
        headers += ["MB read/step", "floor ms", "x floor"]
        for row, cell in zip(rows, cells):
            if "bytes_per_step" in cell:
                floor = cell["bytes_per_step"] / (bandwidth * 1e9) * 1000
                row += [f"{cell['bytes_per_step'] / 1e6:.0f}", f"{floor:.3f}", f"{cell['ms_per_step'] / floor:.0f}"]
            else:
                row += ["", "", ""]
    encoder_rows = [[e["model"], e["n"], "-" if e["seconds"] is None else f"{e['seconds'] * 1000:.0f}"]
                    for e in results["encoder"]]
    text = (markdown_table(headers, rows) + "\n\nencoder (batch 1, same for every system):\n"
            + markdown_table(["model", "n", "encoder ms"], encoder_rows))
    ct2 = [c for c in cells if c["system"] in CT2_SYSTEMS and "one_step_ms" in c]
    if ct2:
        text += ("\n\nCTranslate2, its own encoder (fed n random ids): a 1-token decode (encoder + cross-attention "
                 "keys/values + 1 step) and a 1+T-token decode, best of each; ms/step in the table above = their "
                 "difference / T (in brackets: the median interval between its per-step callbacks, greedy only):\n"
                 + markdown_table(["model", "n", "batch", "beams", "system", "compute type", "1-token ms",
                                   "1+T-token ms", "version"],
                                  [[c["model"], c["n"], c["batch"], c["beams"], c["system"], c["step"],
                                    f"{c['one_step_ms']:.0f}", f"{c['whole_ms']:.0f}", c.get("ct2_version")]
                                   for c in ct2]))
        text += "\n\n" + against_ct2(cells)
    dropin = against_srsum(cells)
    if dropin:
        text += "\n\n" + dropin
    flat = flat_in_n(cells)
    if flat:
        text += "\n\n" + flat
    if results.get("lockstep"):
        text += "\n\n" + lockstep_table(results["lockstep"])
    return text


def against_srsum(cells: list[dict]) -> str:
    """Each ``generate`` cell against srsum's ``srformer`` cell of the same setting and step (issue 30: within
    5%): the whole decode per token and the steady step, and their ratios. Empty without generate cells."""
    keys = ("model", "n", "batch", "beams", "seg_size", "step")
    rows = []
    for cell in cells:
        if cell["system"] != GENERATE_SYSTEM or not cell.get("decode_ms_per_token"):
            continue
        ours = next((c for c in cells if c["system"] == "srformer" and c.get("decode_ms_per_token")
                     and all(c[k] == cell[k] for k in keys)), None)
        if ours is None:
            continue
        rows.append([cell[k] for k in keys] + [
            f"{ours['decode_ms_per_token']:.2f}", f"{cell['decode_ms_per_token']:.2f}",
            f"{cell['decode_ms_per_token'] / ours['decode_ms_per_token']:.3f}",
            f"{ours['ms_per_step']:.2f}", f"{cell['ms_per_step']:.2f}",
            f"{cell['ms_per_step'] / ours['ms_per_step']:.3f}"])
    if not rows:
        return ""
    return ("model.generate against srsum's generate (srformer, same setting and step): whole decode ms/token and "
            "steady ms/step, ratio generate / srsum:\n"
            + markdown_table(list(keys) + ["srsum ms/token", "generate ms/token", "ratio", "srsum ms/step",
                                           "generate ms/step", "step ratio"], rows))


def flat_in_n(cells: list[dict]) -> str:
    """The steady step of each srsum setting (model, batch, beams, system, step, s) across n, against its
    smallest n: issue 13's "flat in n" (target: within 10% at batch 8). With ``--repeats`` each figure is
    the best of the runs, and the runs' range follows in brackets. Empty when the grid has one n."""
    groups = across_n([c for c in cells if c.get("ms_per_step")])
    ns = sorted({n for at in groups.values() for n in at})
    if len(ns) < 2:
        return ""
    rows = []
    for setting, at in groups.items():
        if ns[0] not in at:
            continue
        base = at[ns[0]]["ms_per_step"]
        row = list(setting[:3]) + [label(dict(zip(SETTING, setting))), setting[4]]
        for n in ns:
            cell = at.get(n)
            if cell is None:
                row.append("-")
                continue
            runs_ = [r for r in cell.get("repeats_ms_per_step", []) if r is not None]
            spread = f" ({min(runs_):.1f}-{max(runs_):.1f})" if len(runs_) > 1 else ""
            change = "" if n == ns[0] else f" {cell['ms_per_step'] / base - 1:+.1%}"
            row.append(f"{cell['ms_per_step']:.1f}{change}{spread}")
        rows.append(row)
    return ("Flat in n: srsum's steady ms/step at each n, change against n = " + str(ns[0])
            + " (with --repeats: the best run, the runs' range in brackets):\n"
            + markdown_table(["model", "batch", "beams", "system", "step"] + [f"n={n}" for n in ns], rows))


def against_ct2(cells: list[dict]) -> str:
    """Each srsum or peer cell against the CTranslate2 cells of its (model, n, batch, beams), like for like:
    the mean ms per token after the first step (``after_first_ms_per_token``: neither side's encoder,
    cross-attention keys/values or state building, nor its first step). The whole decode per token (srsum:
    state building included; CTranslate2 has no such figure) is listed beside it."""
    keys = ("model", "n", "batch", "beams")
    peers = [c for c in cells if c["system"] in CT2_SYSTEMS and c.get("after_first_ms_per_token")]
    systems = sorted({c["system"] for c in peers}, key=CT2_SYSTEMS.index)
    rows = []
    for cell in cells:
        if cell["system"] in CT2_SYSTEMS or not cell.get("after_first_ms_per_token"):
            continue
        same = {c["system"]: c for c in peers if all(c[k] == cell[k] for k in keys)}
        if not same:
            continue
        ours = cell["after_first_ms_per_token"]
        row = [cell[k] for k in keys] + [label(cell), cell.get("step", ""), f"{ours:.1f}",
                                         f"{cell['decode_ms_per_token']:.1f}"]
        for system in systems:
            peer = same.get(system)
            row += ["-", "-"] if peer is None else [f"{peer['after_first_ms_per_token']:.1f}"
                                                    f" ({peer['after_first_source']})",
                                                    f"{peer['after_first_ms_per_token'] / ours:.2f}x"]
        rows.append(row)
    headers = list(keys) + ["system", "step", "ms/token after step 1", "whole decode ms/token"]
    for system in systems:
        headers += [f"{system} ms/token after step 1", f"vs {system}"]
    return ("Against CTranslate2, like for like: the mean ms per token after the first step (for CTranslate2 from "
            "its per-step callbacks where it has them, greedy, else the 1+T minus 1-token difference):\n"
            + markdown_table(headers, rows))


if __name__ == "__main__":
    main()
