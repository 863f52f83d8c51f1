"""Measured figures and the hardware they depend on: devices, memory bandwidth (data sheets or a timed
copy), live-bytes peak memory tracking and timed decode steps. torch is imported inside functions.
"""

from __future__ import annotations

import math
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from srsum.errors import SrsumError

# Peak memory bandwidth in GB/s (vendor data sheets). Matched in order against the CUDA device name,
# every keyword must appear (upper-cased); the first match wins.
GPU_BANDWIDTH_GBPS: tuple[tuple[tuple[str, ...], float, str], ...] = (
    (("H200",), 4800.0, "H200"),
    (("H100", "PCIE"), 2000.0, "H100 PCIe"),
    (("H100", "NVL"), 3900.0, "H100 NVL"),
    (("H100",), 3350.0, "H100 SXM"),
    (("A100", "80GB", "PCIE"), 1935.0, "A100 80GB PCIe"),
    (("A100", "80GB"), 2039.0, "A100 80GB SXM"),
    (("A100",), 1555.0, "A100 40GB"),
    (("L40S",), 864.0, "L40S"),
    (("L40",), 864.0, "L40"),
    (("L4",), 300.0, "L4"),
    (("A10G",), 600.0, "A10G"),
    (("A10",), 600.0, "A10"),
    (("V100",), 900.0, "V100"),
    (("T4",), 320.0, "T4"),
    (("4090",), 1008.0, "RTX 4090"),
    (("3090",), 936.0, "RTX 3090"),
)
# Names accepted by --bandwidth besides a number of GB/s.
BANDWIDTH_NAMES_GBPS = {
    "h200": 4800.0, "h100": 3350.0, "h100-sxm": 3350.0, "h100-pcie": 2000.0, "h100-nvl": 3900.0,
    "a100": 2039.0, "a100-80gb": 2039.0, "a100-40gb": 1555.0, "l40s": 864.0, "l4": 300.0,
    "a10g": 600.0, "a10": 600.0, "v100": 900.0, "t4": 320.0, "rtx4090": 1008.0, "rtx3090": 936.0,
}


def resolve_device(name: str):
    """A usable ``torch.device`` for ``name`` (cpu, cuda, cuda:N, mps) or SrsumError."""
    import torch

    text = str(name).strip().lower()
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise SrsumError(f"unknown device {name!r}: use cpu, cuda, cuda:N or mps") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SrsumError(f"device {name!r} is not available: this machine has no usable CUDA GPU")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SrsumError(f"device {name!r} is not available: only {torch.cuda.device_count()} CUDA GPU(s)")
        return device
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise SrsumError(f"device {name!r} is not available on this machine")
        return device
    raise SrsumError(f"unknown device {name!r}: use cpu, cuda, cuda:N or mps")


# --------------------------------------------------------------------------------------------------
# Memory bandwidth
# --------------------------------------------------------------------------------------------------


def gpu_bandwidth_gbps(device_name: str) -> tuple[float, str] | None:
    """Data-sheet bandwidth for a CUDA device name, or None when the card is not in the table."""
    upper = device_name.upper()
    for keywords, gbps, label in GPU_BANDWIDTH_GBPS:
        if all(word in upper for word in keywords):
            return gbps, label
    return None


def parse_bandwidth(text: str) -> float:
    """``--bandwidth``: GB/s as a number, or a card name (h100, h200, a100-80gb, ...)."""
    value = str(text).strip().lower()
    if value in BANDWIDTH_NAMES_GBPS:
        return BANDWIDTH_NAMES_GBPS[value]
    try:
        gbps = float(value.removesuffix("gb/s").strip())
    except ValueError:
        names = ", ".join(sorted(BANDWIDTH_NAMES_GBPS))
        raise SrsumError(f"--bandwidth must be GB/s (a number) or one of {names}; got {text!r}") from None
    if not math.isfinite(gbps) or gbps <= 0:
        raise SrsumError(f"--bandwidth must be a positive number of GB/s, got {text!r}")
    return gbps


_MEASURED_BANDWIDTH: dict[str, float] = {}


