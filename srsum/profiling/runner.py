"""Putting a profile together: resolve the options, compute the analytic figures, run the models for the
counted and measured ones, and sweep over lengths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from srsum.errors import SrsumError
from srsum.profiling.analytic import (PROFILED_VARIANTS, CostShape, analytic_computation, analytic_memory,
                                      analytic_product_flops, decode_values_read, left_out_terms,
                                      require_positive_int, resolve_dtype_name, validate_lengths)
from srsum.profiling.counted import count_cross_attention_flops
from srsum.profiling.measured import (LiveBytesTracker, _time_decode, measure_peak_bytes, resolve_bandwidth,
                                      resolve_device, timed)
from srsum.profiling.models import (ProfileInputs, attention_shape, build_host_model, decode_run, host_model_type,
                                    load_profile_config, make_inputs, make_variant_model, teacher_forced_run)
from srsum.profiling.report import Measured, ProfileReport, SweepReport, VariantProfile

def analytic_profile(variant: str, shape: CostShape, schedule_length: int | None = None,
                     clamp: bool = False) -> VariantProfile:
    """The analytic part of one variant's profile (``clamp``: the RAF inputs are clamped, BART)."""
    return VariantProfile(
        variant=variant,
        computation=analytic_computation(variant, shape),
        memory=analytic_memory(variant, shape),
        left_out=left_out_terms(variant, shape),
        values_read_per_step=decode_values_read(variant, shape),
        products=analytic_product_flops(variant, shape, schedule_length, clamp=clamp),
        decode_products=analytic_product_flops(variant, shape, schedule_length, clamp=clamp, decode=True),
    )


def _run_variant(profile: VariantProfile, model, inputs: ProfileInputs, shape: CostShape, device,
                 count: bool, measure: bool) -> None:
    """Counted FLOPs and measured time / peak memory of one variant's model.

    Peak memory comes from the CUDA allocator in a plain run, elsewhere from a LiveBytesTracker
    riding along with the FLOP-counting run (one slow dispatch-mode pass instead of two).
    """
    teacher = teacher_forced_run(model, inputs)
    decode = decode_run(model, inputs, shape.m, shape.beams)
    track = measure and device.type != "cuda"
    peaks = {}
    for name, run in (("teacher", teacher), ("decode", decode)):
        tracker = LiveBytesTracker() if track else None
        if count:
            counted = count_cross_attention_flops(model, run, tracker)
            setattr(profile, "counted_teacher_forced" if name == "teacher" else "counted_decode", counted)
        elif track:
            peaks[name] = measure_peak_bytes(run, device)
        if tracker is not None and count:
            peaks[name] = tracker.peak
    if not measure:
        return
    timed(decode_run(model, inputs, min(2, shape.m), shape.beams), device)  # warm-up
    if not track:
        peaks = {"teacher": measure_peak_bytes(teacher, device), "decode": measure_peak_bytes(decode, device)}
    step_s, cross_s = _time_decode(model, decode, shape.m, device)
    profile.measured = Measured(decode_step_s=step_s, cross_attention_step_s=cross_s,
                                decode_peak_bytes=peaks["decode"], teacher_forced_peak_bytes=peaks["teacher"])


@dataclass
class ProfileSetup:
    """What one or more profiles share: the resolved model, device, dtype and bandwidth."""

    config: Any
    model_name: str
    device: Any
    dtype: str
    bandwidth_gbps: float
    bandwidth_source: str
    host_model: Any = None


def prepare(model: str | None = None, device: str = "cpu", dtype: str = "float32",
            bandwidth: str | float | None = None) -> ProfileSetup:
    """Resolve --model, --device, --dtype and --bandwidth (SrsumError on bad input)."""
    dtype_name = resolve_dtype_name(dtype)
    torch_device = resolve_device(device)
    config, description = load_profile_config(model)
    host_model_type(config)
    gbps, source = resolve_bandwidth(bandwidth, torch_device)
    return ProfileSetup(config, description, torch_device, dtype_name, gbps, source)


def profile_with(setup: ProfileSetup, *, n: int, m: int, seg_size: int, batch: int = 1, beams: int = 1,
                 schedule_length: int | None = None, count: bool = True, measure: bool = True,
                 variants: Sequence[str] = PROFILED_VARIANTS, seed: int = 0) -> ProfileReport:
    """One profile with an already prepared setup (the sweep reuses it across lengths)."""
    lengths = validate_lengths(n, m, seg_size, batch, beams)
    G = require_positive_int(schedule_length, "--schedule-length") if schedule_length else lengths["m"]
    dims = attention_shape(setup.config)
    shape = CostShape(head_dim=dims["head_dim"], heads=dims["heads"], layers=dims["layers"], **lengths)
    report = ProfileReport(
        shape=shape, model=setup.model_name, device=str(setup.device), dtype=setup.dtype,
        bandwidth_gbps=setup.bandwidth_gbps, bandwidth_source=setup.bandwidth_source, schedule_length=G,
        variants={v: analytic_profile(v, shape, G, clamp=host_model_type(setup.config) == "bart") for v in variants},
    )
    _note_shape(report)
    if count or measure:
        _run_models(report, setup, dims["d_model"], count, measure, seed)
    return report


