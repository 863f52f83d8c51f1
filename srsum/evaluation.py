"""ROUGE evaluation, the library behind ``srsum evaluate``: score a model or the lead-N baseline on a
dataset, and write predictions and a metrics JSON atomically. Generation is :mod:`srsum.summarize`'s;
the ROUGE arithmetic is :mod:`srsum.metrics`'s.
"""

from __future__ import annotations

import os
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from srsum import __version__
from srsum.checkpoints import MODELS_DIR, atomic_write_json, ensure_writable_dir
from srsum.data import lead_n, load_examples
from srsum.errors import SrsumError, UsageError
from srsum.reporting import Reporter
from srsum.summarize import SummarizeSettings, Summarizer, load_summarizer, summarize_examples, write_jsonl

_LEAD = re.compile(r"^lead-?(\d+)$")
PARTIAL_PREDICTIONS = "predictions.partial.jsonl"  # what an interrupted evaluation leaves



def parse_baseline(name: str) -> int:
    """The N of a ``lead-N`` baseline name; SrsumError for anything else."""
    match = _LEAD.match(name.strip().lower())
    if not match or int(match.group(1)) < 1:
        raise UsageError(f"--baseline: unknown baseline {name!r}; use lead-3 (or lead-N)")
    return int(match.group(1))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "run"


def default_eval_dir(model: str | None, baseline: str | None, dataset: str, split: str) -> Path:
    """``evaluations/<model-or-baseline>-<dataset>-<split>``."""
    if baseline is not None:
        label = baseline
    elif model is not None:
        path = Path(model)
        label = f"{path.parent.name}-{path.name}" if path.name in ("best",) or path.name.startswith("checkpoint-") \
            else path.name
    else:
        label = "newest"
    data_label = Path(dataset).stem if Path(dataset).suffix else Path(dataset).name
    return Path("evaluations") / _slug(f"{label}-{data_label}-{split}")


