"""Loading summarization data: Hugging Face Hub datasets, local files, and articles to summarize.

Sources accepted by :func:`load_examples`, checked in this order:

1. a short name from :data:`DATASETS` (``cnn_dailymail``, ``xsum``, ``arxiv``, ``mediasum``) or the
   Hub id of one of them: loaded with ``datasets.load_dataset`` and the known config/columns.
   A short name wins over a local folder of the same name; write ``./xsum`` to mean the folder.
2. an existing local path:
   ``.jsonl`` (one JSON object per line), ``.json`` (a list of objects, ``{"data": [...]}``, a
   column layout ``{"col": [...]}`` / ``{"col": {"0": ...}}``, or JSON Lines saved as .json),
   ``.csv`` / ``.tsv`` (header row; an empty summary cell means no summary), ``.parquet``,
   a single ``.txt`` file (one example), or a folder of ``.txt`` files (one example per file,
   sorted by name; ``NAME.summary.txt`` beside ``NAME.txt`` is read as that example's reference
   summary, otherwise the summary is None).
3. any other name that looks like a Hub id (``owner/name``, optionally ``owner/name:config``):
   loaded with ``datasets.load_dataset``.

Columns: ``text_column``/``summary_column`` if given, else the first present of
:data:`TEXT_COLUMNS` / :data:`SUMMARY_COLUMNS` (no summary column found: summaries are None).
Rows of local files with a ``split`` field are filtered by ``split`` (``split="all"`` keeps every
row); files without that field are read whole.

Files are decoded as UTF-8 (a leading BOM is dropped). Bytes that are not UTF-8 are replaced by
U+FFFD and a :class:`DataWarning` (a ``UserWarning``) naming the file is emitted with
``warnings.warn``; callers can show or collect it with ``warnings.catch_warnings``.
All bad input raises :class:`srsum.errors.SrsumError` with a one-line message.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from srsum.errors import SrsumError
from srsum.metrics import split_sentences


class DataWarning(UserWarning):
    """A recoverable problem with input data (e.g. bytes that are not UTF-8)."""


@dataclass(frozen=True)
class DatasetSpec:
    """Where a benchmark lives on the Hugging Face Hub and which columns hold text and summary."""

    hub_name: str
    hub_config: str | None
    text_column: str
    summary_column: str
    splits: Mapping[str, str] = field(
        default_factory=lambda: {"train": "train", "validation": "validation", "test": "test"}
    )


DATASETS: dict[str, DatasetSpec] = {
    # CNN/DailyMail, non-anonymised 3.0.0; "abisee/cnn_dailymail" is the current Hub home of the
    # old canonical "cnn_dailymail" (Parquet files, same columns id/article/highlights).
    "cnn_dailymail": DatasetSpec("abisee/cnn_dailymail", "3.0.0", "article", "highlights"),
    # XSum (BBC); columns document/summary/id.
    "xsum": DatasetSpec("EdinburghNLP/xsum", None, "document", "summary"),
    # Cohan et al. arXiv; columns id/article/abstract. "section" is the repo's default config (the
    # one the SRformer authors' run used): sections separated by "\n" ("document": paragraphs).
    "arxiv": DatasetSpec("ccdv/arxiv-summarization", "section", "article", "abstract"),
    # MediaSum: ccdv/mediasum is the copy the SRformer authors trained on (columns id/document/
    # summary). Config "newline_prepended" gives one "SPEAKER: utterance" line per turn, the layout
    # of shared/data/mediasum; the repo's default "roberta_prepended" joins turns with "</s>", which
    # a T5 tokenizer would read as end-of-sequence. The repo is built by a loading script, which
    # recent `datasets` releases refuse to run: if loading fails, export it to JSON Lines elsewhere.
    "mediasum": DatasetSpec("ccdv/mediasum", "newline_prepended", "document", "summary"),
}

TEXT_COLUMNS: tuple[str, ...] = ("article", "document", "text", "dialogue", "source")
"""Columns tried, in order, for the input text when none is named."""

SUMMARY_COLUMNS: tuple[str, ...] = ("summary", "highlights", "abstract", "target")
"""Columns tried, in order, for the reference summary when none is named."""

TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
ALL_SPLITS = "all"
_SUMMARY_SUFFIX = ".summary.txt"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?(:[\w.-]+)?$")


@dataclass
class Example:
    """One document to summarize, with its reference summary when there is one."""

    id: str
    text: str
    summary: str | None = None


# ---------------------------------------------------------------------------------------------
# small helpers


def source_prefix(model: Any) -> str:
    """The input prefix a model expects: a model config's own ``task_specific_params["summarization"]
    ["prefix"]`` when it has one, else its family's (``"summarize: "`` for T5, ``""`` otherwise); ``model``
    is a config or a model_type name."""
    params = (getattr(model, "task_specific_params", None) or {}).get("summarization") or {}
    if isinstance(params.get("prefix"), str):
        return params["prefix"]
    model_type = model if isinstance(model, str) else getattr(model, "model_type", "")
    return "summarize: " if "t5" in model_type.lower() else ""


def lead_n(text: str, n: int = 3) -> str:
    """Return the first ``n`` sentences of ``text`` (by :func:`srsum.metrics.split_sentences`), one per line."""
    if n < 1:
        raise SrsumError(f"lead-n needs n >= 1, got {n}")
    return "\n".join(split_sentences(text)[:n])


BINARY_SIGNATURES = {b"\x1f\x8b": "gzip", b"PK\x03\x04": "zip", b"%PDF": "PDF", b"\x89PNG": "PNG",
                     b"\xff\xd8\xff": "JPEG", b"BZh": "bzip2", b"\xfd7zXZ": "xz", b"\x7fELF": "executable"}
MAX_BAD_SHARE = 0.05  # more undecodable bytes than this share of a file: it is not text


def _check_text(data: bytes, name: str) -> None:
    """SrsumError for data that is plainly not text: a known binary format, NUL bytes, or mostly bad UTF-8."""
    for signature, kind in BINARY_SIGNATURES.items():
        if data.startswith(signature):
            raise SrsumError(f"{name}: a {kind} file, not text; decompress or convert it to plain text first")
    head = data[:65536]
    if b"\x00" in head:
        raise SrsumError(f"{name}: a binary file (it holds NUL bytes), not text")
    bad = head.decode("utf-8", errors="replace").count("\ufffd")
    if head and bad > MAX_BAD_SHARE * len(head):
        raise SrsumError(f"{name}: not text ({bad} of its first {len(head)} bytes are not UTF-8)")


def _decode(data: bytes, name: str) -> str:
    """Decode UTF-8 (BOM dropped); on a few bad bytes replace them and warn, naming ``name``; SrsumError for
    a binary file."""
    _check_text(data, name)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        warnings.warn(
            f"{name}: not valid UTF-8 (first bad byte at offset {error.start}); "
            "undecodable bytes were replaced with U+FFFD",
            DataWarning,
            stacklevel=2,
        )
        return data.decode("utf-8-sig", errors="replace")


def _read_text_file(path: Path) -> str:
    """Read a whole file as text (see :func:`_decode`); SrsumError if it cannot be read."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SrsumError(f"file not found: {path}") from None
    except OSError as error:
        raise SrsumError(f"cannot read {path}: {error.strerror or error}") from None
    return _decode(data, str(path))


