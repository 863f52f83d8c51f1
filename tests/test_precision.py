"""The number format a run picks (srsum.precision): CPU detection, faked both ways, and `--dtype auto` end to
end; bfloat16 decoding reads packed bfloat16 copies of the step linears."""

import pytest
import torch
from torch import nn

from srsum import precision, step_linears
from srsum.decoding import generate
from srsum.engine import convert
from srsum.errors import UsageError
from srsum.quantization import step_linears as step_linear_names

from conftest import padded_batch, tiny_model

AMX = precision.CpuFeatures("Intel Xeon (fake)", avx512_bf16=True, amx_bf16=True, vnni=True, amx_int8=True)
AVX512_BF16 = precision.CpuFeatures("AMD EPYC (fake)", avx512_bf16=True, vnni=True)
PLAIN = precision.CpuFeatures("old CPU (fake)")


@pytest.fixture
def fake_cpu(monkeypatch):
    """Makes srsum believe the CPU is the given CpuFeatures."""
    def use(features):
        monkeypatch.setattr(precision, "cpu_features", lambda: features)
    return use


@pytest.mark.parametrize("features,expected", [(AMX, torch.bfloat16), (AVX512_BF16, torch.bfloat16),
                                               (PLAIN, torch.float32)])
def test_auto_is_bfloat16_only_where_the_cpu_has_bfloat16_dot_products(features, expected, fake_cpu):
    assert precision.resolve_dtype("auto", "cpu", features) == expected
    fake_cpu(features)
    assert precision.resolve_dtype(None, "cpu") == expected  # no --dtype: auto
    note = precision.why("auto", expected, "cpu")
    assert note.startswith(str(expected).removeprefix("torch.") + " (auto: this CPU has ")
    assert note.endswith(features.describe() + ")")
    assert ("none of" in note) == (features == PLAIN) and ("AMX-BF16" in note) == features.amx_bf16


def test_explicit_dtypes_and_their_spellings():
    assert precision.resolve_dtype("bf16") == torch.bfloat16 and precision.resolve_dtype("FP32") == torch.float32
    assert precision.resolve_dtype("int8") == torch.float32  # quantised after loading
    assert precision.why("float32", torch.float32) == "float32" and precision.why("int8", torch.float32) == "int8"
    with pytest.raises(UsageError, match="--dtype: unknown dtype 'float8'"):
        precision.resolve_dtype("float8")


def test_detection_asks_torch_first_and_reads_the_kernels_flags_where_torch_cannot_say(monkeypatch):
    precision.cpu_features.cache_clear()
    try:
        monkeypatch.setattr(precision, "_cpuinfo", lambda: ("Some CPU", {"avx512f", "avx512_bf16", "amx_tile",
                                                                          "amx_bf16", "avx512_vnni"}))
        monkeypatch.setattr(precision, "_torch_says", lambda check: None)  # a torch without the checks
        found = precision.cpu_features()
        assert found == precision.CpuFeatures("Some CPU", avx512_bf16=True, amx_bf16=True, vnni=True, amx_int8=False)
        precision.cpu_features.cache_clear()
        monkeypatch.setattr(precision, "_torch_says", lambda check: False)  # torch says no (e.g. the OS forbids AMX)
        assert not precision.cpu_features().fast_bfloat16
    finally:
        precision.cpu_features.cache_clear()


def test_load_summarizer_picks_the_format_from_the_cpu_and_says_so(tiny_t5_dir, fake_cpu):
    from srsum.summarize import load_summarizer

    fake_cpu(AVX512_BF16)
    fast = load_summarizer(str(tiny_t5_dir), device="cpu", dtype="auto")
    assert next(fast.model.parameters()).dtype == torch.bfloat16
    assert fast.number_format == "bfloat16 (auto: this CPU has AVX512-BF16, VNNI)"
    fake_cpu(PLAIN)
    plain = load_summarizer(str(tiny_t5_dir), device="cpu")
    assert next(plain.model.parameters()).dtype == torch.float32 and plain.number_format.startswith("float32 (auto")


def test_the_closing_note_names_the_format_and_articles_per_minute():
    from srsum.summarize import GenerationStats

    stats = GenerationStats(articles=3, source_tokens=300, summary_tokens=30, seconds=6.0,
                            number_format="bfloat16 (auto: this CPU has AMX-BF16)")
    assert stats.describe() == ("summarized 3 article(s) in 6.0 s (30.0 articles/min): 300 source tokens (50/s), "
                                "30 summary tokens (5/s); weights in bfloat16 (auto: this CPU has AMX-BF16)")


def _bf16_model(family):
    return convert(tiny_model(family), "srformer", seg_size=8, schedule_length=12).to(torch.bfloat16).eval()


