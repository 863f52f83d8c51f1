"""Counted figures: FLOPs of the decoder's cross-attention modules, counted by
``torch.utils.flop_counter.FlopCounterMode`` with the formulas of :data:`ELEMENTWISE_FLOPS` added for the
ops it does not know (see the package docstring). torch is imported inside functions.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable

from srsum.errors import SrsumError
from srsum.profiling.models import _engine_attribute

def _numel(shape: Any) -> int:
    """Elements of a shape (torch.Size), of the first shape of a tuple of outputs, 0 otherwise."""
    if isinstance(shape, (list, tuple)) and not hasattr(shape, "numel"):
        return _numel(shape[0]) if shape else 0
    if hasattr(shape, "numel"):
        return int(shape.numel())
    return 0


def _per_output(flops_per_element: int) -> Callable[..., int]:
    def formula(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return flops_per_element * _numel(out_shape)

    return formula


def _per_input(flops_per_element: int) -> Callable[..., int]:
    def formula(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return flops_per_element * (_numel(args[0]) if args else 0)

    return formula


# FLOPs per element for the ops FlopCounterMode does not know (see the module docstring).
ELEMENTWISE_FLOPS: dict[str, tuple[str, int]] = {
    **{name: ("output", 1) for name in (
        "add", "sub", "rsub", "mul", "div", "neg", "abs", "relu", "threshold", "clamp", "clamp_min",
        "clamp_max", "where", "masked_fill", "gt", "ge", "lt", "le", "eq", "ne", "maximum", "minimum",
        "exp", "log", "sqrt", "rsqrt", "reciprocal", "pow", "sigmoid", "tanh", "sign", "heaviside")},
    **{name: ("output", 2) for name in ("addcmul", "addcdiv", "lerp")},
    **{name: ("output", 5) for name in ("_softmax", "_log_softmax", "_safe_softmax")},
    **{name: ("input", 1) for name in (
        "sum", "mean", "amax", "amin", "max", "min", "prod", "cumsum", "logsumexp")},
    **{name: ("input", 2) for name in ("linalg_vector_norm", "norm")},
    **{name: ("input", 3) for name in ("var", "std")},
}

# Fused attention kernels whose first three arguments are q (b,h,L,E), k (b,h,S,E), v (b,h,S,Ev).
FUSED_ATTENTION_OPS = (
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_fused_attention_overrideable",
)


def _fused_attention_products(query_shape, key_shape, value_shape) -> tuple[int, int]:
    """(matrix-product FLOPs, softmax FLOPs) of one fused attention call."""
    *lead, length, head_dim = query_shape
    keys = key_shape[-2]
    value_dim = value_shape[-1]
    rows = math.prod(lead) * length  # b h L
    products = 2 * rows * keys * head_dim + 2 * rows * keys * value_dim
    return products, 5 * rows * keys


class _SoftmaxSideCounts:
    """Softmax FLOPs inside fused attention kernels, kept per module like FlopCounterMode's counts."""

    def __init__(self) -> None:
        self.counter = None  # the FlopCounterMode whose module tracker says where we are
        self.by_module: dict[str, int] = {}

    def add(self, flops: int) -> None:
        for parent in set(self.counter.mod_tracker.parents):
            self.by_module[parent] = self.by_module.get(parent, 0) + flops


