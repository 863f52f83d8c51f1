"""Edge cases Hugging Face's own model tests reach (issue 30 item 5): an encoder row whose attention mask is all
zeros, and converting a model built on the meta device."""

import pytest
import torch

from srsum.decoding import GenerationSettings, SpecialTokens, search
from srsum.engine import convert

from conftest import padded_batch, tiny_model

pytestmark = pytest.mark.usefixtures("single_thread")


def masked_batch(family):
    """Two examples, the second with an all-zero attention mask."""
    ids, mask = padded_batch(family, lengths=(40, 29))
    mask[1] = 0
    return ids, mask


@pytest.mark.parametrize("variant", ["srformer", "full", "segmented"])
def test_a_fully_masked_row_gives_finite_outputs_and_leaves_the_others_alone(family, variant):
    model = convert(tiny_model(family), variant, seg_size=8, schedule_length=6)
    ids, mask = masked_batch(family)
    decoder_ids = torch.randint(3, 100, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
        alone = model(input_ids=ids[:1], attention_mask=mask[:1], decoder_input_ids=decoder_ids[:1]).logits
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits[:1], alone, rtol=1e-5, atol=1e-5)  # the masked row disturbs no other
    settings = GenerationSettings(num_beams=2, max_new_tokens=5, min_new_tokens=5, step="eager").validate()
    output = search(model, ids, mask, settings, SpecialTokens.of(model), record=True)
    assert output.sequences.shape == (2, 6)
    assert all(torch.isfinite(step).all() for step in output.logits)  # srsum's decoder, every step


def test_convert_builds_an_srformer_model_on_the_meta_device(family):
    """No values to calibrate on: W keeps its init, the settings say not calibrated, and the model gets weights
    later (to_empty + a state dict) and then calibrates and runs like one converted with weights."""
    from srsum.engine.calibration import calibrate, srformer_layers

    reference = convert(tiny_model(family), "srformer", seg_size=8, schedule_length=6, w_init="paper")
    with torch.device("meta"):
        empty = type(tiny_model(family))(tiny_model(family).config)
    model = convert(empty, "srformer", seg_size=8, schedule_length=6)
    assert type(model) is type(reference) and all(p.is_meta for p in model.parameters())
    layers = srformer_layers(model)
    assert layers and all(layer.settings.calibration is None for layer in layers)
    assert getattr(model.config, "srformer_calibration", None) is None
    model = model.to_empty(device="cpu")
    model.load_state_dict(reference.state_dict())
    record = calibrate(model.eval())
    assert len(record["layers"]) == len(layers)
    ids, mask = padded_batch(family)
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids, attention_mask=mask, decoder_input_ids=ids[:, :4]).logits).all()
