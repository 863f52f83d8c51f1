#!/usr/bin/env python
"""Attention transfer alone, no fine-tuning, on the quality study's pretrained model (issue 26): the per-layer error
||SRformer output - full output|| / ||full output|| before and after, and W's norm, λ and θ before and after.

    python benchmarks/transfer_probe.py bart lookup 16 --variant no_raf --lr 0.2 --steps 300 --work-dir /work/qwork

Converted as the study converts (clamp off, W calibrated on the seed's first fine-tuning batch) and transferred on
16 training batches of 8 of a stream of their own, as the study's '+transfer' variants are.
"""

from __future__ import annotations

import argparse

import torch

from srsum.engine.calibration import srformer_layers
from srsum.engine.transfer import transfer_attention
from srsum.quality.model import new_model, to_variant
from srsum.quality.study import Job, StudyConfig, checkpoint_path
from srsum.quality.tasks import build_task


def parameters(model) -> list[tuple[float, float | None, float | None]]:
    """(||W||, λ, θ) per layer."""
    return [(round(layer.recurrent_w.weight.norm().item(), 5),
             round(layer.raf_leak.item(), 4) if hasattr(layer, "raf_leak") else None,
             round(layer.raf_threshold.item(), 4) if hasattr(layer, "raf_threshold") else None)
            for layer in srformer_layers(model)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("family")
    parser.add_argument("task")
    parser.add_argument("seg_size", type=int)
    parser.add_argument("--variant", default="srformer")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = StudyConfig(families=(args.family,))
    task = build_task(args.task, config.data_dir)
    model = new_model(args.family, task.vocab_size, config.size, task.max_source_len)
    model.load_state_dict(torch.load(checkpoint_path(args.work_dir, Job(args.task, 0, family=args.family)),
                                     weights_only=True))
    calibration_batch = next(task.train_batches(2_000 + args.seed, config.batch_size))
    stream = task.train_batches(3_000 + args.seed, config.batch_size)
    batches = [vars(next(stream)) for _ in range(config.transfer_batches)]
    torch.manual_seed(2_000 + args.seed)
    model = to_variant(model, args.variant, args.seg_size, task.max_target_len, calibration_batch=calibration_batch,
                       clamp=None)
    before = parameters(model)
    result = transfer_attention(model, batches, args.steps, args.lr)
    print(f"{args.family} {args.task} s {args.seg_size} {args.variant} lr {args.lr} steps {args.steps} seed {args.seed}")
    print(f"  error per layer: {[round(e, 3) for e in result.layer_error_before]} -> "
          f"{[round(e, 3) for e in result.layer_error_after]}; loss {result.losses[0]:.3f} -> min {min(result.losses):.3f}")
    print(f"  (||W||, λ, θ) per layer: {before} -> {parameters(model)}; {result.seconds:.0f} s")


if __name__ == "__main__":
    main()
