"""How an epoch is cut into optimizer steps and per-process micro-batches, and the summed per-token loss.

An epoch is a fixed permutation of the training rows (seeded by ``seed + epoch``, the same on every process).
A *global micro-batch* is ``batch_size x processes`` consecutive rows of it; process ``r`` takes its
contiguous part (:func:`srsum.training.distributed.shard_bounds`), so the rows of one global micro-batch
are the rows a single process with ``batch_size x processes`` would see, and the last, shorter one is
split as evenly as it goes (a process may get none). An optimizer step is ``gradient_accumulation_steps``
global micro-batches (the last step of an epoch may have fewer).

The loss of a step is the mean over every label token of its global micro-batches, whatever process or
micro-batch holds them: each process backpropagates ``sum of its token losses x processes / all tokens``
and data-parallel averaging of the gradients over the processes gives exactly the single-process gradient.

Nothing here draws from a random generator, so restoring the RNG state of a checkpoint continues the
dropout masks of an uninterrupted run exactly.
"""

from __future__ import annotations

import math

from srsum.training.distributed import shard_bounds

IGNORE_INDEX = -100


def epoch_order(count: int, seed: int, epoch: int) -> list[int]:
    """The order of the ``count`` training rows in ``epoch`` (its own generator; the global RNG is untouched)."""
    import torch

    generator = torch.Generator().manual_seed(seed + epoch)
    return torch.randperm(count, generator=generator).tolist()


def micro_batches(order: list[int], batch_size: int, processes: int, rank: int) -> list[list[int]]:
    """Process ``rank``'s rows of each global micro-batch of ``order`` (a list may be empty at the end)."""
    size = batch_size * processes
    parts = []
    for start in range(0, len(order), size):
        chunk = order[start:start + size]
        low, high = shard_bounds(len(chunk), processes, rank)
        parts.append(chunk[low:high])
    return parts


def steps_per_epoch(count: int, batch_size: int, processes: int, accumulation: int) -> int:
    """Optimizer steps in one epoch of ``count`` rows."""
    return math.ceil(math.ceil(count / (batch_size * processes)) / accumulation)


def step_groups(parts: list[list[int]], accumulation: int) -> list[list[list[int]]]:
    """The micro-batches of each optimizer step of an epoch."""
    return [parts[start:start + accumulation] for start in range(0, len(parts), accumulation)]


def label_tokens(batch) -> int:
    return int((batch["labels"] != IGNORE_INDEX).sum())


def loss_sum(model, batch):
    """The cross-entropy summed over the label tokens of ``batch`` (float32; the model's own mean loss times the
    token count), from the logits of a teacher-forced forward pass."""
    import torch.nn.functional as F

    labels = batch["labels"]
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    core = getattr(model, "module", model)  # DistributedDataParallel keeps the model as .module
    prepare = getattr(core, "prepare_decoder_input_ids_from_labels", None)
    if prepare is not None:
        inputs["decoder_input_ids"] = prepare(labels=labels)
    else:
        inputs["labels"] = labels
    logits = model(**inputs, use_cache=False).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1).to(logits.device),
                           ignore_index=IGNORE_INDEX, reduction="sum")
