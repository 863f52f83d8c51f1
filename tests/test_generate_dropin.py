"""``model.generate`` on srsum's SRformer classes runs srsum's shared-state decoder (issue 30): the same tokens,
scores, beam indices and RNG draws as Hugging Face's own loop on the same model; anything else falls back to
that loop with one warning naming what is not supported; streamers get what generate gives them."""

import warnings

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, GenerationConfig, LogitsProcessorList, MinLengthLogitsProcessor
from transformers.generation.streamers import BaseStreamer
from transformers.modeling_outputs import BaseModelOutput

import srsum.decoding
from srsum.engine import convert
from srsum.generate_dropin import unsupported_options

from conftest import hf_generate, padded_batch, tiny_model
from test_engine import excite

pytestmark = pytest.mark.usefixtures("single_thread")

LENGTHS = (40, 29, 17)


@pytest.fixture(scope="module")
def models(single_thread):
    built = {}
    for family in ("t5", "bart"):
        model = excite(convert(tiny_model(family), "srformer", seg_size=8, schedule_length=12))
        built[family] = (model, *padded_batch(family, lengths=LENGTHS))
    return built


@pytest.fixture
def decoders(monkeypatch):
    """Counts the shared-state decoders built (one per call that took srsum's path)."""
    made = []
    real = srsum.decoding.SharedStateDecoder

    def counted(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(srsum.decoding, "SharedStateDecoder", counted)
    return made


def both(model, *args, seed=5, **kwargs):
    """(Hugging Face's loop, model.generate) from the same global RNG state, with the RNG states after each;
    model.generate must not fall back (generate's own warnings, such as the default max_length, may come)."""
    torch.manual_seed(seed)
    expected = hf_generate(model, **dict(zip(("inputs",), args)), **kwargs)
    expected_rng = torch.get_rng_state()
    torch.manual_seed(seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = model.generate(*args, **kwargs)
    assert not [w for w in caught if "srsum" in str(w.message)], [str(w.message) for w in caught]
    return expected, got, expected_rng, torch.get_rng_state()


def assert_same_output(expected, got):
    assert type(got) is type(expected)
    assert torch.equal(got.sequences, expected.sequences)
    assert len(got.scores) == len(expected.scores) == len(got.logits)
    for ours, theirs in zip(got.scores, expected.scores):
        assert torch.equal(torch.isinf(ours), torch.isinf(theirs))  # the same tokens banned / filtered
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-4)
    for ours, theirs in zip(got.logits, expected.logits):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-4)
    if "beam_indices" in expected:
        assert torch.equal(got.beam_indices, expected.beam_indices)
        torch.testing.assert_close(got.sequences_scores, expected.sequences_scores, rtol=1e-5, atol=1e-5)


CASES = [
    dict(),
    dict(min_new_tokens=9, no_repeat_ngram_size=2, repetition_penalty=1.3),
    dict(forced_bos_token_id=5, forced_eos_token_id=7, min_length=4),
    dict(num_beams=3),
    dict(num_beams=4, length_penalty=2.0, no_repeat_ngram_size=2, min_length=7, num_return_sequences=2,
         early_stopping=True),
    dict(num_beams=2, early_stopping="never", length_penalty=0.5, repetition_penalty=0.7),
    dict(do_sample=True, temperature=1.5, top_k=5, top_p=0.8, num_return_sequences=3),
    dict(do_sample=True, top_k=0, temperature=2.0, repetition_penalty=1.2),
    dict(num_beams=3, do_sample=True, top_p=0.9, num_return_sequences=2),
]


@pytest.mark.parametrize("kwargs", CASES, ids=lambda k: "-".join(f"{a}={b}" for a, b in k.items()) or "greedy")
def test_generate_runs_srsums_decoder_with_generates_tokens_and_scores(models, family, kwargs, decoders):
    model, ids, mask = models[family]
    expected, got, expected_rng, got_rng = both(model, input_ids=ids, attention_mask=mask, max_new_tokens=14,
                                                return_dict_in_generate=True, output_scores=True, output_logits=True,
                                                **kwargs)
    assert len(decoders) == 1  # srsum's decoder ran (Hugging Face's loop builds none)
    assert decoders[0].encoder_states.shape[0] == len(LENGTHS)  # one state row per example, whatever the beams
    assert_same_output(expected, got)
    assert torch.equal(got_rng, expected_rng)  # the same draws from the global RNG, no more, no fewer
    plain = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=14, **kwargs) \
        if not kwargs.get("do_sample") else None
    if plain is not None:
        assert torch.equal(plain, expected.sequences)  # the plain tensor return


