"""Closed forms: SPEC section 10 (paper Table 1) per head and decoder layer for one example, the terms
the paper leaves out, the matrix products srsum's engine computes, and the checks every length option
goes through. Pure Python: nothing here imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
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
    d_model: int | None = None  # D, the width of the encoder rows; None: heads x d

    @property
    def segments(self) -> int:
        """M = ceil(n / s)."""
        return math.ceil(self.n / self.seg_size)

    @property
    def local_keys(self) -> int:
        """Keys one position attends locally: s, or n when s > n."""
        return min(self.seg_size, self.n)

    @property
    def width(self) -> int:
        """D: d_model, or heads x d when not given."""
        return self.d_model if self.d_model is not None else self.heads * self.head_dim

    @property
    def head_layers(self) -> int:
        """Teacher-forced multiplier: heads x layers x batch."""
        return self.heads * self.layers * self.batch

    @property
    def decode_rows(self) -> int:
        """Decode-step multiplier: heads x layers x batch x beams."""
        return self.head_layers * self.beams


# The largest value each option takes. Lengths up to 2^20 tokens cover any document a T5/BART
# summarizer reads (the figures are closed forms or scaled counts, so their cost does not grow with
# them); past that a number is a typo, and a fixed cap keeps every later step bounded.
MAX_LENGTH = 1_048_576
LIMITS = {
    "--n": MAX_LENGTH, "--m": MAX_LENGTH, "--seg-size": MAX_LENGTH, "--schedule-length": MAX_LENGTH,
    "--encoder-block": MAX_LENGTH, "--lengths": MAX_LENGTH, "--batch": 4096, "--beams": 64,
}


def require_positive_int(value: Any, name: str, maximum: int | None = None) -> int:
    """``value`` as a whole number from 1 to ``maximum`` (default: ``LIMITS[name]``, else no cap), or a
    one-line SrsumError naming ``name``. Accepts ints and digit strings ("1024", "+8"); refuses bools,
    floats, signs, exponents ("1e12") and anything else."""
    limit = maximum if maximum is not None else LIMITS.get(name)
    expected = f"a whole number from 1 to {limit:,}" if limit else "a positive whole number"
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise SrsumError(f"{name} must be {expected}, got {value!r}")
    if isinstance(value, int):
        number = value
    else:
        text = value.strip().replace("_", "")
        digits = text[1:] if text.startswith("+") else text
        if not digits.isascii() or not digits.isdigit():
            raise SrsumError(f"{name} must be {expected}, got {value!r}")
        if limit and len(digits.lstrip("0")) > len(str(limit)):
            raise SrsumError(f"{name} must be {expected}, got {value!r} (too large)")
        number = int(digits)
    if number < 1:
        raise SrsumError(f"{name} must be {expected}, got {number}")
    if limit and number > limit:
        raise SrsumError(f"{name} must be {expected}, got {number:,} (too large)")
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
    """The lengths, batch and beams as ints within :data:`LIMITS` (SrsumError naming the option)."""
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


@lru_cache(maxsize=256)
def schedule_groups(segments: int, schedule_length: int, positions: int) -> tuple[int, int]:
    """(L, S): the distinct segments σ(t) = min(M-1, floor(t M / G)) visits for t < m, and the most
    positions that share one. O(L): each group's end comes from its first position by a ceiling division
    (about 0.3 s at L = 2^20, once: the result is cached)."""
    M, G, m = segments, schedule_length, positions
    groups = largest = 0
    t = 0
    while t < m:
        sigma = min(M - 1, (t * M) // G)
        # first position past this group: the smallest t' with floor(t' M / G) >= sigma + 1
        end = m if sigma == M - 1 else min(m, -(-(sigma + 1) * G // M))
        groups += 1
        largest = max(largest, end - t)
        t = end
    return groups, largest


def raf_steps(shape: CostShape, schedule_length: int | None = None) -> int:
    """Distinct segments σ(t) = min(M-1, floor(t M / G)) visited by t = 0..m-1 (RAF steps)."""
    return schedule_groups(shape.segments, schedule_length or shape.m, shape.m)[0]


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
    path pays and the linear path avoids. A teacher-forced pass lays the positions out as L groups of
    S slots (S: the largest group), so its per-position products run over L·S slots (= m when the
    groups are equal, as at the paper's settings). The m decode steps do the same products one
    position at a time (the decoder computes P, ν and P·Wᵀ once, at its first step), except that P
    comes from the encoder rows' Gram matrix (:func:`analytic_shared_decode_flops`, once per example
    for all heads and layers) through W_k·G·W_vᵀ per head (D = d_model), instead of from n projected
    keys: the decoder projects only the segments it visits.
    """
    _check_variant(variant)
    n, m, s, d = shape.n, shape.m, shape.local_keys, shape.head_dim
    if variant == "full":
        return {"q·Kᵀ": 2 * m * n * d, "A·V": 2 * m * n * d}
    steps, slots = schedule_groups(shape.segments, schedule_length or shape.m, m)
    positions = m if decode else steps * slots
    products = {"q·Kᵀ": 2 * positions * s * d, "A·V": 2 * positions * s * d}
    if variant != "srformer":
        return products
    if decode:
        width = shape.width
        products["W_k·G"] = 2 * d * (width + 1) ** 2
        products["P=(W_k·G)·W_vᵀ"] = 2 * d * d * (width + 1)
    else:
        products["P=Kᵀ·V"] = 2 * shape.segments * s * d * d
    products["q·R"] = 2 * positions * d * d
    if clamp:
        products["P_σ=K_σᵀ·V_σ"] = 2 * steps * s * d * d
        products["P_σ·Wᵀ"] = 2 * steps * d**3
        products["P·Wᵀ"] = 2 * d**3
    else:
        products["V_σ·Wᵀ"] = 2 * steps * s * d * d
        products["K_σᵀ·(V_σ·Wᵀ)"] = 2 * steps * s * d * d
        products["P·Wᵀ"] = 2 * d**3
    return products


