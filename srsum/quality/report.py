"""docs/RESULTS.md and its plot, written from a results dict (a sweep's, or one loaded from JSON)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from srsum.quality.model import ABLATION_LABELS, ABLATIONS, MAIN_VARIANTS

PLOT_NAME = "quality_vs_segment_size.png"
NOTES_START, NOTES_END = "<!-- notes:start -->", "<!-- notes:end -->"
DEFAULT_NOTES = "_No interpretation written yet: add it between the notes markers; regeneration keeps it._"
LABELS = {"full": "full attention", "segmented": "segmented", "srformer": "SRformer",
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


def scores(results: dict, task: str, variant: str, seg_size: int | None, metric: str = "score") -> list[float]:
    return [r[metric] for r in results["runs"] if r["task"] == task and r["variant"] == variant
            and r["seg_size"] == seg_size and "error" not in r and metric in r]


SECONDARY = {"lookup": ("local_accuracy", "remote_accuracy", "first_loss", "final_loss"),
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


def recovered(results: dict, task: str, seg_size: int) -> dict | None:
    """(srformer - segmented) / (full - segmented) on the seed means, with the gap it divides by."""
    full, seg, sr = (scores(results, task, "full", None), scores(results, task, "segmented", seg_size),
                     scores(results, task, "srformer", seg_size))
    if not (full and seg and sr):
        return None
    f, g, r = mean_std(full)[0], mean_std(seg)[0], mean_std(sr)[0]
    gap = f - g
    return {"full": f, "segmented": g, "srformer": r, "gap": gap,
            "fraction": (r - g) / gap if gap >= 0.01 else None}


def seg_sizes_of(results: dict) -> list[int]:
    return sorted({r["seg_size"] for r in results["runs"] if r["seg_size"] is not None
                   and r["variant"] in MAIN_VARIANTS})


def variants_of(results: dict, names) -> list[str]:
    present = {r["variant"] for r in results["runs"]}
    return [v for v in names if v in present]


# --------------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------------


def main_table(results: dict, task: str) -> str:
    sizes = seg_sizes_of(results)
    lines = ["| cross-attention | " + " | ".join(f"s = {s}" for s in sizes) + " |",
             "|---|" + "---:|" * len(sizes)]
    for variant in variants_of(results, MAIN_VARIANTS):
        if variant == "full":
            row = [cell(scores(results, task, "full", None))] * len(sizes)
        else:
            row = [cell(scores(results, task, variant, s)) for s in sizes]
        lines.append(f"| {LABELS[variant]} | " + " | ".join(row) + " |")
    pre = scores(results, task, "pretrained", None)
    if pre:
        lines.append("| (pretrained full model, before fine-tuning) | " + " | ".join([cell(pre)] * len(sizes)) + " |")
    ceiling = results["tasks"].get(task, {}).get("local_only_ceiling")
    if ceiling:
        lines.append("| (ceiling of a model that sees only its segment) | "
                     + " | ".join(f"{ceiling.get(str(s), ceiling.get(s, math.nan)):.3f}" for s in sizes) + " |")
    return "\n".join(lines)


def gap_table(results: dict, task: str) -> str:
    lines = ["| s | full | segmented | SRformer | gap (full - segmented) | recovered by SRformer |",
             "|---:|---:|---:|---:|---:|---:|"]
    for s in seg_sizes_of(results):
        g = recovered(results, task, s)
        if g is None:
            continue
        frac = "no gap to recover" if g["fraction"] is None else f"{100 * g['fraction']:.0f}%"
        lines.append(f"| {s} | {g['full']:.3f} | {g['segmented']:.3f} | {g['srformer']:.3f} | "
                     f"{g['gap']:+.3f} | {frac} |")
    return "\n".join(lines)


def secondary_table(results: dict, task: str) -> str:
    """Seed means of the task's secondary metrics for every run of a main variant or ablation."""
    metrics = SECONDARY.get(task, ())
    lines = ["| cross-attention | s | " + " | ".join(metrics) + " |", "|---|---:|" + "---:|" * len(metrics)]
    keys = sorted({(r["variant"], r["seg_size"]) for r in results["runs"] if r["task"] == task
                   and r["variant"] != "pretrained"},
                  key=lambda k: (list(LABELS).index(k[0]) if k[0] in LABELS else 9, k[1] or 0, k[0]))
    for variant, s in keys:
        values = [cell(scores(results, task, variant, s, m)) for m in metrics]
        lines.append(f"| {LABELS.get(variant, ABLATION_LABELS.get(variant, variant))} | {s or 'all'} | "
                     + " | ".join(values) + " |")
    return "\n".join(lines)


