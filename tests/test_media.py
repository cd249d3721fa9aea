"""Hardened media loading: formats are recognised by content, hostile files land in the ledger with
the right class, valid-but-tricky files decode to what a viewer shows, and caps stop giants from
the header, before they cost memory or time."""

from __future__ import annotations

import errno
import os
import pickle
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFile

from retrieval.data.samples import _png_bomb, _save_tricky_images, draw_image, synth_sound, write_hostile_files
from retrieval.encoders.config import AudioFrontEnd, ModelInputs
from retrieval.indexing.prepare import (
    DECODED,
    FAILED,
    NOT_MEDIA,
    Task,
    decode_media,
    prepare_file,
    read_file,
)
from retrieval.indexing.walk import walk_roots
from retrieval.media.audio import load_audio
from retrieval.media.errors import ErrorClass, MediaError
from retrieval.media.images import fit_square, load_image
from retrieval.media.limits import MediaLimits
from retrieval.media.sniff import HEAD_BYTES, Sniffed, classify_unknown, sniff
from tests.helpers.media_builders import (
    build_wav,
    dominant_frequency,
    encode_image,
    encode_sound,
    set_flac_total_samples,
    sine,
)

LIMITS = MediaLimits(max_audio_seconds=5)
INPUTS = ModelInputs(image_size=32, front_end=AudioFrontEnd())
RATE = INPUTS.front_end.sample_rate

WHITE, RED, GREEN, BLUE = (255, 255, 255), (255, 0, 0), (0, 255, 0), (0, 0, 255)


@pytest.fixture(autouse=True)
def _restore_pillow_pixel_cap():
    # load_image sets Pillow's process-wide bomb threshold; keep small test caps from leaking into
    # other test files.
    saved = Image.MAX_IMAGE_PIXELS
    yield
    Image.MAX_IMAGE_PIXELS = saved


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _error_of(call) -> MediaError:
    with pytest.raises(MediaError) as caught:
        call()
    return caught.value


def _prepare(path: Path | str, limits: MediaLimits = LIMITS):
    return prepare_file(Task(str(path)), INPUTS, limits, frozenset())


def _pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image, dtype=np.int16)


# --- sniffing by content, never by name -------------------------------------------------------------


@pytest.mark.parametrize("pillow_format, expected", [
    ("JPEG", "jpeg"), ("PNG", "png"), ("GIF", "gif"), ("WEBP", "webp"), ("BMP", "bmp"),
])
def test_sniff_recognises_real_images(pillow_format, expected):
    data = encode_image(draw_image(_rng(), 40, 30), pillow_format)
    assert sniff(data[:HEAD_BYTES]) == Sniffed("image", expected)


@pytest.mark.parametrize("sound_format, subtype, expected", [
    ("WAV", "PCM_16", "wav"), ("WAV", "FLOAT", "wav"), ("FLAC", "PCM_16", "flac"),
    ("OGG", "VORBIS", "ogg"), ("MP3", "MPEG_LAYER_III", "mp3"),
])
def test_sniff_recognises_real_sounds(sound_format, subtype, expected):
    data = encode_sound(synth_sound(_rng(), 22_050, 0.5), 22_050, sound_format, subtype)
    assert sniff(data[:HEAD_BYTES]) == Sniffed("audio", expected)


def test_sniff_recognises_big_endian_wav_and_id3_tagged_mp3():
    rifx = encode_sound(sine(440, 8_000, 0.2), 8_000, "WAV", "PCM_16", endian="BIG")
    assert rifx[:4] == b"RIFX"
    assert sniff(rifx[:HEAD_BYTES]) == Sniffed("audio", "wav")
    id3 = b"ID3\x04\x00\x00\x00\x00\x00\x00" + encode_sound(sine(440, 44_100, 0.2), 44_100, "MP3", "MPEG_LAYER_III")
    assert sniff(id3[:HEAD_BYTES]) == Sniffed("audio", "mp3")


def _refused_heads() -> dict[str, bytes]:
    return {
        "TIFF": encode_image(draw_image(_rng(), 16, 16), "TIFF"),
        "AIFF": encode_sound(sine(440, 8_000, 0.2), 8_000, "AIFF", "PCM_16"),
        "HEIF": b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(40),
        "M4A": b"\x00\x00\x00\x20ftypM4A \x00\x00\x02\x00M4A isommp42" + bytes(40),
    }


