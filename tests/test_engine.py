"""The SRformer engine: SPEC section 8's oracles, fast paths against the loop reference, variants,
gradients, generation, checkpoints and bad input, for tiny random T5 and BART models."""

import math

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, GPT2Config, GPT2LMHeadModel
from torch.utils.flop_counter import FlopCounterMode

import srsum
from srsum.engine import VARIANTS, SRformerCrossAttention, convert, count_srformer_parameters, load_model
from srsum.engine import ops
from srsum.engine.parallel import parallel_attention
from srsum.engine.segments import EncoderRows, EncoderSegments, ProjectedSegments
from srsum.engine.state import ENCODER_ROWS, STATE_ATTRIBUTE, DecodeState, held_tensors
from srsum.engine.reference import raf_scan_loop, reference_cross_attention
from srsum.errors import SrsumError

from conftest import hf_generate, padded_batch, tiny_model

VOCAB = 120


def cross_layers(model):
    return [m for m in model.modules() if isinstance(m, SRformerCrossAttention)]


def excite(model, threshold=0.05, std=0.5, seed=3):
    """Make the recurrent branch matter: larger W, a threshold the membrane crosses."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in cross_layers(model):
            if hasattr(layer, "recurrent_w"):
                layer.recurrent_w.weight.copy_(torch.randn(layer.recurrent_w.weight.shape, generator=gen) * std)
            if hasattr(layer, "raf_threshold"):
                layer.raf_threshold.fill_(threshold)
    return model


def greedy_logits(model, ids, mask, steps):
    out = hf_generate(model, input_ids=ids, attention_mask=mask, max_new_tokens=steps, min_new_tokens=steps,
                      do_sample=False, num_beams=1, output_logits=True, return_dict_in_generate=True)
    return out.sequences, torch.stack(out.logits, dim=1)


def teacher_logits(model, ids, mask, decoder_ids):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids, use_cache=False).logits


# --------------------------------------------------------------------------- fast paths vs reference
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("seg_size,schedule_length,steps", [(8, 12, 12), (8, 3, 7), (64, 12, 5)])
def test_parallel_and_decode_paths_match_reference(family, variant, seg_size, schedule_length, steps):
    model = excite(convert(tiny_model(family), variant, seg_size=seg_size, schedule_length=schedule_length))
    layer = cross_layers(model)[0]
    gen = torch.Generator().manual_seed(7)
    batch, heads, n, dim = 3, layer.n_heads, 37, layer.head_dim
    query = torch.randn(batch, heads, steps, dim, generator=gen)
    keys = torch.randn(batch, heads, n, dim, generator=gen)
    values = torch.randn(batch, heads, n, dim, generator=gen)
    key_valid = torch.ones(batch, n, dtype=torch.bool)
    key_valid[1, 25:] = False  # right padding
    key_valid[2, :6] = False  # left padding
    params = dict(weight=getattr(getattr(layer, "recurrent_w", None), "weight", None),
                  leak=getattr(layer, "raf_leak", None), threshold=getattr(layer, "raf_threshold", None))
    expected = reference_cross_attention(query, keys, values, key_valid, layer.settings, **params)
    with torch.no_grad():
        parallel = parallel_attention(query, keys, values, key_valid, layer.settings, layer)
        state = DecodeState(layer, keys, values, key_valid, rows_per_example=1)
        decoded = torch.stack([state.attend(layer, query[:, :, t:t + 1])[:, :, 0] for t in range(steps)], dim=2)
    torch.testing.assert_close(parallel, expected, atol=2e-4, rtol=2e-4)
    torch.testing.assert_close(decoded, expected, atol=2e-4, rtol=2e-4)


def test_recurrent_branch_is_not_trivially_zero():
    """The reference comparison above means little if R stayed 0: check the RAF fires there."""
    model = excite(convert(tiny_model("t5"), "srformer", seg_size=8, schedule_length=12))
    layer = cross_layers(model)[0]
    gen = torch.Generator().manual_seed(7)
    keys = torch.randn(1, layer.n_heads, 37, layer.head_dim, generator=gen)
    state = DecodeState(layer, keys, torch.randn(keys.shape, generator=gen), None, 1)
    with torch.no_grad():
        state.attend(layer, torch.randn(1, layer.n_heads, 1, layer.head_dim, generator=gen))
    assert state.recurrent.abs().sum() > 0


# --------------------------------------------------------------------------- SPEC section 8 oracles
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("schedule_length", [12, 3])  # M <= G and M > G (the schedule skips segments)
def test_oracle1_teacher_forcing_equals_step_by_step(family, variant, schedule_length):
    model = excite(convert(tiny_model(family), variant, seg_size=8, schedule_length=schedule_length))
    ids, mask = padded_batch(family, lengths=(40, 29, 17))
    sequences, step_logits = greedy_logits(model, ids, mask, steps=12)
    forced = teacher_logits(model, ids, mask, sequences[:, :12])
    torch.testing.assert_close(forced, step_logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("schedule_length", [12, 3])
def test_oracle1_holds_in_bfloat16(family, schedule_length):
    """bf16 models (what a GPU user runs): the decoder's state (Gram matrix, per-segment projections,
    float32 products) agrees with teacher forcing up to bf16 rounding."""
    model = excite(convert(tiny_model(family), "srformer", seg_size=8, schedule_length=schedule_length))
    model = model.to(torch.bfloat16)
    ids, mask = padded_batch(family, lengths=(40, 29, 17))
    sequences, step_logits = greedy_logits(model, ids, mask, steps=12)
    forced = teacher_logits(model, ids, mask, sequences[:, :12]).float()
    scale = forced.abs().max().item()
    torch.testing.assert_close(forced, step_logits.float(), atol=0.03 * scale, rtol=0.0)


@pytest.mark.parametrize("variant", ["srformer", "segmented", "xl", "global", "full"])
def test_oracle2_alone_equals_in_padded_batch(family, variant):
    model = excite(convert(tiny_model(family), variant, seg_size=8, schedule_length=12))
    ids, mask = padded_batch(family, lengths=(40, 21))
    _, batch_logits = greedy_logits(model, ids, mask, steps=10)
    _, alone_logits = greedy_logits(model, ids[1:, :21], mask[1:, :21], steps=10)
    torch.testing.assert_close(batch_logits[1:], alone_logits, atol=1e-4, rtol=1e-4)
    if family == "bart":
        return  # BART's encoder has absolute positions: left padding changes its output, not ours to fix
    left_ids = torch.cat([ids[1:, 21:], ids[1:, :21]], dim=1)  # the same example padded on the left
    left_mask = torch.cat([mask[1:, 21:], mask[1:, :21]], dim=1)
    _, left_logits = greedy_logits(model, left_ids, left_mask, steps=10)
    torch.testing.assert_close(left_logits, alone_logits, atol=1e-4, rtol=1e-4)


def test_oracle3_one_segment_equals_full_attention(family):
    base = tiny_model(family)
    ids, mask = padded_batch(family, lengths=(40, 29))
    decoder_ids = torch.randint(3, VOCAB, (2, 9))
    full = teacher_logits(convert(base, "full"), ids, mask, decoder_ids)
    srformer = excite(convert(base, "srformer", seg_size=40, schedule_length=9))  # s >= n: M = 1
    torch.testing.assert_close(teacher_logits(srformer, ids, mask, decoder_ids), full, atol=1e-5, rtol=1e-5)
    _, stepped = greedy_logits(srformer, ids, mask, steps=9)
    _, stepped_full = greedy_logits(convert(base, "full"), ids, mask, steps=9)
    torch.testing.assert_close(stepped, stepped_full, atol=1e-5, rtol=1e-5)


def test_oracle4_huge_threshold_equals_segmented(family):
    base = tiny_model(family)
    ids, mask = padded_batch(family, lengths=(40, 29))
    decoder_ids = torch.randint(3, VOCAB, (2, 12))
    segmented = teacher_logits(convert(base, "segmented", seg_size=8, schedule_length=12), ids, mask, decoder_ids)
    srformer = excite(convert(base, "srformer", seg_size=8, schedule_length=12), threshold=1e9)
    torch.testing.assert_close(teacher_logits(srformer, ids, mask, decoder_ids), segmented, atol=1e-5, rtol=1e-5)


def test_oracle5_first_raf_step():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 4, generator=gen)
    theta, lam = torch.tensor(0.3), torch.tensor(0.7)
    membrane, fired = ops.raf_step(torch.zeros_like(x), x, lam, theta)
    torch.testing.assert_close(fired, torch.relu(x / theta - 1))
    torch.testing.assert_close(membrane, x - theta * (x > theta).float())
    assert (fired > 0).any() and (fired == 0).any()


def test_oracle6_every_beam_sees_the_same_recurrent_sequence(family, monkeypatch):
    model = excite(convert(tiny_model(family), "srformer", seg_size=8, schedule_length=12))
    ids, mask = padded_batch(family, lengths=(40, 29))
    seen = []
    original = DecodeState.enter

    def spy(self, layer, position):
        original(self, layer, position)
        if layer.layer_idx == 0:
            seen.append(self.recurrent.clone())

    monkeypatch.setattr(DecodeState, "enter", spy)
    hf_generate(model, input_ids=ids, attention_mask=mask, max_new_tokens=10, min_new_tokens=10, num_beams=3,
                do_sample=False)
    assert len(seen) == 10
    for recurrent in seen:  # rows are example-major: rows 0-2 are example 0's beams
        per_example = recurrent.view(2, 3, *recurrent.shape[1:])
        assert torch.equal(per_example[:, 0], per_example[:, 1]) and torch.equal(per_example[:, 0], per_example[:, 2])
    assert not torch.equal(seen[-1][0], seen[-1][3])  # the two examples differ


def test_oracle6_shared_state_for_beams_equals_copied_state(family):
    """One state per example serving k query rows gives what k copies of it give."""
    model = excite(convert(tiny_model(family), "srformer", seg_size=8, schedule_length=12))
    layer = cross_layers(model)[0]
    gen = torch.Generator().manual_seed(2)
    keys = torch.randn(2, layer.n_heads, 30, layer.head_dim, generator=gen)
    values = torch.randn(keys.shape, generator=gen)
    shared = DecodeState(layer, keys, values, None, rows_per_example=3)
    copied = DecodeState(layer, keys.repeat_interleave(3, 0), values.repeat_interleave(3, 0), None, 1)
    with torch.no_grad():
        for _ in range(6):
            query = torch.randn(6, layer.n_heads, layer.head_dim, generator=gen)
            a = layer._decode_one(shared, query)
            b = copied.attend(layer, query[:, :, None])[:, :, 0]
            torch.testing.assert_close(a, b)


def test_oracle7_parameter_count(family):
    base = tiny_model(family)
    before = sum(p.numel() for p in base.parameters())
    model = convert(base, "srformer", seg_size=8)
    layer = cross_layers(model)[0]
    n_layers = len(cross_layers(model))
    added = sum(p.numel() for p in model.parameters()) - before
    assert added == n_layers * (layer.head_dim ** 2 + 2) == count_srformer_parameters(model)


# --------------------------------------------------------------------------- training and generation
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_trains_and_generates(family, variant):
    model = excite(convert(tiny_model(family), variant, seg_size=8, schedule_length=10)).train()
    ids, mask = padded_batch(family, lengths=(40, 29))
    labels = torch.randint(3, VOCAB, (2, 10))
    loss = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
    loss.backward()
    assert torch.isfinite(loss)
    for layer in cross_layers(model):
        for name in ("recurrent_w", "raf_leak", "raf_threshold"):
            if hasattr(layer, name):
                param = getattr(layer, name)
                grad = param.weight.grad if name == "recurrent_w" else param.grad
                assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    model.eval()
    for kwargs in (dict(num_beams=1), dict(num_beams=3, length_penalty=1.2), dict(do_sample=True, top_k=5)):
        out = hf_generate(model, input_ids=ids, attention_mask=mask, max_new_tokens=8, **kwargs)
        assert out.shape[0] == 2 and out.shape[1] >= 2


def test_srformer_gradients_reach_w_lambda_theta(family):
    model = excite(convert(tiny_model(family), "srformer", seg_size=8, schedule_length=10)).train()
    ids, mask = padded_batch(family, lengths=(40, 29))
    loss = model(input_ids=ids, attention_mask=mask, labels=torch.randint(3, VOCAB, (2, 10)), use_cache=False).loss
    loss.backward()
    layer = cross_layers(model)[1]
    assert layer.recurrent_w.weight.grad.abs().sum() > 0
    assert layer.raf_leak.grad.abs() > 0 and layer.raf_threshold.grad.abs() > 0


def test_training_path_has_no_loop_over_positions(monkeypatch):
    """The RAF scan steps once per distinct segment (L <= M), not once per decoder position."""
    scanned = []
    original = ops.raf_scan
    monkeypatch.setattr(ops, "raf_scan", lambda inputs, *a, **k: scanned.append(inputs.shape[2]) or original(inputs, *a, **k))
    model = excite(convert(tiny_model("t5"), "srformer", seg_size=8, schedule_length=64))
    scanned.clear()  # the conversion's calibration scanned too
    ids, mask = padded_batch("t5", lengths=(40, 40))
    teacher_logits(model, ids, mask, torch.randint(3, VOCAB, (2, 64)))
    assert scanned == [math.ceil(40 / 8)] * 2  # 2 layers, each one scan of 5 segments for 64 positions


@pytest.mark.parametrize("theta", [0.1, 2.0, -0.3])
@pytest.mark.parametrize("with_base", [False, True])
def test_raf_scan_matches_loop_reference_with_gradients(theta, with_base):
    """The hand-written backward of the RAF scan equals autograd through the plain loop: X, λ, θ."""
    gen = torch.Generator().manual_seed(0)
    parts = torch.randn(2, 3, 7, 4, 4, dtype=torch.double, generator=gen, requires_grad=True)
    base = torch.randn(2, 3, 4, 4, dtype=torch.double, generator=gen, requires_grad=True)
    leak = torch.tensor(0.4, dtype=torch.double, requires_grad=True)
    threshold = torch.tensor(theta, dtype=torch.double, requires_grad=True)
    upstream = torch.randn(2, 3, 7, 4, 4, dtype=torch.double, generator=gen)
    wrt = (parts, base, leak, threshold) if with_base else (parts, leak, threshold)
    fast = ops.raf_scan(parts, leak, threshold, base=base if with_base else None)
    slow = raf_scan_loop(base[:, :, None] - parts if with_base else parts, leak, threshold)
    assert fast.shape == slow.shape and slow.abs().sum() > 0  # something fired
    torch.testing.assert_close(fast, slow)
    for got, want in zip(torch.autograd.grad((fast * upstream).sum(), wrt),
                         torch.autograd.grad((slow * upstream).sum(), wrt)):
        assert want.abs().sum() > 0
        torch.testing.assert_close(got, want)


def test_raf_step_threshold_below_zero_follows_the_formula():
    """R = ReLU(U/θ - 1) and the reset [U > θ] hold for any sign of θ (θ is learnable)."""
    x = torch.tensor([[-1.0, -0.2], [0.3, 2.0]])
    lam, theta = torch.tensor(0.5), torch.tensor(-0.5)
    membrane, fired = ops.raf_step(torch.zeros(2, 2), x, lam, theta)
    torch.testing.assert_close(fired, torch.relu(x / theta - 1))
    torch.testing.assert_close(membrane, x - theta * (x > theta).float())


@pytest.mark.parametrize("reader", ["keys", "encoder"])
@pytest.mark.parametrize("variant", ["srformer", "segmented", "xl", "global"])
def test_decode_step_work_does_not_grow_with_n(variant, reader):
    # G = 1: both lengths change segment exactly once in the measured steps (t = 1), so the same work
    model = excite(convert(tiny_model("t5"), variant, seg_size=8, schedule_length=1))
    layer = cross_layers(model)[0]

    def step_flops(n):
        if reader == "keys":  # a state over projected keys/values
            keys = torch.randn(1, layer.n_heads, n, layer.head_dim)
            state = DecodeState(layer, keys, torch.randn(keys.shape), None, 1)
        else:  # the state generation uses: encoder rows, projected per segment
            state = layer.start_decoding(torch.randn(1, n, model.config.d_model), None)
        query = torch.randn(1, layer.n_heads, 1, layer.head_dim)
        with torch.no_grad():
            state.attend(layer, query)
            with FlopCounterMode(display=False) as counter:
                for _ in range(3):
                    state.attend(layer, query)
        return counter.get_total_flops()

    if variant == "global":  # M global tokens per step: grows with n/s by design (LongT5)
        assert step_flops(64) < step_flops(4096)
    else:
        assert step_flops(64) == step_flops(4096) > 0


def _linear_products(layer, encoder, key_valid):
    keys, values = layer._keys_values(encoder)
    return ProjectedSegments(keys, values, key_valid, layer.settings).products()


@pytest.mark.parametrize("plain_linear", [True, False])
def test_products_from_encoder_rows_equal_projected_keys(family, plain_linear):
    """P and ν from the rows' Gram matrix (or chunked projection) equal those of the projected keys,
    with BART's biases and with left and right padding (padding rows must add nothing)."""
    model = excite(convert(tiny_model(family), "srformer", seg_size=8, schedule_length=12))
    layer = cross_layers(model)[0]
    if not plain_linear:  # an adapter-like wrapper: not an nn.Linear, so no weight to read
        name = layer.projection_names[1]
        setattr(layer, name, torch.nn.Sequential(getattr(layer, name)))
    gen = torch.Generator().manual_seed(5)
    encoder = torch.randn(3, 37, model.config.d_model, generator=gen)
    key_valid = torch.ones(3, 37, dtype=torch.bool)
    key_valid[1, 25:] = False
    key_valid[2, :6] = False
    with torch.no_grad():
        expected = _linear_products(layer, encoder, key_valid)
        rows = EncoderRows(encoder, key_valid, layer.settings.seg_size)
        got = EncoderSegments(layer, rows).products()
    assert (layer.linear_weight(1) is not None) == plain_linear
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_decode_state_holds_nothing_n_long():
    """Beyond the encoder rows all layers share, a layer's decoding state is the same size at any n:
    no projected keys or values of the whole input are kept."""
    model = excite(convert(tiny_model("t5"), "srformer", seg_size=8, schedule_length=4))  # M > G at both n
    layer = cross_layers(model)[0]

    def state_numel(n):
        shared = {}
        state = layer.start_decoding(torch.randn(2, n, model.config.d_model), None, 1, shared)
        with torch.no_grad():
            state.attend(layer, torch.randn(2, layer.n_heads, 1, layer.head_dim))
        rows = {id(t) for t in held_tensors(shared[ENCODER_ROWS])}
        return sum(t.numel() for t in held_tensors(state) if id(t) not in rows)

    assert state_numel(64) == state_numel(4096) > 0


