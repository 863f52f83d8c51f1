"""How a CPU decode step multiplies by its weights: copies laid out for the few rows a step has.

A decode step multiplies a few rows (batch x beams) by every decoder weight and by the LM head, most of
them larger than the caches, so the step costs what reading them costs. ``nn.Linear`` reads its (out, in)
weight through MKL's sgemm; on CPU two other layouts of the same weight read faster at a few rows
(``benchmarks/step_linears.py``, t5-small shapes, one thread, this project's machine):

* from 2 rows on, every step linear: a copy packed by oneDNN for that many rows (``torch.ops.mkldnn``,
  what inductor's freezing uses): 2 rows, the decoder's 48 linears 11.9 -> 8.4 ms and the LM head 14.3 ->
  5.0 ms; 4 rows 11.1 -> 9.6 and 10.3 -> 6.2; 8 rows 13.2 -> 11.8 and 11.8 -> 7.4 (bart-base: 1.1-1.6x
  and 1.4-2.3x). At one row the packed decoder linears are about as fast alone (8.0 -> 7.7 ms) and slower
  inside a real step (a batch-1 decode took 2 ms per token more with them, four A/B pairs, t5-small, n 1k),
  so one row keeps ``nn.Linear`` for them;
* the LM head at one row, and at two where there are no packed copies (no oneDNN): a plain (in, out)
  copy, ``x @ copy`` (1 row: 6.2 -> 2.8 ms; 2 rows 14.3 -> 5.3).

bfloat16 weights (``--dtype bfloat16``/``auto`` on a CPU with AMX or AVX512-BF16) read packed copies from
one row on: there oneDNN's packed bfloat16 product beats ``nn.Linear`` at every shape and row count measured
(``benchmarks/step_linears.py --dtype bfloat16``), the LM head included.

``fast_step_linears`` swaps those forwards in for the length of a decoding, on CPU only, for eager and
compiled steps alike: a packed copy is read through the operator ``srsum::packed_linear`` (the input, the
weight itself, the rows), which finds the copy kept on the weight, so ``torch.compile`` traces the step's
weights as they are (no freezing: nothing is baked into the compiled step) and calls oneDNN for the product.
Which linears: ``quantization.step_linears`` (every decoder linear but the cross-attention keys/values, which
project whole segments, and SRformer's W). Each copy is kept on its weight tensor (not a parameter, not saved)
and made again when the weight changes (another storage, an in-place update) or the rows do; it costs the
weight's size in memory. Modules that are not a plain ``nn.Linear`` (int8) or already have a forward of their
own are left alone, and so is everything where oneDNN is not available.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .quantization import step_linears as step_linear_names

COPY_ATTRIBUTE = "_srsum_step_weight"  # on a weight tensor: ((how, rows, what it was made from), the copy)
PACKED_MIN_ROWS = {torch.float32: 2, torch.bfloat16: 1}  # per weight dtype: packed copies from this many rows on
BY_COLUMNS_MAX_ROWS = 2  # float32 below that, or without packed copies: the LM head reads an (in, out) copy


def packing_available() -> bool:
    """Whether this torch build packs linear weights with oneDNN (x86 CPU builds do)."""
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def packs(dtype: torch.dtype) -> bool:
    """Whether step linears of this weight dtype get packed copies here: float32 wherever oneDNN packs,
    bfloat16 only on a CPU with bfloat16 dot products (elsewhere oneDNN emulates them)."""
    if dtype == torch.bfloat16:
        from .precision import cpu_features

        return packing_available() and cpu_features().fast_bfloat16
    return dtype == torch.float32 and packing_available()


def pack(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """oneDNN's copy of ``weight`` (out, in) laid out for products with ``rows`` rows (opaque)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, rows)


def copy_of(weight: torch.Tensor, how: str, rows: int) -> torch.Tensor:
    """``weight`` (out, in) as ``how`` says ("by_columns": (in, out); "packed": oneDNN's layout for ``rows``
    rows, an opaque tensor), kept on the weight tensor and made again only when its values, or a packed
    copy's rows, change."""
    made_for = rows if how == "packed" else None  # an (in, out) copy serves any number of rows
    source = (how, made_for, weight.data_ptr(), weight._version, weight.dtype, tuple(weight.shape))
    kept = getattr(weight, COPY_ATTRIBUTE, None)
    if kept is None or kept[0] != source:
        plain = weight.detach()
        copy = plain.t().contiguous() if how == "by_columns" else pack(plain, rows)
        kept = (source, copy)
        setattr(weight, COPY_ATTRIBUTE, kept)
    return kept[1]