@pytest.mark.skipif(not step_linears.packing_available(), reason="this torch build cannot pack with oneDNN")
def test_bfloat16_step_linears_read_packed_copies_from_one_row_on_a_bfloat16_cpu(family, fake_cpu):
    fake_cpu(AVX512_BF16)
    model = _bf16_model(family)
    modules = dict(model.named_modules())
    names = step_linear_names(model)
    with step_linears.fast_step_linears(model, rows=1):
        for name in names:
            module = modules[name]
            assert getattr(module.weight, step_linears.COPY_ATTRIBUTE)[0][:2] == ("packed", 1), name
            x = torch.randn(1, 1, module.in_features, dtype=torch.bfloat16)
            torch.testing.assert_close(module(x), nn.functional.linear(x, module.weight, module.bias),
                                       rtol=2e-2, atol=2e-2)
    assert not any("forward" in vars(modules[name]) for name in names)
    fake_cpu(PLAIN)  # oneDNN would emulate bfloat16 there: nn.Linear as it is
    with step_linears.fast_step_linears(model, rows=4):
        assert not any("forward" in vars(modules[name]) for name in names)


def test_bfloat16_decoding_keeps_the_memory_in_float32_and_follows_float32(family):
    """A bfloat16 decode keeps its RAF membrane, R and P in float32 (SPEC section 5), and its first tokens agree
    with float32's on a model whose logits are far apart."""
    from srsum.decoding import SharedStateDecoder
    from srsum.engine.state import DecodeState, decoding_states

    model32 = convert(tiny_model(family), "srformer", seg_size=8, schedule_length=12).eval()
    with torch.no_grad():  # widen the logit gaps so bfloat16 rounding cannot flip the argmax
        model32.get_output_embeddings().weight.mul_(8.0)
    model16 = convert(tiny_model(family), "srformer", seg_size=8, schedule_length=12).eval()
    model16.load_state_dict(model32.state_dict())
    model16 = model16.to(torch.bfloat16)
    ids, mask = padded_batch(family, lengths=(40, 29))
    out32 = generate(model32, ids, mask, max_new_tokens=4, min_new_tokens=4)
    out16 = generate(model16, ids, mask, max_new_tokens=4, min_new_tokens=4)
    assert out16.shape == out32.shape and (out16[:, :2] == out32[:, :2]).all()
    with torch.no_grad():
        decoder = SharedStateDecoder(model16, ids, mask, 1, max_steps=4, step="eager")
        decoder.logits(out16[:, :1])
    states = [state for state in decoding_states(decoder.cache).values() if isinstance(state, DecodeState)]
    assert states and all(state.membrane.dtype == torch.float32 and state.recurrent.dtype == torch.float32
                          for state in states)
    assert decoder.encoder_states.dtype == torch.bfloat16


def test_threads_default_to_the_cores_and_under_a_launcher_to_this_nodes_share(monkeypatch):
    from srsum import threads

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        monkeypatch.delenv("LOCAL_RANK", raising=False)
        assert threads.default_threads() == before  # a lone process: torch's one thread per core
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        monkeypatch.setenv("LOCAL_RANK", "1")
        monkeypatch.setattr(threads, "usable_cores", lambda: 16)
        assert threads.default_threads() == 8  # torchrun set OMP_NUM_THREADS=1; srsum shares the cores out
        monkeypatch.setattr(threads, "usable_cores", lambda: 1)
        assert threads.default_threads() == 1
        assert threads.use_threads(1) == 1 and torch.get_num_threads() == 1
        for bad in (0, -2, 1.5, True):
            with pytest.raises(UsageError, match="--threads must be a positive number"):
                threads.use_threads(bad)
    finally:
        torch.set_num_threads(before)


def test_summarize_and_evaluate_take_threads(tiny_t5_dir, tmp_path):
    from typer.testing import CliRunner

    from srsum.cli import app

    before = torch.get_num_threads()
    article = tmp_path / "article.txt"
    article.write_text("The council met on Tuesday to discuss the budget for schools and roads. " * 4)
    try:
        done = CliRunner().invoke(app, ["summarize", str(article), "--model", str(tiny_t5_dir), "--max-length", "4",
                                        "--threads", "1", "--dtype", "float32"])
        assert done.exit_code == 0, done.output
        assert torch.get_num_threads() == 1
        refused = CliRunner().invoke(app, ["summarize", str(article), "--model", str(tiny_t5_dir), "--threads", "0"])
        assert refused.exit_code == 2 and "--threads must be a positive number" in refused.output
    finally:
        torch.set_num_threads(before)


def test_load_model_takes_a_dtype_name(tiny_t5_dir, fake_cpu):
    from srsum.engine import load_model

    fake_cpu(AMX)
    assert next(load_model(str(tiny_t5_dir), dtype="auto").parameters()).dtype == torch.bfloat16
    fake_cpu(PLAIN)
    assert next(load_model(str(tiny_t5_dir), dtype="auto").parameters()).dtype == torch.float32
    assert next(load_model(str(tiny_t5_dir), dtype="bf16").parameters()).dtype == torch.bfloat16
