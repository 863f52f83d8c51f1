"""The report: per-variant figures, the table's rows (with reductions against full attention), the sweep,
JSON and the sweep's plot. Nothing here runs a model.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from srsum.profiling.analytic import (ENCODER_KINDS, CostShape, EncoderShape, bytes_per_value, encoder_computation,
                                      encoder_memory, encoder_peak_scores, encoder_product_flops, reduction)
from srsum.profiling.counted import FlopCount


@dataclass
class Measured:
    """Measured on the device (``--measure``). Times are per decode step, the best of ``repeats`` timed
    runs of ``steps_timed`` steps; peaks are above the model's weights. None where the time budget or
    memory did not allow that part (``skipped`` says why)."""

    decode_step_s: float | None = None             # whole decoder and LM head (the encoder is not run)
    cross_attention_step_s: float | None = None    # inside the cross-attention modules of all layers
    decode_peak_bytes: int | None = None           # over ``peak_steps`` decode steps
    teacher_forced_peak_bytes: int | None = None   # one teacher-forced pass over all m positions
    steps_timed: int = 0
    repeats: int = 0
    peak_steps: int = 0
    seconds: float = 0.0                           # wall time this variant's measurement took
    decoder_step: str | None = None                # srsum's decoder's step mode the decode runs used
    skipped: list[str] = field(default_factory=list)


@dataclass
class VariantProfile:
    variant: str
    computation: int                 # SPEC §10, per head-layer (MACs)
    memory: int                      # SPEC §10, per head-layer (values)
    left_out: dict[str, int]         # q·R, W and RAF, per head-layer
    values_read_per_step: int        # per head-layer
    products: dict[str, int]         # analytic FLOPs of each matrix product, per head-layer, teacher-forced
    decode_products: dict[str, int]  # over m decode steps, per head-layer
    shared_decode_products: dict[str, int] = field(default_factory=dict)  # once per example (Gram matrix)
    teacher_products_total: int = 0  # whole decoder, teacher-forced (analytic)
    decode_products_total: int = 0   # whole decoder, m decode steps (analytic)
    counted_teacher_forced: FlopCount | None = None
    counted_decode: FlopCount | None = None
    measured: Measured | None = None
    missing: str | None = None       # why counted / measured figures are absent


@dataclass
class ReportRow:
    section: str
    label: str
    unit: str
    values: dict[str, float | None]
    baseline: str = "full"           # what the reduction column compares against

    def reduction(self, variant: str) -> float | None:
        return reduction(self.values.get(variant), self.values.get(self.baseline))


@dataclass
class ProfileReport:
    shape: CostShape
    model: str
    device: str
    dtype: str
    bandwidth_gbps: float
    bandwidth_source: str
    schedule_length: int
    variants: dict[str, VariantProfile]
    notes: list[str] = field(default_factory=list)
    encoder: EncoderShape | None = None
    counting: str | None = None      # how the counted figures were obtained
    measuring: str | None = None     # what the measured run did

    @property
    def bytes_per_value(self) -> int:
        return bytes_per_value(self.dtype)

    def rows(self) -> list[ReportRow]:
        """The table: one row per quantity, a value per variant (None where not available)."""
        return _analytic_rows(self) + _counted_rows(self) + _decode_rows(self)

    def encoder_rows(self) -> list[ReportRow]:
        """The encoder's self-attention, n x n scores against query blocks (values keyed by ENCODER_KINDS)."""
        return [] if self.encoder is None else _encoder_rows(self.encoder, self.bytes_per_value)

    def parts(self) -> list[dict[str, Any]]:
        """Whole-model attention cost by part: the encoder's self-attention (both kinds) and each
        cross-attention variant, analytic computation (MAC) and memory (bytes), and each part's share
        of encoder + cross-attention computation when paired with full encoder attention."""
        if self.encoder is None:
            return []
        size, enc, whole = self.bytes_per_value, self.encoder, self.shape.head_layers
        parts = [{"part": f"encoder self-attention, {kind}" + (f" ({enc.block})" if kind == "blocked" else ""),
                  "computation": encoder_computation(kind, enc) * enc.head_layers,
                  "memory_bytes": encoder_memory(kind, enc) * enc.head_layers * size,
                  "peak_scores_bytes": encoder_peak_scores(kind, enc) * size} for kind in ENCODER_KINDS]
        parts += [{"part": f"cross-attention, {name}", "computation": p.computation * whole,
                   "memory_bytes": p.memory * whole * size, "peak_scores_bytes": None}
                  for name, p in self.variants.items()]
        encoder_mac = parts[0]["computation"]
        for part in parts:
            part["share_of_attention"] = (None if part["part"].startswith("encoder") else
                                          part["computation"] / (part["computation"] + encoder_mac))
        return parts

    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": {**asdict(self.shape), "segments": self.shape.segments, "local_keys": self.shape.local_keys},
            "model": self.model,
            "device": self.device,
            "dtype": self.dtype,
            "bandwidth_gbps": self.bandwidth_gbps,
            "bandwidth_source": self.bandwidth_source,
            "schedule_length": self.schedule_length,
            "counting": self.counting,
            "measuring": self.measuring,
            "variants": {name: _variant_dict(v) for name, v in self.variants.items()},
            "rows": [_row_dict(row, [v for v in self.variants if v != "full"]) for row in self.rows()],
            "encoder": None if self.encoder is None else {
                "shape": {**asdict(self.encoder), "block_rows": self.encoder.block_rows},
                "rows": [_row_dict(row, ["blocked"]) for row in self.encoder_rows()],
                "parts": self.parts(),
            },
            "notes": list(self.notes),
        }