def _fused_attention_formula(side: _SoftmaxSideCounts) -> Callable[..., int]:
    def formula(query_shape, key_shape, value_shape, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        products, softmax = _fused_attention_products(query_shape, key_shape, value_shape)
        side.add(softmax)
        return products

    return formula


def flop_mappings(side: _SoftmaxSideCounts) -> tuple[dict, set]:
    """(custom_mapping for FlopCounterMode, set of op packets that are matrix products)."""
    import torch
    from torch.utils.flop_counter import flop_registry

    aten = torch.ops.aten
    mapping: dict = {}
    for name, (basis, per_element) in ELEMENTWISE_FLOPS.items():
        formula = _per_output(per_element) if basis == "output" else _per_input(per_element)
        for op_name in (name, name + "_"):
            packet = getattr(aten, op_name, None)
            if packet is not None:
                mapping[packet] = formula
    product_ops = set(flop_registry)
    for name in FUSED_ATTENTION_OPS:
        packet = getattr(aten, name, None)
        if packet is not None:
            mapping[packet] = _fused_attention_formula(side)
            product_ops.add(packet)
    return mapping, product_ops


@dataclass
class FlopCount:
    """FLOPs of the decoder's cross-attention modules (all layers, the whole run)."""

    products: int      # attention matrix products (q Kᵀ, A V, K_jᵀ V_j, q R, C Wᵀ, ...)
    other: int         # elementwise, softmax, reductions: RAF, normalisation, masking
    projections: int   # the host's q/k/v/o linear layers, the same for every variant

    @property
    def attention(self) -> int:
        return self.products + self.other


PROJECTION_NAMES = frozenset({"q", "k", "v", "o", "q_proj", "k_proj", "v_proj", "out_proj"})
CROSS_ATTENTION_NAMES = ("EncDecAttention", "encoder_attn")


def cross_attention_modules(model) -> dict[str, Any]:
    """Qualified name -> decoder cross-attention module (SRformerCrossAttention, or the host's own)."""
    found = {}
    engine_class = _engine_attribute("SRformerCrossAttention")
    for name, module in model.named_modules():
        is_engine = engine_class is not None and isinstance(module, engine_class)
        if is_engine or name.rsplit(".", 1)[-1] in CROSS_ATTENTION_NAMES:
            if not any(name.startswith(outer + ".") for outer in found):
                found[name] = module
    if not found:
        raise SrsumError("the model has no decoder cross-attention modules the profiler recognises")
    return found


def projection_names(attention_name: str, module) -> list[str]:
    """Qualified names of the q/k/v/o linear layers inside one cross-attention module."""
    import torch

    return [
        f"{attention_name}.{name}"
        for name, child in module.named_modules()
        if name and isinstance(child, torch.nn.Linear) and name.rsplit(".", 1)[-1] in PROJECTION_NAMES
    ]


def _counts_for(counts: dict[str, dict], model_name: str, qualified: str) -> dict:
    """FlopCounterMode's per-op counts of one module (its tracker prefixes the root class name)."""
    exact = counts.get(f"{model_name}.{qualified}")
    if exact is not None:
        return exact
    for key, value in counts.items():
        if key.endswith("." + qualified):
            return value
    return {}


def _split(op_counts: dict, product_ops: set) -> tuple[int, int]:
    products = sum(v for op, v in op_counts.items() if op in product_ops)
    return products, sum(op_counts.values()) - products


def count_cross_attention_flops(model, run: Callable[[], Any], memory: Any = None) -> FlopCount:
    """Run ``run()`` under FlopCounterMode; the FLOPs spent inside the model's cross-attention.

    With ``memory``, that tracker watches the same run (entered last, so it sees the operators as the
    model issues them, before FlopCounterMode decomposes any).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    side = _SoftmaxSideCounts()
    mapping, product_ops = flop_mappings(side)
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    side.counter = counter
    with torch.no_grad(), counter, (memory if memory is not None else contextlib.nullcontext()):
        run()
    return _cross_attention_share(model, counter.get_flop_counts(), side.by_module, product_ops)


def _cross_attention_share(model, counts: dict, softmax_by_module: dict, product_ops: set) -> FlopCount:
    """Sum FlopCounterMode's per-module counts over the cross-attention modules, projections apart."""
    model_name = type(model).__name__
    total = FlopCount(0, 0, 0)
    for name, module in cross_attention_modules(model).items():
        products, other = _split(_counts_for(counts, model_name, name), product_ops)
        other += _side_for(softmax_by_module, model_name, name)
        for projection in projection_names(name, module):
            proj_products, proj_other = _split(_counts_for(counts, model_name, projection), product_ops)
            products -= proj_products
            other -= proj_other
            total.projections += proj_products + proj_other
        total.products += products
        total.other += other
    return total


def _side_for(by_module: dict[str, int], model_name: str, qualified: str) -> int:
    if f"{model_name}.{qualified}" in by_module:
        return by_module[f"{model_name}.{qualified}"]
    return sum(v for k, v in by_module.items() if k.endswith("." + qualified))
