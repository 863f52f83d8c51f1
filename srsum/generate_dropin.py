"""``model.generate`` on SRformer models, run by srsum's shared-state decoder (issue 30).

``SRformerT5ForConditionalGeneration`` / ``SRformerBartForConditionalGeneration`` (and what
``srsum.engine.convert`` returns) call :func:`generate` from their ``generate``. Hugging Face's own code
merges the arguments (``generation_config`` object, the model's ``generation_config``, keyword arguments),
resolves the lengths and the special tokens; :func:`unsupported_options` then decides, from that merged
config, whether srsum's decoder (``srsum.decoding.search``: one SRformer state per example, shared by its
beams) follows the request exactly. If it does, the decoder runs with the step mode ``srsum summarize``
uses (``auto``), drawing samples from torch's global RNG as generate does, so the tokens and scores are
generate's. If not, one warning names what is not supported and Hugging Face's loop runs instead.

Not applied, as in generate (transformers 5 no longer reads them): the config's ``task_specific_params``.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass, field

import torch
from transformers import GenerationConfig, GenerationMixin
from transformers.generation.utils import GenerateBeamEncoderDecoderOutput, GenerateEncoderDecoderOutput

from .decoding import GenerationSettings, SpecialTokens, has_srformer_layers, search
from .engine.layer import SRformerCrossAttention
from .engine.settings import VARIANTS
from .errors import UsageError

# GenerationConfig fields srsum's decoder follows (every other field must keep its default)
FOLLOWED_FIELDS = frozenset({
    "max_length", "max_new_tokens", "min_length", "min_new_tokens", "early_stopping", "do_sample", "num_beams",
    "temperature", "top_k", "top_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "forced_bos_token_id", "forced_eos_token_id", "num_return_sequences", "output_scores", "output_logits",
    "return_dict_in_generate", "pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id",
    "use_cache", "transformers_version", "max_time",
})
MODEL_INPUTS = ("input_ids", "attention_mask", "encoder_outputs")  # what the decoder reads from the call
# model inputs generate takes and never forwards to the model while decoding (Seq2SeqTrainer's prediction
# passes the batch's labels): ignored here too
IGNORED_INPUTS = ("labels",)
DECODER_VARIANTS = VARIANTS  # every cross-attention variant has a DecodeState (tests/test_decoding.py)
PLAIN_ARGUMENTS = ("self", "inputs", "generation_config", "streamer", "kwargs")  # generate's own, followed


@dataclass
class Request:
    """One ``generate`` call: its named arguments and Hugging Face's merge of them."""

    arguments: dict  # generate's named parameters as called (not the defaults)
    config: GenerationConfig  # merged: call > generation_config object > model's > global defaults
    model_kwargs: dict  # what the merge did not take as a generation field (inputs, masks, ...)
    default_lengths: tuple[bool, bool] = (False, False)  # max_length / min_length left to the defaults
    inputs: dict = field(default_factory=dict)

    @classmethod
    def of(cls, model, args: tuple, kwargs: dict) -> "Request":
        bound = inspect.signature(GenerationMixin.generate).bind(model, *args, **kwargs)
        arguments = dict(bound.arguments)
        extra = arguments.pop("kwargs", {})
        given = arguments.get("generation_config")
        config, model_kwargs = model._prepare_generation_config(given, **extra)
        lengths = tuple(extra.get(name) is None and (given is None or getattr(given, name) is None)
                        and getattr(model.generation_config, name) is None for name in ("max_length", "min_length"))
        inputs = {name: model_kwargs.get(name) for name in MODEL_INPUTS}
        if arguments.get("inputs") is not None:
            if inputs["input_ids"] is not None:
                raise ValueError("generate: pass either `inputs` or `input_ids`, not both")  # as generate does
            inputs["input_ids"] = arguments["inputs"]
        return cls(arguments, config, model_kwargs, lengths, inputs)

    @property
    def streamer(self):
        return self.arguments.get("streamer")


def generate(model, hf_generate, *args, **kwargs):
    """``model.generate(*args, **kwargs)``: srsum's decoder when :func:`unsupported_options` finds nothing,
    else ``hf_generate`` (Hugging Face's loop) after one warning naming the options."""
    request = Request.of(model, args, kwargs)
    unsupported = unsupported_options(model, request)
    if unsupported:
        warnings.warn(f"generate: {', '.join(unsupported)} not supported by srsum's shared-state decoder; "
                      f"running Hugging Face's generate loop instead", UserWarning, stacklevel=3)
        return hf_generate(*args, **kwargs)
    return run(model, request)


def unsupported_options(model, request: Request) -> list[str]:
    """What in this call srsum's decoder does not follow (empty: it follows all of it). The list:
    generate's extra arguments (logits_processor, stopping_criteria, prefix_allowed_tokens_fn, assistant_model,
    negative prompts, custom_generate, synced_gpus=True, ...); model inputs other than input_ids /
    attention_mask / encoder_outputs (decoder_input_ids, inputs_embeds, a cache, ...; ``labels`` is ignored, as
    generate ignores it); any GenerationConfig
    field outside ``FOLLOWED_FIELDS`` that is not at its default (constraints, output_attentions,
    output_hidden_states, typical_p, bad_words_ids, ...); use_cache=False; a streamer with beams;
    values srsum's settings refuse; a model in training mode or without SRformer cross-attention."""
    found = [name for name, value in request.arguments.items() if name not in PLAIN_ARGUMENTS and _is_set(value)]
    found += [name for name, value in request.model_kwargs.items()
              if name not in MODEL_INPUTS + IGNORED_INPUTS and not hasattr(request.config, name) and _is_set(value)]
    found += changed_fields(request.config)
    if request.config.use_cache is False:
        found.append("use_cache=False")
    if request.streamer is not None and request.config.num_beams > 1:
        found.append("streamer with num_beams > 1")
    return found + _model_problems(model) + ([] if found else _refused_values(request.config))