def _row_dict(row: ReportRow, compared: list[str]) -> dict[str, Any]:
    return {**asdict(row), f"reduction_vs_{row.baseline.replace('×', 'x').replace(' ', '_')}":
            {v: row.reduction(v) for v in compared}}


def _variant_dict(profile: VariantProfile) -> dict[str, Any]:
    data = asdict(profile)
    for key in ("counted_teacher_forced", "counted_decode"):
        count = getattr(profile, key)
        if count is not None:
            data[key]["attention"] = count.attention
    return data


def _per_variant(report: ProfileReport, value: Callable[[VariantProfile], float | None]) -> dict[str, float | None]:
    return {name: value(profile) for name, profile in report.variants.items()}


def _analytic_rows(report: ProfileReport) -> list[ReportRow]:
    shape, size = report.shape, report.bytes_per_value
    whole = shape.head_layers
    section = "analytic (SPEC §10)"

    def with_left_out(p: VariantProfile) -> int:
        return p.computation + sum(p.left_out.values())

    return [
        ReportRow(section, "computation / head-layer", "MAC", _per_variant(report, lambda p: p.computation)),
        ReportRow(section, "computation / decoder", "MAC", _per_variant(report, lambda p: p.computation * whole)),
        ReportRow(section, "left out: q·R / head-layer", "MAC", _per_variant(report, lambda p: p.left_out["q·R"])),
        ReportRow(section, "left out: W / head-layer", "MAC", _per_variant(report, lambda p: p.left_out["W"])),
        ReportRow(section, "left out: RAF / head-layer", "MAC", _per_variant(report, lambda p: p.left_out["RAF"])),
        ReportRow(section, "computation + left out / decoder", "MAC", _per_variant(report, lambda p: with_left_out(p) * whole)),
        ReportRow(section, "memory / head-layer", "values", _per_variant(report, lambda p: p.memory)),
        ReportRow(section, "memory / decoder", "bytes", _per_variant(report, lambda p: p.memory * whole * size)),
    ]


def _counted(count: FlopCount | None, part: str) -> float | None:
    return None if count is None else getattr(count, part)


def _counted_rows(report: ProfileReport) -> list[ReportRow]:
    section = "FLOPs (FlopCounterMode)"
    return [
        ReportRow(section, "analytic matrix products, teacher-forced", "FLOP",
                  _per_variant(report, lambda p: p.teacher_products_total)),
        ReportRow(section, "counted matrix products, teacher-forced", "FLOP",
                  _per_variant(report, lambda p: _counted(p.counted_teacher_forced, "products"))),
        ReportRow(section, "counted other ops, teacher-forced", "FLOP",
                  _per_variant(report, lambda p: _counted(p.counted_teacher_forced, "other"))),
        ReportRow(section, "analytic matrix products, m decode steps", "FLOP",
                  _per_variant(report, lambda p: p.decode_products_total)),
        ReportRow(section, "counted matrix products, m decode steps", "FLOP",
                  _per_variant(report, lambda p: _counted(p.counted_decode, "products"))),
        ReportRow(section, "counted other ops, m decode steps", "FLOP",
                  _per_variant(report, lambda p: _counted(p.counted_decode, "other"))),
        ReportRow(section, "q/k/v/o projections, teacher-forced", "FLOP",
                  _per_variant(report, lambda p: _counted(p.counted_teacher_forced, "projections"))),
        ReportRow(section, "q/k/v/o projections, m decode steps", "FLOP",  # srsum projects only visited segments
                  _per_variant(report, lambda p: _counted(p.counted_decode, "projections"))),
    ]


