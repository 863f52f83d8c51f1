"""Training checkpoints on disk: atomic writes, finding complete checkpoints, RNG state.

Layout of a training run folder (``models/<run-name>/`` by default)::

    checkpoint-<step>/     model (config.json + model.safetensors), tokenizer files,
                           optimizer.pt, scheduler.pt, rng.json, trainer_state.json
    best/                  model, tokenizer and trainer_state.json of the best evaluation so far

Every folder is first written as ``<name>.tmp-<pid>-XXXXXXXX`` beside its final place, its files and itself
flushed to disk (fsync), and renamed when complete, so an interrupted write never leaves a half-written
checkpoint under a final name; folders with ``.tmp`` in their name are ignored by every reader here.
``trainer_state.json`` is written last. An existing folder (``best/``) is swapped for the new one in one
atomic exchange where the system has it (Linux ``renameat2``); elsewhere it is moved aside as
``<name>.tmp-old-XXXX`` first, and :func:`recover_run_dir` (run when training starts and before every save)
puts it back if a crash came between the two renames, and removes the leftovers of interrupted writes (only
those whose process, the pid in their name, is gone: a live run's temporary folders are its own).
Files (predictions, metrics) are written the same way with :func:`atomic_write_text`. Written files and
folders get the usual permissions of the process umask (0644 / 0755 under umask 022).

Every error of a write (a full disk, a quota, a read-only or failing filesystem, a permission; safetensors'
``SafetensorError`` and torch's writer errors as well as ``OSError``) is a :class:`RuntimeFailure` naming the
path: the temporary folder or file is removed and what was there before is left as it was.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from srsum.errors import RuntimeFailure, SrsumError

TRAINER_STATE = "trainer_state.json"
BEST = "best"
CHECKPOINT_PREFIX = "checkpoint-"
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
MODELS_DIR = "models"


# ---------------------------------------------------------------------------------------------
# atomic writes


def _describe(error: BaseException) -> str:
    """An error's reason on one line: an OSError's strerror, else its message (or type), shortened."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return " ".join(str(error).split())[:200] or type(error).__name__


def _temp_prefix(name: str) -> str:
    """The prefix of this process's temporary copy of ``name`` (its pid says whose it is)."""
    return f"{name}.tmp-{os.getpid()}-"


@contextmanager
def write_errors(path: str | Path) -> Iterator[None]:
    """Turn any error of the writes inside (OSError, SafetensorError, torch's writer RuntimeError, ...) into a
    one-line :class:`RuntimeFailure` naming ``path``; SrsumError and KeyboardInterrupt pass as they are."""
    try:
        yield
    except SrsumError:
        raise
    except Exception as error:
        raise RuntimeFailure(f"cannot write {path}: {_describe(error)}") from None


def write_new_file(path: str | Path, text: str) -> None:
    """Write ``text`` to a file that must not exist yet, never through a symbolic link (O_EXCL | O_NOFOLLOW)."""
    from srsum.locks import open_no_follow

    handle = open_no_follow(path, os.O_WRONLY, "new file", new=True)
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        stream.write(text)


def ensure_writable_dir(folder: str | Path, what: str = "output directory") -> Path:
    """Create ``folder`` (with parents) and check a file can be written in it: SrsumError when the path cannot be
    a folder (a file is in the way), RuntimeFailure when the system refuses the write (permission, read-only or
    full filesystem, ...)."""
    path = Path(folder).expanduser()
    if path.exists() and not path.is_dir():
        raise SrsumError(f"cannot write to {what} {path}: it exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=_temp_prefix(".srsum-write-test")):
            pass
    except OSError as error:
        kind = SrsumError if error.errno in (errno.ENOTDIR, errno.EEXIST) else RuntimeFailure
        raise kind(f"cannot write to {what} {path}: {_describe(error)}") from None
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (renames into it) to disk; a no-op where folders cannot be opened (Windows)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def _settle(folder: Path) -> None:
    """Give everything under ``folder`` the umask's permissions (temporary files and folders are created 0600 /
    0700) and flush it to disk, deepest first."""
    mask = _umask()
    for root, dirs, files in os.walk(folder, topdown=False):
        for name in files:
            path = os.path.join(root, name)
            os.chmod(path, 0o666 & ~mask)
            with open(path, "rb") as stream:
                os.fsync(stream.fileno())
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        _fsync_dir(Path(root))
    os.chmod(folder, 0o777 & ~mask)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(f".{path.name}"))  # O_EXCL|O_NOFOLLOW
    except OSError as error:
        raise RuntimeFailure(f"cannot write {path}: {_describe(error)}") from None
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            if hasattr(os, "fchmod"):  # mkstemp creates 0600
                os.fchmod(stream.fileno(), 0o666 & ~_umask())
            os.fsync(stream.fileno())
        os.replace(temp, path)
        _fsync_dir(path.parent)
    except BaseException as error:
        Path(temp).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise RuntimeFailure(f"cannot write {path}: {_describe(error)}") from None
        raise
    return path


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """:func:`atomic_write_text` of ``data`` as indented JSON."""
    return atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


@contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``final``; on success it replaces ``final``.

    On any exception (KeyboardInterrupt included) the temporary folder is removed and ``final`` is
    left as it was; an error of the writes (see :func:`write_errors`) is a RuntimeFailure naming ``final``. The
    new folder is flushed to disk (files, then folder) before it is renamed. An existing
    ``final`` is exchanged with the new folder atomically where the system can; otherwise it is moved aside
    as ``<name>.tmp-old-XXXX`` and the new folder renamed into place (a crash between the two renames is
    repaired by :func:`recover_run_dir`). Then the old one is deleted.
    """
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(dir=final.parent, prefix=_temp_prefix(final.name)))
    except OSError as error:
        raise RuntimeFailure(f"cannot write {final}: {_describe(error)}") from None
    old = None
    try:
        with write_errors(final):
            yield temp
            _settle(temp)
            if final.exists():
                if _exchange(temp, final):
                    old = temp  # the exchange left the previous folder under the temporary name
                else:
                    old = final.with_name(f"{final.name}{_OLD}{os.getpid()}-{temp.name.rsplit('-', 1)[-1]}")
                    os.rename(final, old)
                    os.rename(temp, final)
            else:
                os.rename(temp, final)
            _fsync_dir(final.parent)
    except BaseException:
        if old is not temp:
            shutil.rmtree(temp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


_OLD = ".tmp-old-"
_LEFTOVER = re.compile(r"^(?P<name>\.?[^/]+?)\.tmp-(?:old-)?(?:(?P<pid>\d+)-)?")


def _alive(pid: int) -> bool:
    """True while process ``pid`` exists (a process of another user included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, it is someone else's
        return True
    return True


def _in_use(match: re.Match) -> bool:
    """A temporary name of a process still running, other than this one (its write may be under way)."""
    pid = match.group("pid")
    return pid is not None and int(pid) != os.getpid() and _alive(int(pid))


def recover_run_dir(run_dir: str | Path) -> list[Path]:
    """Repair a run folder after a crash: a folder moved aside as ``<name>.tmp-old-XXXX`` whose ``<name>`` is
    missing (the crash came between the two renames of :func:`atomic_dir`) is put back; every other leftover
    of an interrupted write (``<name>.tmp-XXXX`` folders, ``.<file>.tmp-XXXX`` files) is removed. A temporary
    name carries the pid of the process that made it: one of another process that is still running is left
    alone (only the run that made a temporary folder removes it while it runs). Returns the paths removed."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    removed = []
    for path in sorted(run_dir.iterdir()):
        match = _LEFTOVER.match(path.name)
        if match is None or _in_use(match):
            continue
        final = run_dir / match.group("name")
        if _OLD in path.name and path.is_dir() and not final.exists() and is_complete_folder(path):
            os.rename(path, final)
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    _fsync_dir(run_dir)
    return removed


def is_complete_folder(path: Path) -> bool:
    """A written-out checkpoint or model folder, whatever its name: config.json and trainer_state.json."""
    return path.is_dir() and (path / "config.json").is_file() and (path / TRAINER_STATE).is_file()


# ---------------------------------------------------------------------------------------------
# finding checkpoints


def is_temporary(path: Path) -> bool:
    """True for folders that are being (or were never completely) written."""
    return ".tmp" in path.name


def is_complete(path: str | Path) -> bool:
    """True for a finished checkpoint folder: not temporary, with config.json and trainer_state.json."""
    path = Path(path)
    return not is_temporary(path) and is_complete_folder(path)


def checkpoint_step(path: Path) -> int | None:
    """The step of a ``checkpoint-<step>`` folder, else None."""
    match = _CHECKPOINT_NAME.match(path.name)
    return int(match.group(1)) if match else None


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete ``checkpoint-<step>`` folders of a run, oldest step first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if checkpoint_step(p) is not None and is_complete(p)]
    return sorted(found, key=lambda p: checkpoint_step(p))


def last_checkpoint(run_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step in ``run_dir``, or None."""
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def _mtime(path: Path) -> float:
    try:
        return (path / TRAINER_STATE).stat().st_mtime
    except OSError:
        return 0.0


def find_run_dirs(root: str | Path = MODELS_DIR) -> list[Path]:
    """Run folders under ``root`` (``root`` itself included) holding a complete checkpoint, newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    candidates = [root] + [p for p in root.iterdir() if p.is_dir() and not is_temporary(p)]
    runs = []
    for run in candidates:
        models = list_checkpoints(run) + ([run / BEST] if is_complete(run / BEST) else [])
        if models:
            runs.append((max(_mtime(p) for p in models), run))
    return [run for _, run in sorted(runs, key=lambda item: item[0], reverse=True)]


def find_newest_model(root: str | Path = MODELS_DIR) -> Path | None:
    """The model ``srsum summarize`` uses when no ``--model`` is given.

    The run under ``root`` whose newest complete checkpoint is the most recent (by modification time);
    inside it ``best/`` if present, else its last checkpoint. Also accepts a plain model folder
    (config.json + weights) directly under ``root``. None when there is nothing.
    """
    runs = find_run_dirs(root)
    if runs:
        best = runs[0] / BEST
        return best if is_complete(best) else last_checkpoint(runs[0])
    root = Path(root)
    if not root.is_dir():
        return None
    plain = [p for p in root.iterdir() if p.is_dir() and not is_temporary(p) and (p / "config.json").is_file()]
    return max(plain, key=lambda p: (p / "config.json").stat().st_mtime) if plain else None


# ---------------------------------------------------------------------------------------------
# trainer state and RNG


def read_trainer_state(checkpoint: str | Path) -> dict[str, Any]:
    """The parsed trainer_state.json of a checkpoint (``{}`` when it has none)."""
    path = Path(checkpoint) / TRAINER_STATE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise SrsumError(f"cannot read {path}: {error}") from None


RNG_FILE = "rng.json"  # plain JSON: resuming never unpickles anything


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and every CUDA device) random states, as plain JSON values."""
    import numpy as np
    import torch

    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": [kind, keys.tolist(), int(position), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (SrsumError if it is not such a state)."""
    import numpy as np
    import torch

    try:
        version, internal, gauss = state["python"]
        kind, keys, position, has_gauss, cached = state["numpy"]
        random.setstate((int(version), tuple(int(x) for x in internal), gauss))
        np.random.set_state((str(kind), np.asarray(keys, dtype=np.uint32), int(position), int(has_gauss),
                             float(cached)))
        torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
        cuda = state.get("cuda")
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in cuda])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise SrsumError(f"random state: not a state srsum saved ({' '.join(str(error).split())[:120]})") from None


