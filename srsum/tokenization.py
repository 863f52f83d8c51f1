"""Tokenizers and batches for training, evaluation and summarization.

One rule for every command: the source is ``source_prefix(model) + text`` (the model's own summarization
prefix, else "summarize: " for T5),
truncated to the max source length; a truncated article is reported through ``on_truncate`` with its
real and its allowed length.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from srsum.data import source_prefix
from srsum.errors import SrsumError, UsageError

DEFAULT_MAX_SOURCE_LENGTH = 1024
DEFAULT_MAX_TARGET_LENGTH = 128


def load_tokenizer(path_or_name: str | Path):
    """``AutoTokenizer.from_pretrained`` with a one-line SrsumError when there is no usable tokenizer."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path_or_name))
    except Exception as error:  # OSError, ValueError, missing sentencepiece files, ...
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        raise SrsumError(f"model: cannot load a tokenizer from {str(path_or_name)!r} ({reason}); "
                         "a model folder needs its tokenizer files beside config.json") from None


def max_source_limit(model) -> int | None:
    """The longest input the model can take (BART: its position embeddings; T5: no limit)."""
    config = model.config
    if "bart" in config.model_type:
        return int(config.max_position_embeddings)
    return None


def resolve_max_source_length(model, requested: int | None, default: int = DEFAULT_MAX_SOURCE_LENGTH) -> int:
    """``requested`` (or ``default``), checked against what the model can take."""
    limit = max_source_limit(model)
    if requested is None:
        return default if limit is None else min(default, limit)
    if requested < 1:
        raise UsageError(f"--max-source-length must be a positive number of tokens, got {requested}")
    if limit is not None and requested > limit:
        raise UsageError(f"--max-source-length {requested} is longer than this model's {limit} positions")
    return requested


@dataclass
class Encoded:
    """One tokenized example: ids of the (prefixed, truncated) source, and labels when there is a summary."""

    input_ids: list[int]
    source_length: int  # tokens before truncation
    labels: list[int] | None = None


# A token of the supported tokenizers spans at most a few dozen characters (runs of spaces collapse
# first), so the first max_source_length tokens lie within this many characters per token.
CHARS_PER_TOKEN_BOUND = 64


def clip_chars(max_source_length: int) -> int:
    """Characters of an article that are tokenized at most: a 50 MB article costs what its head costs."""
    return max_source_length * CHARS_PER_TOKEN_BOUND


def encode_sources(tokenizer, model: Any, texts: Sequence[str], max_source_length: int) -> list[tuple[list[int], int]]:
    """Token ids of ``prefix + text`` truncated to ``max_source_length`` (end token kept), with the full length.

    A text longer than :func:`clip_chars` characters is tokenized only that far; its full length is then
    estimated from the tokens per character of that head (exact for every shorter text). Should the head
    give too few tokens (a text of very long tokens), the whole text is tokenized after all.
    """
    prefix = source_prefix(model)  # model: its config or its model_type name
    limit = clip_chars(max_source_length)
    heads = [text[:limit] for text in texts]
    encoded = _token_ids(tokenizer, [prefix + head for head in heads])
    results = []
    for text, head, ids in zip(texts, heads, encoded):
        full = len(ids)
        if len(head) < len(text):
            if full > max_source_length:
                full = max(full + 1, round(full * len(text) / len(head)))
            else:
                ids = _token_ids(tokenizer, [prefix + text])[0]
                full = len(ids)
        if full > max_source_length:
            ids = ids[: max_source_length - 1] + ids[-1:] if max_source_length > 1 else ids[:1]
        results.append((list(ids), full))
    return results


def _token_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, truncation=False, add_special_tokens=True, verbose=False)["input_ids"]


def encode_examples(tokenizer, model: Any, texts: Sequence[str], summaries: Sequence[str | None] | None,
                    max_source_length: int, max_target_length: int | None = None,
                    on_truncate: Callable[[int, int, int], None] | None = None,
                    batch_size: int = 64, advance: Callable[[int], None] | None = None) -> list[Encoded]:
    """Tokenize sources (and summaries) in chunks of ``batch_size``; ``advance(k)`` after each chunk.

    ``on_truncate(index, length, max_source_length)`` is called for every source that was cut.
    """
    results: list[Encoded] = []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start:start + batch_size])
        sources = encode_sources(tokenizer, model, chunk, max_source_length)
        labels: list[list[int] | None] = [None] * len(chunk)
        if summaries is not None:
            targets = list(summaries[start:start + batch_size])
            wanted = [i for i, target in enumerate(targets) if target is not None]
            if wanted:
                ids = tokenizer(text_target=[targets[i] for i in wanted], truncation=True,
                                max_length=max_target_length or DEFAULT_MAX_TARGET_LENGTH)["input_ids"]
                for i, row in zip(wanted, ids):
                    labels[i] = list(row)
        for offset, ((input_ids, full), label) in enumerate(zip(sources, labels)):
            if full > max_source_length and on_truncate is not None:
                on_truncate(start + offset, full, max_source_length)
            results.append(Encoded(input_ids, full, label))
        if advance is not None:
            advance(len(chunk))
    return results


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists into (ids, attention mask) tensors."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


class Seq2SeqCollator:
    """Collate :class:`Encoded` rows into ``input_ids``, ``attention_mask`` and ``labels`` (pad = -100)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: Sequence[Encoded]) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = pad_batch([row.input_ids for row in rows], self.pad_id)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if all(row.labels is not None for row in rows):
            labels, label_mask = pad_batch([row.labels for row in rows], self.pad_id)
            batch["labels"] = labels.masked_fill(label_mask == 0, -100)
        return batch
