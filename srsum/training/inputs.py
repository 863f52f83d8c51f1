"""The training and validation data: loading a split and tokenizing it."""

from __future__ import annotations

from srsum.data import Example, load_examples
from srsum.errors import SrsumError
from srsum.reporting import Reporter
from srsum.training.config import TrainingConfig



def load_split(config: TrainingConfig, split: str, limit: int | None, what: str) -> list[Example]:
    examples = load_examples(config.dataset, split=split, text_column=config.text_column,
                             summary_column=config.summary_column, limit=limit)
    usable = [e for e in examples if e.summary is not None and e.summary.strip() and e.text.strip()]
    if not usable:
        raise SrsumError(f"{what} split {split!r} of {config.dataset!r} has no examples with both an article and a "
                         "reference summary; name the columns with --text-column/--summary-column")
    return usable


def tokenize_split(tokenizer, model_type: str, examples: list[Example], config: TrainingConfig, reporter: Reporter,
              what: str):
    from srsum.tokenization import encode_examples

    truncated: list[int] = []
    with reporter.progress(f"tokenizing {what}", len(examples)) as advance:
        rows = encode_examples(tokenizer, model_type, [e.text for e in examples], [e.summary for e in examples],
                               config.max_source_length, config.max_target_length,
                               on_truncate=lambda i, length, limit: truncated.append(length), advance=advance)
    if truncated:
        reporter.warn(f"{len(truncated)} of {len(examples)} {what} articles are longer than the max source length "
                      f"{config.max_source_length} (longest {max(truncated)} tokens) and were truncated")
    return rows

