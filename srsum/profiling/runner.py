"""Putting a profile together: resolve the options, compute the analytic figures, count FLOPs on probe
runs scaled to the requested shape, optionally measure (within a time budget), and sweep over lengths.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from srsum.errors import SrsumError
from srsum.profiling.analytic import (DEFAULT_ENCODER_BLOCK, MAX_LENGTH, PROFILED_VARIANTS, CostShape, EncoderShape,
                                      analytic_computation, analytic_memory, analytic_product_flops,
                                      analytic_shared_decode_flops, bytes_per_value, decode_values_read,
                                      left_out_terms, require_positive_int, resolve_dtype_name, validate_lengths,
                                      whole_decoder_products)
from srsum.profiling.counted import count_scaled, probe_counters
from srsum.profiling.measured import (PHASES, Budget, available_memory, matmul_rate, measure_plan, measure_variant,
                                      resolve_bandwidth, resolve_device)
from srsum.profiling.models import (attention_shape, build_host_model, config_encoder_block, host_model_type,
                                    load_profile_config, make_inputs, make_variant_model)
from srsum.profiling.report import Measured, ProfileReport, SweepReport, VariantProfile
from srsum.profiling.scaling import ScalingMismatch
from srsum.reporting import Reporter

DEFAULT_TIME_BUDGET = 60.0  # seconds for --measure
MAX_TIME_BUDGET = 24 * 3600.0


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
        shared_decode_products=analytic_shared_decode_flops(variant, shape),
        teacher_products_total=whole_decoder_products(variant, shape, schedule_length, clamp=clamp),
        decode_products_total=whole_decoder_products(variant, shape, schedule_length, clamp=clamp, decode=True),
    )


@dataclass
class ProfileSetup:
    """What one or more profiles share: the resolved model, device, dtype and bandwidth, and the models
    built for counting and measuring (kept across a sweep's points)."""

    config: Any
    model_name: str
    device: Any
    dtype: str
    bandwidth_gbps: float
    bandwidth_source: str
    host_model: Any = None
    counters: dict = field(default_factory=dict)


def prepare(model: str | None = None, device: str = "cpu", dtype: str = "float32",
            bandwidth: str | float | None = None) -> ProfileSetup:
    """Resolve --model, --device, --dtype and --bandwidth (SrsumError on bad input)."""
    dtype_name = resolve_dtype_name(dtype)
    torch_device = resolve_device(device)
    config, description = load_profile_config(model)
    host_model_type(config)
    gbps, source = resolve_bandwidth(bandwidth, torch_device)
    return ProfileSetup(config, description, torch_device, dtype_name, gbps, source)


def check_time_budget(seconds: Any) -> float:
    """``--time-budget``: a positive number of seconds, at most a day."""
    try:
        value = float(str(seconds).strip())
    except ValueError:
        value = float("nan")
    if not (0 < value <= MAX_TIME_BUDGET):
        raise SrsumError(f"--time-budget must be a number of seconds above 0 and at most {MAX_TIME_BUDGET:,.0f}, "
                         f"got {seconds!r}")
    return value


def profile_with(setup: ProfileSetup, *, n: int, m: int, seg_size: int, batch: int = 1, beams: int = 1,
                 schedule_length: int | None = None, count: bool = True, measure: bool = False,
                 variants: Sequence[str] = PROFILED_VARIANTS, seed: int = 0, encoder_block: int | None = None,
                 time_budget: float = DEFAULT_TIME_BUDGET, reporter: Reporter | None = None) -> ProfileReport:
    """One profile with an already prepared setup (the sweep reuses it across lengths)."""
    lengths = validate_lengths(n, m, seg_size, batch, beams)
    G = require_positive_int(schedule_length, "--schedule-length") if schedule_length else lengths["m"]
    block = (require_positive_int(encoder_block, "--encoder-block") if encoder_block is not None
             else config_encoder_block(setup.config) or DEFAULT_ENCODER_BLOCK)
    dims = attention_shape(setup.config)
    shape = CostShape(head_dim=dims["head_dim"], heads=dims["heads"], layers=dims["layers"],
                      d_model=dims["d_model"], **lengths)
    from srsum.engine.settings import make_settings

    # the RAF inputs are clamped where the family's default clamps them (the variant models are converted so)
    clamp = make_settings(host_model_type(setup.config)).clamp is not None
    report = ProfileReport(
        shape=shape, model=setup.model_name, device=str(setup.device), dtype=setup.dtype,
        bandwidth_gbps=setup.bandwidth_gbps, bandwidth_source=setup.bandwidth_source, schedule_length=G,
        variants={v: analytic_profile(v, shape, G, clamp=clamp) for v in variants},
        encoder=EncoderShape(n=shape.n, head_dim=dims["encoder_head_dim"], heads=dims["encoder_heads"],
                             layers=dims["encoder_layers"], batch=shape.batch, block=block),
    )
    _note_shape(report)
    reporter = reporter or Reporter()
    if count:
        _count(report, setup, seed, reporter)
    if measure:
        _measure(report, setup, seed, check_time_budget(time_budget), reporter)
    return report


def _note_shape(report: ProfileReport) -> None:
    shape = report.shape
    if shape.seg_size > shape.n:
        report.notes.append(f"s = {shape.seg_size} > n = {shape.n}: one segment (M = 1), local attention over "
                            "all n keys")
    if shape.segments > report.schedule_length:
        report.notes.append(
            f"M = {shape.segments} segments > G = {report.schedule_length}: some segments are never attended locally")


def _count(report: ProfileReport, setup: ProfileSetup, seed: int, reporter: Reporter) -> None:
    """Counted FLOPs of every variant, scaled exactly from probe runs (``counted.count_scaled``)."""
    runs = checked = layers = 0
    largest = (0, 0)
    with reporter.progress("counting FLOPs", total=len(report.variants)) as advance:
        missing = [v for v in report.variants if v not in setup.counters]
        if missing:
            setup.counters.update(probe_counters(setup.config, missing, setup.dtype, seed))
        results = {}
        for name in report.variants:
            try:
                results[name] = count_scaled(setup.counters[name], report.shape, report.schedule_length)
            except ScalingMismatch as error:
                report.notes.append(f"counted FLOPs left out: {error}; the probe runs do not scale to these lengths")
            advance(1, variant=name)
    for name, scaled in results.items():
        profile = report.variants[name]
        profile.counted_teacher_forced, profile.counted_decode = scaled.teacher, scaled.decode
        runs, checked, layers = runs + scaled.probes, checked + scaled.checked, scaled.probe_layers
        largest = (max(largest[0], scaled.largest[0]), max(largest[1], scaled.largest[1]))
    if runs:
        shape = report.shape
        report.counting = (f"counted on {runs} probe runs of the real cross-attention modules ({layers} layer"
                           f"{'s' if layers != 1 else ''}, one example, n <= {largest[0]}, m <= {largest[1]}), "
                           f"scaled exactly to n {shape.n}, m {shape.m}, {shape.layers} layers, batch {shape.batch} "
                           f"x beams {shape.beams}; {checked} more probe runs predicted exactly")
    report.notes.extend(_count_mismatches(report))


def _count_mismatches(report: ProfileReport) -> list[str]:
    """Notes where counted matrix products differ from the analytic ones: the implementation does work
    the cost model does not expect (e.g. a decode step redoing O(n) work)."""
    notes = []
    for name, profile in report.variants.items():
        checks = (("teacher-forced", profile.counted_teacher_forced, profile.teacher_products_total),
                  ("decode", profile.counted_decode, profile.decode_products_total))
        for path, counted, analytic in checks:
            if counted is not None and analytic and counted.products != analytic:
                notes.append(f"{name}, {path}: counted matrix products are {counted.products / analytic:.4f} x "
                             f"the analytic ones")
    return notes


def _measure(report: ProfileReport, setup: ProfileSetup, seed: int, seconds: float, reporter: Reporter) -> None:
    """Time and peak memory of each variant on the device, within ``seconds`` in all."""
    import torch

    budget = Budget(seconds)
    shape, device = report.shape, setup.device
    width = attention_shape(setup.config)["d_model"]
    size = bytes_per_value(setup.dtype)
    rate = matmul_rate(device, getattr(torch, setup.dtype))
    free = available_memory(device)
    names = list(report.variants)
    with reporter.progress("measuring", total=len(names) * len(PHASES)) as advance:
        if setup.host_model is None:
            setup.host_model = build_host_model(setup.config, device, setup.dtype, seed)
        inputs = None
        for index, name in enumerate(names):
            share = budget.left() / (len(names) - index)
            config = setup.host_model.config
            ffn = getattr(config, "d_ff", None) or getattr(config, "decoder_ffn_dim", None) or 4 * width
            plan = measure_plan(shape, width, name, size, report.variants[name].teacher_products_total, ffn,
                                config.vocab_size)
            reason = None
            if plan.peak_bytes > free / 2:
                reason = (f"needs about {plan.peak_bytes / 2**30:,.1f} GiB, more than half of the "
                          f"{free / 2**30:,.1f} GiB free on {device}")
            elif plan.start_flops / rate > share:
                reason = (f"its first decode step alone would take about {plan.start_flops / rate:,.0f} s "
                          f"of the {share:,.0f} s left for it")
            if reason is None and inputs is None:
                inputs = make_inputs(shape, width, setup.host_model.config.vocab_size, device, setup.dtype, seed)
            if reason is not None:
                report.variants[name].measured = Measured(skipped=[reason])
                report.notes.append(f"{name}: not measured, {reason} (--time-budget {seconds:,.0f} s)")
                advance(len(PHASES), variant=name)
                continue
            model = make_variant_model(setup.host_model, name, shape.seg_size, report.schedule_length)
            measured = measure_variant(model, inputs, shape, device, budget, share,
                                       lambda n=1, **fields: advance(n, variant=name, **fields),
                                       teacher_seconds=plan.teacher_flops / rate)
            report.variants[name].measured = measured
            report.notes.extend(f"{name}: {skip}" for skip in measured.skipped)
            del model
    busy = _busy_cpu(device)
    if busy:
        report.notes.append(busy)
    runs = [p.measured for p in report.variants.values() if p.measured is not None and p.measured.repeats]
    used = time.perf_counter() - budget.started
    timed_steps = sorted({r.steps_timed for r in runs})
    repeats = sorted({r.repeats for r in runs})
    steps = "/".join(sorted({r.decoder_step for r in runs if r.decoder_step})) or "no"
    report.measuring = (f"measured on {device}: the whole decoder ({shape.layers} layers, random weights, random "
                        f"encoder states: the encoder is not run) as srsum's decoder runs it (one state per "
                        f"example shared by its beams, {steps} step), n {shape.n}, m {shape.m}, batch {shape.batch}, "
                        f"beams {shape.beams}; per variant a warm-up, decode timed over "
                        f"{'/'.join(map(str, timed_steps)) or 0} of {shape.m} steps (best of "
                        f"{'/'.join(map(str, repeats)) or 0} runs), peak memory of the decode steps and of one "
                        f"teacher-forced pass; {used:,.1f} s of the {seconds:,.0f} s budget")


def _busy_cpu(device) -> str | None:
    """A note when other processes keep the CPU busy: measured CPU times are then unreliable (on such a
    machine torch's worker threads wait for each other, and small ops slow down many times over)."""
    import os

    import torch

    if device.type != "cpu" or not hasattr(os, "getloadavg"):
        return None
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load <= cores:
        return None
    hint = " or with OMP_NUM_THREADS=1" if torch.get_num_threads() > 1 else ""
    return (f"the CPU was busy (load {load:,.1f} on {cores} cores): measured times are unreliable; "
            f"measure again on a quiet machine{hint}")


def profile(*, model: str | None = None, n: int = 1024, m: int = 128, seg_size: int = 64, batch: int = 1,
            beams: int = 1, device: str = "cpu", dtype: str = "float32", bandwidth: str | float | None = None,
            schedule_length: int | None = None, count: bool = True, measure: bool = False,
            variants: Sequence[str] = PROFILED_VARIANTS, seed: int = 0, encoder_block: int | None = None,
            time_budget: float = DEFAULT_TIME_BUDGET, reporter: Reporter | None = None) -> ProfileReport:
    """Analytic, counted and (with ``measure``) measured cross-attention cost of each variant at one
    (n, m, s), with the encoder's self-attention beside it."""
    validate_lengths(n, m, seg_size, batch, beams)
    if measure:
        check_time_budget(time_budget)
    setup = prepare(model, device, dtype, bandwidth)
    return profile_with(setup, n=n, m=m, seg_size=seg_size, batch=batch, beams=beams,
                        schedule_length=schedule_length, count=count, measure=measure,
                        variants=variants, seed=seed, encoder_block=encoder_block, time_budget=time_budget,
                        reporter=reporter)


DEFAULT_SWEEP_N = (256, 512, 1024, 2048, 4096)
DEFAULT_SWEEP_M = (64, 128, 256, 512, 1024)


def sweep_lengths(over: str, lengths: Sequence[Any] | None, n: int, m: int) -> list[tuple[int, int]]:
    """(n, m) pairs: over n with m fixed, or over m with n = 8 m."""
    if over not in ("n", "m"):
        raise SrsumError(f"--sweep-over must be n or m, got {over!r}")
    defaults = DEFAULT_SWEEP_N if over == "n" else DEFAULT_SWEEP_M
    limit = MAX_LENGTH if over == "n" else MAX_LENGTH // 8
    values = [require_positive_int(v, "--lengths", limit) for v in (lengths or defaults)]
    if not values:
        raise SrsumError("--lengths needs at least one length")
    if len(values) > 64:
        raise SrsumError(f"--lengths takes at most 64 lengths, got {len(values)}")
    return [(v, m) if over == "n" else (8 * v, v) for v in values]


def sweep(*, over: str = "n", lengths: Sequence[Any] | None = None, model: str | None = None, n: int = 1024,
          m: int = 128, seg_size: int = 64, batch: int = 1, beams: int = 1, device: str = "cpu",
          dtype: str = "float32", bandwidth: str | float | None = None, count: bool = True,
          measure: bool = False, seed: int = 0, progress: Callable[[int, int], None] | None = None,
          encoder_block: int | None = None, time_budget: float = DEFAULT_TIME_BUDGET,
          reporter: Reporter | None = None) -> SweepReport:
    """Profiles along n (m fixed) or along m (n = 8 m): the scaling table, JSON and plot's data. With
    ``measure``, ``time_budget`` is shared by the points. ``progress(index, total)`` is called before
    each point; ``reporter`` gets a progress task for the sweep and for each point's phases."""
    validate_lengths(n, m, seg_size, batch, beams)
    pairs = sweep_lengths(over, lengths, n, m)
    budget = check_time_budget(time_budget) if measure else time_budget
    setup = prepare(model, device, dtype, bandwidth)
    reporter = reporter or Reporter()
    points = []
    started = time.perf_counter()
    with reporter.progress("sweep points", total=len(pairs)) as advance:
        for index, (point_n, point_m) in enumerate(pairs):
            if progress is not None:
                progress(index, len(pairs))
            share = max((budget - (time.perf_counter() - started)) / (len(pairs) - index), 0.01)
            points.append(profile_with(setup, n=point_n, m=point_m, seg_size=seg_size, batch=batch, beams=beams,
                                       count=count, measure=measure, seed=seed, encoder_block=encoder_block,
                                       time_budget=share, reporter=reporter))
            advance(1, length=f"n {point_n}, m {point_m}")
    return SweepReport(over=over, lengths=[p[0] if over == "n" else p[1] for p in pairs], points=points)