@pytest.mark.parametrize("name", sorted(_refused_heads()))
def test_sniff_refuses_recognised_but_unsupported_formats(name):
    head = _refused_heads()[name][:HEAD_BYTES]
    error = _error_of(lambda: sniff(head))
    assert error.error_class is ErrorClass.UNSUPPORTED
    assert name[:3] in error.message  # the user is told which format it was


def test_sniff_ignores_random_bytes_and_text():
    rng = _rng(7)
    for _ in range(50):
        assert sniff(rng.bytes(HEAD_BYTES)) is None
    assert sniff(b"BMW service history\n" + bytes(40)) is None  # "BM" without a DIB header
    assert sniff(b"") is None


@pytest.mark.parametrize("text", ["Hello, these are my notes\r\n", "2024-05-01;expenses;12.50\r\n"])
def test_utf16_text_file_is_not_media(tmp_path, text):
    """Windows editors save "Unicode" text as UTF-16 with a BOM (FF FE); it is a text file to
    ignore, not a damaged MP3 in the error ledger."""
    path = tmp_path / "notes.txt"
    path.write_text(text * 20, encoding="utf-16")
    assert path.read_bytes()[:2] == b"\xff\xfe"
    prepared = _prepare(path)
    assert prepared.status == NOT_MEDIA, prepared.error


def test_classify_unknown_tells_plain_files_from_fake_media():
    assert classify_unknown("/media/README.txt", 4096) is None
    assert classify_unknown("/media/notes", 4096) is None
    fake = classify_unknown("/media/photo.PNG", 4096)
    assert fake.error_class is ErrorClass.CORRUPT
    empty = classify_unknown("/media/photo.jpg", 0)
    assert empty.error_class is ErrorClass.CORRUPT
    assert "empty" in empty.message


def test_content_decides_over_the_file_name(tmp_path):
    png_named_jpg = tmp_path / "photo.jpg"
    png_named_jpg.write_bytes(encode_image(draw_image(_rng(), 40, 30), "PNG"))
    wav_named_txt = tmp_path / "recording.txt"
    wav_named_txt.write_bytes(encode_sound(sine(440, RATE, 0.5), RATE, "WAV", "PCM_16"))
    junk_txt = tmp_path / "README.txt"
    junk_txt.write_bytes(b"build log\x00" + _rng(1).bytes(2048))
    junk_png = tmp_path / "junk.png"
    junk_png.write_bytes(_rng(1).bytes(2048))

    image = _prepare(png_named_jpg)
    assert (image.status, image.info.modality, image.info.format) == (DECODED, "image", "png")
    sound = _prepare(wav_named_txt)
    assert (sound.status, sound.info.modality, sound.info.format) == (DECODED, "audio", "wav")
    assert _prepare(junk_txt).status == NOT_MEDIA  # ignored, not an error in the ledger
    failed = _prepare(junk_png)
    assert failed.status == FAILED and failed.error.error_class is ErrorClass.CORRUPT


# --- the hostile corpus -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("hostile")
    return root, write_hostile_files(root, _rng(3), max_audio_seconds=LIMITS.max_audio_seconds)


def test_every_hostile_file_gets_its_expected_class(hostile):
    root, expected = hostile
    assert len(expected) == 10
    walked = walk_roots([str(root)])
    listed = {found.path for found in walked.files}
    got = {}
    for path in expected:
        if os.path.islink(path):
            # Links are judged by the walk: they never reach a decoder.
            assert path not in listed
            got[path] = walked.issues[path].error_class.value
        else:
            assert path in listed
            prepared = _prepare(path)
            assert prepared.status == FAILED, path
            got[path] = prepared.error.error_class.value
    assert got == expected


def test_hostile_corpus_is_rejected_quickly(hostile):
    root, expected = hostile
    start = time.perf_counter()
    for path in expected:
        if not os.path.islink(path):
            _prepare(path)
    assert time.perf_counter() - start < 3.0


