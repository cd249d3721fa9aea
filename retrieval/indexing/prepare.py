"""Turn one file into what the encoder needs, in a worker process: read once, sniff the content,
hash it, decode with the hardened loaders, and prepare model inputs (a square uint8 image or a
log-mel array), which are much smaller to send back than decoded media. No torch here."""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from typing import Any

import numpy as np

from index.records import FileState, MediaInfo, NewVector
from retrieval.encoders.config import ModelInputs
from retrieval.encoders.frontend import compute_log_mel
from retrieval.media.audio import load_audio
from retrieval.media.errors import ErrorClass, MediaError, error_from_os
from retrieval.media.images import fit_square, load_image
from retrieval.media.limits import MediaLimits
from retrieval.media.sniff import HEAD_BYTES, classify_unknown, sniff

DECODED, SAME_CONTENT, KNOWN_CONTENT, FAILED, NOT_MEDIA = "decoded", "same", "known", "failed", "not_media"
ENCODED = "encoded"  # decoded and embedded where it was decoded (a Ray actor): `vectors` set, inputs dropped


@dataclass(frozen=True)
class Task:
    path: str
    stored_hash: str | None = None  # content hash of the item now stored at this path, if any


@dataclass(frozen=True)
class Prepared:
    """The outcome for one file. `status` says which of the optional fields are set."""

    path: str
    status: str
    state: FileState | None = None
    info: MediaInfo | None = None
    # (S, S, 3) in 0..255: a uint8 array, or a float tensor already on the encoder's GPU
    # (retrieval/indexing/gpu_jpeg.py)
    pixels: Any = None
    log_mel: np.ndarray | None = None  # (n_mels, T) float32
    error: MediaError | None = None
    vectors: list[NewVector] | None = None  # ENCODED only: what the store keeps for this file


@dataclass(frozen=True)
class Decoded:
    info: MediaInfo
    pixels: np.ndarray | None = None
    log_mel: np.ndarray | None = None


def decode_media(data: bytes, path: str, inputs: ModelInputs, limits: MediaLimits) -> Decoded | None:
    """Decode bytes into model inputs; None when the content is not media at all.

    Raises:
        MediaError: refused, damaged or oversized content.
    """
    sniffed = sniff(data[:HEAD_BYTES])
    if sniffed is None:
        error = classify_unknown(path, len(data))
        if error is not None:
            raise error
        return None
    if sniffed.modality == "image":
        image, image_info = load_image(data, sniffed.format, limits, draft_size=inputs.image_size)
        info = MediaInfo("image", sniffed.format, width=image_info.width, height=image_info.height)
        return Decoded(info, pixels=fit_square(image, inputs.image_size))
    front_end = inputs.front_end
    wave, audio_info = load_audio(data, sniffed.format, limits, front_end.sample_rate)
    info = MediaInfo("audio", sniffed.format, duration=round(audio_info.duration, 3),
                     sample_rate=audio_info.sample_rate, channels=audio_info.channels)
    return Decoded(info, log_mel=compute_log_mel(wave, front_end, inputs.mel_filterbank))


def read_file(path: str, limits: MediaLimits) -> tuple[bytes, os.stat_result]:
    """The whole file (bounded by the size cap) and its stat taken at open time.

    Raises:
        MediaError: unreadable, not a regular file, or over the size cap.
    """
    try:
        # O_NONBLOCK: if a FIFO was swapped in after the walk, open must not hang on it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise error_from_os(error) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise MediaError(ErrorClass.UNSUPPORTED, "not a regular file")
        if info.st_size > limits.max_file_bytes:
            raise MediaError(ErrorClass.TOO_LARGE, f"{info.st_size / 2**20:.0f} MiB exceeds the cap of "
                                                   f"{limits.max_file_bytes / 2**20:.0f} MiB")
        data = _read_to_end(fd, info.st_size, limits.max_file_bytes + 1)
    except OSError as error:
        raise error_from_os(error) from None
    finally:
        os.close(fd)
    if len(data) > limits.max_file_bytes:
        raise MediaError(ErrorClass.TOO_LARGE, "file grew past the size cap while being read")
    return data, info


def _read_to_end(fd: int, size: int, limit: int) -> bytes:
    """At most `limit` bytes from `fd`, to its end, asking for the stat's `size` first.

    Not a buffered `read(limit)`: that allocates all `limit` bytes (the 512 MiB cap) before reading
    and shrinks them after, and that mapping and unmapping cost 50-70 us a file, three times the
    read itself, where a GPU indexes thousands of files a second.
    """
    parts, total = [], 0
    want = min(size + 1, limit)  # one byte past the stat, so a file that grew reads on
    while total < limit:
        part = os.read(fd, min(max(want - total, 1 << 16), limit - total))
        if not part:
            break
        parts.append(part)
        total += len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def read_and_hash(task: Task, limits: MediaLimits, skip_hashes: frozenset[str]) -> tuple[bytes, FileState] | Prepared:
    """The file's bytes and state, or its final outcome when there is nothing to decode: it cannot
    be read (FAILED), its content is the one stored at its path (SAME_CONTENT) or under a vanished
    path (KNOWN_CONTENT, a rename)."""
    try:
        data, info = read_file(task.path, limits)
    except MediaError as error:
        return Prepared(task.path, FAILED, error=error)
    state = FileState(task.path, info.st_size, info.st_mtime_ns, hashlib.sha256(data).hexdigest())
    if state.content_hash == task.stored_hash:
        return Prepared(task.path, SAME_CONTENT, state)
    if state.content_hash in skip_hashes:
        return Prepared(task.path, KNOWN_CONTENT, state)
    return data, state


def prepare_file(task: Task, inputs: ModelInputs, limits: MediaLimits, skip_hashes: frozenset[str]) -> Prepared:
    """Read, hash and decode one file. Never raises for a bad file: failures come back as FAILED.

    Content already stored at the same path (SAME_CONTENT) or under a vanished path (a rename,
    KNOWN_CONTENT, hashes in `skip_hashes`) is not decoded at all.
    """
    read = read_and_hash(task, limits, skip_hashes)
    if isinstance(read, Prepared):
        return read
    data, state = read
    try:
        decoded = decode_media(data, task.path, inputs, limits)
    except MediaError as error:
        return Prepared(task.path, FAILED, error=error)
    if decoded is None:
        return Prepared(task.path, NOT_MEDIA, state)
    return Prepared(task.path, DECODED, state, decoded.info, decoded.pixels, decoded.log_mel)
