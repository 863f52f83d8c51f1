"""Closed forms: SPEC section 10 (paper Table 1) per head and decoder layer for one example, the terms
the paper leaves out, the matrix products srsum's engine computes, and the checks every length option
goes through. Pure Python: nothing here imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from srsum.errors import SrsumError

PROFILED_VARIANTS = ("full", "segmented", "srformer")

DTYPE_NAMES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
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


def validate_lengths(n: Any, m: Any, seg_size: Any, batch: Any = 1, beams: Any = 1) -> dict[str, int]:
    return {
        "n": require_positive_int(n, "--n"),
        "m": require_positive_int(m, "--m"),
        "seg_size": require_positive_int(seg_size, "--seg-size"),
        "batch": require_positive_int(batch, "--batch"),
        "beams": require_positive_int(beams, "--beams"),
    }


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
