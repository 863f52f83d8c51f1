#!/usr/bin/env python
"""Calibration probe: which memory ratio, learning rate of the new parameters and fine-tuning length make a
converted SRformer use its memory (lookup task, tiny T5, one fine-tuning per setting).

Each setting is a JSON object of `run`'s keyword arguments; results are appended to --output as JSON lines.

    python benchmarks/calibration_probe.py --work-dir /tmp/qwork --output docs/quality-calibration-probe/results.jsonl \\
        '{"ratio": 0.05}' '{"ratio": 0.2}' '{"ratio": 0.05, "lr_scale": 10}' '{"ratio": 0.05, "via": "threshold"}'

The pretrained lookup model is the study's (benchmarks/quality.py): it is reused from --work-dir when it is
there (pretrained-t5-lookup-seed0.pt with its .json record) and pretrained there (5,000 steps) otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


def run(work_dir: str, variant: str = "srformer", ratio: float = 0.05, lr_scale: float = 1.0, via: str = "w",
        s: int = 16, seed: int = 0, steps: int = 300, w_init: str = "calibrated") -> dict:
    """Convert the pretrained lookup model, fine-tune it like the study does (AdamW lr 1e-3, batch 8, linear
    schedule, clipping 1.0; W, λ, θ at lr × lr_scale) and score it teacher-forced. ``via="threshold"``
    applies the calibration's factor to θ (θ / c) instead of W: the same outputs at conversion."""
    from srsum.engine import convert
    from srsum.engine.calibration import memory_report, srformer_layers
    from srsum.quality.model import ModelSize, new_t5
    from srsum.quality.study import Job, StudyConfig, checkpoint_path, run_pretrain
    from srsum.quality.tasks import build_task
    from srsum.quality.train import linear_schedule, teacher_forced

    start = time.time()
    config = StudyConfig()
    run_pretrain(Job("lookup", 0, family="t5"), config, work_dir)  # reused when already there
    task = build_task("lookup", config.data_dir)
    model = new_t5(task.vocab_size, ModelSize())
    model.load_state_dict(torch.load(checkpoint_path(work_dir, Job("lookup", 0, family="t5")), weights_only=True))
    calibration_batch = next(task.train_batches(99_000 + seed, 8))
    torch.manual_seed(2_000 + seed)
    model = convert(model, variant, seg_size=s, schedule_length=task.max_target_len, memory_ratio=ratio,
                    w_init=w_init, calibration_batch=calibration_batch)
    record = getattr(model.config, "srformer_calibration", None)
    if via == "threshold" and record:
        with torch.no_grad():
            for layer, row in zip(srformer_layers(model), record["layers"]):
                layer.recurrent_w.weight.div_(row["scale"])
                layer.raf_threshold.div_(row["scale"])
    new = [p for n, p in model.named_parameters() if "recurrent_w" in n or "raf_" in n]
    old = [p for n, p in model.named_parameters() if not ("recurrent_w" in n or "raf_" in n)]
    optimizer = torch.optim.AdamW([{"params": old}, {"params": new, "lr": 1e-3 * lr_scale}], lr=1e-3,
                                  weight_decay=0.01)
    schedule = linear_schedule(optimizer, steps)
    batches = task.train_batches(2_000 + seed, 8)
    model.train()
    first = None
    for _ in range(steps):
        batch = next(batches)
        loss = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                     decoder_input_ids=batch.decoder_input_ids, labels=batch.labels).loss
        first = loss.item() if first is None else first
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
    memory = memory_report(model, next(task.eval_batches(64)))
    scores = teacher_forced(model, task, batch_size=64, device="cpu")
    layers = [layer for layer in srformer_layers(model) if hasattr(layer, "raf_threshold")]
    return {"variant": variant, "ratio": ratio, "lr_scale": lr_scale, "via": via, "s": s, "seed": seed,
            "steps": steps, "w_init": w_init, "first_loss": first, "final_loss": loss.item(), **scores,
            "mem_after": memory, "theta": [round(float(layer.raf_threshold.detach()), 4) for layer in layers],
            "leak": [round(float(layer.raf_leak.detach()), 4) for layer in layers],
            "calib": record and [(row["ratio"], row["firing_rate"]) for row in record["layers"]],
            "sec": time.time() - start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("settings", nargs="+", help="JSON objects of run()'s keyword arguments")
    parser.add_argument("--work-dir", required=True, help="where the pretrained lookup model is (or goes)")
    parser.add_argument("--output", type=Path, required=True, help="JSON-lines file the results are appended to")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        settings = [json.loads(text) for text in args.settings]
    except json.JSONDecodeError as err:
        print(f"error: a setting is not JSON: {err}", file=sys.stderr)
        return 2
    args.output.parent.mkdir(parents=True, exist_ok=True)
    for kwargs in settings:
        result = run(args.work_dir, **kwargs)
        print(json.dumps(result), flush=True)
        with args.output.open("a", encoding="utf-8") as out:
            out.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
