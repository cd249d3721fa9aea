"""`xmodal bench index`: the indexing rate beside the two rates that bound it.

On the same generated folder and machine, in one process:
  decode-only  the decode stage alone (read, sniff, hash, decode, resize / log-mel): the worker
               pool, and with a CUDA encoder nvJPEG for the JPEGs (retrieval/indexing/gpu_jpeg.py)
  encode-only  the encoder alone on the already decoded inputs, batched as indexing batches them
  end-to-end   `run_index` into a fresh collection (walk, decode, encode, commit, save)
  host side    (`--jpeg-only`) the same run on the GPU JPEG road with nvJPEG, the resize and the
               encoder costing nothing: reading, hashing, header scans, hand-offs, the writer,
               SQLite and FAISS, all on one interpreter. No GPU needed; on a GPU it is the rate the
               host could feed it at, and so the ceiling of end-to-end.
Every rate is files of the folder per second, medians of the repeats, so
pipeline efficiency = end-to-end / min(decode-only, encode-only) compares like with like.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from retrieval.bench.machine import cpu_name


@dataclass
class IndexBenchReport:
    model: str
    device: str
    files: int
    images: int
    sounds: int
    hostile: int
    workers: int
    torch_threads: int
    cpu_count: int
    machine: str
    versions: dict[str, str]
    repeats: int
    batch_size: int = 64
    gpu_jpeg: bool = False  # JPEGs decoded on the GPU (nvJPEG)
    decode_seconds: list[float] = field(default_factory=list)
    encode_seconds: list[float] = field(default_factory=list)
    index_seconds: list[float] = field(default_factory=list)
    index_wall_seconds: list[float] = field(default_factory=list)
    host_seconds: list[float] = field(default_factory=list)  # --jpeg-only: the GPU road's host side

    def rate(self, seconds: list[float]) -> float:
        return self.files / statistics.median(seconds)

    @property
    def efficiency(self) -> float:
        bound = min(self.rate(self.decode_seconds), self.rate(self.encode_seconds))
        return self.rate(self.index_seconds) / bound

    def table(self) -> str:
        rows = [
            ("decode-only", self.decode_seconds,
             ("nvJPEG for JPEGs, " if self.gpu_jpeg else "") + f"{self.workers} worker process(es)"),
            ("encode-only", self.encode_seconds, f"batches of {self.batch_size}, {self.torch_threads} torch thread(s)"),
            ("end-to-end", self.index_seconds, "run_index: walk, decode, encode, commit, save"),
        ]
        lines = [
            f"xmodal bench index: {self.files} files ({self.images} images, {self.sounds} sounds, "
            f"{self.hostile} hostile), model {self.model}",
            f"machine: {self.machine}, {self.cpu_count} cores; median of {self.repeats} runs",
            "",
            f"{'stage':<12} {'files/s':>9} {'seconds':>8}  what",
        ]
        for name, seconds, what in rows:
            lines.append(f"{name:<12} {self.rate(seconds):>9.1f} {statistics.median(seconds):>8.2f}  {what}")
        wall = statistics.median(self.index_wall_seconds)
        lines += [
            "",
            f"pipeline efficiency = end-to-end / min(decode, encode) = {self.efficiency:.2f}",
            f"(end-to-end including model load and collection open: {self.files / wall:.1f} files/s)",
        ]
        if self.host_seconds:
            lines.append(f"host side of the GPU JPEG road (nvJPEG, resizing and encoding free): "
                         f"{self.rate(self.host_seconds):.1f} files/s")
        return "\n".join(lines)

    def to_json(self) -> str:
        data = asdict(self)
        data.update(
            decode_rate=self.rate(self.decode_seconds),
            encode_rate=self.rate(self.encode_seconds),
            index_rate=self.rate(self.index_seconds),
            efficiency=self.efficiency,
            host_rate=self.rate(self.host_seconds) if self.host_seconds else None,
        )
        return json.dumps(data, indent=2) + "\n"


def resolve_model(model: str, workdir: Path) -> str:
    """A model spec, or a preset/architecture name turned into an untrained model directory."""
    from retrieval.encoders.presets import PRESETS

    if model in PRESETS or (":" not in model and not Path(model).exists() and model != "starter"):
        from retrieval.encoders import init_model_dir

        path = workdir / "model"
        init_model_dir(path, model, seed=0)
        return str(path)
    return model


def _decode_all(files: list[str], encoder, workers: int) -> tuple[float, list]:
    """The decode stage indexing uses (worker processes; JPEGs on the GPU with a CUDA encoder)."""
    from retrieval.indexing.pipeline import IndexOptions, local_decode_stage
    from retrieval.indexing.prepare import DECODED, Task

    stage = local_decode_stage(encoder, IndexOptions(workers=workers))
    started = time.perf_counter()
    results = list(stage([Task(path) for path in files], frozenset()))
    if encoder.device.type == "cuda":  # pixels decoded on the GPU: their resizing may still be queued
        import torch

        torch.cuda.synchronize(encoder.device)
    seconds = time.perf_counter() - started
    return seconds, [r for r in results if r is not None and r.status == DECODED]


def _encode_all(decoded: list, encoder, batch_size: int) -> float:
    from retrieval.indexing.encode import stack_pixels

    images = [p.pixels for p in decoded if p.info.modality == "image"]
    sounds = [p for p in decoded if p.info.modality == "audio"]
    started = time.perf_counter()
    for start in range(0, len(images), batch_size):
        encoder.encode_pixels(stack_pixels(images[start : start + batch_size]))
    for start in range(0, len(sounds), max(1, batch_size // 4)):
        chunk = sounds[start : start + max(1, batch_size // 4)]
        encoder.embed_log_mels([p.log_mel for p in chunk], [p.info.duration for p in chunk])
    return time.perf_counter() - started


class _FreeEncoder:
    """The encoder, except that encoding images costs nothing: one fixed unit vector each."""

    def __init__(self, encoder) -> None:
        self._encoder = encoder
        self._vector = np.full(encoder.identity.dim, encoder.identity.dim ** -0.5, dtype=np.float32)

    def __getattr__(self, name: str):
        return getattr(self._encoder, name)

    def encode_pixels(self, pixels) -> np.ndarray:
        return np.broadcast_to(self._vector, (len(pixels), len(self._vector)))


def _host_only_stage(encoder, workers: int):
    """The GPU JPEG stage with its device work (nvJPEG, orientation, resizing) left out: the files'
    bytes are still copied into the tensors nvJPEG would be given."""
    from index.records import MediaInfo
    from retrieval.indexing.gpu_jpeg import GpuJpegStage, encoded_tensors
    from retrieval.indexing.prepare import DECODED, Prepared
    from retrieval.media.limits import MediaLimits

    placeholder = np.zeros((1, 1, 3), dtype=np.uint8)  # stacked and ignored by _FreeEncoder

    class HostOnlyStage(GpuJpegStage):
        def _decode(self, batch, for_pillow):
            encoded_tensors(batch)  # the host's part of handing the batch to nvJPEG
            return [Prepared(jpeg.task.path, DECODED, jpeg.state,
                             MediaInfo("image", "jpeg", width=jpeg.header.width, height=jpeg.header.height),
                             pixels=placeholder) for jpeg in batch]

    return HostOnlyStage(encoder.inputs, MediaLimits(), workers, "cpu")


def _host_only_seconds(folder: Path, db: Path, encoder, workers: int, batch_size: int) -> float:
    """`index_paths` into a fresh collection on the GPU JPEG road, device work free (see the module)."""
    from index.backends import open_collection
    from retrieval.indexing.pipeline import IndexOptions, index_paths

    collection = open_collection(db, encoder.identity, writable=True, device="cpu")
    try:
        options = IndexOptions(workers=workers, batch_size=batch_size)
        summary = index_paths([str(folder)], collection, _FreeEncoder(encoder), options,
                              decode=_host_only_stage(encoder, workers))
        indexed = collection.store.counts()["image"]["items"]
    finally:
        collection.close()
    if indexed != summary.files_seen:  # a rate of files not indexed would mean nothing
        raise RuntimeError(f"the host-side run indexed {indexed} of {summary.files_seen} JPEGs")
    return summary.seconds


def _draw_jpeg(job: tuple[str, int]) -> None:
    from retrieval.data.samples import draw_image

    out, index = job
    rng = np.random.default_rng([7, index])
    width, height = int(rng.integers(160, 800)), int(rng.integers(120, 600))
    path = Path(out) / f"{index // 500:03d}" / f"image-{index:06d}.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_image(rng, width, height).save(path, "JPEG", quality=90)


def _jpeg_folder(out: Path, count: int) -> list[str]:
    """`count` JPEGs of 160-800 x 120-600 pixels, drawn on every core (spawned: torch is loaded)."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(os.cpu_count() or 1) as pool:
        pool.map(_draw_jpeg, [(str(out), index) for index in range(count)], chunksize=64)
    return sorted(str(path) for path in out.rglob("*.jpg"))


