"""Atomic writes: a temp file beside the target, then os.replace.

A crash or Ctrl-C leaves either the old file or the new one, never a half-written
artifact that a later stage could read. Temp names carry the writer's pid
(`.model.pt.<pid>.<random>.tmp`), so what a killed process left behind can be told apart
from what a live one is writing, and removed (remove_stale_temp).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from salis.errors import SalisError


_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK
_DIR_MODE = 0o777 & ~_UMASK
TEMP_SUFFIX = ".tmp"
_TEMP_NAME = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$")  # .<name>.<pid>.<random>.tmp


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temp(roots: list[Path]) -> list[Path]:
    """Remove temp files and folders under `roots` whose writer no longer runs; returns them."""
    removed = []
    for root in roots:
        if not root.is_dir():
            continue
        for path in sorted(root.rglob(f".*{TEMP_SUFFIX}")):
            match = _TEMP_NAME.match(path.name)
            if match is None or _alive(int(match.group(1))):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def is_disk_full(err: BaseException) -> bool:
    """ENOSPC / EDQUOT, also from pyarrow and torch, which re-raise them without an errno."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    return "No space left on device" in text or "Disk quota exceeded" in text


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


def _raise_if_disk_full(err: BaseException, target: Path, tmp: Path) -> None:
    """One line naming the artifact and the space it needed, instead of the writer's traceback."""
    if not is_disk_full(err):
        return
    written = _size(tmp)
    free = shutil.disk_usage(target.parent).free
    raise SalisError(f"{target}: no space left on device while writing it (it needs more than {written / 2**20:.1f} MiB; "
                     f"{free / 2**20:.1f} MiB free there); free some space and re-run") from None


def ensure_space(target: str | Path, needed: int) -> None:
    """Refuse, before writing, an artifact of `needed` bytes that the target's disk cannot hold."""
    target = Path(target)
    folder = next((p for p in [target.parent, *target.parents] if p.exists()), Path("."))
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise SalisError(f"{target}: no space left on device for it (it needs {needed / 2**20:.1f} MiB; "
                         f"{free / 2**20:.1f} MiB free there); free some space and re-run")


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temp path in the target's folder; rename it onto target on success only."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=TEMP_SUFFIX, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
        except OSError as err:
            _raise_if_disk_full(err, target, tmp_path)
            raise
        os.chmod(tmp_path, _FILE_MODE)  # mkstemp makes 0600; artifacts are ordinary files
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temp folder beside target; it replaces target as a whole on success only."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), suffix=TEMP_SUFFIX, dir=target.parent))
    try:
        try:
            yield tmp
        except OSError as err:
            _raise_if_disk_full(err, target, tmp)
            raise
        os.chmod(tmp, _DIR_MODE)
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def torch_bytes(obj: Any) -> bytes:
    """torch.save's bytes of obj, made in memory: torch names the zip's records after the file it
    writes to (a random temp name here), so through a buffer the records are always "archive/..."
    and the same tensors give the same bytes: DVC sees an unchanged model as unchanged."""
    import io

    import torch  # only the writers of weights pay for it

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def write_torch(path: str | Path, obj: Any) -> None:
    """torch_bytes(obj) written atomically, after checking the disk has room for them."""
    data = torch_bytes(obj)
    ensure_space(path, len(data))
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_parquet(path: str | Path, frame: Any) -> None:
    """Write a pandas DataFrame as parquet, atomically, without the pandas index."""
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def write_csv(path: str | Path, frame: Any) -> None:
    """Write a pandas DataFrame as CSV, atomically, without the index."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
