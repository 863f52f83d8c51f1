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
    expected = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=14, do_sample=False, **kwargs)
    assert expected.shape[1] > 3  # several compiled steps ran
    assert torch.equal(generate(model, ids, mask, max_new_tokens=14, step="compiled", **kwargs), expected)
    assert len(compile_count) == 1  # one static graph for every step and position


def test_compiled_step_does_not_recompile_for_a_new_input_length(compile_count):
    model = excite(convert(tiny_model("t5"), "srformer", seg_size=8, schedule_length=12))
    for longest in (40, 57, 96):
        ids, mask = padded_batch("t5", lengths=(longest, 29))
        expected = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, min_new_tokens=8,
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
    expected = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, **kwargs)
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
    expected = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=9, min_new_tokens=9, do_sample=False)
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
    expected = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False, **kwargs)
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
    expected = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, **kwargs)
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
    expected = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, **kwargs)
    for _ in range(2):  # the second decoding replays again (a new capture, or the recorded compiled graph)
        assert torch.equal(generate(model, ids, mask, step=step, **kwargs), expected)
    assert not [w for w in recwarn if "decoding eagerly" in str(w.message)]  # no silent fallback
    torch._dynamo.reset()
