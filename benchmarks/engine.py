"""Engine benchmark (issue 2): training step and decode step, full attention vs SRformer, t5-small shapes.

    python benchmarks/engine.py                 # CPU, everything in one run
    python benchmarks/engine.py --quick         # smaller grid for a smoke check

(a) training step (forward + backward) of the whole model, n = 1024, m = 128, s in {8, 16, 64}, and of
    the cross-attention layers alone; (b) decode ms/step at n in {1024, 4096, 16384}, batch 1 and 8,
    with srsum's decoder (encoder output random: a decode step does not depend on it).
Targets: srformer training step <= 1.3x full; srformer decode ms/step at n = 16384 within 10% of
n = 1024 and below full attention's at n = 16384. Numbers are ratios measured in this one run.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, random_model, sync  # noqa: E402

from srsum.decoding import SharedStateDecoder  # noqa: E402
from srsum.engine import SRformerCrossAttention, convert  # noqa: E402


def training_step(model, batch: int, n: int, m: int):
    """A closure doing one forward + backward of the whole model on fixed random data."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(2, 32000, (batch, n), generator=gen)
    labels = torch.randint(2, 32000, (batch, m), generator=gen)
    model.train()

    def step():
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, use_cache=False).loss.backward()

    return step


def cross_attention_step(model, batch: int, n: int, m: int):
    """A closure doing forward + backward of every decoder cross-attention layer alone, on random inputs."""
    layers = [layer for layer in model.modules() if isinstance(layer, SRformerCrossAttention)]
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(batch, m, model.config.d_model, generator=gen, requires_grad=True)
    encoder = torch.randn(batch, n, model.config.d_model, generator=gen, requires_grad=True)

    def step():
        total = sum(layer.attend(hidden, encoder, None, None).square().mean() for layer in layers)
        total.backward()

    return step


