"""The SRformer engine: math (ops), the loop reference, the cross-attention layer and T5/BART hooks.

It never imports the CLI. See docs/ENGINE_API.md for the contract the rest of srsum uses.
"""

from .layer import SRformerCrossAttention
from .hf_models import (FAMILIES, SRformerBartConfig, SRformerBartForConditionalGeneration, SRformerT5Config,
                     SRformerT5ForConditionalGeneration, convert, count_srformer_parameters, family_of, load_config,
                     load_model, register_auto_classes, set_encoder_block)
from .settings import (DEFAULT_ENCODER_BLOCK, VARIANTS, SRformerSettings, make_settings, normalize_variant,
                       settings_from_config)
from .state import DecodeState

register_auto_classes()

__all__ = [
    "VARIANTS", "SRformerSettings", "SRformerCrossAttention", "DecodeState", "convert", "load_model",
    "make_settings", "normalize_variant", "settings_from_config", "family_of", "load_config",
    "count_srformer_parameters", "set_encoder_block", "DEFAULT_ENCODER_BLOCK",
    "FAMILIES", "SRformerT5Config", "SRformerBartConfig", "SRformerT5ForConditionalGeneration",
    "SRformerBartForConditionalGeneration", "register_auto_classes",
]
