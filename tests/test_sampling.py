"""Sampling in srsum's decoder (issue 13): temperature / top-k / top-p, beam sampling with the shared
per-example state, seeded generators that leave the global RNG alone, and the CLI's sampling options."""

import json

import pytest
import torch
from typer.testing import CliRunner

import srsum.decoding
from srsum.cli import app
from srsum.decoding import GenerationSettings, SharedStateDecoder, generate, warp_scores
from srsum.engine import convert
from srsum.engine.state import STATE_ATTRIBUTE, held_tensors
from srsum.errors import UsageError
from srsum.summarize import SummarizeSettings

from conftest import CNN_SAMPLE, hf_generate, padded_batch, tiny_model
from test_engine import excite

pytestmark = pytest.mark.usefixtures("single_thread")

LENGTHS = (40, 29, 17)


def srformer(family):
    return excite(convert(tiny_model(family), "srformer", seg_size=8, schedule_length=12))


@pytest.fixture(scope="module")
def models(single_thread):
    return {family: (srformer(family), *padded_batch(family, lengths=LENGTHS)) for family in ("t5", "bart")}


# --------------------------------------------------------------------------- the draws
@pytest.mark.parametrize("kwargs", [
    dict(num_beams=1, temperature=1.5),
    dict(num_beams=1, top_k=5, top_p=0.8, temperature=0.7, no_repeat_ngram_size=2),
    dict(num_beams=3, temperature=1.5),
    dict(num_beams=2, top_k=4, top_p=0.9, no_repeat_ngram_size=2, min_new_tokens=4),
], ids=["sample-t1.5", "sample-k5-p0.8", "beam-sample-3", "beam-sample-2-k4-p0.9"])
def test_sampling_draws_what_generate_draws_from_the_same_seed(models, family, kwargs):
    """generate(do_sample=True) after torch.manual_seed(s) and srsum's decoder with seed=s draw the same tokens
    (the same warpers in the same order, one draw per step of the same shape), and srsum's leaves the global
    RNG where it was."""
    model, ids, mask = models[family]
    torch.manual_seed(11)
    expected = hf_generate(model, input_ids=ids, attention_mask=mask, max_new_tokens=14, do_sample=True, **kwargs)
    before = torch.get_rng_state()
    got = generate(model, ids, mask, max_new_tokens=14, do_sample=True, seed=11, **kwargs)
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG was neither read nor moved
    assert torch.equal(got, expected)
    greedy = generate(model, ids, mask, max_new_tokens=14, num_beams=kwargs["num_beams"])
    assert not torch.equal(got, greedy)  # the draws mattered


def test_top_k_1_is_greedy(models, family):
    model, ids, mask = models[family]
    greedy = generate(model, ids, mask, max_new_tokens=14, no_repeat_ngram_size=2, min_new_tokens=5)
    for seed in (0, 1, 2):
        sampled = generate(model, ids, mask, max_new_tokens=14, no_repeat_ngram_size=2, min_new_tokens=5,
                           do_sample=True, top_k=1, temperature=5.0, seed=seed)
        assert torch.equal(sampled, greedy)


def test_a_tiny_top_p_is_greedy(models, family):
    model, ids, mask = models[family]
    greedy = generate(model, ids, mask, max_new_tokens=14)
    for seed in (0, 1, 2):
        sampled = generate(model, ids, mask, max_new_tokens=14, do_sample=True, top_k=0, top_p=1e-6,
                           temperature=5.0, seed=seed)
        assert torch.equal(sampled, greedy)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_a_seed_repeats_and_another_seed_differs(models, family, num_beams):
    model, ids, mask = models[family]
    options = dict(max_new_tokens=14, num_beams=num_beams, do_sample=True, temperature=3.0, top_k=0)
    torch.manual_seed(1)
    first = generate(model, ids, mask, seed=5, **options)
    torch.manual_seed(2)  # the global RNG plays no part
    assert torch.equal(generate(model, ids, mask, seed=5, **options), first)
    assert not torch.equal(generate(model, ids, mask, seed=6, **options), first)
    unseeded = {tuple(generate(model, ids, mask, **options).flatten().tolist()) for _ in range(3)}
    assert len(unseeded) > 1  # no seed: a random one each call


def test_a_callers_generator_continues_one_stream(models):
    model, ids, mask = models["t5"]
    options = dict(max_new_tokens=10, do_sample=True, temperature=3.0)
    generator = torch.Generator().manual_seed(9)
    first, second = (generate(model, ids, mask, generator=generator, **options) for _ in range(2))
    assert torch.equal(first, generate(model, ids, mask, seed=9, **options))  # seed 9 is the stream's start
    assert not torch.equal(first, second)  # the second call drew on from where the first stopped


class _Recorded(SharedStateDecoder):
    made: list = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _Recorded.made.append(self)


def _srformer_state_bytes(decoder) -> int:
    """Bytes of the SRformer states alone (with the encoder rows they read), each storage once."""
    tensors = held_tensors(getattr(decoder.cache, STATE_ATTRIBUTE))
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())


