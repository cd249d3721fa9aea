"""Thumbnails: images shrink with their shape and colour kept, sounds become waveforms, the cache is
keyed by content, survives a read-only folder and never serves a damaged file, and hostile files fail
with the loaders' MediaError classes."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from api.thumbnails import THUMBNAIL_MEDIA_TYPE, ThumbnailCache, render_thumbnail
from retrieval.data.samples import _png_bomb
from retrieval.media.errors import ErrorClass, MediaError
from retrieval.media.limits import MediaLimits
from tests.helpers.media_builders import build_wav, encode_image, sine

LIMITS = MediaLimits(max_audio_seconds=5)
RATE = 22_050
HASH_A, HASH_B = "ab" + "0" * 62, "cd" + "1" * 62
ORANGE = (230, 120, 30)


def _decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.get_format_mimetype() == THUMBNAIL_MEDIA_TYPE
    image.load()
    return image


def _write_image(path: Path, width: int = 1200, height: int = 600, colour=ORANGE, fmt: str = "JPEG") -> Path:
    rng = np.random.default_rng(0)
    pixels = np.clip(np.array(colour) + rng.integers(-4, 5, (height, width, 3)), 0, 255).astype(np.uint8)
    path.write_bytes(encode_image(Image.fromarray(pixels), fmt))
    return path


def _write_sound(path: Path, amplitude: float) -> Path:
    wave = sine(440.0, RATE, 0.5, amplitude)
    path.write_bytes(build_wav(np.rint(wave * 32767), RATE))
    return path


def _envelope_height(thumbnail: bytes) -> int:
    """Rows (in the middle column) covered by the drawing."""
    pixels = np.asarray(_decode(thumbnail).convert("RGBA"))
    drawn = pixels[:, pixels.shape[1] // 2, 3] > 0 if THUMBNAIL_MEDIA_TYPE == "image/webp" \
        else pixels[:, pixels.shape[1] // 2, :3].min(axis=1) < 240
    return int(drawn.sum())


def test_large_image_keeps_aspect_ratio_and_colour(tmp_path):
    thumbnail = render_thumbnail(_write_image(tmp_path / "wide.jpg"), "image", LIMITS)
    image = _decode(thumbnail).convert("RGB")
    assert image.size == (256, 128)
    mean = np.asarray(image, dtype=np.float64).reshape(-1, 3).mean(axis=0)
    assert np.abs(mean - ORANGE).max() < 8


def test_exif_orientation_is_applied(tmp_path):
    source = Image.new("RGB", (400, 200), ORANGE)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    (tmp_path / "rotated.jpg").write_bytes(encode_image(source, "JPEG", exif=exif))
    assert _decode(render_thumbnail(tmp_path / "rotated.jpg", "image", LIMITS)).size == (128, 256)


def test_small_image_is_not_upscaled(tmp_path):
    thumbnail = render_thumbnail(_write_image(tmp_path / "small.png", 60, 40, fmt="PNG"), "image", LIMITS)
    assert _decode(thumbnail).size == (60, 40)


def test_sound_becomes_a_waveform_and_louder_draws_taller(tmp_path):
    loud = render_thumbnail(_write_sound(tmp_path / "loud.wav", 0.9), "audio", LIMITS)
    quiet = render_thumbnail(_write_sound(tmp_path / "quiet.wav", 0.1), "audio", LIMITS)
    assert _decode(loud).size == _decode(quiet).size == (256, 96)
    assert _envelope_height(loud) > 70
    assert 4 < _envelope_height(quiet) < 20


def test_cache_hit_does_not_read_the_file_and_new_hash_rerenders(tmp_path):
    source = _write_image(tmp_path / "photo.jpg")
    cache = ThumbnailCache(tmp_path / "thumbs")
    first = cache.get(1, HASH_A, str(source), "image", LIMITS)
    assert [p.name.split(".")[0] for p in (tmp_path / "thumbs" / "ab").iterdir()] == [f"{HASH_A}-256"]
    source.unlink()
    assert cache.get(1, HASH_A, str(source), "image", LIMITS) == first
    assert ThumbnailCache(tmp_path / "thumbs").get(1, HASH_A, str(source), "image", LIMITS) == first  # from disk
    _write_image(source, 300, 600, colour=(20, 60, 200))
    changed = _decode(cache.get(1, HASH_B, str(source), "image", LIMITS))
    assert changed.size == (128, 256)


@pytest.mark.parametrize("blocked", ["folder", "shard"])
def test_unwritable_cache_folder_serves_from_memory(tmp_path, blocked):
    # Tests run as root, where chmod cannot make a folder read-only: put files where folders must go.
    if blocked == "folder":
        (tmp_path / "thumbs").write_bytes(b"")  # the folder cannot be created
    else:
        (tmp_path / "thumbs").mkdir()
        (tmp_path / "thumbs" / "ab").write_bytes(b"")  # the folder exists but no thumbnail can be written
    source = _write_image(tmp_path / "photo.jpg")
    cache = ThumbnailCache(tmp_path / "thumbs")
    first = cache.get(1, HASH_A, str(source), "image", LIMITS)
    source.unlink()
    assert cache.get(1, HASH_A, str(source), "image", LIMITS) == first


@pytest.mark.parametrize("webp", [True, False], ids=["webp", "jpeg-fallback"])
def test_truncated_cache_file_is_rerendered(tmp_path, monkeypatch, webp):
    import api.thumbnails as thumbnails

    monkeypatch.setattr(thumbnails, "_WEBP", webp)
    monkeypatch.setattr(thumbnails, "_SUFFIX", ".webp" if webp else ".jpg")
    source = _write_image(tmp_path / "photo.jpg")
    first = ThumbnailCache(tmp_path / "thumbs").get(1, HASH_A, str(source), "image", LIMITS)
    (cached,) = (tmp_path / "thumbs" / "ab").iterdir()
    cached.write_bytes(first[:-16])  # cut inside the pixel data: the header still parses
    assert ThumbnailCache(tmp_path / "thumbs").get(1, HASH_A, str(source), "image", LIMITS) == first
    assert cached.read_bytes() == first  # repaired on disk too


def test_concurrent_requests_render_once(tmp_path, monkeypatch):
    import api.thumbnails as thumbnails

    renders = []
    original = thumbnails.render_thumbnail
    def slow_render(*args):
        renders.append(1)
        time.sleep(0.2)  # long enough that every thread arrives while the first is still rendering
        return original(*args)

    monkeypatch.setattr(thumbnails, "render_thumbnail", slow_render)
    source = _write_image(tmp_path / "photo.jpg")
    cache = ThumbnailCache(None)
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get(1, HASH_A, str(source), "image", LIMITS)))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1 and len(results) == 4
    assert len(renders) == 1


def test_pixel_bomb_is_too_large(tmp_path):
    (tmp_path / "bomb.png").write_bytes(_png_bomb())
    with pytest.raises(MediaError) as caught:
        ThumbnailCache(tmp_path / "thumbs").get(1, HASH_A, str(tmp_path / "bomb.png"), "image", LIMITS)
    assert caught.value.error_class is ErrorClass.TOO_LARGE


def test_audio_bytes_stored_as_image_are_refused(tmp_path):
    source = _write_sound(tmp_path / "was-a-photo.jpg", 0.5)
    with pytest.raises(MediaError, match="content changed") as caught:
        render_thumbnail(source, "image", LIMITS)
    assert caught.value.error_class is ErrorClass.CORRUPT


def test_sound_over_the_duration_cap_is_refused(tmp_path):
    long_wave = np.zeros(RATE * 6, dtype=np.int16)
    (tmp_path / "long.wav").write_bytes(build_wav(long_wave, RATE))
    with pytest.raises(MediaError) as caught:
        render_thumbnail(tmp_path / "long.wav", "audio", LIMITS)
    assert caught.value.error_class is ErrorClass.TOO_LONG
