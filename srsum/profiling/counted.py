"""Counted figures: FLOPs of the decoder's cross-attention modules, counted by
``torch.utils.flop_counter.FlopCounterMode`` with the formulas of :data:`ELEMENTWISE_FLOPS` added for the
ops it does not know (see the package docstring). torch is imported inside functions.

Two ways to count. :func:`count_cross_attention_flops` watches a whole-model run (a teacher-forced pass,
``generate``): what the counts mean, and the yardstick the tests hold the other way to. Its cost grows
with n, m and the layers. :func:`count_scaled` (what ``srsum profile`` uses) calls the real
cross-attention modules of a two-decoder-layer copy of the model on tiny probe lengths, one example,
and scales the counts exactly: to the requested lengths by ``scaling.py``'s features, to all layers as
layer 0 (which builds what the layers share, e.g. the encoder rows' Gram matrix) plus (layers - 1) x
layer 1, and to batch x beams rows as srsum's decoder runs them: one state per example, built and stepped
once and shared by the example's beams (a probe with two query rows per example gives what each further
beam adds). It takes about a second at any n and m. The probes step each layer's ``DecodeState`` one
position at a time (``DecodeState.enter``); srsum's decoder lays the segment schedule out at the start
instead (``DecodeState.use_schedule``), which reads the same segments and runs the same RAF steps but
takes P from the projected segments rather than the Gram matrix where every segment is scheduled
(M <= G + 1), and keeps R ⊘ ν in a ring: those differences are not counted. One known gap: in bfloat16/float16 the engine sums Kᵀ·V over chunks of 4096 keys,
so past n = 4096 a real run adds d² "other" FLOPs per chunk that the small probes never show (the
matrix products are the same).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable

from srsum.errors import SrsumError
from srsum.profiling.analytic import CostShape, resolve_dtype_name
from srsum.profiling.models import _engine_attribute, make_variant_model, probe_host_model
from srsum.profiling.scaling import Lengths, ScalingMismatch, combine, probe_design, solve_weights

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

    def __add__(self, other: "FlopCount") -> "FlopCount":
        return FlopCount(self.products + other.products, self.other + other.other,
                         self.projections + other.projections)

    def __sub__(self, other: "FlopCount") -> "FlopCount":
        return FlopCount(self.products - other.products, self.other - other.other,
                         self.projections - other.projections)

    def times(self, factor: int) -> "FlopCount":
        return FlopCount(self.products * factor, self.other * factor, self.projections * factor)


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


# --------------------------------------------------------------------------------------------------
# Scaled counts: the real modules on probe lengths (see the module docstring)
# --------------------------------------------------------------------------------------------------

# teacher-forced; decoding one query row per example; decoding two rows per example that share its state
# (beams): the difference is what each further row costs, the rest is built or stepped once per example
PASSES = ("teacher", "decode", "decode_two_rows")
BUCKETS = ("products", "other", "projections")


_STACK_CLASS = None


def _layer_stack(layers: list):
    """An nn.Module holding ``layers`` as children 0, 1, ...: FlopCounterMode's module tracker then names
    them (and their projections) apart although they are of one class."""
    global _STACK_CLASS
    if _STACK_CLASS is None:
        import torch

        class ProbeLayers(torch.nn.Module):
            def forward(self, hidden, encoder, cache):
                for layer in self.children():
                    layer(hidden, key_value_states=encoder, cache=cache)

        _STACK_CLASS = ProbeLayers
    stack = _STACK_CLASS()
    for index, layer in enumerate(layers):
        stack.add_module(str(index), layer)
    return stack


class LayerCounter:
    """Counts the FLOPs of each layer of a ``_layer_stack`` over one run, q/k/v/o projections apart."""

    def __init__(self, stack) -> None:
        from torch.utils.flop_counter import FlopCounterMode

        self.stack = stack
        self.side = _SoftmaxSideCounts()
        custom, self.product_ops = flop_mappings(self.side)
        self.counter = FlopCounterMode(display=False, custom_mapping=custom)
        self.side.counter = self.counter

    def __call__(self, run: Callable[[], Any]) -> list[FlopCount]:
        self.side.by_module.clear()
        with self.counter:
            run()
        counts = self.counter.get_flop_counts()
        root = type(self.stack).__name__
        found = []
        for index, layer in enumerate(self.stack.children()):
            key = f"{root}.{index}"
            products, other = _split(counts.get(key, {}), self.product_ops)
            other += self.side.by_module.get(key, 0)
            projections = 0
            for name in set(getattr(layer, "projection_names", ())) | PROJECTION_NAMES:
                proj_products, proj_other = _split(counts.get(f"{key}.{name}", {}), self.product_ops)
                products, other = products - proj_products, other - proj_other
                projections += proj_products + proj_other
            found.append(FlopCount(products, other, projections))
        return found


class ProbeCounter:
    """Counts one variant's cross-attention modules on probe lengths (one example, up to two layers).

    The probe model is a copy of the host with at most two decoder layers, one encoder layer and tiny
    feed-forward and vocabulary sizes (none of which cross-attention touches); each probe sets the
    modules' segment size and schedule length and calls them directly: once with all positions
    (teacher-forced, no cache), then one position at a time on a shared cache (decoding; the engine keeps
    its decoding states on the cache object), with one query row per example and again with two rows
    that share the example's one state, as the beams do in srsum's decoder. The decoder's masks are None
    for inputs without padding, as here.
    """

    def __init__(self, host, variant: str, dtype: str = "float32", seed: int = 0) -> None:
        import torch

        self.variant = variant
        self.dtype = getattr(torch, resolve_dtype_name(dtype))
        self.model = make_variant_model(host, variant, seg_size=2, schedule_length=1)
        self.layers = list(cross_attention_modules(self.model).values())
        self.stack = _layer_stack(self.layers)
        self.count_layers = LayerCounter(self.stack)
        self.width = host.config.d_model
        self._generator = torch.Generator().manual_seed(seed)
        self._cache: dict[Lengths, dict[str, list[FlopCount]]] = {}
        self._primed: set[tuple[int, int]] = set()

    def _configure(self, lengths: Lengths) -> None:
        for layer in self.layers:
            settings = getattr(layer, "settings", None)
            if settings is not None:
                layer.settings = dataclasses.replace(settings, seg_size=lengths.s, schedule_length=lengths.G)
        key = (lengths.s, lengths.G)
        if lengths.segments > lengths.G and key not in self._primed:
            # The engine warns once per (s, G) that some segments go unvisited, and the first time it
            # also looks up the longest input (one max op). Trigger that once, uncounted, so that every
            # probe counts the same work whatever ran before it.
            self._primed.add(key)
            rows = self._random(1, lengths.n, self.width)
            self.layers[0](self._random(1, 1, self.width), key_value_states=rows, cache=None)

    def _random(self, *shape: int):
        import torch

        return torch.randn(*shape, generator=self._generator).to(self.dtype)

    def count(self, lengths: Lengths) -> dict[str, list[FlopCount]]:
        """Pass -> per-layer FlopCounts of one example at ``lengths``."""
        if lengths in self._cache:
            return self._cache[lengths]
        import torch

        encoder = self._random(1, lengths.n, self.width)
        hidden = self._random(1, lengths.m, self.width)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the engine's "M > G" note is about the probe, not the user's lengths
            self._configure(lengths)
            result = {"teacher": self.count_layers(lambda: self.stack(hidden, encoder, None)),
                      "decode": self.count_layers(self._decoding(encoder, lengths.m, rows=1)),
                      "decode_two_rows": self.count_layers(self._decoding(encoder, lengths.m, rows=2))}
        self._cache[lengths] = result
        return result

    def _decoding(self, encoder, positions: int, rows: int) -> Callable[[], None]:
        """``positions`` decode steps of ``rows`` query rows sharing one example's state (a fresh cache)."""
        steps = [self._random(rows, 1, self.width) for _ in range(positions)]

        def decode() -> None:
            cache = SimpleNamespace()
            for step in steps:
                self.stack(step, encoder, cache)

        return decode


