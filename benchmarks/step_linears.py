"""A CPU decode step's linear layers: nn.Linear's (out, in) weight against the copies srsum's decoder reads.

    python benchmarks/step_linears.py                      # t5-small and bart-base, 1 thread
    python benchmarks/step_linears.py --rows 1,4,8,32 --threads 2
    python benchmarks/step_linears.py --dtype float32,bfloat16   # both formats side by side

For each model shape: the decoder linears a step runs (t5-small: per layer q, k, v, o of self-attention, q and
o of cross-attention, the two feed-forward matrices; bart-base likewise) taken one after the other, as a step
does (so each weight comes from memory, not from cache), and the LM head, at ``rows`` rows (batch x beams),
three ways: ``F.linear`` (nn.Linear), ``x @ copy`` with an (in, out) copy, and oneDNN's packed copy for that
many rows, in each of ``--dtype`` (bfloat16 weights and inputs: what ``--dtype bfloat16``/``auto`` decodes
with; its ratios are to float32's nn.Linear). ``srsum.step_linears`` picks from what this prints; the figures
are the best of ``--repeats`` rounds, in one run, and the ratios are what counts.
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


def shapes(config: dict) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """(out, in) of a step's decoder linears and of the LM head."""
    width = config["d_model"]
    ffn = config.get("d_ff") or config["decoder_ffn_dim"]
    layers = config.get("num_decoder_layers") or config["decoder_layers"]
    per_layer = [(width, width)] * 6 + [(ffn, width), (width, ffn)]
    return per_layer * layers, (config["vocab_size"], width)


def best_ms(run, repeats: int) -> float:
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def three_ways(weights: list[torch.Tensor], rows: int, repeats: int) -> tuple[float, float, float | None]:
    """ms to multiply ``rows`` rows by every weight in turn: nn.Linear, an (in, out) copy, a packed copy."""
    inputs = {w.shape[1]: torch.randn(rows, 1, w.shape[1], dtype=w.dtype) for w in weights}
    columns = [w.t().contiguous() for w in weights]
    linear = best_ms(lambda: [F.linear(inputs[w.shape[1]], w) for w in weights], repeats)
    by_columns = best_ms(lambda: [inputs[c.shape[0]] @ c for c in columns], repeats)
    packed = None
    if torch.backends.mkldnn.is_available():
        packs = [torch.ops.mkldnn._reorder_linear_weight(w, rows) for w in weights]
        run = (lambda: [torch.ops.mkldnn._linear_pointwise(inputs[w.shape[1]], p, None, "none", [], "")
                        for w, p in zip(weights, packs)])
        for w, p in zip(weights[:1], packs[:1]):  # same product
            x = inputs[w.shape[1]]
            tolerance = 1e-3 if w.dtype == torch.float32 else 0.5  # bfloat16: 8 bits of mantissa, sums of 512+
            assert torch.allclose(torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], "").float(),
                                  F.linear(x, w).float(), rtol=1e-2, atol=tolerance)
        packed = best_ms(run, repeats)
    return linear, by_columns, packed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1,2,4,8,32", help="rows per product (batch x beams)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32", help="weight formats, comma separated: float32, bfloat16")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}\n")
    table = []
    for name, config in (("t5-small", T5_SMALL), ("bart-base", BART_BASE)):
        decoder_shapes, head_shape = shapes(config)
        parts = {"decoder linears": [torch.randn(*s) for s in decoder_shapes], "LM head": [torch.randn(*head_shape)]}
        for part, weights in parts.items():
            for rows in (int(r) for r in args.rows.split(",")):
                reference = None  # float32's nn.Linear: every ratio of this row group is to it
                for dtype in args.dtype.split(","):
                    cast = [w.to(getattr(torch, dtype)) for w in weights]
                    linear, columns, packed = three_ways(cast, rows, args.repeats)
                    reference = reference or linear
                    megabytes = sum(w.numel() * w.element_size() for w in cast) / 1e6
                    table.append([name, part, dtype, f"{megabytes:.0f}", rows, f"{linear:.2f} ({reference / linear:.2f}x)",
                                  f"{columns:.2f} ({reference / columns:.2f}x)",
                                  "-" if packed is None else f"{packed:.2f} ({reference / packed:.2f}x)"])
    print(markdown_table(["model", "weights", "format", "MB", "rows", "nn.Linear ms", "(in, out) copy ms",
                          "oneDNN packed ms"], table))


if __name__ == "__main__":
    main()