def test_decode_state_memory_does_not_grow_with_steps():
    model = excite(convert(tiny_model("t5"), "srformer", seg_size=8, schedule_length=12))
    ids, mask = padded_batch("t5", lengths=(40, 29))
    sizes = []
    from transformers import DynamicCache, EncoderDecoderCache
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    encoder = model.get_encoder()(input_ids=ids, attention_mask=mask)
    token = torch.zeros(2, 1, dtype=torch.long)
    for _ in range(12):
        model(encoder_outputs=encoder, attention_mask=mask, decoder_input_ids=token, cache=cache, use_cache=True)
        state = getattr(cache, STATE_ATTRIBUTE)[0]
        sizes.append(sum(t.numel() for t in vars(state).values() if isinstance(t, torch.Tensor)))
    assert len(set(sizes[1:])) == 1


# --------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("variant", ["srformer", "xl", "no_raf"])
def test_save_load_round_trip(family, variant, tmp_path):
    model = excite(convert(tiny_model(family), variant, seg_size=8, schedule_length=12))
    ids, mask = padded_batch(family, lengths=(40, 29))
    decoder_ids = torch.randint(3, VOCAB, (2, 12))
    expected = teacher_logits(model, ids, mask, decoder_ids)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    for loaded in (load_model(tmp_path), AutoModelForSeq2SeqLM.from_pretrained(tmp_path)):
        assert type(loaded) is type(model)
        assert loaded.config.srformer_attention == variant and loaded.config.srformer_seg_size == 8
        torch.testing.assert_close(teacher_logits(loaded.eval(), ids, mask, decoder_ids), expected, atol=0, rtol=0)
        embeddings = loaded.get_input_embeddings().weight
        assert loaded.get_output_embeddings().weight.data_ptr() == embeddings.data_ptr() or family == "bart" \
            and torch.equal(loaded.get_output_embeddings().weight, embeddings)
        state = dict(loaded.named_parameters())
        for name, param in model.named_parameters():
            torch.testing.assert_close(state[name], param, atol=0, rtol=0)


