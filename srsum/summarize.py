"""Summaries and ROUGE evaluation: the library behind ``srsum summarize`` and ``srsum evaluate``.

The CLI only parses options and calls these functions; tests call them directly too.

* :func:`load_summarizer` loads a model (an srsum checkpoint, a plain T5/BART folder or Hub name, or
  the newest checkpoint under ``models/``) and its tokenizer.
* :func:`collect_articles` reads articles from files, folders, ``.jsonl`` and stdin; a bad file is
  reported and the others are kept.
* :func:`summarize_examples` generates summaries with :func:`srsum.decoding.generate`.
* :func:`evaluate` scores a model or the lead-N baseline on a dataset and writes predictions and a
  metrics JSON atomically.

Progress, warnings and notes go through a :class:`Reporter`; the default one is silent except for
warnings, which it emits with ``warnings.warn`` as :class:`srsum.data.DataWarning`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from srsum import __version__
from srsum.checkpoints import (MODELS_DIR, atomic_write_json, atomic_write_text, ensure_writable_dir,
                               find_newest_model, read_trainer_state)
from srsum.data import (ALL_SPLITS, TABLE_SUFFIXES, Example, _article_files, lead_n, load_examples,
                        read_article)
from srsum.errors import SrsumError
from srsum.reporting import Reporter

NO_MODEL_HELP = (
    "no --model given and no trained checkpoint found under {root}/; train one with "
    "`srsum train --model t5-small --dataset cnn_dailymail`, or pass --model t5-small (or a local model "
    "folder) to summarize with a plain pretrained model"
)
DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}
_LEAD = re.compile(r"^lead-?(\d+)$")


# ---------------------------------------------------------------------------------------------
# reporting


# ---------------------------------------------------------------------------------------------
# settings


@dataclass
class SummarizeSettings:
    """How a summarize/evaluate job generates: the decoder's settings (``decoder_settings``, checked
    again by srsum.decoding) plus batching and source truncation. Recorded in evaluate's metrics JSON."""

    num_beams: int = 4
    max_length: int = 128  # new tokens at most
    min_length: int = 0  # new tokens at least
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 3
    batch_size: int = 8
    max_source_length: int | None = None  # None: what the model was trained with, else 1024
    step: str = "auto"  # decoder step: "eager", "graph" (CUDA graph), "compiled" (torch.compile), "auto"

    def validate(self) -> SummarizeSettings:
        checks = [("--num-beams", self.num_beams, 1), ("--max-length", self.max_length, 1),
                  ("--min-length", self.min_length, 0), ("--no-repeat-ngram-size", self.no_repeat_ngram_size, 0),
                  ("--batch-size", self.batch_size, 1)]
        if self.max_source_length is not None:
            checks.append(("--max-source-length", self.max_source_length, 1))
        for name, value, low in checks:
            if value < low:
                raise SrsumError(f"{name} must be at least {low}, got {value}")
        if self.min_length > self.max_length:
            raise SrsumError(f"--min-length {self.min_length} is larger than --max-length {self.max_length}")
        from srsum.decoding import STEP_MODES

        if self.step not in STEP_MODES:
            raise SrsumError(f"--step must be one of {', '.join(STEP_MODES)}, got {self.step!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def decoder_settings(self):
        """The srsum.decoding settings these map to (lengths are new tokens in both)."""
        from srsum.decoding import GenerationSettings

        return GenerationSettings(num_beams=self.num_beams, max_new_tokens=self.max_length,
                                  min_new_tokens=self.min_length, length_penalty=self.length_penalty,
                                  no_repeat_ngram_size=self.no_repeat_ngram_size, step=self.step).validate()


def resolve_device(name: str | None):
    """``None``/``auto``: CUDA if available, else CPU; otherwise the named device, checked."""
    import torch

    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise SrsumError(f"--device: unknown device {name!r}; use cpu, cuda, cuda:N, mps or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SrsumError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise SrsumError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise SrsumError(f"--device {name}: MPS is not available on this machine; use --device cpu")
    return device


def resolve_dtype(name: str | None):
    """``float32`` (default), ``bfloat16`` or ``float16`` as a torch dtype."""
    import torch

    if name is None:
        return torch.float32
    key = DTYPES.get(str(name).lower())
    if key is None:
        raise SrsumError(f"--dtype: unknown dtype {name!r}; use float32, bfloat16 or float16")
    return getattr(torch, key)


# ---------------------------------------------------------------------------------------------
# models


@dataclass
class Summarizer:
    """A loaded model with its tokenizer and where it came from."""

    model: Any
    tokenizer: Any
    source: str
    trainer_state: dict[str, Any] = field(default_factory=dict)

    @property
    def model_type(self) -> str:
        return self.model.config.model_type

    def srformer_settings(self) -> dict[str, Any]:
        return {key: value for key, value in self.model.config.to_dict().items() if key.startswith("srformer_")}

    def default_max_source_length(self) -> int | None:
        return self.trainer_state.get("args", {}).get("max_source_length")


def _looks_like_local_path(name: str) -> bool:
    return (name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name
            or Path(name).suffix.lower() in (".json", ".jsonl", ".txt", ".bin", ".safetensors"))


def check_model_source(name: str) -> None:
    """Fail fast for a local-looking model path that does not exist (instead of asking the Hub)."""
    if not Path(name).expanduser().exists() and _looks_like_local_path(name):
        raise SrsumError(f"model: {name} not found (neither a local model folder nor a Hugging Face model name)")


def load_summarizer(model: str | None = None, device: str | None = None, dtype: str | None = None,
                    models_root: str | Path = MODELS_DIR, reporter: Reporter | None = None) -> Summarizer:
    """Load a model and its tokenizer for generation (``model=None``: newest checkpoint under models/)."""
    from srsum.engine import load_model
    from srsum.tokenization import load_tokenizer

    reporter = reporter or Reporter()
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype)
    if model is None:
        found = find_newest_model(models_root)
        if found is None:
            raise SrsumError(NO_MODEL_HELP.format(root=str(models_root).rstrip("/")))
        model = str(found)
        reporter.info(f"using the newest checkpoint: {model}")
    check_model_source(model)
    try:
        loaded = load_model(model, dtype=torch_dtype, device=torch_device)
    except SrsumError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        raise SrsumError(f"model: cannot load {model!r} as an srsum checkpoint or a T5/BART model ({reason})") from None
    tokenizer = load_tokenizer(model)
    state = read_trainer_state(model) if Path(model).is_dir() else {}
    return Summarizer(loaded, tokenizer, model, state)


# ---------------------------------------------------------------------------------------------
# articles


@dataclass
class Failure:
    """An input that could not be read or summarized."""

    name: str
    message: str


def collect_articles(paths: Sequence[str]) -> tuple[list[Example], list[Failure]]:
    """Read articles for ``summarize``: each file, folder, table file or ``-`` on its own.

    A file that cannot be used (missing, empty, a folder without .txt files, an empty row of a
    .jsonl) becomes a :class:`Failure` naming it; the rest are still returned. Ids are made unique.
    """
    if not paths:
        raise SrsumError("no articles given: pass one or more files, a folder, or - for stdin")
    examples: list[Example] = []
    failures: list[Failure] = []
    for raw in paths:
        path = Path(raw).expanduser()
        try:
            if raw == "-":
                examples.append(read_article(raw))
            elif path.is_dir():
                for file in _article_files(path):
                    try:
                        examples.append(read_article(str(file)))
                    except SrsumError as error:
                        failures.append(Failure(str(file), str(error)))
            elif path.suffix.lower() in TABLE_SUFFIXES:
                if not path.exists():
                    raise SrsumError(f"file not found: {raw}")
                for example in load_examples(str(path), split=ALL_SPLITS):
                    if example.text.strip():
                        examples.append(Example(example.id, example.text.strip(), example.summary))
                    else:
                        failures.append(Failure(f"{raw}: {example.id}", f"{raw}: article {example.id!r} is empty"))
            else:
                examples.append(read_article(raw))
        except SrsumError as error:
            failures.append(Failure(raw, str(error)))
    seen: dict[str, int] = {}
    for example in examples:
        count = seen.get(example.id, 0)
        seen[example.id] = count + 1
        if count:
            example.id = f"{example.id}-{count + 1}"
    return examples, failures


# ---------------------------------------------------------------------------------------------
# generation


def summarize_examples(summarizer: Summarizer, examples: Sequence[Example], settings: SummarizeSettings,
                       reporter: Reporter | None = None, warn_each: bool = True) -> list[str]:
    """Summaries of ``examples`` in order; over-long articles are truncated with a warning naming both lengths.

    ``warn_each=False`` (evaluation) gives one warning with the count of truncated articles instead.
    """
    from srsum.tokenization import encode_examples, resolve_max_source_length

    reporter = reporter or Reporter()
    settings.validate()
    model, tokenizer = summarizer.model, summarizer.tokenizer
    max_source = resolve_max_source_length(
        model, settings.max_source_length or summarizer.default_max_source_length())
    if not examples:
        return []

    lengths: list[int] = []

    def truncated(index: int, length: int, limit: int) -> None:
        lengths.append(length)
        if warn_each:
            reporter.warn(f"article {examples[index].id!r} is {length} tokens long, more than the max source length "
                          f"{limit}: truncated to {limit} tokens")

    with reporter.progress("tokenizing", len(examples)) as advance:
        encoded = encode_examples(tokenizer, summarizer.model_type, [e.text for e in examples], None, max_source,
                                  on_truncate=truncated, advance=advance)
    if lengths and not warn_each:
        reporter.warn(f"{len(lengths)} of {len(examples)} articles are longer than the max source length {max_source} "
                      f"tokens (longest {max(lengths)}) and were truncated to {max_source} tokens")
    return generate_summaries(model, tokenizer, [row.input_ids for row in encoded], settings, reporter)


def generate_summaries(model, tokenizer, sources: Sequence[Sequence[int]], settings: SummarizeSettings,
                       reporter: Reporter | None = None, description: str = "generating") -> list[str]:
    """Decode summaries for tokenized sources, longest first in batches, returned in input order."""
    from srsum.decoding import generate, resolve_step
    from srsum.tokenization import pad_batch

    reporter = reporter or Reporter()
    decoder_settings = settings.decoder_settings()
    device = next(model.parameters()).device
    resolve_step(decoder_settings.step, device)  # a step the device cannot run fails before any work
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]), reverse=True)
    summaries: list[str] = [""] * len(sources)
    was_training = model.training
    model.eval()
    try:
        with reporter.progress(description, len(sources)) as advance:
            for start in range(0, len(order), settings.batch_size):
                batch = order[start:start + settings.batch_size]
                ids, mask = pad_batch([sources[i] for i in batch], tokenizer.pad_token_id)
                output = generate(model, ids.to(device), mask.to(device), **asdict(decoder_settings))
                texts = tokenizer.batch_decode(output, skip_special_tokens=True, clean_up_tokenization_spaces=True)
                for i, text in zip(batch, texts):
                    summaries[i] = text.strip()
                advance(len(batch))
    finally:
        model.train(was_training)
    return summaries


