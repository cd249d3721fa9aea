"""`xmodal bench encode`: image and text tower throughput against batch size, and how much of the
machine's arithmetic it uses.

FLOPs per item are counted once by torch's own `FlopCounterMode` on a batch-1 forward pass (matrix
multiplies and convolutions, 2 FLOPs per multiply-add); achieved FLOP/s is that times items/s. On
CUDA the towers run under bfloat16 autocast and MFU is achieved FLOP/s over the GPU's dense bf16
peak (`--peak-tflops`, or the known figure for an H100/H200/A100). Each figure is the median of
`repeats` timed passes after a warm-up pass.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from retrieval.bench.machine import cpu_name, versions

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}  # dense, SXM
BATCHES = {"ci": (1, 8, 32), "full": (1, 8, 32, 128, 256, 512, 1024)}


@dataclass
class EncodeRow:
    tower: str
    batch: int
    items_per_second: list[float] = field(default_factory=list)

    def summary(self, flops_per_item: float, peak_tflops: float | None) -> dict:
        rate = statistics.median(self.items_per_second)
        achieved = rate * flops_per_item / 1e12
        return {"tower": self.tower, "batch": self.batch, "items_per_second": rate, "achieved_tflops": achieved,
                "mfu": achieved / peak_tflops if peak_tflops else None, "repeats": self.items_per_second}


@dataclass
class EncodeBenchReport:
    model: str
    device: str
    dtype: str
    machine: str
    cpu_count: int
    torch_threads: int
    versions: dict[str, str]
    repeats: int
    peak_tflops: float | None
    flops_per_item: dict[str, float] = field(default_factory=dict)
    rows: list[EncodeRow] = field(default_factory=list)

    def table(self) -> str:
        peak = f", peak {self.peak_tflops:g} TFLOP/s" if self.peak_tflops else ""
        lines = [f"{self.model} on {self.device} ({self.dtype}{peak}); {self.machine}, {self.cpu_count} cores, "
                 f"{self.torch_threads} torch threads; medians of {self.repeats}",
                 "  ".join(f"{t}: {f / 1e9:.2f} GFLOP/item" for t, f in self.flops_per_item.items()),
                 f"{'tower':<6} {'batch':>6} {'items/s':>10} {'TFLOP/s':>9} {'MFU':>7}"]
        for row in self.rows:
            s = row.summary(self.flops_per_item[row.tower], self.peak_tflops)
            mfu = f"{s['mfu']:.1%}" if s["mfu"] is not None else "-"
            lines.append(f"{row.tower:<6} {row.batch:>6} {s['items_per_second']:>10.1f} {s['achieved_tflops']:>9.4f} "
                         f"{mfu:>7}")
        return "\n".join(lines)

    def to_json(self) -> str:
        body = {k: v for k, v in asdict(self).items() if k != "rows"}
        body["rows"] = [r.summary(self.flops_per_item[r.tower], self.peak_tflops) for r in self.rows]
        return json.dumps(body, indent=2) + "\n"


def _flops(forward) -> float:
    """FLOPs of one call. Counted with gradients enabled: without them PyTorch's attention takes a
    fused fast path whose matrix multiplies the counter does not see (a third of ViT-B-32's)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(False), torch.enable_grad(), counter:
        forward()
    return float(counter.get_total_flops())


def _peak(device, given: float | None) -> float | None:
    import torch

    if given:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def run_encode_benchmark(model: str = "small", size: str = "ci", repeats: int = 5, device: str | None = None,
                         peak_tflops: float | None = None, precision: str = "autocast",
                         compile_towers: bool = False) -> EncodeBenchReport:
    """Items/s of the image and text towers of `model` at each batch size of `size`.

    Args:
        precision: on CUDA, "autocast" (bf16 autocast over float32 weights: what indexing does) or
            "bf16" (the weights themselves cast to bfloat16: no per-call casts).
        compile_towers: run the towers through `torch.compile` (fuses the element-wise work).
    """
    import open_clip
    import torch

    from retrieval.bench.index_bench import resolve_model
    from retrieval.encoders import create_encoder

    with tempfile.TemporaryDirectory() as work:
        encoder = create_encoder(resolve_model(model, Path(work)), device=device)
    clip, dev = encoder.clip_model, encoder.device
    cuda = dev.type == "cuda"
    weights_bf16 = cuda and precision == "bf16"
    if weights_bf16:
        clip = clip.to(torch.bfloat16)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
    side = encoder.inputs.image_size
    dtype = ("bfloat16 weights" if weights_bf16 else "bfloat16 autocast") if cuda else "float32"
    dtype += ", torch.compile" if compile_towers else ""
    report = EncodeBenchReport(model, str(dev), dtype, cpu_name(),
                               os.cpu_count() or 1, torch.get_num_threads(), versions(torch, open_clip), repeats,
                               _peak(dev, peak_tflops))
    rng = np.random.default_rng(0)
    words = ["a", "big", "red", "circle", "on", "grey", "small", "photo", "of", "dog"]

    def images(batch: int) -> torch.Tensor:
        pixels = torch.from_numpy(rng.standard_normal((batch, 3, side, side)).astype(np.float32)).to(dev)
        return pixels.to(torch.bfloat16) if weights_bf16 else pixels

    def texts(batch: int) -> torch.Tensor:
        return encoder.tokenizer([" ".join(rng.choice(words, 8)) for _ in range(batch)]).to(dev)

    towers = {"image": (images, clip.encode_image), "text": (texts, clip.encode_text)}
    for tower, (make, forward) in towers.items():
        one = make(1)
        with autocast():
            report.flops_per_item[tower] = _flops(lambda forward=forward, one=one: forward(one))
    if compile_towers:  # after counting: the counter needs the eager modules
        towers = {tower: (make, torch.compile(forward)) for tower, (make, forward) in towers.items()}
    with torch.inference_mode():
        for tower, (make, forward) in towers.items():
            for batch in BATCHES[size]:
                row = EncodeRow(tower, batch)
                inputs = make(batch)
                passes = max(1, 64 // batch)  # enough work per timing that the clock's noise is small
                with autocast():
                    forward(inputs)  # warm-up
                    for _ in range(repeats):
                        if cuda:
                            torch.cuda.synchronize(dev)
                        started = time.perf_counter()
                        for _ in range(passes):
                            forward(inputs)
                        if cuda:
                            torch.cuda.synchronize(dev)
                        row.items_per_second.append(batch * passes / (time.perf_counter() - started))
                report.rows.append(row)
    return report