def evaluate(dataset: str, *, model: str | None = None, baseline: str | None = None, split: str = "test",
             text_column: str | None = None, summary_column: str | None = None, limit: int | None = None,
             generation: SummarizeSettings | None = None, device: str | None = None, dtype: str | None = None,
             output_dir: str | Path | None = None, models_root: str | Path = MODELS_DIR,
             reporter: Reporter | None = None, summarizer: Summarizer | None = None,
             aggregation: str = "bootstrap", encoder_block: int | None | str = "default",
             threads: int | None = None) -> dict[str, Any]:
    """Score a model (or ``baseline="lead-3"``) on ``dataset`` with ROUGE-1/2/L/Lsum.

    Writes ``predictions.jsonl`` (id, prediction, reference, per-example ROUGE) and ``metrics.json``
    (ROUGE, model, dataset, split, example count, every generation setting and the SRformer settings)
    atomically into ``output_dir`` when it is given, and returns the metrics dictionary.
    """
    from srsum.metrics import ROUGE_TYPES, per_example_scores, rouge_scores

    reporter = reporter or Reporter()
    generation = (generation or SummarizeSettings()).validate()
    if baseline is not None and model is not None:
        raise UsageError("give either --model or --baseline, not both")
    lead = parse_baseline(baseline) if baseline is not None else None
    from srsum.training.distributed import process_group

    group = process_group(device)
    if group is not None:  # under torchrun / accelerate launch: each process summarizes its share
        device = str(group.device) if device in (None, "cuda") else device
        if not group.is_main_process:
            reporter, output_dir = Reporter(), None  # one progress bar and one writer: the main process
    if output_dir is not None:
        output_dir = ensure_writable_dir(output_dir)
    if lead is None and summarizer is None:
        summarizer = load_summarizer(model, device, dtype, models_root, reporter, encoder_block, threads)
    if lead is None:  # the model's defaults filled, and a sampling seed drawn once (recorded in metrics.json)
        generation = _with_shared_seed(generation.for_model(summarizer.model), group)
    started = time.perf_counter()
    examples = load_examples(dataset, split=split, text_column=text_column, summary_column=summary_column,
                             limit=limit)
    columns = {"text_column": getattr(examples, "text_column", None),
               "summary_column": getattr(examples, "summary_column", None)}
    missing = [example for example in examples if not _has_reference(example)]
    if len(missing) == len(examples):
        raise SrsumError(f"dataset {dataset!r} has no reference summaries (split {split!r}); name the column with "
                         "--summary-column")
    if missing:
        reporter.warn(f"{len(missing)} of {len(examples)} examples have no reference summary (missing, null or "
                      "empty) and are skipped")
        examples = [example for example in examples if _has_reference(example)]
    empty = [example.id for example in examples if not example.text.strip()]
    if empty:
        reporter.warn(f"{len(empty)} examples have an empty article and are skipped: {', '.join(empty[:5])}")
        examples = [example for example in examples if example.text.strip()]
        if not examples:
            raise SrsumError(f"dataset {dataset!r}: every article is empty")

    if lead is not None:
        with reporter.progress(f"lead-{lead}", len(examples)) as advance:
            predictions = []
            for example in examples:
                predictions.append(lead_n(example.text, lead))
                advance()
    else:
        predictions = _sharded_summaries(summarizer, examples, generation, reporter, output_dir, group)
    references = [example.summary or "" for example in examples]
    scores = rouge_scores(predictions, references, aggregation=aggregation)
    per_example = per_example_scores(predictions, references)
    elapsed = time.perf_counter() - started

    metrics: dict[str, Any] = {
        "rouge": scores,
        "rouge_settings": {"types": list(ROUGE_TYPES), "use_stemmer": True, "aggregation": aggregation,
                           "seed": 42, "lsum_sentence_splitter": "srsum.metrics.split_sentences (offline Punkt)"},
        "model": None if summarizer is None else summarizer.source,
        "model_type": None if summarizer is None else summarizer.model_type,
        "baseline": None if lead is None else f"lead-{lead}",
        "srformer": None if summarizer is None else summarizer.srformer_settings(),
        "dataset": dataset,
        "split": split,
        "text_column": columns["text_column"],
        "summary_column": columns["summary_column"],
        "limit": limit,
        "n_examples": len(examples),
        "skipped_no_reference": len(missing),
        "skipped_empty_article": len(empty),
        "mean_prediction_words": round(sum(len(p.split()) for p in predictions) / len(predictions), 2),
        "gen_len": None if summarizer is None else _mean_tokens(summarizer.tokenizer, predictions),
        "mean_reference_words": round(sum(len(r.split()) for r in references) / len(references), 2),
        "generation": None if lead is not None else {
            **generation.for_model(summarizer.model).to_dict(),
            "max_source_length": _effective_max_source(summarizer, generation),
            "device": str(next(summarizer.model.parameters()).device),
            "dtype": str(next(summarizer.model.parameters()).dtype).replace("torch.", ""),
            "number_format": summarizer.number_format,  # int8 included, and why auto chose what it did
            "decoder": "srsum.decoding.generate",
        },
        "processes": 1 if group is None else group.num_processes,
        "threads": _torch_threads(),
        "seconds": round(elapsed, 3),
        "articles_per_minute": round(len(predictions) * 60 / elapsed, 2) if elapsed > 0 else None,
        "srsum_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if output_dir is not None:
        rows = [{"id": example.id, "prediction": prediction, "reference": reference, **{
            key: round(value, 4) for key, value in scores_.items()}}
                for example, prediction, reference, scores_ in zip(examples, predictions, references, per_example)]
        write_jsonl(output_dir / "predictions.jsonl", rows)
        metrics["predictions_file"] = str(output_dir / "predictions.jsonl")
        atomic_write_json(output_dir / "metrics.json", metrics)
        metrics["metrics_file"] = str(output_dir / "metrics.json")
        (output_dir / PARTIAL_PREDICTIONS).unlink(missing_ok=True)  # an earlier interrupted run's
    return metrics


def _has_reference(example) -> bool:
    """A reference summary to score against: present, not null, not empty (nor only white space)."""
    return example.summary is not None and bool(example.summary.strip())


def launched_processes() -> int:
    """Processes a launcher (torchrun, accelerate launch) started for this job; 1 without one."""
    from srsum.training.distributed import launched_processes as launched

    return launched()


def is_main_process() -> bool:
    """False on every process but the first under a launcher (the one that writes and prints)."""
    return launched_processes() == 1 or int(os.environ.get("RANK", "0")) == 0


def _with_shared_seed(generation: SummarizeSettings, group) -> SummarizeSettings:
    """Sampling without a seed: one random seed for the run (under a launcher the main process draws it and
    every process uses it), so metrics.json can record the seed that was used."""
    if not generation.do_sample or generation.seed is not None or group is None:
        return generation.with_seed()
    from dataclasses import replace

    from srsum.training.distributed import on_main

    return replace(generation, seed=on_main(lambda: generation.with_seed().seed, group))


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _sharded_summaries(summarizer: Summarizer, examples, generation: SummarizeSettings, reporter: Reporter,
                       output_dir: Path | None, group) -> list[str]:
    """The predictions; under a launcher each process makes a contiguous share and all get every prediction."""
    if group is None:
        return _summaries(summarizer, examples, generation, reporter, output_dir)
    from srsum.training.distributed import map_sharded

    return map_sharded(examples, lambda part: _summaries(summarizer, part, generation, reporter, output_dir), group)


def _summaries(summarizer: Summarizer, examples, generation: SummarizeSettings, reporter: Reporter,
               output_dir: Path | None) -> list[str]:
    """The model's predictions; on Ctrl-C the finished ones are kept in predictions.partial.jsonl."""
    finished: dict[int, str] = {}
    try:
        return summarize_examples(summarizer, examples, generation, reporter, warn_each=False,
                                  on_summary=finished.__setitem__)
    except KeyboardInterrupt:
        if output_dir is not None and finished:
            path = write_jsonl(output_dir / PARTIAL_PREDICTIONS,
                               [{"id": examples[i].id, "prediction": finished[i], "reference": examples[i].summary}
                                for i in sorted(finished)])
            reporter.warn(f"interrupted: the {len(finished)} of {len(examples)} predictions finished are in {path} "
                          "(no ROUGE was computed)")
        raise


def _mean_tokens(tokenizer, texts: list[str]) -> float:
    """Mean token count of ``texts`` (the Hugging Face example's gen_len, counted from the decoded text)."""
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return round(sum(len(row) for row in ids) / max(1, len(ids)), 2)


def _effective_max_source(summarizer: Summarizer, generation: SummarizeSettings) -> int:
    from srsum.tokenization import resolve_max_source_length

    return resolve_max_source_length(summarizer.model,
                                     generation.max_source_length or summarizer.default_max_source_length())