def test_beam_sampling_keeps_one_state_per_example(models, family, monkeypatch):
    model, ids, mask = models[family]
    monkeypatch.setattr(srsum.decoding, "SharedStateDecoder", _Recorded)
    _Recorded.made.clear()
    options = dict(max_new_tokens=14, temperature=2.0, top_k=0)
    generate(model, ids, mask, max_new_tokens=14)  # greedy: only its decoder (recorded) is compared
    beams = generate(model, ids, mask, num_beams=4, max_new_tokens=14)
    sampled = generate(model, ids, mask, num_beams=4, do_sample=True, seed=3, **options)
    again = generate(model, ids, mask, num_beams=4, do_sample=True, seed=3, **options)
    assert torch.equal(sampled, again) and not torch.equal(sampled, beams)
    assert sampled.shape[0] == len(LENGTHS)
    greedy_decoder, beam_decoder, sampling_decoder, _ = _Recorded.made
    assert sampling_decoder.position > 3  # it decoded several steps
    for _, state in sampling_decoder.layers:  # one state row per example, not per beam
        assert state.membrane.shape[0] == len(LENGTHS)
    # the SRformer state is greedy's, whatever the beams; all that is held is what beam search holds
    assert _srformer_state_bytes(sampling_decoder) == _srformer_state_bytes(greedy_decoder)
    assert sampling_decoder.state_bytes() == beam_decoder.state_bytes()


def test_models_that_are_not_srformer_sample_with_generate_seeded(family):
    model = tiny_model(family)
    ids, mask = padded_batch(family, lengths=(20, 13))
    options = dict(max_new_tokens=10, num_beams=2, do_sample=True, temperature=2.0)
    torch.manual_seed(4)
    expected = hf_generate(model, input_ids=ids, attention_mask=mask, **options)
    before = torch.get_rng_state()
    assert torch.equal(generate(model, ids, mask, seed=4, **options), expected)
    assert torch.equal(torch.get_rng_state(), before)


def test_warpers_in_generates_order():
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.1, 0.06, 0.04]]))
    settings = GenerationSettings(do_sample=True, temperature=1.0, top_k=0, top_p=0.75)
    kept = torch.isfinite(warp_scores(scores.clone(), settings))
    assert kept.tolist() == [[True, True, False, False, False]]  # 0.5 + 0.3 reach 0.75; 0.1 is not needed
    settings = GenerationSettings(do_sample=True, temperature=1.0, top_k=3, top_p=1.0)
    assert torch.isfinite(warp_scores(scores.clone(), settings)).sum() == 3
    # the temperature comes first: flattened to near-uniform, top_p 0.75 then needs four tokens
    settings = GenerationSettings(do_sample=True, temperature=100.0, top_k=0, top_p=0.75)
    assert torch.isfinite(warp_scores(scores.clone(), settings)).sum() == 4
    settings = GenerationSettings(do_sample=True, top_k=1, top_p=0.01)
    assert torch.isfinite(warp_scores(scores.clone(), settings, min_keep=2)).sum() == 2  # beams keep two


# --------------------------------------------------------------------------- bad values
@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=0.0), "temperature: must be a number > 0, got 0.0"),
    (dict(temperature=-1.0), "temperature: must be a number > 0, got -1.0"),
    (dict(top_k=-1), "top_k: must be an integer >= 0 (0: off), got -1"),
    (dict(top_p=0.0), "top_p: must be in (0, 1] (1: off), got 0.0"),
    (dict(top_p=1.5), "top_p: must be in (0, 1] (1: off), got 1.5"),
    (dict(seed=-3), "seed: must be an integer from 0 to 2**64 - 1, got -3"),
    (dict(do_sample="yes"), "do_sample: must be True or False, got 'yes'"),
])
def test_bad_sampling_values_in_generate(models, kwargs, message):
    model, ids, mask = models["t5"]
    with pytest.raises(UsageError) as raised:
        generate(model, ids, mask, do_sample=kwargs.pop("do_sample", True), **kwargs)
    assert str(raised.value) == message  # one line, naming the field and what is allowed


