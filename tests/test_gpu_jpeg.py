"""The GPU JPEG decode stage (retrieval/indexing/gpu_jpeg.py), run on the CPU: torchvision's CPU
JPEG decoder stands in for nvJPEG, everything else (threads, batching, the hand-off to the worker
pool, orientation, resizing, mixed batches in the encoder) is the code a GPU runs. On a machine
with CUDA the last test runs the real nvJPEG path as well.

What a user would notice: the same items, errors and search results as the Pillow road; a JPEG
that is truncated or that nvJPEG refuses gets Pillow's verdict; EXIF-rotated photos come out upright.
"""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from index.collection import Collection
from retrieval.data.samples import draw_image
from retrieval.encoders.config import AudioFrontEnd, ModelInputs
from retrieval.indexing import pipeline
from retrieval.indexing.gpu_jpeg import GpuJpegStage, fit_square_batch, jpeg_header, orient
from retrieval.indexing.pipeline import IndexOptions, index_paths
from retrieval.indexing.prepare import DECODED, FAILED, SAME_CONTENT, Task, prepare_file
from retrieval.media.errors import ErrorClass
from retrieval.media.images import fit_square
from retrieval.media.limits import MediaLimits
from tests.helpers.faults import live_decode_workers

INPUTS = ModelInputs(32, AudioFrontEnd())


def _jpeg(image: Image.Image, orientation: int | None = None, **options) -> bytes:
    buffer = io.BytesIO()
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif.tobytes()
    image.save(buffer, "JPEG", quality=92, **options)
    return buffer.getvalue()


def _photo(seed: int, width: int = 120, height: int = 80) -> Image.Image:
    return draw_image(np.random.default_rng(seed), width, height)


def _bad_huffman_table(data: bytes) -> bytes:
    """A JPEG whose header reads fine but whose Huffman table no decoder accepts."""
    at = data.index(b"\xff\xc4")  # DHT
    broken = bytearray(data)
    broken[at + 5 : at + 21] = b"\xff" * 16  # code counts that overflow every length
    return bytes(broken)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pillow(orientation):
    image = _photo(orientation, 7, 5)
    tagged = Image.open(io.BytesIO(_jpeg(image, orientation)))
    expected = np.asarray(ImageOps.exif_transpose(tagged).convert("RGB"))
    stored = torch.from_numpy(np.asarray(tagged.convert("RGB")).copy()).permute(2, 0, 1)
    turned = orient(stored, jpeg_header(_jpeg(image, orientation), MediaLimits()).orientation)
    assert np.array_equal(turned.permute(1, 2, 0).numpy(), expected)


@pytest.mark.parametrize("size", [(300, 200), (200, 300), (40, 25), (64, 64)])
def test_resizing_matches_pillow(size):
    image = _photo(sum(size), *size)
    other = _photo(7, 50, 90)  # resized in the same padded batch
    tensors = [torch.from_numpy(np.asarray(i).copy()).permute(2, 0, 1) for i in (image, other)]
    ours = fit_square_batch(tensors, 32).numpy()
    assert ours.shape == (2, 32, 32, 3)
    for square, picture in zip(ours, (image, other), strict=True):
        assert np.abs(square - fit_square(picture, 32).astype(np.float32)).mean() < 0.6  # of 255 levels


