"""int8 inference on CPU: dynamic quantisation of the encoder's linear layers and of those a decode step runs.

A CPU decode step of a small model at batch 1 is bound by reading the decoder's weights (t5-small: about
150 MB per step, the LM head alone 66 MB); a long article's encoder is bound by its matrix products. torch's
dynamic quantisation stores those weights as int8 (4x fewer bytes) and quantises each call's activations on
the fly; its x86 kernels (fbgemm) use VNNI's int8 dot products where the CPU has them (one 4096 x 512 by
512 x 2048 product on a Zen 4 core: 131 ms float32, 48 ms int8). What stays float32, because it feeds the
memory every later step reads: the cross-attention's key and value projections (P = Kᵀ V and each
segment's keys are built from them) and SRformer's W.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from .errors import UsageError


def step_linears(model) -> list[str]:
    """Names (in ``model.named_modules()``) of the nn.Linear layers a decode step runs that are
    quantised: every decoder linear and the LM head, except cross-attention keys/values and W."""
    from .engine.layer import SRformerCrossAttention

    decoder = model.get_decoder()
    prefix = next(name for name, module in model.named_modules() if module is decoder) + "."
    head = model.get_output_embeddings()
    keep_float = set()
    for name, module in model.named_modules():
        if isinstance(module, SRformerCrossAttention):
            keep_float |= {f"{name}.{module.projection_names[1]}", f"{name}.{module.projection_names[2]}",
                           f"{name}.recurrent_w"}
    return [name for name, module in model.named_modules()
            if type(module) is nn.Linear and name not in keep_float and (name.startswith(prefix) or module is head)]


def encoder_linears(model) -> list[str]:
    """Names of the encoder's nn.Linear layers (its attention projections and feed-forward)."""
    encoder = model.get_encoder()
    prefix = next(name for name, module in model.named_modules() if module is encoder) + "."
    return [name for name, module in model.named_modules() if type(module) is nn.Linear and name.startswith(prefix)]


def quantize_for_decoding(model, encoder: bool = True):
    """Quantise ``model``'s step linears (and with ``encoder`` its encoder's linears) to int8 in place (CPU
    only) and return it; see the module doc."""
    if next(model.parameters()).device.type != "cpu":
        raise UsageError("int8: dynamic quantisation runs on CPU only (use --device cpu)")
    if next(model.parameters()).dtype != torch.float32:
        raise UsageError("int8: quantise a float32 model (use --dtype float32)")
    names = step_linears(model) + (encoder_linears(model) if encoder else [])
    if not names:
        raise UsageError("int8: the model has no decoder linear layers to quantise")
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():  # torch marks its quantised tensor types as deprecated, not the feature
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        quantize_dynamic(model, {name: default_dynamic_qconfig for name in names}, dtype=torch.qint8, inplace=True)
    model.config.srsum_int8 = True  # so a report can say which weights ran
    return model
