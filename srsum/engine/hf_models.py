"""Hooking SRformer cross-attention into Hugging Face T5 and BART, and saving/loading such models.

The only differences between the families live in ``FAMILIES``: where the cross-attention modules
sit, what the projections are called, the query scaling and the initialisation of W.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import (AutoConfig, AutoModelForSeq2SeqLM, BartConfig, BartForConditionalGeneration, T5Config,
                          T5ForConditionalGeneration)
from transformers import initialization as hf_init

from ..errors import SrsumError
from .calibration import calibrate, needs_calibration
from .encoder import BartBlockedSelfAttention, T5BlockedSelfAttention, install_blocked_encoder
from .layer import SRformerCrossAttention
from .settings import (CONFIG_PREFIX, DEFAULT_ENCODER_BLOCK, DEFAULT_MEMORY_RATIO, SRformerSettings,
                       encoder_block_size, make_settings, settings_from_config)


# --------------------------------------------------------------------------- host adapters
class T5CrossAttention(SRformerCrossAttention):
    """T5: projections q/k/v/o, no query scaling, cross-attention without position bias."""

    family = "t5"
    projection_names = ("q", "k", "v", "o")

    def __init__(self, original: nn.Module, settings: SRformerSettings, config):
        head_dim = config.d_kv
        super().__init__(settings, config.num_heads, head_dim, scale=1.0, dropout=config.dropout_rate,
                         layer_idx=original.layer_idx, init_std=config.initializer_factor * head_dim ** -0.5)
        self.q, self.k, self.v, self.o = original.q, original.k, original.v, original.o

    def forward(self, hidden_states, mask=None, key_value_states=None, position_bias=None, cache=None, **kwargs):
        # T5LayerCrossAttention expects (output, position_bias, attention weights)
        return self.attend(hidden_states, key_value_states, mask, cache), None, None


class BartCrossAttention(SRformerCrossAttention):
    """BART: projections q_proj/k_proj/v_proj/out_proj, query scaled by 1/sqrt(d)."""

    family = "bart"
    projection_names = ("q_proj", "k_proj", "v_proj", "out_proj")

    def __init__(self, original: nn.Module, settings: SRformerSettings, config):
        n_heads = config.decoder_attention_heads
        head_dim = config.d_model // n_heads
        super().__init__(settings, n_heads, head_dim, scale=head_dim ** -0.5, dropout=config.attention_dropout,
                         layer_idx=original.layer_idx, init_std=config.init_std)
        self.q_proj, self.k_proj = original.q_proj, original.k_proj
        self.v_proj, self.out_proj = original.v_proj, original.out_proj

    def forward(self, hidden_states, key_value_states=None, cache=None, attention_mask=None, **kwargs):
        return self.attend(hidden_states, key_value_states, attention_mask, cache), None


# --------------------------------------------------------------------------- saved model types
class SRformerT5Config(T5Config):
    model_type = "srformer_t5"


class SRformerBartConfig(BartConfig):
    model_type = "srformer_bart"


class _SRformerMixin:
    """Builds the SRformer cross-attention in ``__init__`` so from_pretrained restores it."""

    def _install_srformer(self):
        install_cross_attention(self, family_of(self.config))
        install_encoder_attention(self, family_of(self.config))

    def _init_weights(self, module):
        if isinstance(module, SRformerCrossAttention):
            module.reset_srformer_parameters(hf_init)
        super()._init_weights(module)

    def generate(self, *args, **kwargs):
        """Hugging Face's ``generate``, run by srsum's shared-state decoder where it supports the request
        (greedy, beams, sampling, ...: ``srsum.generate_dropin``), else by Hugging Face's loop with a warning."""
        from ..generate_dropin import generate

        return generate(self, super().generate, *args, **kwargs)


class SRformerT5ForConditionalGeneration(_SRformerMixin, T5ForConditionalGeneration):
    config_class = SRformerT5Config

    def __init__(self, config):
        super().__init__(config)
        self._install_srformer()


class SRformerBartForConditionalGeneration(_SRformerMixin, BartForConditionalGeneration):
    config_class = SRformerBartConfig

    def __init__(self, config):
        super().__init__(config)
        self._install_srformer()


@dataclass(frozen=True)
class Family:
    name: str
    base_types: tuple  # model_type values of plain checkpoints
    config_class: type
    model_class: type
    adapter: type
    encoder_adapter: type  # blocked encoder self-attention (srsum.engine.encoder)

    def cross_attention_slots(self, model):
        """(parent module, attribute name) of every decoder cross-attention."""
        if self.name == "t5":
            return [(block.layer[1], "EncDecAttention") for block in model.decoder.block]
        return [(layer, "encoder_attn") for layer in model.model.decoder.layers]

    def encoder_self_attention(self, model) -> list:
        """Every encoder self-attention module."""
        if self.name == "t5":
            return [block.layer[0].SelfAttention for block in model.encoder.block]
        return [layer.self_attn for layer in model.model.encoder.layers]


