"""Library functions behind ``srsum summarize`` and ``srsum evaluate`` (srsum.summarize), offline."""

import json

import numpy as np
import pytest
from conftest import CNN_SAMPLE, interrupt_generate
from rouge_score import rouge_scorer, scoring

from srsum.data import Example, load_examples
from srsum.errors import SrsumError
from srsum.metrics import split_sentences
from srsum.evaluation import evaluate, parse_baseline
from srsum.reporting import Reporter
from srsum import precision
from srsum.summarize import (SummarizeSettings, load_summarizer, summarize_examples, summarize_texts,
                             write_jsonl)

pytestmark = pytest.mark.usefixtures("single_thread")


class Recorder(Reporter):
    def __init__(self):
        self.warnings, self.notes = [], []

    def warn(self, message):
        self.warnings.append(message)

    def info(self, message):
        self.notes.append(message)


def rouge_like_the_hf_example(predictions, references):
    """run_summarization.py: postprocess_text (one sentence per line), then evaluate's rouge with stemming."""
    predictions = ["\n".join(split_sentences(p.strip())) for p in predictions]
    references = ["\n".join(split_sentences(r.strip())) for r in references]
    types = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    scorer = rouge_scorer.RougeScorer(types, use_stemmer=True)
    aggregator = scoring.BootstrapAggregator()
    for reference, prediction in zip(references, predictions):
        aggregator.add_scores(scorer.score(reference, prediction))
    np.random.seed(42)  # the example's set_seed(training_args.seed), default 42
    result = aggregator.aggregate()
    return {key: result[key].mid.fmeasure * 100 for key in types}


@pytest.fixture
def cnn_sample(shared_data):
    return str(CNN_SAMPLE)


def test_lead3_scores_equal_rouge_score_called_the_hf_way(cnn_sample, tmp_path):
    out = tmp_path / "eval"
    metrics = evaluate(cnn_sample, baseline="lead-3", limit=40, output_dir=out)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "predictions.jsonl"]  # no temp files left
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    examples = load_examples(cnn_sample, split="test", limit=40)
    assert [row["id"] for row in rows] == [e.id for e in examples]
    assert [row["reference"] for row in rows] == [e.summary for e in examples]
    expected = rouge_like_the_hf_example([row["prediction"] for row in rows], [e.summary for e in examples])
    assert metrics["rouge"] == expected
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["rouge"] == expected
    assert saved["baseline"] == "lead-3" and saved["model"] is None and saved["n_examples"] == 40
    assert saved["dataset"] == cnn_sample and saved["split"] == "test" and saved["limit"] == 40
    assert 30 < expected["rouge1"] < 50  # lead-3 on CNN/DailyMail is about 40 R1


def test_evaluate_with_a_checkpoint_records_every_setting(trained_t5, cnn_sample, tmp_path):
    settings = SummarizeSettings(num_beams=2, max_length=8, min_length=2, length_penalty=1.5,
                                  no_repeat_ngram_size=2, batch_size=2)
    best = trained_t5.run_dir / "best"
    metrics = evaluate(cnn_sample, model=str(best), limit=3, generation=settings, output_dir=tmp_path / "e",
                       device="cpu")
    generation = metrics["generation"]
    for key, value in settings.to_dict().items():
        if key != "max_source_length" and value is not None:  # given; the unset sampling fields: below
            assert generation[key] == value
    assert generation["do_sample"] is False  # not sampling: the sampling values do not apply
    assert [generation[key] for key in ("temperature", "top_k", "top_p", "seed")] == [None] * 4
    assert generation["max_source_length"] == 64  # what the checkpoint was trained with
    auto = precision.resolve_dtype("auto", "cpu")  # no dtype given: auto, bfloat16 on a CPU that has it
    assert generation["device"] == "cpu" and generation["dtype"] == str(auto).removeprefix("torch.")
    assert generation["number_format"] == precision.why("auto", auto, "cpu")
    assert metrics["articles_per_minute"] == pytest.approx(3 * 60 / metrics["seconds"], rel=0.02)
    assert metrics["model"] == str(best) and metrics["model_type"] == "srformer_t5"
    assert metrics["srformer"]["srformer_attention"] == "srformer" and metrics["srformer"]["srformer_seg_size"] == 16
    assert metrics["n_examples"] == 3 and set(metrics["rouge"]) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["generation"] == generation


