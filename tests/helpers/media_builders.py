"""Small in-memory media builders for tests/test_media.py: encoded bytes from arrays, and WAV files
assembled chunk by chunk so a test controls exactly what the header claims."""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image


def encode_image(image: Image.Image, fmt: str, **kwargs) -> bytes:
    """`image` saved in Pillow format `fmt` (JPEG, PNG, ...)."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def encode_sound(samples: np.ndarray, rate: int, fmt: str, subtype: str, **kwargs) -> bytes:
    """`samples` (frames,) or (frames, channels) written by libsndfile in `fmt`/`subtype`."""
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=fmt, subtype=subtype, **kwargs)
    return buffer.getvalue()


def sine(frequency: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def dominant_frequency(wave: np.ndarray, rate: int) -> float:
    """The frequency of the strongest FFT bin (Hz)."""
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[int(np.argmax(spectrum))])


def _chunk(kind: bytes, payload: bytes, declared: int | None = None) -> bytes:
    size = len(payload) if declared is None else declared
    pad = b"\x00" if len(payload) % 2 else b""
    return kind + struct.pack("<I", size) + payload + pad


def build_wav(pcm16: np.ndarray, rate: int, extra_chunks: tuple[tuple[bytes, bytes], ...] = (),
              trailing_chunks: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    """A mono 16-bit PCM WAV with `extra_chunks` (odd sizes padded) before the data chunk and
    `trailing_chunks` after it."""
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    body = b"WAVE" + _chunk(b"fmt ", fmt)
    body += b"".join(_chunk(kind, payload) for kind, payload in extra_chunks)
    body += _chunk(b"data", pcm16.astype("<i2").tobytes())
    body += b"".join(_chunk(kind, payload) for kind, payload in trailing_chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def set_flac_total_samples(data: bytes, total: int) -> bytes:
    """The FLAC with STREAMINFO's 36-bit total-samples field replaced (0 means "unknown", as a
    streaming encoder writes it)."""
    if data[:4] != b"fLaC" or data[4] & 0x7F != 0:
        raise ValueError("expected a FLAC starting with STREAMINFO")
    edited = bytearray(data)
    # STREAMINFO starts at 8; after 10 bytes of block/frame sizes come 64 bits:
    # 20 rate, 3 channels-1, 5 bits-per-sample-1, 36 total samples.
    packed = int.from_bytes(edited[18:26], "big")
    packed = (packed & ~((1 << 36) - 1)) | total
    edited[18:26] = packed.to_bytes(8, "big")
    return bytes(edited)