FAMILIES = {
    "t5": Family("t5", ("t5",), SRformerT5Config, SRformerT5ForConditionalGeneration, T5CrossAttention,
                 T5BlockedSelfAttention),
    "bart": Family("bart", ("bart",), SRformerBartConfig, SRformerBartForConditionalGeneration, BartCrossAttention,
                   BartBlockedSelfAttention),
}


def family_of(config) -> Family:
    """The family of a config; SrsumError for anything that is not T5/BART-like."""
    model_type = getattr(config, "model_type", None)
    for family in FAMILIES.values():
        if model_type in family.base_types or model_type == family.config_class.model_type:
            return family
    allowed = ", ".join(t for f in FAMILIES.values() for t in f.base_types)
    raise SrsumError(f"model_type: {model_type!r} is not supported; srsum converts T5/BART-like "
                     f"encoder-decoder models ({allowed})")


def install_cross_attention(model, family: Family) -> None:
    """Replace each decoder cross-attention with the family's SRformer adapter (weights are kept)."""
    settings = settings_from_config(model.config, family.name)
    reference = next(model.parameters())
    for parent, name in family.cross_attention_slots(model):
        layer = family.adapter(getattr(parent, name), settings, model.config).train(parent.training)
        setattr(parent, name, layer.to(device=reference.device, dtype=reference.dtype))


def install_encoder_attention(model, family: Family) -> None:
    """Run the encoder's self-attention in blocks of ``srformer_encoder_block`` queries (the config field;
    off: Hugging Face's own attention)."""
    block = settings_from_config(model.config, family.name).encoder_block
    install_blocked_encoder(model.get_encoder(), family.encoder_self_attention(model), family.encoder_adapter, block)


def set_encoder_block(model, block) -> None:
    """Change a loaded model's encoder block size (int, or 0/None: off): the config field
    ``srformer_encoder_block`` (saved with the model) and the modules that read it."""
    setattr(model.config, CONFIG_PREFIX + "encoder_block", encoder_block_size(block))
    install_encoder_attention(model, family_of(model.config))


# --------------------------------------------------------------------------- public API
def convert(model, attention: str = "srformer", seg_size: int = 64, schedule_length: int = 128,
            clamp="default", leak_init=None, threshold_init=None, w_init="calibrated",
            memory_ratio=DEFAULT_MEMORY_RATIO, calibration_batch=None, encoder_block=DEFAULT_ENCODER_BLOCK):
    """Turn a loaded T5/BART model (or a hub name / path) into an SRformer model of the given variant.

    Every pretrained weight is kept; srformer-family variants add W (d x d), λ and θ per decoder layer.
    With ``w_init="calibrated"`` (the default) W is then scaled per layer so that the recurrent term is
    ``memory_ratio`` times the local term on ``calibration_batch`` (a mapping with input_ids, attention_mask
    and decoder_input_ids or labels), or on a fallback batch of random tokens when none is given
    (``srsum.engine.calibration``); ``w_init="paper"`` keeps the paper's init. A model on the meta device
    (``with torch.device("meta")``) is converted without calibration (:func:`on_meta_device`); once it has
    weights, ``srsum.engine.calibration.calibrate(model, batch)`` calibrates it. ``encoder_block``: the encoder's
    self-attention runs in blocks of that many queries for longer inputs (exact, O(n · block) memory;
    ``srsum.engine.encoder``), 0/None keeps Hugging Face's. The model is changed in place and returned.
    """
    if isinstance(model, (str, Path)):
        model = _load_plain(str(model))
    family = family_of(model.config)
    settings = make_settings(family.name, attention, seg_size, schedule_length, clamp, leak_init,
                             threshold_init, w_init, memory_ratio, encoder_block=encoder_block)
    fields = model.config.to_dict()
    fields.pop("model_type", None)
    fields.update(settings.to_config_dict())
    config = family.config_class.from_dict(fields)
    config._attn_implementation = model.config._attn_implementation
    model.__class__ = family.model_class
    model.config = config
    install_cross_attention(model, family)
    install_encoder_attention(model, family)
    if needs_calibration(model) and not on_meta_device(model):
        calibrate(model, calibration_batch)
    return model


def on_meta_device(model) -> bool:
    """Is the model built on the meta device (shapes, no values)? Calibration has nothing to run on there:
    W keeps its init and the settings' ``calibration`` stays None (not calibrated)."""
    return any(p.is_meta for p in model.parameters())


