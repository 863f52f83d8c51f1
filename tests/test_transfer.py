"""Attention transfer (srsum.engine.transfer, SPEC section 5 "Attention transfer") and `srsum convert`."""

import json

import pytest
import torch
from conftest import CNN_SAMPLE, padded_batch, tiny_model

from srsum.engine import convert, load_model
from srsum.engine.calibration import srformer_layers
from srsum.engine.transfer import (_Cache, _prepare, as_full_attention, layer_errors, memory_parameters, model_inputs,
                                   teacher_labels, teaching, transfer_attention)

pytestmark = pytest.mark.usefixtures("single_thread")


def converted(family, seed=0, **settings):
    ids, mask = padded_batch(family, lengths=(64, 50), seed=seed + 1)
    model = convert(tiny_model(family), "srformer", seg_size=8, schedule_length=16,
                    calibration_batch={"input_ids": ids, "attention_mask": mask}, **settings)
    return model, ids, mask


def cross_attention_outputs(model, inputs) -> list[torch.Tensor]:
    """Each decoder cross-attention module's output (before the residual), in decoder order."""
    outputs, hooks = [], []
    family = "t5" if hasattr(model, "encoder") and hasattr(model, "decoder") and hasattr(model.decoder, "block") \
        else "bart"
    modules = ([block.layer[1].EncDecAttention for block in model.decoder.block] if family == "t5"
               else [layer.encoder_attn for layer in model.model.decoder.layers])
    for module in modules:
        hooks.append(module.register_forward_hook(lambda m, args, out: outputs.append(out[0].detach())))
    try:
        with torch.no_grad():
            model(**inputs, use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    return outputs


def test_teacher_labels_are_the_original_models_greedy_output(family):
    model, ids, mask = converted(family)
    plain = tiny_model(family)
    expected = plain.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, min_new_tokens=1,
                              do_sample=False, num_beams=1)[:, 1:]
    labels = teacher_labels(model, ids, mask, 10)
    scored = labels != -100
    assert torch.equal(labels[scored], expected[:, :labels.shape[1]][scored])
    assert all(layer.settings.attention == "srformer" for layer in srformer_layers(model))  # restored


def test_teaching_runs_the_original_model_and_measures_each_layer_on_its_states(family):
    model, ids, mask = converted(family)
    plain = tiny_model(family)
    labels = teacher_labels(model, ids, mask, 12)
    inputs, scored = model_inputs(model, {"input_ids": ids, "attention_mask": mask, "labels": labels}, 12)
    teacher = cross_attention_outputs(plain, inputs)
    with teaching(model, with_grad=False) as recorder, torch.no_grad():
        logits = model(**inputs, use_cache=False).logits
    # the stream the layers see is the original model's: same logits
    torch.testing.assert_close(logits, plain(**inputs, use_cache=False).logits, rtol=1e-5, atol=1e-5)
    # layer 0's input does not depend on the cross-attention: its SRformer output is the converted model's own
    student = cross_attention_outputs(model, inputs)
    expected = (student[0] - teacher[0]).pow(2).sum(-1) / teacher[0].pow(2).sum(-1)
    torch.testing.assert_close(recorder.errors[0], expected, rtol=1e-4, atol=1e-6)
    assert len(recorder.errors) == 2 and recorder.errors[0].shape == scored.shape
    assert all(layer.observer is None and layer.settings.attention == "srformer" for layer in srformer_layers(model))


