"""srsum's decoder (shared per-example state) against model.generate, and its bad input."""

import pytest
import torch

from srsum.decoding import SharedStateDecoder, generate
from srsum.engine import convert
from srsum.engine.layer import SRformerCrossAttention
from srsum.engine.state import STATE_ATTRIBUTE
from srsum.errors import SrsumError

from conftest import hf_generate, padded_batch, tiny_model
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
    expected = hf_generate(model, input_ids=ids, attention_mask=mask, max_new_tokens=14, do_sample=False, **kwargs)
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
    (dict(typical_p=0.5), "unsupported"),
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


# --------------------------------------------------------------------------- the fixed-shape (compiled) step
@pytest.mark.parametrize("variant", ["srformer", "global", "full"])
@pytest.mark.parametrize("kwargs", [dict(num_beams=1, min_new_tokens=14),
                                    dict(num_beams=3, no_repeat_ngram_size=2, min_new_tokens=6),
                                    dict(num_beams=2, length_penalty=2.0, min_new_tokens=5)],
                         ids=["greedy", "beams3", "beams2-lp2"])
def test_compiled_step_equals_generate(family, variant, kwargs, compile_count):
    """The step traced whole (fullgraph) once, then replayed for every later step, gives generate's tokens."""
    model = excite(convert(tiny_model(family), variant, seg_size=8, schedule_length=12))
    ids, mask = padded_batch(family, lengths=(40, 29, 17))
    expected = hf_generate(model, input_ids=ids, attention_mask=mask, max_new_tokens=14, do_sample=False, **kwargs)
    assert expected.shape[1] > 3  # several compiled steps ran
    assert torch.equal(generate(model, ids, mask, max_new_tokens=14, step="compiled", **kwargs), expected)
    assert len(compile_count) == 1  # one static graph for every step and position


@pytest.mark.parametrize("others", [(29,), ()], ids=["batch2", "batch1"])
def test_compiled_step_does_not_recompile_for_a_new_input_length(compile_count, others):
    """Batch 1 too: there a one-row slice of the encoder output counts as dense and would keep its n-long
    stride through a plain clone (a new graph per n)."""
    model = excite(convert(tiny_model("t5"), "srformer", seg_size=8, schedule_length=12))
    for longest in (40, 57, 96):
        ids, mask = padded_batch("t5", lengths=(longest, *others))
        expected = hf_generate(model, input_ids=ids, attention_mask=mask, max_new_tokens=8, min_new_tokens=8,
                               do_sample=False)
        assert torch.equal(generate(model, ids, mask, max_new_tokens=8, min_new_tokens=8, step="compiled"), expected)
    assert len(compile_count) == 1


def test_compiled_step_with_the_real_compiler():
    """torch.compile's default backend (inductor: generated C++ on CPU, the same graph CUDA graphs replay)."""
    import shutil

    if not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        pytest.skip("inductor needs a C++ compiler on CPU; none on PATH")
    torch._dynamo.reset()
    model = excite(convert(tiny_model("t5"), "srformer", seg_size=8, schedule_length=12))
    ids, mask = padded_batch("t5", lengths=(40, 29, 17))
    kwargs = dict(num_beams=2, max_new_tokens=10, min_new_tokens=10)
    expected = hf_generate(model, input_ids=ids, attention_mask=mask, do_sample=False, **kwargs)
    assert torch.equal(generate(model, ids, mask, step="compiled", **kwargs), expected)
    torch._dynamo.reset()


def test_a_step_that_cannot_compile_falls_back_to_eager(monkeypatch):
    import srsum.decoding

    def failing_backend(graph_module, example_inputs):
        raise RuntimeError("no compiler here")

    torch._dynamo.reset()
    monkeypatch.setattr(srsum.decoding, "compile_options", lambda device: {"fullgraph": True, "backend": failing_backend})
    model = excite(convert(tiny_model("bart"), "srformer", seg_size=8, schedule_length=12))
    ids, mask = padded_batch("bart", lengths=(40, 29))
    expected = hf_generate(model, input_ids=ids, attention_mask=mask, max_new_tokens=9, min_new_tokens=9, do_sample=False)
    with pytest.warns(RuntimeWarning, match="decoding eagerly"):
        got = generate(model, ids, mask, max_new_tokens=9, min_new_tokens=9, step="compiled")
    assert torch.equal(got, expected)
    torch._dynamo.reset()


