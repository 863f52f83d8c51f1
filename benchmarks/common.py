"""Shapes and helpers the benchmark scripts share: random models with real model shapes (no weights)."""

from __future__ import annotations

import os
import platform
import time

import torch
from transformers import BartConfig, BartForConditionalGeneration, T5Config, T5ForConditionalGeneration

# Shapes of the public checkpoints (their config.json); weights are random: speed does not depend on them.
T5_SMALL = dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_decoder_layers=6,
                num_heads=8, dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
BART_BASE = dict(vocab_size=50265, d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                 decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072,
                 max_position_embeddings=16384 + 2, dropout=0.0, attention_dropout=0.0, pad_token_id=1,
                 bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None)


def random_model(shape: str = "t5-small", seed: int = 0, dtype=torch.float32, device="cpu"):
    """A randomly initialised t5-small or bart-base shaped model (eval mode)."""
    torch.manual_seed(seed)
    if shape == "t5-small":
        model = T5ForConditionalGeneration(T5Config(**T5_SMALL))
    elif shape == "bart-base":
        model = BartForConditionalGeneration(BartConfig(**BART_BASE))
    else:
        raise ValueError(f"shape: unknown {shape!r}; allowed: t5-small, bart-base")
    model.generation_config.eos_token_id = None  # random weights: never stop early, decode every step
    model.generation_config.forced_eos_token_id = None
    return model.to(device=device, dtype=dtype).eval()


def machine() -> str:
    """The machine line of every benchmark: the CPU by name with what decides the number formats (AMX,
    AVX512-BF16, VNNI: srsum.precision), cores, torch, threads, and the GPU if any."""
    from srsum.precision import cpu_features

    features = cpu_features()
    cpu = f"{features.name or platform.machine()} ({features.describe()})"
    text = f"{platform.system()} {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


def sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def best_of(run, repeats: int = 3, device="cpu", warmup: int = 1) -> float:
    """Minimum wall time of ``run()`` over ``repeats`` (after ``warmup`` untimed calls), seconds."""
    for _ in range(warmup):
        run()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
