"""What a run trained on, recorded in every checkpoint (``data`` in trainer_state.json) so that ``--resume`` can
tell when the training data changed since.

A local dataset (a file, or a folder of .txt files) is fingerprinted by its files: path, size, modification time
and a hash of the first and last megabyte of each. A Hub dataset by its name, config and split. Both also record
how many training rows were read.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from srsum.errors import SrsumError

EDGE_BYTES = 1 << 20  # hashed at the start and at the end of each file
MAX_NAMED = 3  # changed files named in a message


def _edges_hash(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as stream:
            digest.update(stream.read(EDGE_BYTES))
            if size > EDGE_BYTES:
                stream.seek(max(EDGE_BYTES, size - EDGE_BYTES))
                digest.update(stream.read(EDGE_BYTES))
    except OSError as error:
        raise SrsumError(f"cannot read {path}: {error.strerror or error}") from None
    return digest.hexdigest()


def file_fingerprint(path: Path) -> dict[str, Any]:
    info = path.stat()
    return {"path": str(path.resolve()), "size": info.st_size, "mtime_ns": info.st_mtime_ns,
            "edges_sha256": _edges_hash(path, info.st_size)}


def _local_files(path: Path) -> list[Path]:
    """The files a local dataset is read from: the file; or a folder's .txt files (articles and summaries)."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".txt")
    if path.suffix.lower() == ".txt":
        from srsum.data import _summary_path

        return [path] + [summary for summary in [_summary_path(path)] if summary.is_file()]
    return [path]


def data_fingerprint(dataset: str, split: str, rows: int) -> dict[str, Any]:
    """The fingerprint of ``split`` of ``dataset`` (a local path, a known name or a Hub id) of which ``rows``
    training rows were read."""
    from srsum.data import _hub_spec

    spec = _hub_spec(dataset)
    path = Path(dataset).expanduser()
    if spec is None and path.exists():
        return {"kind": "local", "split": split, "rows": rows,
                "files": [file_fingerprint(file) for file in _local_files(path)]}
    if spec is not None:
        name, config = spec.hub_name, spec.hub_config
    else:
        name, _, config = dataset.partition(":")
    return {"kind": "hub", "name": name, "config": config or None, "split": split, "rows": rows}


def _file_change(saved: dict[str, Any], now: dict[str, Any]) -> str | None:
    parts = []
    if saved.get("size") != now["size"]:
        parts.append(f"size {saved.get('size')} -> {now['size']} bytes")
    if saved.get("edges_sha256") != now["edges_sha256"]:
        parts.append("content")
    if saved.get("mtime_ns") != now["mtime_ns"]:
        parts.append("modification time")
    return f"{now['path']} ({', '.join(parts)} changed)" if parts else None


def describe_change(saved: dict[str, Any], now: dict[str, Any]) -> str | None:
    """What differs between two fingerprints, in words (None when nothing does)."""
    if saved.get("kind") != now["kind"]:
        return f"the dataset was a {saved.get('kind')} one, now it is a {now['kind']} one"
    changes = []
    if now["kind"] == "hub":
        changes += [f"{key} {saved.get(key)!r} -> {now[key]!r}" for key in ("name", "config", "split")
                    if saved.get(key) != now[key]]
    else:
        before = {item.get("path"): item for item in saved.get("files", [])}
        after = {item["path"]: item for item in now["files"]}
        gone, added = sorted(set(before) - set(after)), sorted(set(after) - set(before))
        changed = [text for path in sorted(set(before) & set(after))
                   if (text := _file_change(before[path], after[path])) is not None]
        for label, items in (("missing", gone), ("new", added), ("changed", changed)):
            if items:
                more = f" and {len(items) - MAX_NAMED} more" if len(items) > MAX_NAMED else ""
                changes.append(f"{label}: {'; '.join(items[:MAX_NAMED])}{more}")
    if saved.get("rows") != now["rows"]:
        changes.append(f"training rows {saved.get('rows')} -> {now['rows']}")
    return "; ".join(changes) or None