@pytest.mark.parametrize("variant", ["srformer", "xl", "full"])
def test_state_is_preallocated_and_does_not_grow_with_steps(family, variant):
    """After the first step nothing the decoding holds grows, and every tensor a step reads stays the
    same tensor (updated in place): what a captured CUDA graph needs."""
    model = excite(convert(tiny_model(family), variant, seg_size=8, schedule_length=12))
    ids, mask = padded_batch(family, lengths=(40, 29))
    decoder = SharedStateDecoder(model, ids, mask, rows_per_example=2, max_steps=20, step="eager")
    rows = torch.arange(4).flip(0)  # beams swap places every step
    with torch.no_grad():
        decoder.logits(torch.zeros(4, 1, dtype=torch.long))
        held = decoder.state_bytes()
        read = [t.data_ptr() for _, state in decoder.layers for t in state.step_inputs()]
        cache = [t.data_ptr() for layer in decoder.cache.self_attention_cache.layers for t in (layer.keys, layer.values)]
        for step in range(1, 20):  # every segment of the schedule is entered (G = 12)
            decoder.reorder(rows)
            decoder.logits(torch.full((4, 1), step, dtype=torch.long))
            assert decoder.state_bytes() == held
        assert [t.data_ptr() for _, state in decoder.layers for t in state.step_inputs()] == read
        assert [t.data_ptr() for layer in decoder.cache.self_attention_cache.layers
                for t in (layer.keys, layer.values)] == cache
        with pytest.raises(SrsumError, match="preallocated"):
            decoder.logits(torch.zeros(4, 1, dtype=torch.long))


def test_bad_step_mode():
    model = convert(tiny_model("t5"), "srformer", seg_size=8)
    ids, mask = padded_batch("t5")
    with pytest.raises(SrsumError, match="step: must be one of auto, eager, graph, compiled"):
        generate(model, ids, mask, step="graphs")
    if not torch.cuda.is_available():
        with pytest.raises(SrsumError, match="'graph' captures CUDA graphs and needs a CUDA device"):
            generate(model, ids, mask, step="graph")


@pytest.fixture
def fake_graphs(monkeypatch):
    """Run the graph step's bookkeeping on CPU: 'capturing' keeps the step function, a 'replay' calls it
    on the fixed token buffer. ``corrupt`` makes replays wrong, ``refuse`` makes capturing fail."""
    import srsum.decoding

    log = {"captures": 0, "replays": 0, "corrupt": False, "refuse": False}

    def capture(forward, tokens):
        if log["refuse"]:
            raise RuntimeError("operation not permitted when stream is capturing")
        log["captures"] += 1

        def replay():
            log["replays"] += 1
            logits = forward(tokens)
            return logits + 5.0 if log["corrupt"] else logits

        return replay

    monkeypatch.setattr(srsum.decoding, "capture_step", capture)
    monkeypatch.setattr(srsum.decoding, "resolve_step", lambda step, device: "graph")
    return log


@pytest.mark.parametrize("kwargs", [dict(num_beams=1, min_new_tokens=12), dict(num_beams=3, min_new_tokens=6)],
                         ids=["greedy", "beams3"])
def test_graph_step_replays_from_the_third_step(family, kwargs, fake_graphs):
    """Steps 0 and 1 eager, step 2 captured and checked against an eager rerun (cache rolled back one
    position), every later step replayed from the fixed token buffer: generate's tokens."""
    model = excite(convert(tiny_model(family), "srformer", seg_size=8, schedule_length=12))
    ids, mask = padded_batch(family, lengths=(40, 29, 17))
    expected = hf_generate(model, input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False, **kwargs)
    got = generate(model, ids, mask, max_new_tokens=12, step="graph", **kwargs)
    assert torch.equal(got, expected)
    steps = expected.shape[1] - 1 if kwargs["num_beams"] == 1 else 12
    assert fake_graphs["captures"] == 1 and fake_graphs["replays"] >= steps - 3 > 0


@pytest.mark.parametrize("failure", ["corrupt", "refuse"])
def test_graph_step_that_fails_or_disagrees_falls_back_to_eager(failure, fake_graphs):
    fake_graphs[failure] = True
    model = excite(convert(tiny_model("t5"), "srformer", seg_size=8, schedule_length=12))
    ids, mask = padded_batch("t5", lengths=(40, 29))
    kwargs = dict(num_beams=2, max_new_tokens=10, min_new_tokens=10)
    expected = hf_generate(model, input_ids=ids, attention_mask=mask, do_sample=False, **kwargs)
    message = "disagrees with the eager one" if failure == "corrupt" else "cannot be captured"
    with pytest.warns(RuntimeWarning, match=message):
        got = generate(model, ids, mask, step="graph", **kwargs)
    assert torch.equal(got, expected)
    assert fake_graphs["replays"] <= 1  # the one checked replay at most


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CUDA graphs); CPU runs the same "
                    "compiled graph through inductor in test_compiled_step_with_the_real_compiler")