def rng_file(rank: int = 0) -> str:
    """The RNG file of process ``rank``: rng.json for the main process (and a single-process run),
    rng-rank<N>.json for the others of a run under several processes."""
    return RNG_FILE if rank == 0 else f"rng-rank{rank}.json"


def read_rng_state(checkpoint: str | Path, rank: int = 0) -> dict[str, Any] | None:
    """The RNG state of process ``rank`` saved in a checkpoint (:func:`rng_file`), or None when there is none (a
    checkpoint of an older srsum, whose pickled rng.pt is never loaded: a pickle from a downloaded folder could
    run code)."""
    path = Path(checkpoint) / rng_file(rank)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise SrsumError(f"cannot read {path}: {error}") from None


def save_checkpoint(folder: str | Path, model, tokenizer, state: dict[str, Any], optimizer=None, scheduler=None,
                    rng: dict[str, Any] | list[dict[str, Any]] | None = None) -> Path:
    """Write a checkpoint folder atomically: model, tokenizer, optimizer/scheduler/RNG, then trainer state.

    ``rng`` is one :func:`rng_state`, or a list of them, one per process in rank order (:func:`rng_file`).
    Any error of the writes is a RuntimeFailure naming ``folder`` (see :func:`atomic_dir`); nothing of this
    checkpoint is then left, and an earlier ``folder`` is kept as it was."""
    import torch

    folder = Path(folder)
    with atomic_dir(folder) as temp:
        model.save_pretrained(temp)
        if tokenizer is not None:
            tokenizer.save_pretrained(temp)
        if optimizer is not None:
            _torch_save(optimizer.state_dict(), temp / "optimizer.pt")
        if scheduler is not None:
            _torch_save(scheduler.state_dict(), temp / "scheduler.pt")
        for rank, process_rng in enumerate([rng] if isinstance(rng, dict) else rng or []):
            write_new_file(temp / rng_file(rank), json.dumps(process_rng))
        write_new_file(temp / TRAINER_STATE, json.dumps(state, indent=2, ensure_ascii=False) + "\n")
    return folder


class _KeepWriteError:
    """A binary file whose write errors are kept: torch's writer turns them into an opaque RuntimeError."""

    def __init__(self, stream, path: Path):
        self.stream, self.name, self.error = stream, str(path), None

    def __str__(self) -> str:
        return self.name

    def write(self, data) -> int:
        try:
            return self.stream.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.stream.flush()


def _torch_save(obj, path: Path) -> None:
    """``torch.save`` into a new file; a failed write raises its own OSError (ENOSPC, EDQUOT, EIO, ...)."""
    import torch

    from srsum.locks import open_no_follow

    with os.fdopen(open_no_follow(path, os.O_WRONLY, "new file", new=True), "wb") as stream:
        target = _KeepWriteError(stream, path)
        try:
            torch.save(obj, target)
        except RuntimeError:
            if target.error is not None:
                raise target.error from None
            raise


def load_torch_file(path: Path):
    """Load a ``.pt`` file written by :func:`save_checkpoint` (optimizer and scheduler state) with torch's
    weights-only unpickler: plain tensors and containers only, never arbitrary objects."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SrsumError(f"checkpoint file missing: {path}") from None
    except Exception as error:  # unpickling errors of every kind
        raise SrsumError(f"cannot read {path}: {' '.join(str(error).split())[:200]}") from None


def prune_checkpoints(run_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` complete checkpoints (``best/`` is never touched)."""
    if keep < 1:
        return []
    removed = list_checkpoints(run_dir)[:-keep]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed
