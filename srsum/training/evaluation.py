"""Validation (loss and ROUGE after each epoch) and the per-layer memory report of a training run."""

from __future__ import annotations

from typing import Any

from srsum.reporting import Reporter
from srsum.training.batches import label_tokens, loss_sum
from srsum.training.config import TrainingConfig
from srsum.training.distributed import gather_shards, reduce_sums, shard_bounds


def validation(model, tokenizer, rows, examples, config: TrainingConfig, accelerator, reporter: Reporter):
    """Validation loss (per label token) and ROUGE of greedy/beam summaries on the validation sample.

    ``model`` is the unwrapped model. Under several processes each scores its contiguous part of ``rows``;
    the loss sums and token counts are summed and the summaries gathered, so every process returns the
    metrics of the whole sample (the same as one process would)."""
    import torch

    from srsum.metrics import rouge_scores
    from srsum.summarize import SummarizeSettings, generate_summaries  # here: srsum.summarize may use this package
    from srsum.tokenization import Seq2SeqCollator

    batch_size = config.eval_batch_size or config.batch_size
    device = next(model.parameters()).device
    start, end = shard_bounds(len(rows), accelerator.num_processes, accelerator.process_index)
    mine = rows[start:end]
    collator = Seq2SeqCollator(tokenizer.pad_token_id)
    was_training = model.training
    model.eval()
    total_loss, total_tokens = 0.0, 0
    try:
        with torch.no_grad(), accelerator.autocast():
            for first in range(0, len(mine), batch_size):
                batch = {key: value.to(device) for key, value in collator(mine[first:first + batch_size]).items()}
                total_loss += float(loss_sum(model, batch))
                total_tokens += label_tokens(batch)
    finally:
        model.train(was_training)
    settings = SummarizeSettings(num_beams=config.eval_num_beams, max_length=config.max_target_length,
                                  no_repeat_ngram_size=0, batch_size=batch_size)
    predictions: list[str] = []
    if mine:
        with accelerator.autocast():
            predictions = generate_summaries(model, tokenizer, [row.input_ids for row in mine], settings, reporter,
                                             description="validating")
    total_loss, total_tokens = reduce_sums([total_loss, total_tokens], accelerator)
    predictions = gather_shards(predictions, accelerator)
    metrics = {"loss": total_loss / max(total_tokens, 1)}
    metrics.update(rouge_scores(predictions, [e.summary or "" for e in examples]))
    return metrics


def memory_rows(report: list[dict]) -> list[dict[str, Any]]:
    """memory_report rows as saved: the ratio to 4 significant digits (it may be tiny or huge), shares (firing rate,
    clamp saturation; None stays None, rows without one too) to 4 places."""
    def share(row, key):
        return None if row.get(key) is None else round(float(row[key]), 4)

    return [{"layer": int(row["layer"]), "ratio": float(f"{row['ratio']:.4g}"),
             "firing_rate": share(row, "firing_rate"), "clamp_saturation": share(row, "clamp_saturation")}
            for row in report]


def memory_line(title: str, rows: list[dict[str, Any]]) -> str:
    """One line such as ``memory at start: layer 0 ratio 0.05 firing 0.11 | layer 1 ratio 0.05 firing 0.09``, with
    `` clamp-saturated 0.98`` after a layer whose products are clamped."""
    parts = [f"layer {row['layer']} ratio {row['ratio']:.3g}"
             + ("" if row["firing_rate"] is None else f" firing {row['firing_rate']:.2f}")
             + ("" if row.get("clamp_saturation") is None else f" clamp-saturated {row['clamp_saturation']:.2f}")
             for row in rows]
    return f"memory {title}: " + " | ".join(parts)


def clamp_warning(when: str, rows: list[dict[str, Any]], clamp: float | None) -> str | None:
    """The warning for the layers whose clamp saturates more than CLAMP_SATURATED of P (None: no such layer)."""
    from srsum.engine.calibration import CLAMP_SATURATED

    saturated = [row for row in rows if (row.get("clamp_saturation") or 0) > CLAMP_SATURATED]
    if not saturated:
        return None
    first, rest = saturated[0], saturated[1:]
    others = ", ".join(f"{row['clamp_saturation']:.0%} in layer {row['layer']}" for row in rest)
    return (f"memory {when}: the products' clamp (±{clamp:g}) saturates {first['clamp_saturation']:.0%} of P in "
            f"decoder layer {first['layer']}" + (f" ({others})" if others else "")
            + ": the memory carries little; train with --clamp off")


def merge_log(log_history: list[dict[str, Any]], step: int, values: dict[str, Any]) -> None:
    """Add ``values`` to the log entry of ``step`` (the last one, if it is that step's), else a new entry."""
    if log_history and log_history[-1].get("step") == step:
        log_history[-1].update(values)
    else:
        log_history.append({"step": step, **values})


def is_better(metric: str, value: float, best: dict[str, Any] | None) -> bool:
    if best is None:
        return True
    return value < best["value"] if metric == "loss" else value > best["value"]