def test_transfer_trains_only_the_memory_and_lowers_the_error(family):
    model, ids, mask = converted(family)
    batch = {"input_ids": ids, "attention_mask": mask}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    result = transfer_attention(model, [batch], steps=40, learning_rate=0.05, max_new_tokens=12)
    memory = {id(p) for p in memory_parameters(model)}
    for name, p in model.named_parameters():
        assert p.requires_grad == flags[name]
        if id(p) in memory:
            assert not torch.equal(p, before[name]), name
        else:
            assert torch.equal(p, before[name]), name
    assert result.decoder_inputs == "greedy output of the full model" and result.examples == 2
    assert len(result.losses) == 40 and sum(result.layer_error_after) < sum(result.layer_error_before)
    # the errors reported are the root mean relative squared errors of a fresh measurement
    prepared = _prepare(model, [batch], 12)
    assert layer_errors(model, prepared) == pytest.approx(result.layer_error_after, rel=1e-5)
    # a batch's kept teacher pass scores it as a fresh pass does
    cache = _Cache(1 << 30)
    fresh = layer_errors(model, prepared, cache)
    assert prepared[0].layers is not None and len(prepared[0].layers) == 2
    assert layer_errors(model, prepared, cache) == pytest.approx(fresh, rel=1e-6)


def test_a_cached_teacher_pass_trains_like_a_fresh_one(family):
    runs = []
    for cache_bytes in (0, 1 << 30):
        model, ids, mask = converted(family)
        batches = [{"input_ids": ids, "attention_mask": mask}]
        result = transfer_attention(model, batches, steps=5, learning_rate=0.05, max_new_tokens=12,
                                    cache_bytes=cache_bytes)
        runs.append((result.losses, [p.detach().clone() for p in memory_parameters(model)]))
    assert runs[0][0] == pytest.approx(runs[1][0], rel=1e-5)
    for fresh, cached in zip(runs[0][1], runs[1][1]):
        torch.testing.assert_close(fresh, cached, rtol=1e-5, atol=1e-7)


def test_transfer_refuses_a_model_without_memory():
    model = convert(tiny_model("t5"), "segmented", seg_size=8, schedule_length=16)
    ids, mask = padded_batch("t5")
    with pytest.raises(ValueError, match="recurrent memory"):
        transfer_attention(model, [{"input_ids": ids, "attention_mask": mask}], steps=2)


def test_as_full_attention_is_the_plain_model(family):
    model, ids, mask = converted(family)
    plain = tiny_model(family)
    decoder_ids = torch.zeros_like(ids[:, :6])
    with as_full_attention(model), torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
    torch.testing.assert_close(got, plain(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits,
                               rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------- srsum convert
def test_cli_convert_with_transfer_writes_a_loadable_checkpoint_and_the_errors(tmp_path, tiny_bart_dir):
    from typer.testing import CliRunner

    from srsum.cli import app

    out = tmp_path / "bart-sr"
    result = CliRunner().invoke(app, ["convert", str(tiny_bart_dir), "--seg-size", "8", "--data", str(CNN_SAMPLE),
                                      "--limit", "6", "--batch-size", "3", "--transfer-steps", "4",
                                      "--max-source-length", "96", "--max-target-length", "16", "--output", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "transfer.json").read_text())
    assert saved["steps"] == 4 and saved["examples"] == 6 and saved["decoder_inputs"] == "labels"
    for layer, (before, after) in enumerate(zip(saved["layer_error_before"], saved["layer_error_after"])):
        assert f"layer {layer}: relative error {before:.3f} -> {after:.3f}" in result.output
    model = load_model(str(out))
    assert model.config.srformer_attention == "srformer" and model.config.srformer_seg_size == 8
    assert model.config.srformer_calibration is not None
    assert not list(tmp_path.glob("*.tmp-*"))


@pytest.mark.parametrize("args, message", [
    (["--transfer-steps", "3"], "--transfer-steps needs --data"),
    (["--seg-size", "0"], "--seg-size must be at least 1, got 0"),
    (["--data", "nowhere.jsonl", "--transfer-steps", "2"], "file or folder not found: nowhere.jsonl"),
    (["--attention", "segmented", "--data", str(CNN_SAMPLE), "--limit", "2", "--transfer-steps", "2"],
     "has no memory to transfer to"),
])
def test_cli_convert_bad_input_is_one_line(tmp_path, tiny_t5_dir, args, message):
    from typer.testing import CliRunner

    from srsum.cli import app

    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["convert", str(tiny_t5_dir), "--output", str(out), *args])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert "Traceback" not in result.output and not out.exists()
