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


# --- the fuzz corpus: small real files of every accepted format, and header editors ----------------


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    import zlib

    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def seed_corpus(seed: int = 0) -> dict[str, bytes]:
    """Small valid files, one or more per accepted format (variants that take other decoder paths:
    progressive JPEG, palette and 16-bit PNG, lossless WebP, RLE BMP, float and 24-bit WAV, stereo
    FLAC), plus a silent 8-channel FLAC whose length is unknown (an audio decompression bomb seed)."""
    from retrieval.data.samples import draw_image, synth_sound

    rng = np.random.default_rng(seed)
    picture = draw_image(rng, 48, 40)
    corpus = {
        "baseline.jpg": encode_image(picture, "JPEG", quality=80),
        "progressive.jpg": encode_image(picture, "JPEG", quality=60, progressive=True),
        "rgb.png": encode_image(picture, "PNG"),
        "palette.png": encode_image(picture.convert("P"), "PNG"),
        "grey16.png": encode_image(Image.fromarray((np.arange(48 * 40, dtype=np.uint16) * 30).reshape(40, 48)), "PNG"),
        "rgba.png": encode_image(picture.convert("RGBA"), "PNG"),
        "animated.gif": encode_image(picture.convert("P"), "GIF", save_all=True,
                                     append_images=[picture.rotate(90).convert("P")]),
        "lossy.webp": encode_image(picture, "WEBP", quality=70),
        "lossless.webp": encode_image(picture, "WEBP", lossless=True),
        "rgb.bmp": encode_image(picture, "BMP"),
        "rle8.bmp": build_rle8_bmp(np.asarray(picture.convert("P").resize((16, 12)))),
    }
    wave = synth_sound(rng, 16_000, 0.3)
    corpus.update({
        "pcm16.wav": encode_sound(wave, 16_000, "WAV", "PCM_16"),
        "float.wav": encode_sound(np.stack([wave, -wave], axis=1), 22_050, "WAV", "FLOAT"),
        "pcm24-big.wav": encode_sound(wave, 8_000, "WAV", "PCM_24", endian="BIG"),
        "chunky.wav": build_wav((wave * 20_000).astype(np.int16), 16_000, extra_chunks=((b"LIST", b"odd"),)),
        "stereo.flac": encode_sound(np.stack([wave, wave * 0.5], axis=1), 16_000, "FLAC", "PCM_16"),
        "vorbis.ogg": encode_sound(wave, 16_000, "OGG", "VORBIS"),
        "layer3.mp3": encode_sound(synth_sound(rng, 44_100, 0.3), 44_100, "MP3", "MPEG_LAYER_III"),
        "unknown-length.flac": set_flac_total_samples(
            encode_sound(np.zeros((48_000, 8), dtype=np.float32), 48_000, "FLAC", "PCM_16"), 0),
    })
    return {name: data for name, data in corpus.items() if data}


def build_rle8_bmp(indexes: np.ndarray) -> bytes:
    """An 8-bit palette BMP with RLE8 compression (Pillow reads it but cannot write it): runs of
    equal indexes, bottom row first, each row ended by 00 00 and the bitmap by 00 01."""
    height, width = indexes.shape
    body = bytearray()
    for row in indexes[::-1]:
        start = 0
        while start < width:
            run = 1
            while start + run < width and run < 255 and row[start + run] == row[start]:
                run += 1
            body += bytes((run, int(row[start])))
            start += run
        body += b"\x00\x00"
    body += b"\x00\x01"
    palette = bytes(value for index in range(256) for value in (index, 255 - index, (index * 7) & 255, 0))
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(body), 2835, 2835, 256, 0)
    offset = 14 + len(info) + len(palette)
    return b"BM" + struct.pack("<IHHI", offset + len(body), 0, 0, offset) + info + palette + bytes(body)


def declare_huge(data: bytes, value: int = 0xFFFF) -> bytes:
    """`data` with its header's size fields (pixels, sample count, rate or channels) set to `value`,
    the body left as it is: what a decompression bomb or a lying header looks like. Bytes too
    damaged to edit come back unchanged."""
    try:
        return _declare_huge(data, value)
    except (IndexError, ValueError, struct.error):
        return data


def _declare_huge(data: bytes, value: int) -> bytes:
    edited = bytearray(data)
    if data.startswith(b"\x89PNG"):
        ihdr = struct.pack(">II", value, value) + data[24:29]
        return data[:8] + _png_chunk(b"IHDR", ihdr) + data[33:]
    if data[:3] == b"GIF":
        edited[6:10] = struct.pack("<HH", value & 0xFFFF, value & 0xFFFF)
        return bytes(edited)
    if data[:2] == b"BM":
        edited[18:26] = struct.pack("<ii", value & 0x7FFFFFFF, value & 0x7FFFFFFF)
        return bytes(edited)
    if data[:3] == b"\xff\xd8\xff":
        for marker in (b"\xff\xc0", b"\xff\xc2"):
            at = data.find(marker)
            if at > 0:
                edited[at + 5:at + 9] = struct.pack(">HH", value & 0xFFFF, value & 0xFFFF)
                return bytes(edited)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        at = data.find(b"VP8L")
        if at > 0:  # 14-bit width-1 and height-1 after the 0x2f signature
            bits = int.from_bytes(data[at + 9:at + 13], "little")
            bits = (bits & ~0xFFFFFFF) | 0x3FFF | (0x3FFF << 14)
            edited[at + 9:at + 13] = bits.to_bytes(4, "little")
            return bytes(edited)
        at = data.find(b"VP8 ")
        if at > 0:  # after the 3-byte frame tag and the start code 9d 01 2a: 14-bit width, height
            edited[at + 14:at + 18] = struct.pack("<HH", 0x3FFF, 0x3FFF)
            return bytes(edited)
    if data[8:12] == b"WAVE":
        at = data.find(b"fmt ")
        order = ">" if data[:4] == b"RIFX" else "<"
        edited[at + 10:at + 16] = struct.pack(order + "HI", value & 0xFFFF, value)  # channels, rate
        data_at = data.find(b"data")
        edited[data_at + 4:data_at + 8] = struct.pack(order + "I", 0xFFFFFFFF)  # streaming: length unknown
        return bytes(edited)
    if data.startswith(b"fLaC"):
        return set_flac_total_samples(data, (1 << 36) - 1 if value else 0)
    return bytes(edited)