def load_model(path_or_name: str, attention: str | None = None, seg_size: int | None = None,
               dtype: torch.dtype | None = None, device: str | torch.device | None = None,
               encoder_block="default", **settings):
    """Load an srsum checkpoint (as saved) or a plain T5/BART (converted to ``attention``, default full, with
    ``settings`` passed to :func:`convert`: schedule_length, w_init, memory_ratio, calibration_batch, ...).
    ``encoder_block`` (int, or 0/None: off) replaces the checkpoint's ``srformer_encoder_block``, or sets a
    converted model's; "default" keeps the saved value (a plain model: ``DEFAULT_ENCODER_BLOCK``). ``dtype``: a
    torch dtype, or a name as ``--dtype`` takes it ("auto": bfloat16 where the device computes it fast,
    ``srsum.precision``)."""
    if isinstance(dtype, str):
        from ..precision import resolve_dtype

        dtype = resolve_dtype(dtype, device or "cpu")
    config = load_config(str(path_or_name))
    family = family_of(config)
    _check_dtype(family, dtype)
    if config.model_type == family.config_class.model_type:
        saved = settings_from_config(config, family.name)
        if attention is not None and make_settings(family.name, attention).attention != saved.attention:
            raise SrsumError(f"attention: checkpoint {path_or_name} was trained with {saved.attention!r}, "
                             f"not {attention!r}")
        if seg_size is not None and seg_size != saved.seg_size:
            raise SrsumError(f"seg_size: checkpoint {path_or_name} was trained with seg_size={saved.seg_size}, "
                             f"not {seg_size}")
        refuse_pickle_only(str(path_or_name))
        model = AutoModelForSeq2SeqLM.from_pretrained(str(path_or_name), dtype=dtype)
        if encoder_block != "default":
            set_encoder_block(model, encoder_block)
    else:  # moved to the device first, so the calibration runs there
        plain = _load_plain(str(path_or_name), dtype)
        model = convert(plain if device is None else plain.to(device), attention or "full",
                        64 if seg_size is None else seg_size,
                        encoder_block=DEFAULT_ENCODER_BLOCK if encoder_block == "default" else encoder_block,
                        **settings)
    if device is not None:
        model = model.to(device)
    return model.eval()


def _check_dtype(family: Family, dtype) -> None:
    if family.name == "t5" and dtype == torch.float16:
        raise SrsumError("dtype: float16 overflows in T5-family models; use bfloat16 (or float32)")


PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.ckpt")


def refuse_pickle_only(path_or_name: str) -> None:
    """SrsumError for a local model folder whose weights exist only as a pickle (``pytorch_model.bin``):
    unpickling a downloaded file can run code, so srsum loads safetensors only. A safetensors file that is
    cut short or damaged (an interrupted copy or download) is refused with one line too."""
    folder = Path(path_or_name)
    if not folder.is_dir():
        return
    weights = sorted(folder.glob("*.safetensors"))
    for file in weights:
        check_safetensors(file)
    if weights:
        return
    pickled = [name for name in PICKLE_WEIGHTS if (folder / name).is_file()]
    if pickled:
        raise SrsumError(f"model: {path_or_name} holds its weights only as a pickle ({pickled[0]}), which srsum "
                         "does not load (unpickling can run code); convert it once, where you trust the file: "
                         "AutoModelForSeq2SeqLM.from_pretrained(folder).save_pretrained(folder)")


def check_safetensors(file: Path) -> None:
    """SrsumError when ``file``'s header does not describe a file of its real size (truncated or damaged)."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as handle:
            handle.keys()
    except Exception as error:  # SafetensorError (no common base class with OSError), OSError
        reason = " ".join(str(error).split())[:160] or type(error).__name__
        raise SrsumError(f"model: {file} is damaged or incomplete ({reason}); copy or download it again") from None


def load_config(path_or_name: str):
    """The config of an srsum checkpoint or a plain T5/BART (path or hub name); SrsumError, one line, otherwise."""
    local = Path(path_or_name)
    if local.exists() and not (local / "config.json").is_file():
        raise SrsumError(f"model: {path_or_name} is neither an srsum checkpoint nor a T5/BART model "
                         f"(no config.json)")
    try:
        return AutoConfig.from_pretrained(path_or_name)
    except (OSError, ValueError, json.JSONDecodeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SrsumError(f"model: cannot load {path_or_name!r} as an srsum checkpoint or a T5/BART model "
                         f"({reason})") from None


def _load_plain(path_or_name: str, dtype=None):
    config = load_config(path_or_name)
    family = family_of(config)
    _check_dtype(family, dtype)
    refuse_pickle_only(path_or_name)
    try:
        return AutoModelForSeq2SeqLM.from_pretrained(path_or_name, dtype=dtype)
    except OSError as error:
        raise SrsumError(f"model: cannot load weights of {path_or_name!r} ({str(error).splitlines()[0]})") from None


def register_auto_classes() -> None:
    """Let AutoConfig / AutoModelForSeq2SeqLM load srsum checkpoints (no trust_remote_code needed)."""
    for family in FAMILIES.values():
        try:
            AutoConfig.register(family.config_class.model_type, family.config_class)
        except ValueError:
            pass  # already registered
        try:
            AutoModelForSeq2SeqLM.register(family.config_class, family.model_class)
        except ValueError:
            pass


def count_srformer_parameters(model) -> int:
    """Parameters SRformer added (W, λ, θ over all layers)."""
    return sum(p.numel() for m in model.modules() if isinstance(m, SRformerCrossAttention)
               for name, p in m.named_parameters(recurse=True) if name.startswith(("recurrent_w", "raf_")))
