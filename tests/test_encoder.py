"""The blocked encoder self-attention (srsum.engine.encoder, issue 16): the same encoder as Hugging Face's
(T5 with its relative position bias, BART with its padding mask) in eval and train, with gradients; the
config field survives save/load; off means Hugging Face's modules; memory grows linearly in n."""

import copy
import json
import sys

import pytest
import torch
from conftest import padded_batch, tiny_model
from transformers.models.bart.modeling_bart import BartAttention
from transformers.models.t5.modeling_t5 import T5Attention

from srsum.engine import VARIANTS, convert, load_model, make_settings, set_encoder_block
from srsum.engine.encoder import (HOOK_ATTRIBUTE, BlockedSelfAttention, blocked_attention, relative_bias_rows,
                                  relative_bias_table)
from srsum.errors import SrsumError

pytestmark = pytest.mark.usefixtures("single_thread")
TOL = 1e-5
LENGTHS = (40, 29, 33)  # a padded batch, n = 40


def encoder_attention(model):
    if model.config.model_type.endswith("t5"):
        return [block.layer[0].SelfAttention for block in model.encoder.block]
    return [layer.self_attn for layer in model.model.encoder.layers]


def pair(family, block, variant="full", **overrides):
    """(Hugging Face model, the same weights converted with the given encoder block)."""
    reference = tiny_model(family, **overrides)
    return reference, convert(copy.deepcopy(reference), variant, encoder_block=block)