def measure_copy_bandwidth_gbps(device, megabytes: int = 64, repeats: int = 3) -> float:
    """Bytes read + written per second by a large tensor copy on ``device`` (best of ``repeats``)."""
    import torch

    key = str(device)
    if key in _MEASURED_BANDWIDTH:
        return _MEASURED_BANDWIDTH[key]
    source = torch.ones(megabytes * 2**20 // 4, dtype=torch.float32, device=device)  # (values,)
    target = torch.empty_like(source)
    best = math.inf
    for _ in range(repeats + 1):  # the first copy warms pages and caches up
        _synchronize(device)
        start = time.perf_counter()
        target.copy_(source)
        _synchronize(device)
        best = min(best, time.perf_counter() - start)
    gbps = 2 * source.numel() * 4 / best / 1e9
    _MEASURED_BANDWIDTH[key] = gbps
    return gbps


def resolve_bandwidth(bandwidth: str | float | None, device) -> tuple[float, str]:
    """(GB/s, where it comes from) for the bandwidth floor."""
    import torch

    if bandwidth is not None:
        gbps = bandwidth if isinstance(bandwidth, (int, float)) else parse_bandwidth(bandwidth)
        if gbps <= 0:
            raise SrsumError(f"--bandwidth must be positive, got {bandwidth}")
        return float(gbps), "given (--bandwidth)"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        known = gpu_bandwidth_gbps(name)
        if known is not None:
            return known[0], f"data sheet, {known[1]}"
        return measure_copy_bandwidth_gbps(device), f"measured copy on {name}"
    return measure_copy_bandwidth_gbps(device), f"measured copy on {device.type}"


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


# --------------------------------------------------------------------------------------------------
# Memory and time measurement
# --------------------------------------------------------------------------------------------------


class LiveBytesTracker:
    """Peak bytes of the tensor storages operators create while it is active (CPU and any device).

    A TorchDispatchMode sees every operator's outputs; each new storage is counted until Python
    frees it (a weak reference's callback), and the running maximum is the peak above what was
    alive before. Views and in-place results share a storage and count once.
    """

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0
        self._seen: dict[int, weakref.ref] = {}
        self._mode = None

    def __enter__(self) -> "LiveBytesTracker":
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        tracker = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                inputs = tracker._storage_ids(tree_flatten((args, kwargs))[0])
                out = func(*args, **(kwargs or {}))
                for item in tree_flatten(out)[0]:
                    tracker._note(item, inputs)
                return out

        self._mode = _Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._mode.__exit__(*exc)
        self._mode = None

    @staticmethod
    def _storage_ids(items: list) -> set[int]:
        import torch

        found = set()
        for item in items:
            if isinstance(item, torch.Tensor):
                try:
                    found.add(id(item.untyped_storage()))
                except NotImplementedError:  # an opaque tensor (a oneDNN-packed weight copy): no storage to name
                    pass
        return found

    def _note(self, item: Any, input_storages: set[int]) -> None:
        """Count ``item``'s storage if the operator made it (not a view or in-place result of an input)."""
        import torch

        if not isinstance(item, torch.Tensor):
            return
        storage = item.untyped_storage()
        key = id(storage)
        if key in input_storages or (key in self._seen and self._seen[key]() is storage):
            return
        size = storage.nbytes()
        self._seen[key] = weakref.ref(storage, lambda _ref, k=key, b=size: self._free(k, b))
        self.live += size
        self.peak = max(self.peak, self.live)

    def _free(self, key: int, size: int) -> None:
        self.live -= size
        self._seen.pop(key, None)


def measure_peak_bytes(run: Callable[[], Any], device) -> int:
    """Peak memory ``run()`` allocates above what was allocated before it."""
    import torch

    with torch.no_grad():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            run()
            torch.cuda.synchronize(device)
            return max(0, torch.cuda.max_memory_allocated(device) - before)
        with LiveBytesTracker() as tracker:
            run()
        return tracker.peak


class CrossAttentionTimer:
    """Wall time spent inside the cross-attention modules (forward hooks; syncs the GPU on each)."""

    def __init__(self, modules: Iterable[Any], device) -> None:
        self.seconds = 0.0
        self._device = device
        self._handles = []
        for module in modules:
            self._handles.append(module.register_forward_pre_hook(self._start))
            self._handles.append(module.register_forward_hook(self._stop))
        self._started = 0.0

    def _start(self, module, args) -> None:
        _synchronize(self._device)
        self._started = time.perf_counter()

    def _stop(self, module, args, output) -> None:
        _synchronize(self._device)
        self.seconds += time.perf_counter() - self._started

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def timed(run: Callable[[], Any], device) -> float:
    """Seconds ``run()`` takes, the device synchronised before and after."""
    import torch

    with torch.no_grad():
        _synchronize(device)
        start = time.perf_counter()
        run()
        _synchronize(device)
        return time.perf_counter() - start


# --------------------------------------------------------------------------------------------------
# The measured run (--measure): bounded by a time budget and by memory
# --------------------------------------------------------------------------------------------------

PHASES = ("warm-up", "decode timing", "decode peak", "teacher-forced peak")


@dataclass
class Budget:
    """Wall seconds the measured run may take; each variant gets an equal share of what is left."""

    seconds: float
    started: float = field(default_factory=time.perf_counter)

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.started)