def _as_text(value: Any) -> str:
    """Turn a cell into text: lists of strings are joined by newlines, None becomes ""."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return "\n".join(_as_text(item) for item in value)
    return str(value)


def _as_summary(value: Any) -> str | None:
    """Like :func:`_as_text`, but a missing or NaN value means no summary."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    return _as_text(value)


# ---------------------------------------------------------------------------------------------
# columns and rows


def _pick_column(columns: list[str], wanted: str | None, defaults: tuple[str, ...], what: str,
                 source: str, required: bool) -> str | None:
    """Return the column to use for ``what`` (text/summary), or raise naming the available ones."""
    available = ", ".join(columns) or "(none)"
    if wanted is not None:
        if wanted not in columns:
            raise SrsumError(f"{what} column {wanted!r} not found in {source}; available columns: {available}")
        return wanted
    for name in defaults:
        if name in columns:
            return name
    if required:
        raise SrsumError(
            f"no {what} column found in {source} (tried {', '.join(defaults)}); "
            f"available columns: {available}; name one with --{what}-column"
        )
    return None


def _columns_of(rows: list[dict[str, Any]]) -> list[str]:
    """All keys that occur in ``rows``, in order of first appearance."""
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


class Examples(list):
    """A list of :class:`Example` that remembers the columns its texts and summaries came from
    (None for text files)."""

    text_column: str | None = None
    summary_column: str | None = None


