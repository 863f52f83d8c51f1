"""The models the counted and measured figures run: a randomly initialised T5/BART with the shapes of
``--model`` (t5-small's by default), its cross-attention converted by ``srsum.engine.convert``, and random
encoder states standing in for the encoder; decode runs go through srsum's decoder. torch and transformers
are imported inside functions.
"""

from __future__ import annotations

import contextlib
import copy
import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

from srsum.errors import SrsumError
from srsum.profiling.analytic import CostShape, resolve_dtype_name

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


class ShapesConfig(SimpleNamespace):
    """A T5 config as plain attributes: the default model's shapes without importing transformers (the
    analytic figures need no more); :func:`build_host_model` turns it into a real one."""

    model_type = "t5"

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": self.model_type, **vars(self)}


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
    if model is None:
        return ShapesConfig(**DEFAULT_MODEL_SHAPES), DEFAULT_MODEL_NAME
    from transformers import AutoConfig

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
    """The checkpoint's config as srsum.engine.load_config reads it (no weights are loaded: only the
    shapes matter here)."""
    load_config = _engine_attribute("load_config")
    if load_config is None:
        return _config_from_file(path / "config.json")
    try:
        return load_config(str(path))
    except SrsumError:
        raise
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SrsumError(f"--model {path}: could not read the checkpoint's config ({reason})") from None


def host_model_type(config) -> str:
    """'t5' or 'bart' (srformer_t5 / srformer_bart count as their host), else SrsumError."""
    model_type = str(getattr(config, "model_type", ""))
    for host in ("t5", "bart"):
        if model_type in (host, f"srformer_{host}"):
            return host
    raise SrsumError(f"srsum profile supports T5 and BART models; this config is model_type {model_type!r}")


def attention_shape(config) -> dict[str, int]:
    """d_model, heads, head dim and decoder layers of a T5 or BART config, and the encoder's heads,
    head dim and layers (``encoder_*``)."""
    if host_model_type(config) == "t5":
        layers = getattr(config, "num_decoder_layers", None) or config.num_layers
        return {"d_model": config.d_model, "heads": config.num_heads, "head_dim": config.d_kv, "layers": layers,
                "encoder_heads": config.num_heads, "encoder_head_dim": config.d_kv,
                "encoder_layers": config.num_layers}
    heads = config.decoder_attention_heads
    encoder_heads = getattr(config, "encoder_attention_heads", heads)
    return {"d_model": config.d_model, "heads": heads, "head_dim": config.d_model // heads,
            "layers": config.decoder_layers,
            "encoder_heads": encoder_heads, "encoder_head_dim": config.d_model // encoder_heads,
            "encoder_layers": getattr(config, "encoder_layers", config.decoder_layers)}


def config_encoder_block(config) -> int | None:
    """The blocked encoder's block size saved in an srsum checkpoint's config, if it has a positive one."""
    value = getattr(config, "srformer_encoder_block", None)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def build_host_model(config, device, dtype_name: str, seed: int = 0, **changes: Any):
    """A randomly initialised T5/BART with ``config``'s shapes (an srformer config builds its host),
    ``changes`` applied to its fields."""
    import torch
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    host = host_model_type(config)
    settings = {k: v for k, v in config.to_dict().items() if not k.startswith("srformer_")}
    settings.pop("model_type", None)
    settings.pop("architectures", None)
    settings.update(changes)
    host_config = AutoConfig.for_model(host, **settings)
    _fill_special_tokens(host_config)
    torch.manual_seed(seed)
    model = AutoModelForSeq2SeqLM.from_config(host_config)
    return model.to(device=device, dtype=getattr(torch, resolve_dtype_name(dtype_name))).eval()


# Config fields a probe model shrinks: none of them changes the decoder's cross-attention.
PROBE_SIZES = {
    "t5": {"num_layers": 1, "d_ff": 8},
    "bart": {"encoder_layers": 1, "encoder_ffn_dim": 8, "decoder_ffn_dim": 8},
}


def probe_host_model(config, device, dtype_name: str, seed: int = 0):
    """A random T5/BART with ``config``'s cross-attention shapes but at most two decoder layers (layer 0
    builds what the layers share, layer 1 stands for every later one), one encoder layer, tiny
    feed-forward blocks and vocabulary: what :class:`srsum.profiling.counted.ProbeCounter` runs."""
    host = host_model_type(config)
    changes = dict(PROBE_SIZES[host])
    changes["num_decoder_layers" if host == "t5" else "decoder_layers"] = min(2, attention_shape(config)["layers"])
    specials = [getattr(config, k, None) for k in ("pad_token_id", "eos_token_id", "bos_token_id",
                                                   "decoder_start_token_id")]
    changes["vocab_size"] = max([8] + [v + 1 for v in specials if isinstance(v, int)])
    return build_host_model(config, device, dtype_name, seed, **changes)


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
    # W keeps the paper's init: calibrating it would run the model once more, and no FLOP count or
    # timing depends on W's values
    converted = convert(model, attention=variant, seg_size=seg_size, schedule_length=schedule_length,
                        w_init="paper")
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


def decode_run(model, inputs: ProfileInputs, steps: int, beams: int,
               max_time: float | None = None) -> Callable[[], Any]:
    """``steps`` decode steps of srsum's decoder (``srsum.decoding.search``: what ``srsum summarize`` and
    ``model.generate`` run, one SRformer state per example shared by its beams, the step mode ``auto``
    picks for the device), exactly that many (EOS suppressed), or fewer when ``max_time`` seconds run out
    first; the run returns the tokens (start token + one per step). ``decoder_step`` names the step mode."""
    from srsum.decoding import GenerationSettings, SpecialTokens, has_srformer_layers, search

    if not has_srformer_layers(model):
        raise SrsumError("the measured decode runs srsum's decoder, which needs srsum.engine's cross-attention")
    settings = GenerationSettings(num_beams=beams, max_new_tokens=steps, min_new_tokens=steps,
                                  step=decoder_step(inputs.encoder_states.device), max_time=max_time).validate()
    special = SpecialTokens.of(model)

    def run():
        return search(model, None, inputs.attention_mask, settings, special,
                      encoder_states=inputs.encoder_states).sequences

    return run


def decoder_step(device) -> str:
    """The decoder's step mode on ``device``, as ``srsum summarize`` picks it (``auto``)."""
    from srsum.decoding import resolve_step

    return resolve_step("auto", device)
