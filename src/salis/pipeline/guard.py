"""What keeps two processes from writing one stage's outputs, and a stage from outliving dvc.

- stage_lock: an exclusive, non-blocking flock per stage (and cycle) under .salis/locks/. The
  kernel drops it when the holder dies, however it dies, so it never goes stale.
- die_with_parent: on Linux the stage asks for SIGTERM when its parent (the `dvc` that ran it)
  exits, even by kill -9; SIGTERM is turned into StageTerminated, so the atomic writers remove
  their temp files on the way out.
- remove_stale_temp (salis.artifacts.atomic) clears temp files of writers that no longer run.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

from salis.errors import SalisError

_PR_SET_PDEATHSIG = 1


class StageTerminated(BaseException):
    """SIGTERM reached the stage (its dvc parent exited, or someone ran `kill`)."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise StageTerminated()


def die_with_parent() -> None:
    """Turn SIGTERM into StageTerminated and, on Linux, have it sent when the parent exits."""
    signal.signal(signal.SIGTERM, _raise_terminated)
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return  # best effort: the stage lock still keeps a second writer out
    if os.getppid() != parent:  # the parent died before prctl took effect
        raise StageTerminated()


@contextlib.contextmanager
def stage_lock(lock_dir: Path, stage: str) -> Iterator[None]:
    """Hold `stage`'s lock for the block; refuse, naming the holder, if another process has it."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    path = lock_dir / f"{stage}.lock"
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            raise SalisError(
                f"another process (pid {holder}) is running {stage} and writing its outputs, perhaps left over "
                f"from a `dvc` that was killed: wait for it to end or `kill {holder}`, then run `dvc repro` again"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)
