"""docs/RESULTS.md and its plot, written from a results dict (a sweep's, or one loaded from JSON)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from srsum.quality.model import (ABLATION_LABELS, DEFAULT_ABLATIONS, FROZEN_ENCODER, MAIN_VARIANTS, TRANSFER,
                                 TRANSFER_ABLATIONS, family_label)

PLOT_NAME = "quality_vs_segment_size.png"
NOTES_START, NOTES_END = "<!-- notes:start -->", "<!-- notes:end -->"
DEFAULT_NOTES = "_No interpretation written yet: add it between the notes markers; regeneration keeps it._"
LABELS = {"full": "full attention", "segmented": "segmented", "srformer": "SRformer",
          "srformer+transfer": "SRformer + transfer",
          "xl": "Transformer-XL style", "global": "LongT5-style global"}


# --------------------------------------------------------------------------------------------------
# numbers
# --------------------------------------------------------------------------------------------------


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def family_of(record: dict) -> str:
    """The family a run is reported under: "t5" or "bart", then "+<model_tag>" for a non-default size,
    "+<conversion_tag>" for a non-default conversion and FROZEN_ENCODER for fine-tunings that kept the encoder
    frozen (each a section of its own). Results written before BART joined are all T5."""
    family = record.get("family", "t5")
    for tag in ("model_tag", "conversion_tag"):  # a model size or conversion other than the default: own section
        if record.get(tag):
            family += "+" + record[tag]
    return family + FROZEN_ENCODER if record.get("encoder_frozen") else family


def sections_of(results: dict) -> list[tuple[str, str]]:
    """(family, task) pairs with at least one fine-tuning run, in report order."""
    tuned = {(family_of(r), r["task"]) for r in results["runs"] if r["variant"] != "pretrained"}
    return [(f, t) for f in families_of(results) for t in results["tasks"] if (f, t) in tuned]


def families_of(results: dict) -> list[str]:
    present = {family_of(r) for r in results["runs"]}
    ordered = list(results["config"].get("families") or ["t5"])
    return [f for f in ordered if f in present] + sorted(present - set(ordered), key=lambda f: (f.count("+"), f))


def runs_of(results: dict, family: str, task: str, variant: str, seg_size: int | None) -> list[dict]:
    if variant == "pretrained":  # one pretraining serves fine-tunings with or without a frozen encoder or
        family = pretrained_family(results, family, task)  # another conversion: the longest key it starts with
    return [r for r in results["runs"] if family_of(r) == family and r["task"] == task
            and r["variant"] == variant and r["seg_size"] == seg_size and "error" not in r]


def pretrained_family(results: dict, family: str, task: str) -> str:
    """The family key of the pretrainings a section's fine-tunings started from: "bart" for
    "bart+clamp-off+frozen-encoder", "bart+2-heads" for "bart+2-heads+frozen-encoder"."""
    keys = {family_of(r) for r in results["runs"] if r["variant"] == "pretrained" and r["task"] == task}
    found = [k for k in keys if family == k or family.startswith(k + "+")]
    return max(found, key=len) if found else family


def scores(results: dict, task: str, variant: str, seg_size: int | None, metric: str = "score",
           family: str = "t5") -> list[float]:
    return [r[metric] for r in runs_of(results, family, task, variant, seg_size)
            if r.get(metric) is not None]


def gap_in_se(a: list[float], b: list[float]) -> float | None:
    """(mean a - mean b) / sqrt(se_a² + se_b²), se the standard error over seeds; None without spread."""
    if len(a) < 2 or len(b) < 2:
        return None
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    se = math.sqrt(sa ** 2 / len(a) + sb ** 2 / len(b))
    if se == 0:
        return None if ma == mb else math.copysign(math.inf, ma - mb)
    return (ma - mb) / se


def se_text(z: float | None) -> str:
    if z is None:
        return "–"
    return f"{z:+.0f} SE" if math.isinf(z) or abs(z) >= 10 else f"{z:+.1f} SE"


SECONDARY = {"lookup": ("local_accuracy", "remote_accuracy", "first_loss", "final_loss"),
             "lookup_shuffled": ("local_accuracy", "remote_accuracy", "first_loss", "final_loss"),
             "recall": ("first_loss", "final_loss"),
             "entities": ("order_f1", "token_accuracy", "first_loss", "final_loss")}
SECONDARY_NOTES = {
    "local_accuracy": "x_t, the digit of the aligned chunk",
    "remote_accuracy": "y_r, the digit of the other chunk",
    "order_f1": "LCS F1 over the entity sequence: order counts",
    "token_accuracy": "teacher-forced next-token accuracy on the target",
    "first_loss": "training loss on the first fine-tuning batch, right after conversion",
    "final_loss": "mean training loss over the last 10% of fine-tuning",
}


def cell(values: list[float]) -> str:
    if not values:
        return "–"
    m, s = mean_std(values)
    return f"{m:.3f} ± {s:.3f}" if len(values) > 1 else f"{m:.3f}"


def recovered(results: dict, task: str, seg_size: int, family: str = "t5", variant: str = "srformer") -> dict | None:
    """(variant - segmented) / (full - segmented) on the seed means, with the gap it divides by and the
    variant-vs-segmented difference in standard errors."""
    full, seg, sr = (scores(results, task, "full", None, family=family),
                     scores(results, task, "segmented", seg_size, family=family),
                     scores(results, task, variant, seg_size, family=family))
    if not (full and seg and sr):
        return None
    f, g, r = mean_std(full)[0], mean_std(seg)[0], mean_std(sr)[0]
    gap = f - g
    return {"full": f, "segmented": g, "srformer": r, "gap": gap, "se": gap_in_se(sr, seg),
            "fraction": (r - g) / gap if gap >= 0.01 else None}


def seg_sizes_of(results: dict) -> list[int]:
    return sorted({r["seg_size"] for r in results["runs"] if r["seg_size"] is not None
                   and r["variant"] in MAIN_VARIANTS})


def variants_of(results: dict, names) -> list[str]:
    present = {r["variant"] for r in results["runs"]}
    return [v for v in names if v in present]


def label_of(variant: str) -> str:
    return LABELS.get(variant, ABLATION_LABELS.get(variant, variant))


# --------------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------------


def main_table(results: dict, task: str, family: str = "t5", metric: str = "score") -> str:
    sizes = seg_sizes_of(results)
    lines = ["| cross-attention | " + " | ".join(f"s = {s}" for s in sizes) + " |",
             "|---|" + "---:|" * len(sizes)]
    for variant in variants_of(results, MAIN_VARIANTS):
        if variant == "full":
            row = [cell(scores(results, task, "full", None, metric, family))] * len(sizes)
        else:
            row = [cell(scores(results, task, variant, s, metric, family)) for s in sizes]
        lines.append(f"| {LABELS[variant]} | " + " | ".join(row) + " |")
    pre = scores(results, task, "pretrained", None, metric, family)
    if pre:
        lines.append("| (pretrained full model, before fine-tuning) | " + " | ".join([cell(pre)] * len(sizes)) + " |")
    ceiling = results["tasks"].get(task, {}).get("local_only_ceiling")
    if ceiling:
        lines.append("| (ceiling of a model that sees only its segment) | "
                     + " | ".join(f"{ceiling.get(str(s), ceiling.get(s, math.nan)):.3f}" for s in sizes) + " |")
    return "\n".join(lines)


def gap_table(results: dict, task: str, family: str = "t5") -> str:
    """One row per (segment size, SRformer with or without transfer) that has full and segmented beside it."""
    lines = ["| s | model | full | segmented | model's score | gap (full - segmented) | recovered | "
             "model - segmented in standard errors |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for s in seg_sizes_of(results):
        for variant in ("srformer", "srformer" + TRANSFER):
            g = recovered(results, task, s, family, variant)
            if g is None:
                continue
            frac = "no gap to recover" if g["fraction"] is None else f"{round(100 * g['fraction'])}%"  # never "-0%"
            lines.append(f"| {s} | {LABELS[variant]} | {g['full']:.3f} | {g['segmented']:.3f} | {g['srformer']:.3f} | "
                         f"{g['gap']:+.3f} | {frac} | {se_text(g['se'])} |")
    return "\n".join(lines)


def secondary_table(results: dict, task: str, family: str = "t5") -> str:
    """Seed means of the task's secondary metrics for every run of a main variant or ablation."""
    metrics = SECONDARY.get(task, ())
    lines = ["| cross-attention | s | " + " | ".join(metrics) + " |", "|---|---:|" + "---:|" * len(metrics)]
    keys = sorted({(r["variant"], r["seg_size"]) for r in results["runs"] if r["task"] == task
                   and family_of(r) == family and r["variant"] != "pretrained"},
                  key=lambda k: (list(LABELS).index(k[0]) if k[0] in LABELS else 9, k[1] or 0, k[0]))
    for variant, s in keys:
        values = [cell(scores(results, task, variant, s, m, family)) for m in metrics]
        lines.append(f"| {label_of(variant)} | {s or 'all'} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def delta_text(values: list[float], base_mean: float) -> str:
    if not values or math.isnan(base_mean):
        return "–"
    return f"{round(mean_std(values)[0] - base_mean, 3) + 0.0:+.3f}"


def ablation_table(results: dict, task: str, seg_size: int, family: str = "t5") -> str:
    lines = [f"| model (s = {seg_size}) | score | vs SRformer (with transfer: vs SRformer + transfer) | "
             "in standard errors | generated score |",
             "|---|---:|---:|---:|---:|"]
    bases = {}
    for name in ("srformer", "srformer" + TRANSFER):
        values = scores(results, task, name, seg_size, family=family)
        bases[name] = (values, mean_std(values)[0] if values else math.nan)
    ablations = variants_of(results, (*DEFAULT_ABLATIONS, *TRANSFER_ABLATIONS))
    for variant in ["srformer", *variants_of(results, ["srformer" + TRANSFER]), *ablations]:
        vals = scores(results, task, variant, seg_size, family=family)
        generated = scores(results, task, variant, seg_size, "generated_score", family)
        base, base_mean = bases["srformer" + TRANSFER if variant.endswith(TRANSFER) else "srformer"]
        if variant in bases:
            lines.append(f"| {label_of(variant)} | {cell(vals)} | – | – | {cell(generated)} |")
        else:
            lines.append(f"| {ABLATION_LABELS[variant]} | {cell(vals)} | {delta_text(vals, base_mean)} | "
                         f"{se_text(gap_in_se(vals, base))} | {cell(generated)} |")
    for variant, s in (("segmented", seg_size), ("full", None)):
        lines.append(f"| ({LABELS[variant]}) | {cell(scores(results, task, variant, s, family=family))} | | | "
                     f"{cell(scores(results, task, variant, s, 'generated_score', family))} |")
    return "\n".join(lines)


def layer_means(runs: list[dict], key: str, field_name: str) -> str:
    """Per decoder layer, the seed mean of ``field_name`` in each run's ``key`` rows, as 'L0 · L1'."""
    per_layer: dict[int, list[float]] = {}
    for r in runs:
        for row in r.get(key) or []:
            if row.get(field_name) is not None:
                per_layer.setdefault(row["layer"], []).append(row[field_name])
    if not per_layer:
        return "–"
    spec = ".3f" if field_name == "firing_rate" else ".3g"  # ratios span 0.001 to hundreds
    return " · ".join(f"{mean_std(v)[0]:{spec}}" for _, v in sorted(per_layer.items()))


def transfer_table(results: dict, task: str, family: str = "t5") -> str | None:
    """Per layer, the relative error of the SRformer layer's output against the full cross-attention output
    (srsum.engine.transfer) before and after attention transfer, seed means."""
    keys = sorted({(r["variant"], r["seg_size"]) for r in results["runs"] if r["task"] == task
                   and family_of(r) == family and r.get("transfer_layers")},
                  key=lambda k: (ORDER.index(k[0]) if k[0] in ORDER else 99, k[1] or 0))
    if not keys:
        return None
    lines = ["| model | s | steps | error before transfer | error after transfer | seconds |",
             "|---|---:|---:|---:|---:|---:|"]
    for variant, s in keys:
        runs = runs_of(results, family, task, variant, s)
        seconds = [r["transfer_seconds"] for r in runs if r.get("transfer_seconds") is not None]
        steps = sorted({r.get("transfer_steps") for r in runs})
        lines.append(f"| {label_of(variant)} | {s} | {', '.join(map(str, steps))} | "
                     f"{layer_means(runs, 'transfer_layers', 'error_before')} | "
                     f"{layer_means(runs, 'transfer_layers', 'error_after')} | {mean_std(seconds)[0]:.0f} |")
    return "\n".join(lines)


ORDER = (*MAIN_VARIANTS, *DEFAULT_ABLATIONS, *TRANSFER_ABLATIONS)


def memory_table(results: dict, task: str, family: str = "t5") -> str | None:
    """Whether the memory is alive: per layer ||rec|| / ||local|| and RAF firing rate right after the
    calibrated conversion (on the first fine-tuning batch) and after fine-tuning (first eval batch)."""
    keys = sorted({(r["variant"], r["seg_size"]) for r in results["runs"] if r["task"] == task
                   and family_of(r) == family and (r.get("calibration") or r.get("memory_after"))},
                  key=lambda k: (ORDER.index(k[0]) if k[0] in ORDER else 99, k[1] or 0))
    if not keys:
        return None
    lines = ["| model | s | ratio after calibration | firing after calibration | ratio after fine-tuning | "
             "firing after fine-tuning |", "|---|---:|---:|---:|---:|---:|"]
    for variant, s in keys:
        runs = runs_of(results, family, task, variant, s)
        lines.append(f"| {label_of(variant)} | {s} | {layer_means(runs, 'calibration', 'ratio')} | "
                     f"{layer_means(runs, 'calibration', 'firing_rate')} | "
                     f"{layer_means(runs, 'memory_after', 'ratio')} | "
                     f"{layer_means(runs, 'memory_after', 'firing_rate')} |")
    return "\n".join(lines)


def verdict(results: dict, task: str, family: str = "t5") -> str:
    """One factual sentence per segment size: how much of the gap SRformer recovered."""
    parts = []
    for s in seg_sizes_of(results):
        g = recovered(results, task, s, family)
        if g is None:
            continue
        se = "" if g["se"] is None else f"; SRformer - segmented = {se_text(g['se'])}"
        if g["fraction"] is None:
            parts.append(f"s = {s}: segmented attention is not 0.01 or more below full attention "
                         f"({g['segmented']:.3f} against {g['full']:.3f}), so there is no gap to recover{se}")
        else:
            holds = "holds" if g["fraction"] >= 0.5 else "does not hold"
            parts.append(f"s = {s}: SRformer recovers {100 * g['fraction']:.0f}% of a {g['gap']:+.3f} gap "
                         f"(the claim that it recovers most of it {holds}){se}")
        moved = recovered(results, task, s, family, "srformer" + TRANSFER)
        if moved is not None and moved["fraction"] is not None:
            parts[-1] += f"; SRformer + transfer {100 * moved['fraction']:.0f}% ({se_text(moved['se'])})"
    return "; ".join(parts) + "." if parts else "not enough runs to compare."


def model_line(results: dict) -> str:
    size = results["config"]["size"]
    params = {f"{family_label(family_of(r))} {r['task']}": r["parameters"]
              for r in results["runs"] if r["kind"] == "pretrain" and "error" not in r}
    return (f"d_model {size['d_model']}, {size['num_heads']} heads (T5: of {size['d_kv']}; BART: of "
            f"d_model / heads), d_ff {size['d_ff']}, {size['num_layers']}+{size['num_decoder_layers']} layers; "
            f"parameters " + ", ".join(f"{key} {count:,}" for key, count in params.items()))


def pretrain_steps_line(results: dict) -> str:
    steps = {r["task"]: r["steps"] for r in results["runs"] if r["kind"] == "pretrain" and "error" not in r}
    return ", ".join(f"{task} {count} steps" for task, count in steps.items()) or "none recorded"


def cost_lines(results: dict) -> list[str]:
    lines = []
    for kind in ("pretrain", "finetune"):
        for family in families_of(results):
            for task in results["tasks"]:
                walls = [r["wall_seconds"] for r in results["runs"] if r["kind"] == kind and r["task"] == task
                         and family_of(r) == family and "error" not in r]
                if walls:
                    lines.append(f"- cost, {family_label(family)} {task} {kind}: {len(walls)} run(s), "
                                 f"{mean_std(walls)[0]:.0f} s each on average (one worker, one thread, "
                                 f"{results['meta']['device']})")
    return lines


# --------------------------------------------------------------------------------------------------
# plot and document
# --------------------------------------------------------------------------------------------------


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sections = sections_of(results) or [("t5", task) for task in results["tasks"]]
    columns = min(2, len(sections))
    rows = -(-len(sections) // columns)
    sizes = seg_sizes_of(results)
    fig, axes = plt.subplots(rows, columns, figsize=(5.5 * columns, 4.2 * rows), squeeze=False)
    for ax in axes.flat[len(sections):]:
        ax.set_visible(False)
    for ax, (family, task) in zip(axes.flat, sections):
        for variant in variants_of(results, MAIN_VARIANTS):
            if variant == "full":
                m, s = mean_std(scores(results, task, "full", None, family=family))
                if not math.isnan(m):
                    ax.axhline(m, color="black", linestyle="--", label=LABELS["full"])
                    ax.axhspan(m - s, m + s, color="black", alpha=0.08)
                continue
            points = [(size, *mean_std(scores(results, task, variant, size, family=family))) for size in sizes]
            points = [p for p in points if not math.isnan(p[1])]
            if points:
                xs, ms, ss = zip(*points)
                ax.errorbar(xs, ms, yerr=ss, marker="o", capsize=3, label=LABELS[variant])
        ceiling = results["tasks"][task].get("local_only_ceiling")
        known = [size for size in sizes if str(size) in (ceiling or {})]  # a task run at fewer sizes has fewer
        if known:
            ax.plot(known, [ceiling[str(size)] for size in known], color="grey", linestyle=":", marker="x",
                    label="segment-only ceiling")
        ax.set_ylim(0, 1.02)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.set_xlabel("segment size s")
        ax.set_ylabel(results["tasks"][task].get("metric", "score"))
        ax.set_title(f"{task}, {family_label(family)} (n = {results['tasks'][task].get('n')})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def preserved_notes(existing: Path) -> str:
    if existing.is_file():
        match = re.search(re.escape(NOTES_START) + r"\n?(.*?)\n?" + re.escape(NOTES_END),
                          existing.read_text(encoding="utf-8"), re.S)
        if match and match.group(1).strip():
            return match.group(1).strip()
    return DEFAULT_NOTES


GENERATED_NOTE = {
    "lookup": "forced-marker greedy: the given markers are fed, the model's own argmax digits are fed back",
    "lookup_shuffled": "forced-marker greedy: the given markers are fed, the model's own argmax digits are fed back",
    "recall": "forced-key greedy: the given keys are fed, the model's own argmax values are fed back",
}


def task_section(results: dict, task: str, family: str = "t5") -> list[str]:
    info = results["tasks"][task]
    config = results["config"]
    name = family_label(family)
    out = [f"## Task `{task}`, {name}: {info.get('metric')} (n = {info.get('n')}, G = {info.get('G')})", "",
           f"**Verdict ({name}).** {verdict(results, task, family)}", "",
           "### Score against segment size (like the paper's Fig. 4)", "",
           "Teacher-forced; mean ± standard deviation over seeds, on the held-out examples.", "",
           main_table(results, task, family), "",
           "### Share of the full-vs-segmented gap that SRformer recovers", "",
           "(SRformer − segmented) / (full − segmented), on the seed means; the last column is "
           "(mean SRformer − mean segmented) / sqrt(se² + se²), se the standard error over seeds.", "",
           gap_table(results, task, family), ""]
    if any(scores(results, task, v, s, "generated_score", family)
           for v in MAIN_VARIANTS for s in [None, *seg_sizes_of(results)]):
        out += ["### Generated score (greedy decoding through srsum's own decoder)", "",
                f"{GENERATED_NOTE.get(task, 'greedy decoding')}; scored at the same positions as the "
                "teacher-forced score.", "", main_table(results, task, family, "generated_score"), ""]
    if variants_of(results, (*DEFAULT_ABLATIONS, *TRANSFER_ABLATIONS)):
        out += [f"### Ablations at s = {config['ablation_seg_size']} (like the paper's Table 3)", "",
                "Teacher-forced score; \"SRformer, paper init\" is SRformer converted with the paper's W "
                "init instead of the calibrated one.", "",
                ablation_table(results, task, config["ablation_seg_size"], family), ""]
    memory = memory_table(results, task, family)
    if memory:
        out += ["### Is the memory alive?", "",
                "Per decoder layer (L0 · L1 ...), seed means: ||rec|| / ||local|| and the RAF firing rate (share "
                "of R's entries above zero) right after conversion, on the first fine-tuning batch (the "
                "calibration batch), and after fine-tuning, on the first held-out batch "
                "(`srsum.engine.calibration.memory_report`).", "", memory, ""]
    moved = transfer_table(results, task, family)
    if moved:
        out += ["### Attention transfer", "",
                "Per decoder layer (L0 · L1 ...), seed means: ||SRformer output − full output|| / ||full output|| of "
                "each cross-attention layer on the original model's decoder states, before and after training W, "
                "λ, θ alone to reproduce the full output (`srsum.engine.transfer`), on the first training batches.",
                "", moved, ""]
    if SECONDARY.get(task):
        out += ["### Secondary metrics", "",
                "; ".join(f"`{m}`: {SECONDARY_NOTES[m]}" for m in SECONDARY[task]) + ".", "",
                secondary_table(results, task, family), ""]
    extra = {k: v for k, v in info.items() if k not in {"name", "metric", "n", "G", "local_only_ceiling"}}
    out += ["Task facts: " + ", ".join(f"{k} {v}" for k, v in extra.items()) + ".", ""]
    return out


DESIGN = """## Protocol, tasks and scoring

**Protocol** (the paper's, in miniature). For each model family (T5; BART of the same width, heads,
d_ff and depth) and task a small model with ordinary full cross-attention is trained from scratch: the "pretrained" model (one per task, as the paper starts every variant from
one t5-small; `--pretrain-per-seed` gives each seed its own). Pretraining uses a length curriculum
(inputs grow from short to the full length over the first half) because a tiny T5 trained on full-length
inputs from the start sat on a loss plateau for thousands of steps. srsum's own
`srsum.engine.convert(model, attention=variant, seg_size=s, schedule_length=G)` then turns a copy into
each variant, every variant is fine-tuned with the same steps, batch, learning-rate schedule and data
order (per seed; the seed also initialises SRformer's new W, λ, θ), and scored on held-out examples.
G is the task's maximum target length, so decoder position t attends segment floor(t·M/G), M = ceil(n/s).
SRformer's W is calibrated at conversion (the engine's default): scaled per layer so that the recurrent
term is `memory_ratio` (default 0.05) times the local term on the calibration batch, here the variant's
first fine-tuning batch; "SRformer, paper init" keeps the paper's W init instead.

**Scores.** The headline score is teacher-forced (argmax given the gold prefix). The generated score
decodes greedily, one token at a time, through srsum's own decoder (`srsum.decoding.SharedStateDecoder`,
eager steps) and is scored at the same positions: for `lookup` the given markers are fed and the model's
own digits fed back ("forced-marker greedy"); for `recall` likewise the given keys are fed and the model's
own values fed back (keys are not scored in training, so a model is not taught to write them).

**Task `recall` (synthetic, multi-query associative recall).** n = 256 input tokens in 32 chunks of 8.
Each chunk holds one pair token "K_i is v_i" (v_i one of 16 values) at a random offset, the other 7
tokens random fillers (8 filler tokens); each key appears once per example and
the chunks are shuffled, so K_i can be anywhere. The target is `K_0 v_0 K_1 v_1 ... K_31 v_31` (G = 64):
keys are not scored (they are predictable), values are. Value i's decoder position attends one segment;
K_i's chunk lies there with probability (s/8)/32, so a segment-only model's value accuracy is capped at
p + (1 - p)/16 (the "segment-only ceiling" row). Score: value accuracy.

**Task `lookup` (synthetic).** n = 256 input tokens in 32 chunks of 8: chunk t is one item token
"M_t holds x_t" (x_t a digit) and 7 blanks. The target is 32 steps `M_t x_t M_r x_r` (G = 128): r is a
random chunk other than t, drawn for the decoder alone. The markers are given (teacher-forced, not
scored); the two digits are predicted. Step t's decoder positions attend exactly the segment that holds
chunk t for s = 8, 16 and 64, so x_t is always local; x_r sits in another segment unless chunk r shares
t's segment (probability (s/8 - 1)/31). Full attention finds both items by content and solves the task
(100% after pretraining). A segmented model cannot know x_r when chunk r is elsewhere, and the encoder
cannot copy it into the aligned segment because it never sees r, so a segmented model's step accuracy is
capped at p + (1 - p)/10 (the "segment-only ceiling" row). SRformer's recurrent term is a linear
associative memory of all other segments (Σ K_jᵀV_j), exactly what retrieving x_r by the key M_r needs.
Score: step accuracy (both digits right), teacher-forced; local (x_t) and remote (x_r) accuracies too.

**Task `entities` (real text, no longer run by default: its full model reached only F1 0.29 and
segmented equalled full on it).** Articles of `../shared/data`: CNN/DailyMail (250), XSum (1,000),
arXiv (15) and MediaSum (18), de-duplicated, split by article (15% of each source held out by crc32 of
the id; no window of a held-out article is trained on). Each article is cut into windows of n = 256
word/punctuation tokens. The target is the window's distinct entity words in order of first
mention: a capitalised word that does not start a sentence (the pronoun "I" excluded), each listed once,
the list cut to fit G = 64 with EOS (multi-word runs closed by `;` are an option in `tasks.py`, slower to
learn). Lower-case words have fixed ids (700 most frequent of the training articles, the rest hashed
into 256 buckets); capitalised words are anonymised per example (a random one-to-one map onto 64 ids,
redrawn every time a training window is used, as Hermann et al. 2015 anonymised CNN/DailyMail
entities), so the model must copy entities rather than memorise them. The output advances through the
article the way a summary does (first mentions in order), but not at the schedule's constant rate;
whether a capitalised word is new depends on earlier segments. Full attention can read every mention;
a segmented decoder position sees only its scheduled segment. Score: greedy decoding, F1 between the
predicted and gold entity sets (macro over windows); order-aware LCS F1 and teacher-forced token
accuracy too.
"""


def document(results: dict, notes: str, plot_name: str = PLOT_NAME) -> str:
    meta, config = results["meta"], results["config"]
    failures = [r for r in results["runs"] if "error" in r]
    lines = ["# Quality study: what recurrent attention recovers from segmentation", "",
             "Generated by `benchmarks/quality.py` from its results JSON (regenerate with "
             "`python benchmarks/quality.py --from-json path/to/results.json --output-dir docs`). "
             "Protocol, task design and scoring: `srsum/quality/` and the end of this page.", "",
             f"![score against segment size]({plot_name})", ""]
    for family, task in sections_of(results):
        lines += task_section(results, task, family)
    lines += ["## Interpretation", "", NOTES_START, notes, NOTES_END, "", DESIGN,
              "## How it was run", "", "```", meta.get("command") or "(command not recorded)", "```", "",
              f"- wall time: {meta['wall_seconds'] / 60:.1f} min with {meta['workers']} worker process(es), "
              f"{meta.get('threads_per_worker')} thread(s) each, device `{meta['device']}`",
              f"- machine: {meta.get('cpu')} ({meta.get('cpu_count')} logical CPUs)"
              + (f", GPU {meta['gpu']}" if meta.get("gpu") else "")
              + f"; {meta.get('platform')}; Python {meta.get('python')}, torch {meta.get('torch')}, "
              f"transformers {meta.get('transformers')}; {meta.get('date')}",
              f"- model: {', '.join(family_label(f) for f in families_of(results))} from scratch, "
              f"{model_line(results)}",
              f"- pretraining: {pretrain_steps_line(results)} at batch {config.get('pretrain_batch_size')}, "
              f"lr {config['pretrain_lr']}, length curriculum over the first "
              f"{100 * config.get('ramp_fraction', 0.5):.0f}%",
              f"- fine-tuning (every variant alike): {config['finetune_steps']} steps at batch "
              f"{config['batch_size']}, lr {config['finetune_lr']}; AdamW (weight decay 0.01), 5% linear "
              f"warm-up then linear decay to 0, gradient clipping 1.0; W, λ, θ at "
              f"{config.get('new_param_lr_scale', 1.0):g} x that lr; calibrated W init with memory ratio "
              f"{config.get('memory_ratio') or 'the engine default (0.05)'}; {config['seeds']} seed(s)"
              + ("; one pretraining per seed" if config.get("pretrain_per_seed") else
                 "; every seed fine-tunes the same pretrained model"),
              *cost_lines(results),
              f"- runs: {len(results['runs'])}, failed: {len(failures)}", ""]
    for r in failures:
        lines.append(f"  - {r['task']} seed {r['seed']} {r['variant']} s={r['seg_size']}: {r['error']}")
    return "\n".join(lines).rstrip() + "\n"


def write_report(results: dict, output_dir: Path, markdown_name: str = "RESULTS.md") -> tuple[Path, Path]:
    """Write RESULTS.md and the plot into ``output_dir``, keeping the notes block of an existing page."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    md_path, png_path = output_dir / markdown_name, output_dir / PLOT_NAME
    plot(results, png_path)
    md_path.write_text(document(results, preserved_notes(md_path)), encoding="utf-8")
    return md_path, png_path


def load_results(path: Path) -> dict:
    from srsum.errors import SrsumError

    try:
        results = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise SrsumError(f"cannot read results JSON {path}: {err}") from err
    if not isinstance(results, dict) or not {"meta", "config", "tasks", "runs"} <= results.keys():
        raise SrsumError(f"{path} is not a quality-study results file (needs meta, config, tasks, runs)")
    return results