# Decode products each query row computes (a beam of its own); srsum's decoder computes every other decode
# product once per example, into the state the example's beams share.
ROW_DECODE_PRODUCTS = frozenset({"q·Kᵀ", "A·V", "q·R"})


def analytic_shared_decode_flops(variant: str, shape: CostShape) -> dict[str, int]:
    """Products a decoder computes once per example for all heads and layers: srformer's Gram matrix
    [E 1]ᵀ[E 1] of the encoder rows, 2 n' D² (n' = M s zero-padded rows, D = d_model)."""
    _check_variant(variant)
    if variant != "srformer":
        return {}
    rows = shape.segments * shape.local_keys
    return {"G=[E 1]ᵀ·[E 1]": 2 * rows * shape.width * shape.width}


def whole_decoder_products(variant: str, shape: CostShape, schedule_length: int | None = None, *,
                           clamp: bool = False, decode: bool = False) -> int:
    """Matrix-product FLOPs of the whole decoder's cross-attention: a teacher-forced pass (x heads x
    layers x batch), or m decode steps as srsum's decoder runs them: the query rows' products
    (:data:`ROW_DECODE_PRODUCTS`) x heads x layers x batch x beams, the state's x heads x layers x batch
    (one state per example, shared by its beams), and the shared products once per example."""
    products = analytic_product_flops(variant, shape, schedule_length, clamp=clamp, decode=decode)
    if not decode:
        return sum(products.values()) * shape.head_layers
    per_row = sum(v for name, v in products.items() if name in ROW_DECODE_PRODUCTS)
    per_example = sum(products.values()) - per_row
    shared = sum(analytic_shared_decode_flops(variant, shape).values())
    return per_row * shape.decode_rows + per_example * shape.head_layers + shared * shape.batch


def reduction(value: float | None, baseline: float | None) -> float | None:
    """Fractional reduction of ``value`` against ``baseline`` (0.4375 = 43.75% less), or None."""
    if value is None or baseline is None or baseline == 0:
        return None
    return 1.0 - value / baseline


# --------------------------------------------------------------------------------------------------
# The encoder's self-attention (issue 16): Hugging Face's n x n scores against query blocks
# --------------------------------------------------------------------------------------------------

# srsum.engine.settings.DEFAULT_ENCODER_BLOCK (a test keeps the two equal; importing the engine here
# would load transformers for a closed form)
DEFAULT_ENCODER_BLOCK = 512
ENCODER_KINDS = ("n×n scores", "blocked")


@dataclass(frozen=True)
class EncoderShape:
    """The encoder's self-attention: n tokens, its heads, head dim and layers, the batch, and the query
    block of the blocked encoder (used only for inputs longer than the block)."""

    n: int
    head_dim: int = 64
    heads: int = 8
    layers: int = 6
    batch: int = 1
    block: int = DEFAULT_ENCODER_BLOCK

    @property
    def block_rows(self) -> int:
        """Query rows whose scores exist at once in the blocked encoder: the block, or n if shorter."""
        return min(self.block, self.n)

    @property
    def head_layers(self) -> int:
        return self.heads * self.layers * self.batch


def _check_encoder_kind(kind: str) -> None:
    if kind not in ENCODER_KINDS:
        raise SrsumError(f"unknown encoder attention {kind!r}: use {', '.join(ENCODER_KINDS)}")


def encoder_computation(kind: str, shape: EncoderShape) -> int:
    """MACs per head and layer in the paper's unit (the score product, as m n d for cross-attention):
    n² d for both kinds; blocks of queries do the same work, they only keep fewer scores at once."""
    _check_encoder_kind(kind)
    return shape.n * shape.n * shape.head_dim


def encoder_product_flops(kind: str, shape: EncoderShape) -> int:
    """Both products (q·Kᵀ and A·V) per head and layer, in FLOPs: 4 n² d."""
    return 4 * encoder_computation(kind, shape)


def encoder_memory(kind: str, shape: EncoderShape) -> int:
    """Values per head and layer in the paper's sense (keys and scores, as n d + m n for full
    cross-attention): n d + n², or n d + b n with query blocks of b rows."""
    _check_encoder_kind(kind)
    rows = shape.n if kind == "n×n scores" else shape.block_rows
    return shape.n * shape.head_dim + rows * shape.n


def encoder_peak_scores(kind: str, shape: EncoderShape) -> int:
    """Score values alive at once while one encoder layer runs (all heads, the batch): H B n², or
    H B b n with blocks. Layers run one after another, so this is the encoder's peak for scores."""
    _check_encoder_kind(kind)
    rows = shape.n if kind == "n×n scores" else shape.block_rows
    return shape.heads * shape.batch * rows * shape.n
