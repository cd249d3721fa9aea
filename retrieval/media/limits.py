"""Caps that stop hostile or accidental giants before they cost memory or time."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MediaLimits:
    max_file_bytes: int = 512 * 1024 * 1024
    # 64 MP covers any camera sold today; a PNG bomb declares billions of pixels in a few KB.
    max_image_pixels: int = 64_000_000
    max_audio_seconds: float = 600.0
    # Wall-clock budget for one file in a decode worker; past it the worker is killed.
    decode_timeout_seconds: float = 60.0