def test_summarize_warns_about_truncation_naming_both_lengths(trained_t5):
    reporter = Recorder()
    summarizer = load_summarizer(str(trained_t5.run_dir / "best"), device="cpu")
    long_text = " ".join(f"Sentence number {i} is here." for i in range(40))
    examples = [Example("long", long_text), Example("short", "A short article.")]
    summaries = summarize_examples(summarizer, examples, SummarizeSettings(num_beams=1, max_length=6), reporter)
    assert len(summaries) == 2 and all(isinstance(s, str) for s in summaries)
    assert len(reporter.warnings) == 1
    assert "'long'" in reporter.warnings[0] and "max source length 64" in reporter.warnings[0]
    length = len(summarizer.tokenizer("summarize: " + long_text)["input_ids"])
    assert f"is {length} tokens long" in reporter.warnings[0] and "truncated to 64 tokens" in reporter.warnings[0]


def test_compiled_step_summarizes_like_the_eager_one(trained_t5, compile_count):
    texts = [" ".join(f"Sentence number {i} is here." for i in range(12)), "A short article. It ends."]
    summaries = {step: summarize_texts(texts, model=str(trained_t5.checkpoint),
                                       settings=SummarizeSettings(num_beams=2, max_length=8, min_length=8, step=step))
                 for step in ("eager", "compiled")}
    assert summaries["compiled"] == summaries["eager"] and all(summaries["eager"])
    assert len(compile_count) == 1


def test_summarize_texts_with_a_checkpoint(trained_t5):
    summaries = summarize_texts(["One article. It has two sentences.", "Another one."],
                                model=str(trained_t5.checkpoint), settings=SummarizeSettings(num_beams=2, max_length=5))
    assert len(summaries) == 2


def test_no_model_anywhere_says_how_to_get_one(tmp_path):
    with pytest.raises(SrsumError) as caught:
        load_summarizer(None, device="cpu", models_root=tmp_path / "models")
    message = str(caught.value)
    assert "srsum train --model t5-small --dataset cnn_dailymail" in message and "--model t5-small" in message


def test_newest_checkpoint_is_used_without_model(trained_t5):
    reporter = Recorder()
    summarizer = load_summarizer(None, device="cpu", models_root=trained_t5.run_dir.parent, reporter=reporter)
    assert summarizer.source == str(trained_t5.run_dir / "best")
    assert "newest checkpoint" in reporter.notes[0]


def test_paths_that_are_not_models(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SrsumError, match="neither an srsum checkpoint nor a T5/BART model"):
        load_summarizer(str(tmp_path / "empty"), device="cpu")
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(SrsumError, match="'gpt2' is not supported"):
        load_summarizer(str(tmp_path / "gpt"), device="cpu")
    with pytest.raises(SrsumError, match="not found"):
        load_summarizer(str(tmp_path / "missing" / "model"), device="cpu")


@pytest.mark.parametrize("field, value, message", [
    ("num_beams", 0, "--num-beams must be at least 1"),
    ("max_length", 0, "--max-length must be at least 1"),
    ("min_length", 200, "--min-length 200 is larger than --max-length 128"),
    ("batch_size", 0, "--batch-size must be a positive number of articles or auto"),
    ("no_repeat_ngram_size", -1, "--no-repeat-ngram-size must be at least 0"),
    ("step", "graphs", "--step must be one of auto, eager, graph, compiled"),
])
def test_generation_settings_are_checked(field, value, message):
    from types import SimpleNamespace

    from srsum.errors import UsageError

    with pytest.raises(UsageError, match=message):  # at once, or once the model's defaults fill the rest
        SummarizeSettings(**{field: value}).validate().for_model(SimpleNamespace(config=SimpleNamespace()))


def test_baseline_names():
    assert parse_baseline("lead-3") == 3 and parse_baseline("LEAD2") == 2
    with pytest.raises(SrsumError, match="unknown baseline 'oracle'"):
        parse_baseline("oracle")


def test_evaluate_bad_input_writes_nothing(cnn_sample, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(SrsumError, match="either --model or --baseline"):
        evaluate(cnn_sample, model="x", baseline="lead-3", output_dir=out)
    with pytest.raises(SrsumError, match="text column 'body' not found"):
        evaluate(cnn_sample, baseline="lead-3", text_column="body", output_dir=out)
    no_summaries = tmp_path / "texts.jsonl"
    no_summaries.write_text('{"article": "Only text."}\n')
    with pytest.raises(SrsumError, match="no reference summaries"):
        evaluate(str(no_summaries), baseline="lead-3", output_dir=out)
    assert not any(out.iterdir())
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SrsumError, match="cannot write to output directory"):
        evaluate(cnn_sample, baseline="lead-3", output_dir=blocker / "out")


