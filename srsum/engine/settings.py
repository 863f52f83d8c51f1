"""SRformer settings: the config fields saved with the model, their defaults and their validation.

Every setting lives in the model's config (``config.json``) under a ``srformer_`` prefix; this module is
the one place that names them, gives the per-family defaults and checks them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import SrsumError

# SPEC section 7. The ablations have descriptive names; the paper's numerals are accepted as aliases.
VARIANTS = (
    "full",  # ordinary cross-attention over all n keys
    "segmented",  # local segment only
    "srformer",  # local segment + recurrent (RAF) output
    "no_local",  # ablation I: recurrent output only
    "no_norm",  # ablation II: recurrent output not divided by the key norm
    "no_raf",  # ablation III: R = X (no leak, threshold, reset)
    "full_product",  # ablation IV: complement replaced by the full product P
    "xl",  # own segment + the previous segment's keys/values (Transformer-XL style memory)
    "global",  # own segment + one mean key/value per segment (LongT5 style global tokens)
)
VARIANT_ALIASES = {
    "ablation1": "no_local", "ablation-i": "no_local", "ablation_i": "no_local", "i": "no_local",
    "ablation2": "no_norm", "ablation-ii": "no_norm", "ablation_ii": "no_norm", "ii": "no_norm",
    "ablation3": "no_raf", "ablation-iii": "no_raf", "ablation_iii": "no_raf", "iii": "no_raf",
    "ablation4": "full_product", "ablation-iv": "full_product", "ablation_iv": "full_product", "iv": "full_product",
    "transformer-xl": "xl", "longt5": "global", "seg": "segmented",
}
# Variants with a recurrent branch (need W; all but no_raf also need the RAF leak and threshold).
RECURRENT_VARIANTS = ("srformer", "no_local", "no_norm", "no_raf", "full_product")
# Variants with a local (segment) softmax branch.
LOCAL_VARIANTS = ("segmented", "srformer", "no_norm", "no_raf", "full_product", "xl", "global")

FAMILIES = ("t5", "bart")
# Per-family defaults (SPEC sections 5 and 9). Neither family clamps the products by default: the paper's
# ±2 for BART saturates 98-99% of a pretrained BART's P (docs/RESULTS.md); ``clamp=2`` reproduces the paper.
FAMILY_DEFAULTS = {
    "t5": {"clamp": None, "leak_init": 0.1, "threshold_init": 0.1},
    "bart": {"clamp": None, "leak_init": 0.5, "threshold_init": 0.1},
}
CONFIG_PREFIX = "srformer_"
# How W starts (SPEC section 5): "calibrated" scales the host's linear init per layer so that the
# recurrent term is ``memory_ratio`` times the local term on a calibration batch; "paper" keeps it.
W_INITS = ("calibrated", "paper")
DEFAULT_MEMORY_RATIO = 0.05
# Encoder self-attention in blocks of this many queries for inputs longer than it (srsum.engine.encoder):
# exact, O(n · block) memory instead of O(n²); None (or 0) keeps Hugging Face's encoder attention.
DEFAULT_ENCODER_BLOCK = 512


@dataclass(frozen=True)
class SRformerSettings:
    """What the cross-attention of one model does. Saved in config.json as ``srformer_<field>``."""

    attention: str = "srformer"
    seg_size: int = 64  # s: keys per segment
    schedule_length: int = 128  # G: decoder length the segment schedule is spread over
    clamp: float | None = None  # clamp P and P_j to [-clamp, clamp] (BART), None: off
    leak_init: float = 0.1  # initial λ
    threshold_init: float = 0.1  # initial θ
    w_init: str = "calibrated"  # "calibrated" or "paper" (see W_INITS)
    memory_ratio: float = DEFAULT_MEMORY_RATIO  # r: ||rec|| / ||local|| the calibration aims for
    calibration: dict | None = None  # what the calibration chose and measured (None: not calibrated)
    encoder_block: int | None = DEFAULT_ENCODER_BLOCK  # encoder queries per block for longer inputs, None: off

    @property
    def has_local(self) -> bool:
        return self.attention in LOCAL_VARIANTS

    @property
    def has_recurrent(self) -> bool:
        return self.attention in RECURRENT_VARIANTS

    @property
    def has_raf(self) -> bool:
        return self.has_recurrent and self.attention != "no_raf"

    def to_config_dict(self) -> dict:
        return {CONFIG_PREFIX + key: value for key, value in asdict(self).items()}


def normalize_variant(name: str) -> str:
    """The canonical variant name for ``name`` (case-insensitive, paper aliases allowed)."""
    key = str(name).strip().lower().replace(" ", "_")
    key = VARIANT_ALIASES.get(key, key)
    if key not in VARIANTS:
        raise SrsumError(f"attention: unknown variant {name!r}; allowed: {', '.join(VARIANTS)}")
    return key


def _positive_int(field: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        if isinstance(value, float) and value.is_integer() and value >= 1:
            return int(value)
        raise SrsumError(f"{field}: must be a positive integer, got {value!r}")
    return value


def _positive_float(field: str, value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SrsumError(f"{field}: must be a positive number, got {value!r}") from None
    if not number > 0:
        raise SrsumError(f"{field}: must be a positive number, got {value!r}")
    return number


CLAMP_OFF = "off"  # how a user turns the products' clamp off on a command line


def clamp_from_text(text) -> float | None:
    """A command line's clamp: "off" (any case) -> None, a positive number -> that bound; else SrsumError."""
    word = str(text).strip().lower()
    if word == CLAMP_OFF:
        return None
    try:
        bound = float(word)
    except ValueError:
        bound = float("nan")
    if not 0 < bound < float("inf"):
        raise SrsumError(f"--clamp takes '{CLAMP_OFF}' or a positive number, got {text}")
    return bound


