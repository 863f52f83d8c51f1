"""int8 decoding on CPU (issue 13): which layers are quantised, that decoding still runs on the scheduled
state, that its logits stay close to float32's, and the ``--dtype int8`` option end to end."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from conftest import tiny_model
from srsum.decoding import SharedStateDecoder, generate
from srsum.engine import convert
from srsum.engine.hf_models import set_encoder_block
from srsum.errors import UsageError
from srsum.quantization import encoder_linears, quantize_for_decoding, step_linears


def srformer(family):
    return convert(tiny_model(family), "srformer", seg_size=4, schedule_length=12)


def _quantized(model) -> set[str]:
    return {name for name, module in model.named_modules() if type(module).__name__ == "Linear"
            and type(module) is not nn.Linear}


def test_the_step_and_encoder_linears_are_quantised_and_the_memory_builders_are_not(family):
    model = srformer(family)
    names = step_linears(model)
    layers = model.config.num_decoder_layers if family == "t5" else model.config.decoder_layers
    assert len(names) == layers * 8 + 1  # self q k v o, cross q o, two feed-forward, and the LM head
    encoder_names = encoder_linears(model)
    layers = model.config.num_layers if family == "t5" else model.config.encoder_layers
    assert len(encoder_names) == layers * 6  # q k v o and two feed-forward
    decoder_only = quantize_for_decoding(copy.deepcopy(model), encoder=False)
    assert _quantized(decoder_only) == set(names)
    quantize_for_decoding(model)
    assert _quantized(model) == set(names) | set(encoder_names)
    modules = dict(model.named_modules())
    assert all(type(modules[name]) is nn.Linear for name in modules if name.endswith("recurrent_w"))
    cross_kv = [name for name in modules if name.endswith(("EncDecAttention.k", "EncDecAttention.v",
                                                           "encoder_attn.k_proj", "encoder_attn.v_proj"))]
    assert cross_kv and all(type(modules[name]) is nn.Linear for name in cross_kv)


def test_an_int8_encoder_stays_close_to_float32_and_keeps_the_blocked_path(family):
    model = srformer(family)
    set_encoder_block(model, 8)  # 30 tokens: blocks of 8 queries
    quantized = quantize_for_decoding(copy.deepcopy(model))
    ids = torch.randint(3, 100, (2, 30), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 20:] = 0
    with torch.no_grad():
        exact = model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        approx = quantized.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    assert not torch.equal(approx, exact)
    assert (approx - exact)[mask.bool()].abs().max() < 0.1 * exact[mask.bool()].std()


def test_int8_decoding_runs_on_the_scheduled_state_and_stays_close_to_float32(family):
    model = srformer(family)
    quantized = quantize_for_decoding(copy.deepcopy(model))
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 100, (2, 30), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 20:] = 0
    with torch.no_grad():
        start = torch.zeros(2, 1, dtype=torch.long)
        exact = SharedStateDecoder(model, ids, mask, 1, max_steps=4, step="eager").logits(start)
        approx = SharedStateDecoder(quantized, ids, mask, 1, max_steps=4, step="eager").logits(start)
        spread = exact.std()
        assert (approx - exact).abs().max() < 0.1 * spread  # int8 weights: close, not equal
        assert not torch.equal(approx, exact)
        for beams in (1, 3):
            out = generate(quantized, ids, mask, num_beams=beams, max_new_tokens=6, min_new_tokens=6)
            assert out.shape == (2, 7)


def test_int8_is_refused_off_cpu_and_for_half_precision():
    model = srformer("t5")
    with pytest.raises(UsageError, match="float32"):
        quantize_for_decoding(copy.deepcopy(model).to(torch.bfloat16))


def test_summarize_with_dtype_int8(tiny_t5_dir, tmp_path):
    from typer.testing import CliRunner

    from srsum.cli import app

    article = tmp_path / "article.txt"
    article.write_text("The city council met on Tuesday to discuss the new budget for schools and roads. " * 5)
    runner = CliRunner()
    plain = runner.invoke(app, ["summarize", str(article), "--model", str(tiny_t5_dir), "--max-length", "8",
                                "--num-beams", "1"])
    int8 = runner.invoke(app, ["summarize", str(article), "--model", str(tiny_t5_dir), "--max-length", "8",
                               "--num-beams", "1", "--dtype", "int8"])
    assert plain.exit_code == 0, plain.output
    assert int8.exit_code == 0, int8.output
    assert int8.output.strip()
    refused = runner.invoke(app, ["summarize", str(article), "--model", str(tiny_t5_dir), "--dtype", "int4"])
    assert refused.exit_code == 2 and "int8" in refused.output


def test_load_summarizer_int8_quantises_the_loaded_model(tiny_t5_dir):
    from srsum.summarize import load_summarizer

    summarizer = load_summarizer(str(tiny_t5_dir), device="cpu", dtype="int8")
    kinds = {type(module).__module__ for module in summarizer.model.get_decoder().modules()}
    assert any("quantized" in kind for kind in kinds)
    assert summarizer.model.config.srsum_int8 is True
