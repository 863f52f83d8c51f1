#!/usr/bin/env python
"""Probe of one hypothesis for BART's deficit (issue 26): the memory's products and ν from *centred* keys and values.

On the study's pretrained BART the rank-one mean term (n - s) k̄ v̄ᵀ is 62-66% of ||C_σ|| (k̄, v̄ the mean key and
value of the example; the projection biases themselves are ~0.1% of the keys' size), the same for every segment,
and n k̄² is 17-25% of ν². Centring subtracts k̄ and v̄ from every real key and value before P, P_σ and ν; the
local softmax keeps the raw keys. This probe patches the engine's teacher-forced path (and the calibration that
runs through it) only, so it reports the teacher-forced score, the study's headline; srsum's decoder is not
patched and its generated score is left out. One seed per call, the study's protocol otherwise:

    python benchmarks/centring_probe.py --family bart --task lookup --seg-size 16 --seed 0 --freeze-encoder \\
        --work-dir /work/qwork            # a work dir holding the study's pretrained model
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch

import srsum.engine.parallel as parallel
import srsum.engine.calibration as calibration
from srsum.engine import ops


def centred(seg: ops.SegmentedKeys) -> ops.SegmentedKeys:
    """The segmented keys and values minus each example's mean real key and value (padding rows stay zero)."""
    real = seg.key_valid[:, None, :, None].to(seg.keys.dtype)  # (B, 1, n', 1)
    count = real.sum(2, keepdim=True)
    keys = (seg.keys - (seg.keys * real).sum(2, keepdim=True) / count) * real
    values = (seg.values - (seg.values * real).sum(2, keepdim=True) / count) * real
    return dataclasses.replace(seg, keys=keys, values=values)


def centred_parallel_terms(query, keys, values, key_valid, settings, layer, dropout=0.0, training=False,
                           local_reference=False):
    """parallel.parallel_terms with the recurrent term read from centred keys and values."""
    seg = ops.segment_keys(keys, values, key_valid, settings.seg_size)
    positions = torch.arange(query.shape[2], device=query.device)
    groups = ops.group_steps(ops.segment_of_step(positions, seg.n_segments, settings.schedule_length))
    terms = parallel.ParallelTerms(groups, ops.to_groups(query, groups))
    if settings.has_local or local_reference:
        variant = settings.attention if settings.has_local else "segmented"
        keys_g, values_g, valid_g = ops.segment_context(seg, variant, groups.segment_of_group)
        terms.local = ops.softmax_attention(terms.grouped_query, keys_g, values_g, valid_g, dropout, training)
    if settings.has_recurrent:
        memory = centred(seg)
        terms.raf_inputs = parallel.recurrent_inputs(memory, groups.segment_of_group, settings, layer)
        terms.recurrent = parallel.recurrent_from_inputs(*terms.raf_inputs, settings, layer)
        terms.norm = None if settings.attention == "no_norm" else ops.key_norm(memory.keys)[:, :, None, None, :]
        terms.rec = ops.recurrent_output(terms.grouped_query, terms.recurrent, terms.norm)
    return terms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default="bart")
    parser.add_argument("--task", default="lookup")
    parser.add_argument("--seg-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--finetune-steps", type=int, default=600)
    parser.add_argument("--freeze-encoder", action="store_true")
    parser.add_argument("--plain", action="store_true", help="do not centre (the same run without the patch)")
    parser.add_argument("--work-dir", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not args.plain:
        parallel.parallel_terms = calibration.parallel_terms = centred_parallel_terms
    from srsum.quality.study import Job, StudyConfig, run_finetune

    config = StudyConfig(families=(args.family,), finetune_steps=args.finetune_steps,
                         freeze_encoder=args.freeze_encoder)
    record = run_finetune(Job(args.task, args.seed, "srformer", args.seg_size, args.family), config, args.work_dir)
    keep = ("family", "task", "seed", "seg_size", "score", "first_loss", "final_loss", "memory_after")
    print(json.dumps({"centred": not args.plain, **{key: record.get(key) for key in keep}}), flush=True)


if __name__ == "__main__":
    main()