def test_write_jsonl_is_atomic(tmp_path):
    target = tmp_path / "s.jsonl"
    write_jsonl(target, [{"id": "a", "summary": "x"}])
    assert target.read_text() == '{"id": "a", "summary": "x"}\n'
    with pytest.raises(TypeError):
        write_jsonl(target, [{"id": object()}])
    assert target.read_text() == '{"id": "a", "summary": "x"}\n'  # untouched
    assert [p.name for p in tmp_path.iterdir()] == ["s.jsonl"]
    with pytest.raises(SrsumError, match="is a folder"):
        write_jsonl(tmp_path, [])


# --------------------------------------------------------------------------- long, many and interrupted jobs


@pytest.fixture
def t5_tokenizer(shared_data):
    from conftest import TOKENIZER_DIRS
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOKENIZER_DIRS["t5"]))


def test_a_huge_article_is_tokenized_only_as_far_as_it_is_kept(t5_tokenizer, monkeypatch):
    from srsum.tokenization import clip_chars, encode_sources

    text = " ".join(f"Sentence {i} of a very long article about the harbour." for i in range(20_000))  # ~1 MB
    limit = 64
    whole = t5_tokenizer("summarize: " + text)["input_ids"]
    seen = []
    real_call = type(t5_tokenizer).__call__
    monkeypatch.setattr(type(t5_tokenizer), "__call__",
                        lambda self, texts, **kw: seen.extend(len(t) for t in texts) or real_call(self, texts, **kw))
    [(ids, estimated)] = encode_sources(t5_tokenizer, "t5", [text], limit)
    assert ids == whole[: limit - 1] + whole[-1:]  # the same ids as tokenizing everything
    assert max(seen) <= clip_chars(limit) + len("summarize: ") < len(text) / 10
    assert abs(estimated - len(whole)) < 0.05 * len(whole)


class WordTokenizer:
    """One token per word (its length), then an end token: words can be longer than any sentencepiece piece."""

    def __call__(self, texts, **kwargs):
        return {"input_ids": [[len(word) for word in text.split()] + [1] for text in texts]}


def test_a_text_of_very_long_tokens_is_tokenized_whole():
    from srsum.tokenization import clip_chars, encode_sources

    text = " ".join(["y" * 200] * 10)  # ten tokens, but the first clip_chars(4) characters hold only two
    assert len(text[:clip_chars(4)].split()) < 4
    [(ids, full)] = encode_sources(WordTokenizer(), "bart", [text], 4)
    assert full == 11 and ids == [200, 200, 200, 1]


def _long_examples(count):
    return [Example(f"long-{i}", " ".join(f"Sentence {j} of article {i}." for j in range(60))) for i in range(count)]


@pytest.mark.parametrize("count, expected", [(2, 2), (6, 1)])
def test_many_truncated_articles_give_one_warning(trained_t5, count, expected):
    summarizer = load_summarizer(str(trained_t5.run_dir / "best"), device="cpu")
    reporter = Recorder()
    summarize_examples(summarizer, _long_examples(count), SummarizeSettings(max_length=3, num_beams=1), reporter)
    truncation = [w for w in reporter.warnings if "max source length" in w]
    assert len(truncation) == expected
    if expected == 1:
        assert truncation[0].startswith(f"{count} of {count} articles are longer than the max source length 64")
    else:
        assert truncation[0].startswith("article 'long-0' is ")
    note = [n for n in reporter.notes if n.startswith("summarized ")]
    assert len(note) == 1 and f"summarized {count} article(s)" in note[0] and "summary tokens" in note[0]


