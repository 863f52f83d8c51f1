"""Helpers for running srsum under several processes (``torchrun`` or ``accelerate launch``).

Everything here also works in a single process, where it does nothing but return its input, so callers need
no ``if num_processes > 1``. The pieces are small on purpose, so that other commands can shard their work
the same way :func:`srsum.training.train` shards its validation:

* :func:`shard_bounds` / :func:`shard` -- this process's contiguous slice of a list (deterministic, no
  shuffling; the slices of all processes, in rank order, are the whole list);
* :func:`gather_shards` -- the per-process result lists concatenated in rank order, on every process;
* :func:`map_sharded` -- both: ``fn`` runs on this process's slice and every process gets all the results, in
  input order (e.g. ``map_sharded(sources, lambda part: generate_summaries(model, tokenizer, part, ...))``);
* :func:`reduce_sums` -- sums of a few numbers over the processes (loss sums, token counts);
* :func:`on_main` -- run something on the main process only (e.g. pick a time-stamped name) and share the
  result, or its :class:`SrsumError`, with every process;
* :func:`agree` -- run a setup phase and, when any process failed with an :class:`SrsumError`, raise it on
  every process (instead of leaving the others waiting for the failed one at the next collective).

``accelerator`` may be an ``accelerate.Accelerator`` or ``accelerate.PartialState`` (``None``: the current
``PartialState``, which starts the process group under a launcher).
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from srsum.errors import SrsumError

T = TypeVar("T")
R = TypeVar("R")


def _destroy_process_group_at_exit() -> None:
    """Tear the process group down before the interpreter's own teardown: left to it, gloo's threads were
    destroyed still running in about one run in five, and the process aborted after its work was done
    ("terminate called without an active exception", exit -6, so torchrun reported the job failed)."""
    try:
        import torch.distributed as dist
    except ImportError:
        return
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


atexit.register(_destroy_process_group_at_exit)


def _state(accelerator):
    if accelerator is not None:
        return accelerator
    from accelerate import PartialState

    return PartialState()


def shard_bounds(count: int, processes: int, rank: int) -> tuple[int, int]:
    """``[start, end)`` of process ``rank``'s contiguous part of ``count`` items: sizes differ by at most one, the
    first ranks never get fewer; a rank gets nothing when ``count < processes``."""
    if processes < 1 or not 0 <= rank < processes:
        raise ValueError(f"rank {rank} of {processes} processes")
    size, extra = divmod(count, processes)
    start = rank * size + min(rank, extra)
    return start, start + size + (1 if rank < extra else 0)


def shard(items: Sequence[T], accelerator=None) -> list[T]:
    """This process's contiguous slice of ``items`` (all of it in a single process)."""
    state = _state(accelerator)
    start, end = shard_bounds(len(items), state.num_processes, state.process_index)
    return list(items[start:end])


def gather_shards(values: list[T], accelerator=None) -> list[T]:
    """Every process's ``values`` concatenated in rank order, returned on every process (picklable values)."""
    state = _state(accelerator)
    if state.num_processes == 1:
        return list(values)
    from accelerate.utils import gather_object

    return list(gather_object(list(values)))


def map_sharded(items: Sequence[T], fn: Callable[[list[T]], list[R]], accelerator=None) -> list[R]:
    """``fn`` over this process's slice of ``items``; the results of all processes, in the order of ``items``, on
    every process. ``fn`` must return one result per item."""
    part = shard(items, accelerator)
    results = list(fn(part)) if part else []
    if len(results) != len(part):
        raise ValueError(f"map_sharded: fn returned {len(results)} results for {len(part)} items")
    return gather_shards(results, accelerator)


def reduce_sums(values: Sequence[float], accelerator=None) -> list[float]:
    """Each of ``values`` summed over the processes (float64), on every process."""
    state = _state(accelerator)
    if state.num_processes == 1:
        return [float(v) for v in values]
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=state.device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def agree(phase: Callable[[], T], accelerator=None) -> T:
    """Run ``phase`` on every process; if it raised :class:`SrsumError` on any of them, raise the first such error
    (by rank) on all of them. Other exceptions propagate as they are (the launcher then stops the others)."""
    state = _state(accelerator)
    error: SrsumError | None = None
    result = None
    try:
        result = phase()
    except SrsumError as caught:
        if state.num_processes == 1:
            raise
        error = caught
    if state.num_processes > 1:
        messages = gather_shards([None if error is None else str(error)], state)
        failed = [message for message in messages if message is not None]
        if failed:
            raise (error if error is not None else SrsumError(failed[0]))
    return result


def on_main(fn: Callable[[], T], accelerator=None) -> T:
    """``fn()`` run on the main process only, its result (picklable) returned on every process; an
    :class:`SrsumError` it raises is raised on every process."""
    state = _state(accelerator)
    if state.num_processes == 1:
        return fn()
    from accelerate.utils import broadcast_object_list

    holder: list[Any] = [None]
    if state.is_main_process:
        try:
            holder = [("ok", fn())]
        except SrsumError as error:
            holder = [("error", str(error))]
    broadcast_object_list(holder)
    kind, value = holder[0]
    if kind == "error":
        raise SrsumError(value)
    return value


def launched_processes() -> int:
    """The number of processes the launcher started (WORLD_SIZE; 1 without a launcher)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def process_group(device: str | None = None):
    """accelerate's process state under a launcher (``None`` in a single process); ``device="cpu"`` keeps a GPU
    machine's processes on the CPU."""
    if launched_processes() == 1:
        return None
    from accelerate import PartialState

    return PartialState(cpu=device == "cpu")


def reset_accelerate_state(partial: bool = False) -> None:
    """Clear accelerate's process-wide singletons, which refuse a second, different configuration (``train()`` may
    run several times in one process: tests, notebooks). ``partial`` also clears the process state (only
    safe while it started no process group)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=partial)
    GradientState._reset_state()


def make_accelerator(cpu: bool = False, **settings):
    """An ``accelerate.Accelerator`` for this launch. When a launcher started several processes but there is no
    device accelerate can spread them over (a CPU-only machine without ``--cpu``), accelerate would let every
    process train alone on all the data; the processes then run on the CPU together (gloo) instead."""
    from accelerate import Accelerator

    reset_accelerate_state()
    accelerator = Accelerator(cpu=cpu, **settings)
    if not cpu and accelerator.num_processes == 1 and launched_processes() > 1:
        reset_accelerate_state(partial=True)
        accelerator = Accelerator(cpu=True, **settings)
    return accelerator


def single_process_launch_warning() -> str | None:
    """A warning when ``accelerate launch --cpu --num_processes N`` (N > 1) started one process only: accelerate's
    CPU launcher runs several processes only through MPI (``--mpirun_hostfile``); otherwise it starts one."""
    env = os.environ
    asked_cpu = env.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    if asked_cpu and "MASTER_ADDR" in env and "WORLD_SIZE" not in env and "OMPI_COMM_WORLD_SIZE" not in env \
            and "PMI_SIZE" not in env:
        return ("`accelerate launch --cpu` started a single process (without MPI it runs one process whatever "
                "--num_processes says): this run trains on one process; for N CPU processes use `torchrun "
                "--nproc_per_node N -m srsum.cli train ... --cpu` or `accelerate launch --multi_gpu --num_processes "
                "N -m srsum.cli train ... --cpu`")
    return None