def encode(model, ids, mask=None, embeds=None):
    encoder = model.get_encoder()
    if embeds is not None:
        return encoder(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    return encoder(input_ids=ids, attention_mask=mask).last_hidden_state


def assert_close(got, want, what="", tol=TOL, relative=False):
    """Max error within ``tol``; ``relative``: within ``tol`` times the largest |want| (if above 1), for
    gradients, whose float32 rounding grows with their size."""
    error = (got - want).abs().max().item()
    bound = tol * max(1.0, want.abs().max().item()) if relative else tol
    assert error <= bound, f"{what}: max error {error:.2e} > {bound:.2e}"


# --------------------------------------------------------------------------- the pure functions
@pytest.mark.parametrize("n,start,stop", [(40, 0, 16), (40, 16, 32), (40, 32, 40), (300, 100, 177)])
def test_bias_table_rows_are_t5s_bias(n, start, stop):
    torch.manual_seed(0)
    attention = tiny_model("t5").encoder.block[0].layer[0].SelfAttention
    full = attention.compute_bias(n, n)  # (1, H, n, n), Hugging Face
    table = relative_bias_table(attention.relative_attention_bias, n, attention.relative_attention_num_buckets,
                                attention.relative_attention_max_distance)
    assert table.shape == (1, full.shape[1], 1, 2 * n - 1)
    rows = relative_bias_rows(table, start, stop)  # over the keys in reverse order
    assert torch.equal(rows.flip(-1), full[:, :, start:stop])
    assert rows.untyped_storage().data_ptr() == table.untyped_storage().data_ptr()  # a view, nothing copied


@pytest.mark.parametrize("block", [1, 7, 16, 40, 64])
def test_blocked_attention_is_softmax_attention(block):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 40, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    bias = torch.randn(1, 3, 40, 40, generator=gen, dtype=torch.float64)
    mask = torch.ones(2, 1, 1, 40, dtype=torch.bool)
    mask[1, ..., 25:] = False
    scores = q @ k.transpose(-1, -2) * 0.5 + bias.masked_fill(~mask, torch.finfo(torch.float64).min)
    want = scores.softmax(-1) @ v
    assert_close(blocked_attention(q, k, v, block, 0.5, mask, bias), want, f"block {block}")


# --------------------------------------------------------------------------- same encoder as Hugging Face
@pytest.mark.parametrize("block", [7, 16, 39])  # 40 = 5*7+5 = 2*16+8 = 39+1: no block size divides n
def test_eval_equals_hugging_face_encoder(family, block):
    reference, model = pair(family, block)
    assert all(isinstance(m, BlockedSelfAttention) for m in encoder_attention(model))
    for lengths in (LENGTHS, (40,)):  # padded batch, and one unpadded example (no mask at all)
        ids, mask = padded_batch(family, lengths)
        with torch.no_grad():
            assert_close(encode(model, ids, mask), encode(reference, ids, mask), f"{family} {lengths}")


def test_the_blocked_path_runs(family, monkeypatch):
    import srsum.engine.encoder as encoder

    calls = []
    original = encoder.attend_rows
    monkeypatch.setattr(encoder, "attend_rows", lambda q, *args: calls.append(q.shape[-2]) or original(q, *args))
    _, model = pair(family, 16)
    ids, mask = padded_batch(family, LENGTHS)
    with torch.no_grad():
        encode(model, ids, mask)
    layers = len(encoder_attention(model))
    assert calls == [16, 16, 8] * layers
    calls.clear()
    with torch.no_grad():
        encode(model, ids[:, :16], mask[:, :16])  # n <= block: Hugging Face's path
    assert calls == []


@pytest.mark.parametrize("dtype,tol", [(torch.float32, TOL), (torch.float64, 1e-10)])
@pytest.mark.parametrize("block", [7, 16])
def test_train_mode_gradients_equal_hugging_face(family, block, dtype, tol):
    reference, model = pair(family, block)
    reference, model = reference.to(dtype), model.to(dtype)
    ids, mask = padded_batch(family, LENGTHS)
    embeds = reference.get_input_embeddings()(ids).detach()
    weights = torch.randn(*ids.shape, reference.config.d_model, generator=torch.Generator().manual_seed(3),
                          dtype=dtype)
    results = []
    for m in (reference, model):
        m.train()
        x = embeds.clone().requires_grad_(True)
        out = encode(m, None, mask, x)
        (out * weights).sum().backward()
        grads = {name: p.grad for name, p in m.get_encoder().named_parameters() if p.grad is not None}
        results.append((out.detach(), x.grad, grads))
    (out_ref, x_ref, g_ref), (out, x_grad, grads) = results
    assert_close(out, out_ref, "output", tol)
    assert_close(x_grad, x_ref, "input gradient", tol, relative=True)
    assert set(grads) == set(g_ref) and len(grads) > 4
    if family == "t5":
        assert "block.0.layer.0.SelfAttention.relative_attention_bias.weight" in grads
    for name in grads:
        assert_close(grads[name], g_ref[name], name, tol, relative=True)


def test_gradients_with_hugging_face_gradient_checkpointing():
    reference, model = pair("t5", 16)
    ids, mask = padded_batch("t5", LENGTHS)
    labels = ids[:, :8].contiguous()
    grads = []
    for m in (reference, model):
        m.train()
        m.gradient_checkpointing_enable({"use_reentrant": True})
        m(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        grads.append(m.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight.grad)
    assert grads[1].abs().sum() > 0
    assert_close(grads[1], grads[0], "bias gradient")


def test_attention_dropout_is_applied_per_block(family):
    _, model = pair(family, 16)
    for module in encoder_attention(model):
        module.dropout = 0.5  # attention dropout only (hidden dropout stays 0)
    ids, mask = padded_batch(family, LENGTHS)
    with torch.no_grad():
        plain = encode(model.eval(), ids, mask)
    model.train()

    def run(seed):
        torch.manual_seed(seed)
        model.zero_grad()
        embeds = model.get_input_embeddings()(ids)
        out = encode(model, None, mask, embeds)
        out.square().sum().backward()
        return out.detach(), next(model.get_encoder().parameters()).grad.clone()

    out, grad = run(0)
    assert torch.isfinite(out).all() and (out - plain).abs().max() > 1e-3  # dropout changed the output
    again, grad_again = run(0)  # the backward recomputation draws the same dropout as the forward
    assert torch.equal(out, again) and torch.equal(grad, grad_again)
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_runs_with_the_blocked_encoder(family, variant):
    ids, mask = padded_batch(family, LENGTHS)
    labels = padded_batch(family, (12, 9, 10), seed=5)[0]
    losses = []
    for block in (None, 8):
        torch.manual_seed(0)
        model = convert(tiny_model(family), variant, seg_size=8, schedule_length=12, encoder_block=block)
        with torch.no_grad():
            losses.append(model(input_ids=ids, attention_mask=mask, labels=labels).loss)
    assert abs(losses[0] - losses[1]) <= TOL


def test_generation_is_unchanged(family):
    from srsum.decoding import generate

    ids, mask = padded_batch(family, LENGTHS)
    outputs = []
    for block in (None, 16):
        torch.manual_seed(0)
        model = convert(tiny_model(family), "srformer", seg_size=8, schedule_length=12, encoder_block=block)
        outputs.append(generate(model, ids, mask, num_beams=2, max_new_tokens=6))
    assert torch.equal(outputs[0], outputs[1])


# --------------------------------------------------------------------------- the config field
def test_field_is_saved_and_loaded(family, tmp_path):
    _, model = pair(family, 24, variant="srformer")
    assert model.config.srformer_encoder_block == 24
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["srformer_encoder_block"] == 24
    loaded = load_model(str(tmp_path))
    assert loaded.config.srformer_encoder_block == 24
    assert all(type(m).__name__.endswith("BlockedSelfAttention") and m.encoder_block == 24
               for m in encoder_attention(loaded))
    ids, mask = padded_batch(family, LENGTHS)
    with torch.no_grad():
        assert torch.equal(encode(loaded, ids, mask), encode(model.eval(), ids, mask))
    other = load_model(str(tmp_path), encoder_block=10)  # a loading option overrides the saved value
    assert other.config.srformer_encoder_block == 10
    assert {m.encoder_block for m in encoder_attention(other)} == {10}
    off = load_model(str(tmp_path), encoder_block=0)
    assert off.config.srformer_encoder_block is None
    assert not any(isinstance(m, BlockedSelfAttention) for m in encoder_attention(off))


def test_plain_model_loads_with_the_field(family, tmp_path):
    tiny_model(family).save_pretrained(tmp_path)
    default = load_model(str(tmp_path))
    assert default.config.srformer_encoder_block == make_settings(family).encoder_block
    chosen = load_model(str(tmp_path), encoder_block=12)
    assert {m.encoder_block for m in encoder_attention(chosen)} == {12}


def test_field_off_is_hugging_face_bit_for_bit(family):
    reference, model = pair(family, None)
    host = T5Attention if family == "t5" else BartAttention
    assert model.config.srformer_encoder_block is None
    assert all(type(m) is host for m in encoder_attention(model))
    assert not hasattr(model.get_encoder(), HOOK_ATTRIBUTE)
    ids, mask = padded_batch(family, LENGTHS)
    with torch.no_grad():
        assert torch.equal(encode(model, ids, mask), encode(reference, ids, mask))
    set_encoder_block(model, 16)  # on, then off again: back to the host modules
    set_encoder_block(model, 0)
    assert all(type(m) is host for m in encoder_attention(model))
    assert not hasattr(model.get_encoder(), HOOK_ATTRIBUTE)
    with torch.no_grad():
        assert torch.equal(encode(model, ids, mask), encode(reference, ids, mask))


def test_inputs_within_the_block_take_hugging_faces_path_bit_for_bit(family):
    reference, model = pair(family, 64)
    ids, mask = padded_batch(family, LENGTHS)
    with torch.no_grad():
        assert torch.equal(encode(model, ids, mask), encode(reference, ids, mask))


@pytest.mark.parametrize("bad", [-1, 2.5, "big", True])
def test_bad_block_sizes_are_refused(family, bad):
    with pytest.raises(SrsumError, match="encoder_block"):
        make_settings(family, encoder_block=bad)


def test_off_spellings():
    assert make_settings("t5", encoder_block=0).encoder_block is None
    assert make_settings("t5", encoder_block=None).encoder_block is None
    assert make_settings("t5", encoder_block=256.0).encoder_block == 256


# --------------------------------------------------------------------------- memory
MEMORY_PROBE = """
import json, sys, torch
sys.path.insert(0, {tests!r})
from conftest import tiny_model
from srsum.engine import convert
torch.set_num_threads(1)
train = {train}

def peak_bytes(run):  # growth of the resident-memory high-water mark while run() runs
    open("/proc/self/clear_refs", "w").write("5")
    before = int(open("/proc/self/statm").read().split()[1]) * 4096
    run()
    status = open("/proc/self/status").read().split("VmHWM:")[1]
    return int(status.split()[0]) * 1024 - before

def run(model, n):
    ids = torch.randint(3, 100, (1, n))
    with torch.set_grad_enabled(train):
        out = model.get_encoder()(input_ids=ids).last_hidden_state
        if train:
            out.square().sum().backward()

peaks = {{}}
for block, lengths in {cases}:
    torch.manual_seed(0)
    model = convert(tiny_model("t5", num_heads=4), "full", encoder_block=block).train(train)
    run(model, 256)  # warm up
    peaks[str(block)] = {{n: peak_bytes(lambda: run(model, n)) for n in lengths}}
print(json.dumps(peaks))
"""


def probe_peaks(train: bool, cases) -> dict:
    """{block: {n: peak memory growth}} of the tiny T5 encoder (4 heads, batch 1) for ``cases`` [(block,
    lengths)], in a fresh process whose allocator returns every freed tensor at once
    (MALLOC_MMAP_THRESHOLD_), so that the resident high-water mark follows the live tensors instead of what
    glibc keeps in its heap."""
    import os
    import subprocess
    from pathlib import Path

    code = MEMORY_PROBE.format(tests=str(Path(__file__).parent), train=train, cases=cases)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    peaks = json.loads(proc.stdout.strip().splitlines()[-1])
    return {block: {int(n): peak for n, peak in by_n.items()} for block, by_n in peaks.items()}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")
@pytest.mark.parametrize("train", [False, True])
def test_peak_memory_grows_linearly_in_n(train):
    """Tiny T5 (4 heads), batch 1, block 64: n x n scores per head are 4 n² floats per layer (64 MB at
    n = 2048, 256 MB at 4096); the blocked encoder's peak grows like n, with and without gradients, while
    Hugging Face's grows like n²."""
    short, long = (1024, 2048) if train else (2048, 4096)  # the backward pass takes longer
    cases = [(64, (short, long))] + ([] if train else [(None, (1024, 2048))])
    peaks = probe_peaks(train, cases)
    blocked = peaks["64"]
    assert blocked[long] < 4 * long ** 2 * 4 / 2, blocked  # under half of one layer's n x n scores
    assert blocked[long] < 2.6 * max(blocked[short], 1 << 20), blocked  # doubling n about doubles the peak
    if not train:
        hugging_face = peaks["None"]
        assert hugging_face[2048] > 3 * hugging_face[1024], hugging_face  # the probe sees n² where it is there
        assert blocked[4096] < hugging_face[2048] / 2, peaks