def test_summaries_are_handed_over_as_they_finish_and_in_order(trained_t5):
    from srsum.summarize import InOrder

    summarizer = load_summarizer(str(trained_t5.run_dir / "best"), device="cpu")
    examples = [Example(f"a{i}", "word " * (5 + 7 * i)) for i in range(5)]
    finished, emitted = [], []
    results = InOrder(examples, emitted.extend)
    summaries = summarize_examples(summarizer, examples, SummarizeSettings(max_length=3, num_beams=1, batch_size=2),
                                   Recorder(), on_summary=lambda i, s: (finished.append(i), results.add(i, s)))
    assert finished == [4, 3, 2, 1, 0]  # longest first
    assert [row["id"] for row in emitted] == [e.id for e in examples]
    assert [row["summary"] for row in emitted] == summaries
    assert results.rest() == []


def test_in_order_keeps_what_is_finished_but_not_yet_emitted():
    from srsum.summarize import InOrder

    examples = [Example(f"a{i}", "text") for i in range(4)]
    emitted = []
    results = InOrder(examples, lambda rows: emitted.append([r["id"] for r in rows]))
    results.add(2, "c")
    results.add(0, "a")
    results.add(3, "d")
    assert emitted == [["a0"]]
    assert [r["id"] for r in results.rest()] == ["a2", "a3"]
    results.add(1, "b")
    assert emitted == [["a0"], ["a1", "a2", "a3"]] and results.rest() == []


def test_interrupted_evaluation_keeps_the_finished_predictions(trained_t5, cnn_sample, tmp_path, monkeypatch):
    interrupt_generate(monkeypatch, at_call=2)
    out = tmp_path / "e"
    with pytest.raises(KeyboardInterrupt):
        evaluate(cnn_sample, model=str(trained_t5.run_dir / "best"), limit=4, device="cpu", output_dir=out,
                 generation=SummarizeSettings(max_length=3, num_beams=1, batch_size=2))
    assert sorted(p.name for p in out.iterdir()) == ["predictions.partial.jsonl"]
    rows = [json.loads(line) for line in (out / "predictions.partial.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(row["reference"] for row in rows)
    monkeypatch.undo()
    metrics = evaluate(cnn_sample, model=str(trained_t5.run_dir / "best"), limit=4, device="cpu", output_dir=out,
                       generation=SummarizeSettings(max_length=3, num_beams=1, batch_size=2))
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "predictions.jsonl"]  # the partial file is gone
    assert metrics["text_column"] == "article" and metrics["summary_column"] == "summary"  # the sample's columns
    predictions = [json.loads(line)["prediction"] for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert metrics["mean_prediction_words"] == round(sum(len(p.split()) for p in predictions) / 4, 2)
    tokens = load_summarizer(str(trained_t5.run_dir / "best"), device="cpu").tokenizer
    assert 0 < metrics["gen_len"] == round(sum(len(tokens(p, add_special_tokens=False).input_ids)
                                                for p in predictions) / 4, 2)


def test_unset_generation_options_take_the_models_summarization_defaults(trained_t5):
    from types import SimpleNamespace

    t5_small_like = SimpleNamespace(config=SimpleNamespace(task_specific_params={"summarization": {
        "early_stopping": True, "length_penalty": 2.0, "max_length": 200, "min_length": 30,
        "no_repeat_ngram_size": 3, "num_beams": 4, "prefix": "summarize: "}}))
    resolved = SummarizeSettings().for_model(t5_small_like)
    assert (resolved.num_beams, resolved.max_length, resolved.min_length, resolved.length_penalty) == (4, 199, 29, 2.0)
    given = SummarizeSettings(num_beams=1, max_length=10).for_model(t5_small_like)
    assert (given.num_beams, given.max_length, given.min_length, given.length_penalty) == (1, 10, 10, 2.0)
    plain = SummarizeSettings().for_model(SimpleNamespace(config=SimpleNamespace()))
    assert (plain.num_beams, plain.max_length, plain.min_length, plain.no_repeat_ngram_size) == (4, 128, 0, 3)

    summarizer = load_summarizer(str(trained_t5.run_dir / "best"), device="cpu")
    summarizer.model.config.task_specific_params = {"summarization": {"max_length": 3, "num_beams": 1}}
    [short] = summarize_examples(summarizer, [Example("a", "The park opens in May. " * 5)], SummarizeSettings())
    [longer] = summarize_examples(summarizer, [Example("a", "The park opens in May. " * 5)],
                                  SummarizeSettings(max_length=12, min_length=12, num_beams=1))
    tokens = summarizer.tokenizer
    assert len(tokens(short, add_special_tokens=False).input_ids) <= 2 < len(tokens(longer, add_special_tokens=False).input_ids)