def summarize_texts(texts: Sequence[str], model: str | None = None, settings: SummarizeSettings | None = None,
                    device: str | None = None, dtype: str | None = None,
                    reporter: Reporter | None = None) -> list[str]:
    """Convenience: load a model and summarize plain strings (ids ``text-0``, ``text-1``, ...)."""
    summarizer = load_summarizer(model, device, dtype, reporter=reporter)
    examples = [Example(f"text-{i}", text) for i, text in enumerate(texts)]
    return summarize_examples(summarizer, examples, settings or SummarizeSettings(), reporter)


def write_jsonl(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write JSON Lines atomically (temporary file in the same folder, then ``os.replace``)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise SrsumError(f"cannot write {path}: it is a folder")
    ensure_writable_dir(path.parent if str(path.parent) else ".", "output folder")
    return atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


# ---------------------------------------------------------------------------------------------
# evaluation


def parse_baseline(name: str) -> int:
    """The N of a ``lead-N`` baseline name; SrsumError for anything else."""
    match = _LEAD.match(name.strip().lower())
    if not match or int(match.group(1)) < 1:
        raise SrsumError(f"--baseline: unknown baseline {name!r}; use lead-3 (or lead-N)")
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
             aggregation: str = "bootstrap") -> dict[str, Any]:
    """Score a model (or ``baseline="lead-3"``) on ``dataset`` with ROUGE-1/2/L/Lsum.

    Writes ``predictions.jsonl`` (id, prediction, reference, per-example ROUGE) and ``metrics.json``
    (ROUGE, model, dataset, split, example count, every generation setting and the SRformer settings)
    atomically into ``output_dir`` when it is given, and returns the metrics dictionary.
    """
    from srsum.metrics import ROUGE_TYPES, per_example_scores, rouge_scores

    reporter = reporter or Reporter()
    generation = (generation or SummarizeSettings()).validate()
    if baseline is not None and model is not None:
        raise SrsumError("give either --model or --baseline, not both")
    lead = parse_baseline(baseline) if baseline is not None else None
    if output_dir is not None:
        output_dir = ensure_writable_dir(output_dir)
    if lead is None and summarizer is None:
        summarizer = load_summarizer(model, device, dtype, models_root, reporter)
    started = time.perf_counter()
    examples = load_examples(dataset, split=split, text_column=text_column, summary_column=summary_column,
                             limit=limit)
    missing = [example for example in examples if example.summary is None]
    if len(missing) == len(examples):
        raise SrsumError(f"dataset {dataset!r} has no reference summaries (split {split!r}); name the column with "
                         "--summary-column")
    if missing:
        reporter.warn(f"{len(missing)} of {len(examples)} examples have no reference summary and are skipped")
        examples = [example for example in examples if example.summary is not None]
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
        predictions = summarize_examples(summarizer, examples, generation, reporter, warn_each=False)
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
        "text_column": text_column,
        "summary_column": summary_column,
        "limit": limit,
        "n_examples": len(examples),
        "generation": None if lead is not None else {
            **generation.to_dict(),
            "max_source_length": _effective_max_source(summarizer, generation),
            "device": str(next(summarizer.model.parameters()).device),
            "dtype": str(next(summarizer.model.parameters()).dtype).replace("torch.", ""),
            "decoder": "srsum.decoding.generate",
        },
        "seconds": round(elapsed, 3),
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
    return metrics


def _effective_max_source(summarizer: Summarizer, generation: SummarizeSettings) -> int:
    from srsum.tokenization import resolve_max_source_length

    return resolve_max_source_length(summarizer.model,
                                     generation.max_source_length or summarizer.default_max_source_length())