@torch.library.custom_op("srsum::packed_linear", mutates_args=())
def packed_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], rows: int) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` through the copy of ``weight`` packed for ``rows`` rows (``copy_of``).
    An operator of its own, so that a compiled step calls it with the live weight (the opaque copy never
    enters the graph)."""
    return torch.ops.mkldnn._linear_pointwise(x, copy_of(weight, "packed", rows), bias, "none", [], "")


@packed_linear.register_fake
def _packed_linear_shape(x, weight, bias, rows):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def mixed_precision(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """True under CPU autocast or for an input of another dtype than the weight (a bf16 activation of mixed-
    precision validation): the copies are float32, so the step takes the plain, autocast-aware F.linear."""
    return x.dtype != weight.dtype or torch.is_autocast_enabled("cpu")


def by_columns_forward(module: nn.Linear, copy: torch.Tensor, bias: torch.Tensor | None):
    def forward(x: torch.Tensor) -> torch.Tensor:  # (.., in) -> (.., out), as nn.Linear
        if mixed_precision(x, copy):
            return F.linear(x, module.weight, module.bias)
        out = x @ copy
        return out if bias is None else out + bias
    return forward


def packed_forward(module: nn.Linear, rows: int, packed: torch.Tensor):
    """``packed``: the weight's copy for ``rows`` rows, made for this decoding (the weights do not change
    during one). An eager step without gradients (decoding) reads it directly; a step being compiled goes through
    ``srsum::packed_linear``, so that the graph holds the live weight, not the opaque copy, and so does a call
    with gradients on (oneDNN's op then takes a path ~300x slower). The operator's dispatch and its check of the
    copy cost ~20 µs a call (49 calls a t5-small step)."""
    def forward(x: torch.Tensor) -> torch.Tensor:
        if mixed_precision(x, module.weight):
            return F.linear(x, module.weight, module.bias)
        if torch.compiler.is_compiling() or torch.is_grad_enabled():
            return torch.ops.srsum.packed_linear(x, module.weight, module.bias, rows)
        return torch.ops.mkldnn._linear_pointwise(x, packed, module.bias, "none", [], "")
    return forward


def step_plan(model, rows: int, packed_ok: bool) -> list[tuple[nn.Module, object]]:
    """(module, its forward for this decoding) for the step linears that get a copy; ``packed_ok``: whether
    oneDNN packs this model's weight dtype here (``packs``)."""
    modules = dict(model.named_modules())
    head = model.get_output_embeddings()
    plan = []
    for name in step_linear_names(model):
        module = modules[name]
        dtype = module.weight.dtype
        if module.weight.device.type != "cpu" or dtype not in PACKED_MIN_ROWS or "forward" in vars(module):
            continue
        if packed_ok and rows >= PACKED_MIN_ROWS[dtype]:
            packed = copy_of(module.weight, "packed", rows)  # made now, before the first step
            plan.append((module, packed_forward(module, rows, packed)))
        elif module is head and rows <= BY_COLUMNS_MAX_ROWS and dtype == torch.float32:
            bias = None if module.bias is None else module.bias.detach()
            plan.append((module, by_columns_forward(module, copy_of(module.weight, "by_columns", rows), bias)))
        elif hasattr(module.weight, COPY_ATTRIBUTE):  # an earlier decoding's copy this one does not read:
            delattr(module.weight, COPY_ATTRIBUTE)  # freed, not carried along as the weight's size in memory
    return plan


@contextlib.contextmanager
def fast_step_linears(model, rows: int):
    """While the block runs, ``model``'s step linears read the copies above (see the module doc); ``rows``:
    the rows a step multiplies (batch x beams). Their own forwards come back afterwards, also when the block
    raises."""
    plan = step_plan(model, rows, packs(next(model.parameters()).dtype))
    for module, forward in plan:
        module.forward = forward
    try:
        yield
    finally:
        for module, _ in plan:
            del module.forward  # back to the class's