def _note_shape(report: ProfileReport) -> None:
    shape = report.shape
    if shape.seg_size > shape.n:
        report.notes.append(f"s = {shape.seg_size} > n = {shape.n}: one segment (M = 1), local attention over all n keys")
    if shape.segments > report.schedule_length:
        report.notes.append(
            f"M = {shape.segments} segments > G = {report.schedule_length}: some segments are never attended locally")


def _run_models(report: ProfileReport, setup: ProfileSetup, d_model: int, count: bool, measure: bool, seed: int) -> None:
    if setup.host_model is None:
        setup.host_model = build_host_model(setup.config, setup.device, setup.dtype, seed)
    vocab = setup.host_model.config.vocab_size
    inputs = make_inputs(report.shape, d_model, vocab, setup.device, setup.dtype, seed)
    for name, profile in report.variants.items():
        try:
            model = make_variant_model(setup.host_model, name, report.shape.seg_size, report.schedule_length)
        except SrsumError as error:
            profile.missing = str(error)
            continue
        _run_variant(profile, model, inputs, report.shape, setup.device, count, measure)
        del model
    missing = sorted({p.missing for p in report.variants.values() if p.missing})
    report.notes.extend(missing)
    report.notes.extend(_count_mismatches(report))


def _count_mismatches(report: ProfileReport, tolerance: float = 0.05) -> list[str]:
    """Notes where counted matrix products stray from the analytic ones by more than ``tolerance``:
    the implementation does work the cost model does not expect (e.g. a decode step redoing O(n) work)."""
    notes = []
    shape = report.shape
    for name, profile in report.variants.items():
        checks = (("teacher-forced", profile.counted_teacher_forced, profile.products, shape.head_layers),
                  ("decode", profile.counted_decode, profile.decode_products, shape.decode_rows))
        for path, counted, products, rows in checks:
            analytic = sum(products.values()) * rows
            if counted is not None and analytic and abs(counted.products - analytic) > tolerance * analytic:
                notes.append(f"{name}, {path}: counted matrix products are {counted.products / analytic:.2f} x "
                             f"the analytic ones")
    return notes


def profile(*, model: str | None = None, n: int = 1024, m: int = 128, seg_size: int = 64, batch: int = 1,
            beams: int = 1, device: str = "cpu", dtype: str = "float32", bandwidth: str | float | None = None,
            schedule_length: int | None = None, count: bool = True, measure: bool = True,
            variants: Sequence[str] = PROFILED_VARIANTS, seed: int = 0) -> ProfileReport:
    """Analytic, counted and measured cross-attention cost of each variant at one (n, m, s)."""
    validate_lengths(n, m, seg_size, batch, beams)
    setup = prepare(model, device, dtype, bandwidth)
    return profile_with(setup, n=n, m=m, seg_size=seg_size, batch=batch, beams=beams,
                        schedule_length=schedule_length, count=count, measure=measure,
                        variants=variants, seed=seed)


DEFAULT_SWEEP_N = (256, 512, 1024, 2048, 4096)
DEFAULT_SWEEP_M = (64, 128, 256, 512, 1024)


def sweep_lengths(over: str, lengths: Sequence[Any] | None, n: int, m: int) -> list[tuple[int, int]]:
    """(n, m) pairs: over n with m fixed, or over m with n = 8 m."""
    if over not in ("n", "m"):
        raise SrsumError(f"--sweep-over must be n or m, got {over!r}")
    defaults = DEFAULT_SWEEP_N if over == "n" else DEFAULT_SWEEP_M
    values = [require_positive_int(v, "--lengths") for v in (lengths or defaults)]
    if not values:
        raise SrsumError("--lengths needs at least one length")
    return [(v, m) if over == "n" else (8 * v, v) for v in values]


def sweep(*, over: str = "n", lengths: Sequence[Any] | None = None, model: str | None = None, n: int = 1024,
          m: int = 128, seg_size: int = 64, batch: int = 1, beams: int = 1, device: str = "cpu",
          dtype: str = "float32", bandwidth: str | float | None = None, count: bool = True,
          measure: bool = True, seed: int = 0, progress: Callable[[int, int], None] | None = None) -> SweepReport:
    """Profiles along n (m fixed) or along m (n = 8 m): the scaling table, JSON and plot's data."""
    validate_lengths(n, m, seg_size, batch, beams)
    pairs = sweep_lengths(over, lengths, n, m)
    setup = prepare(model, device, dtype, bandwidth)
    points = []
    for index, (point_n, point_m) in enumerate(pairs):
        if progress is not None:
            progress(index, len(pairs))
        points.append(profile_with(setup, n=point_n, m=point_m, seg_size=seg_size, batch=batch, beams=beams,
                                   count=count, measure=measure, seed=seed))
    return SweepReport(over=over, lengths=[p[0] if over == "n" else p[1] for p in pairs], points=points)