@pytest.mark.parametrize("beams", [1, 3])
def test_max_time_ends_the_decoding_where_generate_ends_it(models, beams, decoders):
    """A time already up: the first step is the last (greedy stops, beams finish as they are), on both loops;
    a generous one changes nothing."""
    model, ids, mask = models["t5"]
    options = dict(input_ids=ids, attention_mask=mask, max_new_tokens=14, min_new_tokens=14, num_beams=beams)
    expected, got, _, _ = both(model, max_time=1e-9, **options)
    assert got.shape == expected.shape == (len(LENGTHS), 2) and torch.equal(got, expected)
    _, generous, _, _ = both(model, max_time=600.0, **options)
    assert generous.shape[1] == 15 and torch.equal(generous, model.generate(**options))
    assert len(decoders) == 3  # every call ran srsum's decoder


def test_labels_are_ignored_as_generate_ignores_them(models, decoders):
    """Seq2SeqTrainer's prediction step passes the batch's labels to generate, which never forwards them."""
    model, ids, mask = models["bart"]
    labels = torch.full((len(LENGTHS), 5), 7)
    expected, got, _, _ = both(model, input_ids=ids, attention_mask=mask, labels=labels, max_new_tokens=6, num_beams=2)
    assert torch.equal(got, expected) and len(decoders) == 1


def test_generation_config_and_kwargs_merge_as_in_generate(models, family, decoders):
    model, ids, mask = models[family]
    config = GenerationConfig(num_beams=3, max_length=11, no_repeat_ngram_size=2, length_penalty=1.5,
                              eos_token_id=model.config.eos_token_id, decoder_start_token_id=5)
    expected, got, _, _ = both(model, input_ids=ids, attention_mask=mask, generation_config=config,
                               num_beams=2, min_new_tokens=4)  # the keyword wins over the object's num_beams
    assert torch.equal(got, expected) and (got[:, 0] == 5).all()
    own = model.generation_config  # the model's own generation_config takes part too
    model.generation_config = GenerationConfig(**{**own.to_dict(), "no_repeat_ngram_size": 2, "min_length": 21})
    try:
        expected, got, _, _ = both(model, ids, attention_mask=mask)  # `inputs` positionally; the default 20 tokens
    finally:
        model.generation_config = own
    assert torch.equal(got, expected) and got.shape[1] == 21
    assert len(decoders) == 2


def test_encoder_outputs_unpadded_input_and_every_variant(family, decoders):
    ids, mask = padded_batch(family, lengths=(33, 33))
    for variant in ("full", "segmented", "xl", "global", "no_raf"):
        model = excite(convert(tiny_model(family), variant, seg_size=8, schedule_length=12))
        for kwargs in (dict(input_ids=ids), dict(input_ids=ids, num_beams=3)):  # no attention mask
            expected, got, _, _ = both(model, max_new_tokens=10, **kwargs)
            assert torch.equal(got, expected), (variant, kwargs)
        states = model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        options = dict(attention_mask=mask, max_new_tokens=10, num_beams=2)
        expected = hf_generate(model, encoder_outputs=BaseModelOutput(last_hidden_state=states), **options)
        got = model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=states), **options)  # (generate
        assert torch.equal(got, expected), variant  # expands the object it is given: a fresh one each)
    assert len(decoders) == 15


def test_a_saved_checkpoint_loaded_with_auto_classes_takes_the_fast_path(models, tmp_path, decoders):
    model, ids, mask = models["bart"]
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    expected = hf_generate(model, input_ids=ids, attention_mask=mask, max_new_tokens=10, num_beams=2)
    assert torch.equal(loaded.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, num_beams=2), expected)
    assert len(decoders) == 1