def _rows_to_examples(rows: Iterable[Mapping[str, Any]], text_col: str, summary_col: str | None,
                      default_id: str) -> Examples:
    """Build Examples; ids come from an ``id`` field, else ``{default_id}-{row index}``."""
    examples = Examples()
    examples.text_column, examples.summary_column = text_col, summary_col
    for index, row in enumerate(rows):
        raw_id = row.get("id")
        example_id = f"{default_id}-{index}" if raw_id is None else str(raw_id)
        summary = _as_summary(row.get(summary_col)) if summary_col else None
        examples.append(Example(example_id, _as_text(row.get(text_col)), summary))
    return examples


def _filter_split(rows: list[dict[str, Any]], split: str, source: str) -> list[dict[str, Any]]:
    """Keep rows whose ``split`` field equals ``split``; no-op when rows have no such field."""
    if split == ALL_SPLITS or not any("split" in row for row in rows):
        return rows
    kept = [row for row in rows if row.get("split") == split]
    if not kept:
        found = sorted({str(row.get("split")) for row in rows})
        raise SrsumError(
            f"no rows with split {split!r} in {source}; available splits: {', '.join(found)} "
            f"(or use split '{ALL_SPLITS}')"
        )
    return kept


# ---------------------------------------------------------------------------------------------
# local table formats


def _parse_jsonl(text: str, source: str) -> list[dict[str, Any]]:
    """Parse JSON Lines: one object per non-blank line."""
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise SrsumError(f"{source}, line {number}: invalid JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise SrsumError(f"{source}, line {number}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def _columnar_rows(data: dict[str, Any], source: str) -> list[dict[str, Any]]:
    """Rows from a column layout: ``{"col": [v0, v1]}`` or pandas' ``{"col": {"0": v0, "1": v1}}``."""
    columns = {name: list(values.values()) if isinstance(values, dict) else values
               for name, values in data.items()}
    lengths = {len(values) for values in columns.values() if isinstance(values, list)}
    if len(lengths) != 1 or not all(isinstance(values, list) for values in columns.values()):
        raise SrsumError(
            f"{source}: unsupported JSON layout; use a list of objects, JSON Lines, or columns of equal length"
        )
    count = lengths.pop()
    return [{name: values[i] for name, values in columns.items()} for i in range(count)]


def _json_rows(data: Any, source: str) -> list[dict[str, Any]]:
    """Rows from a parsed .json document (list of objects, {"data": [...]}, or columns)."""
    if isinstance(data, dict) and not any(isinstance(value, (list, dict)) for value in data.values()):
        return [data]  # a single object is a single row
    if isinstance(data, dict):
        lists = [value for value in data.values() if isinstance(value, list) and value
                 and all(isinstance(item, dict) for item in value)]
        if len(lists) == 1:
            data = lists[0]
        else:
            return _columnar_rows(data, source)
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise SrsumError(f"{source}: expected a JSON list of objects")
    return data


def _parse_json(text: str, source: str) -> list[dict[str, Any]]:
    """Parse a .json file; JSON Lines saved with a .json name are accepted too."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        if error.msg == "Extra data":
            return _parse_jsonl(text, source)
        raise SrsumError(f"{source}: invalid JSON ({error.msg} at line {error.lineno})") from None
    return _json_rows(data, source)


def _parse_csv(text: str, source: str, delimiter: str) -> list[dict[str, Any]]:
    """Parse CSV/TSV with a header row; empty cells become None."""
    limit = min(sys.maxsize, 2**31 - 1)
    if csv.field_size_limit() < limit:
        csv.field_size_limit(limit)  # long articles exceed the 128 KiB default
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
        rows = [{key: (value if value != "" else None) for key, value in row.items() if key is not None}
                for row in reader]
    except csv.Error as error:
        raise SrsumError(f"{source}: invalid CSV ({error})") from None
    if reader.fieldnames is None:
        raise SrsumError(f"{source} is empty: no header row")
    return rows


def _parse_parquet(path: Path) -> list[dict[str, Any]]:
    """Read every row of a Parquet file."""
    import pyarrow
    import pyarrow.parquet as pq

    try:
        if path.stat().st_size == 0:
            raise SrsumError(f"{path} is empty")
        return pq.read_table(path).to_pylist()
    except (pyarrow.ArrowException, OSError) as error:
        raise SrsumError(f"{path}: not a readable Parquet file ({str(error).splitlines()[0]})") from None


def _read_table(path: Path) -> list[dict[str, Any]]:
    """Read a .jsonl/.json/.csv/.tsv/.parquet file into a list of row dicts (non-empty)."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        rows = _parse_parquet(path)
    else:
        text = _read_text_file(path)
        if not text.strip():
            raise SrsumError(f"{path} is empty")
        if suffix == ".jsonl":
            rows = _parse_jsonl(text, str(path))
        elif suffix == ".json":
            rows = _parse_json(text, str(path))
        else:
            rows = _parse_csv(text, str(path), "\t" if suffix == ".tsv" else ",")
    if not rows:
        raise SrsumError(f"{path} has no rows")
    return rows


# ---------------------------------------------------------------------------------------------
# plain-text files and folders


def read_article(path: str) -> Example:
    """Read one plain-text article (any extension, or ``"-"`` for stdin) as an Example.

    The id is the file name without its extension (``"stdin"`` for ``-``). Raises SrsumError for a
    missing, unreadable, empty or whitespace-only file.
    """
    if path == "-":
        stream = getattr(sys.stdin, "buffer", None)
        text = _decode(stream.read(), "<stdin>") if stream is not None else sys.stdin.read()
        name, example_id = "<stdin>", "stdin"
    else:
        file = Path(path)
        if file.is_dir():
            raise SrsumError(f"{path} is a folder, not a file")
        text, name = _read_text_file(file), path
        example_id = file.name[: -len(_SUMMARY_SUFFIX)] if file.name.endswith(_SUMMARY_SUFFIX) else file.stem
    if not text.strip():
        raise SrsumError(f"{name} is empty: no article text to summarize")
    return Example(example_id, text.strip(), None)


def _article_files(folder: Path) -> list[Path]:
    """The ``.txt`` files directly inside ``folder`` (not ``*.summary.txt``), sorted; SrsumError if none."""
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() == ".txt" and not p.name.endswith(_SUMMARY_SUFFIX))
    if not files:
        raise SrsumError(f"folder {folder} contains no .txt files")
    return files


