"""How many CPU threads a run's matrix products use.

torch starts with one intra-op thread per physical core, which is what one process on a machine wants.
Under a launcher (``torchrun``, ``accelerate launch``) torch's launcher sets OMP_NUM_THREADS=1, which leaves
most cores idle when a node runs fewer processes than it has cores; srsum then gives each process its share
of the cores this process may run on. ``--threads N`` overrides both.
"""

from __future__ import annotations

import os

import torch

from .errors import UsageError


def usable_cores() -> int:
    """Logical CPUs this process may run on (its affinity mask: a container's or taskset's limit)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def local_processes() -> int:
    """Processes a launcher started on this node (1 without a launcher)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def default_threads() -> int:
    """torch's own choice for a lone process; under a launcher, this node's cores shared among its processes."""
    if local_processes() == 1 and "LOCAL_RANK" not in os.environ:
        return torch.get_num_threads()
    return max(1, usable_cores() // local_processes())


def use_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads (None: :func:`default_threads`) and return how many it now uses."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise UsageError(f"--threads must be a positive number of threads, got {threads!r}")
    wanted = default_threads() if threads is None else threads
    if wanted != torch.get_num_threads():
        torch.set_num_threads(wanted)
    return torch.get_num_threads()
