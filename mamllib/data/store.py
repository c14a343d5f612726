"""Where data sets live on disk and how files get there whole: folders and writes.

Shared by the data set modules and by :mod:`mamllib.runs` (results, checkpoints).

Folders: a local copy of a data set is named by ``root=`` or ``$MAMLLIB_DATA``
(:data:`DATA_ENV`); downloads and preprocessed caches go to ``cache=``, else
``$MAMLLIB_CACHE`` (:data:`CACHE_ENV`), else ``~/.cache/mamllib``.

Writes are atomic: the bytes go to a temporary file in the target's folder, named
``.<name>.<pid>.<random>.tmp``, which is renamed over the target only when complete,
so a reader sees the old file or the new one and never half of one. Before the
content is written the file's full size is reserved (``posix_fallocate`` where the
file system supports it), so a full disk is an :class:`OutOfSpaceError` naming the
file, the bytes and the fix, not a bus error halfway through a memory-mapped cache.
A writer that is killed leaves its temporary file behind; the writer's PID in the
name lets the next write of the same target remove it once that process is gone.
The finished file gets the permissions ``open()`` would give (``0o666`` less the
umask), not the owner-only ones of a temporary file.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DATA_ENV = "MAMLLIB_DATA"
CACHE_ENV = "MAMLLIB_CACHE"
CACHE_FIX = f"free space there or point {CACHE_ENV} at a folder on another disk"
_TMP_SUFFIX = ".tmp"
# Errors that mean "the file system cannot reserve space this way": write normally.
_NO_FALLOCATE = {errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS}
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class OutOfSpaceError(OSError):
    """A file does not fit on its disk; the message names it, the bytes and the fix."""


def cache_dir(path: str | Path | None = None) -> Path:
    """Where downloads and preprocessed caches go.

    Args:
        path: an explicit folder; else ``$MAMLLIB_CACHE``, else ``~/.cache/mamllib``.

    Returns:
        The folder (not created here).
    """
    if path is not None:
        return Path(path).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path.home() / ".cache" / "mamllib"


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 1 MiB chunks.

    Args:
        path: the file.
        algorithm: any name :func:`hashlib.new` knows (``"sha256"``, ``"md5"``).

    Returns:
        The hex digest.
    """
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_file_mode() -> int:
    """The mode ``open()`` gives a new file: ``0o666`` less this process's umask."""
    try:  # Linux: read it without changing it (os.umask sets it for all threads)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":  # os.kill(pid, 0) would end it there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, under another user
        return True
    return True


def stale_temp_files(path: str | Path) -> list[Path]:
    """``path``'s temporary files (``.<name>.<pid>.<random>.tmp``) whose writer is gone.

    A file whose process is still running is kept: it may be a write in progress.
    """
    path = Path(path)
    pattern = re.compile(
        re.escape(f".{path.name}.") + r"(\d+)\.\w+" + re.escape(_TMP_SUFFIX)
    )
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return []
    return [
        entry
        for entry in entries
        if (match := pattern.fullmatch(entry.name)) and not _pid_alive(int(match[1]))
    ]


def remove_stale_temp_files(path: str | Path) -> list[Path]:
    """Delete what :func:`stale_temp_files` finds for ``path``; returns what went."""
    removed = []
    for stale in stale_temp_files(path):
        try:
            stale.unlink()
        except FileNotFoundError:
            continue  # another process cleaned it up first
        removed.append(stale)
    return removed


def _out_of_space(path: Path, nbytes: int, fix: str, exc: OSError) -> OutOfSpaceError:
    try:
        free = f"; {shutil.disk_usage(path.parent).free:,} bytes are free there"
    except OSError:
        free = ""
    return OutOfSpaceError(
        exc.errno or errno.ENOSPC,
        f"not enough disk space to write {path}: {nbytes:,} bytes needed{free} "
        f"({exc.strerror or exc}). Fix: {fix}.",
    )


def reserve_space(file: str | Path, nbytes: int, target: str | Path, fix: str) -> None:
    """Allocate ``nbytes`` of disk for ``file`` now, so later writes cannot run out.

    Does nothing where the platform or file system cannot preallocate (the writes
    then fail on their own if the disk fills).

    Args:
        file: the (temporary) file to grow.
        nbytes: its final size.
        target: the path to name in the error (the file being made).
        fix: what to do about a full disk, for the error message.

    Raises:
        OutOfSpaceError: the disk (or quota) has less than ``nbytes`` free.
    """
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is None or nbytes <= 0:
        return
    fd = os.open(file, os.O_RDWR)
    try:
        fallocate(fd, 0, nbytes)
    except OSError as exc:
        if exc.errno in _NO_FALLOCATE:
            return
        if exc.errno in _FULL:
            raise _out_of_space(Path(target), nbytes, fix, exc) from exc
        raise
    finally:
        os.close(fd)


@contextmanager
def atomic_path(
    path: str | Path, nbytes: int | None = None, fix: str = CACHE_FIX
) -> Iterator[Path]:
    """A temporary file beside ``path`` that replaces ``path`` if the block succeeds.

    Stale temporary files of ``path`` are removed first. On any exception (including
    ``KeyboardInterrupt``) the temporary file is deleted and ``path`` is untouched.

    Args:
        path: the file to make; its folder is created if needed.
        nbytes: its size if known: reserved before the block runs.
        fix: what to do about a full disk, for the error message.

    Yields:
        The temporary file's path (the file exists, empty unless ``nbytes``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path)
    fd, name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=_TMP_SUFFIX
    )
    os.close(fd)
    tmp = Path(name)
    try:
        if nbytes:
            reserve_space(tmp, nbytes, path, fix)
        yield tmp
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes, fix: str = CACHE_FIX) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the new one.

    Args:
        path: the file (its folder is created if needed).
        data: the whole content.
        fix: what to do about a full disk, for the error message.

    Returns:
        ``path``.

    Raises:
        OutOfSpaceError: ``data`` does not fit; nothing is left behind.
    """
    path = Path(path)
    with atomic_path(path, len(data), fix) as tmp:
        try:
            with open(tmp, "r+b") as f:
                f.write(data)
                f.truncate()
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            if exc.errno in _FULL:
                raise _out_of_space(path, len(data), fix, exc) from exc
            raise
    return path


def write_json(path: str | Path, obj: Any, fix: str = CACHE_FIX) -> Path:
    """Atomically write ``obj`` as indented JSON.

    Args:
        path: the file.
        obj: anything :func:`json.dumps` takes.
        fix: what to do about a full disk, for the error message.

    Returns:
        ``path``.
    """
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    return atomic_write_bytes(Path(path), text.encode(), fix)


def save_torch(path: str | Path, obj: Any, fix: str = CACHE_FIX) -> Path:
    """Atomically ``torch.save`` ``obj`` to ``path`` (its full size reserved first).

    Args:
        path: the file.
        obj: anything :func:`torch.save` takes.
        fix: what to do about a full disk, for the error message.

    Returns:
        ``path``.
    """
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(Path(path), buffer.getvalue(), fix)