def matmul_rate(device, dtype) -> float:
    """FLOP/s of a 512 x 512 x 512 matrix product on ``device`` (best of 3): what the budget's estimates
    divide by."""
    import torch

    a = torch.randn(512, 512, device=device).to(dtype)
    b = torch.randn(512, 512, device=device).to(dtype)
    best = math.inf
    for _ in range(4):
        _synchronize(device)
        start = time.perf_counter()
        a @ b
        _synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * 512**3 / max(best, 1e-9)


def available_memory(device) -> int:
    """Bytes free on ``device``: the CUDA allocator's free memory, else the machine's available RAM."""
    import os

    import torch

    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not on every platform: assume plenty
        return 1 << 50


@dataclass
class MeasurePlan:
    """What one variant's measured run would cost, from closed forms: the decoder's first step (it projects
    the n encoder rows of every layer: full attention's keys and values, srformer's Gram matrix) and the
    bytes it keeps; when either is out of reach the variant is not run."""

    start_flops: float
    peak_bytes: float
    teacher_flops: float = 0.0  # one teacher-forced pass of the whole decoder (its cost before any overhead)


def measure_plan(shape, width: int, variant: str, bytes_per_value: int, cross_products: int = 0,
                 ffn: int = 0, vocab: int = 0) -> MeasurePlan:
    """``cross_products``: the variant's teacher-forced cross-attention products; ``ffn``, ``vocab``: the
    decoder's feed-forward width and vocabulary (for the rest of a teacher-forced pass)."""
    rows = shape.batch  # srsum's decoder builds and keeps one state per example, shared by its beams
    kv = shape.heads * shape.head_dim
    if variant == "full":
        start = 4 * shape.n * width * kv * shape.layers * rows            # K and V of every layer
        held = 2 * shape.n * kv * shape.layers * rows * bytes_per_value   # kept for all steps
    else:
        start = 2 * shape.segments * shape.local_keys * width * width * rows  # the Gram matrix
        held = shape.segments * shape.local_keys * width * rows * bytes_per_value
    inputs = shape.n * width * rows * bytes_per_value
    scores = 3 * shape.heads * shape.batch * shape.m * (shape.n if variant == "full" else shape.local_keys) * 4
    teacher = 2 * shape.n * kv * shape.batch * bytes_per_value + scores  # one layer's keys, values, scores
    m, layers, batch = shape.m, shape.layers, shape.batch
    teacher_flops = (cross_products
                     + 2 * (2 * shape.n + 2 * m) * width * kv * layers * batch        # cross q/k/v/o
                     + 2 * m * (4 * width * kv + 2 * width * ffn) * layers * batch    # self q/k/v/o, feed-forward
                     + 4 * m * m * kv * layers * batch + 2 * m * width * vocab * batch)  # self scores, LM head
    return MeasurePlan(start_flops=start, peak_bytes=inputs + max(held, teacher), teacher_flops=teacher_flops)


def _steps_done(output) -> int:
    return int(output.shape[-1]) - 1  # the decoder start token, then one token per step


