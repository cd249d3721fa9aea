"""GPU indexing of a JPEG-only folder (a part 5 measurement): generate N JPEGs with 16 processes, then
time the decode workers' start-up, decode-only, encode-only at batch 64 and 256, and `run_index` end
to end on CUDA with ViT-B-32 (untrained weights of that shape).

Usage: PYTHONPATH=. python docs/results/jpeg_index_gpu.py [N] [BATCH]
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def make(args: tuple[int, str]) -> None:
    from retrieval.data.samples import draw_image

    index, out = args
    rng = np.random.default_rng([7, index])
    width, height = int(rng.integers(160, 800)), int(rng.integers(120, 600))
    path = Path(out) / f"{index // 500:03d}" / f"img-{index:05d}.jpg"
    path.parent.mkdir(exist_ok=True, parents=True)
    draw_image(rng, width, height).save(path, "JPEG", quality=90)


def main(n: int, batch: int) -> None:
    import torch

    from retrieval.bench.index_bench import resolve_model
    from retrieval.compose import run_index
    from retrieval.encoders import create_encoder
    from retrieval.indexing.prepare import Task
    from retrieval.indexing.workers import DecodePool
    from retrieval.media.limits import MediaLimits
    from retrieval.settings import Settings

    work = Path(tempfile.mkdtemp())
    started = time.perf_counter()
    with mp.get_context("spawn").Pool(16) as pool:
        pool.map(make, [(i, str(work / "media")) for i in range(n)], chunksize=64)
    print(f"generated {n} JPEGs in {time.perf_counter() - started:.1f} s", flush=True)
    spec = resolve_model("ViT-B-32", work)
    encoder = create_encoder(spec, device="cuda")
    files = sorted(str(p) for p in (work / "media").rglob("*.jpg"))
    started = time.perf_counter()
    list(DecodePool(15, encoder.inputs, MediaLimits()).run(Task(p) for p in files[:16]))
    print(f"pool of 15: start + 16 files {time.perf_counter() - started:.2f} s", flush=True)
    started = time.perf_counter()
    results = list(DecodePool(15, encoder.inputs, MediaLimits()).run(Task(p) for p in files))
    seconds = time.perf_counter() - started
    print(f"decode-only {len(files)} files with 15 workers: {seconds:.2f} s = {len(files) / seconds:.0f}/s", flush=True)
    pixels = np.stack([r.pixels for r in results if r.pixels is not None])
    for size in (64, 256):
        encoder.batch_size = size
        encoder.encode_pixels(pixels[:size])  # warm-up
        torch.cuda.synchronize()
        started = time.perf_counter()
        encoder.encode_pixels(pixels)
        torch.cuda.synchronize()
        print(f"encode-only batch {size}: {len(pixels) / (time.perf_counter() - started):.0f}/s", flush=True)
    for repeat in range(2):
        started = time.perf_counter()
        summary = run_index(Settings(db_dir=work / f"db{repeat}", model=spec, workers=15, device="cuda",
                                     batch_size=batch), [work / "media"])
        print(f"run_index {repeat}: {summary.seconds:.2f} s -> {n / summary.seconds:.0f} files/s (wall incl. model "
              f"load {time.perf_counter() - started:.2f} s)", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8000, int(sys.argv[2]) if len(sys.argv) > 2 else 256)
