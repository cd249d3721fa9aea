"""Decode images safely: allowlisted formats only, a pixel cap checked from the header before any
pixel is decoded, EXIF orientation applied, and every mode converted to plain 8-bit RGB correctly
(16-bit greyscale is rescaled, not clipped; transparency is composited on white, not dropped to
black)."""

from __future__ import annotations

import io
import re
import struct
import warnings
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from retrieval.media.errors import ErrorClass, MediaError
from retrieval.media.limits import MediaLimits

_PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG", "gif": "GIF", "webp": "WEBP", "bmp": "BMP"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}

# Truncated files must fail, not decode as grey bands that would then be indexed.
ImageFile.LOAD_TRUNCATED_IMAGES = False


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    format: str


def load_image(
    source: bytes | BinaryIO,
    image_format: str,
    limits: MediaLimits,
    draft_size: int | None = None,
) -> tuple[Image.Image, ImageInfo]:
    """Decode the first frame of an image into RGB with orientation applied.

    Args:
        image_format: the sniffed format; Pillow tries no other decoder.
        draft_size: when set, JPEGs are decoded at a reduced DCT scale that still leaves both
            sides at least this large (several times faster for camera photos).

    Raises:
        MediaError: UNSUPPORTED, TOO_LARGE, TRUNCATED or CORRUPT with a reason.
    """
    if image_format not in _PIL_FORMATS:
        raise MediaError(ErrorClass.UNSUPPORTED, f"{image_format} images are not supported")
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            # Our cap, checked from the header below, decides; Pillow's own (process-wide) bomb
            # limit stays as a second fence (DecompressionBombError) and its warning is noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(stream, formats=[_PIL_FORMATS[image_format]])
            width, height = image.size
            if width <= 0 or height <= 0:
                raise MediaError(ErrorClass.CORRUPT, f"image declares an empty size {width}x{height}")
            if width * height > limits.max_image_pixels:
                raise MediaError(
                    ErrorClass.TOO_LARGE,
                    f"{width}x{height} = {width * height / 1e6:.0f} MP exceeds the cap of "
                    f"{limits.max_image_pixels / 1e6:.0f} MP",
                )
            if draft_size and image_format == "jpeg":
                image.draft("RGB", (draft_size, draft_size))
            image.load()
            decoded_size = image.size
            image = _apply_orientation(image)
            rgb = to_rgb(image)
            if rgb.size != decoded_size:  # EXIF rotated by 90°: the displayed size is the header's, swapped
                width, height = height, width
    except MediaError:
        raise
    except Image.DecompressionBombError as error:
        # Pillow's own fence (twice its default limit) fired inside open(), before our check.
        declared = re.search(r"\((\d+) pixels\)", str(error))
        size = f"{int(declared.group(1)) / 1e6:.0f} MP" if declared else "the declared size"
        raise MediaError(ErrorClass.TOO_LARGE, f"{size} exceeds the cap of {limits.max_image_pixels / 1e6:.0f} MP "
                                               f"(decompression bomb)") from None
    except (UnidentifiedImageError, SyntaxError, ValueError, TypeError, EOFError, OSError, IndexError,
            KeyError, struct.error) as error:
        raise _classify_decode_error(error) from None
    return rgb, ImageInfo(width, height, image_format)


def _classify_decode_error(error: Exception) -> MediaError:
    text = str(error) or type(error).__name__
    if "truncated" in text.lower() or isinstance(error, EOFError):
        return MediaError(ErrorClass.TRUNCATED, f"image data ends early ({text})")
    return MediaError(ErrorClass.CORRUPT, f"cannot decode image ({text})")


def _apply_orientation(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except (SyntaxError, ValueError, TypeError, OSError, KeyError):
        return image  # malformed EXIF: keep the pixels, lose only the rotation hint


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB, keeping what a person sees."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16"):  # 16-bit: always 0..65535, whatever the brightest pixel is
        pixels = np.asarray(image, dtype=np.float64) * (255.0 / 65535.0)
        return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="L").convert("RGB")
    if mode in ("I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(image)), mode="L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    elif mode in _ALPHA_MODES:
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Rescale 32-bit integer or float greyscale (no fixed nominal range) to 0..255 by its values."""
    is_float = np.issubdtype(pixels.dtype, np.floating)
    pixels = np.nan_to_num(pixels.astype(np.float64))
    high = float(pixels.max(initial=0.0))
    if is_float and high <= 1.0:
        scale = 255.0  # float images in [0, 1]
    elif high <= 255.0:
        scale = 1.0
    elif high <= 65535.0:
        scale = 255.0 / 65535.0
    else:
        scale = 255.0 / high
    return np.clip(np.rint(pixels * scale), 0, 255).astype(np.uint8)


def fit_square(image: Image.Image, size: int) -> np.ndarray:
    """Resize the shortest side to `size` (bicubic) and centre-crop: uint8 (size, size, 3).

    The same geometry as open_clip's default preprocessing ("shortest" resize, centre crop).
    """
    width, height = image.size
    scale = size / min(width, height)
    new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
    resized = image.resize(new_size, Image.Resampling.BICUBIC)
    left = (new_size[0] - size) // 2
    top = (new_size[1] - size) // 2
    return np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.uint8)