def test_load_model_checks_settings_and_converts_plain_models(tmp_path):
    base = tiny_model("t5")
    base.save_pretrained(tmp_path / "plain")
    plain = load_model(tmp_path / "plain")
    assert plain.config.srformer_attention == "full"
    converted = load_model(tmp_path / "plain", attention="srformer", seg_size=16)
    assert converted.config.srformer_seg_size == 16
    converted.save_pretrained(tmp_path / "sr")
    with pytest.raises(SrsumError, match="seg_size"):
        load_model(tmp_path / "sr", seg_size=8)
    with pytest.raises(SrsumError, match="attention"):
        load_model(tmp_path / "sr", attention="segmented")
    with pytest.raises(SrsumError, match="neither an srsum checkpoint"):
        load_model(tmp_path)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("seg_size", [0, -3, 2.5, "eight", None])
def test_bad_segment_size(seg_size):
    with pytest.raises(ValueError, match="seg_size"):
        convert(tiny_model("t5"), "srformer", seg_size=seg_size)


def test_unknown_variant_and_architecture():
    with pytest.raises(ValueError, match="attention: unknown variant 'fancy'.*srformer"):
        convert(tiny_model("t5"), "fancy")
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(ValueError, match="model_type: 'gpt2'.*t5"):
        convert(gpt2, "srformer")


