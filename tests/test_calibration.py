"""Calibrated conversion (issue 12): W scaled so the recurrent term is a chosen share of the local
term; the record saved with the model; memory diagnostics; every variant in float32/bfloat16/float64."""

import pytest
import torch

from srsum.engine import VARIANTS, SRformerCrossAttention, convert, load_model, ops
from srsum.engine.calibration import CLAMP_SATURATED, calibrate, dead_layers, memory_report
from srsum.errors import SrsumError

from conftest import hf_generate, padded_batch, tiny_model

VOCAB = 120


def batch(family, seed, rows=8, n=128, steps=24):
    """A padded batch of random token ids with decoder inputs: rows of lengths n, n-7, n-14, ..."""
    ids, mask = padded_batch(family, lengths=tuple(n - 7 * i for i in range(rows)), seed=seed)
    gen = torch.Generator().manual_seed(seed + 100)
    return {"input_ids": ids, "attention_mask": mask,
            "decoder_input_ids": torch.randint(3, VOCAB, (rows, steps), generator=gen)}


def cross_layers(model):
    return [m for m in model.modules() if isinstance(m, SRformerCrossAttention)]


def teacher_logits(model, data):
    with torch.no_grad():
        return model(**data, use_cache=False).logits


@pytest.mark.parametrize("ratio", [0.05, 0.5])
@pytest.mark.parametrize("seg_size", [8, 16])
def test_calibration_hits_its_ratio_on_a_held_out_batch(family, seg_size, ratio):
    model = convert(tiny_model(family), "srformer", seg_size=seg_size, schedule_length=24, memory_ratio=ratio,
                    calibration_batch=batch(family, seed=1))
    record = model.config.srformer_calibration
    assert record["source"] == "batch" and record["memory_ratio"] == ratio
    for row in record["layers"]:
        assert row["ratio"] == pytest.approx(ratio, rel=0.05)  # on the calibration batch itself
        assert row["firing_rate"] > 0
    for row in memory_report(model, batch(family, seed=7)):  # held out: other tokens, other lengths
        assert ratio / 2 <= row["ratio"] <= ratio * 2, row


def test_paper_init_is_kept_and_is_what_calibration_fixes():
    data = batch("t5", seed=1)
    torch.manual_seed(0)
    paper = convert(tiny_model("t5"), "srformer", seg_size=8, schedule_length=24, w_init="paper")
    torch.manual_seed(0)
    calibrated = convert(tiny_model("t5"), "srformer", seg_size=8, schedule_length=24, calibration_batch=data)
    assert getattr(paper.config, "srformer_calibration", None) is None
    assert paper.config.srformer_w_init == "paper"
    paper_ratios = [row["ratio"] for row in memory_report(paper, data)]
    assert min(paper_ratios) > 1  # the paper's init: the memory drowns the local term
    for layer_p, layer_c, row in zip(cross_layers(paper), cross_layers(calibrated),
                                     calibrated.config.srformer_calibration["layers"]):
        # the same draw of W, times the factor the calibration chose
        torch.testing.assert_close(layer_c.recurrent_w.weight, layer_p.recurrent_w.weight * row["scale"],
                                   rtol=1e-5, atol=0)
    # layer 0 sees the same inputs in both models (later layers see the calibrated layers before them)
    assert calibrated.config.srformer_calibration["layers"][0]["ratio_before"] == pytest.approx(paper_ratios[0],
                                                                                                rel=1e-4)


def test_calibration_is_sequential_in_decoder_order():
    """Layer 1 is calibrated on the inputs the calibrated layer 0 gives it: re-measuring matches."""
    data = batch("t5", seed=1)
    model = convert(tiny_model("t5"), "srformer", seg_size=8, schedule_length=24, calibration_batch=data)
    recorded = [row["ratio"] for row in model.config.srformer_calibration["layers"]]
    measured = [row["ratio"] for row in memory_report(model, data)]
    assert measured == pytest.approx(recorded, rel=1e-3)


def test_fallback_calibration_without_a_batch_is_deterministic():
    first = convert(tiny_model("bart"), "srformer", seg_size=8, schedule_length=24)
    second = convert(tiny_model("bart"), "srformer", seg_size=8, schedule_length=24)
    assert first.config.srformer_calibration["source"] == "fallback"
    assert first.config.srformer_calibration == second.config.srformer_calibration
    for a, b in zip(cross_layers(first), cross_layers(second)):
        torch.testing.assert_close(a.recurrent_w.weight, b.recurrent_w.weight, rtol=0, atol=0)


