"""The copies a CPU decode step reads its weights from (srsum.step_linears): same tokens, right layouts,
their own forwards back afterwards."""

import pytest
import torch
from torch import nn

from srsum import step_linears
from srsum.decoding import generate
from srsum.engine import convert
from srsum.errors import SrsumError
from srsum.quantization import step_linears as step_linear_names

from conftest import hf_generate, padded_batch, tiny_model
from test_engine import excite

needs_packing = pytest.mark.skipif(not step_linears.packing_available(),
                                   reason="this torch build cannot pack linear weights with oneDNN")


def _model(family):
    return excite(convert(tiny_model(family), "srformer", seg_size=8, schedule_length=12))


def _swapped(model) -> dict:
    """name -> the forward function a step linear has of its own right now (None: the class's)."""
    modules = dict(model.named_modules())
    return {name: vars(modules[name]).get("forward") for name in step_linear_names(model)}


@pytest.mark.parametrize("batch,beams", [(1, 1), (1, 2), (2, 1), (1, 4), (3, 3)])
def test_decoding_with_the_copies_equals_generate(family, batch, beams, monkeypatch):
    model = _model(family)
    ids, mask = padded_batch(family, lengths=(40, 29, 17)[:batch])
    expected = hf_generate(model, input_ids=ids, attention_mask=mask, max_new_tokens=14, do_sample=False,
                           num_beams=beams)
    seen = []
    real = step_linears.step_plan
    monkeypatch.setattr(step_linears, "step_plan", lambda *a: seen.append(a[1:]) or real(*a))
    assert torch.equal(generate(model, ids, mask, max_new_tokens=14, num_beams=beams), expected)
    assert seen == [(batch * beams, step_linears.packing_available())]  # rows = batch x beams, eager: packed
    assert not any(_swapped(model).values())  # every linear has the class's forward back


@needs_packing
@pytest.mark.parametrize("family", ["t5", "bart"])
def test_the_step_linears_read_packed_copies_from_two_rows_and_the_head_a_column_copy_below(family):
    model = _model(family)
    head = model.get_output_embeddings()
    names = step_linear_names(model)
    modules = dict(model.named_modules())
    for rows in (2, 3):
        with step_linears.fast_step_linears(model, rows=rows):
            swapped = _swapped(model)
            assert all(swapped.values()) and len(swapped) == len(names)
            for name in names:
                module = modules[name]
                how, made_for = getattr(module.weight, step_linears.COPY_ATTRIBUTE)[0][:2]
                by_columns = False  # from 2 rows on: packed, the head too
                assert how == ("by_columns" if by_columns else "packed") and made_for == (None if by_columns else rows)
                x = torch.randn(rows, 1, module.in_features)
                torch.testing.assert_close(module(x), nn.functional.linear(x, module.weight, module.bias),
                                           rtol=1e-5, atol=1e-5)
        assert not any(_swapped(model).values())
    head_only = [n for n in names if modules[n] is head]
    for rows, packing, expected in ((1, True, head_only), (2, False, head_only), (4, False, [])):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(step_linears, "packing_available", lambda: packing)
            with step_linears.fast_step_linears(model, rows=rows):
                swapped = _swapped(model)
                assert [name for name in names if swapped[name]] == expected
                if expected:
                    assert getattr(head.weight, step_linears.COPY_ATTRIBUTE)[0][:2] == ("by_columns", None)


def test_a_copy_follows_the_weight_and_cross_keys_values_keep_nn_linear(family):
    model = _model(family)
    head = model.get_output_embeddings()
    ids, mask = padded_batch(family, lengths=(40,))
    generate(model, ids, mask, max_new_tokens=5)
    first = getattr(head.weight, step_linears.COPY_ATTRIBUTE)[1]
    with torch.no_grad():
        head.weight.mul_(-1.5)  # as an optimizer step would: same tensor, new values
    expected = hf_generate(model, input_ids=ids, attention_mask=mask, max_new_tokens=9, do_sample=False)
    assert torch.equal(generate(model, ids, mask, max_new_tokens=9), expected)
    assert torch.equal(getattr(head.weight, step_linears.COPY_ATTRIBUTE)[1], head.weight.t())
    assert not torch.equal(getattr(head.weight, step_linears.COPY_ATTRIBUTE)[1], first)
    names = set(step_linear_names(model))
    for name, module in model.named_modules():  # whole segments go through the keys/values: left as they are
        if name.endswith(("EncDecAttention.k", "EncDecAttention.v", "encoder_attn.k_proj", "encoder_attn.v_proj")):
            assert name not in names and not hasattr(module.weight, step_linears.COPY_ATTRIBUTE)