@pytest.mark.parametrize("step", ["graph", "compiled"])
@pytest.mark.parametrize("num_beams", [1, 3])
def test_cuda_graph_step_equals_generate(family, num_beams, step, recwarn):
    torch._dynamo.reset()
    model = excite(convert(tiny_model(family), "srformer", seg_size=8, schedule_length=12)).cuda()
    ids, mask = (t.cuda() for t in padded_batch(family, lengths=(40, 29, 17)))
    kwargs = dict(num_beams=num_beams, max_new_tokens=12, min_new_tokens=12)
    expected = hf_generate(model, input_ids=ids, attention_mask=mask, do_sample=False, **kwargs)
    for _ in range(2):  # the second decoding replays again (a new capture, or the recorded compiled graph)
        assert torch.equal(generate(model, ids, mask, step=step, **kwargs), expected)
    assert not [w for w in recwarn if "decoding eagerly" in str(w.message)]  # no silent fallback
    torch._dynamo.reset()


# --------------------------------------------------------------------------- the scheduled step (issue 13)
def _states_pair(family, variant, schedule_length, fixed, window=16):
    """One layer's decoding state stepped on the host (``enter``) and one read from its precomputed
    schedule through a device clock, over the same padded encoder output. In float64: the two take P and ν
    by different sums (the Gram matrix, or the projected segments when the schedule visits them all), and
    in float32 their rounding can flip an RAF spike of this excited layer."""
    model = excite(convert(tiny_model(family), variant, seg_size=4, schedule_length=schedule_length)).double()
    layer = next(m for m in model.modules() if isinstance(m, SRformerCrossAttention))
    gen = torch.Generator().manual_seed(3)
    encoder = torch.randn(3, 37, model.config.d_model, generator=gen, dtype=torch.float64)
    key_valid = torch.ones(3, 37, dtype=torch.bool)
    key_valid[1, 21:] = False
    key_valid[2, 9:] = False
    host = layer.start_decoding(encoder, key_valid, rows_per_example=2)
    scheduled = layer.start_decoding(encoder, key_valid, rows_per_example=2)
    clock = torch.zeros((), dtype=torch.long)
    with torch.no_grad():
        scheduled.use_schedule(layer, clock, fixed=fixed, window=window)
    return layer, host, scheduled, clock


@pytest.mark.parametrize("variant", ["srformer", "segmented", "xl", "global", "no_local", "no_norm", "no_raf",
                                     "full_product", "full"])
@pytest.mark.parametrize("schedule_length,fixed,window", [(12, False, 16), (12, False, 3), (5, False, 2),
                                                         (5, True, 4), (12, True, 5)])  # M <= G, M > G; windows
