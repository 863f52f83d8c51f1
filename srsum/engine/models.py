"""Compatibility re-exports: the T5/BART adapters, convert and load_model live in hf_models.py."""

from .hf_models import (FAMILIES, PICKLE_WEIGHTS, BartCrossAttention, Family, SRformerBartConfig,
                        SRformerBartForConditionalGeneration, SRformerT5Config, SRformerT5ForConditionalGeneration,
                        T5CrossAttention, check_safetensors, convert, count_srformer_parameters, family_of,
                        install_cross_attention, install_encoder_attention, load_config, load_model, on_meta_device,
                        refuse_pickle_only, register_auto_classes, set_encoder_block)

__all__ = [
    "FAMILIES", "PICKLE_WEIGHTS", "BartCrossAttention", "Family", "SRformerBartConfig",
    "SRformerBartForConditionalGeneration", "SRformerT5Config", "SRformerT5ForConditionalGeneration",
    "T5CrossAttention", "check_safetensors", "convert", "count_srformer_parameters", "family_of",
    "install_cross_attention", "install_encoder_attention", "load_config", "load_model", "on_meta_device",
    "refuse_pickle_only", "register_auto_classes", "set_encoder_block",
]
