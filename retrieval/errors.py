"""Typed errors of the retrieval layer; `cli/` and `api/` turn them into one line or an HTTP status."""

from __future__ import annotations


class ModelNotFoundError(LookupError):
    """The model spec names nothing that exists (the message lists what does)."""


class ModelLoadError(RuntimeError):
    """The model exists but cannot be loaded: damaged or mismatched weights, a refused pickle."""


class WeightsUnavailableError(ModelLoadError):
    """Pretrained weights are not cached and cannot be downloaded (offline)."""


class WorkerStartError(RuntimeError):
    """Decode worker processes cannot start: a fault of the installation, never of the files."""


class ClusterError(WorkerStartError):
    """The Ray cluster of `index --ray` cannot be used: ray missing (extra [distributed]), unreachable,
    or its job failed. Like WorkerStartError, a fault of the setup, never a verdict on the files."""


class QueryError(ValueError):
    """A query that cannot be answered as given (empty text, bad k, unreadable query file)."""


class QueryFileError(QueryError):
    """A query file (or upload) that cannot be used. `reason` says why, so that the HTTP edge can
    pick a status: an ErrorClass value of the loaders (TOO_LARGE, UNSUPPORTED, CORRUPT...), or
    WRONG_MODALITY, NOT_MEDIA and TYPE_MISMATCH (the declared content type contradicts the bytes)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class ItemNotFoundError(LookupError):
    """No item has this id (never had, or it was deleted)."""


class TrainingDataError(ValueError):
    """A pairs file that cannot be trained or evaluated on (the message names the line and field)."""


class TrainingStateError(RuntimeError):
    """An output or checkpoint folder that does not fit the run asked for (exists, or another config)."""


class TrainingInterrupted(Exception):
    """Ctrl-C during training, after a checkpoint was written; `--resume` continues from it."""

    def __init__(self, step: int, checkpoint: str) -> None:
        super().__init__(f"interrupted at step {step}; the checkpoint in {checkpoint} keeps the work: "
                         f"run the same command with --resume to continue")
        self.step = step
