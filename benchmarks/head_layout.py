"""The LM head on CPU: a few rows times a V x D weight, read as nn.Linear does, (V, D), or from a (D, V) copy.

    python benchmarks/head_layout.py                       # t5-small and bart-base heads, 1 thread
    python benchmarks/head_layout.py --rows 1,4,8,32 --threads 2

srsum's decoder multiplies by a (D, V) copy of the head's weight on CPU (``srsum.decoding.
output_head_by_columns``) because of what this prints: both layouts compute the same product, but MKL reads
the (D, V) one faster when the matrix is far larger than the caches. Both layouts are timed in one run, on
the same rows, best of ``--repeats`` rounds of 20 products each; the ratio is what counts.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BART_BASE, T5_SMALL, machine, markdown_table  # noqa: E402

HEADS = {"t5-small": (T5_SMALL["vocab_size"], T5_SMALL["d_model"]),
         "bart-base": (BART_BASE["vocab_size"], BART_BASE["d_model"])}


def best_ms(product, repeats: int, calls: int = 20) -> float:
    product()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            product()
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1,4,8,32", help="rows per product (batch x beams)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}\n")
    rows = []
    for name, (vocab, width) in HEADS.items():
        weight = torch.randn(vocab, width)
        by_columns = weight.t().contiguous()
        for count in (int(r) for r in args.rows.split(",")):
            hidden = torch.randn(count, width)
            assert torch.allclose(F.linear(hidden, weight), hidden @ by_columns, rtol=1e-4, atol=1e-3)
            linear = best_ms(lambda: F.linear(hidden, weight), args.repeats)
            columns = best_ms(lambda: hidden @ by_columns, args.repeats)
            rows.append([name, f"{vocab} x {width}", count, f"{linear:.2f}", f"{columns:.2f}",
                         f"{linear / columns:.2f}x"])
    print(markdown_table(["head", "V x D", "rows", "nn.Linear (V, D) ms", "(D, V) copy ms", "speed-up"], rows))


if __name__ == "__main__":
    main()