def _measured(profile: VariantProfile, part: str) -> float | None:
    return None if profile.measured is None else getattr(profile.measured, part)


def _decoder_ran(report: ProfileReport) -> str:
    """' (srsum decoder, <mode> step)' for the measured rows' labels, '' when nothing was measured."""
    modes = sorted({p.measured.decoder_step for p in report.variants.values()
                    if p.measured is not None and p.measured.decoder_step})
    return f" (srsum decoder, {'/'.join(modes)} step)" if modes else ""


def _decode_rows(report: ProfileReport) -> list[ReportRow]:
    shape, size = report.shape, report.bytes_per_value
    section = f"decode step ({report.device})"
    bytes_per_step = lambda p: p.values_read_per_step * shape.head_layers * size  # noqa: E731  (beams share it)
    floor = lambda p: bytes_per_step(p) / (report.bandwidth_gbps * 1e9)  # noqa: E731
    ran = _decoder_ran(report)
    return [
        ReportRow(section, "bytes read / step", "bytes", _per_variant(report, bytes_per_step)),
        ReportRow(section, f"bandwidth floor / step @ {report.bandwidth_gbps:,.0f} GB/s", "s", _per_variant(report, floor)),
        ReportRow(section, f"measured time / step, cross-attention{ran}", "s",
                  _per_variant(report, lambda p: _measured(p, "cross_attention_step_s"))),
        ReportRow(section, f"measured time / step, whole decoder{ran}", "s",
                  _per_variant(report, lambda p: _measured(p, "decode_step_s"))),
        ReportRow(section, "measured peak memory, decode steps", "bytes",
                  _per_variant(report, lambda p: _measured(p, "decode_peak_bytes"))),
        ReportRow(section, "measured peak memory, teacher-forced", "bytes",
                  _per_variant(report, lambda p: _measured(p, "teacher_forced_peak_bytes"))),
    ]


def _encoder_rows(enc: EncoderShape, size: int) -> list[ReportRow]:
    section = "encoder self-attention (analytic)"

    def values(per_kind: Callable[[str], int]) -> dict[str, float | None]:
        return {kind: per_kind(kind) for kind in ENCODER_KINDS}

    def row(label: str, unit: str, per_kind: Callable[[str], int]) -> ReportRow:
        return ReportRow(section, label, unit, values(per_kind), baseline=ENCODER_KINDS[0])

    return [
        row("computation / head-layer", "MAC", lambda k: encoder_computation(k, enc)),
        row("computation / encoder", "MAC", lambda k: encoder_computation(k, enc) * enc.head_layers),
        row("matrix products / encoder", "FLOP", lambda k: encoder_product_flops(k, enc) * enc.head_layers),
        row("memory / head-layer", "values", lambda k: encoder_memory(k, enc)),
        row("memory / encoder", "bytes", lambda k: encoder_memory(k, enc) * enc.head_layers * size),
        row("peak score memory (one layer at a time)", "bytes", lambda k: encoder_peak_scores(k, enc) * size),
    ]


@dataclass
class SweepReport:
    over: str                         # "n" (m fixed) or "m" (n = 8 m, the paper's Fig. 5)
    lengths: list[int]
    points: list[ProfileReport]

    def series(self) -> dict[str, dict[str, list[float | None]]]:
        """Quantity -> variant -> values along the sweep (what the JSON holds and the plot draws)."""
        picks = {
            "computation": lambda r, p: p.computation * r.shape.head_layers,
            "computation_with_left_out": lambda r, p: (p.computation + sum(p.left_out.values())) * r.shape.head_layers,
            "memory_bytes": lambda r, p: p.memory * r.shape.head_layers * r.bytes_per_value,
            "analytic_product_flops": lambda r, p: p.teacher_products_total,
            "counted_product_flops": lambda r, p: _counted(p.counted_teacher_forced, "products"),
            "counted_attention_flops": lambda r, p: _counted(p.counted_teacher_forced, "attention"),
            "bandwidth_floor_s": lambda r, p: p.values_read_per_step * r.shape.head_layers * r.bytes_per_value
            / (r.bandwidth_gbps * 1e9),
            "measured_cross_attention_step_s": lambda r, p: _measured(p, "cross_attention_step_s"),
            "measured_decode_step_s": lambda r, p: _measured(p, "decode_step_s"),
            "measured_teacher_forced_peak_bytes": lambda r, p: _measured(p, "teacher_forced_peak_bytes"),
            "encoder_computation": lambda r, p: _encoder_whole(r),
        }
        variants = list(self.points[0].variants) if self.points else []
        return {
            quantity: {v: [pick(r, r.variants[v]) for r in self.points] for v in variants}
            for quantity, pick in picks.items()
        }

    def to_dict(self) -> dict[str, Any]:
        first = self.points[0] if self.points else None
        return {
            "over": self.over,
            "lengths": list(self.lengths),
            "n": [r.shape.n for r in self.points],
            "m": [r.shape.m for r in self.points],
            "seg_size": first.shape.seg_size if first else None,
            "model": first.model if first else None,
            "device": first.device if first else None,
            "dtype": first.dtype if first else None,
            "bandwidth_gbps": first.bandwidth_gbps if first else None,
            "series": self.series(),
            "points": [r.to_dict() for r in self.points],
        }