def _summary_path(article: Path) -> Path:
    """Where the reference summary of ``NAME.txt`` lives: ``NAME.summary.txt`` beside it."""
    return article.with_name(article.stem + _SUMMARY_SUFFIX)


def _read_paired(article: Path) -> Example:
    """Read ``NAME.txt`` and, if present, its ``NAME.summary.txt`` reference."""
    example = read_article(str(article))
    summary_file = _summary_path(article)
    if summary_file.is_file():
        example.summary = _read_text_file(summary_file).strip()
    return example


def _load_text_folder(folder: Path) -> list[Example]:
    """One Example per ``.txt`` file of ``folder``; warns about summaries with no article."""
    files = _article_files(folder)
    names = {p.name for p in files}
    orphans = sorted(p.name for p in folder.glob("*" + _SUMMARY_SUFFIX)
                     if p.name[: -len(_SUMMARY_SUFFIX)] + ".txt" not in names)
    if orphans:
        warnings.warn(f"{folder}: summaries without a matching article ignored: {', '.join(orphans)}",
                      DataWarning, stacklevel=3)
    return [_read_paired(p) for p in files]


# ---------------------------------------------------------------------------------------------
# the Hub


def _hub_failure(name: str, config: str | None, split: str, error: Exception) -> SrsumError:
    """Build the one-line error for a Hub dataset that could not be loaded."""
    reason = " ".join(str(error).split())[:300] or type(error).__name__
    label = f"{name!r}" + (f" (config {config!r})" if config else "")
    return SrsumError(
        f"could not download or load dataset {label}, split {split!r}, from the Hugging Face Hub: {reason}. "
        "Without network access use a local file instead, e.g. --dataset path/to/file.jsonl "
        "(also .json, .csv, .parquet or a folder of .txt files)" + _offline_hint()
    )


def _offline_hint() -> str:
    from srsum.hub import hub_unreachable_reason, is_offline

    if is_offline():
        return ""
    reason = hub_unreachable_reason()
    return "" if reason is None else (f"; the Hub cannot be reached ({reason}): offline, HF_HUB_OFFLINE=1 and "
                                      "HF_DATASETS_OFFLINE=1 use cached copies without retrying")


