"""One writer at a time, and no file opened through a link srsum did not make.

:class:`Lock` is an exclusive ``fcntl.flock`` on a lock file that holds the owner's pid: ``srsum train`` holds one
on its run folder (``<run>/.srsum.lock``), ``srsum summarize --output FILE`` on ``FILE.lock``. The kernel releases
a flock when its process ends, however it ends (``kill -9`` included), so a lock is never left held by a dead
run; the file itself is removed when the lock is released normally. A second process asking for a held lock is
refused with a :class:`RuntimeFailure` naming the holder's pid.

:func:`open_no_follow` opens the files srsum makes beside the user's (journals, lock files) with ``O_NOFOLLOW``
(and ``O_EXCL`` when the file must be new): a symbolic link planted at such a path is refused, never followed.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from srsum.errors import RuntimeFailure, SrsumError

LOCK_FILE = ".srsum.lock"  # in a training run folder
_NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def planted_link_error(path: Path, what: str) -> SrsumError:
    return SrsumError(f"refusing to open {path} ({what}): it is a symbolic link, which srsum never makes there; "
                      "remove it and run again")


def open_no_follow(path: str | Path, flags: int, what: str, *, new: bool = False, mode: int = 0o666) -> int:
    """``os.open`` of ``path`` that never follows a symbolic link at it (``new``: the file must not exist yet,
    ``O_EXCL``). SrsumError naming ``path`` for a link or anything but a regular file; RuntimeFailure for other
    operating-system errors."""
    path = Path(path)
    flags |= _NO_FOLLOW | _CLOEXEC | (os.O_CREAT | os.O_EXCL if new else 0)
    try:
        handle = os.open(path, flags, mode)
    except OSError as error:
        if error.errno == errno.ELOOP or (error.errno == errno.EEXIST and path.is_symlink()):
            raise planted_link_error(path, what) from None
        if error.errno == errno.EEXIST:
            raise RuntimeFailure(f"cannot create {path} ({what}): it appeared while srsum was creating it") from None
        raise RuntimeFailure(f"cannot open {path} ({what}): {error.strerror or error}") from None
    if not stat.S_ISREG(os.fstat(handle).st_mode):
        os.close(handle)
        raise SrsumError(f"refusing to open {path} ({what}): it is not a regular file")
    return handle


def _holder(handle: int) -> str:
    """The pid written in a lock file, as text ("unknown" when it holds none)."""
    try:
        data = os.pread(handle, 32, 0).decode("ascii", errors="replace").strip()
    except OSError:
        data = ""
    return data if data.isdigit() else "unknown"


class Lock:
    """An exclusive, non-blocking ``fcntl.flock`` on ``path`` for ``what`` (named in the refusal, with the
    holder's pid). Use as a context manager, or :meth:`acquire` / :meth:`release`."""

    def __init__(self, path: str | Path, what: str):
        self.path, self.what = Path(path), what
        self.handle: int | None = None

    def _in_use(self, holder: str) -> RuntimeFailure:
        return RuntimeFailure(f"{self.what} is in use by another srsum process (pid {holder}, lock file {self.path}); "
                              "wait for it to finish or choose another path")

    def check(self) -> None:
        """RuntimeFailure when another process holds the lock now (takes nothing, creates nothing)."""
        import fcntl

        try:
            handle = open_no_follow(self.path, os.O_RDONLY, "lock file")
        except RuntimeFailure:
            return  # no lock file: nobody holds it
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            raise self._in_use(_holder(handle)) from None
        finally:
            os.close(handle)

    def acquire(self) -> Lock:
        import fcntl

        while True:
            handle = open_no_follow(self.path, os.O_RDWR | os.O_CREAT, "lock file")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                holder = _holder(handle)
                os.close(handle)
                if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise self._in_use(holder) from None
                raise RuntimeFailure(f"cannot lock {self.path}: {error.strerror or error}") from None
            if self._still_there(handle):
                break
            os.close(handle)  # the previous holder removed the file between our open and lock: lock the new one
        try:
            os.ftruncate(handle, 0)
            os.pwrite(handle, f"{os.getpid()}\n".encode("ascii"), 0)
        except OSError as error:
            os.close(handle)
            raise RuntimeFailure(f"cannot write {self.path}: {error.strerror or error}") from None
        self.handle = handle
        return self

    def _still_there(self, handle: int) -> bool:
        try:
            now = os.lstat(self.path)
        except FileNotFoundError:
            return False
        held = os.fstat(handle)
        return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)

    def release(self) -> None:
        """Remove the lock file and release the lock (removed while still held, so no other process can have
        locked the file being removed)."""
        if self.handle is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass
        os.close(self.handle)
        self.handle = None

    def __enter__(self) -> Lock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
