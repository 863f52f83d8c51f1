"""Shared fixtures: tiny random T5 and BART models (nothing downloaded) and the shared data folder."""

from pathlib import Path

import pytest
import torch
from transformers import BartConfig, BartForConditionalGeneration, T5Config, T5ForConditionalGeneration

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def tiny_t5_config(vocab_size=120, **overrides):
    fields = dict(vocab_size=vocab_size, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
                  num_decoder_layers=2, dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0,
                  eos_token_id=1)
    fields.update(overrides)
    return T5Config(**fields)


def tiny_bart_config(vocab_size=120, **overrides):
    fields = dict(vocab_size=vocab_size, d_model=32, encoder_layers=2, decoder_layers=2,
                  encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                  decoder_ffn_dim=64, max_position_embeddings=256, dropout=0.0, attention_dropout=0.0,
                  pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
                  forced_bos_token_id=None, forced_eos_token_id=None)
    fields.update(overrides)
    return BartConfig(**fields)


def tiny_model(family: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    if family == "t5":
        return T5ForConditionalGeneration(tiny_t5_config(**overrides)).eval()
    return BartForConditionalGeneration(tiny_bart_config(**overrides)).eval()


def padded_batch(family: str, lengths=(40, 29), vocab_size=120, seed=1):
    """Random input ids with right padding to the longest length, and the attention mask."""
    gen = torch.Generator().manual_seed(seed)
    pad = 0 if family == "t5" else 1
    n = max(lengths)
    ids = torch.randint(3, vocab_size, (len(lengths), n), generator=gen)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    ids = ids.masked_fill(mask == 0, pad)
    return ids, mask


@pytest.fixture(params=["t5", "bart"])
def family(request):
    return request.param


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent (it sits beside the checkout in CI)")
    return SHARED_DATA