def _load_hub(name: str, config: str | None, split: str, text_col: str | None, summary_col: str | None,
              limit: int | None) -> list[Example]:
    """Load ``split`` of a Hub dataset with ``datasets.load_dataset`` and convert it."""
    import datasets

    try:
        dataset = datasets.load_dataset(name, config, split=split)
    except Exception as error:  # no network, unknown repo/config/split, script-only repo, ...
        raise _hub_failure(name, config, split, error) from error
    columns = list(dataset.column_names)
    source = f"dataset {name!r}"
    text_col = _pick_column(columns, text_col, TEXT_COLUMNS, "text", source, required=True)
    summary_col = _pick_column(columns, summary_col, SUMMARY_COLUMNS, "summary", source, required=False)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return _rows_to_examples(dataset, text_col, summary_col, split)


def _hub_spec(source: str) -> DatasetSpec | None:
    """The known spec for a short name or its Hub id, if any."""
    if source in DATASETS:
        return DATASETS[source]
    return next((spec for spec in DATASETS.values() if spec.hub_name == source), None)


def _load_known(spec: DatasetSpec, split: str, text_col: str | None, summary_col: str | None,
                limit: int | None) -> list[Example]:
    """Load a benchmark from :data:`DATASETS`, mapping the split name and using its columns."""
    if split not in spec.splits:
        raise SrsumError(f"unknown split {split!r} for {spec.hub_name}; choose one of: {', '.join(spec.splits)}")
    return _load_hub(spec.hub_name, spec.hub_config, spec.splits[split],
                     text_col or spec.text_column, summary_col or spec.summary_column, limit)


# ---------------------------------------------------------------------------------------------
# entry points


def _load_local(path: Path, split: str, text_col: str | None, summary_col: str | None,
                limit: int | None) -> list[Example]:
    """Load examples from a local file or folder."""
    if path.is_dir():
        examples = _load_text_folder(path)
    elif path.suffix.lower() == ".txt":
        examples = [_read_paired(path)]
    elif path.suffix.lower() in TABLE_SUFFIXES:
        rows = _filter_split(_read_table(path), split, str(path))
        columns = _columns_of(rows)
        text = _pick_column(columns, text_col, TEXT_COLUMNS, "text", str(path), required=True)
        summary = _pick_column(columns, summary_col, SUMMARY_COLUMNS, "summary", str(path), required=False)
        examples = _rows_to_examples(rows, text, summary, path.stem)
    else:
        raise SrsumError(
            f"unsupported file type {path.suffix or '(none)'!r} for {path}; "
            "use .jsonl, .json, .csv, .tsv, .parquet, .txt or a folder of .txt files"
        )
    if limit is not None and len(examples) > limit:
        del examples[limit:]
    return examples


def _looks_like_path(source: str) -> bool:
    """True when ``source`` is meant as a file path rather than a Hub id."""
    return (source.startswith((".", "/", "~")) or Path(source).suffix.lower() in (*TABLE_SUFFIXES, ".txt")
            or not _HUB_ID.match(source))


def load_examples(
    source: str,
    split: str = "test",
    text_column: str | None = None,
    summary_column: str | None = None,
    limit: int | None = None,
) -> list[Example]:
    """Load summarization examples from a benchmark short name, a local file/folder, or a Hub id.

    See the module docstring for the accepted sources, formats, column defaults and the ``split``
    rule. ``limit`` keeps the first ``limit`` examples (after split filtering).

    Raises:
        SrsumError: missing/empty/unreadable file, unknown column or split, unsupported format,
            or a Hub dataset that cannot be downloaded.
    """
    if limit is not None and limit < 1:
        raise SrsumError(f"limit must be a positive number of examples, got {limit}")
    spec = _hub_spec(source)
    if spec is not None:
        return _load_known(spec, split, text_column, summary_column, limit)
    path = Path(source).expanduser()
    if path.exists():
        return _load_local(path, split, text_column, summary_column, limit)
    if _looks_like_path(source):
        raise SrsumError(f"file or folder not found: {source}")
    name, _, config = source.partition(":")
    return _load_hub(name, config or None, split, text_column, summary_column, limit)


@dataclass
class Failure:
    """An input that could not be read or summarized."""

    name: str
    message: str


def collect_articles(paths: Sequence[str], text_column: str | None = None) -> tuple[list[Example], list[Failure]]:
    """Read articles for ``summarize``: each file, folder, table file or ``-`` on its own.

    ``text_column`` names the article column of table files (.jsonl/.json/.csv/.parquet); by default
    the usual names (article, document, text, ...) are tried.

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
                for example in load_examples(str(path), split=ALL_SPLITS, text_column=text_column):
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