def ablation_table(results: dict, task: str, seg_size: int) -> str:
    lines = [f"| model (s = {seg_size}) | score | vs SRformer |", "|---|---:|---:|"]
    base = scores(results, task, "srformer", seg_size)
    base_mean = mean_std(base)[0] if base else math.nan
    for variant in ["srformer", *variants_of(results, ABLATIONS)]:
        vals = scores(results, task, variant, seg_size)
        delta = mean_std(vals)[0] - base_mean if vals else math.nan
        lines.append(f"| {ABLATION_LABELS[variant]} | {cell(vals)} | "
                     f"{'–' if variant == 'srformer' or math.isnan(delta) else f'{round(delta, 3) + 0.0:+.3f}'} |")
    for variant, s in (("segmented", seg_size), ("full", None)):
        lines.append(f"| ({LABELS[variant]}) | {cell(scores(results, task, variant, s))} | |")
    return "\n".join(lines)


def verdict(results: dict, task: str) -> str:
    """One factual sentence per segment size: how much of the gap SRformer recovered."""
    parts = []
    for s in seg_sizes_of(results):
        g = recovered(results, task, s)
        if g is None:
            continue
        if g["fraction"] is None:
            parts.append(f"s = {s}: segmented attention is not 0.01 or more below full attention "
                         f"({g['segmented']:.3f} against {g['full']:.3f}), so there is no gap to recover")
        else:
            holds = "holds" if g["fraction"] >= 0.5 else "does not hold"
            parts.append(f"s = {s}: SRformer recovers {100 * g['fraction']:.0f}% of a {g['gap']:+.3f} gap "
                         f"(the claim that it recovers most of it {holds})")
    return "; ".join(parts) + "." if parts else "not enough runs to compare."


def model_line(results: dict) -> str:
    size = results["config"]["size"]
    params = {r["task"]: r["parameters"] for r in results["runs"] if r["kind"] == "pretrain" and "error" not in r}
    return (f"d_model {size['d_model']}, {size['num_heads']} heads of {size['d_kv']}, d_ff {size['d_ff']}, "
            f"{size['num_layers']}+{size['num_decoder_layers']} layers; parameters "
            + ", ".join(f"{task} {count:,}" for task, count in params.items()))


def pretrain_steps_line(results: dict) -> str:
    steps = {r["task"]: r["steps"] for r in results["runs"] if r["kind"] == "pretrain" and "error" not in r}
    return ", ".join(f"{task} {count} steps" for task, count in steps.items()) or "none recorded"


def cost_lines(results: dict) -> list[str]:
    lines = []
    for kind in ("pretrain", "finetune"):
        for task in results["tasks"]:
            walls = [r["wall_seconds"] for r in results["runs"]
                     if r["kind"] == kind and r["task"] == task and "error" not in r]
            if walls:
                lines.append(f"- cost, {task} {kind}: {len(walls)} run(s), {mean_std(walls)[0]:.0f} s each on "
                             f"average (one worker, one thread, {results['meta']['device']})")
    return lines


# --------------------------------------------------------------------------------------------------
# plot and document
# --------------------------------------------------------------------------------------------------


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(results["tasks"])
    sizes = seg_sizes_of(results)
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for variant in variants_of(results, MAIN_VARIANTS):
            if variant == "full":
                m, s = mean_std(scores(results, task, "full", None))
                if not math.isnan(m):
                    ax.axhline(m, color="black", linestyle="--", label=LABELS["full"])
                    ax.axhspan(m - s, m + s, color="black", alpha=0.08)
                continue
            points = [(size, *mean_std(scores(results, task, variant, size))) for size in sizes]
            points = [p for p in points if not math.isnan(p[1])]
            if points:
                xs, ms, ss = zip(*points)
                ax.errorbar(xs, ms, yerr=ss, marker="o", capsize=3, label=LABELS[variant])
        ceiling = results["tasks"][task].get("local_only_ceiling")
        if ceiling:
            ax.plot(sizes, [ceiling[str(s)] if str(s) in ceiling else ceiling[s] for s in sizes], color="grey",
                    linestyle=":", marker="x", label="segment-only ceiling")
        ax.set_ylim(0, 1.02)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.set_xlabel("segment size s")
        ax.set_ylabel(results["tasks"][task].get("metric", "score"))
        ax.set_title(f"{task} (n = {results['tasks'][task].get('n')})")
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