def test_float16_t5_is_refused_with_bfloat16_hint(tmp_path):
    model = convert(tiny_model("t5"), "srformer", seg_size=8)
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="bfloat16"):
        load_model(tmp_path, dtype=torch.float16)
    ids, mask = padded_batch("t5")
    with pytest.raises(ValueError, match="bfloat16"):
        model.half()(input_ids=ids, attention_mask=mask, decoder_input_ids=ids[:, :3])


def test_paper_aliases_and_settings_are_saved():
    model = convert(tiny_model("bart"), "ablation-iii", seg_size=16, schedule_length=64)
    config = model.config
    assert config.srformer_attention == "no_raf" and config.srformer_schedule_length == 64
    assert config.srformer_clamp is None and config.srformer_leak_init == 0.5  # the clamp is off by default
    t5 = convert(tiny_model("t5"), "srformer").config
    assert t5.srformer_clamp is None and t5.srformer_leak_init == 0.1 and t5.srformer_threshold_init == 0.1
    assert srsum.VARIANTS == VARIANTS


def test_warns_when_segments_outnumber_the_schedule():
    model = convert(tiny_model("t5"), "srformer", seg_size=2, schedule_length=5)
    ids, mask = padded_batch("t5", lengths=(40, 29))
    with pytest.warns(UserWarning, match="never attended locally.*seg_size >= 8"):
        teacher_logits(model, ids, mask, ids[:, :5])


@pytest.mark.parametrize("saved_as", ["plain", "srsum"])
def test_a_pickle_only_model_folder_is_refused_with_one_line(tmp_path, saved_as):
    model = tiny_model("t5")
    if saved_as == "srsum":
        model = convert(model, "segmented", seg_size=8, schedule_length=12)
    model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(SrsumError, match="only as a pickle .pytorch_model.bin.") as caught:
        load_model(tmp_path, attention="segmented")
    assert "\n" not in str(caught.value)