def probe_counters(config, variants, dtype: str = "float32", seed: int = 0) -> dict[str, ProbeCounter]:
    """A ProbeCounter per variant, all converted from one probe host (see ``models.probe_host_model``)."""
    import torch

    host = probe_host_model(config, torch.device("cpu"), dtype, seed)
    return {variant: ProbeCounter(host, variant, dtype, seed) for variant in variants}


@dataclass
class ScaledCount:
    """Counted FLOPs of the whole decoder's cross-attention at the requested shape, and how they were got."""

    teacher: FlopCount
    decode: FlopCount
    probes: int          # probe runs the coefficients come from
    checked: int         # further probe runs predicted exactly before they were counted
    probe_layers: int
    largest: tuple[int, int]  # the largest probe n and m


def _per_layer_total(values: list[FlopCount], layers: int) -> FlopCount:
    """Layer 0 (it builds what the layers share) plus every later layer as layer 1."""
    if len(values) == 1:
        return values[0].times(layers)
    return values[0] + values[1].times(layers - 1)


def shared_state_decode(one_row: FlopCount, per_row: FlopCount, batch: int, beams: int) -> FlopCount:
    """Decode FLOPs of ``batch`` examples of ``beams`` rows each, from one example decoding one row
    (``one_row``) and what each further row sharing its state adds (``per_row``): srsum's decoder builds
    and steps one state per example, and only the query rows' work grows with the beams."""
    return (one_row + per_row.times(beams - 1)).times(batch)


def count_scaled(counter: ProbeCounter, shape: CostShape, schedule_length: int) -> ScaledCount:
    """Cross-attention FLOPs of a teacher-forced pass and of m decode steps at ``shape``, scaled exactly
    from probe runs; ScalingMismatch when a validation probe is not predicted exactly."""
    import torch

    target = Lengths(shape.n, shape.m, shape.seg_size, schedule_length)
    regime = "one segment" if counter.variant == "full" else target.regime  # full has no segments
    probes, validation = probe_design(regime)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: more threads only add overhead
    try:
        counts = [counter.count(p) for p in probes]
        observed = [counter.count(check) for check in validation]
    finally:
        torch.set_num_threads(threads)

    def scaled(weights, pass_name: str) -> list[FlopCount]:
        per_layer = []
        for index in range(len(counter.layers)):
            values = {b: combine(weights, [getattr(c[pass_name][index], b) for c in counts]) for b in BUCKETS}
            per_layer.append(FlopCount(**values))
        return per_layer

    for check, seen in zip(validation, observed):
        weights = solve_weights(probes, check, regime)
        for pass_name in PASSES:
            if scaled(weights, pass_name) != seen[pass_name]:
                raise ScalingMismatch(f"{counter.variant}, {pass_name}: the probe at n {check.n}, m {check.m}, "
                                      f"s {check.s}, G {check.G} is not predicted by the others")
    weights = solve_weights(probes, target, regime)
    teacher = _per_layer_total(scaled(weights, "teacher"), shape.layers).times(shape.batch)
    one_row = _per_layer_total(scaled(weights, "decode"), shape.layers)
    per_row = _per_layer_total(scaled(weights, "decode_two_rows"), shape.layers) - one_row
    decode = shared_state_decode(one_row, per_row, shape.batch, shape.beams)
    largest = (max(p.n for p in probes + validation), max(p.m for p in probes + validation))
    return ScaledCount(teacher, decode, len(probes), len(validation), len(counter.layers), largest)
