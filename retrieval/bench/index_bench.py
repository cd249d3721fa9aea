"""`xmodal bench index`: the indexing rate beside the two rates that bound it.

On the same generated folder and machine, in one process:
  decode-only  the worker pool alone (read, sniff, hash, decode, resize / log-mel), all workers
  encode-only  the encoder alone on the already decoded inputs, batched as indexing batches them
  end-to-end   `run_index` into a fresh collection (walk, decode, encode, commit, save)
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
    decode_seconds: list[float] = field(default_factory=list)
    encode_seconds: list[float] = field(default_factory=list)
    index_seconds: list[float] = field(default_factory=list)
    index_wall_seconds: list[float] = field(default_factory=list)

    def rate(self, seconds: list[float]) -> float:
        return self.files / statistics.median(seconds)

    @property
    def efficiency(self) -> float:
        bound = min(self.rate(self.decode_seconds), self.rate(self.encode_seconds))
        return self.rate(self.index_seconds) / bound

    def table(self) -> str:
        rows = [
            ("decode-only", self.decode_seconds, f"{self.workers} worker process(es)"),
            ("encode-only", self.encode_seconds, f"{self.torch_threads} torch thread(s)"),
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
        return "\n".join(lines)

    def to_json(self) -> str:
        data = asdict(self)
        data.update(
            decode_rate=self.rate(self.decode_seconds),
            encode_rate=self.rate(self.encode_seconds),
            index_rate=self.rate(self.index_seconds),
            efficiency=self.efficiency,
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
    from retrieval.indexing.prepare import DECODED, Task
    from retrieval.indexing.workers import DecodePool
    from retrieval.media.limits import MediaLimits

    started = time.perf_counter()
    results = list(DecodePool(workers, encoder.inputs, MediaLimits()).run(Task(path) for path in files))
    seconds = time.perf_counter() - started
    return seconds, [r for r in results if r.status == DECODED]


def _encode_all(decoded: list, encoder, batch_size: int) -> float:
    images = [p.pixels for p in decoded if p.info.modality == "image"]
    sounds = [p for p in decoded if p.info.modality == "audio"]
    started = time.perf_counter()
    for start in range(0, len(images), batch_size):
        encoder.encode_pixels(np.stack(images[start : start + batch_size]))
    for start in range(0, len(sounds), max(1, batch_size // 4)):
        chunk = sounds[start : start + max(1, batch_size // 4)]
        encoder.embed_log_mels([p.log_mel for p in chunk], [p.info.duration for p in chunk])
    return time.perf_counter() - started


def run_index_benchmark(model: str = "small", images: int = 200, sounds: int = 50, workers: int | None = None,
                        repeats: int = 3, hostile: bool = True, device: str = "cpu") -> IndexBenchReport:
    """Generate a folder, then measure decode-only, encode-only and end-to-end indexing rates."""
    import faiss
    import open_clip
    import torch

    from retrieval.compose import run_index
    from retrieval.data.samples import generate_sample_folder
    from retrieval.encoders import create_encoder
    from retrieval.indexing.pipeline import default_workers
    from retrieval.indexing.walk import walk_roots
    from retrieval.settings import Settings

    workers = workers or default_workers()
    with tempfile.TemporaryDirectory(prefix="xmodal-bench-") as temp:
        workdir = Path(temp)
        spec = resolve_model(model, workdir)
        manifest = generate_sample_folder(workdir / "media", images, sounds, hostile=hostile, seed=0)
        files = [f.path for f in walk_roots([str(workdir / "media")]).files]
        encoder = create_encoder(spec, device=device)
        report = IndexBenchReport(
            model=model, device=str(encoder.device), files=len(files), images=len(manifest.images),
            sounds=len(manifest.sounds),
            hostile=len(manifest.hostile), workers=workers, torch_threads=torch.get_num_threads(),
            cpu_count=os.cpu_count() or 0, machine=cpu_name(),
            versions={"torch": torch.__version__, "open_clip": open_clip.__version__, "faiss": faiss.__version__,
                      "python": platform.python_version()},
            repeats=repeats,
        )
        _decode_all(files[:8], encoder, workers)  # warm-up: page cache, first imports in workers
        for repeat in range(repeats):
            seconds, decoded = _decode_all(files, encoder, workers)
            report.decode_seconds.append(seconds)
            report.encode_seconds.append(_encode_all(decoded, encoder, 64))
            db = workdir / f"db-{repeat}"
            started = time.perf_counter()
            summary = run_index(Settings(db_dir=db, model=spec, workers=workers, device=device), [workdir / "media"])
            report.index_wall_seconds.append(time.perf_counter() - started)
            report.index_seconds.append(summary.seconds)
            shutil.rmtree(db)
    return report
