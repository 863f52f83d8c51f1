"""ROUGE scoring and an offline sentence splitter.

ROUGE is computed the way the Hugging Face summarization example
(``transformers/examples/pytorch/summarization/run_summarization.py``) computes it:

1. every prediction and reference is stripped and rewritten with one sentence per line
   (the example uses ``"\\n".join(nltk.sent_tokenize(text))``; here :func:`split_sentences`);
2. ``evaluate.load("rouge").compute(..., use_stemmer=True)`` then scores each pair with
   ``rouge_score.rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)``
   (``scorer.score(reference, prediction)``), feeds every score to
   ``rouge_score.scoring.BootstrapAggregator()`` (1,000 resamples, 95% interval) and reports
   ``aggregate()[key].mid.fmeasure``;
3. the example multiplies by 100.

The bootstrap draws from numpy's *global* random generator, so the example's numbers change from run
to run in the second decimal place. :func:`rouge_scores` makes them exact and repeatable by seeding
that generator (``seed=42``, the default ``TrainingArguments.seed`` that the example passes to
``set_seed``) just for the aggregation and restoring the caller's random state afterwards: for the
same inputs and seed, the result is bit-for-bit what ``BootstrapAggregator().aggregate()`` returns
after ``numpy.random.seed(seed)``. ``aggregation="mean"`` gives the plain mean of per-example
F-measures instead (what ``evaluate``'s ``use_aggregator=False`` lists average to), which the
bootstrap median only approximates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer
from rouge_score import rouge_scorer, scoring

from srsum.errors import SrsumError

ROUGE_TYPES: tuple[str, ...] = ("rouge1", "rouge2", "rougeL", "rougeLsum")
"""The four ROUGE variants reported, in the order ``evaluate`` scores (and bootstraps) them."""

DEFAULT_SEED = 42
"""Seed for the bootstrap; 42 is ``transformers.TrainingArguments``' default seed."""

Aggregation = Literal["bootstrap", "mean"]

# Lower-case abbreviations (without their final period) that do not end a sentence. Punkt normally
# learns these from a large corpus (nltk's downloadable "punkt" model); we cannot download it, so a
# fixed English list stands in for it. Tokens with inner periods are written as Punkt stores them
# ("u.s" for "U.S.").
_ABBREVIATIONS = frozenset(
    {
        # titles and ranks
        "mr", "mrs", "ms", "messrs", "dr", "prof", "rev", "fr", "hon", "st", "jr", "sr",
        "gen", "lt", "col", "maj", "capt", "cpt", "sgt", "cpl", "pte", "pvt", "cmdr", "adm", "gov",
        "sen", "rep", "pres", "supt", "insp", "det", "atty", "mt",
        # organisations and addresses
        "inc", "ltd", "corp", "co", "bros", "dept", "univ", "assn", "ave", "blvd",
        # months
        "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
        # Latin and scholarly
        "vs", "e.g", "i.e", "cf", "al", "approx", "fig", "figs", "eq", "eqs", "ref", "refs", "vol",
        "pp", "sec", "ch",
        # countries and bodies written with periods
        "u.s", "u.k", "u.n", "e.u", "d.c", "u.s.a",
    }
)


def _build_splitter() -> PunktSentenceTokenizer:
    """Return a Punkt tokenizer with no trained model, only the fixed abbreviation list."""
    params = PunktParameters()
    params.abbrev_types.update(_ABBREVIATIONS)
    return PunktSentenceTokenizer(params)


_SPLITTER = _build_splitter()


def split_sentences(text: str) -> list[str]:
    """Split ``text`` into sentences, offline and deterministically.

    The splitter is nltk's Punkt algorithm (``nltk.tokenize.punkt.PunktSentenceTokenizer``) built from
    hand-set parameters: a fixed list of common English abbreviations (Mr., Dr., U.S., Jan., e.g., ...)
    and no trained model. nltk's pretrained English Punkt data, which the Hugging Face example uses
    through ``nltk.sent_tokenize``, cannot be downloaded here, and nltk ships no model with the wheel.
    Without a model Punkt still handles ``.``/``?``/``!`` with closing quotes or brackets, ellipses,
    decimal numbers and initials followed by a capitalised word ("J. K. Rowling").

    Every line break also ends a sentence (CNN/DailyMail highlights and arXiv articles store one
    sentence per line); blank lines are dropped and sentences are stripped.

    Limits: abbreviations outside the list ("Calif.", "p.m.") end a sentence when followed by a
    space; a listed abbreviation or an initial that really ends a sentence ("... in the U.S. The")
    does not split; hard-wrapped plain text is split at every line end. Only English is supported.
    """
    sentences: list[str] = []
    for line in text.splitlines():
        if line.strip():
            sentences.extend(s.strip() for s in _SPLITTER.tokenize(line) if s.strip())
    return sentences


