"""What keeps two processes from writing one stage's outputs, and a stage from outliving dvc.

- stage_lock: an exclusive, non-blocking flock per stage (and cycle) under .salis/locks/. The
  kernel drops it when the holder dies, however it dies, so it never goes stale.
- die_with_parent: on Linux the stage asks for SIGTERM when its parent exits, even by kill -9;
  DVC runs a stage through `$SHELL -c` (or /bin/sh), and a shell that forks instead of exec-ing
  (dash does) stays alive when dvc dies, so when the parent is a shell a watcher thread also
  follows the shell's parent, i.e. dvc. SIGTERM is turned into StageTerminated, so the atomic
  writers remove their temp files on the way out.
- remove_stale_temp (salis.artifacts.atomic) clears temp files of writers that no longer run.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from salis.errors import SalisError

_PR_SET_PDEATHSIG = 1


class StageTerminated(BaseException):
    """SIGTERM reached the stage (its dvc parent exited, or someone ran `kill`)."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise StageTerminated()


def die_with_parent() -> None:
    """Turn SIGTERM into StageTerminated and, on Linux, have it sent when dvc exits."""
    signal.signal(signal.SIGTERM, _raise_terminated)
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return  # best effort: the stage lock still keeps a second writer out
    if os.getppid() != parent:  # the parent died before prctl took effect
        raise StageTerminated()
    if _command_name(parent) in _SHELLS:
        grandparent = _parent_of(parent)
        if grandparent is not None and grandparent > 1:
            _watch(grandparent)


_SHELLS = frozenset({"sh", "dash", "bash", "zsh", "ksh", "mksh", "ash", "fish"})
_WATCH_SECONDS = 0.5


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name: [state, ppid, ..., starttime at index 19]."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _command_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _parent_of(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None


def _watch(pid: int) -> None:
    """SIGTERM to this process once `pid` has exited (a zombie counts; a reused pid does not fool it)."""
    fields = _stat_fields(pid)
    if fields is None:
        raise StageTerminated()
    started = fields[19]

    def alive() -> bool:
        now = _stat_fields(pid)
        return now is not None and now[0] not in ("Z", "X") and now[19] == started

    def run() -> None:
        while alive():
            time.sleep(_WATCH_SECONDS)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=run, name="salis-watch-dvc", daemon=True).start()


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
