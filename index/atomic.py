"""Crash-safe file replacement: write a temp file, fsync it, rename over the target, fsync the dir.

A reader therefore sees either the old file or the new one, never a torn mix, and a power cut
after `os.replace` returns cannot undo the rename.
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from index.errors import StorageFullError

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def fsync_directory(directory: Path) -> None:
    """Persist a rename or unlink inside `directory`."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(target: Path, write: Callable[[Path], None]) -> None:
    """Replace `target` with what `write(temp_path)` produces, atomically and durably.

    Raises:
        StorageFullError: the disk is full; `target` is left as it was.
    """
    target = Path(target)
    fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    temp = Path(temp_name)
    try:
        write(temp)
        with open(temp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, target)
        fsync_directory(target.parent)
    except OSError as error:
        temp.unlink(missing_ok=True)
        if error.errno in _FULL_ERRNOS:
            raise StorageFullError(f"no space left to write {target}: {error.strerror}") from error
        raise
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(target: Path, data: bytes) -> None:
    """Atomically replace `target` with `data`."""
    write_atomic(target, lambda temp: temp.write_bytes(data))


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks so large indexes do not need twice their memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
