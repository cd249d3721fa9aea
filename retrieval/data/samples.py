"""Generate a media folder for demos, tests and benchmarks: distinct images and sounds in every
accepted format, files that are tricky but valid, and hostile files with the class each must get.

Deterministic for a seed. `xmodal data sample OUT` writes one, with `OUT/sample.json` listing
what is where and what each hostile file is expected to be classified as.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

IMAGE_FORMATS = [("jpg", "JPEG"), ("png", "PNG"), ("webp", "WEBP"), ("gif", "GIF"), ("bmp", "BMP")]
AUDIO_FORMATS = [
    ("wav", "WAV", "PCM_16"), ("flac", "FLAC", "PCM_16"), ("ogg", "OGG", "VORBIS"), ("mp3", "MP3", "MPEG_LAYER_III"),
]


@dataclass
class SampleManifest:
    images: list[str] = field(default_factory=list)
    sounds: list[str] = field(default_factory=list)
    hostile: dict[str, str] = field(default_factory=dict)  # path -> expected error class

    def save(self, out: Path) -> None:
        (out / "sample.json").write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, out: Path) -> SampleManifest:
        return cls(**json.loads((Path(out) / "sample.json").read_text()))


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, 3))


def draw_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A distinct picture: a two-colour gradient, a few filled shapes and light noise."""
    top, bottom = np.array(_colour(rng)), np.array(_colour(rng))
    ramp = np.linspace(0.0, 1.0, height)[:, None, None]
    pixels = (top * (1 - ramp) + bottom * ramp) * np.ones((height, width, 3))
    image = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 5))):
        x0, y0 = int(rng.integers(0, width * 3 // 4)), int(rng.integers(0, height * 3 // 4))
        x1 = x0 + int(rng.integers(width // 8, width // 2 + 2))
        y1 = y0 + int(rng.integers(height // 8, height // 2 + 2))
        shape = int(rng.integers(0, 3))
        if shape == 0:
            draw.ellipse([x0, y0, x1, y1], fill=_colour(rng))
        elif shape == 1:
            draw.rectangle([x0, y0, x1, y1], fill=_colour(rng))
        else:
            draw.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=_colour(rng))
    noise = rng.normal(0, 6, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).astype(np.uint8))


def synth_sound(rng: np.random.Generator, rate: int, seconds: float) -> np.ndarray:
    """A distinct sound: a sequence of notes (tone, chord or chirp) over a little noise, mono float32."""
    t_total = int(rate * seconds)
    wave = rng.normal(0, 0.003, t_total)
    note_count = max(1, int(seconds / rng.uniform(0.4, 1.5)))
    bounds = np.linspace(0, t_total, note_count + 1).astype(int)
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        t = np.arange(end - start) / rate
        base = rng.uniform(110, 1800)
        kind = int(rng.integers(0, 3))
        if kind == 0:
            note = np.sin(2 * np.pi * base * t) + 0.3 * np.sin(4 * np.pi * base * t)
        elif kind == 1:
            note = sum(np.sin(2 * np.pi * base * r * t) for r in (1.0, 1.26, 1.5))
        else:
            note = np.sin(2 * np.pi * (base * t + rng.uniform(-0.5, 2.0) * base * t * t / max(t[-1], 1e-3)))
        envelope = np.exp(-t * rng.uniform(0.5, 6.0)) * np.minimum(1.0, t * 200)
        wave[start:end] += rng.uniform(0.1, 0.4) * envelope * note / 2
    return np.clip(wave, -1, 1).astype(np.float32)


def _save_tricky_images(out: Path, rng: np.random.Generator) -> list[str]:
    """Valid images that naive loaders get wrong; each must be indexed."""
    paths = []

    def save(name: str, image: Image.Image, fmt: str, **kwargs) -> None:
        image.save(out / name, fmt, **kwargs)
        paths.append(str(out / name))

    def picture() -> Image.Image:  # a new picture for each file, so no two are duplicates
        return draw_image(rng, 96, 64)

    grey16 = (np.asarray(picture().convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    save("tricky-16bit.png", Image.fromarray(grey16), "PNG")
    save("tricky-cmyk.jpg", picture().convert("CMYK"), "JPEG", quality=92)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    save("tricky-exif-rotated.jpg", picture(), "JPEG", exif=exif.tobytes())
    frames = [draw_image(rng, 64, 64) for _ in range(3)]
    frames[0].save(out / "tricky-animated.gif", "GIF", save_all=True, append_images=frames[1:],
                   duration=100, loop=0)
    paths.append(str(out / "tricky-animated.gif"))
    palette = picture().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    save("tricky-palette-alpha.png", palette, "PNG", transparency=0)
    save("tricky-la.png", picture().convert("LA"), "PNG")
    save("tricky-1bit.png", picture().convert("1"), "PNG")
    save("tricky-png-named.jpg", draw_image(rng, 80, 80), "PNG")
    return paths


def _png_bomb() -> bytes:
    """A valid PNG header declaring 100000 x 100000 pixels, with a tiny compressed body."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    body = chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + body + chunk(b"IEND", b"")


def write_hostile_files(out: Path, rng: np.random.Generator, max_audio_seconds: float = 600.0) -> dict[str, str]:
    """The hostile corpus: each file is bad in one way and must land in the ledger with its class.

    The same ten files behave the same for every user (root included), so counts are exact.
    """
    import soundfile

    out.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str] = {}
    good = io.BytesIO()
    draw_image(rng, 200, 150).save(good, "JPEG", quality=90)
    (out / "truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    expected["truncated.jpg"] = "TRUNCATED"
    (out / "empty.jpg").write_bytes(b"")
    expected["empty.jpg"] = "CORRUPT"
    (out / "random-bytes.png").write_bytes(rng.bytes(4096))
    expected["random-bytes.png"] = "CORRUPT"
    (out / "pixel-bomb.png").write_bytes(_png_bomb())
    expected["pixel-bomb.png"] = "TOO_LARGE"
    (out / "junk.wav").write_bytes(b"RIFF\x24\x10\x00\x00WAVE" + rng.bytes(4096))
    expected["junk.wav"] = "CORRUPT"
    sound = io.BytesIO()
    soundfile.write(sound, synth_sound(rng, 16_000, 2.0), 16_000, format="WAV", subtype="PCM_16")
    (out / "truncated.wav").write_bytes(sound.getvalue()[: len(sound.getvalue()) // 2])
    expected["truncated.wav"] = "TRUNCATED"
    silence = np.zeros(int(8_000 * (max_audio_seconds + 5)), dtype=np.float32)
    soundfile.write(out / "long-silence.flac", silence, 8_000, format="FLAC", subtype="PCM_16")
    expected["long-silence.flac"] = "TOO_LONG"
    draw_image(rng, 64, 64).save(out / "scan.tiff", "TIFF")
    expected["scan.tiff"] = "UNSUPPORTED"
    loop = out / "link-loop.jpg"
    loop.unlink(missing_ok=True)
    os.symlink(loop.name, loop)  # points at itself
    expected["link-loop.jpg"] = "IO_ERROR"
    outside = out / "link-outside.png"
    outside.unlink(missing_ok=True)
    os.symlink("/etc/hostname" if os.path.exists("/etc/hostname") else "/etc/passwd", outside)
    expected["link-outside.png"] = "UNSUPPORTED"
    return {str(out / name): cls for name, cls in expected.items()}


def generate_sample_folder(out: Path, images: int = 200, sounds: int = 50, hostile: bool = True,
                           seed: int = 0) -> SampleManifest:
    """Write `images` pictures and `sounds` clips (and the hostile corpus) under `out`.

    Sounds run 0.5 to 12 s, so long ones are cut into several windows when indexed.
    """
    import soundfile

    out = Path(out)
    rng = np.random.default_rng(seed)
    manifest = SampleManifest()
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "sounds").mkdir(parents=True, exist_ok=True)
    tricky = _save_tricky_images(out / "images", rng) if images >= 8 else []
    manifest.images.extend(tricky)
    for index in range(images - len(tricky)):
        suffix, fmt = IMAGE_FORMATS[index % len(IMAGE_FORMATS)] if index % 3 == 0 else IMAGE_FORMATS[0]
        width, height = int(rng.integers(160, 800)), int(rng.integers(120, 600))
        path = out / "images" / f"{index // 50:02d}" / f"image-{index:04d}.{suffix}"
        path.parent.mkdir(exist_ok=True)
        draw_image(rng, width, height).save(path, fmt, **({"quality": 90} if fmt in ("JPEG", "WEBP") else {}))
        manifest.images.append(str(path))
    for index in range(sounds):
        suffix, fmt, subtype = AUDIO_FORMATS[index % len(AUDIO_FORMATS)]
        rate = [16_000, 22_050, 44_100, 48_000][index % 4] if fmt != "MP3" else 44_100
        seconds = float(rng.uniform(0.5, 3.0)) if index % 5 else float(rng.uniform(6.0, 12.0))
        wave = synth_sound(rng, rate, seconds)
        data = np.stack([wave, wave * 0.8], axis=1) if index % 3 == 0 else wave
        path = out / "sounds" / f"sound-{index:04d}.{suffix}"
        soundfile.write(path, data, rate, format=fmt, subtype=subtype)
        manifest.sounds.append(str(path))
    if hostile:
        manifest.hostile = write_hostile_files(out / "hostile", rng)
    manifest.save(out)
    return manifest
