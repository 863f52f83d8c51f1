"""The small T5 and BART of the study and the bridge to srsum's own conversion."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from transformers import BartConfig, BartForConditionalGeneration, T5Config, T5ForConditionalGeneration

from srsum.errors import SrsumError
from srsum.quality.tasks import EOS, PAD

# The names of docs/ENGINE_API.md; ablations I-IV are no_local, no_norm, no_raf, full_product.
# A recurrent variant's name + TRANSFER: converted, then attention transfer (srsum.engine.transfer) before fine-tuning.
TRANSFER = "+transfer"
MAIN_VARIANTS = ("full", "segmented", "srformer", "srformer" + TRANSFER, "xl", "global")
ABLATIONS = ("no_local", "no_norm", "no_raf", "full_product")
# SRformer converted with the paper's W init instead of the calibrated one (the engine's default)
PAPER_INIT = "srformer_paper"
DEFAULT_ABLATIONS = (PAPER_INIT, *ABLATIONS)
TRANSFER_ABLATIONS = tuple(name + TRANSFER for name in ABLATIONS)
ALL_VARIANTS = MAIN_VARIANTS + DEFAULT_ABLATIONS + TRANSFER_ABLATIONS
ABLATION_LABELS = {"srformer": "SRformer", PAPER_INIT: "SRformer, paper init",
                   "no_local": "I: no local attention",
                   "no_norm": "II: no normalisation", "no_raf": "III: no RAF neuron",
                   "full_product": "IV: full product (P, not P - P_σ)"}
ABLATION_LABELS.update({name + TRANSFER: label + " + transfer" for name, label in ABLATION_LABELS.items()
                        if name != PAPER_INIT})


def split_transfer(variant: str) -> tuple[str, bool]:
    """("srformer+transfer") -> ("srformer", True): the variant converted, and whether transfer follows."""
    return variant.removesuffix(TRANSFER), variant.endswith(TRANSFER)
FAMILIES = ("t5", "bart")
FAMILY_LABELS = {"t5": "T5", "bart": "BART"}
FROZEN_ENCODER = "+frozen-encoder"  # the results' family key of runs fine-tuned with the encoder frozen


def family_label(family: str) -> str:
    """"bart" -> "BART"; "bart+frozen-encoder" -> "BART, encoder frozen in fine-tuning";
    "bart+2-heads+frozen-encoder" -> "BART (2 heads), encoder frozen in fine-tuning"."""
    base, *tags = family.removesuffix(FROZEN_ENCODER).split("+")
    label = FAMILY_LABELS.get(base, base) + "".join(f" ({tag.replace('-', ' ')})" for tag in tags)
    return label + ", encoder frozen in fine-tuning" if family.endswith(FROZEN_ENCODER) else label


def freeze_encoder(model) -> int:
    """Stop every encoder weight training (the token embedding the decoder shares included), so the
    encoder output stays what the pretrained full-attention model computes; returns how many were frozen."""
    frozen = 0
    for param in model.get_encoder().parameters():
        param.requires_grad_(False)
        frozen += param.numel()
    return frozen


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


def new_bart(vocab_size: int, size: ModelSize, max_source_len: int = 256) -> BartForConditionalGeneration:
    """A randomly initialised full-attention BART of the same size as :func:`new_t5` (d_model, heads,
    d_ff, layers). The tasks' ids hold: PAD (0) pads and starts the decoder, as for T5, EOS (1) ends;
    no forced BOS/EOS, so generation and the tasks' own label shifting agree.

    Weights start at std d_model^-1/2 (0.125 here), not BART's 0.02: 0.02 suits d_model 768, but at
    d_model 64 the attention logits start near 0 and stay there. A probe on the lookup task (lr 1e-3,
    batch 16, 4,000 steps): with 0.02 the loss sat at ln 10 (chance) for 2,000 steps; with 0.125 step
    accuracy was 0.43 after 1,500 steps, like the T5's 0.39 after 1,750."""
    config = BartConfig(vocab_size=vocab_size, d_model=size.d_model, encoder_layers=size.num_layers,
                        decoder_layers=size.num_decoder_layers, encoder_attention_heads=size.num_heads,
                        decoder_attention_heads=size.num_heads, encoder_ffn_dim=size.d_ff,
                        decoder_ffn_dim=size.d_ff, max_position_embeddings=max_source_len + 2,
                        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, activation_function="relu",
                        pad_token_id=PAD, eos_token_id=EOS, bos_token_id=EOS, decoder_start_token_id=PAD,
                        forced_bos_token_id=None, forced_eos_token_id=None, scale_embedding=False,
                        init_std=size.d_model ** -0.5,
                        tie_word_embeddings=True)
    return BartForConditionalGeneration(config)


def new_model(family: str, vocab_size: int, size: ModelSize, max_source_len: int = 256):
    """The family's randomly initialised full-attention model."""
    if family == "t5":
        return new_t5(vocab_size, size)
    if family == "bart":
        return new_bart(vocab_size, size, max_source_len)
    raise SrsumError(f"unknown model family {family!r}: choose from {', '.join(FAMILIES)}")


def engine_convert():
    """srsum.engine.convert, or a clear error when the engine is not importable."""
    try:
        from srsum.engine import convert
    except ImportError as err:
        raise SrsumError(f"srsum.engine is not available ({err}); the study needs its convert()") from err
    return convert


def to_variant(model, variant: str, seg_size: int | None, schedule_length: int, converter=None,
               threshold_init: float | None = None, memory_ratio: float | None = None,
               calibration_batch=None, clamp: float | str | None = "default", leak_init: float | None = None):
    """Convert the pretrained model's cross-attention to ``variant`` with srsum's own conversion.
    ``threshold_init`` (θ's initial value, SPEC default 0.1), ``memory_ratio`` (the calibrated W's
    ||rec|| / ||local||, engine default) and ``clamp`` (the products' clamp, family default) are passed only
    when set. Every SRformer-family variant is
    calibrated on ``calibration_batch`` (the engine's default W init) except ``srformer_paper``, which is
    SRformer with the paper's W init."""
    if variant not in ALL_VARIANTS:
        raise SrsumError(f"unknown variant {variant!r}: choose from {', '.join(ALL_VARIANTS)}")
    variant = split_transfer(variant)[0]  # the transfer itself needs batches: run_finetune does it
    convert = converter or engine_convert()
    extra = {"threshold_init": threshold_init} if threshold_init is not None else {}
    if leak_init is not None:  # λ's initial value (the family's by default: T5 0.1, BART 0.5)
        extra["leak_init"] = leak_init
    if clamp != "default":  # the products' clamp (BART's ±2 by default): None turns it off
        extra["clamp"] = clamp
    if variant == PAPER_INIT:
        variant, extra["w_init"] = "srformer", "paper"
    else:
        if memory_ratio is not None:
            extra["memory_ratio"] = memory_ratio
        if calibration_batch is not None:
            extra["calibration_batch"] = calibration_batch
    return convert(model, attention=variant, seg_size=seg_size, schedule_length=schedule_length, **extra)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
