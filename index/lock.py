"""The single-writer lock of a database directory.

`flock` is released by the kernel when the holder dies, so a `kill -9` never leaves a stale lock
behind, and the holder's PID is written into the file so the refusal can name it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from index.errors import DatabaseLockedError

LOCK_NAME = "writer.lock"


class WriterLock:
    """Exclusive, non-blocking writer lock; use as a context manager."""

    def __init__(self, db_dir: Path) -> None:
        self.db_dir = Path(db_dir)
        self.path = self.db_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise DatabaseLockedError naming the holder's PID."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise DatabaseLockedError(str(self.db_dir), pid) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def is_locked(db_dir: Path) -> bool:
    """True when some process currently holds the writer lock."""
    return is_file_locked(Path(db_dir) / LOCK_NAME)


def is_file_locked(path: Path) -> bool:
    """True when some process holds an exclusive `flock` on `path` (a missing file: False)."""
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _read_pid(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None
