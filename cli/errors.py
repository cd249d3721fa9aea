"""Turn the library's typed errors into one line on stderr and a documented exit code."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

import typer

EXIT_FATAL = 1  # anything else that stops the command
EXIT_USAGE = 2  # bad arguments, unusable query
EXIT_LOCKED = 3  # another process is writing the database
EXIT_MODEL = 4  # the model cannot be found or loaded
EXIT_STORAGE = 5  # disk full, damaged database
EXIT_INTERRUPTED = 130

F = TypeVar("F", bound=Callable)


def _classify(error: BaseException) -> int | None:
    from generation.errors import GeneratorLoadError
    from index.errors import (
        DatabaseCorruptError,
        DatabaseLockedError,
        EncoderMismatchError,
        IndexSpecError,
        StorageFullError,
        StoreError,
    )
    from retrieval.errors import (
        ItemNotFoundError,
        ModelLoadError,
        ModelNotFoundError,
        QueryError,
        TrainingDataError,
        TrainingInterrupted,
        TrainingStateError,
        WorkerStartError,
    )
    from retrieval.media.errors import MediaError

    for types, code in (
        ((DatabaseLockedError,), EXIT_LOCKED),
        ((ModelNotFoundError, ModelLoadError, GeneratorLoadError), EXIT_MODEL),
        ((StorageFullError, DatabaseCorruptError), EXIT_STORAGE),
        ((QueryError, ItemNotFoundError, MediaError, TrainingDataError, TrainingStateError, IndexSpecError),
         EXIT_USAGE),
        ((TrainingInterrupted,), EXIT_INTERRUPTED),
        ((EncoderMismatchError, StoreError, WorkerStartError), EXIT_FATAL),
    ):
        if isinstance(error, types):
            return code
    return None


def fail(message: str, code: int = EXIT_FATAL) -> typer.Exit:
    print(f"xmodal: error: {message}", file=sys.stderr)
    return typer.Exit(code)


def translate_errors(command: F) -> F:
    """Run a command; a known error becomes `xmodal: error: <message>` and its exit code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            raise fail("interrupted; finished work is saved, run the command again to continue",
                       EXIT_INTERRUPTED) from None
        except typer.Exit:
            raise
        except Exception as error:
            code = _classify(error)
            if code is None:
                if isinstance(error, OSError):
                    raise fail(f"{error.strerror or error}: {error.filename or ''}".rstrip(": ")) from None
                raise
            raise fail(str(error), code) from None

    return wrapper  # type: ignore[return-value]