def test_summarize_settings_take_the_models_sampling_defaults():
    from types import SimpleNamespace

    params = {"summarization": {"num_beams": 2, "do_sample": True, "top_p": 0.9, "temperature": 0.7}}
    model = SimpleNamespace(config=SimpleNamespace(task_specific_params=params))
    resolved = SummarizeSettings(seed=8).validate().for_model(model)
    assert (resolved.do_sample, resolved.top_p, resolved.temperature, resolved.top_k, resolved.seed) == \
        (True, 0.9, 0.7, 50, 8)
    decoder = resolved.decoder_settings()
    assert (decoder.do_sample, decoder.top_p, decoder.temperature, decoder.top_k, decoder.seed) == \
        (True, 0.9, 0.7, 50, 8)
    assert SummarizeSettings(temperature=1.2).for_model(model).temperature == 1.2  # the user's value wins
    plain = SimpleNamespace(config=SimpleNamespace())
    off = SummarizeSettings().for_model(plain)
    assert off.do_sample is False and off.temperature is None and off.seed is None
    assert off.for_model(plain) == off and off.with_seed() == off  # resolving twice changes nothing
    drawn = SummarizeSettings(do_sample=True).for_model(plain).with_seed()
    assert isinstance(drawn.seed, int) and drawn.with_seed() == drawn  # a seed drawn once, then kept
    with pytest.raises(UsageError, match="--temperature, --seed only apply when sampling: add --do-sample"):
        SummarizeSettings(temperature=0.5, seed=1).for_model(plain)
    with pytest.raises(UsageError, match="--top-k only applies when sampling"):
        SummarizeSettings(do_sample=False, top_k=5).validate()


# --------------------------------------------------------------------------- the command line
runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(arg) for arg in args])


def one_error_line(result, code=2) -> str:
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr + result.stdout, result.stderr
    return errors[0]


@pytest.mark.parametrize("command", ["summarize", "evaluate"])
@pytest.mark.parametrize("option, message", [
    (["--temperature", "0"], "--temperature: must be a number > 0, got 0.0"),
    (["--top-k", "-2"], "--top-k: must be an integer >= 0 (0: off), got -2"),
    (["--top-p", "0"], "--top-p: must be in (0, 1] (1: off), got 0.0"),
    (["--top-p", "1.01"], "--top-p: must be in (0, 1] (1: off), got 1.01"),
    (["--seed", "-1"], "--seed: must be an integer from 0 to 2**64 - 1, got -1"),
    (["--no-sample", "--top-p", "0.9"], "--top-p only applies when sampling: add --do-sample"),
])
def test_bad_sampling_options_are_one_line_with_exit_code_2(tmp_path, command, option, message):
    article = tmp_path / "article.txt"
    article.write_text("The council approved the new park on Monday.")
    where = [article] if command == "summarize" else ["--dataset", tmp_path / "missing.jsonl"]
    line = one_error_line(run(command, *where, "--model", tmp_path / "no-model", "--do-sample", *option))
    assert message in line, line


def test_summarize_samples_reproducibly_from_the_command_line(tiny_t5_dir, tmp_path):
    article = tmp_path / "article.txt"
    article.write_text("The council approved the new park on Monday. Work starts in May. Residents welcomed it.")
    common = ["summarize", article, "--model", tiny_t5_dir, "--device", "cpu", "--max-length", 12, "--num-beams", 1,
              "--do-sample", "--temperature", 3.0, "--top-k", 0]
    first, again, other = run(*common, "--seed", 1), run(*common, "--seed", 1), run(*common, "--seed", 2)
    for result in (first, again, other):
        assert result.exit_code == 0, (result.stdout, result.stderr)
    assert first.stdout == again.stdout and first.stdout.strip()
    assert other.stdout != first.stdout
    assert "sampling with seed 1" in first.stderr
    greedy = run("summarize", article, "--model", tiny_t5_dir, "--device", "cpu", "--max-length", 12,
                 "--num-beams", 1, "--do-sample", "--top-k", 1, "--seed", 3)
    plain = run("summarize", article, "--model", tiny_t5_dir, "--device", "cpu", "--max-length", 12, "--num-beams", 1)
    assert greedy.stdout == plain.stdout
    line = one_error_line(run("summarize", article, "--model", tiny_t5_dir, "--device", "cpu", "--temperature", 2))
    assert "--temperature only applies when sampling: add --do-sample" in line  # the model does not sample


def test_evaluate_records_the_sampling_values_used(tiny_t5_dir, tmp_path, shared_data):
    out = tmp_path / "eval"
    result = run("evaluate", "--dataset", CNN_SAMPLE, "--limit", 2, "--model", tiny_t5_dir,
                 "--device", "cpu", "--max-length", 8, "--num-beams", 2, "--do-sample", "--top-p", 0.9,
                 "--output-dir", out, "--quiet")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    generation = json.loads((out / "metrics.json").read_text())["generation"]
    assert generation["do_sample"] is True and generation["num_beams"] == 2
    assert (generation["top_p"], generation["top_k"], generation["temperature"]) == (0.9, 50, 1.0)
    assert isinstance(generation["seed"], int)  # the random seed drawn for the run, recorded
    predictions = (out / "predictions.jsonl").read_text()
    again = tmp_path / "again"
    result = run("evaluate", "--dataset", CNN_SAMPLE, "--limit", 2, "--model", tiny_t5_dir,
                 "--device", "cpu", "--max-length", 8, "--num-beams", 2, "--do-sample", "--top-p", 0.9,
                 "--seed", generation["seed"], "--output-dir", again, "--quiet")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert json.loads((again / "metrics.json").read_text())["generation"]["seed"] == generation["seed"]
    assert (again / "predictions.jsonl").read_text() == predictions  # the recorded seed repeats the run
