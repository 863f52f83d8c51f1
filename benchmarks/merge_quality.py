#!/usr/bin/env python
"""Merge the results.json of several quality sweeps (run on one pretrained work dir) into one, and write
its RESULTS.md and plot: for a study run as several grids (say a full T5 grid and a smaller BART one).

    python benchmarks/merge_quality.py out/a/results.json out/b/results.json --output-dir docs/quality-calibrated
    python benchmarks/merge_quality.py out/new/results.json --before-clamp-change docs/results.json --output-dir docs
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from srsum.errors import SrsumError


def retag_bart_clamp(results: dict) -> dict:
    """Results written while BART's default clamp was the paper's ±2 (before srsum's default turned it off): a
    BART fine-tuning with the default conversion is tagged "clamp-2", one tagged "clamp-off" becomes the
    default, so each lands in the section of the settings it really had."""
    for run in results["runs"]:
        if run.get("family") != "bart" or run.get("variant") == "pretrained":
            continue
        tags = [t for t in (run.get("conversion_tag") or "").split("+") if t]
        tags = ["clamp-2"] + tags if not any(t.startswith("clamp-") for t in tags) else \
            [t for t in tags if t != "clamp-off"]
        run["conversion_tag"] = "+".join(tags)
    return results


def merge(results: list[dict]) -> dict:
    """One results dict: runs concatenated (pretraining records once per family, task and seed), tasks and
    families united, commands and wall times listed; the other config fields are the first sweep's."""
    if not results:
        raise SrsumError("nothing to merge")
    merged = json.loads(json.dumps(results[0]))
    families = list(merged["config"].get("families") or ["t5"])
    from srsum.quality.report import family_of

    seen = {(family_of(r), r["task"], r["seed"], r["variant"], r["seg_size"]) for r in merged["runs"]}
    for other in results[1:]:
        for name in other["config"].get("families") or ["t5"]:
            if name not in families:
                families.append(name)
        for task, info in other["tasks"].items():
            known = merged["tasks"].setdefault(task, info)
            ceilings = known.setdefault("local_only_ceiling", {})  # every segment size either sweep ran
            for size, value in info.get("local_only_ceiling", {}).items():
                ceilings.setdefault(size, value)
        for run in other["runs"]:
            key = (family_of(run), run["task"], run["seed"], run["variant"], run["seg_size"])
            if key not in seen:
                seen.add(key)
                merged["runs"].append(run)
    merged["config"]["families"] = families
    merged["meta"]["command"] = " && ".join(r["meta"]["command"] for r in results)
    merged["meta"]["wall_seconds"] = sum(r["meta"]["wall_seconds"] for r in results)
    merged["meta"]["parts"] = [{"command": r["meta"]["command"], "wall_seconds": r["meta"]["wall_seconds"],
                                "config": r["config"]} for r in results]
    return merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", type=Path, help="results.json files of the sweeps")
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--before-clamp-change", type=Path, nargs="*", default=[],
                        help="results.json files written while BART's default clamp was ±2 (merged first, retagged)")
    args = parser.parse_args(argv)
    try:
        from srsum.quality.report import load_results, write_report

        older = [retag_bart_clamp(load_results(path)) for path in args.before_clamp_change]
        merged = merge(older + [load_results(path) for path in args.results])
        args.output_dir.mkdir(parents=True, exist_ok=True)
        target = args.output_dir / "results.json"
        tmp = target.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(merged, indent=1), encoding="utf-8")
        tmp.replace(target)
        md, png = write_report(merged, args.output_dir)
        print(f"wrote {target}, {md} and {png}")
        return 0
    except SrsumError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