def test_walk_reports_fifo_as_unsupported_and_never_opens_it(tmp_path):
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    (tmp_path / "ok.png").write_bytes(encode_image(draw_image(_rng(), 20, 20), "PNG"))
    walked = walk_roots([str(tmp_path)])
    assert [Path(found.path).name for found in walked.files] == ["ok.png"]
    assert walked.issues[str(fifo)].error_class is ErrorClass.UNSUPPORTED


def test_tricky_images_all_decode(tmp_path):
    paths = _save_tricky_images(tmp_path, _rng(5))
    assert len(paths) == 8
    for path in paths:
        prepared = _prepare(path)
        assert prepared.status == DECODED, (path, prepared.error)
        assert prepared.pixels.shape == (32, 32, 3) and prepared.pixels.dtype == np.uint8


# --- conversions that a naive loader gets wrong -----------------------------------------------------


def test_16bit_greyscale_png_is_rescaled_not_clipped():
    grey = np.asarray(draw_image(_rng(), 96, 64).convert("L"), dtype=np.uint16)  # (64, 96)
    data = encode_image(Image.fromarray(grey * 257), "PNG")
    image, info = load_image(data, "png", LIMITS)
    pixels = _pixels(image)
    assert (info.width, info.height) == (96, 64)
    assert np.abs(pixels[..., 0] - grey).max() <= 1
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 0] == pixels[..., 2]).all()


def test_16bit_greyscale_brightness_does_not_depend_on_the_brightest_pixel():
    """Two 16-bit images one level apart (of 65535) must look the same: both nearly black."""
    ramp = np.tile(np.arange(256, dtype=np.uint16), (8, 1))  # (8, 256) values 0..255 of 65535
    darker, _ = load_image(encode_image(Image.fromarray(ramp), "PNG"), "png", LIMITS)
    lighter, _ = load_image(encode_image(Image.fromarray(ramp + 1), "PNG"), "png", LIMITS)
    assert np.abs(_pixels(darker) - _pixels(lighter)).max() <= 1
    assert _pixels(darker).max() <= 1  # 255/65535 of full scale is black, not white