def test_no_copies_without_onednn_or_off_float32(monkeypatch):
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    model = _model("bart")
    with step_linears.fast_step_linears(model, rows=4):  # 4 rows: only packed copies would apply
        assert not any(_swapped(model).values())
    double = _model("t5").double()
    with step_linears.fast_step_linears(double, rows=1):
        assert not any(_swapped(double).values())


def test_the_linears_get_their_forwards_back_when_decoding_fails(monkeypatch):
    from srsum import decoding

    model = _model("t5")
    ids, mask = padded_batch("t5", lengths=(40, 29))  # 2 rows: packed copies and the head's (in, out) one

    def fail(*args, **kwargs):
        swapped = _swapped(model)
        assert all(swapped.values()) if step_linears.packing_available() else any(swapped.values())
        raise SrsumError("stop")

    monkeypatch.setattr(decoding, "greedy_search", fail)
    with pytest.raises(SrsumError, match="stop"):
        generate(model, ids, mask, max_new_tokens=5)
    assert not any(_swapped(model).values())


@needs_packing
def test_a_compiled_step_reads_the_packed_copies_through_the_operator(monkeypatch):
    """A compiled step at 2+ rows calls ``srsum::packed_linear`` with the live weights: generate's tokens,
    each weight packed once for both decodings, and a changed weight is packed again (nothing baked in)."""
    import srsum.decoding

    def counting_backend(graph_module, example_inputs):
        targets = [str(node.target) for node in graph_module.graph.nodes if node.op == "call_function"]
        operators.append(sum("srsum.packed_linear" in target for target in targets))
        return graph_module.forward

    operators, packs = [], []
    real_pack = step_linears.pack
    monkeypatch.setattr(step_linears, "pack", lambda weight, rows: packs.append(rows) or real_pack(weight, rows))
    monkeypatch.setattr(srsum.decoding, "compile_options",
                        lambda device: {"fullgraph": True, "dynamic": False, "backend": counting_backend})
    torch._dynamo.reset()
    model = _model("t5")
    names = step_linear_names(model)
    ids, mask = padded_batch("t5", lengths=(40, 29))  # 2 rows
    kwargs = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False)
    for _ in range(2):
        expected = hf_generate(model, input_ids=ids, attention_mask=mask, **kwargs)
        assert torch.equal(generate(model, ids, mask, step="compiled", **kwargs), expected)
    assert operators == [len(names)]  # one graph, every step linear through the operator
    assert len(packs) == len(names)  # packed once, at the first decoding
    head = model.get_output_embeddings()
    with torch.no_grad():
        head.weight.mul_(-1.5)
    expected = hf_generate(model, input_ids=ids, attention_mask=mask, **kwargs)
    assert torch.equal(generate(model, ids, mask, step="compiled", **kwargs), expected)
    assert len(packs) == len(names) + 1  # the head again
    torch._dynamo.reset()



def test_mixed_precision_steps_take_the_plain_linear():
    """Validation under `srsum train --bf16` decodes inside CPU autocast: the float32 copies must not meet bf16
    activations (oneDNN refused them: "could not create a primitive descriptor")."""
    from srsum.step_linears import mixed_precision

    weight = torch.zeros(3, 3)
    assert not mixed_precision(torch.zeros(2, 3), weight) and mixed_precision(torch.zeros(2, 3, dtype=torch.bfloat16), weight)
    model = convert(tiny_model("t5"), seg_size=8, schedule_length=16)
    ids, mask = padded_batch("t5", lengths=(40, 29))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert mixed_precision(torch.zeros(2, 3), weight)
        mixed = generate(model, ids, mask, max_new_tokens=5, num_beams=2)
    plain = generate(model, ids, mask, max_new_tokens=5, num_beams=2)
    assert mixed.shape == plain.shape


@needs_packing
def test_a_copy_that_a_decoding_does_not_read_is_freed():
    """Packed copies made for 4 rows are dropped by a 1-row decoding that reads none of them (the head's is
    replaced by its column copy), so memory holds one layout per weight at most, for the decoding at hand."""
    model = _model("t5")
    modules = dict(model.named_modules())
    names = step_linear_names(model)
    head = model.get_output_embeddings()
    with step_linears.fast_step_linears(model, rows=4):
        pass
    assert all(hasattr(modules[name].weight, step_linears.COPY_ATTRIBUTE) for name in names)
    with step_linears.fast_step_linears(model, rows=1):
        pass
    kept = [name for name in names if hasattr(modules[name].weight, step_linears.COPY_ATTRIBUTE)]
    assert [modules[name] for name in kept] == [head]
    assert getattr(head.weight, step_linears.COPY_ATTRIBUTE)[0][0] == "by_columns"
