"""Decode audio safely through libsndfile only (WAV, FLAC, OGG, MP3; never a silent ffmpeg
fallback): the duration is judged from the header before any sample is decoded, the read itself is
bounded too (headers lie), truncation is detected, channels are averaged to mono and the result is
resampled with soxr to the model's rate."""

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
            samples = _read_bounded(sound, max_frames, declared)
    except MediaError:
        raise
    except (RuntimeError, ValueError, TypeError, OSError, EOFError) as error:
        raise MediaError(ErrorClass.CORRUPT, f"cannot decode audio ({_clean(error)})") from None
    mono = samples.mean(axis=1, dtype=np.float32)  # (frames,)
    if not np.isfinite(mono).all():
        raise MediaError(ErrorClass.CORRUPT, "audio contains NaN or infinite samples")
    info = AudioInfo(len(mono) / rate, rate, channels, audio_format)
    return resample(mono, rate, target_rate), info


def resample(wave: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """Mono float32 resampled with soxr (high quality); unchanged if the rates already agree."""
    if rate == target_rate:
        return np.ascontiguousarray(wave, dtype=np.float32)
    import soxr

    return soxr.resample(wave, rate, target_rate, quality="HQ").astype(np.float32, copy=False)


def _read_bounded(sound, max_frames: int, declared: int) -> np.ndarray:
    """Read at most `max_frames` (+1 to notice excess), classifying early ends as truncation."""
    blocks: list[np.ndarray] = []
    total = 0
    try:
        while total <= max_frames:
            block = sound.read(min(_BLOCK_FRAMES, max_frames + 1 - total), dtype="float32", always_2d=True)
            if len(block) == 0:
                break
            blocks.append(block)
            total += len(block)
    except (RuntimeError, ValueError) as error:
        if total == 0:
            raise
        expected = f" of {declared / sound.samplerate:.2f} s declared" if 0 < declared < (1 << 62) else ""
        raise MediaError(
            ErrorClass.TRUNCATED,
            f"audio data ends early after {total / sound.samplerate:.2f} s{expected} ({_clean(error)})",
        ) from None
    if total > max_frames:
        raise MediaError(ErrorClass.TOO_LONG, f"longer than the cap of {max_frames / sound.samplerate:.0f} s")
    if total == 0:
        raise MediaError(ErrorClass.CORRUPT, "no audio samples")
    return np.concatenate(blocks)


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
