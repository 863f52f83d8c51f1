"""Tests for srsum.metrics: the offline sentence splitter and ROUGE as the HF summarization example computes it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rouge_score import rouge_scorer, scoring

from srsum.errors import SrsumError
from srsum.metrics import ROUGE_TYPES, per_example_scores, rouge_scores, split_sentences

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CNNDM = SHARED / "cnn_dailymail" / "cnn_dailymail-test-sample.jsonl"
XSUM = SHARED / "xsum" / "xsum-test-sample.jsonl"


def _rows(path: Path, limit: int | None = None) -> list[dict]:
    if not path.is_file():
        pytest.skip(f"shared data not found at {path} (needs the read-only shared/ folder beside the repo)")
    with path.open(encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    return rows[:limit]


def _lead3(rows: list[dict]) -> tuple[list[str], list[str]]:
    return ["\n".join(split_sentences(r["article"])[:3]) for r in rows], [r["summary"] for r in rows]


def _example_style_rouge(predictions: list[str], references: list[str], seed: int) -> dict[str, float]:
    """rouge-score called as run_summarization.py + evaluate's rouge metric call it (numpy seeded)."""
    preds = ["\n".join(split_sentences(p.strip())) for p in predictions]  # postprocess_text
    refs = ["\n".join(split_sentences(r.strip())) for r in references]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    aggregator = scoring.BootstrapAggregator()
    for ref, pred in zip(refs, preds, strict=True):
        aggregator.add_scores(scorer.score(ref, pred))
    np.random.seed(seed)
    result = aggregator.aggregate()
    return {key: result[key].mid.fmeasure * 100 for key in result}


# --- split_sentences -------------------------------------------------------------------------


def test_split_sentences_handles_abbreviations_quotes_and_punctuation():
    text = 'Mr. Smith met Dr. Jones in the U.S. capital. He said "hi." Did it work? Yes! J. K. Rowling agreed.'
    assert split_sentences(text) == [
        "Mr. Smith met Dr. Jones in the U.S. capital.",
        'He said "hi."',
        "Did it work?",
        "Yes!",
        "J. K. Rowling agreed.",
    ]


def test_split_sentences_keeps_decimals_and_ends_at_line_breaks():
    text = "It cost $3.5 million in 2015.\nHighlight without a period\n\n  Last one.  "
    assert split_sentences(text) == ["It cost $3.5 million in 2015.", "Highlight without a period", "Last one."]


def test_split_sentences_empty_input():
    assert split_sentences("") == []
    assert split_sentences(" \n\t\n") == []


def test_split_sentences_on_real_cnndm_highlights():
    row = _rows(CNNDM, 1)[0]
    assert split_sentences(row["summary"]) == [line.strip() for line in row["summary"].split("\n") if line.strip()]


# --- rouge_scores equals the HF example's computation -----------------------------------------


def test_rouge_scores_equal_example_computation_on_real_rows():
    predictions, references = _lead3(_rows(CNNDM, 40))
    ours = rouge_scores(predictions, references)
    expected = _example_style_rouge(predictions, references, seed=42)
    assert set(ours) == set(ROUGE_TYPES)
    assert ours == expected  # exact, not approximate
    other_seed = rouge_scores(predictions, references, seed=7)
    assert other_seed == _example_style_rouge(predictions, references, seed=7)
    assert other_seed != ours  # the bootstrap median really depends on the seed


def test_mean_aggregation_is_per_example_average_and_close_to_bootstrap():
    predictions, references = _lead3(_rows(CNNDM, 40))
    per_example = per_example_scores(predictions, references)
    mean = rouge_scores(predictions, references, aggregation="mean")
    boot = rouge_scores(predictions, references)
    assert len(per_example) == 40
    for key in ROUGE_TYPES:
        assert mean[key] == pytest.approx(np.mean([scores[key] for scores in per_example]), abs=1e-9)
        assert abs(mean[key] - boot[key]) < 0.5


def test_rouge_scores_restore_numpy_random_state():
    predictions, references = _lead3(_rows(CNNDM, 5))
    np.random.seed(123)
    expected = np.random.rand(3)
    np.random.seed(123)
    rouge_scores(predictions, references)
    assert np.array_equal(np.random.rand(3), expected)


def test_rougelsum_uses_sentence_split_but_other_types_do_not():
    pred = "the cat sat on the mat. the dog ate."
    ref = "the dog ate. the cat sat on the mat."
    scores = per_example_scores([pred], [ref])[0]
    assert scores["rougeLsum"] == pytest.approx(100.0)  # each sentence matches a reference line
    assert scores["rougeL"] < 100.0  # one LCS over the whole text cannot match both orders
    assert scores["rouge1"] == pytest.approx(100.0)


def test_identical_and_disjoint_texts():
    assert rouge_scores(["A fox ran home."], ["A fox ran home."]) == {key: 100.0 for key in ROUGE_TYPES}
    assert rouge_scores(["alpha beta"], ["gamma delta"], aggregation="mean") == {key: 0.0 for key in ROUGE_TYPES}


def test_lead3_lands_near_known_cnndm_lead3():
    predictions, references = _lead3(_rows(CNNDM))
    assert len(predictions) == 250
    scores = rouge_scores(predictions, references, aggregation="mean")
    # Lead-3 on the full CNN/DM test set is about 40.3 / 17.7 / 36.6 (R1 / R2 / RLsum).
    assert 38.0 < scores["rouge1"] < 44.0
    assert 16.0 < scores["rouge2"] < 21.0
    assert 34.0 < scores["rougeLsum"] < 40.0
    assert scores["rougeL"] < scores["rougeLsum"]


@pytest.mark.parametrize(
    ("predictions", "references", "message"),
    [
        (["a"], ["a", "b"], "counts must match"),
        ([], [], "no predictions"),
        (["a", None], ["a", "b"], "prediction 1 is a NoneType"),
    ],
)
def test_bad_inputs_raise_one_line_errors(predictions, references, message):
    with pytest.raises(SrsumError, match=message) as info:
        rouge_scores(predictions, references)
    assert "\n" not in str(info.value)


def test_unknown_aggregation():
    with pytest.raises(SrsumError, match="aggregation"):
        rouge_scores(["a"], ["a"], aggregation="median")