# --------------------------------------------------------------------------- fallback
FALLBACKS = [
    (dict(logits_processor=LogitsProcessorList([MinLengthLogitsProcessor(6, eos_token_id=1)])), "logits_processor"),
    (dict(prefix_allowed_tokens_fn=lambda batch, ids: list(range(3, 60))), "prefix_allowed_tokens_fn"),
    (dict(output_attentions=True, return_dict_in_generate=True), "output_attentions=True"),
    (dict(output_hidden_states=True, return_dict_in_generate=True), "output_hidden_states=True"),
    (dict(do_sample=True, typical_p=0.5), "typical_p=0.5"),
    (dict(bad_words_ids=[[7], [9]]), "bad_words_ids=[[7], [9]]"),
    (dict(use_cache=False), "use_cache=False"),
    (dict(decoder_input_ids=torch.tensor([[0, 5]] * 3)), "decoder_input_ids"),
    (dict(do_sample=True, top_p=0.0), "top_p: must be in (0, 1]"),
]


@pytest.mark.parametrize("kwargs, named", FALLBACKS, ids=[named.split("=")[0].split(":")[0] for _, named in FALLBACKS])
def test_unsupported_requests_fall_back_with_one_warning(models, kwargs, named, decoders):
    model, ids, mask = models["t5"]
    if "decoder_input_ids" in kwargs:
        kwargs = dict(decoder_input_ids=torch.zeros(len(LENGTHS), 1, dtype=torch.long))
    options = dict(input_ids=ids, attention_mask=mask, max_new_tokens=8, **kwargs)
    torch.manual_seed(2)
    expected = hf_generate(model, **options)
    torch.manual_seed(2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = model.generate(**options)
    ours = [w for w in caught if "srsum's shared-state decoder" in str(w.message)]
    assert len(ours) == 1 and named in str(ours[0].message), [str(w.message) for w in caught]
    assert "\n" not in str(ours[0].message)
    sequences = (lambda out: out if isinstance(out, torch.Tensor) else out.sequences)
    assert torch.equal(sequences(got), sequences(expected))
    assert not decoders  # Hugging Face's loop ran


def test_training_mode_falls_back(models, decoders):
    model, ids, mask = models["bart"]
    model.train()
    try:
        with pytest.warns(UserWarning, match=r"training mode \(call model.eval\(\)\)"):
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4)
    finally:
        model.eval()
    assert not decoders


def test_generates_own_errors_come_through(models):
    model, ids, mask = models["t5"]
    with pytest.raises(ValueError, match="num_return_sequences"):  # greedy has one answer
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, num_return_sequences=2)
    with pytest.raises(ValueError, match="max_length"):
        model.generate(input_ids=ids, attention_mask=mask, max_length=1)
    with pytest.raises(ValueError, match="input_ids"):  # generate refuses both too
        model.generate(ids, input_ids=ids, attention_mask=mask, max_new_tokens=4)


def test_the_support_check_lists_everything_unsupported_at_once(models):
    from srsum.generate_dropin import Request

    model, ids, mask = models["t5"]
    request = Request.of(model, (), dict(input_ids=ids, attention_mask=mask, typical_p=0.5, do_sample=True,
                                         output_attentions=True, stopping_criteria=[object()]))
    found = unsupported_options(model, request)
    assert found == ["stopping_criteria", "typical_p=0.5", "output_attentions=True"]


# --------------------------------------------------------------------------- streaming
class Recorder(BaseStreamer):
    def __init__(self):
        self.calls = []

    def put(self, value):
        self.calls.append(("put", value.clone()))

    def end(self):
        self.calls.append(("end", None))