def run_index_benchmark(model: str = "small", images: int = 200, sounds: int = 50, workers: int | None = None,
                        repeats: int = 3, hostile: bool = True, device: str = "cpu", jpeg_only: bool = False,
                        batch_size: int = 64) -> IndexBenchReport:
    """Generate a folder, then measure decode-only, encode-only and end-to-end indexing rates.

    `jpeg_only`: a folder of `images` JPEGs and nothing else (the GPU indexing target's folder).
    """
    import faiss
    import open_clip
    import torch

    from retrieval.compose import run_index
    from retrieval.data.samples import generate_sample_folder
    from retrieval.encoders import create_encoder
    from retrieval.indexing.gpu_jpeg import gpu_jpeg_available
    from retrieval.indexing.pipeline import default_workers
    from retrieval.indexing.walk import walk_roots
    from retrieval.settings import Settings

    workers = workers or default_workers()
    with tempfile.TemporaryDirectory(prefix="xmodal-bench-") as temp:
        workdir = Path(temp)
        spec = resolve_model(model, workdir)
        if jpeg_only:
            counts = {"images": len(_jpeg_folder(workdir / "media", images)), "sounds": 0, "hostile": 0}
        else:
            manifest = generate_sample_folder(workdir / "media", images, sounds, hostile=hostile, seed=0)
            counts = {"images": len(manifest.images), "sounds": len(manifest.sounds),
                      "hostile": len(manifest.hostile)}
        files = [f.path for f in walk_roots([str(workdir / "media")]).files]
        encoder = create_encoder(spec, device=device, batch_size=batch_size)
        report = IndexBenchReport(
            model=model, device=str(encoder.device), files=len(files), **counts,
            workers=workers, torch_threads=torch.get_num_threads(),
            cpu_count=os.cpu_count() or 0, machine=cpu_name(),
            versions={"torch": torch.__version__, "open_clip": open_clip.__version__, "faiss": faiss.__version__,
                      "python": platform.python_version()},
            repeats=repeats, batch_size=batch_size, gpu_jpeg=gpu_jpeg_available(encoder.device),
        )
        _decode_all(files[:8], encoder, workers)  # warm-up: page cache, first imports in workers
        for repeat in range(repeats):
            seconds, decoded = _decode_all(files, encoder, workers)
            report.decode_seconds.append(seconds)
            report.encode_seconds.append(_encode_all(decoded, encoder, batch_size))
            db = workdir / f"db-{repeat}"
            started = time.perf_counter()
            settings = Settings(db_dir=db, model=spec, workers=workers, device=device, batch_size=batch_size)
            summary = run_index(settings, [workdir / "media"])
            report.index_wall_seconds.append(time.perf_counter() - started)
            report.index_seconds.append(summary.seconds)
            shutil.rmtree(db)
            if jpeg_only:
                report.host_seconds.append(_host_only_seconds(workdir / "media", db, encoder, workers, batch_size))
                shutil.rmtree(db)
    return report
