"""``srsum convert``'s library side: a pretrained T5/BART summarizer becomes an SRformer checkpoint without
fine-tuning. Convert (W calibrated on the first batch of the data), then optionally attention transfer
(``srsum.engine.transfer``) on the data's articles, then save model, tokenizer and ``transfer.json`` atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from srsum.errors import SrsumError
from srsum.reporting import Reporter

TRANSFER_FILE = "transfer.json"


@dataclass
class ConvertSettings:
    """What ``srsum convert`` was asked for (None: the engine's default)."""

    model: str
    output: str
    attention: str = "srformer"
    seg_size: int = 64
    schedule_length: int | None = None  # G; default: max_target_length
    clamp: float | None = None
    memory_ratio: float | None = None
    data: str | None = None
    split: str = "all"
    text_column: str | None = None
    summary_column: str | None = None
    limit: int | None = None
    transfer_steps: int = 0
    transfer_lr: float | None = None
    batch_size: int = 8
    max_source_length: int = 1024
    max_target_length: int = 128
    use_labels: bool = True  # reference summaries as decoder inputs where the data has them
    seed: int = 0

    def check(self) -> None:
        for name in ("seg_size", "batch_size", "max_source_length", "max_target_length"):
            if getattr(self, name) < 1:
                raise SrsumError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.transfer_steps < 0:
            raise SrsumError(f"--transfer-steps must be at least 0, got {self.transfer_steps}")
        if self.transfer_steps and self.data is None:
            raise SrsumError("--transfer-steps needs --data (articles to transfer on)")
        if self.transfer_lr is not None and not self.transfer_lr > 0:
            raise SrsumError(f"--transfer-lr must be positive, got {self.transfer_lr}")
        if self.limit is not None and self.limit < 1:
            raise SrsumError(f"--limit must be at least 1, got {self.limit}")


@dataclass
class ConvertResult:
    output: Path
    attention: str
    seg_size: int
    articles: int
    transfer: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"output": str(self.output), "attention": self.attention, "seg_size": self.seg_size,
                "articles": self.articles, "transfer": self.transfer}


def _batches(settings: ConvertSettings, tokenizer, model_config, reporter: Reporter) -> tuple[list[dict], int]:
    """The data's articles as batches (labels where the data has reference summaries and use_labels)."""
    from srsum.data import load_examples
    from srsum.tokenization import Seq2SeqCollator, encode_examples

    examples = [e for e in load_examples(settings.data, split=settings.split, text_column=settings.text_column,
                                         summary_column=settings.summary_column, limit=settings.limit)
                if e.text.strip()]
    if not examples:
        raise SrsumError(f"--data {settings.data}: no articles to convert on")
    summaries = [e.summary if settings.use_labels and e.summary and e.summary.strip() else None for e in examples]
    with reporter.progress("tokenizing", len(examples)) as advance:
        rows = encode_examples(tokenizer, model_config, [e.text for e in examples], summaries,
                               settings.max_source_length, settings.max_target_length, advance=advance)
    rows.sort(key=lambda row: len(row.input_ids), reverse=True)  # similar lengths together: less padding
    collate = Seq2SeqCollator(tokenizer.pad_token_id)
    return [collate(rows[i:i + settings.batch_size]) for i in range(0, len(rows), settings.batch_size)], len(rows)


def convert_model(settings: ConvertSettings, reporter: Reporter | None = None) -> ConvertResult:
    """Convert ``settings.model`` to ``settings.attention`` and save it to ``settings.output`` (see module)."""
    import torch

    from srsum.checkpoints import atomic_dir, write_new_file
    from srsum.engine import load_config, load_model
    from srsum.engine.transfer import DEFAULT_TRANSFER_LR, memory_parameters, transfer_attention
    from srsum.tokenization import load_tokenizer

    reporter = reporter or Reporter()
    settings.check()
    config = load_config(settings.model)
    if getattr(config, "model_type", "").startswith("srformer_"):
        raise SrsumError(f"{settings.model} is already an srsum checkpoint; convert a plain T5/BART model")
    tokenizer = load_tokenizer(settings.model)
    torch.manual_seed(settings.seed)
    batches, articles = ([], 0) if settings.data is None else _batches(settings, tokenizer, config, reporter)
    extra = {"memory_ratio": settings.memory_ratio} if settings.memory_ratio is not None else {}
    model = load_model(settings.model, attention=settings.attention, seg_size=settings.seg_size,
                       dtype=torch.float32, schedule_length=settings.schedule_length or settings.max_target_length,
                       clamp=settings.clamp, calibration_batch=batches[0] if batches else None, **extra)
    transfer = None
    if settings.transfer_steps:
        if not memory_parameters(model):
            raise SrsumError(f"--attention {settings.attention} has no memory to transfer to; use srformer (or "
                             "an ablation with a recurrent term)")
        with reporter.progress("attention transfer", settings.transfer_steps) as advance:
            result = transfer_attention(model, batches, settings.transfer_steps,
                                        settings.transfer_lr or DEFAULT_TRANSFER_LR,
                                        max_new_tokens=settings.max_target_length, advance=advance)
        transfer = {**result.summary(), "data": settings.data}
    output = Path(settings.output)
    if output.exists() and not output.is_dir():
        raise SrsumError(f"--output {output} exists and is not a folder")
    with atomic_dir(output) as folder:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        if transfer is not None:
            write_new_file(folder / TRANSFER_FILE, json.dumps(transfer, indent=2) + "\n")
    return ConvertResult(output=output, attention=model.config.srformer_attention, seg_size=settings.seg_size,
                         articles=articles, transfer=transfer, calibration=model.config.srformer_calibration)