def task_section(results: dict, task: str) -> list[str]:
    info = results["tasks"][task]
    config = results["config"]
    out = [f"## Task `{task}`: {info.get('metric')} (n = {info.get('n')}, G = {info.get('G')})", "",
           f"**Verdict.** {verdict(results, task)}", "",
           "### Score against segment size (like the paper's Fig. 4)", "",
           "Mean ± standard deviation over seeds, on the held-out examples.", "", main_table(results, task), "",
           "### Share of the full-vs-segmented gap that SRformer recovers", "",
           "(SRformer − segmented) / (full − segmented), on the seed means.", "", gap_table(results, task), ""]
    if variants_of(results, ABLATIONS):
        out += [f"### Ablations at s = {config['ablation_seg_size']} (like the paper's Table 3)", "",
                ablation_table(results, task, config["ablation_seg_size"]), ""]
    if SECONDARY.get(task):
        out += ["### Secondary metrics", "",
                "; ".join(f"`{m}`: {SECONDARY_NOTES[m]}" for m in SECONDARY[task]) + ".", "",
                secondary_table(results, task), ""]
    extra = {k: v for k, v in info.items() if k not in {"name", "metric", "n", "G", "local_only_ceiling"}}
    out += ["Task facts: " + ", ".join(f"{k} {v}" for k, v in extra.items()) + ".", ""]
    return out


DESIGN = """## Protocol, tasks and scoring

**Protocol** (the paper's, in miniature). For each task a small T5 with ordinary full cross-attention
is trained from scratch: the "pretrained" model (one per task, as the paper starts every variant from
one t5-small; `--pretrain-per-seed` gives each seed its own). Pretraining uses a length curriculum
(inputs grow from short to the full length over the first half) because a tiny T5 trained on full-length
inputs from the start sat on a loss plateau for thousands of steps. srsum's own
`srsum.engine.convert(model, attention=variant, seg_size=s, schedule_length=G)` then turns a copy into
each variant, every variant is fine-tuned with the same steps, batch, learning-rate schedule and data
order (per seed; the seed also initialises SRformer's new W, λ, θ), and scored on held-out examples.
G is the task's maximum target length, so decoder position t attends segment floor(t·M/G), M = ceil(n/s).

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

**Task `entities` (real text).** Articles of `../shared/data`: CNN/DailyMail (250), XSum (1,000),
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
    for task in results["tasks"]:
        lines += task_section(results, task)
    lines += ["## Interpretation", "", NOTES_START, notes, NOTES_END, "", DESIGN,
              "## How it was run", "", "```", meta.get("command") or "(command not recorded)", "```", "",
              f"- wall time: {meta['wall_seconds'] / 60:.1f} min with {meta['workers']} worker process(es), "
              f"{meta.get('threads_per_worker')} thread(s) each, device `{meta['device']}`",
              f"- machine: {meta.get('cpu')} ({meta.get('cpu_count')} logical CPUs)"
              + (f", GPU {meta['gpu']}" if meta.get("gpu") else "")
              + f"; {meta.get('platform')}; Python {meta.get('python')}, torch {meta.get('torch')}, "
              f"transformers {meta.get('transformers')}; {meta.get('date')}",
              f"- model: T5 from scratch, {model_line(results)}",
              f"- pretraining: {pretrain_steps_line(results)} at batch {config.get('pretrain_batch_size')}, "
              f"lr {config['pretrain_lr']}, length curriculum over the first "
              f"{100 * config.get('ramp_fraction', 0.5):.0f}%",
              f"- fine-tuning (every variant alike): {config['finetune_steps']} steps at batch "
              f"{config['batch_size']}, lr {config['finetune_lr']}; AdamW (weight decay 0.01), 5% linear "
              f"warm-up then linear decay to 0, gradient clipping 1.0; {config['seeds']} seed(s)"
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