def interleaved_minimum(steps: dict, rounds: int) -> dict:
    """Time every closure once per round, round after round (so drift hits all alike); keep the minimum."""
    for step in steps.values():
        step()  # warm up
    best = {name: float("inf") for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def decode_ms_per_step(model, batch: int, n: int, steps: int, repeats: int = 1) -> float:
    """ms per greedy step over ``steps`` consecutive steps, the fastest of ``repeats`` such stretches
    (decoding on from where the last one stopped; 2 warm-up steps first). The state is built before."""
    gen = torch.Generator().manual_seed(2)
    encoder = torch.randn(batch, n, model.config.d_model, generator=gen)
    best = float("inf")
    with torch.no_grad():
        decoder = SharedStateDecoder(model, None, torch.ones(batch, n, dtype=torch.long), 1, encoder_states=encoder)
        tokens = torch.zeros(batch, 1, dtype=torch.long)
        for _ in range(2):  # warm up
            tokens = decoder.logits(tokens).argmax(-1, keepdim=True)
        for _ in range(repeats):
            sync("cpu")
            start = time.perf_counter()
            for _ in range(steps):
                tokens = decoder.logits(tokens).argmax(-1, keepdim=True)
            sync("cpu")
            best = min(best, (time.perf_counter() - start) / steps * 1000)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller grid (smoke check)")
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--decode-seg-sizes", type=lambda t: [int(x) for x in t.split(",")], default=[8, 64])
    parser.add_argument("--steps", type=int, default=64, help="decode steps timed per cell")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--parts", default="train,decode", help="which tables: train, decode or both")
    parser.add_argument("--decode-repeats", type=int, default=3,
                        help="decode: time this many stretches of --steps steps, keep the fastest")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if args.threads:
        torch.set_num_threads(args.threads)
    n_train, m = (256, 32) if args.quick else (1024, 128)
    seg_sizes = [8, 64] if args.quick else [8, 16, 64]
    lengths = [1024, 4096] if args.quick else [1024, 4096, 16384]
    batches = [1] if args.quick else [1, 8]
    print(f"machine: {machine()}\n")

    base = random_model("t5-small")
    results = {"machine": machine(), "train": [], "decode": []}
    if "train" in parts:
        train_table(base, results, args, n_train, m, seg_sizes)
    if "decode" in parts:
        decode_table(base, results, args, lengths, batches)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def train_table(base, results: dict, args, n_train: int, m: int, seg_sizes: list) -> None:
    variants = [("full", None)] + [("srformer", s) for s in seg_sizes]
    models = {key: convert(copy.deepcopy(base), key[0], seg_size=key[1] or 64, schedule_length=m)
              for key in variants}
    whole = interleaved_minimum({k: training_step(mod, args.train_batch, n_train, m) for k, mod in models.items()},
                                args.repeats)
    cross = interleaved_minimum({k: cross_attention_step(mod, args.train_batch, n_train, m)
                                 for k, mod in models.items()}, args.repeats)
    del models
    for variant, seg in variants:
        results["train"].append(dict(variant=variant, seg_size=seg, step_s=whole[(variant, seg)],
                                     cross_attention_s=cross[(variant, seg)]))
    full = results["train"][0]
    rows = []
    for row in results["train"]:
        rows.append([row["variant"], row["seg_size"] or "-", f"{row['step_s'] * 1000:.0f}",
                     f"{row['step_s'] / full['step_s']:.2f}x", f"{row['cross_attention_s'] * 1000:.1f}",
                     f"{row['cross_attention_s'] / full['cross_attention_s']:.2f}x"])
    print(f"(a) training step, forward + backward, t5-small shapes, batch {args.train_batch}, "
          f"n = {n_train}, m = {m} (minimum of {args.repeats} interleaved rounds)")
    print(markdown_table(["attention", "s", "model step ms", "vs full", "cross-attn fwd+bwd ms", "vs full"], rows),
          flush=True)
    worst = max(r["step_s"] / full["step_s"] for r in results["train"][1:])
    print(f"target: srformer training step <= 1.3x full: worst {worst:.2f}x -> {'met' if worst <= 1.3 else 'MISSED'}\n")


def decode_table(base, results: dict, args, lengths: list, batches: list) -> None:
    decode_variants = [("full", None)] + [("srformer", s) for s in args.decode_seg_sizes]
    rows = []
    for batch in batches:
        for n in lengths:
            cell = {"batch": batch, "n": n}
            for variant, seg in decode_variants:
                model = convert(base, variant, seg_size=seg or 64, schedule_length=128).eval()
                cell[f"{variant}{seg or ''}"] = decode_ms_per_step(model, batch, n, args.steps, args.decode_repeats)
            results["decode"].append(cell)
            rows.append([batch, n] + [f"{cell[f'{v}{s or chr(0)}'.rstrip(chr(0))]:.1f}" for v, s in decode_variants])
    names = [f"{v} s={s} ms/step" if s else f"{v} ms/step" for v, s in decode_variants]
    print(f"(b) decode ms/step (srsum decoder, greedy, fastest of {args.decode_repeats} stretches of "
          f"{args.steps} steps, G = 128; the state is built before timing)")
    print(markdown_table(["batch", "n"] + names, rows))
    print("\ntargets:")
    for batch in batches:
        cells = {c["n"]: c for c in results["decode"] if c["batch"] == batch}
        lo, hi = cells[min(lengths)], cells[max(lengths)]
        for seg in args.decode_seg_sizes:
            key = f"srformer{seg}"
            growth = hi[key] / lo[key] - 1
            print(f"  batch {batch}, s = {seg}: srformer ms/step n={max(lengths)} vs n={min(lengths)}: {growth:+.1%} "
                  f"(within 10%: {'met' if abs(growth) <= 0.10 else 'MISSED'}); "
                  f"below full at n={max(lengths)}: {'met' if hi[key] < hi['full'] else 'MISSED'} "
                  f"({hi['full'] / hi[key]:.1f}x faster)")


if __name__ == "__main__":
    main()
