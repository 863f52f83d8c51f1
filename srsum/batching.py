"""How many articles are summarized together: a fixed ``--batch-size``, or ``auto``, the most that fit.

Batches run longest first, and a batch is padded to its first (longest) article, so under ``auto`` each batch
takes as many of the next articles as the memory left holds at that article's length: few long articles per
batch at the start, more short ones later. The per-article figure is an estimate of what summarizing one
article adds on top of the model (``article_bytes``); ``auto`` fills only ``AUTO_SHARE`` of the memory left
with it, leaving the rest for what the estimate leaves out (the allocator's slack, weight copies, the
tokenizer's output).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from .errors import UsageError

AUTO = "auto"
AUTO_SHARE = 0.5  # of the memory left that auto batches may fill
MAX_AUTO_BATCH = 64  # beyond this a CPU or GPU gains little from a larger batch and a bad estimate costs more


def parse_batch_size(value) -> int | str:
    """``--batch-size``: a positive integer or "auto"; a one-line UsageError for anything else."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    try:
        size = int(value)
    except (TypeError, ValueError):
        size = 0
    if isinstance(value, bool) or size < 1 or str(size) != str(value).strip():
        raise UsageError(f"--batch-size must be a positive number of articles or auto, got {value!r}")
    return size


def memory_left(device) -> int:
    """Bytes free for this job: a GPU's free memory, or the kernel's MemAvailable on CPU."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _dims(config) -> tuple[int, int, int, int, int]:
    """(D, encoder heads, feed-forward width, decoder layers, vocabulary) of a T5 or BART config."""
    heads = getattr(config, "encoder_attention_heads", None) or config.num_heads
    d_ff = getattr(config, "encoder_ffn_dim", None) or config.d_ff
    layers = getattr(config, "decoder_layers", None) or getattr(config, "num_decoder_layers", None) or config.num_layers
    return config.d_model, heads, d_ff, layers, config.vocab_size


def article_bytes(config, n: int, rows: int, steps: int, element_bytes: int, encoder_block: int | None) -> int:
    """Estimated peak bytes one article of n tokens adds while it is summarized with ``rows`` decoder rows (its
    beams) for ``steps`` tokens: the encoder's attention scores for one block of queries (float32) and its
    n x (4D + d_ff) activations, the decode state (each cross-attention layer's keys and values, 2 n D), the
    self-attention cache (2 rows steps D per layer) and the logits (rows x vocabulary, float32, twice)."""
    d_model, heads, d_ff, layers, vocab = _dims(config)
    block = min(n, encoder_block or n)
    encoder = heads * block * n * 4 + n * (4 * d_model + d_ff) * element_bytes
    state = layers * 2 * n * d_model * element_bytes
    cache = layers * 2 * rows * steps * d_model * element_bytes
    return encoder + state + cache + 2 * rows * vocab * 4


def batch_sizes(lengths: Sequence[int], batch_size: int | str, cost: Callable[[int], int] | None = None,
                budget: int | None = None) -> list[int]:
    """Sizes of consecutive batches over ``lengths`` (longest first). A fixed size: chunks of it. ``auto``: each
    batch as many articles as ``budget`` bytes hold at ``cost(its first article's length)`` (at least 1, at most
    ``MAX_AUTO_BATCH``)."""
    sizes, start = [], 0
    while start < len(lengths):
        if batch_size == AUTO:
            fits = int(budget // max(cost(lengths[start]), 1))
            size = max(1, min(MAX_AUTO_BATCH, fits))
        else:
            size = int(batch_size)
        size = min(size, len(lengths) - start)
        sizes.append(size)
        start += size
    return sizes