def _one_sentence_per_line(text: str) -> str:
    """Rewrite ``text`` as the example's ``postprocess_text`` does: stripped, one sentence per line."""
    return "\n".join(split_sentences(text.strip()))


def _check_inputs(predictions: Sequence[str], references: Sequence[str]) -> None:
    """Raise SrsumError unless predictions and references are equally long, non-empty lists of str."""
    if len(predictions) != len(references):
        raise SrsumError(
            f"cannot score {len(predictions)} predictions against {len(references)} references: "
            "the counts must match"
        )
    if not predictions:
        raise SrsumError("no predictions to score: ROUGE needs at least one prediction/reference pair")
    for kind, texts in (("prediction", predictions), ("reference", references)):
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise SrsumError(f"{kind} {index} is a {type(text).__name__}, not a string")


def _raw_scores(predictions: Sequence[str], references: Sequence[str]) -> list[dict[str, scoring.Score]]:
    """Score each pair with rouge-score exactly as ``evaluate``'s rouge metric does."""
    _check_inputs(predictions, references)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    return [
        scorer.score(_one_sentence_per_line(ref), _one_sentence_per_line(pred))
        for pred, ref in zip(predictions, references, strict=True)
    ]


def per_example_scores(predictions: Sequence[str], references: Sequence[str]) -> list[dict[str, float]]:
    """Return each pair's ROUGE F-measures in percent, keyed by :data:`ROUGE_TYPES`."""
    return [
        {key: score[key].fmeasure * 100 for key in ROUGE_TYPES}
        for score in _raw_scores(predictions, references)
    ]


def _bootstrap_mid(raw: list[dict[str, scoring.Score]], seed: int) -> dict[str, float]:
    """Run rouge-score's BootstrapAggregator under ``numpy.random.seed(seed)``; return mid F-measures.

    numpy's global random state is restored afterwards, so callers' own random streams are untouched.
    """
    aggregator = scoring.BootstrapAggregator()
    for score in raw:
        aggregator.add_scores(score)
    saved_state = np.random.get_state()
    np.random.seed(seed)
    try:
        aggregate = aggregator.aggregate()
    finally:
        np.random.set_state(saved_state)
    return {key: float(aggregate[key].mid.fmeasure) for key in ROUGE_TYPES}


def _mean(raw: list[dict[str, scoring.Score]]) -> dict[str, float]:
    """Plain mean of per-example F-measures."""
    return {key: float(np.mean([score[key].fmeasure for score in raw])) for key in ROUGE_TYPES}


def rouge_scores(
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    aggregation: Aggregation = "bootstrap",
    seed: int = DEFAULT_SEED,
) -> dict[str, float]:
    """Corpus ROUGE-1/2/L/Lsum F-measures in percent (0-100), as the HF summarization example reports.

    Args:
        predictions: generated summaries, one per example.
        references: reference summaries, same order and length.
        aggregation: ``"bootstrap"`` (default) reproduces ``evaluate``'s ``BootstrapAggregator``
            ``mid.fmeasure`` with a fixed seed; ``"mean"`` is the plain per-example mean.
        seed: numpy seed for the bootstrap (ignored for ``"mean"``).

    Returns:
        ``{"rouge1": ..., "rouge2": ..., "rougeL": ..., "rougeLsum": ...}``, unrounded
        (the example rounds to 4 decimals for display).

    Raises:
        SrsumError: mismatched or empty inputs, non-string items, or an unknown aggregation.
    """
    if aggregation not in ("bootstrap", "mean"):
        raise SrsumError(f"unknown ROUGE aggregation {aggregation!r}: use 'bootstrap' or 'mean'")
    raw = _raw_scores(predictions, references)
    fractions = _bootstrap_mid(raw, seed) if aggregation == "bootstrap" else _mean(raw)
    return {key: value * 100 for key, value in fractions.items()}