def _encoder_whole(report: ProfileReport) -> int | None:
    """The encoder's n x n self-attention computation (MAC) for the whole encoder."""
    if report.encoder is None:
        return None
    return encoder_computation(ENCODER_KINDS[0], report.encoder) * report.encoder.head_layers


def write_sweep_json(report: SweepReport, path: str | os.PathLike) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
    return target


def write_profile_json(report: ProfileReport, path: str | os.PathLike) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
    return target


VARIANT_COLOURS = {"full": "tab:red", "segmented": "tab:blue", "srformer": "tab:green"}


def plot_sweep(report: SweepReport, path: str | os.PathLike) -> Path:
    """PNG: computation, memory and decode step against length; analytic solid, counted/measured dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = report.series()
    x = report.lengths
    figure, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    panels = (
        ("computation (teacher-forced FLOPs)", "analytic_product_flops", "counted_product_flops", "FLOPs", 1.0,
         "counted"),
        ("memory (bytes)", "memory_bytes", "measured_teacher_forced_peak_bytes", "bytes", 1.0, "measured peak"),
        ("decode step (ms)", "bandwidth_floor_s", "measured_cross_attention_step_s", "ms", 1e3, "measured"),
    )
    for axis, (title, analytic_key, measured_key, unit, scale, measured_word) in zip(axes, panels):
        for variant, colour in VARIANT_COLOURS.items():
            if variant not in series[analytic_key]:
                continue
            _plot_line(axis, x, series[analytic_key][variant], scale, colour, "-", f"{variant} analytic")
            _plot_line(axis, x, series[measured_key][variant], scale, colour, "--", f"{variant} {measured_word}",
                       marker="o")
        axis.set_title(title)
        axis.set_xlabel(_sweep_axis_label(report))
        axis.set_ylabel(unit)
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    axes[0].text(0.01, -0.2, "analytic matrix products (solid); counted by FlopCounterMode (dashed; on top when equal)",
                 transform=axes[0].transAxes, fontsize=7)
    axes[1].text(0.01, -0.2, "analytic: SPEC §10 memory; measured: teacher-forced peak", transform=axes[1].transAxes,
                 fontsize=7)
    axes[2].text(0.01, -0.2, "analytic: bandwidth floor; measured: cross-attention time/step",
                 transform=axes[2].transAxes, fontsize=7)
    first = report.points[0]
    figure.suptitle(f"cross-attention cost, s = {first.shape.seg_size}, {first.model}, {first.device}", fontsize=10)
    figure.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=110)
    plt.close(figure)
    return target


def _plot_line(axis, x: list[int], values: list[float | None], scale: float, colour: str, style: str, label: str,
               marker: str | None = None) -> None:
    points = [(xi, v * scale) for xi, v in zip(x, values) if v is not None and v > 0]
    if points:
        axis.plot([p[0] for p in points], [p[1] for p in points], linestyle=style, color=colour, marker=marker,
                  label=label)


def _sweep_axis_label(report: SweepReport) -> str:
    if report.over == "n":
        return f"encoder length n (m = {report.points[0].shape.m})"
    return "decoder length m (n = 8 m)"


def write_sweep_outputs(report: SweepReport, output_dir: str | os.PathLike) -> tuple[Path, Path]:
    """sweep.json and sweep.png in ``output_dir``."""
    folder = Path(output_dir)
    return write_sweep_json(report, folder / "sweep.json"), plot_sweep(report, folder / "sweep.png")
