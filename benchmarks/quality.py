#!/usr/bin/env python
"""Quality study: what SRformer's recurrent attention recovers from segmented cross-attention.

Pretrain a small full-attention T5 (and/or BART) per task and seed, convert it to each cross-attention variant with
srsum's own conversion, fine-tune every variant for the same budget, score it on held-out examples, and
write results.json, RESULTS.md and a plot into --output-dir.

    python benchmarks/quality.py --output-dir out/quality --workers 2          # the full sweep
    python benchmarks/quality.py --smoke --output-dir out/quality-smoke         # pipeline check, < 1 min
    python benchmarks/quality.py --from-json out/quality/results.json --output-dir docs
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from srsum.errors import SrsumError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--output-dir", type=Path, required=True, help="where results.json, RESULTS.md and the PNG go")
    p.add_argument("--from-json", type=Path, help="only regenerate RESULTS.md and the PNG from this results file")
    p.add_argument("--smoke", action="store_true", help="tiny budget, one seed, a few variants (CI)")
    p.add_argument("--tasks", help="comma-separated: lookup,recall,entities (default lookup,recall)")
    p.add_argument("--families", help="comma-separated model families: t5,bart (default t5)")
    p.add_argument("--variants", help="comma-separated main variants: full,segmented,srformer,xl,global")
    p.add_argument("--seg-sizes", help="comma-separated segment sizes, e.g. 8,16,64")
    p.add_argument("--ablations", help="comma-separated: srformer_paper,no_local,no_norm,no_raf,full_product "
                                       "('none' for none; default all five)")
    p.add_argument("--ablation-seg-size", type=int)
    p.add_argument("--seeds", type=int)
    p.add_argument("--first-seed", type=int, help="run seeds first..first+seeds-1 (default 0): add seeds to a sweep "
                                                  "and merge the results (benchmarks/merge_quality.py)")
    p.add_argument("--pretrain-per-seed", action="store_true", default=None,
                   help="pretrain a separate full-attention model for every seed (default: one per task)")
    p.add_argument("--pretrain-steps", type=int,
                   help="default: each task's own (lookup 5000, recall 8000, entities 4000)")
    p.add_argument("--pretrain-batch-size", type=int)
    p.add_argument("--finetune-steps", type=int,
                   help="0: score every variant right after conversion (and transfer), reported as a section of "
                        "its own, 'not fine-tuned'")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--pretrain-lr", type=float)
    p.add_argument("--finetune-lr", type=float)
    p.add_argument("--threshold-init", type=float, help="initial RAF threshold θ (default: the SPEC's 0.1)")
    p.add_argument("--leak-init", type=float, help="initial RAF leak λ (default: the family's, T5 0.1, BART 0.5)")
    p.add_argument("--memory-ratio", type=float,
                   help="calibrated ||rec|| / ||local|| at conversion (default: the engine's, 0.05)")
    p.add_argument("--new-param-lr-scale", type=float,
                   help="learning rate of SRformer's new W, λ, θ as a multiple of --finetune-lr (default 1)")
    p.add_argument("--transfer-steps", type=int,
                   help="attention-transfer steps of the '+transfer' variants (e.g. srformer+transfer) before "
                        "fine-tuning (default 300)")
    p.add_argument("--transfer-lr", type=float, help="attention transfer's learning rate (default: the engine's)")
    p.add_argument("--transfer-batches", type=int, help="training batches the transfer cycles over (default 16)")
    p.add_argument("--freeze-encoder", action="store_true", default=None,
                   help="fine-tune every variant with the encoder frozen (reported as a family section of its own)")
    p.add_argument("--num-heads", type=int,
                   help="attention heads of the small models (default 4: T5 heads 32 wide, BART's d_model/heads = 16); "
                        "a non-default count is reported as a section of its own")
    p.add_argument("--clamp", help="the recurrent products' clamp: 'off', or a bound (default: the family's, "
                                    "BART +-2, T5 none); a non-default clamp is reported as a section of its own")
    p.add_argument("--eval-limit", type=int, help="score only the first N held-out examples")
    p.add_argument("--data-dir", help="folder holding cnn_dailymail/, xsum/, arxiv/, mediasum/ (default ../shared/data)")
    p.add_argument("--device", help="cpu or cuda")
    p.add_argument("--workers", type=int, default=1, help="parallel processes, one torch thread each")
    p.add_argument("--work-dir", help="where pretrained checkpoints go (default: a temporary folder)")
    return p.parse_args(argv)


def split(text: str | None, cast=str):
    if text is None:
        return None
    if text.strip().lower() == "none":
        return ()
    try:
        return tuple(cast(x.strip()) for x in text.split(",") if x.strip())
    except ValueError as err:
        raise SrsumError(f"cannot read the list {text!r}: {err}") from err


def config_from(args: argparse.Namespace):
    from srsum.quality.study import StudyConfig, smoke_config

    config = smoke_config() if args.smoke else StudyConfig()
    overrides = {"tasks": split(args.tasks), "variants": split(args.variants),
                 "seg_sizes": split(args.seg_sizes, int), "ablations": split(args.ablations),
                 "ablation_seg_size": args.ablation_seg_size, "seeds": args.seeds, "first_seed": args.first_seed,
                 "pretrain_per_seed": args.pretrain_per_seed,
                 "pretrain_steps": args.pretrain_steps,
                 "pretrain_batch_size": args.pretrain_batch_size, "finetune_steps": args.finetune_steps,
                 "batch_size": args.batch_size, "pretrain_lr": args.pretrain_lr, "finetune_lr": args.finetune_lr,
                 "eval_limit": args.eval_limit, "threshold_init": args.threshold_init,
                 "leak_init": args.leak_init,
                 "memory_ratio": args.memory_ratio, "new_param_lr_scale": args.new_param_lr_scale,
                 "freeze_encoder": args.freeze_encoder, "transfer_steps": args.transfer_steps,
                 "transfer_lr": args.transfer_lr, "transfer_batches": args.transfer_batches,
                 "families": split(args.families), "data_dir": args.data_dir, "device": args.device}
    if args.num_heads is not None:
        if args.num_heads < 1 or config.size.d_model % args.num_heads:
            raise SrsumError(f"--num-heads must divide d_model {config.size.d_model}, got {args.num_heads}")
        overrides["size"] = replace(config.size, num_heads=args.num_heads)
        overrides["model_tag"] = f"{args.num_heads}-heads"
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    tags = []
    if args.clamp is not None:
        from srsum.engine.settings import clamp_from_text

        config = replace(config, clamp=clamp_from_text(args.clamp))
        tags.append(f"clamp-{args.clamp}")
    # every other non-default conversion or fine-tuning of the new parameters is a report section of its own
    for value, tag in ((args.leak_init, "leak-{}"), (args.threshold_init, "threshold-{}"),
                       (args.memory_ratio, "ratio-{}"), (args.new_param_lr_scale, "new-lr-x{}")):
        if value:
            tags.append(tag.format(value))
    if config.finetune_steps == 0:
        tags.append(NOT_FINE_TUNED)
    return replace(config, conversion_tag="+".join(tags)) if tags else config


NOT_FINE_TUNED = "not-fine-tuned"  # the report's section of models scored right after conversion


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        from srsum.quality.report import load_results, write_report

        if args.from_json:
            md, png = write_report(load_results(args.from_json), args.output_dir)
            print(f"wrote {md} and {png}")
            return 0
        from srsum.quality.study import run_study

        config = config_from(args)
        command = "python benchmarks/quality.py " + shlex.join(sys.argv[1:] if argv is None else argv)
        args.output_dir.mkdir(parents=True, exist_ok=True)
        log = (args.output_dir / "run.log").open("w", encoding="utf-8")

        def progress(line: str) -> None:
            print(line, flush=True)
            log.write(line + "\n")
            log.flush()

        results = run_study(config, workers=args.workers, work_dir=args.work_dir, progress=progress,
                            command=command)
        (args.output_dir / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
        md, png = write_report(results, args.output_dir)
        failed = sum("error" in r for r in results["runs"])
        progress(f"wrote {args.output_dir / 'results.json'}, {md}, {png}; "
                 f"wall {results['meta']['wall_seconds'] / 60:.1f} min; {failed} failed run(s)")
        return 1 if failed else 0
    except SrsumError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