def clamp_to_text(bound: float | None) -> str | float:
    """The inverse of ``clamp_from_text``: None (no clamp) -> "off", a bound -> itself."""
    return CLAMP_OFF if bound is None else bound


def make_settings(family: str, attention: str = "srformer", seg_size=64, schedule_length=128,
                  clamp="default", leak_init=None, threshold_init=None, w_init="calibrated",
                  memory_ratio=DEFAULT_MEMORY_RATIO, calibration=None,
                  encoder_block=DEFAULT_ENCODER_BLOCK) -> SRformerSettings:
    """Validated settings for a model family; unset values take the family's defaults."""
    if family not in FAMILIES:
        raise SrsumError(f"model family: {family!r} is not supported; allowed: {', '.join(FAMILIES)}")
    defaults = FAMILY_DEFAULTS[family]
    if clamp == "default":
        clamp = defaults["clamp"]
    return SRformerSettings(
        attention=normalize_variant(attention),
        seg_size=_positive_int("seg_size", seg_size),
        schedule_length=_positive_int("schedule_length", schedule_length),
        clamp=None if clamp is None else _positive_float("clamp", clamp),
        leak_init=float(defaults["leak_init"] if leak_init is None else leak_init),
        threshold_init=_positive_float("threshold_init",
                                       defaults["threshold_init"] if threshold_init is None else threshold_init),
        w_init=_choice("w_init", w_init, W_INITS),
        memory_ratio=_positive_float("memory_ratio", memory_ratio),
        calibration=None if calibration is None else dict(calibration),
        encoder_block=encoder_block_size(encoder_block),
    )


def encoder_block_size(value) -> int | None:
    """A validated ``encoder_block``: a positive integer, or None for off (0, None and False mean off)."""
    if value is None or value is False or value == 0:
        return None
    return _positive_int("encoder_block", value)


def _choice(field: str, value, allowed: tuple) -> str:
    key = str(value).strip().lower()
    if key not in allowed:
        raise SrsumError(f"{field}: must be one of {', '.join(allowed)}, got {value!r}")
    return key


def settings_from_config(config, family: str) -> SRformerSettings:
    """Read the settings saved in a model config (missing fields take the family's defaults)."""
    saved = {key[len(CONFIG_PREFIX):]: value for key, value in config.to_dict().items()
             if key.startswith(CONFIG_PREFIX)}
    return make_settings(family, **saved)
