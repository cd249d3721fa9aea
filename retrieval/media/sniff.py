"""Recognise images and audio by their first bytes, never by the file name.

A file is one of: an accepted format (decoded), a recognised but refused format (UNSUPPORTED), or
not media at all. The name matters only to tell "not media" (a README.txt, ignored) from "claims
to be media but is not" (random bytes named .png: CORRUPT).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath

from retrieval.media.errors import ErrorClass, MediaError

# Enough for two MPEG audio frames (the longest is under 3 KB), which sniffing checks back to back.
HEAD_BYTES = 4096

IMAGE_FORMATS = ("jpeg", "png", "gif", "webp", "bmp")
AUDIO_FORMATS = ("wav", "flac", "ogg", "mp3")

# Names that promise a sound (the content decides in the end): indexing spreads them among the images.
SOUND_SUFFIXES = frozenset(".wav .wave .flac .ogg .oga .opus .mp3 .m4a .aac .aif .aiff .aifc .au .wma".split())
MEDIA_SUFFIXES = SOUND_SUFFIXES | frozenset(
    ".jpg .jpeg .jpe .jfif .png .apng .gif .webp .bmp .dib .tif .tiff .heic .heif .avif .jp2 .jxl .ico "
    ".psd .mp4 .mov".split()
)

_DIB_HEADER_SIZES = {12, 40, 52, 56, 64, 108, 124}
_REFUSED = {
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"8BPS": "Photoshop PSD",
    b"\x00\x00\x01\x00": "ICO",
    b"\xff\x0a": "JPEG XL",
    b"\x00\x00\x00\x0cJXL ": "JPEG XL",
    b"\x00\x00\x00\x0cjP  ": "JPEG 2000",
    b".snd": "Sun AU",
    b"MThd": "MIDI",
    b"0&\xb2u\x8ef\xcf\x11": "ASF/WMA",
}


@dataclass(frozen=True)
class Sniffed:
    modality: str  # "image" | "audio"
    format: str  # one of IMAGE_FORMATS or AUDIO_FORMATS


def sniff(head: bytes) -> Sniffed | None:
    """The accepted media format of content starting with `head`, or None if not accepted.

    Raises:
        MediaError(UNSUPPORTED): a recognised image or audio format that xmodal does not decode.
    """
    if head.startswith(b"\xff\xd8\xff"):
        return Sniffed("image", "jpeg")
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return Sniffed("image", "png")
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return Sniffed("image", "gif")
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return Sniffed("image", "webp")
    if head[:2] == b"BM" and len(head) >= 18 and int.from_bytes(head[14:18], "little") in _DIB_HEADER_SIZES:
        return Sniffed("image", "bmp")
    if head[:4] in (b"RIFF", b"RIFX", b"RF64") and head[8:12] == b"WAVE":
        return Sniffed("audio", "wav")
    if head.startswith(b"fLaC"):
        return Sniffed("audio", "flac")
    if head.startswith(b"OggS"):
        return Sniffed("audio", "ogg")
    if head.startswith(b"ID3") or _is_mpeg_audio_frame(head):
        return Sniffed("audio", "mp3")
    refused = _refused_format(head)
    if refused:
        raise MediaError(ErrorClass.UNSUPPORTED, f"{refused} files are not supported")
    return None


# Media types a client may declare for an upload, and the sniffed format each one promises.
_DECLARED = {
    "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/pjpeg": "jpeg", "image/png": "png", "image/apng": "png",
    "image/gif": "gif", "image/webp": "webp", "image/bmp": "bmp", "image/x-bmp": "bmp", "image/x-ms-bmp": "bmp",
    "audio/wav": "wav", "audio/x-wav": "wav", "audio/wave": "wav", "audio/vnd.wave": "wav",
    "audio/flac": "flac", "audio/x-flac": "flac", "audio/ogg": "ogg", "application/ogg": "ogg",
    "audio/vorbis": "ogg", "audio/mpeg": "mp3", "audio/mp3": "mp3", "audio/x-mp3": "mp3",
}
_UNDECLARED = {"", "application/octet-stream", "binary/octet-stream"}


def check_declared_type(media_type: str | None, found: Sniffed) -> None:
    """Refuse content whose bytes contradict the media type its sender declared.

    "No type" and application/octet-stream declare nothing. A type of another modality, another
    format, or one xmodal does not decode at all is a mismatch.

    Raises:
        MediaError(UNSUPPORTED): the declared type is not one xmodal accepts, or the bytes are not it.
    """
    declared = (media_type or "").split(";")[0].strip().lower()
    if declared in _UNDECLARED:
        return
    promised = _DECLARED.get(declared)
    if promised is None:
        raise MediaError(ErrorClass.UNSUPPORTED, f"declared type {declared!r} is not an accepted image or audio type")
    if promised != found.format:
        raise MediaError(ErrorClass.UNSUPPORTED, f"declared as {declared} but the content is {found.format}")


def classify_unknown(path: str, size: int) -> MediaError | None:
    """The error for content that is not accepted media, or None when the file is simply not media."""
    suffix = PurePath(path).suffix.lower()
    if suffix not in MEDIA_SUFFIXES:
        return None
    if size == 0:
        return MediaError(ErrorClass.CORRUPT, f"empty file (0 bytes) named {suffix}")
    return MediaError(ErrorClass.CORRUPT, f"content is not a recognised image or audio format although named {suffix}")


def _refused_format(head: bytes) -> str | None:
    for magic, name in _REFUSED.items():
        if head.startswith(magic):
            return name
    if head[4:8] == b"ftyp":
        brand = head[8:12].decode("latin-1").strip()
        kind = "HEIF/AVIF image" if brand in ("heic", "heix", "mif1", "msf1", "avif", "avis") else "MP4/M4A/MOV"
        return f"{kind} (brand {brand!r})"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "AIFF"
    return None


# Bitrates in kbit/s by (MPEG-1?, layer) for bitrate indexes 1..14, and sample rates by version.
_BITRATES = {
    (True, 1): (32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_SAMPLE_RATES = {0b11: (44100, 48000, 32000), 0b10: (22050, 24000, 16000), 0b00: (11025, 12000, 8000)}


def _mpeg_frame(head: bytes, offset: int) -> tuple[int, int] | None:
    """(frame length in bytes, a key of version/layer/rate) of an MPEG audio frame header at offset."""
    if len(head) < offset + 4 or head[offset] != 0xFF or head[offset + 1] & 0xE0 != 0xE0:
        return None
    version = (head[offset + 1] >> 3) & 0b11
    layer = 4 - ((head[offset + 1] >> 1) & 0b11)  # bits 11, 10, 01 mean layers I, II, III
    bitrate_index = head[offset + 2] >> 4
    rate_index = (head[offset + 2] >> 2) & 0b11
    if version == 0b01 or layer == 4 or bitrate_index in (0, 15) or rate_index == 0b11:
        return None
    mpeg1 = version == 0b11
    bitrate = _BITRATES[(mpeg1, layer)][bitrate_index - 1] * 1000
    rate = _SAMPLE_RATES[version][rate_index]
    padding = (head[offset + 2] >> 1) & 1
    if layer == 1:
        length = (12 * bitrate // rate + padding) * 4
    else:
        length = (144 if mpeg1 or layer == 2 else 72) * bitrate // rate + padding
    return length, (head[offset + 1] & 0xFE) << 8 | (head[offset + 2] & 0x0C)


def _is_mpeg_audio_frame(head: bytes) -> bool:
    """MPEG audio without an ID3 tag: two consistent frame headers back to back.

    One 4-byte header is too weak a signature (a UTF-16 text file's byte-order mark FF FE passes
    it); a second header exactly one frame later, of the same version, layer and rate, is not.
    """
    first = _mpeg_frame(head, 0)
    if first is None:
        return False
    second = _mpeg_frame(head, first[0])
    return second is not None and second[1] == first[1]