def test_headers_the_gpu_must_leave_to_pillow():
    limits = MediaLimits()
    good = _jpeg(_photo(1))
    assert jpeg_header(good, limits) is not None
    assert jpeg_header(good[: len(good) // 2], limits) is None  # truncated: no end-of-image marker
    assert jpeg_header(good + b"\x00" * 10, limits) is not None  # zero padding after the marker is common
    cmyk = io.BytesIO()
    _photo(2).convert("CMYK").save(cmyk, "JPEG")
    assert jpeg_header(cmyk.getvalue(), limits) is None
    assert jpeg_header(b"\xff\xd8\xff" + b"\x00" * 50 + b"\xff\xd9", limits) is None  # no frame header
    assert jpeg_header(good, MediaLimits(max_image_pixels=100)) is None  # Pillow gives the TOO_LARGE verdict


@pytest.fixture
def mixed_folder(tmp_path) -> dict[str, Path]:
    """JPEGs the GPU takes, beside files it must hand to the worker pool."""
    folder = tmp_path / "media"
    folder.mkdir()
    files = {}
    for index in range(40):  # more than one batch of 16
        files[f"photo-{index}"] = folder / f"photo-{index:02d}.jpg"
        files[f"photo-{index}"].write_bytes(_jpeg(_photo(index, 90 + index, 70)))
    files["rotated"] = folder / "rotated.jpg"
    files["rotated"].write_bytes(_jpeg(_photo(100, 90, 60), orientation=6))
    files["progressive"] = folder / "progressive.jpg"
    files["progressive"].write_bytes(_jpeg(_photo(106, 150, 100), progressive=True))
    files["grey"] = folder / "grey.jpg"
    files["grey"].write_bytes(_jpeg(_photo(101).convert("L")))
    files["truncated"] = folder / "truncated.jpg"
    whole = _jpeg(_photo(102, 200, 150))
    files["truncated"].write_bytes(whole[: len(whole) * 2 // 3])
    files["bad-table"] = folder / "bad-table.jpg"
    files["bad-table"].write_bytes(_bad_huffman_table(_jpeg(_photo(103))))
    files["png"] = folder / "drawing.png"
    _photo(104).save(files["png"], "PNG")
    files["cmyk"] = folder / "print.jpg"
    _photo(105).convert("CMYK").save(files["cmyk"], "JPEG")
    files["text"] = folder / "notes.txt"
    files["text"].write_text("not media")
    return files


def test_every_file_gets_one_verdict_and_pillow_judges_what_the_gpu_refuses(mixed_folder):
    stage = GpuJpegStage(INPUTS, MediaLimits(), workers=1, device="cpu", batch_files=16, read_threads=4)
    tasks = [Task(str(path)) for path in mixed_folder.values()]
    results = {r.path: r for r in stage(tasks, frozenset())}
    assert sorted(results) == sorted(t.path for t in tasks)
    by_name = {name: results[str(path)] for name, path in mixed_folder.items()}
    for index in range(40):
        photo = by_name[f"photo-{index}"]
        assert photo.status == DECODED and isinstance(photo.pixels, torch.Tensor)  # the GPU road
        assert tuple(photo.pixels.shape) == (32, 32, 3)
        assert (photo.info.width, photo.info.height) == (90 + index, 70)
    assert (by_name["rotated"].info.width, by_name["rotated"].info.height) == (60, 90)  # upright
    for name in ("grey", "progressive"):
        assert by_name[name].status == DECODED and isinstance(by_name[name].pixels, torch.Tensor), name
    # Pillow's road, with Pillow's verdicts
    assert by_name["truncated"].status == FAILED and by_name["truncated"].error.error_class == ErrorClass.TRUNCATED
    assert by_name["bad-table"].status == FAILED and by_name["bad-table"].error.error_class == ErrorClass.CORRUPT
    assert isinstance(by_name["png"].pixels, np.ndarray) and isinstance(by_name["cmyk"].pixels, np.ndarray)
    assert by_name["text"].status == "not_media"


def test_the_same_pixels_as_pillow_for_the_encoder(mixed_folder, micro_encoder):
    stage = GpuJpegStage(micro_encoder.inputs, MediaLimits(), workers=1, device="cpu", batch_files=16)
    names = ["photo-3", "photo-17", "rotated", "grey"]
    paths = [str(mixed_folder[name]) for name in names]
    gpu = {r.path: r for r in stage([Task(p) for p in paths], frozenset())}
    pillow = [prepare_file(Task(p), micro_encoder.inputs, MediaLimits(), frozenset()) for p in paths]
    for path, reference in zip(paths, pillow, strict=True):
        # Pillow decodes the larger ones at half scale (JPEG draft mode), the GPU at full scale
        assert np.abs(gpu[path].pixels.numpy() - reference.pixels).mean() < 4.0, path  # of 255 levels
    ours = micro_encoder.encode_pixels(torch.stack([gpu[p].pixels for p in paths]))
    theirs = micro_encoder.encode_pixels(np.stack([p.pixels for p in pillow]))
    assert np.min(np.sum(ours * theirs, axis=1)) > 0.98  # an untrained model: small pixel changes show


def test_content_already_stored_is_not_decoded(mixed_folder):
    stage = GpuJpegStage(INPUTS, MediaLimits(), workers=1, device="cpu")
    path = str(mixed_folder["photo-0"])
    first = next(iter(stage([Task(path)], frozenset())))
    again = next(iter(stage([Task(path, first.state.content_hash)], frozenset())))
    assert again.status == SAME_CONTENT and again.pixels is None


def test_abandoning_the_iteration_stops_the_stage_and_its_workers(mixed_folder):
    stage = GpuJpegStage(INPUTS, MediaLimits(), workers=1, device="cpu", batch_files=4)
    pillow_first = ["png", "cmyk", "truncated"] + [f"photo-{i}" for i in range(40)]
    results = stage([Task(str(mixed_folder[name])) for name in pillow_first], frozenset())
    next(results)
    results.close()  # the producer thread and the worker pool it started must end
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (live_decode_workers() or _producers()):
        time.sleep(0.1)
    assert not live_decode_workers() and not _producers()


def _producers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "xmodal-gpu-jpeg" and t.is_alive()]


def test_an_index_run_on_the_gpu_road_equals_the_pillow_road(tmp_path, mixed_folder, micro_encoder, monkeypatch):
    """The whole pipeline with JPEGs on the GPU road (the CPU standing in): same items, same errors,
    nearly the same vectors; batches of the encoder mix GPU tensors with Pillow's arrays."""
    runs = {}
    for road in ("pillow", "gpu"):
        monkeypatch.setattr(pipeline, "gpu_jpeg_available", lambda device, road=road: road == "gpu")
        roots = [str(mixed_folder["png"].parent)]
        with Collection.open(tmp_path / f"db-{road}", micro_encoder.identity, writable=True) as collection:
            summary = index_paths(roots, collection, micro_encoder, IndexOptions(workers=1, batch_size=8))
            items = collection.store.items_under(roots)
            vectors = {path: collection.store.item_vector(item.id, micro_encoder.dim) for path, item in items.items()}
            runs[road] = (summary, vectors, collection.store.error_paths_under(roots))
    (pillow, pillow_vectors, pillow_errors), (gpu, gpu_vectors, gpu_errors) = runs["pillow"], runs["gpu"]
    assert (gpu.new, gpu.encoded, gpu.ignored, len(gpu.skipped)) == (pillow.new, pillow.encoded, pillow.ignored,
                                                                      len(pillow.skipped))
    assert gpu_errors == pillow_errors and sorted(gpu_vectors) == sorted(pillow_vectors)
    # Each file's Pillow-road vector finds the same file first among the GPU road's vectors.
    paths = sorted(pillow_vectors)
    similarity = np.stack([pillow_vectors[p] for p in paths]) @ np.stack([gpu_vectors[p] for p in paths]).T
    assert np.array_equal(similarity.argmax(axis=1), np.arange(len(paths)))
    assert np.median(np.diag(similarity)) > 0.99


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU with nvJPEG")
def test_nvjpeg_decodes_like_the_cpu(mixed_folder):
    from retrieval.indexing.gpu_jpeg import gpu_jpeg_available

    device = torch.device("cuda")
    assert gpu_jpeg_available(device)
    tasks = [Task(str(p)) for p in mixed_folder.values()]
    cpu = {r.path: r for r in GpuJpegStage(INPUTS, MediaLimits(), 1, "cpu")(tasks, frozenset())}
    gpu = {r.path: r for r in GpuJpegStage(INPUTS, MediaLimits(), 1, device)(tasks, frozenset())}
    assert {p: r.status for p, r in gpu.items()} == {p: r.status for p, r in cpu.items()}
    for path, result in gpu.items():
        if isinstance(result.pixels, torch.Tensor):
            assert result.pixels.device.type == "cuda"
            assert (result.pixels.cpu() - cpu[path].pixels).abs().mean() < 2.0, path



def _mutants(count: int, seed: int = 0) -> list[bytes]:
    """JPEGs damaged where the marker scan does not look: bytes of the tables and the entropy-coded
    data flipped or overwritten, the start and the end-of-image marker kept, so they reach nvJPEG."""
    rng = np.random.default_rng(seed)
    bases = [_jpeg(_photo(index, int(rng.integers(16, 300)), int(rng.integers(16, 300))),
                   progressive=bool(index % 3 == 0)) for index in range(16)]
    mutants = []
    for _ in range(count):
        data = bytearray(bases[int(rng.integers(len(bases)))])
        start = data.index(b"\xff\xdb") if rng.random() < 0.3 else data.index(b"\xff\xda")  # tables, or scan
        for _ in range(int(rng.integers(1, 12))):
            at = int(rng.integers(start + 2, len(data) - 2))
            data[at] = int(rng.integers(256)) if rng.random() < 0.5 else data[at] ^ (1 << int(rng.integers(8)))
        mutants.append(bytes(data))
    return mutants


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU with nvJPEG")
def test_damaged_jpegs_reaching_nvjpeg_get_a_verdict_each_and_the_run_lives(tmp_path):
    """nvJPEG decodes in the indexing process: fuzz what gets past the marker scan (more with
    XMODAL_FUZZ_EXAMPLES). Each file is decoded or refused with a documented error class."""
    import os

    count = int(os.environ.get("XMODAL_FUZZ_EXAMPLES", "300"))
    paths = []
    for index, data in enumerate(_mutants(count)):
        paths.append(tmp_path / f"mutant-{index:05d}.jpg")
        paths[-1].write_bytes(data)
    stage = GpuJpegStage(INPUTS, MediaLimits(), workers=2, device=torch.device("cuda"), batch_files=64)
    results = {r.path: r for r in stage([Task(str(p)) for p in paths], frozenset())}
    assert len(results) == count
    for result in results.values():
        assert result.status in (DECODED, FAILED)
        if result.status == DECODED:
            assert torch.isfinite(torch.as_tensor(result.pixels)).all()
        else:
            assert result.error.error_class in set(ErrorClass)
    decoded = sum(r.status == DECODED for r in results.values())
    print(f"{count} damaged JPEGs: {decoded} decoded, {count - decoded} refused")