@pytest.mark.parametrize("kwargs", [dict(), dict(do_sample=True, top_k=0, temperature=2.0)], ids=["greedy", "sample"])
def test_a_streamer_gets_what_generate_gives_it(models, family, kwargs, decoders):
    model, ids, mask = models[family]
    ids, mask = ids[2:], mask[2:]
    theirs, ours = Recorder(), Recorder()
    torch.manual_seed(4)
    expected = hf_generate(model, input_ids=ids, attention_mask=mask, max_new_tokens=12, streamer=theirs, **kwargs)
    torch.manual_seed(4)
    got = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, streamer=ours, **kwargs)
    assert torch.equal(got, expected) and len(decoders) == 1
    assert [kind for kind, _ in ours.calls] == [kind for kind, _ in theirs.calls]  # start, each token, end
    assert ours.calls[0][1].shape == (1, 1) and ours.calls[1][1].shape == (1,)
    for (_, a), (_, b) in zip(ours.calls, theirs.calls):
        assert (a is None and b is None) or torch.equal(a, b)


def test_a_streamer_with_beams_is_generates_error(models):
    model, ids, mask = models["t5"]
    with pytest.warns(UserWarning, match="streamer with num_beams > 1"), pytest.raises(ValueError, match="beam"):
        model.generate(input_ids=ids[:1], attention_mask=mask[:1], max_new_tokens=4, num_beams=2, streamer=Recorder())


def test_a_text_iterator_streamer_yields_the_summary_as_generate_writes_it(shared_data):
    """Hugging Face's documented pattern: generate in a thread, the text read from a TextIteratorStreamer."""
    from threading import Thread

    from transformers import AutoTokenizer, TextIteratorStreamer

    from conftest import TOKENIZER_DIRS

    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER_DIRS["t5"]))
    model = excite(convert(tiny_model("t5", vocab_size=len(tokenizer)), "srformer", seg_size=8, schedule_length=12))
    batch = tokenizer(["The council approved the new park on Monday. Work starts in May."], return_tensors="pt")
    options = dict(**batch, max_new_tokens=10, min_new_tokens=10)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    worker = Thread(target=model.generate, kwargs=dict(options, streamer=streamer))
    worker.start()
    text = "".join(streamer)
    worker.join()
    expected = hf_generate(model, **options)
    assert text.strip() == tokenizer.decode(expected[0], skip_special_tokens=True).strip() != ""


# --------------------------------------------------------------------------- srsum summarize --stream
def _cli(*args):
    from typer.testing import CliRunner

    from srsum.cli import app

    return CliRunner().invoke(app, [str(arg) for arg in args])


def test_summarize_stream_prints_the_summary_token_by_token(tiny_t5_dir, tmp_path, monkeypatch):
    from transformers import TextStreamer

    article = tmp_path / "article.txt"
    article.write_text("The council approved the new park on Monday. Work starts in May. Residents welcomed it.")
    common = ["summarize", article, "--model", tiny_t5_dir, "--device", "cpu", "--max-length", 12,
              "--min-length", 12]
    plain = _cli(*common, "--num-beams", 1)
    puts = []
    real_put = TextStreamer.put
    monkeypatch.setattr(TextStreamer, "put", lambda self, value: puts.append(value) or real_put(self, value))
    streamed = _cli(*common, "--stream")  # --num-beams defaults to 1 with --stream
    assert plain.exit_code == streamed.exit_code == 0, (streamed.stdout, streamed.stderr)
    assert streamed.stdout.strip() == plain.stdout.strip() != ""
    assert streamed.stdout.count(plain.stdout.strip()) == 1  # streamed once, not printed again
    assert len(puts) == 1 + 12  # the start token, then each token as it was decoded


@pytest.mark.parametrize("extra, message", [
    (["--num-beams", 3], "--stream needs --num-beams 1"),
    (["--output", "out.jsonl"], "--stream prints plain text as it is written; it cannot go with --output"),
    (["--json"], "cannot go with --output or --json"),
    (["SECOND"], "--stream prints one summary as it is written; got 2 articles"),
])
def test_summarize_stream_refuses_what_it_cannot_stream(tiny_t5_dir, tmp_path, extra, message):
    article = tmp_path / "article.txt"
    article.write_text("The council approved the new park on Monday.")
    extra = [tmp_path / "two.txt" if item == "SECOND" else item for item in extra]
    (tmp_path / "two.txt").write_text("Work starts in May.")
    result = _cli("summarize", article, "--model", tiny_t5_dir, "--device", "cpu", "--stream", *extra)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
