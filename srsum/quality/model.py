"""The small T5 of the study and the bridge to srsum's own conversion."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from transformers import T5Config, T5ForConditionalGeneration

from srsum.errors import SrsumError
from srsum.quality.tasks import EOS, PAD

# The names of docs/ENGINE_API.md; ablations I-IV are no_local, no_norm, no_raf, full_product.
MAIN_VARIANTS = ("full", "segmented", "srformer", "xl", "global")
ABLATIONS = ("no_local", "no_norm", "no_raf", "full_product")
ALL_VARIANTS = MAIN_VARIANTS + ABLATIONS
ABLATION_LABELS = {"srformer": "SRformer", "no_local": "I: no local attention",
                   "no_norm": "II: no normalisation", "no_raf": "III: no RAF neuron",
                   "full_product": "IV: full product (P, not P - P_σ)"}


@dataclass(frozen=True)
class ModelSize:
    """A T5 small enough to pretrain from scratch on one CPU core in minutes."""

    d_model: int = 64
    d_kv: int = 32
    d_ff: int = 256
    num_heads: int = 4
    num_layers: int = 2
    num_decoder_layers: int = 2

    def as_dict(self) -> dict:
        return asdict(self)


def new_t5(vocab_size: int, size: ModelSize) -> T5ForConditionalGeneration:
    """A randomly initialised full-attention T5 (the study's "pretrained" model before training)."""
    config = T5Config(vocab_size=vocab_size, d_model=size.d_model, d_kv=size.d_kv, d_ff=size.d_ff,
                      num_heads=size.num_heads, num_layers=size.num_layers,
                      num_decoder_layers=size.num_decoder_layers, dropout_rate=0.0,
                      feed_forward_proj="relu", tie_word_embeddings=True, pad_token_id=PAD,
                      eos_token_id=EOS, decoder_start_token_id=PAD)
    return T5ForConditionalGeneration(config)


def engine_convert():
    """srsum.engine.convert, or a clear error when the engine is not importable."""
    try:
        from srsum.engine import convert
    except ImportError as err:
        raise SrsumError(f"srsum.engine is not available ({err}); the study needs its convert()") from err
    return convert


def to_variant(model, variant: str, seg_size: int | None, schedule_length: int, converter=None,
               threshold_init: float | None = None):
    """Convert the pretrained model's cross-attention to ``variant`` with srsum's own conversion.
    ``threshold_init`` (θ's initial value, SPEC default 0.1) is passed only when set."""
    if variant not in ALL_VARIANTS:
        raise SrsumError(f"unknown variant {variant!r}: choose from {', '.join(ALL_VARIANTS)}")
    convert = converter or engine_convert()
    extra = {"threshold_init": threshold_init} if threshold_init is not None else {}
    return convert(model, attention=variant, seg_size=seg_size, schedule_length=schedule_length, **extra)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
