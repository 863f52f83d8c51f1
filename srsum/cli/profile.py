"""``srsum profile``: cross-attention cost of full, segmented and srformer, side by side, and the
encoder's self-attention beside it.

The numbers come from :mod:`srsum.profiling`; this module parses options, calls the library, renders the
rich tables and writes files. ``srsum/cli/__init__.py`` registers :func:`profile_command` as the
``profile`` command. Bad option values are one ``Error:`` line and exit code 2 (EXIT_USAGE).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from srsum import profiling
from srsum.cli.common import EXIT_INTERRUPTED, EXIT_USAGE, RichReporter, print_error
from srsum.errors import SrsumError

DEFAULT_SWEEP_DIR = "srsum-profile"


# --------------------------------------------------------------------------------------------------
# Number formatting
# --------------------------------------------------------------------------------------------------


def format_count(value: float) -> str:
    """8,388,608 below ten million, else 3-4 significant digits with K/M/G/T/P."""
    if abs(value) < 1e7:
        return f"{value:,.0f}"
    for suffix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if abs(value) >= scale:
            return f"{value / scale:,.4g} {suffix}"
    return f"{value:,.0f}"


def format_bytes(value: float) -> str:
    for suffix, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= scale:
            return f"{value / scale:,.2f} {suffix}"
    return f"{value:,.0f} B"


def format_seconds(value: float) -> str:
    if abs(value) >= 1:
        return f"{value:,.3f} s"
    if abs(value) >= 1e-3:
        return f"{value * 1e3:,.3f} ms"
    return f"{value * 1e6:,.2f} µs"


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "bytes":
        return format_bytes(value)
    if unit == "s":
        return format_seconds(value)
    return format_count(value)


def format_reduction(fraction: float | None) -> str:
    """43.75% less -> '43.75%'; an increase shows as a negative reduction."""
    return "—" if fraction is None else f"{fraction * 100:,.2f}%"


# --------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------


def report_title(report: profiling.ProfileReport) -> str:
    shape = report.shape
    return (f"cross-attention cost: n = {shape.n}, m = {shape.m}, s = {shape.seg_size} (M = {shape.segments} "
            f"segment{'s' if shape.segments != 1 else ''}), d = {shape.head_dim}, {shape.heads} heads x "
            f"{shape.layers} layers, batch {shape.batch}, beams {shape.beams}")


def report_caption(report: profiling.ProfileReport) -> str:
    lines = [
        f"model: {report.model}; device {report.device}, {report.dtype}; G = {report.schedule_length}; "
        f"bandwidth {report.bandwidth_gbps:,.1f} GB/s ({report.bandwidth_source})",
        "head-layer: one head of one decoder layer, one example; decoder: x heads x layers x batch "
        "(decode steps also x beams). MAC: multiply-accumulates (the paper's units); FLOP = 2 per MAC "
        "for products; 'other ops': elementwise, softmax, reductions (RAF, ν, masking).",
        "reduction = 1 - variant / full (negative: dearer than full).",
    ]
    if report.counting:
        lines.append(f"counted: {report.counting}.")
    lines.append(f"measured: {report.measuring}." if report.measuring else
                 "measured: not run (add --measure; --time-budget bounds it).")
    lines.extend(f"note: {note}" for note in report.notes)
    return "\n".join(lines)


def profile_table(report: profiling.ProfileReport) -> Table:
    variants = list(report.variants)
    table = Table(title=report_title(report), caption=report_caption(report), caption_justify="left")
    table.add_column("quantity", overflow="fold")
    for variant in variants:
        table.add_column(variant, justify="right")
    compared = [v for v in variants if v != "full"]
    for variant in compared:
        table.add_column(f"{variant} vs full", justify="right")
    section = None
    for row in report.rows():
        if not report.measuring and row.label.startswith("measured"):
            continue  # the caption says how to get them
        if row.section != section:
            section = row.section
            table.add_row(f"[bold]{section}[/bold]", *([""] * (len(variants) + len(compared))))
        cells = [format_value(row.values.get(v), row.unit) for v in variants]
        cells += [format_reduction(row.reduction(v)) for v in compared]
        table.add_row(f"  {row.label} [dim]({row.unit})[/dim]", *cells)
    return table


def encoder_table(report: profiling.ProfileReport) -> Table:
    """The encoder's self-attention (n x n scores against query blocks) and every part's whole-model cost."""
    enc = report.encoder
    table = Table(title=f"encoder self-attention vs decoder cross-attention (analytic): n = {enc.n}, "
                        f"d = {enc.head_dim}, {enc.heads} heads x {enc.layers} encoder layers, batch {enc.batch}, "
                        f"query block {enc.block}",
                  caption=_parts_caption(report), caption_justify="left")
    table.add_column("quantity", overflow="fold")
    kinds = list(profiling.ENCODER_KINDS)
    for kind in kinds:
        table.add_column(kind if kind != "blocked" else f"blocked ({enc.block})", justify="right")
    table.add_column("blocked vs n×n", justify="right")
    for row in report.encoder_rows():
        cells = [format_value(row.values.get(k), row.unit) for k in kinds]
        table.add_row(f"{row.label} [dim]({row.unit})[/dim]", *cells, format_reduction(row.reduction("blocked")))
    table.add_section()
    table.add_row("[bold]whole model, by part[/bold]", "[bold]computation (MAC)[/bold]", "[bold]memory[/bold]",
                  "[bold]share[/bold]")
    for part in report.parts():
        share = part["share_of_attention"]
        table.add_row(f"  {part['part']}", format_count(part["computation"]), format_bytes(part["memory_bytes"]),
                      "" if share is None else f"{share * 100:,.1f}%")
    return table


def _parts_caption(report: profiling.ProfileReport) -> str:
    parts = report.parts()
    encoder = parts[0]["computation"]
    lines = [
        "computation: the score product q·Kᵀ in MACs (the paper's unit; A·V costs the same again); memory: keys "
        "and scores (n d + n² per head-layer; blocked: n d + b n), x heads x layers x batch x bytes. Blocks of "
        "queries do the same work with O(n · block) score memory (used only for n > block).",
        "share: cross-attention's part of encoder (n×n) + cross-attention computation; decoder self-attention "
        "and feed-forward layers are not shown.",
    ]
    dominant = []
    for part in parts[2:]:
        name = part["part"].removeprefix("cross-attention, ")
        ratio = encoder / part["computation"] if part["computation"] else float("inf")
        dominant.append(f"{name}: encoder {ratio:,.1f}x cross-attention" if ratio >= 1 else
                        f"{name}: cross-attention {1 / ratio:,.1f}x encoder")
    lines.append(f"which part dominates at n = {report.shape.n}, m = {report.shape.m}: " + "; ".join(dominant) + ".")
    return "\n".join(lines)


SWEEP_COLUMNS = (
    ("computation (MAC)", "computation", "count"),
    ("+ left out (MAC)", "computation_with_left_out", "count"),
    ("memory", "memory_bytes", "bytes"),
    ("counted products (FLOP)", "counted_product_flops", "count"),
    ("floor / step", "bandwidth_floor_s", "s"),
    ("measured / step", "measured_cross_attention_step_s", "s"),
)


def sweep_table(report: profiling.SweepReport) -> Table:
    """One row per length and variant; srformer and segmented cells carry their reduction vs full. The
    encoder's n x n self-attention (the same for every variant) is on each length's first row."""
    series = report.series()
    variants = list(report.points[0].variants)
    table = Table(title=f"scaling over {report.over}" + (" (n = 8 m)" if report.over == "m" else ""),
                  caption="computation and memory for the whole decoder (SPEC §10); counted: teacher-forced "
                          "matrix-product FLOPs; floor: bytes read / bandwidth; measured: time per decode step "
                          "inside cross-attention; encoder: the encoder's n x n self-attention (score product, "
                          "MAC), for scale. (x%) = reduction vs full.",
                  caption_justify="left")
    columns = [column for column in SWEEP_COLUMNS  # no measured column when nothing was measured
               if not column[1].startswith("measured") or any(v is not None for values in series[column[1]].values()
                                                              for v in values)]
    for name, width in (("n", 6), ("m", 5), ("M", 4), ("encoder (MAC)", 8), ("variant", 9)):
        table.add_column(name, justify="right" if name != "variant" else "left", no_wrap=True, min_width=width)
    for title, _, _ in columns:
        table.add_column(title, justify="right", no_wrap=True)
    encoder = series["encoder_computation"][variants[0]]
    for index, point in enumerate(report.points):
        for position, variant in enumerate(variants):
            lengths = ([str(point.shape.n), str(point.shape.m), str(point.shape.segments),
                        format_value(encoder[index], "count")] if position == 0 else [""] * 4)
            cells = [_sweep_cell(series[key], variant, index, kind) for _, key, kind in columns]
            table.add_row(*lengths, variant, *cells, end_section=position == len(variants) - 1)
    return table


def _sweep_cell(values: dict[str, list], variant: str, index: int, kind: str) -> str:
    value = values[variant][index]
    text = format_value(value, "bytes" if kind == "bytes" else "s" if kind == "s" else "count")
    full = values.get("full", [None] * (index + 1))[index]
    fraction = profiling.reduction(value, full) if variant != "full" else None
    return text if fraction is None else f"{text} ({fraction * 100:.1f}%)"


# --------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------


def _fail(message: str, code: int = EXIT_USAGE) -> None:
    print_error(message)
    raise typer.Exit(code)


def profile_command(
    seg_size: str = typer.Option("64", "--seg-size", help="Segment size s (a positive integer; s > n is one segment)."),
    n: str = typer.Option("1024", "--n", help=f"Encoder length n (real tokens), at most {profiling.MAX_LENGTH:,}."),
    m: str = typer.Option("128", "--m", help=f"Decoder length m (summary tokens), at most {profiling.MAX_LENGTH:,}."),
    batch: str = typer.Option("1", "--batch", help="Examples per batch."),
    beams: str = typer.Option("1", "--beams", help="Beams per example (decode steps)."),
    model: Optional[str] = typer.Option(None, "--model", help="A config.json, a checkpoint folder or a hub name "
                                        "(config only, random weights). Default: t5-small shapes."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or mps (for --measure and the bandwidth)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, float16 or bfloat16."),
    bandwidth: Optional[str] = typer.Option(None, "--bandwidth", help="Memory bandwidth for the decode-step floor: "
                                            "GB/s, or a card (h100, h200, a100-80gb, ...). Default: the GPU's data "
                                            "sheet, or a measured copy on the CPU."),
    schedule_length: Optional[str] = typer.Option(None, "--schedule-length", help="Schedule length G (default m)."),
    encoder_block: Optional[str] = typer.Option(None, "--encoder-block", help="Query block of the blocked encoder "
                                                "self-attention in the encoder rows (default: the checkpoint's "
                                                f"srformer_encoder_block, else {profiling.DEFAULT_ENCODER_BLOCK})."),
    sweep: bool = typer.Option(False, "--sweep", help="Sweep over lengths: scaling table, sweep.json, sweep.png."),
    sweep_over: str = typer.Option("n", "--sweep-over", help="n (m fixed) or m (n = 8 m, the paper's Fig. 5)."),
    lengths: Optional[str] = typer.Option(None, "--lengths", help="Comma-separated lengths to sweep "
                                          "(default n: 256..4096, m: 64..1024)."),
    count: bool = typer.Option(True, "--count/--no-count", help="Count FLOPs (probe runs of the real modules, "
                               "scaled exactly; about a second)."),
    measure: bool = typer.Option(False, "--measure/--no-measure", help="Also measure time and peak memory on "
                                 "--device (the whole decoder at full size; bounded by --time-budget)."),
    time_budget: str = typer.Option(str(int(profiling.DEFAULT_TIME_BUDGET)), "--time-budget",
                                    help="Seconds --measure may take in all (parts that do not fit are skipped "
                                    "and named in the notes)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON instead of a table."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="Write profile.json (and the sweep's "
                                              f"sweep.json / sweep.png; default for a sweep: ./{DEFAULT_SWEEP_DIR})."),
) -> None:
    """Cross-attention FLOPs and memory of full, segmented and srformer attention side by side (analytic and
    counted), the encoder's self-attention beside them, and with --measure time and peak memory."""
    try:
        options = _validated(seg_size, n, m, batch, beams, dtype, schedule_length, sweep_over, lengths,
                             encoder_block, time_budget)
        reporter = RichReporter()
        if sweep:
            _run_sweep(options, model, device, bandwidth, count, measure, as_json, output_dir, reporter)
        else:
            _run_profile(options, model, device, bandwidth, count, measure, as_json, output_dir, reporter)
    except SrsumError as error:
        _fail(str(error))
    except KeyboardInterrupt:
        _fail("interrupted", EXIT_INTERRUPTED)