def _quadrants(width: int = 64, height: int = 48) -> Image.Image:
    image = Image.new("RGB", (width, height), RED)
    draw = ImageDraw.Draw(image)
    draw.rectangle([width // 2, 0, width, height // 2], fill=GREEN)
    draw.rectangle([0, height // 2, width // 2, height], fill=BLUE)
    draw.rectangle([width // 2, height // 2, width, height], fill=(250, 220, 30))
    return image


def test_cmyk_jpeg_keeps_its_colours():
    source = _quadrants()
    image, _ = load_image(encode_image(source.convert("CMYK"), "JPEG", quality=95), "jpeg", LIMITS)
    pixels, expected = _pixels(image), np.asarray(source, dtype=np.int16)
    assert np.abs(pixels - expected).mean() < 6
    for x, y in ((16, 12), (48, 12), (16, 36), (48, 36)):  # quadrant centres
        assert np.abs(pixels[y, x] - expected[y, x]).max() <= 20, (x, y, pixels[y, x], expected[y, x])


def test_exif_orientation_is_applied():
    source = draw_image(_rng(), 96, 64)
    ImageDraw.Draw(source).rectangle([0, 0, 11, 11], fill=RED)  # marks the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90° clockwise to display
    data = encode_image(source, "JPEG", quality=95, exif=exif.tobytes())

    image, info = load_image(data, "jpeg", LIMITS)
    assert image.size == (64, 96) and (info.width, info.height) == (64, 96)
    pixels = _pixels(image)
    # Rotated clockwise, the stored top-left corner shows at the top right.
    assert np.abs(pixels[3, 60] - RED).max() <= 40, pixels[3, 60]
    assert np.abs(pixels[3, 3] - RED).max() > 60
    clockwise = np.rot90(np.asarray(source, dtype=np.int16), k=-1)  # (96, 64, 3)
    assert np.abs(pixels - clockwise).mean() < 6


def test_exif_orientation_survives_draft_decoding():
    source = draw_image(_rng(), 400, 200)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode_image(source, "JPEG", quality=90, exif=exif.tobytes())
    image, _ = load_image(data, "jpeg", LIMITS, draft_size=32)
    width, height = image.size
    assert height > width and min(width, height) >= 32


def test_image_info_reports_full_size_when_decoded_in_draft_mode():
    """The stored width and height are the photo's, not those of the reduced DCT decode."""
    data = encode_image(draw_image(_rng(), 400, 300), "JPEG", quality=90)
    decoded = decode_media(data, "photo.jpg", INPUTS, LIMITS)
    assert decoded.pixels.shape == (32, 32, 3)
    assert (decoded.info.width, decoded.info.height) == (400, 300)


def test_animated_gif_gives_its_first_frame():
    frames = []
    for colour in (RED, GREEN, BLUE):
        frame = Image.new("RGB", (40, 30), colour)
        ImageDraw.Draw(frame).rectangle([5, 5, 14, 14], fill=WHITE)
        frames.append(frame)
    data = encode_image(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    image, info = load_image(data, "gif", LIMITS)
    assert (info.width, info.height) == (40, 30)
    assert (_pixels(image) == np.asarray(frames[0])).all()


def test_palette_transparency_is_composited_on_white():
    indices = np.zeros((20, 30), dtype=np.uint8)  # index 0: transparent black
    indices[:, 10:20] = 1  # opaque red
    indices[:, 20:] = 2  # half-transparent black
    image = Image.fromarray(indices, mode="P")
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 0] + [0] * (253 * 3))
    data = encode_image(image, "PNG", transparency=bytes([0, 255, 128]))
    pixels = _pixels(load_image(data, "png", LIMITS)[0])
    assert (pixels[:, :10] == WHITE).all()  # not black: what a viewer shows on a white page
    assert (pixels[:, 10:20] == RED).all()
    assert np.abs(pixels[:, 20:] - 127).max() <= 2  # blended, not thresholded


def test_palette_png_with_single_transparent_index():
    source = draw_image(_rng(), 48, 32).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    transparent_index = int(np.asarray(source)[0, 0])
    data = encode_image(source, "PNG", transparency=transparent_index)
    pixels = _pixels(load_image(data, "png", LIMITS)[0])
    hidden = np.asarray(source) == transparent_index
    assert (pixels[hidden] == WHITE).all()
    visible = np.asarray(source.convert("RGB"), dtype=np.int16)[~hidden]
    assert (pixels[~hidden] == visible).all()


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_alpha_images_are_composited_on_white(mode):
    grey = np.full((20, 30), 60, dtype=np.uint8)
    alpha = np.full((20, 30), 255, dtype=np.uint8)
    alpha[:, :10] = 0
    alpha[:, 20:] = 128
    layers = [grey, alpha] if mode == "LA" else [grey, grey, grey, alpha]
    image = Image.merge(mode, [Image.fromarray(layer) for layer in layers])
    pixels = _pixels(load_image(encode_image(image, "PNG"), "png", LIMITS)[0])
    assert (pixels[:, :10] == WHITE).all()
    assert (pixels[:, 10:20] == 60).all()
    expected_blend = round(60 * 128 / 255 + 255 * 127 / 255)
    assert np.abs(pixels[:, 20:] - expected_blend).max() <= 2


def test_one_bit_image_is_black_and_white():
    pattern = (np.indices((16, 24)).sum(axis=0) // 4) % 2 == 0  # (16, 24) checkerboard
    image = Image.fromarray(pattern).convert("1")
    assert image.mode == "1"
    pixels = _pixels(load_image(encode_image(image, "PNG"), "png", LIMITS)[0])
    assert (pixels[pattern] == 255).all() and (pixels[~pattern] == 0).all()


def test_fit_square_resizes_shortest_side_and_crops_the_centre():
    image = Image.new("RGB", (96, 64), RED)
    ImageDraw.Draw(image).rectangle([32, 0, 63, 63], fill=GREEN)
    ImageDraw.Draw(image).rectangle([64, 0, 95, 63], fill=BLUE)
    square = fit_square(image, 32)
    assert square.shape == (32, 32, 3) and square.dtype == np.uint8
    row = square[16].astype(np.int16)
    red_columns = int((np.abs(row - RED).max(axis=1) < 60).sum())
    blue_columns = int((np.abs(row - BLUE).max(axis=1) < 60).sum())
    # 96x64 -> 48x32, crop 8 px each side: red 0..7, green 8..23, blue 24..31 (a squash gives ~11).
    assert 7 <= red_columns <= 9 and 7 <= blue_columns <= 9
    assert np.abs(row[16] - GREEN).max() < 30


# --- caps -------------------------------------------------------------------------------------------


def test_pixel_bomb_is_rejected_from_the_header(monkeypatch):
    loads = []
    original_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(1) or original_load(self))
    bomb = _png_bomb()
    assert len(bomb) < 2048
    start = time.perf_counter()
    error = _error_of(lambda: load_image(bomb, "png", MediaLimits()))
    assert time.perf_counter() - start < 1.0
    assert error.error_class is ErrorClass.TOO_LARGE
    assert loads == []  # not a single pixel decoded


@pytest.mark.parametrize("pillow_format, image_format", [
    ("PNG", "png"), ("JPEG", "jpeg"), ("GIF", "gif"), ("WEBP", "webp"), ("BMP", "bmp"),
])
def test_image_over_a_custom_pixel_cap_is_too_large(pillow_format, image_format):
    data = encode_image(draw_image(_rng(), 120, 100), pillow_format)  # 12 000 pixels
    for cap in (11_999, 5_000):  # just over (Pillow warns) and far over (Pillow raises)
        error = _error_of(lambda cap=cap: load_image(data, image_format, MediaLimits(max_image_pixels=cap)))
        assert error.error_class is ErrorClass.TOO_LARGE, (cap, error)
    image, _ = load_image(data, image_format, MediaLimits(max_image_pixels=12_000))
    assert image.size == (120, 100)


@pytest.mark.parametrize("fraction", [0.5, 0.9])
def test_truncated_jpeg_is_truncated(fraction):
    data = encode_image(draw_image(_rng(), 200, 150), "JPEG", quality=90)
    error = _error_of(lambda: load_image(data[: int(len(data) * fraction)], "jpeg", LIMITS))
    assert error.error_class is ErrorClass.TRUNCATED


def test_corrupt_png_body_is_corrupt():
    data = bytearray(encode_image(draw_image(_rng(), 64, 64), "PNG"))
    start = data.find(b"IDAT") + 8
    data[start : start + 64] = _rng(2).bytes(64)
    error = _error_of(lambda: load_image(bytes(data), "png", LIMITS))
    assert error.error_class in (ErrorClass.CORRUPT, ErrorClass.TRUNCATED)
    assert error.error_class is ErrorClass.CORRUPT, error  # a bad CRC/zlib stream, not a short file


# --- audio ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("endian", ["LITTLE", "BIG"])
def test_truncated_wav_is_truncated(endian):
    data = encode_sound(synth_sound(_rng(), RATE, 2.0), RATE, "WAV", "PCM_16", endian=endian)
    error = _error_of(lambda: load_audio(data[: len(data) // 2], "wav", LIMITS, RATE))
    assert error.error_class is ErrorClass.TRUNCATED
    assert "64000" in error.message  # what the header promised


def test_wav_with_odd_sized_chunks_around_the_data_decodes():
    pcm = (sine(440, RATE, 0.5) * 32767).astype(np.int16)
    data = build_wav(pcm, RATE, extra_chunks=((b"LIST", b"abc"),), trailing_chunks=((b"id3 ", b"xyz"),))
    wave, info = load_audio(data, "wav", LIMITS, RATE)
    assert len(wave) == len(pcm) and info.duration == pytest.approx(0.5)
    assert np.abs(wave - pcm / 32768).max() < 1e-4


def test_truncation_is_found_behind_odd_sized_chunks():
    pcm = (sine(440, RATE, 0.5) * 32767).astype(np.int16)
    data = build_wav(pcm, RATE, extra_chunks=((b"LIST", b"abc"), (b"bext", b"hello")))
    error = _error_of(lambda: load_audio(data[:-1000], "wav", LIMITS, RATE))
    assert error.error_class is ErrorClass.TRUNCATED


def test_junk_after_riff_wave_header_is_corrupt():
    data = b"RIFF\x24\x10\x00\x00WAVE" + _rng(4).bytes(4096)
    assert sniff(data[:HEAD_BYTES]) == Sniffed("audio", "wav")
    assert _error_of(lambda: load_audio(data, "wav", LIMITS, RATE)).error_class is ErrorClass.CORRUPT


def test_truncated_flac_classes():
    data = encode_sound(synth_sound(_rng(), RATE, 8.0), RATE, "FLAC", "PCM_16")
    # Cut inside the first read block (65536 frames, 4.1 s at 16 kHz): libsndfile fails before any
    # sample comes back, so the damage cannot be told from corruption and is reported as CORRUPT.
    early = _error_of(lambda: load_audio(data[: int(len(data) * 0.3)], "flac", MediaLimits(), RATE))
    assert early.error_class in (ErrorClass.CORRUPT, ErrorClass.TRUNCATED)
    # Cut after audio has been read: TRUNCATED, saying how much was declared.
    late = _error_of(lambda: load_audio(data[: int(len(data) * 0.8)], "flac", MediaLimits(), RATE))
    assert late.error_class is ErrorClass.TRUNCATED
    assert "8.00 s declared" in late.message


def test_long_audio_is_too_long_from_the_header(monkeypatch):
    import soundfile

    data = encode_sound(np.zeros(8_000 * 600, dtype=np.float32), 8_000, "FLAC", "PCM_16")  # 10 min
    assert len(data) < 100_000
    reads = []
    original_read = soundfile.SoundFile.read
    monkeypatch.setattr(soundfile.SoundFile, "read",
                        lambda self, *args, **kwargs: reads.append(1) or original_read(self, *args, **kwargs))
    start = time.perf_counter()
    error = _error_of(lambda: load_audio(data, "flac", LIMITS, RATE))
    assert time.perf_counter() - start < 1.0
    assert error.error_class is ErrorClass.TOO_LONG
    assert "600.0 s" in error.message
    assert reads == []  # judged from the header, nothing decoded


def test_audio_without_a_declared_length_is_cut_off_at_the_cap(monkeypatch):
    import soundfile

    data = set_flac_total_samples(encode_sound(np.zeros(8_000 * 60, dtype=np.float32), 8_000, "FLAC",
                                               "PCM_16"), 0)  # a streaming encoder's "unknown"
    frames_read = []
    original_read = soundfile.SoundFile.read

    def counting_read(self, *args, **kwargs):
        block = original_read(self, *args, **kwargs)
        frames_read.append(len(block))
        return block

    monkeypatch.setattr(soundfile.SoundFile, "read", counting_read)
    error = _error_of(lambda: load_audio(data, "flac", LIMITS, RATE))
    assert error.error_class is ErrorClass.TOO_LONG
    assert sum(frames_read) <= 8_000 * LIMITS.max_audio_seconds + 1  # never decodes the whole minute


def test_audio_exactly_at_the_cap_is_accepted():
    data = encode_sound(np.zeros(8_000 * 5, dtype=np.float32), 8_000, "WAV", "PCM_16")
    wave, info = load_audio(data, "wav", LIMITS, 8_000)
    assert len(wave) == 40_000 and info.duration == pytest.approx(5.0)


def test_stereo_is_averaged_to_mono():
    left = sine(440, RATE, 0.5, amplitude=0.6)
    right = np.linspace(-0.2, 0.4, len(left), dtype=np.float32)
    data = encode_sound(np.stack([left, right], axis=1), RATE, "WAV", "FLOAT")
    wave, info = load_audio(data, "wav", LIMITS, RATE)
    assert info.channels == 2 and wave.dtype == np.float32 and wave.ndim == 1
    np.testing.assert_allclose(wave, (left + right) / 2, atol=1e-6)


def test_resampling_gives_the_target_length_and_keeps_the_pitch():
    data = encode_sound(sine(440, 44_100, 1.5), 44_100, "WAV", "PCM_16")
    wave, info = load_audio(data, "wav", LIMITS, RATE)
    assert (info.sample_rate, info.duration) == (44_100, pytest.approx(1.5))
    assert abs(len(wave) - int(1.5 * RATE)) <= 1
    assert dominant_frequency(wave, RATE) == pytest.approx(440, abs=2)
    assert np.abs(wave).max() == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e20, -3e5])
def test_non_finite_or_absurd_float_samples_are_corrupt(bad):
    """A float WAV with samples of 1e20 used to decode into NaN log-mel features (the power
    overflows float32), which would have put a NaN vector into the index. Found by tests/test_fuzz.py."""
    samples = sine(440, RATE, 0.5)
    samples[1000] = bad
    data = encode_sound(samples, RATE, "WAV", "FLOAT")
    error = _error_of(lambda: load_audio(data, "wav", LIMITS, RATE))
    assert error.error_class is ErrorClass.CORRUPT


def test_loud_float_audio_over_full_scale_is_kept():
    samples = sine(440, RATE, 0.5, amplitude=4.0)  # clipped-in-float masters go a few times over 1.0
    wave, _info = load_audio(encode_sound(samples, RATE, "WAV", "FLOAT"), "wav", LIMITS, RATE)
    assert np.abs(wave).max() > 3.5


@pytest.mark.parametrize("sound_format, subtype, rate", [
    ("OGG", "VORBIS", 22_050), ("MP3", "MPEG_LAYER_III", 44_100), ("FLAC", "PCM_24", 48_000),
])
def test_compressed_audio_decodes(sound_format, subtype, rate):
    data = encode_sound(sine(660, rate, 1.0), rate, sound_format, subtype)
    wave, info = load_audio(data, sound_format.lower(), LIMITS, RATE)
    assert info.sample_rate == rate and info.channels == 1
    assert info.duration == pytest.approx(1.0, abs=0.1)  # MP3 adds encoder padding
    assert dominant_frequency(wave, RATE) == pytest.approx(660, abs=3)
    assert np.abs(wave).max() == pytest.approx(0.5, abs=0.1)


def test_sound_through_prepare_file_becomes_log_mel(tmp_path):
    path = tmp_path / "clip.flac"
    path.write_bytes(encode_sound(synth_sound(_rng(), 22_050, 1.0), 22_050, "FLAC", "PCM_16"))
    prepared = _prepare(path)
    assert prepared.status == DECODED
    assert (prepared.info.sample_rate, prepared.info.channels) == (22_050, 1)
    assert prepared.info.duration == pytest.approx(1.0, abs=1e-3)
    assert prepared.log_mel.dtype == np.float32 and prepared.log_mel.shape[0] == INPUTS.front_end.n_mels
    assert np.isfinite(prepared.log_mel).all()


# --- reading files ----------------------------------------------------------------------------------


def test_read_file_refuses_files_over_the_size_cap(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(encode_image(draw_image(_rng(), 64, 64), "PNG"))
    size = path.stat().st_size
    assert read_file(str(path), MediaLimits(max_file_bytes=size))[0] == path.read_bytes()
    error = _error_of(lambda: read_file(str(path), MediaLimits(max_file_bytes=size - 1)))
    assert error.error_class is ErrorClass.TOO_LARGE
    assert _prepare(path, MediaLimits(max_file_bytes=size - 1)).error.error_class is ErrorClass.TOO_LARGE


@pytest.mark.parametrize("size", [0, 1, 65_536, 65_537, 3_000_001])
def test_read_file_returns_every_byte(tmp_path, size):
    path = tmp_path / "any.bin"
    path.write_bytes(np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes())
    data, info = read_file(str(path), LIMITS)
    assert data == path.read_bytes() and info.st_size == size


def test_a_file_that_grew_after_its_stat_is_read_to_its_end_or_refused_past_the_cap(tmp_path, monkeypatch):
    path = tmp_path / "growing.jpg"
    path.write_bytes(bytes(range(256)) * 1000)  # 256,000 bytes, while its stat says 100
    real_fstat = os.fstat

    def stale_fstat(fd):
        info = real_fstat(fd)
        return os.stat_result((*info[:6], 100, *info[7:]))

    monkeypatch.setattr(os, "fstat", stale_fstat)
    assert read_file(str(path), LIMITS)[0] == path.read_bytes()
    error = _error_of(lambda: read_file(str(path), MediaLimits(max_file_bytes=200_000)))
    assert error.error_class is ErrorClass.TOO_LARGE and "grew" in error.message


def test_read_file_refuses_a_fifo_without_blocking(tmp_path):
    fifo = tmp_path / "swapped-in.jpg"
    os.mkfifo(fifo)
    outcome: list = []

    def attempt():
        try:
            read_file(str(fifo), LIMITS)
            outcome.append(None)
        except MediaError as error:
            outcome.append(error)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout=5)
    if thread.is_alive():  # release the blocked open before failing
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("read_file blocked on a FIFO")
    assert outcome[0] is not None and outcome[0].error_class is ErrorClass.UNSUPPORTED


def test_unreadable_file_is_permission(tmp_path, monkeypatch):
    path = tmp_path / "private.jpg"
    path.write_bytes(encode_image(draw_image(_rng(), 32, 32), "JPEG"))
    if os.geteuid() == 0:  # root reads anything: inject the fault instead
        real_open = os.open

        def denying_open(target, *args, **kwargs):
            if os.fspath(target) == str(path):
                raise PermissionError(errno.EACCES, "Permission denied", str(target))
            return real_open(target, *args, **kwargs)

        monkeypatch.setattr(os, "open", denying_open)
    else:
        path.chmod(0)
    try:
        error = _error_of(lambda: read_file(str(path), LIMITS))
        assert error.error_class is ErrorClass.PERMISSION
        prepared = _prepare(path)
        assert prepared.status == FAILED and prepared.error.error_class is ErrorClass.PERMISSION
    finally:
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)


def test_vanished_file_is_io_error(tmp_path):
    prepared = _prepare(tmp_path / "gone.jpg")
    assert prepared.status == FAILED and prepared.error.error_class is ErrorClass.IO_ERROR


# --- errors cross the worker pipe -------------------------------------------------------------------


def test_media_error_survives_pickling():
    original = MediaError(ErrorClass.TOO_LONG, "612.0 s exceeds the cap of 600 s")
    copy = pickle.loads(pickle.dumps(original))
    assert type(copy) is MediaError
    assert (copy.error_class, copy.message, str(copy)) == (original.error_class, original.message, str(original))


def test_failed_outcome_survives_pickling(hostile):
    root, _ = hostile
    prepared = _prepare(root / "truncated.wav")
    copy = pickle.loads(pickle.dumps(prepared))
    assert copy.status == FAILED
    assert copy.error.error_class is ErrorClass.TRUNCATED and copy.error.message == prepared.error.message


@pytest.mark.parametrize("seconds", [0.5, 9.0])  # under one read block, and across several
def test_flac_of_unknown_length_decodes_whole(seconds):
    """A streaming encoder (ffmpeg writing to a pipe) leaves STREAMINFO's length at 0. libsndfile
    decodes such a file, but soundfile fails to seek past its last frame: it used to come out
    CORRUPT (shorter than one block) or TRUNCATED."""
    wave = sine(440, 22_050, seconds)
    known = encode_sound(np.stack([wave, wave * 0.5], axis=1), 22_050, "FLAC", "PCM_16")
    expected, expected_info = load_audio(known, "flac", MediaLimits(), RATE)
    got, info = load_audio(set_flac_total_samples(known, 0), "flac", MediaLimits(), RATE)
    assert info == expected_info and info.duration == pytest.approx(seconds)
    np.testing.assert_array_equal(got, expected)
    assert dominant_frequency(got, RATE) == pytest.approx(440, abs=5)


def test_decoding_in_blocks_matches_decoding_at_once():
    """Mixing to mono and resampling block by block (bounded memory) gives the samples that one
    resampling of the whole mono signal gives."""
    from retrieval.media.audio import resample

    stereo = np.stack([synth_sound(_rng(4), 44_100, 4.0), synth_sound(_rng(5), 44_100, 4.0)], axis=1)
    data = encode_sound(stereo, 44_100, "WAV", "FLOAT")
    got, _info = load_audio(data, "wav", MediaLimits(), RATE)
    whole = resample(stereo.astype(np.float32).mean(axis=1, dtype=np.float32), 44_100, RATE)
    np.testing.assert_allclose(got, whole, atol=1e-6)
