"""Thumbnails for `GET /items/{id}/thumbnail`: a small picture of an image, a waveform of a sound.

Files are read and decoded only through the hardened loaders the indexer uses (size, pixel and
duration caps; format decided by the bytes, never the name), so a file swapped on disk after indexing
cannot reach a decoder the indexer would have refused. Thumbnails are cached by content hash: an
edited file gets a new one, a renamed one keeps its old one.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image, features

from retrieval.indexing.prepare import read_file
from retrieval.media.audio import load_audio
from retrieval.media.errors import ErrorClass, MediaError
from retrieval.media.images import load_image
from retrieval.media.limits import MediaLimits
from retrieval.media.sniff import HEAD_BYTES, sniff

_WEBP = features.check("webp")
THUMBNAIL_MEDIA_TYPE = "image/webp" if _WEBP else "image/jpeg"
_SUFFIX = ".webp" if _WEBP else ".jpg"

WAVEFORM_ASPECT = 3 / 8  # height / width: 256 x 96
_ENVELOPE_RGBA = (100, 116, 139, 255)  # slate grey: mid-tone, so it reads on light and dark pages
_RMS_RGBA = (148, 163, 184, 255)  # lighter band inside the envelope: where the energy is
_BACKGROUND_RGB = (255, 255, 255)  # only for JPEG, which has no alpha
_FALLBACK_RATE = 16_000  # used only when the header cannot be read; load_audio then reports why
_HEX = re.compile(r"[0-9a-f]{16,128}")
_MAX_CACHED_BYTES = 4 << 20


def render_thumbnail(path: str | Path, modality: str, limits: MediaLimits, size: int = 256) -> bytes:
    """Encoded thumbnail (`THUMBNAIL_MEDIA_TYPE`) of the file at `path`, stored as `modality`.

    Images keep their aspect ratio with the longest side at most `size` (never upscaled), EXIF
    orientation applied. Sounds become a `size` x `size * 3/8` min/max waveform drawn at absolute
    scale, so a quiet sound looks quiet.

    Raises:
        MediaError: unreadable, refused or damaged file, or content whose modality changed.
        ValueError: `modality` is neither "image" nor "audio".
    """
    if modality not in ("image", "audio"):
        raise ValueError(f"unknown modality {modality!r}")
    data, _ = read_file(str(path), limits)
    sniffed = sniff(data[:HEAD_BYTES])
    if sniffed is None or sniffed.modality != modality:
        found = "no recognised media" if sniffed is None else f"{sniffed.modality} ({sniffed.format})"
        raise MediaError(ErrorClass.CORRUPT, f"content changed since indexing: stored as {modality}, now {found}")
    if modality == "image":
        image, _ = load_image(data, sniffed.format, limits, draft_size=size)
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
        return _encode(image, lossless=False)
    wave, _ = load_audio(data, sniffed.format, limits, _native_rate(data))
    return _encode(draw_waveform(wave, size, max(8, round(size * WAVEFORM_ASPECT))), lossless=True)


def _native_rate(data: bytes) -> int:
    """The file's own rate, so the waveform is not low-passed by resampling (a cymbal stays visible).

    Only libsndfile's header parse of bytes already read and capped; load_audio still validates.
    """
    import soundfile

    try:
        return int(soundfile.info(io.BytesIO(data)).samplerate) or _FALLBACK_RATE
    except (RuntimeError, ValueError, TypeError, OSError, EOFError):
        return _FALLBACK_RATE


def draw_waveform(wave: np.ndarray, width: int, height: int) -> Image.Image:
    """RGBA picture of mono samples in [-1, 1]: per-column min/max envelope and an RMS band."""
    wave = np.clip(np.nan_to_num(np.asarray(wave, dtype=np.float32)), -1.0, 1.0)
    if wave.size == 0:
        wave = np.zeros(1, dtype=np.float32)
    starts = (np.arange(width) * wave.size) // width  # (W,) first sample of each column
    high = np.maximum.reduceat(wave, starts)  # (W,)
    low = np.minimum.reduceat(wave, starts)  # (W,)
    rms = np.sqrt(np.add.reduceat(wave.astype(np.float64) ** 2, starts) / np.diff(starts, append=wave.size).clip(1))
    centre, half = (height - 1) / 2, (height - 1) / 2
    rows = np.arange(height)[:, None]  # (H, 1)
    envelope = (rows >= np.floor(centre - high * half)) & (rows <= np.ceil(centre - low * half))  # (H, W)
    band = np.abs(rows - centre) <= rms * half  # (H, W)
    pixels = np.zeros((height, width, 4), dtype=np.uint8)
    pixels[envelope] = _ENVELOPE_RGBA
    pixels[envelope & band] = _RMS_RGBA
    return Image.fromarray(pixels, mode="RGBA")


def _encode(image: Image.Image, lossless: bool) -> bytes:
    buffer = io.BytesIO()
    if _WEBP:
        image.save(buffer, "WEBP", lossless=lossless, quality=80, method=4)
    else:
        if image.mode == "RGBA":
            background = Image.new("RGB", image.size, _BACKGROUND_RGB)
            background.paste(image, mask=image.getchannel("A"))
            image = background
        image.convert("RGB").save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


class ThumbnailCache:
    """Thumbnails by content hash: a bounded in-memory LRU in front of an optional disk folder.

    Thread-safe. A folder that cannot be created or written is dropped silently (a read-only
    database directory still serves thumbnails, from memory). Disk writes are atomic (temp file +
    os.replace) but not fsynced: every file read back is decoded first, so a torn one is re-rendered.
    """

    def __init__(self, folder: Path | None, memory_items: int = 256, size: int = 256) -> None:
        self.size = size
        self._memory_items = memory_items
        self._memory: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._rendering: dict[str, threading.Lock] = {}
        self._folder: Path | None = None
        if folder is not None:
            try:
                Path(folder).mkdir(parents=True, exist_ok=True)
                self._folder = Path(folder)
            except OSError:
                pass

    def get(self, item_id: int, content_hash: str, path: str, modality: str, limits: MediaLimits) -> bytes:
        """The encoded thumbnail of item `item_id`, rendered from `path` only on a miss.

        The key is `content_hash` alone (the id is not part of it), so a renamed or re-added file
        keeps its thumbnail and an edited one gets a new one.

        Raises:
            MediaError: as render_thumbnail (failures are not cached: a fixed file renders next time).
        """
        key = f"{content_hash}-{self.size}"
        with self._lock:
            if (cached := self._remember(key)) is not None:
                return cached
            key_lock = self._rendering.setdefault(key, threading.Lock())
        try:
            with key_lock:  # a second request for the same missing thumbnail waits instead of rendering
                with self._lock:
                    if (cached := self._remember(key)) is not None:
                        return cached
                disk_path = self._disk_path(content_hash)
                data = self._read_disk(disk_path)
                if data is None:
                    data = render_thumbnail(path, modality, limits, self.size)
                    self._write_disk(disk_path, data)
                with self._lock:
                    self._remember(key, data)
                return data
        finally:
            with self._lock:
                self._rendering.pop(key, None)

    def _remember(self, key: str, data: bytes | None = None) -> bytes | None:
        """LRU lookup (data None) or insert; the caller holds self._lock."""
        if data is None:
            if key in self._memory:
                self._memory.move_to_end(key)
            return self._memory.get(key)
        self._memory[key] = data
        self._memory.move_to_end(key)
        while len(self._memory) > self._memory_items:
            self._memory.popitem(last=False)
        return data

    def _disk_path(self, content_hash: str) -> Path | None:
        folder = self._folder
        if folder is None or not _HEX.fullmatch(content_hash):  # never build a path from anything but hex
            return None
        return folder / content_hash[:2] / f"{content_hash}-{self.size}{_SUFFIX}"

    @staticmethod
    def _read_disk(disk_path: Path | None) -> bytes | None:
        """The cached file if it decodes completely; None when missing, unreadable or damaged."""
        if disk_path is None:
            return None
        try:
            with open(disk_path, "rb") as handle:
                data = handle.read(_MAX_CACHED_BYTES + 1)
            if len(data) > _MAX_CACHED_BYTES:
                return None
            with Image.open(io.BytesIO(data)) as image:
                image.load()  # truncation fails here (Pillow's LOAD_TRUNCATED_IMAGES is off)
            return data
        except (OSError, ValueError, SyntaxError, EOFError):  # UnidentifiedImageError is an OSError
            return None

    def _write_disk(self, disk_path: Path | None, data: bytes) -> None:
        if disk_path is None:
            return
        temp: str | None = None
        try:
            disk_path.parent.mkdir(exist_ok=True)
            fd, temp = tempfile.mkstemp(prefix=f".{disk_path.name}.", suffix=".tmp", dir=disk_path.parent)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(temp, disk_path)
        except OSError:
            if temp is not None:
                Path(temp).unlink(missing_ok=True)
            self._folder = None  # read-only or full: memory only from now on, no retry per request
