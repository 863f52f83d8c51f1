"""srsum's decoder (shared per-example state) against model.generate, and its bad input."""

import pytest
import torch

from srsum.decoding import SharedStateDecoder, generate
from srsum.engine import convert
from srsum.engine.attention import STATE_ATTRIBUTE
from srsum.errors import SrsumError

from conftest import padded_batch, tiny_model
from test_engine import excite

SETTINGS = [
    dict(num_beams=1),
    dict(num_beams=1, min_new_tokens=9, no_repeat_ngram_size=2),
    dict(num_beams=3),
    dict(num_beams=4, length_penalty=2.0, no_repeat_ngram_size=2, min_new_tokens=6),
    dict(num_beams=2, early_stopping=True, length_penalty=0.5, min_new_tokens=3),
]


@pytest.mark.parametrize("variant", ["srformer", "full", "segmented", "global"])
@pytest.mark.parametrize("kwargs", SETTINGS, ids=lambda k: "-".join(f"{a}={b}" for a, b in k.items()))
def test_equals_generate(family, variant, kwargs):
    model = excite(convert(tiny_model(family), variant, seg_size=8, schedule_length=12))
    ids, mask = padded_batch(family, lengths=(40, 29, 17))
    expected = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=14, do_sample=False, **kwargs)
    assert torch.equal(generate(model, ids, mask, max_new_tokens=14, **kwargs), expected)


def test_beams_share_one_state_per_example():
    model = excite(convert(tiny_model("t5"), "srformer", seg_size=8, schedule_length=12))
    ids, mask = padded_batch("t5", lengths=(40, 29))
    decoder = SharedStateDecoder(model, ids, mask, rows_per_example=4)
    state = getattr(decoder.cache, STATE_ATTRIBUTE)[0]
    assert state.segments.seg.keys.shape[0] == 2 and state.membrane.shape[0] == 2  # per example, not per beam
    logits = decoder.logits(torch.zeros(8, 1, dtype=torch.long))
    assert logits.shape[0] == 8
    torch.testing.assert_close(logits[0], logits[3])  # identical beams of one example agree


@pytest.mark.parametrize("kwargs,message", [
    (dict(max_new_tokens=5, min_new_tokens=9), "below min_length"),
    (dict(num_beams=0), "num_beams"),
    (dict(do_sample=True), "unsupported"),
])
def test_bad_settings(kwargs, message):
    model = convert(tiny_model("t5"), "srformer", seg_size=8)
    ids, mask = padded_batch("t5")
    with pytest.raises(SrsumError, match=message):
        generate(model, ids, mask, **kwargs)


def test_empty_batch_is_an_error():
    model = convert(tiny_model("t5"), "srformer", seg_size=8)
    with pytest.raises(SrsumError, match="no articles"):
        generate(model, torch.zeros(0, 5, dtype=torch.long), torch.zeros(0, 5, dtype=torch.long))