def test_calibration_accepts_labels_instead_of_decoder_inputs():
    data = batch("t5", seed=1)
    labels = data.pop("decoder_input_ids")
    labels[:, -3:] = -100
    model = convert(tiny_model("t5"), "srformer", seg_size=8, schedule_length=24,
                    calibration_batch={**data, "labels": labels})
    assert all(row["ratio"] == pytest.approx(0.05, rel=0.05) for row in model.config.srformer_calibration["layers"])


@pytest.mark.parametrize("variant", ["srformer", "no_raf", "no_norm"])
def test_calibrated_settings_survive_save_and_load(family, variant, tmp_path):
    data = batch(family, seed=1)
    model = convert(tiny_model(family), variant, seg_size=8, schedule_length=24, memory_ratio=0.1,
                    calibration_batch=data).eval()
    expected = teacher_logits(model, data)
    model.save_pretrained(tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.config.srformer_calibration == model.config.srformer_calibration
    assert loaded.config.srformer_memory_ratio == 0.1 and loaded.config.srformer_w_init == "calibrated"
    assert cross_layers(loaded)[0].settings.calibration == model.config.srformer_calibration
    torch.testing.assert_close(teacher_logits(loaded, data), expected, rtol=0, atol=0)
    again = load_model(tmp_path)  # loading never recalibrates: the same weights every time
    torch.testing.assert_close(teacher_logits(again, data), expected, rtol=0, atol=0)


def test_variants_without_memory_are_not_calibrated():
    for variant in ("full", "segmented", "xl", "global"):
        model = convert(tiny_model("t5"), variant, seg_size=8, schedule_length=24)
        assert getattr(model.config, "srformer_calibration", None) is None
        assert memory_report(model, batch("t5", seed=1)) == []
        assert calibrate(model, batch("t5", seed=1)) == {}


def test_bad_calibration_settings_are_one_line_errors():
    with pytest.raises(SrsumError, match="w_init"):
        convert(tiny_model("t5"), "srformer", seg_size=8, w_init="xavier")
    with pytest.raises(SrsumError, match="memory_ratio"):
        convert(tiny_model("t5"), "srformer", seg_size=8, memory_ratio=0)


def test_memory_report_sees_a_dead_memory():
    data = batch("t5", seed=1)
    model = convert(tiny_model("t5"), "srformer", seg_size=8, schedule_length=24, calibration_batch=data)
    assert dead_layers(memory_report(model, data)) == []
    with torch.no_grad():
        for layer in cross_layers(model):
            layer.raf_threshold.fill_(1e6)  # nothing crosses the threshold: R = 0
    report = memory_report(model, data)
    assert [row["firing_rate"] for row in report] == [0.0, 0.0]
    assert dead_layers(report) == [0, 1]


def saturated_bart(scale=30.0):
    """The tiny BART with its cross-attention keys and values scaled up: most of P = Σ_j K_jᵀ V_j exceeds ±2."""
    model = tiny_model("bart")
    with torch.no_grad():
        for layer in model.model.decoder.layers:
            layer.encoder_attn.k_proj.weight.mul_(scale)
            layer.encoder_attn.v_proj.weight.mul_(scale)
    return model


def test_clamp_saturation_is_measured_and_recorded():
    data = batch("bart", seed=1)
    model = convert(saturated_bart(), "srformer", seg_size=8, schedule_length=24, calibration_batch=data, clamp=2)
    assert model.config.srformer_clamp == 2.0  # the paper's clamp, asked for
    report = memory_report(model, data)
    assert [row["clamp_saturation"] for row in report] == [pytest.approx(1, abs=0.05)] * 2
    assert all(row["clamp_saturation"] > CLAMP_SATURATED for row in model.config.srformer_calibration["layers"])
    # P itself, per example and head over the valid keys, against the share reported for layer 0
    layer = cross_layers(model)[0]
    seen = {}

    def keep(layer, query, keys, values, key_valid):
        seen.setdefault("inputs", (keys, values, key_valid))

    from srsum.engine.calibration import observing, _run

    with observing([layer], keep):
        _run(model, data)
    keys, values, key_valid = seen["inputs"]
    products = [keys[b][:, key_valid[b]].transpose(-1, -2) @ values[b][:, key_valid[b]] for b in range(len(keys))]
    expected = float(torch.stack([(p.abs() > 2).float().mean() for p in products]).mean())  # all (H, d, d)
    assert report[0]["clamp_saturation"] == pytest.approx(expected, abs=1e-6)
    # a plain BART's products stay mostly inside the clamp
    plain = convert(tiny_model("bart"), "srformer", seg_size=8, schedule_length=24, calibration_batch=data, clamp=2)
    assert all(row["clamp_saturation"] < CLAMP_SATURATED for row in memory_report(plain, data))


def test_clamp_saturation_is_none_without_a_clamp(tmp_path):
    data = batch("bart", seed=1)
    model = convert(saturated_bart(), "srformer", seg_size=8, schedule_length=24, clamp=None, calibration_batch=data)
    assert [row["clamp_saturation"] for row in memory_report(model, data)] == [None, None]
    assert [row["clamp_saturation"] for row in model.config.srformer_calibration["layers"]] == [None, None]
    model.save_pretrained(tmp_path)
    loaded = load_model(tmp_path)  # no clamp stays no clamp (not the family's default)
    assert loaded.config.srformer_clamp is None
    assert [layer.settings.clamp for layer in cross_layers(loaded)] == [None, None]
    assert [row["clamp_saturation"] for row in memory_report(loaded, data)] == [None, None]
    t5 = convert(tiny_model("t5"), "srformer", seg_size=8, schedule_length=24, calibration_batch=batch("t5", seed=1))
    assert [row["clamp_saturation"] for row in memory_report(t5, batch("t5", seed=1))] == [None, None]
    assert [row["clamp_saturation"] for row in t5.config.srformer_calibration["layers"]] == [None, None]


# --------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_runs_in_every_dtype(family, variant, dtype):
    model = convert(tiny_model(family), variant, seg_size=8, schedule_length=12).to(dtype).eval()
    ids, mask = padded_batch(family, lengths=(40, 29))
    decoder_ids = torch.randint(3, VOCAB, (2, 12))
    logits = teacher_logits(model, {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": decoder_ids})
    assert logits.dtype == dtype and torch.isfinite(logits).all()
    out = hf_generate(model, input_ids=ids, attention_mask=mask, max_new_tokens=6, min_new_tokens=6, do_sample=False,
                      num_beams=2)
    assert out.shape[1] >= 7
    if dtype == torch.float64 and variant != "full":  # float64 is not rounded through float32 anywhere
        reference = convert(tiny_model(family), variant, seg_size=8, schedule_length=12).eval()
        reference.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
        expected = teacher_logits(reference, {"input_ids": ids, "attention_mask": mask,
                                              "decoder_input_ids": decoder_ids}).double()
        torch.testing.assert_close(logits, expected, rtol=1e-3, atol=1e-4)


def test_raf_scan_gradcheck_float64():
    gen = torch.Generator().manual_seed(0)
    parts = torch.randn(1, 2, 4, 3, 3, dtype=torch.float64, generator=gen) * 0.3
    base = torch.randn(1, 2, 3, 3, dtype=torch.float64, generator=gen) * 0.5 + 0.3
    leak = torch.tensor(0.4, dtype=torch.float64)
    threshold = torch.tensor(0.2, dtype=torch.float64)
    args = (parts.requires_grad_(), leak.requires_grad_(), threshold.requires_grad_(), base.requires_grad_())
    assert torch.autograd.gradcheck(lambda p, l, t, b: ops.raf_scan(p, l, t, base=b), args, eps=1e-7, atol=1e-6)


@pytest.mark.parametrize("variant", ["srformer", "no_local", "no_norm", "no_raf", "full_product"])
def test_whole_layer_gradcheck_float64(family, variant):
    """Gradients of the layer's output with respect to its input, W, λ and θ, against finite differences."""
    model = convert(tiny_model(family, d_model=16), variant, seg_size=4, schedule_length=6).double().eval()
    layer = cross_layers(model)[0]
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 6, 16, dtype=torch.float64, generator=gen).requires_grad_()
    encoder = torch.randn(2, 13, 16, dtype=torch.float64, generator=gen).requires_grad_()
    mask = torch.ones(2, 13, dtype=torch.long)
    mask[1, 10:] = 0
    key_valid = mask.bool()
    params = [layer.recurrent_w.weight] + ([layer.raf_leak, layer.raf_threshold] if layer.settings.has_raf else [])

    def run(hidden, encoder, *weights):
        with torch.nn.utils.stateless._reparametrize_module(
                layer, dict(zip(["recurrent_w.weight", "raf_leak", "raf_threshold"][:len(weights)], weights))):
            query = layer._heads(layer.query_proj(hidden)) * layer.scale
            return layer._parallel(query, encoder, key_valid)

    weights = [p.detach().clone().requires_grad_() for p in params]
    assert torch.autograd.gradcheck(run, (hidden, encoder, *weights), eps=1e-6, atol=1e-5, rtol=1e-3)