def _validated(seg_size, n, m, batch, beams, dtype, schedule_length, sweep_over, lengths, encoder_block,
               time_budget) -> dict[str, Any]:
    """Every option checked before anything is built or imported (one-line SrsumError on bad input)."""
    options = profiling.validate_lengths(n, m, seg_size, batch, beams)
    options["dtype"] = profiling.resolve_dtype_name(dtype)
    options["schedule_length"] = (profiling.require_positive_int(schedule_length, "--schedule-length")
                                  if schedule_length is not None else None)
    options["encoder_block"] = (profiling.require_positive_int(encoder_block, "--encoder-block")
                                if encoder_block is not None else None)
    options["time_budget"] = profiling.check_time_budget(time_budget)
    if sweep_over not in ("n", "m"):
        raise SrsumError(f"--sweep-over must be n or m, got {sweep_over!r}")
    options["sweep_over"] = sweep_over
    options["lengths"] = None
    if lengths is not None:
        pairs = profiling.sweep_lengths(sweep_over, [part for part in lengths.split(",") if part.strip()],
                                        options["n"], options["m"])
        options["lengths"] = [pair[0] if sweep_over == "n" else pair[1] for pair in pairs]
    return options


def _console() -> Console:
    return Console(width=max(160, Console().width))


def _run_profile(options, model, device, bandwidth, count, measure, as_json, output_dir, reporter) -> None:
    report = profiling.profile(
        model=model, n=options["n"], m=options["m"], seg_size=options["seg_size"], batch=options["batch"],
        beams=options["beams"], device=device, dtype=options["dtype"], bandwidth=bandwidth,
        schedule_length=options["schedule_length"], count=count, measure=measure,
        encoder_block=options["encoder_block"], time_budget=options["time_budget"], reporter=reporter)
    if output_dir is not None:
        path = profiling.write_profile_json(report, Path(output_dir) / "profile.json")
        reporter.info(f"wrote {path}")
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
    else:
        console = _console()
        console.print(profile_table(report))
        if report.encoder is not None:
            console.print(encoder_table(report))


def _run_sweep(options, model, device, bandwidth, count, measure, as_json, output_dir, reporter) -> None:
    report = profiling.sweep(
        over=options["sweep_over"], lengths=options["lengths"], model=model, n=options["n"], m=options["m"],
        seg_size=options["seg_size"], batch=options["batch"], beams=options["beams"], device=device,
        dtype=options["dtype"], bandwidth=bandwidth, count=count, measure=measure,
        encoder_block=options["encoder_block"], time_budget=options["time_budget"], reporter=reporter)
    folder = Path(output_dir) if output_dir is not None else Path(DEFAULT_SWEEP_DIR)
    json_path, png_path = profiling.write_sweep_outputs(report, folder)
    reporter.info(f"wrote {json_path} and {png_path}")
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
    else:
        _console().print(sweep_table(report))
