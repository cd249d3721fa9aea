"""Decode audio safely through libsndfile only (WAV, FLAC, OGG, MP3; never a silent ffmpeg
fallback): the duration is judged from the header before any sample is decoded, the read itself is
bounded too (headers lie), truncation is detected, channels are averaged to mono and the result is
resampled with soxr to the model's rate.

Decoding is streamed block by block (mix to mono, resample, keep only the result), so memory
follows the cap at the model's rate, not the file's rate and channel count: a 40 KB FLAC of
silence declaring 8 channels at 384 kHz would otherwise expand to gigabytes before the cap ends it."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from retrieval.media.errors import ErrorClass, MediaError
from retrieval.media.limits import MediaLimits

_MAX_SAMPLE_RATE = 768_000
_MAX_CHANNELS = 64
_BLOCK_FRAMES = 1 << 16
# Float WAV samples are nominally within -1..1. Values 80 dB above that are no recording but damage,
# and past ~1e18 their power overflows float32 in the log-mel features: NaN vectors in the index.
_MAX_SAMPLE_MAGNITUDE = 1e4
_STREAMING_SIZES = (0, 0xFFFFFFFF)  # writers that could not seek back leave these placeholders


@dataclass(frozen=True)
class AudioInfo:
    duration: float
    sample_rate: int
    channels: int
    format: str


def load_audio(
    source: bytes | BinaryIO,
    audio_format: str,
    limits: MediaLimits,
    target_rate: int,
) -> tuple[np.ndarray, AudioInfo]:
    """Decode to mono float32 (n,) at `target_rate`.

    Raises:
        MediaError: TOO_LONG, TRUNCATED or CORRUPT with a reason.
    """
    import soundfile

    data = source if isinstance(source, bytes) else source.read()
    if audio_format == "wav":
        _check_wav_length(data)
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as sound:
            rate, channels, declared = sound.samplerate, sound.channels, sound.frames
            if not 0 < rate <= _MAX_SAMPLE_RATE or not 0 < channels <= _MAX_CHANNELS:
                raise MediaError(ErrorClass.CORRUPT, f"implausible header: {rate} Hz, {channels} channels")
            max_frames = int(limits.max_audio_seconds * rate)
            if 0 < declared < (1 << 62) and declared > max_frames:
                raise MediaError(
                    ErrorClass.TOO_LONG,
                    f"{declared / rate:.1f} s exceeds the cap of {limits.max_audio_seconds:.0f} s",
                )
            wave, frames = _read_bounded(sound, max_frames, declared, target_rate)
    except MediaError:
        raise
    except (RuntimeError, ValueError, TypeError, OSError, EOFError) as error:
        raise MediaError(ErrorClass.CORRUPT, f"cannot decode audio ({_clean(error)})") from None
    return wave, AudioInfo(frames / rate, rate, channels, audio_format)


def resample(wave: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """Mono float32 resampled with soxr (high quality); unchanged if the rates already agree."""
    if rate == target_rate:
        return np.ascontiguousarray(wave, dtype=np.float32)
    import soxr

    return soxr.resample(wave, rate, target_rate, quality="HQ").astype(np.float32, copy=False)


def _read_bounded(sound, max_frames: int, declared: int, target_rate: int) -> tuple[np.ndarray, int]:
    """Read at most `max_frames` (+1 to notice excess) block by block, mixed to mono and resampled
    as they come: (mono float32 at `target_rate`, frames read). Early ends are truncation."""
    import soxr

    known_length = 0 < declared < (1 << 62)
    stream = None if sound.samplerate == target_rate else soxr.ResampleStream(
        sound.samplerate, target_rate, 1, dtype="float32", quality="HQ")
    block = np.empty((_BLOCK_FRAMES, sound.channels), dtype=np.float32)
    pieces: list[np.ndarray] = []
    total = 0
    while total <= max_frames:
        wanted = min(_BLOCK_FRAMES, max_frames + 1 - total)
        got, ended = _read_block(sound, block[:wanted], known_length, total, declared)
        if got == 0:
            break
        with np.errstate(over="ignore", invalid="ignore"):  # overflow shows as inf, refused just below
            mono = block[:got].mean(axis=1, dtype=np.float32)  # (got,)
        if not np.isfinite(mono).all():
            raise MediaError(ErrorClass.CORRUPT, "audio contains NaN or infinite samples")
        peak = float(np.abs(block[:got]).max())
        if peak > _MAX_SAMPLE_MAGNITUDE:
            raise MediaError(ErrorClass.CORRUPT, f"sample values up to {peak:.3g}, far outside the -1..1 of audio")
        pieces.append(stream.resample_chunk(mono) if stream is not None else mono)
        total += got
        if ended:
            break
    if total > max_frames:
        raise MediaError(ErrorClass.TOO_LONG, f"longer than the cap of {max_frames / sound.samplerate:.0f} s")
    if total == 0:
        raise MediaError(ErrorClass.CORRUPT, "no audio samples")
    if stream is not None:
        pieces.append(stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
    return np.concatenate(pieces), total


def _read_block(sound, out: np.ndarray, known_length: bool, total: int, declared: int) -> tuple[int, bool]:
    """Fill `out` from `sound`: (frames read, whether the stream ended with an error)."""
    out[:, 0] = np.nan  # marks the rows libsndfile did not write (it never decodes a NaN in column 0 of a
    try:                # FLAC, MP3 or Vorbis frame, and a float WAV's NaN is refused anyway)
        return len(sound.read(len(out), dtype="float32", always_2d=True, out=out)), False
    except (RuntimeError, ValueError) as error:
        got = int(np.argmax(np.isnan(out[:, 0]))) if np.isnan(out[:, 0]).any() else len(out)
        if not known_length and got + total > 0:
            # A stream of unknown length (a FLAC from a pipe): libsndfile reads its last frames, then
            # soundfile fails to seek past them. That is the end of the stream, not damage.
            return got, True
        if total == 0:
            raise
        expected = f" of {declared / sound.samplerate:.2f} s declared" if known_length else ""
        raise MediaError(
            ErrorClass.TRUNCATED,
            f"audio data ends early after {total / sound.samplerate:.2f} s{expected} ({_clean(error)})",
        ) from None


def _check_wav_length(data: bytes) -> None:
    """libsndfile quietly clamps a WAV whose data chunk is cut short; report it as TRUNCATED."""
    offset = 12
    while offset + 8 <= len(data):
        chunk_id = data[offset : offset + 4]
        size = int.from_bytes(data[offset + 4 : offset + 8], "big" if data[:4] == b"RIFX" else "little")
        if chunk_id == b"data":
            available = len(data) - offset - 8
            if size not in _STREAMING_SIZES and data[:4] != b"RF64" and size > available:
                raise MediaError(
                    ErrorClass.TRUNCATED,
                    f"WAV data chunk declares {size} bytes but only {available} are present",
                )
            return
        offset += 8 + size + (size & 1)  # chunks are padded to even sizes


def _clean(error: Exception) -> str:
    """The library's message without the in-memory object repr it embeds."""
    text = str(error)
    if "Error opening" in text and ": " in text:
        text = text.split(": ", 1)[1]
    return text.strip() or type(error).__name__