def test_scheduled_state_equals_the_host_stepped_one(family, variant, schedule_length, fixed, window):
    """Reading σ(t), the local context and R (run ahead a window of positions at a time) by a device
    clock gives, at every position (past G too, and whether σ changed or not), what entering each
    position on the host gives."""
    layer, host, scheduled, clock = _states_pair(family, variant, schedule_length, fixed, window)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for t in range(2 * schedule_length + 3):
            query = torch.randn(6, layer.n_heads, layer.head_dim, generator=gen, dtype=torch.float64)
            clock.fill_(t)
            scheduled.prepare(layer, t)
            torch.testing.assert_close(layer._decode_one(scheduled, query), layer._decode_one(host, query),
                                       rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("variant", ["srformer", "no_raf", "full_product", "no_norm"])
def test_preparing_every_layer_at_once_equals_each_layer_alone(family, variant):
    """``prepare_states`` over every layer of a decoding (one host plan; each layer with its own λ, θ, W)
    leaves, at every position, the ring and membrane that preparing each layer on its own leaves."""
    from srsum.engine.state import prepare_states

    model = excite(convert(tiny_model(family), variant, seg_size=4, schedule_length=12)).double()
    layers = [m for m in model.modules() if isinstance(m, SRformerCrossAttention)]
    assert len(layers) >= 2
    with torch.no_grad():
        for i, layer in enumerate(layers):  # distinct λ and θ per layer (the excited W already differ)
            if hasattr(layer, "raf_leak"):
                layer.raf_leak.fill_(0.3 + 0.4 * i)
                layer.raf_threshold.fill_(0.04 + 0.03 * i)
    gen = torch.Generator().manual_seed(3)
    encoder = torch.randn(3, 37, model.config.d_model, generator=gen, dtype=torch.float64)
    key_valid = torch.ones(3, 37, dtype=torch.bool)
    key_valid[1, 21:] = False
    key_valid[2, 9:] = False
    clock = torch.zeros((), dtype=torch.long)
    with torch.no_grad():
        joint, alone = ([(layer, layer.start_decoding(encoder, key_valid, rows_per_example=2)) for layer in layers]
                        for _ in range(2))
        for layer, state in joint + alone:
            state.use_schedule(layer, clock, window=3)
        for t in range(15):
            prepare_states(joint, t)
            for layer, state in alone:
                state.prepare(layer, t)
            for (_, a), (_, b) in zip(joint, alone):
                torch.testing.assert_close(a.ring, b.ring, rtol=1e-12, atol=1e-12)
                torch.testing.assert_close(a.membrane, b.membrane, rtol=1e-12, atol=1e-12)
                assert torch.equal(a.ring_row_of_offset, b.ring_row_of_offset)


def test_scheduled_step_has_no_host_sync(monkeypatch):
    """A scheduled step, and the RAF run ahead before it (``prepare``), never ask the device for a value
    (.item, .tolist, bool of a tensor)."""
    layer, _, scheduled, clock = _states_pair("t5", "srformer", 12, False)

    def forbidden(*args, **kwargs):
        raise AssertionError("host sync in the step")

    for name in ("item", "tolist", "__bool__", "__int__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    with torch.no_grad():
        for t in range(14):
            clock.fill_(t)
            scheduled.prepare(layer, t)
            layer._decode_one(scheduled, torch.randn(6, layer.n_heads, layer.head_dim, dtype=torch.float64))


@pytest.fixture
def compiler_spy(monkeypatch):
    """The step compiled with fullgraph (a graph break cannot pass silently: it falls back to eager with a
    warning); records each graph traced and counts calls of the compiled code. ``use_inductor(True)``
    compiles with inductor (generated C++), otherwise the traced graph runs as is."""
    import srsum.decoding

    spy = {"graphs": 0, "calls": 0, "inductor": False}

    def backend(graph_module, example_inputs):
        spy["graphs"] += 1
        if spy["inductor"]:
            from torch._inductor.compile_fx import compile_fx

            compiled = compile_fx(graph_module, example_inputs)
        else:
            compiled = graph_module.forward

        def run(*args):
            spy["calls"] += 1
            return compiled(*args)

        return run

    torch._dynamo.reset()
    monkeypatch.setattr(srsum.decoding, "compile_options",
                        lambda device: {"fullgraph": True, "dynamic": False, "backend": backend})
    yield spy
    torch._dynamo.reset()


def _long_decode(family, seg_size, num_beams, steps=128, lengths=(1000, 613)):
    """A tiny model over a ~1k-token encoder output (random rows: BART's tiny position table is short),
    decoding ``steps`` tokens with G = steps: σ moves every step (s = 8) or every 8 steps (s = 64)."""
    from transformers.modeling_outputs import BaseModelOutput

    model = excite(convert(tiny_model(family), "srformer", seg_size=seg_size, schedule_length=steps))
    gen = torch.Generator().manual_seed(5)
    encoder = torch.randn(len(lengths), max(lengths), model.config.d_model, generator=gen)
    mask = (torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]).long()
    kwargs = dict(num_beams=num_beams, max_new_tokens=steps, min_new_tokens=steps)
    with torch.no_grad():
        expected = hf_generate(model, encoder_outputs=BaseModelOutput(last_hidden_state=encoder), attention_mask=mask,
                               do_sample=False, **kwargs)
    return model, encoder, mask, kwargs, expected


def _assert_one_graph_for_the_whole_decode(spy, family, seg_size, num_beams, recwarn):
    model, encoder, mask, kwargs, expected = _long_decode(family, seg_size, num_beams)
    got = generate(model, None, mask, encoder_states=encoder, step="compiled", **kwargs)
    assert not [w for w in recwarn if "decoding eagerly" in str(w.message)]  # no graph break, no fallback
    assert torch.equal(got, expected)
    assert spy["graphs"] == 1  # no recompile across all segment changes
    assert spy["calls"] == kwargs["max_new_tokens"] - 1  # every step but the first (eager: allocates the cache)


@pytest.mark.parametrize("seg_size,num_beams", [(8, 1), (64, 4)])
def test_compiled_long_decode_is_one_graph(family, seg_size, num_beams, compiler_spy, recwarn):
    """128 steps over n ~ 1k crossing many segment boundaries: one traced graph, no break, generate's tokens."""
    _assert_one_graph_for_the_whole_decode(compiler_spy, family, seg_size, num_beams, recwarn)


@pytest.mark.parametrize("family,seg_size,num_beams", [
    ("t5", 64, 1),
    pytest.param("t5", 8, 4, marks=pytest.mark.slow),
    pytest.param("bart", 8, 1, marks=pytest.mark.slow),
    pytest.param("bart", 64, 4, marks=pytest.mark.slow),
])
def test_compiled_long_decode_with_inductor(family, seg_size, num_beams, compiler_spy, recwarn):
    """The same through inductor (the generated code CUDA graphs would replay)."""
    import shutil

    if not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        pytest.skip("inductor needs a C++ compiler on CPU; none on PATH")
    compiler_spy["inductor"] = True
    _assert_one_graph_for_the_whole_decode(compiler_spy, family, seg_size, num_beams, recwarn)


def test_scheduled_recurrent_memory_does_not_grow_with_the_schedule(family):
    """R is run ahead a window at a time into a ring of window + 1 matrices per head: a longer schedule
    (more groups) lays out more local contexts but holds no more R."""
    sizes = {}
    for schedule_length in (6, 30):
        layer, _, scheduled, clock = _states_pair(family, "srformer", schedule_length, False, window=4)
        heads, dim = layer.n_heads, layer.head_dim
        assert scheduled.ring.shape == (3, 5, heads, dim, dim)
        sizes[schedule_length] = scheduled.context_table[0].shape[1]  # (B, L, H, k, d)
        with torch.no_grad():  # and it stays that size while decoding crosses windows
            for t in range(schedule_length + 2):
                clock.fill_(t)
                scheduled.prepare(layer, t)
        assert scheduled.ring.shape == (3, 5, heads, dim, dim)
    assert sizes[30] > sizes[6]  # more groups, more local contexts (10 segments: 7 groups vs 10)


def test_raf_steps_equal_raf_step_calls_with_a_carried_membrane_and_inactive_steps():
    """The decoder's RAF loop (fused passes, a membrane carried in, steps masked per example) is the
    maths of calling ``raf_step`` once per active step."""
    from srsum.engine import ops

    gen = torch.Generator().manual_seed(5)
    base = torch.randn(3, 2, 4, 4, generator=gen, dtype=torch.float64)
    parts = torch.randn(3, 2, 5, 4, 4, generator=gen, dtype=torch.float64)
    start = torch.randn(3, 2, 4, 4, generator=gen, dtype=torch.float64)
    leak, threshold = torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.2, dtype=torch.float64)
    active = torch.tensor([[True] * 5, [True, True, False, False, False], [True] * 3 + [False] * 2])

    def raf_steps(base, parts, steps, leak, threshold, membrane=None, active=None):  # raf_run, attention layout
        out = base.new_empty((base.shape[0], steps) + base.shape[1:])
        out, membrane = ops.raf_run(base, parts.movedim(2, 1), leak, threshold, out, membrane, active)
        return out.movedim(1, 2), membrane

    fired, membrane = raf_steps(base, parts, 5, leak, threshold, start.clone(), active)
    for b in range(3):
        u = start[b:b + 1]
        for step in range(int(active[b].sum())):
            u, r = ops.raf_step(u, base[b:b + 1] - parts[b:b + 1, :, step], leak, threshold)
            torch.testing.assert_close(fired[b:b + 1, :, step], r, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(membrane[b:b + 1], u, rtol=1e-12, atol=1e-12)
    no_raf, kept = raf_steps(base, parts, 5, None, None, start)
    torch.testing.assert_close(no_raf, base[:, :, None] - parts)
    assert torch.equal(kept, start)  # ablation III has no membrane to move
    # what a decoder does: R ⊘ ν written straight into a strided ring slice, the membrane not modified
    norm = torch.rand(3, 2, 1, 4, generator=gen, dtype=torch.float64) + 0.5
    ring = torch.zeros(3, 7, 2, 4, 4, dtype=torch.float64)
    before = start.clone()
    _, moved = ops.raf_run(base, parts.movedim(2, 1), leak, threshold, ring[:, 1:6], start, active, norm)
    assert torch.equal(start, before)
    for b in range(3):
        steps = int(active[b].sum())
        torch.testing.assert_close(ring[b, 1:1 + steps], (fired[b, :, :steps] / norm[b][:, None]).movedim(1, 0),
                                   rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(moved, membrane, rtol=1e-12, atol=1e-12)
    assert not ring[:, 0].any() and not ring[:, 6].any()