def _is_set(value) -> bool:
    return value is not None and value is not False and not (isinstance(value, (list, tuple)) and not value)


def changed_fields(config: GenerationConfig) -> list[str]:
    """``name=value`` of every field outside ``FOLLOWED_FIELDS`` that differs from generate's default."""
    defaults = GenerationConfig()
    defaults.update(**defaults._get_default_generation_params())
    return [f"{name}={value!r}" for name, value in vars(config).items()
            if not name.startswith("_") and name not in FOLLOWED_FIELDS and _is_set(value)
            and value != getattr(defaults, name, None)]


def _model_problems(model) -> list[str]:
    if not has_srformer_layers(model):
        return ["a model without SRformer cross-attention"]
    problems = ["training mode (call model.eval())"] if model.training else []
    variants = {m.settings.attention for m in model.modules() if isinstance(m, SRformerCrossAttention)}
    problems += [f"attention variant {v!r}" for v in sorted(variants - set(DECODER_VARIANTS))]
    return problems


def _refused_values(config: GenerationConfig) -> list[str]:
    try:
        settings_for(config)
    except UsageError as error:  # generate may accept what srsum refuses (top_p=0): generate then decides
        return [str(error)]
    return []


def settings_for(config: GenerationConfig, max_new_tokens: int | None = None, min_new_tokens: int = 0,
                 step: str = "auto") -> GenerationSettings:
    """srsum's settings for a merged GenerationConfig (lengths as new tokens, from :func:`lengths`)."""
    sampling = config.do_sample is True
    return GenerationSettings(
        num_beams=config.num_beams or 1, max_new_tokens=max_new_tokens or 1,
        min_new_tokens=min(min_new_tokens, max_new_tokens or 1), length_penalty=config.length_penalty,
        no_repeat_ngram_size=config.no_repeat_ngram_size or 0, early_stopping=config.early_stopping, step=step,
        do_sample=sampling, temperature=_or(config.temperature, 1.0) if sampling else 1.0,
        top_k=_or(config.top_k, 0) if sampling else 0, top_p=_or(config.top_p, 1.0) if sampling else 1.0,
        repetition_penalty=_or(config.repetition_penalty, 1.0),
        num_return_sequences=config.num_return_sequences or 1, max_time=config.max_time).validate()


def _or(value, default):
    return default if value is None else value


def lengths(model, request: Request) -> tuple[int, int]:
    """(max, min) new tokens as generate resolves them (its own code: max_new_tokens over max_length, the
    default 20 new tokens, min_length counting the decoder start token); raises what generate raises."""
    config, (default_max, default_min) = request.config, request.default_lengths
    config = model._prepare_generated_length(config, default_max, default_min, model_input_name="input_ids",
                                             input_ids_length=1, inputs_tensor=None)
    model._validate_generated_length(config, 1, default_max)
    return config.max_length - 1, max(0, (config.min_length or 0) - 1)


@torch.no_grad()
def run(model, request: Request):
    """The request through srsum's decoder; generate's return value (tensor or output object)."""
    max_new, min_new = lengths(model, request)
    settings = settings_for(request.config, max_new, min_new)
    inputs = {name: _on(model.device, value) for name, value in request.inputs.items()}  # as generate moves them
    encoder_outputs = inputs["encoder_outputs"]
    encoder_states = None if encoder_outputs is None else _on(model.device, encoder_outputs[0])
    source = inputs["input_ids"] if encoder_states is None else encoder_states
    model._prepare_special_tokens(request.config, inputs["attention_mask"] is not None, device=source.device,
                                  batch_size=source.shape[0])  # generate's checks and fallbacks
    output = search(model, inputs["input_ids"], inputs["attention_mask"], settings,
                    SpecialTokens.of(model, request.config), encoder_states=encoder_states,
                    streamer=request.streamer, record=bool(request.config.return_dict_in_generate))
    return hf_output(output, request.config)


def _on(device, value):
    return value.to(device) if isinstance(value, torch.Tensor) else value


def hf_output(output, config: GenerationConfig):
    """generate's return value: the sequences, or (return_dict_in_generate) its output object."""
    if not config.return_dict_in_generate:
        return output.sequences
    scores = tuple(output.scores) if config.output_scores else None
    logits = tuple(output.logits) if config.output_logits else None
    if output.beam_indices is None:
        return GenerateEncoderDecoderOutput(sequences=output.sequences, scores=scores, logits=logits)
    return GenerateBeamEncoderDecoderOutput(
        sequences=output.sequences, sequences_scores=output.sequences_scores if config.output_scores else None,
        scores=scores, logits=logits, beam_indices=output.beam_indices)
