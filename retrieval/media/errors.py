"""Why a file was skipped. Every loader failure is a MediaError carrying one of these classes."""

from __future__ import annotations

from enum import Enum


class ErrorClass(str, Enum):
    UNSUPPORTED = "UNSUPPORTED"  # recognised but refused: TIFF, HEIC, AIFF, a FIFO, a link outside the roots
    CORRUPT = "CORRUPT"  # not decodable, empty, content contradicts the name, decoder crashed or hung
    TRUNCATED = "TRUNCATED"  # the data ends before the header says it should
    TOO_LARGE = "TOO_LARGE"  # file bytes or pixel count over the cap (decompression bombs)
    TOO_LONG = "TOO_LONG"  # audio duration over the cap, judged from the header before decoding
    PERMISSION = "PERMISSION"  # the file cannot be read by this user
    IO_ERROR = "IO_ERROR"  # the filesystem failed: link loops, broken links, vanished files, EIO


class MediaError(ValueError):
    """A file (or upload) that cannot be used, with the class recorded in the error ledger."""

    def __init__(self, error_class: ErrorClass, message: str) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.message = message

    def __str__(self) -> str:
        return f"{self.error_class.value}: {self.message}"

    def __reduce__(self):  # crosses the worker pipe; the default would call __init__(message) only
        return (MediaError, (self.error_class, self.message))


def error_from_os(error: OSError) -> MediaError:
    """Classify an OSError raised while touching a file."""
    import errno

    if isinstance(error, PermissionError) or error.errno in (errno.EACCES, errno.EPERM):
        return MediaError(ErrorClass.PERMISSION, "permission denied")
    if error.errno == errno.ELOOP:
        return MediaError(ErrorClass.IO_ERROR, "symbolic link loop")
    if isinstance(error, FileNotFoundError):
        return MediaError(ErrorClass.IO_ERROR, "file vanished or is a broken link")
    return MediaError(ErrorClass.IO_ERROR, error.strerror or str(error))