def measure_variant(model, inputs, shape, device, budget: Budget, share: float,
                    advance: Callable[..., None] = lambda n=1, **fields: None, max_repeats: int = 3,
                    teacher_seconds: float = 0.0):
    """Time and peak memory of one variant's ``model``, within ``share`` seconds (and the budget).

    Decode runs are srsum's decoder (``models.decode_run``; ``decoder_step`` records its step mode) with a
    ``max_time``, so they stop early rather than overrun; the timed run is
    repeated (best of up to ``max_repeats``) while time is left, and the teacher-forced pass runs only
    when it fits: ``teacher_seconds`` (its FLOPs at the device's rate) plus, for the dispatch overhead, a
    few decode steps, times the peak tracker's slowdown. Returns a ``Measured`` (``skipped`` lists what
    did not fit)."""
    from srsum.profiling.counted import cross_attention_modules
    from srsum.profiling.models import decode_run, decoder_step, teacher_forced_run
    from srsum.profiling.report import Measured

    started = time.perf_counter()
    measured = Measured(decoder_step=decoder_step(device))

    def left() -> float:
        return min(budget.left(), share - (time.perf_counter() - started))

    def phase_done(name: str) -> None:
        advance(1, phase=name)

    timed(decode_run(model, inputs, min(2, shape.m), shape.beams, max_time=max(left(), 0.01)), device)  # warm-up
    phase_done("warm-up")
    modules = list(cross_attention_modules(model).values())
    whole = cross = None  # best seconds per step: the whole decoder, and inside cross-attention
    last_seconds = 0.0
    while measured.repeats < max_repeats and left() > 0:
        # on a GPU the hooks synchronise, so only the first run carries them (the others time the step)
        timer = CrossAttentionTimer(modules, device) if device.type == "cpu" or measured.repeats == 0 else None
        run = decode_run(model, inputs, shape.m, shape.beams, max_time=max(left() / 2, 0.01))
        try:
            output, seconds = _timed_output(run, device)
        finally:
            if timer is not None:
                timer.remove()
        steps = _steps_done(output)
        if steps < 1:
            break
        last_seconds = seconds
        measured.repeats += 1
        measured.steps_timed = steps if measured.repeats == 1 else min(measured.steps_timed, steps)
        if timer is not None:
            cross = min(cross or math.inf, timer.seconds / steps)
        if timer is None or device.type == "cpu":
            whole = min(whole or math.inf, seconds / steps)
        if steps < shape.m or left() < seconds * 1.2:
            break
    measured.decode_step_s, measured.cross_attention_step_s = whole, cross
    if measured.repeats == 0:
        measured.skipped.append("decode timing: no step finished within the budget")
    elif whole is None:
        measured.skipped.append("whole-decoder step time: no run without timing hooks fitted in the budget")
    phase_done("decode timing")
    # a step's time bounds what the peak runs cost (the first, hooked GPU run stands in when it is all there is)
    step_s = whole if whole is not None else (last_seconds / max(measured.steps_timed, 1))
    tracking = 1 if device.type == "cuda" else 4  # the live-bytes tracker slows a CPU run down about 4x
    if measured.repeats and left() > step_s * tracking * 2:
        run = decode_run(model, inputs, shape.m, shape.beams, max_time=left() / tracking / 2)
        peak, output = _peak_and_output(run, device)
        measured.decode_peak_bytes, measured.peak_steps = peak, _steps_done(output)
    else:
        measured.skipped.append("decode peak memory: out of time")
    phase_done("decode peak")
    estimate = tracking * (teacher_seconds + 4 * step_s)
    if measured.repeats and estimate < left():
        measured.teacher_forced_peak_bytes = measure_peak_bytes(teacher_forced_run(model, inputs), device)
    else:
        measured.skipped.append(f"teacher-forced peak memory: would take about {estimate:,.0f} s")
    phase_done("teacher-forced peak")
    measured.seconds = time.perf_counter() - started
    return measured


def _timed_output(run: Callable[[], Any], device):
    import torch

    with torch.no_grad():
        _synchronize(device)
        start = time.perf_counter()
        output = run()
        _synchronize(device)
        return output, time.perf_counter() - start


def _peak_and_output(run: Callable[[], Any], device):
    box = {}

    def keep():
        box["output"] = run()

    peak = measure_peak_bytes(keep, device)
    return peak, box["output"]
