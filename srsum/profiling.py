"""Cross-attention cost profiler: analytic, counted and measured, for full, segmented and srformer.

Everything here returns data; nothing prints. ``srsum profile`` (srsum/cli/profile.py) renders it.

Three kinds of figures, side by side for each variant:

* **Analytic** — SPEC section 10 (paper Table 1), per head and decoder layer for one example, in the
  paper's units (multiply-accumulates for computation, stored values for memory). The terms the
  paper's table leaves out are kept apart: ``q·R`` = m d² and ``RAF + W`` = M d³ + M d².
  Whole-decoder figures multiply by heads x layers x batch. Per decode step a head-layer reads
  2 n d values (full), 2 s d (segmented) or 2 s d + d² + d (srformer); times heads, layers, batch,
  beams and bytes per value, divided by the memory bandwidth, that is the floor a step cannot beat.
* **Counted** — FLOPs of the real cross-attention modules of a model, counted by
  ``torch.utils.flop_counter.FlopCounterMode`` over one teacher-forced pass and over m decode
  steps (``generate``), split into the attention's matrix products, its other work and the host
  model's q/k/v/o projections (identical for all variants). FlopCounterMode only knows matrix
  products, convolutions and CUDA attention kernels; :data:`ELEMENTWISE_FLOPS` lists what we add:

  ====================================================================  ==============================
  op (aten, in-place forms too)                                         FLOPs counted
  ====================================================================  ==============================
  add sub mul div neg abs relu threshold clamp clamp_min clamp_max      1 per output element
  where masked_fill gt ge lt le eq ne maximum minimum exp log sqrt
  rsqrt reciprocal pow sigmoid tanh sign heaviside
  addcmul addcdiv lerp                                                  2 per output element
  _softmax _log_softmax _safe_softmax                                   5 per output element
                                                                        (max, subtract, exp, sum, divide)
  sum mean amax amin max min prod cumsum logsumexp                      1 per input element
  linalg_vector_norm norm                                               2 per input element
  var std                                                               3 per input element
  fused scaled-dot-product attention (CPU and CUDA kernels)             its two products (matrix
                                                                        products) + 5 per score (other)
  ====================================================================  ==============================

  Data movement (copy, cat, index, gather, view, expand) counts zero.
* **Measured** — time per decode step (whole model, and inside the cross-attention modules) and
  peak memory above the model's own weights, on the chosen device. On CUDA the peak comes from the
  caching allocator; elsewhere from :class:`LiveBytesTracker`, which adds up the storages that
  operators create while they are alive.

The counted and measured figures run a model with random weights whose decoder cross-attention is
converted by ``srsum.engine.convert``; the encoder is not run (random encoder states stand in for
its output), because only the decoder's cross-attention differs between the variants.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from srsum.errors import SrsumError

PROFILED_VARIANTS = ("full", "segmented", "srformer")

# t5-small's attention shapes; the vocabulary is cut to 512 because the LM head is not part of
# cross-attention and would only slow the measured decode steps on a CPU.
DEFAULT_MODEL_SHAPES = {
    "d_model": 512,
    "d_kv": 64,
    "num_heads": 8,
    "num_layers": 6,
    "num_decoder_layers": 6,
    "d_ff": 2048,
    "vocab_size": 512,
    "decoder_start_token_id": 0,
    "pad_token_id": 0,
    "eos_token_id": 1,
}
DEFAULT_MODEL_NAME = "t5-small shapes (random weights, vocab 512)"

DTYPE_NAMES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
}

# Peak memory bandwidth in GB/s (vendor data sheets). Matched in order against the CUDA device name,
# every keyword must appear (upper-cased); the first match wins.
GPU_BANDWIDTH_GBPS: tuple[tuple[tuple[str, ...], float, str], ...] = (
    (("H200",), 4800.0, "H200"),
    (("H100", "PCIE"), 2000.0, "H100 PCIe"),
    (("H100", "NVL"), 3900.0, "H100 NVL"),
    (("H100",), 3350.0, "H100 SXM"),
    (("A100", "80GB", "PCIE"), 1935.0, "A100 80GB PCIe"),
    (("A100", "80GB"), 2039.0, "A100 80GB SXM"),
    (("A100",), 1555.0, "A100 40GB"),
    (("L40S",), 864.0, "L40S"),
    (("L40",), 864.0, "L40"),
    (("L4",), 300.0, "L4"),
    (("A10G",), 600.0, "A10G"),
    (("A10",), 600.0, "A10"),
    (("V100",), 900.0, "V100"),
    (("T4",), 320.0, "T4"),
    (("4090",), 1008.0, "RTX 4090"),
    (("3090",), 936.0, "RTX 3090"),
)
# Names accepted by --bandwidth besides a number of GB/s.
BANDWIDTH_NAMES_GBPS = {
    "h200": 4800.0, "h100": 3350.0, "h100-sxm": 3350.0, "h100-pcie": 2000.0, "h100-nvl": 3900.0,
    "a100": 2039.0, "a100-80gb": 2039.0, "a100-40gb": 1555.0, "l40s": 864.0, "l4": 300.0,
    "a10g": 600.0, "a10": 600.0, "v100": 900.0, "t4": 320.0, "rtx4090": 1008.0, "rtx3090": 936.0,
}


# --------------------------------------------------------------------------------------------------
# Shapes and validation
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CostShape:
    """Lengths and model shape one profile is computed for."""

    n: int                 # encoder tokens
    m: int                 # decoder tokens
    seg_size: int          # s as asked; may exceed n (then one segment)
    head_dim: int = 64     # d
    heads: int = 8
    layers: int = 6        # decoder layers
    batch: int = 1
    beams: int = 1

    @property
    def segments(self) -> int:
        """M = ceil(n / s)."""
        return math.ceil(self.n / self.seg_size)

    @property
    def local_keys(self) -> int:
        """Keys one position attends locally: s, or n when s > n."""
        return min(self.seg_size, self.n)

    @property
    def head_layers(self) -> int:
        """Teacher-forced multiplier: heads x layers x batch."""
        return self.heads * self.layers * self.batch

    @property
    def decode_rows(self) -> int:
        """Decode-step multiplier: heads x layers x batch x beams."""
        return self.head_layers * self.beams


def require_positive_int(value: Any, name: str) -> int:
    """``value`` as an int >= 1, or SrsumError naming ``name``."""
    if isinstance(value, bool):
        raise SrsumError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(value, int):
        number = value
    else:
        text = str(value).strip()
        if not text.lstrip("+").isdigit():
            raise SrsumError(f"{name} must be a positive integer, got {value!r}")
        number = int(text)
    if number < 1:
        raise SrsumError(f"{name} must be a positive integer (at least 1), got {number}")
    return number


def resolve_dtype_name(name: str) -> str:
    """Canonical dtype name (float32, float16, bfloat16) or SrsumError."""
    canonical = DTYPE_NAMES.get(str(name).strip().lower())
    if canonical is None:
        raise SrsumError(f"unknown dtype {name!r}: use float32, float16 or bfloat16")
    return canonical


def bytes_per_value(dtype_name: str) -> int:
    return 4 if resolve_dtype_name(dtype_name) == "float32" else 2


def resolve_device(name: str):
    """A usable ``torch.device`` for ``name`` (cpu, cuda, cuda:N, mps) or SrsumError."""
    import torch

    text = str(name).strip().lower()
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise SrsumError(f"unknown device {name!r}: use cpu, cuda, cuda:N or mps") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SrsumError(f"device {name!r} is not available: this machine has no usable CUDA GPU")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SrsumError(f"device {name!r} is not available: only {torch.cuda.device_count()} CUDA GPU(s)")
        return device
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise SrsumError(f"device {name!r} is not available on this machine")
        return device
    raise SrsumError(f"unknown device {name!r}: use cpu, cuda, cuda:N or mps")


# --------------------------------------------------------------------------------------------------
# Analytic model (SPEC section 10), per head and decoder layer, one example
# --------------------------------------------------------------------------------------------------


def _check_variant(variant: str) -> None:
    if variant not in PROFILED_VARIANTS:
        raise SrsumError(f"unknown variant {variant!r}: the profiler covers {', '.join(PROFILED_VARIANTS)}")


def analytic_computation(variant: str, shape: CostShape) -> int:
    """Paper Table 1 computation: full m n d; segmented m s d; srformer n d² + m s d."""
    _check_variant(variant)
    n, m, s, d = shape.n, shape.m, shape.local_keys, shape.head_dim
    if variant == "full":
        return m * n * d
    if variant == "segmented":
        return m * s * d
    return n * d * d + m * s * d


def analytic_memory(variant: str, shape: CostShape) -> int:
    """Paper Table 1 memory in values: full n d + m n; segmented n d + m s; srformer + M d²."""
    _check_variant(variant)
    n, m, s, d = shape.n, shape.m, shape.local_keys, shape.head_dim
    if variant == "full":
        return n * d + m * n
    if variant == "segmented":
        return n * d + m * s
    return n * d + m * s + shape.segments * d * d


def left_out_terms(variant: str, shape: CostShape) -> dict[str, int]:
    """Terms the paper's table leaves out (srformer only): q·R = m d², W = M d³ (X = C Wᵀ per
    segment) and RAF = M d² (the neuron's elementwise update per segment); SPEC: RAF+W = M d³ + M d²."""
    _check_variant(variant)
    if variant != "srformer":
        return {"q·R": 0, "W": 0, "RAF": 0}
    m, d, segments = shape.m, shape.head_dim, shape.segments
    return {"q·R": m * d * d, "W": segments * d**3, "RAF": segments * d * d}


def decode_values_read(variant: str, shape: CostShape) -> int:
    """Values one decode step reads per head-layer: 2 n d; 2 s d; 2 s d + d² + d (R and ν)."""
    _check_variant(variant)
    n, s, d = shape.n, shape.local_keys, shape.head_dim
    if variant == "full":
        return 2 * n * d
    if variant == "segmented":
        return 2 * s * d
    return 2 * s * d + d * d + d


def raf_steps(shape: CostShape, schedule_length: int | None = None) -> int:
    """Distinct segments σ(t) = min(M-1, floor(t M / G)) visited by t = 0..m-1 (RAF steps)."""
    G = schedule_length or shape.m
    M = shape.segments
    return len({min(M - 1, (t * M) // G) for t in range(shape.m)})


def analytic_product_flops(variant: str, shape: CostShape, schedule_length: int | None = None, *,
                           clamp: bool = False, decode: bool = False) -> dict[str, int]:
    """Every matrix product the variant computes, in FLOPs (2 per multiply-accumulate), per head-layer,
    the way srsum's engine computes them.

    full: scores q·Kᵀ and context A·V over n keys; segmented: the same over the s keys of a segment.
    srformer adds P = Kᵀ·V once over all keys (the paper's n d²; keys zero-padded to M whole segments)
    and q·R per position, and for each of its L RAF steps (the segments the schedule visits) the input
    X_σ = C_σ Wᵀ:

    * without a clamp (T5) X_σ is linear, so the engine forms X_σ = P·Wᵀ − K_σᵀ·(V_σ·Wᵀ): 2 s d² per
      step, plus P·Wᵀ (d³) once per sequence;
    * with the clamp (BART) P_σ = K_σᵀ·V_σ (s d²) must be clamped before W applies:
      X_σ = clamp(P)·Wᵀ − clamp(P_σ)·Wᵀ, so P_σ·Wᵀ (d³) per step, plus P·Wᵀ (d³) once.

    The paper's table keeps only n d² of all this; SPEC's left-out W term (M d³) is what the clamp
    path pays and the linear path avoids. The teacher-forced pass and m decode steps do the same
    products (the decoder computes P, ν and P·Wᵀ once, at its first step), except that with
    ``decode`` P comes from the encoder rows' Gram matrix [E 1]ᵀ[E 1] (2 n D² once per example for
    all heads and layers, shown here per head-layer; D = heads x d) and W_k·G·W_vᵀ per head, instead
    of from n projected keys (the decoder projects only the segments it visits).
    """
    _check_variant(variant)
    n, m, s, d = shape.n, shape.m, shape.local_keys, shape.head_dim
    keys = n if variant == "full" else s
    products = {"q·Kᵀ": 2 * m * keys * d, "A·V": 2 * m * keys * d}
    if variant != "srformer":
        return products
    steps = raf_steps(shape, schedule_length)
    if decode:
        width = shape.heads * d  # D
        rows = shape.segments * s if shape.segments > 1 else n  # the zero-padded rows of the Gram matrix
        products["G=[E 1]ᵀ·[E 1]"] = 2 * rows * width * width // (shape.heads * shape.layers)
        products["W_k·G"] = 2 * d * (width + 1) ** 2
        products["P=(W_k·G)·W_vᵀ"] = 2 * d * d * (width + 1)
    else:
        products["P=Kᵀ·V"] = 2 * shape.segments * s * d * d
    products["q·R"] = 2 * m * d * d
    if clamp:
        products["P_σ=K_σᵀ·V_σ"] = 2 * steps * s * d * d
        products["P_σ·Wᵀ"] = 2 * steps * d**3
        products["P·Wᵀ"] = 2 * d**3
    else:
        products["V_σ·Wᵀ"] = 2 * steps * s * d * d
        products["K_σᵀ·(V_σ·Wᵀ)"] = 2 * steps * s * d * d
        products["P·Wᵀ"] = 2 * d**3
    return products


def reduction(value: float | None, baseline: float | None) -> float | None:
    """Fractional reduction of ``value`` against ``baseline`` (0.4375 = 43.75% less), or None."""
    if value is None or baseline is None or baseline == 0:
        return None
    return 1.0 - value / baseline


# --------------------------------------------------------------------------------------------------
# Memory bandwidth
# --------------------------------------------------------------------------------------------------


def gpu_bandwidth_gbps(device_name: str) -> tuple[float, str] | None:
    """Data-sheet bandwidth for a CUDA device name, or None when the card is not in the table."""
    upper = device_name.upper()
    for keywords, gbps, label in GPU_BANDWIDTH_GBPS:
        if all(word in upper for word in keywords):
            return gbps, label
    return None


def parse_bandwidth(text: str) -> float:
    """``--bandwidth``: GB/s as a number, or a card name (h100, h200, a100-80gb, ...)."""
    value = str(text).strip().lower()
    if value in BANDWIDTH_NAMES_GBPS:
        return BANDWIDTH_NAMES_GBPS[value]
    try:
        gbps = float(value.removesuffix("gb/s").strip())
    except ValueError:
        names = ", ".join(sorted(BANDWIDTH_NAMES_GBPS))
        raise SrsumError(f"--bandwidth must be GB/s (a number) or one of {names}; got {text!r}") from None
    if not math.isfinite(gbps) or gbps <= 0:
        raise SrsumError(f"--bandwidth must be a positive number of GB/s, got {text!r}")
    return gbps


_MEASURED_BANDWIDTH: dict[str, float] = {}


def measure_copy_bandwidth_gbps(device, megabytes: int = 128, repeats: int = 3) -> float:
    """Bytes read + written per second by a large tensor copy on ``device`` (best of ``repeats``)."""
    import torch

    key = str(device)
    if key in _MEASURED_BANDWIDTH:
        return _MEASURED_BANDWIDTH[key]
    source = torch.ones(megabytes * 2**20 // 4, dtype=torch.float32, device=device)  # (values,)
    target = torch.empty_like(source)
    best = math.inf
    for _ in range(repeats + 1):  # the first copy warms pages and caches up
        _synchronize(device)
        start = time.perf_counter()
        target.copy_(source)
        _synchronize(device)
        best = min(best, time.perf_counter() - start)
    gbps = 2 * source.numel() * 4 / best / 1e9
    _MEASURED_BANDWIDTH[key] = gbps
    return gbps


def resolve_bandwidth(bandwidth: str | float | None, device) -> tuple[float, str]:
    """(GB/s, where it comes from) for the bandwidth floor."""
    import torch

    if bandwidth is not None:
        gbps = bandwidth if isinstance(bandwidth, (int, float)) else parse_bandwidth(bandwidth)
        if gbps <= 0:
            raise SrsumError(f"--bandwidth must be positive, got {bandwidth}")
        return float(gbps), "given (--bandwidth)"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        known = gpu_bandwidth_gbps(name)
        if known is not None:
            return known[0], f"data sheet, {known[1]}"
        return measure_copy_bandwidth_gbps(device), f"measured copy on {name}"
    return measure_copy_bandwidth_gbps(device), f"measured copy on {device.type}"


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


# --------------------------------------------------------------------------------------------------
# FLOP counting
# --------------------------------------------------------------------------------------------------


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


def count_cross_attention_flops(model, run: Callable[[], Any], memory: "LiveBytesTracker | None" = None) -> FlopCount:
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
# Memory and time measurement
# --------------------------------------------------------------------------------------------------


class LiveBytesTracker:
    """Peak bytes of the tensor storages operators create while it is active (CPU and any device).

    A TorchDispatchMode sees every operator's outputs; each new storage is counted until Python
    frees it (a weak reference's callback), and the running maximum is the peak above what was
    alive before. Views and in-place results share a storage and count once.
    """

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0
        self._seen: dict[int, weakref.ref] = {}
        self._mode = None

    def __enter__(self) -> "LiveBytesTracker":
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        tracker = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                inputs = tracker._storage_ids(tree_flatten((args, kwargs))[0])
                out = func(*args, **(kwargs or {}))
                for item in tree_flatten(out)[0]:
                    tracker._note(item, inputs)
                return out

        self._mode = _Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._mode.__exit__(*exc)
        self._mode = None

    @staticmethod
    def _storage_ids(items: list) -> set[int]:
        import torch

        return {id(item.untyped_storage()) for item in items if isinstance(item, torch.Tensor)}

    def _note(self, item: Any, input_storages: set[int]) -> None:
        """Count ``item``'s storage if the operator made it (not a view or in-place result of an input)."""
        import torch

        if not isinstance(item, torch.Tensor):
            return
        storage = item.untyped_storage()
        key = id(storage)
        if key in input_storages or (key in self._seen and self._seen[key]() is storage):
            return
        size = storage.nbytes()
        self._seen[key] = weakref.ref(storage, lambda _ref, k=key, b=size: self._free(k, b))
        self.live += size
        self.peak = max(self.peak, self.live)

    def _free(self, key: int, size: int) -> None:
        self.live -= size
        self._seen.pop(key, None)


def measure_peak_bytes(run: Callable[[], Any], device) -> int:
    """Peak memory ``run()`` allocates above what was allocated before it."""
    import torch

    with torch.no_grad():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            run()
            torch.cuda.synchronize(device)
            return max(0, torch.cuda.max_memory_allocated(device) - before)
        with LiveBytesTracker() as tracker:
            run()
        return tracker.peak


class CrossAttentionTimer:
    """Wall time spent inside the cross-attention modules (forward hooks; syncs the GPU on each)."""

    def __init__(self, modules: Iterable[Any], device) -> None:
        self.seconds = 0.0
        self._device = device
        self._handles = []
        for module in modules:
            self._handles.append(module.register_forward_pre_hook(self._start))
            self._handles.append(module.register_forward_hook(self._stop))
        self._started = 0.0

    def _start(self, module, args) -> None:
        _synchronize(self._device)
        self._started = time.perf_counter()

    def _stop(self, module, args, output) -> None:
        _synchronize(self._device)
        self.seconds += time.perf_counter() - self._started

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def timed(run: Callable[[], Any], device) -> float:
    """Seconds ``run()`` takes, the device synchronised before and after."""
    import torch

    with torch.no_grad():
        _synchronize(device)
        start = time.perf_counter()
        run()
        _synchronize(device)
        return time.perf_counter() - start


# --------------------------------------------------------------------------------------------------
# Models for the counted and measured figures
# --------------------------------------------------------------------------------------------------


def _engine_attribute(name: str):
    """``srsum.engine.<name>``, or None while the engine is not importable."""
    try:
        import srsum.engine as engine
    except ImportError:
        return None
    return getattr(engine, name, None)


def engine_available() -> bool:
    return _engine_attribute("convert") is not None


def _looks_like_checkpoint(folder: Path) -> bool:
    weights = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
    return any((folder / name).exists() for name in weights)


def load_profile_config(model: str | None):
    """(config, description) for ``--model``: None (t5-small shapes), a config.json, a checkpoint
    folder (loaded with srsum.engine.load_model, its config used) or a hub name (config only)."""
    from transformers import AutoConfig, T5Config

    if model is None:
        return T5Config(**DEFAULT_MODEL_SHAPES), DEFAULT_MODEL_NAME
    _register_srsum_model_types()
    path = Path(model).expanduser()
    if path.is_file():
        return _config_from_file(path), f"config {path}"
    if path.is_dir():
        if _looks_like_checkpoint(path):
            return _config_from_checkpoint(path), f"checkpoint {path}"
        if (path / "config.json").is_file():
            return _config_from_file(path / "config.json"), f"config {path / 'config.json'}"
        raise SrsumError(f"--model {model}: folder has neither config.json nor model weights")
    if model.startswith((".", "/", "~")) or model.endswith(".json"):
        raise SrsumError(f"--model {model}: no such file or folder")
    try:
        with _quiet_hub():
            config = AutoConfig.from_pretrained(model)
    except Exception as error:  # network, unknown repo, bad config: one line for the user
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SrsumError(f"--model {model}: could not fetch its config from the Hugging Face hub ({reason})") from None
    return config, f"hub config {model}"


@contextlib.contextmanager
def _quiet_hub():
    """Silence huggingface_hub's retry warnings: a failed fetch ends in one SrsumError line."""
    import logging

    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub_logger.setLevel(level)


def _register_srsum_model_types() -> None:
    try:
        import srsum  # noqa: F401  (the package registers srformer_t5 / srformer_bart with Auto classes)
        import srsum.engine  # noqa: F401
    except ImportError:
        pass


def _config_from_file(path: Path):
    from transformers import AutoConfig

    try:
        json.loads(path.read_text())
        return AutoConfig.from_pretrained(str(path))
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SrsumError(f"--model {path}: not a readable model config ({reason})") from None


def _config_from_checkpoint(path: Path):
    load_model = _engine_attribute("load_model")
    if load_model is None:
        return _config_from_file(path / "config.json")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        return load_model(str(path)).config
    except SrsumError:
        raise
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SrsumError(f"--model {path}: could not load the checkpoint ({reason})") from None
    finally:
        hf_logging.enable_progress_bar()


def host_model_type(config) -> str:
    """'t5' or 'bart' (srformer_t5 / srformer_bart count as their host), else SrsumError."""
    model_type = str(getattr(config, "model_type", ""))
    for host in ("t5", "bart"):
        if model_type in (host, f"srformer_{host}"):
            return host
    raise SrsumError(f"srsum profile supports T5 and BART models; this config is model_type {model_type!r}")


def attention_shape(config) -> dict[str, int]:
    """d_model, heads, head dim and decoder layers of a T5 or BART config."""
    if host_model_type(config) == "t5":
        layers = getattr(config, "num_decoder_layers", None) or config.num_layers
        return {"d_model": config.d_model, "heads": config.num_heads, "head_dim": config.d_kv, "layers": layers}
    heads = config.decoder_attention_heads
    return {"d_model": config.d_model, "heads": heads, "head_dim": config.d_model // heads, "layers": config.decoder_layers}


def build_host_model(config, device, dtype_name: str, seed: int = 0):
    """A randomly initialised T5/BART with ``config``'s shapes (an srformer config builds its host)."""
    import torch
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    host = host_model_type(config)
    settings = {k: v for k, v in config.to_dict().items() if not k.startswith("srformer_")}
    settings.pop("model_type", None)
    settings.pop("architectures", None)
    host_config = AutoConfig.for_model(host, **settings)
    _fill_special_tokens(host_config)
    torch.manual_seed(seed)
    model = AutoModelForSeq2SeqLM.from_config(host_config)
    return model.to(device=device, dtype=getattr(torch, resolve_dtype_name(dtype_name))).eval()


def _fill_special_tokens(config) -> None:
    """Generation needs a start, end and pad token; random models from bare configs may lack them."""
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = 0
    if getattr(config, "eos_token_id", None) is None:
        config.eos_token_id = 1
    if getattr(config, "decoder_start_token_id", None) is None:
        config.decoder_start_token_id = config.pad_token_id


def make_variant_model(host_model, variant: str, seg_size: int, schedule_length: int):
    """A copy of ``host_model`` whose cross-attention is ``variant`` (srsum.engine.convert).

    Without the engine only ``full`` is available (the host's own attention); other variants
    raise SrsumError.
    """
    convert = _engine_attribute("convert")
    model = copy.deepcopy(host_model)
    if convert is None:
        if variant == "full":
            return model
        raise SrsumError(f"variant {variant!r} needs srsum.engine, which is not available")
    converted = convert(model, attention=variant, seg_size=seg_size, schedule_length=schedule_length)
    return converted.eval()


@dataclass
class ProfileInputs:
    """Random encoder output standing in for the encoder, and teacher-forced decoder tokens."""

    encoder_states: Any    # (batch, n, d_model)
    attention_mask: Any    # (batch, n), all ones
    decoder_tokens: Any    # (batch, m)


def make_inputs(shape: CostShape, d_model: int, vocab_size: int, device, dtype_name: str, seed: int = 0) -> ProfileInputs:
    import torch

    generator = torch.Generator().manual_seed(seed)
    states = torch.randn(shape.batch, shape.n, d_model, generator=generator)
    tokens = torch.randint(2, max(3, vocab_size), (shape.batch, shape.m), generator=generator)
    return ProfileInputs(
        encoder_states=states.to(device=device, dtype=getattr(torch, resolve_dtype_name(dtype_name))),
        attention_mask=torch.ones(shape.batch, shape.n, dtype=torch.long, device=device),
        decoder_tokens=tokens.to(device),
    )


def teacher_forced_run(model, inputs: ProfileInputs) -> Callable[[], Any]:
    """One teacher-forced decoder pass over all m positions (the encoder is not run)."""
    from transformers.modeling_outputs import BaseModelOutput

    def run():
        return model(
            encoder_outputs=BaseModelOutput(last_hidden_state=inputs.encoder_states),
            attention_mask=inputs.attention_mask,
            decoder_input_ids=inputs.decoder_tokens,
            use_cache=False,
        )

    return run


def decode_run(model, inputs: ProfileInputs, steps: int, beams: int) -> Callable[[], Any]:
    """``steps`` incremental decode steps with ``generate`` (exactly that many: EOS suppressed)."""
    from transformers import GenerationConfig
    from transformers.modeling_outputs import BaseModelOutput

    config = model.config
    generation = GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id,
        bos_token_id=getattr(config, "bos_token_id", None),
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        max_new_tokens=steps,
        min_new_tokens=steps,
        num_beams=beams,
        do_sample=False,
    )

    def run():
        return model.generate(
            encoder_outputs=BaseModelOutput(last_hidden_state=inputs.encoder_states),
            attention_mask=inputs.attention_mask,
            generation_config=generation,
        )

    return run


# --------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------


@dataclass
class Measured:
    """Measured on the device, per decode step, averaged over m steps."""

    decode_step_s: float             # whole model (decoder and LM head; the encoder is not run)
    cross_attention_step_s: float    # inside the cross-attention modules of all layers
    decode_peak_bytes: int           # peak above the weights during the m decode steps
    teacher_forced_peak_bytes: int   # peak above the weights during one teacher-forced pass


@dataclass
class VariantProfile:
    variant: str
    computation: int                 # SPEC §10, per head-layer (MACs)
    memory: int                      # SPEC §10, per head-layer (values)
    left_out: dict[str, int]         # q·R, W and RAF, per head-layer
    values_read_per_step: int        # per head-layer
    products: dict[str, int]         # analytic FLOPs of each matrix product, per head-layer, teacher-forced
    decode_products: dict[str, int]  # over m decode steps (the engine does the same products)
    counted_teacher_forced: FlopCount | None = None
    counted_decode: FlopCount | None = None
    measured: Measured | None = None
    missing: str | None = None       # why counted / measured figures are absent


@dataclass
class ReportRow:
    section: str
    label: str
    unit: str
    values: dict[str, float | None]

    def reduction(self, variant: str) -> float | None:
        return reduction(self.values.get(variant), self.values.get("full"))


@dataclass
class ProfileReport:
    shape: CostShape
    model: str
    device: str
    dtype: str
    bandwidth_gbps: float
    bandwidth_source: str
    schedule_length: int
    variants: dict[str, VariantProfile]
    notes: list[str] = field(default_factory=list)

    @property
    def bytes_per_value(self) -> int:
        return bytes_per_value(self.dtype)

    def rows(self) -> list[ReportRow]:
        """The table: one row per quantity, a value per variant (None where not available)."""
        return _analytic_rows(self) + _counted_rows(self) + _decode_rows(self)

    def to_dict(self) -> dict[str, Any]:
        rows = []
        for row in self.rows():
            reductions = {v: row.reduction(v) for v in self.variants if v != "full"}
            rows.append({**asdict(row), "reduction_vs_full": reductions})
        return {
            "shape": {**asdict(self.shape), "segments": self.shape.segments, "local_keys": self.shape.local_keys},
            "model": self.model,
            "device": self.device,
            "dtype": self.dtype,
            "bandwidth_gbps": self.bandwidth_gbps,
            "bandwidth_source": self.bandwidth_source,
            "schedule_length": self.schedule_length,
            "variants": {name: _variant_dict(v) for name, v in self.variants.items()},
            "rows": rows,
            "notes": list(self.notes),
        }


def _variant_dict(profile: VariantProfile) -> dict[str, Any]:
    data = asdict(profile)
    for key in ("counted_teacher_forced", "counted_decode"):
        count = getattr(profile, key)
        if count is not None:
            data[key]["attention"] = count.attention
    return data


def _per_variant(report: ProfileReport, value: Callable[[VariantProfile], float | None]) -> dict[str, float | None]:
    return {name: value(profile) for name, profile in report.variants.items()}


def _analytic_rows(report: ProfileReport) -> list[ReportRow]:
    shape, size = report.shape, report.bytes_per_value
    whole = shape.head_layers
    section = "analytic (SPEC §10)"

    def with_left_out(p: VariantProfile) -> int:
        return p.computation + sum(p.left_out.values())

    return [
        ReportRow(section, "computation / head-layer", "MAC", _per_variant(report, lambda p: p.computation)),
        ReportRow(section, "computation / decoder", "MAC", _per_variant(report, lambda p: p.computation * whole)),
        ReportRow(section, "left out: q·R / head-layer", "MAC", _per_variant(report, lambda p: p.left_out["q·R"])),
        ReportRow(section, "left out: W / head-layer", "MAC", _per_variant(report, lambda p: p.left_out["W"])),
        ReportRow(section, "left out: RAF / head-layer", "MAC", _per_variant(report, lambda p: p.left_out["RAF"])),
        ReportRow(section, "computation + left out / decoder", "MAC", _per_variant(report, lambda p: with_left_out(p) * whole)),
        ReportRow(section, "memory / head-layer", "values", _per_variant(report, lambda p: p.memory)),
        ReportRow(section, "memory / decoder", "bytes", _per_variant(report, lambda p: p.memory * whole * size)),
    ]


def _counted(count: FlopCount | None, part: str) -> float | None:
    return None if count is None else getattr(count, part)


def _counted_rows(report: ProfileReport) -> list[ReportRow]:
    shape = report.shape
    section = "FLOPs (FlopCounterMode)"
    return [
        ReportRow(section, "analytic matrix products, teacher-forced", "FLOP",
                  _per_variant(report, lambda p: sum(p.products.values()) * shape.head_layers)),
        ReportRow(section, "counted matrix products, teacher-forced", "FLOP",
                  _per_variant(report, lambda p: _counted(p.counted_teacher_forced, "products"))),
        ReportRow(section, "counted other ops, teacher-forced", "FLOP",
                  _per_variant(report, lambda p: _counted(p.counted_teacher_forced, "other"))),
        ReportRow(section, "analytic matrix products, m decode steps", "FLOP",
                  _per_variant(report, lambda p: sum(p.decode_products.values()) * shape.decode_rows)),
        ReportRow(section, "counted matrix products, m decode steps", "FLOP",
                  _per_variant(report, lambda p: _counted(p.counted_decode, "products"))),
        ReportRow(section, "counted other ops, m decode steps", "FLOP",
                  _per_variant(report, lambda p: _counted(p.counted_decode, "other"))),
        ReportRow(section, "q/k/v/o projections, teacher-forced", "FLOP",
                  _per_variant(report, lambda p: _counted(p.counted_teacher_forced, "projections"))),
        ReportRow(section, "q/k/v/o projections, m decode steps", "FLOP",  # srsum projects only visited segments
                  _per_variant(report, lambda p: _counted(p.counted_decode, "projections"))),
    ]


def _measured(profile: VariantProfile, part: str) -> float | None:
    return None if profile.measured is None else getattr(profile.measured, part)


def _decode_rows(report: ProfileReport) -> list[ReportRow]:
    shape, size = report.shape, report.bytes_per_value
    section = f"decode step ({report.device})"
    bytes_per_step = lambda p: p.values_read_per_step * shape.decode_rows * size  # noqa: E731
    floor = lambda p: bytes_per_step(p) / (report.bandwidth_gbps * 1e9)  # noqa: E731
    return [
        ReportRow(section, "bytes read / step", "bytes", _per_variant(report, bytes_per_step)),
        ReportRow(section, f"bandwidth floor / step @ {report.bandwidth_gbps:,.0f} GB/s", "s", _per_variant(report, floor)),
        ReportRow(section, "measured time / step, cross-attention", "s",
                  _per_variant(report, lambda p: _measured(p, "cross_attention_step_s"))),
        ReportRow(section, "measured time / step, whole decoder", "s",
                  _per_variant(report, lambda p: _measured(p, "decode_step_s"))),
        ReportRow(section, "measured peak memory, m decode steps", "bytes",
                  _per_variant(report, lambda p: _measured(p, "decode_peak_bytes"))),
        ReportRow(section, "measured peak memory, teacher-forced", "bytes",
                  _per_variant(report, lambda p: _measured(p, "teacher_forced_peak_bytes"))),
    ]


def analytic_profile(variant: str, shape: CostShape, schedule_length: int | None = None,
                     clamp: bool = False) -> VariantProfile:
    """The analytic part of one variant's profile (``clamp``: the RAF inputs are clamped, BART)."""
    return VariantProfile(
        variant=variant,
        computation=analytic_computation(variant, shape),
        memory=analytic_memory(variant, shape),
        left_out=left_out_terms(variant, shape),
        values_read_per_step=decode_values_read(variant, shape),
        products=analytic_product_flops(variant, shape, schedule_length, clamp=clamp),
        decode_products=analytic_product_flops(variant, shape, schedule_length, clamp=clamp, decode=True),
    )


def _time_decode(model, decode: Callable[[], Any], steps: int, device) -> tuple[float, float]:
    """(whole step, cross-attention share of a step) in seconds, averaged over ``steps``.

    On a CPU one run with timing hooks gives both (the hooks cost microseconds); on a GPU the hooks
    must synchronise, so the whole-step time comes from a second run without them.
    """
    timer = CrossAttentionTimer(cross_attention_modules(model).values(), device)
    try:
        hooked_s = timed(decode, device)
    finally:
        timer.remove()
    whole_s = hooked_s if device.type == "cpu" else timed(decode, device)
    return whole_s / steps, timer.seconds / steps


def _run_variant(profile: VariantProfile, model, inputs: ProfileInputs, shape: CostShape, device,
                 count: bool, measure: bool) -> None:
    """Counted FLOPs and measured time / peak memory of one variant's model.

    Peak memory comes from the CUDA allocator in a plain run, elsewhere from a LiveBytesTracker
    riding along with the FLOP-counting run (one slow dispatch-mode pass instead of two).
    """
    teacher = teacher_forced_run(model, inputs)
    decode = decode_run(model, inputs, shape.m, shape.beams)
    track = measure and device.type != "cuda"
    peaks = {}
    for name, run in (("teacher", teacher), ("decode", decode)):
        tracker = LiveBytesTracker() if track else None
        if count:
            counted = count_cross_attention_flops(model, run, tracker)
            setattr(profile, "counted_teacher_forced" if name == "teacher" else "counted_decode", counted)
        elif track:
            peaks[name] = measure_peak_bytes(run, device)
        if tracker is not None and count:
            peaks[name] = tracker.peak
    if not measure:
        return
    timed(decode_run(model, inputs, min(2, shape.m), shape.beams), device)  # warm-up
    if not track:
        peaks = {"teacher": measure_peak_bytes(teacher, device), "decode": measure_peak_bytes(decode, device)}
    step_s, cross_s = _time_decode(model, decode, shape.m, device)
    profile.measured = Measured(decode_step_s=step_s, cross_attention_step_s=cross_s,
                                decode_peak_bytes=peaks["decode"], teacher_forced_peak_bytes=peaks["teacher"])


@dataclass
class ProfileSetup:
    """What one or more profiles share: the resolved model, device, dtype and bandwidth."""

    config: Any
    model_name: str
    device: Any
    dtype: str
    bandwidth_gbps: float
    bandwidth_source: str
    host_model: Any = None


def prepare(model: str | None = None, device: str = "cpu", dtype: str = "float32",
            bandwidth: str | float | None = None) -> ProfileSetup:
    """Resolve --model, --device, --dtype and --bandwidth (SrsumError on bad input)."""
    dtype_name = resolve_dtype_name(dtype)
    torch_device = resolve_device(device)
    config, description = load_profile_config(model)
    host_model_type(config)
    gbps, source = resolve_bandwidth(bandwidth, torch_device)
    return ProfileSetup(config, description, torch_device, dtype_name, gbps, source)


def validate_lengths(n: Any, m: Any, seg_size: Any, batch: Any = 1, beams: Any = 1) -> dict[str, int]:
    return {
        "n": require_positive_int(n, "--n"),
        "m": require_positive_int(m, "--m"),
        "seg_size": require_positive_int(seg_size, "--seg-size"),
        "batch": require_positive_int(batch, "--batch"),
        "beams": require_positive_int(beams, "--beams"),
    }


def profile_with(setup: ProfileSetup, *, n: int, m: int, seg_size: int, batch: int = 1, beams: int = 1,
                 schedule_length: int | None = None, count: bool = True, measure: bool = True,
                 variants: Sequence[str] = PROFILED_VARIANTS, seed: int = 0) -> ProfileReport:
    """One profile with an already prepared setup (the sweep reuses it across lengths)."""
    lengths = validate_lengths(n, m, seg_size, batch, beams)
    G = require_positive_int(schedule_length, "--schedule-length") if schedule_length else lengths["m"]
    dims = attention_shape(setup.config)
    shape = CostShape(head_dim=dims["head_dim"], heads=dims["heads"], layers=dims["layers"], **lengths)
    report = ProfileReport(
        shape=shape, model=setup.model_name, device=str(setup.device), dtype=setup.dtype,
        bandwidth_gbps=setup.bandwidth_gbps, bandwidth_source=setup.bandwidth_source, schedule_length=G,
        variants={v: analytic_profile(v, shape, G, clamp=host_model_type(setup.config) == "bart") for v in variants},
    )
    _note_shape(report)
    if count or measure:
        _run_models(report, setup, dims["d_model"], count, measure, seed)
    return report


def _note_shape(report: ProfileReport) -> None:
    shape = report.shape
    if shape.seg_size > shape.n:
        report.notes.append(f"s = {shape.seg_size} > n = {shape.n}: one segment (M = 1), local attention over all n keys")
    if shape.segments > report.schedule_length:
        report.notes.append(
            f"M = {shape.segments} segments > G = {report.schedule_length}: some segments are never attended locally")


def _run_models(report: ProfileReport, setup: ProfileSetup, d_model: int, count: bool, measure: bool, seed: int) -> None:
    if setup.host_model is None:
        setup.host_model = build_host_model(setup.config, setup.device, setup.dtype, seed)
    vocab = setup.host_model.config.vocab_size
    inputs = make_inputs(report.shape, d_model, vocab, setup.device, setup.dtype, seed)
    for name, profile in report.variants.items():
        try:
            model = make_variant_model(setup.host_model, name, report.shape.seg_size, report.schedule_length)
        except SrsumError as error:
            profile.missing = str(error)
            continue
        _run_variant(profile, model, inputs, report.shape, setup.device, count, measure)
        del model
    missing = sorted({p.missing for p in report.variants.values() if p.missing})
    report.notes.extend(missing)
    report.notes.extend(_count_mismatches(report))


def _count_mismatches(report: ProfileReport, tolerance: float = 0.05) -> list[str]:
    """Notes where counted matrix products stray from the analytic ones by more than ``tolerance``:
    the implementation does work the cost model does not expect (e.g. a decode step redoing O(n) work)."""
    notes = []
    shape = report.shape
    for name, profile in report.variants.items():
        checks = (("teacher-forced", profile.counted_teacher_forced, profile.products, shape.head_layers),
                  ("decode", profile.counted_decode, profile.decode_products, shape.decode_rows))
        for path, counted, products, rows in checks:
            analytic = sum(products.values()) * rows
            if counted is not None and analytic and abs(counted.products - analytic) > tolerance * analytic:
                notes.append(f"{name}, {path}: counted matrix products are {counted.products / analytic:.2f} x "
                             f"the analytic ones")
    return notes


def profile(*, model: str | None = None, n: int = 1024, m: int = 128, seg_size: int = 64, batch: int = 1,
            beams: int = 1, device: str = "cpu", dtype: str = "float32", bandwidth: str | float | None = None,
            schedule_length: int | None = None, count: bool = True, measure: bool = True,
            variants: Sequence[str] = PROFILED_VARIANTS, seed: int = 0) -> ProfileReport:
    """Analytic, counted and measured cross-attention cost of each variant at one (n, m, s)."""
    validate_lengths(n, m, seg_size, batch, beams)
    setup = prepare(model, device, dtype, bandwidth)
    return profile_with(setup, n=n, m=m, seg_size=seg_size, batch=batch, beams=beams,
                        schedule_length=schedule_length, count=count, measure=measure,
                        variants=variants, seed=seed)


# --------------------------------------------------------------------------------------------------
# Sweep
# --------------------------------------------------------------------------------------------------

DEFAULT_SWEEP_N = (256, 512, 1024, 2048, 4096)
DEFAULT_SWEEP_M = (64, 128, 256, 512, 1024)


@dataclass
class SweepReport:
    over: str                         # "n" (m fixed) or "m" (n = 8 m, the paper's Fig. 5)
    lengths: list[int]
    points: list[ProfileReport]

    def series(self) -> dict[str, dict[str, list[float | None]]]:
        """Quantity -> variant -> values along the sweep (what the JSON holds and the plot draws)."""
        picks = {
            "computation": lambda r, p: p.computation * r.shape.head_layers,
            "computation_with_left_out": lambda r, p: (p.computation + sum(p.left_out.values())) * r.shape.head_layers,
            "memory_bytes": lambda r, p: p.memory * r.shape.head_layers * r.bytes_per_value,
            "analytic_product_flops": lambda r, p: sum(p.products.values()) * r.shape.head_layers,
            "counted_product_flops": lambda r, p: _counted(p.counted_teacher_forced, "products"),
            "counted_attention_flops": lambda r, p: _counted(p.counted_teacher_forced, "attention"),
            "bandwidth_floor_s": lambda r, p: p.values_read_per_step * r.shape.decode_rows * r.bytes_per_value
            / (r.bandwidth_gbps * 1e9),
            "measured_cross_attention_step_s": lambda r, p: _measured(p, "cross_attention_step_s"),
            "measured_decode_step_s": lambda r, p: _measured(p, "decode_step_s"),
            "measured_teacher_forced_peak_bytes": lambda r, p: _measured(p, "teacher_forced_peak_bytes"),
        }
        variants = list(self.points[0].variants) if self.points else []
        return {
            quantity: {v: [pick(r, r.variants[v]) for r in self.points] for v in variants}
            for quantity, pick in picks.items()
        }

    def to_dict(self) -> dict[str, Any]:
        first = self.points[0] if self.points else None
        return {
            "over": self.over,
            "lengths": list(self.lengths),
            "n": [r.shape.n for r in self.points],
            "m": [r.shape.m for r in self.points],
            "seg_size": first.shape.seg_size if first else None,
            "model": first.model if first else None,
            "device": first.device if first else None,
            "dtype": first.dtype if first else None,
            "bandwidth_gbps": first.bandwidth_gbps if first else None,
            "series": self.series(),
            "points": [r.to_dict() for r in self.points],
        }


def sweep_lengths(over: str, lengths: Sequence[Any] | None, n: int, m: int) -> list[tuple[int, int]]:
    """(n, m) pairs: over n with m fixed, or over m with n = 8 m."""
    if over not in ("n", "m"):
        raise SrsumError(f"--sweep-over must be n or m, got {over!r}")
    defaults = DEFAULT_SWEEP_N if over == "n" else DEFAULT_SWEEP_M
    values = [require_positive_int(v, "--lengths") for v in (lengths or defaults)]
    if not values:
        raise SrsumError("--lengths needs at least one length")
    return [(v, m) if over == "n" else (8 * v, v) for v in values]


def sweep(*, over: str = "n", lengths: Sequence[Any] | None = None, model: str | None = None, n: int = 1024,
          m: int = 128, seg_size: int = 64, batch: int = 1, beams: int = 1, device: str = "cpu",
          dtype: str = "float32", bandwidth: str | float | None = None, count: bool = True,
          measure: bool = True, seed: int = 0, progress: Callable[[int, int], None] | None = None) -> SweepReport:
    """Profiles along n (m fixed) or along m (n = 8 m): the scaling table, JSON and plot's data."""
    validate_lengths(n, m, seg_size, batch, beams)
    pairs = sweep_lengths(over, lengths, n, m)
    setup = prepare(model, device, dtype, bandwidth)
    points = []
    for index, (point_n, point_m) in enumerate(pairs):
        if progress is not None:
            progress(index, len(pairs))
        points.append(profile_with(setup, n=point_n, m=point_m, seg_size=seg_size, batch=batch, beams=beams,
                                   count=count, measure=measure, seed=seed))
    return SweepReport(over=over, lengths=[p[0] if over == "n" else p[1] for p in pairs], points=points)


def write_sweep_json(report: SweepReport, path: str | os.PathLike) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
    return target


def write_profile_json(report: ProfileReport, path: str | os.PathLike) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
    return target


VARIANT_COLOURS = {"full": "tab:red", "segmented": "tab:blue", "srformer": "tab:green"}


def plot_sweep(report: SweepReport, path: str | os.PathLike) -> Path:
    """PNG: computation, memory and decode step against length; analytic solid, counted/measured dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = report.series()
    x = report.lengths
    figure, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    panels = (
        ("computation (teacher-forced FLOPs)", "analytic_product_flops", "counted_product_flops", "FLOPs", 1.0,
         "counted"),
        ("memory (bytes)", "memory_bytes", "measured_teacher_forced_peak_bytes", "bytes", 1.0, "measured peak"),
        ("decode step (ms)", "bandwidth_floor_s", "measured_cross_attention_step_s", "ms", 1e3, "measured"),
    )
    for axis, (title, analytic_key, measured_key, unit, scale, measured_word) in zip(axes, panels):
        for variant, colour in VARIANT_COLOURS.items():
            if variant not in series[analytic_key]:
                continue
            _plot_line(axis, x, series[analytic_key][variant], scale, colour, "-", f"{variant} analytic")
            _plot_line(axis, x, series[measured_key][variant], scale, colour, "--", f"{variant} {measured_word}",
                       marker="o")
        axis.set_title(title)
        axis.set_xlabel(_sweep_axis_label(report))
        axis.set_ylabel(unit)
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    axes[0].text(0.01, -0.2, "analytic matrix products (solid); counted by FlopCounterMode (dashed; on top when equal)",
                 transform=axes[0].transAxes, fontsize=7)
    axes[1].text(0.01, -0.2, "analytic: SPEC §10 memory; measured: teacher-forced peak", transform=axes[1].transAxes,
                 fontsize=7)
    axes[2].text(0.01, -0.2, "analytic: bandwidth floor; measured: cross-attention time/step",
                 transform=axes[2].transAxes, fontsize=7)
    first = report.points[0]
    figure.suptitle(f"cross-attention cost, s = {first.shape.seg_size}, {first.model}, {first.device}", fontsize=10)
    figure.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=110)
    plt.close(figure)
    return target


def _plot_line(axis, x: list[int], values: list[float | None], scale: float, colour: str, style: str, label: str,
               marker: str | None = None) -> None:
    points = [(xi, v * scale) for xi, v in zip(x, values) if v is not None and v > 0]
    if points:
        axis.plot([p[0] for p in points], [p[1] for p in points], linestyle=style, color=colour, marker=marker,
                  label=label)


def _sweep_axis_label(report: SweepReport) -> str:
    if report.over == "n":
        return f"encoder length n (m = {report.points[0].shape.m})"
    return "decoder length m (n = 8 m)"


def write_sweep_outputs(report: SweepReport, output_dir: str | os.PathLike) -> tuple[Path, Path]:
    """sweep.json and sweep.png in ``output_dir``."""
    folder = Path(output_dir)
    return write_sweep_json(report, folder / "sweep.json"), plot_sweep(report, folder / "sweep.png")
