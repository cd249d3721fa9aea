"""`xmodal bench search --device cuda`: exact search on a GPU against the GPU's memory bandwidth.

Exact search reads every stored vector once per query, so a batch-1 query cannot be faster than
(vectors x dim x bytes) / memory bandwidth. This suite builds the GPU mirror xmodal uses
(`index.gpu_flat.TorchFlatIndex`) over N vectors (10M x 512 by default, generated on the GPU),
in float16 and float32, and reports per method: single-query p50/p99 (query upload, product, top-k
and download included), batched queries/s, recall@10 against float32 exact, and the bandwidth the
p50 implies as a share of the device's peak. Side by side in the same run, on the same vectors:
numpy brute force and exact FAISS on the host's cores (few queries: they take ~1 s each).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from retrieval.bench.machine import cpu_name, versions

PEAK_BANDWIDTH_GBS = {"H200": 4800.0, "H100": 3350.0, "A100": 2039.0}  # HBM, SXM
K = 10
BATCH = 128  # queries per batched search: the (batch, N) score matrix is 2.5 GB at 10M fp16


@dataclass
class GpuMethod:
    method: str
    bytes_per_vector: float
    recall_at_10: float
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    batch_qps: list[float] = field(default_factory=list)

    def summary(self, n: int, peak_gbs: float | None) -> dict:
        p50 = statistics.median(self.p50_ms)
        achieved = n * self.bytes_per_vector / (p50 / 1000) / 1e9
        return {"method": self.method, "bytes_per_vector": self.bytes_per_vector, "recall_at_10": self.recall_at_10,
                "p50_ms": p50, "p99_ms": statistics.median(self.p99_ms),
                "batch_qps": statistics.median(self.batch_qps) if self.batch_qps else None,
                "achieved_gbs": achieved, "share_of_peak_bandwidth": achieved / peak_gbs if peak_gbs else None,
                "repeats": {"p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "batch_qps": self.batch_qps}}


@dataclass
class GpuSearchReport:
    n: int
    dim: int
    device: str
    peak_gbs: float | None
    machine: str
    cpu_count: int
    repeats: int
    versions: dict[str, str]
    methods: list[GpuMethod] = field(default_factory=list)

    def table(self) -> str:
        lines = [f"{self.n:,} vectors × {self.dim}, k={K}, medians of {self.repeats} repeats; {self.device} "
                 f"(peak {self.peak_gbs or '?'} GB/s), host {self.machine}, {self.cpu_count} cores",
                 f"{'method':<24} {'B/vector':>8} {'recall@10':>9} {'p50 ms':>9} {'p99 ms':>9} {'batch q/s':>10} "
                 f"{'GB/s':>7} {'of peak':>8}"]
        for m in self.methods:
            s = m.summary(self.n, self.peak_gbs)
            share = f"{s['share_of_peak_bandwidth']:.0%}" if s["share_of_peak_bandwidth"] and "GPU" in m.method else "-"
            qps = f"{s['batch_qps']:.0f}" if s["batch_qps"] else "-"
            lines.append(f"{m.method:<24} {m.bytes_per_vector:>8.0f} {m.recall_at_10:>9.3f} {s['p50_ms']:>9.3f} "
                         f"{s['p99_ms']:>9.3f} {qps:>10} {s['achieved_gbs']:>7.0f} {share:>8}")
        return "\n".join(lines)

    def to_json(self) -> str:
        body = {k: v for k, v in asdict(self).items() if k != "methods"}
        body["methods"] = [m.summary(self.n, self.peak_gbs) for m in self.methods]
        return json.dumps(body, indent=2) + "\n"


def _gpu_vectors(n: int, dim: int, seed: int, device):
    """(n, dim) float32 unit vectors on the device, clustered like embeddings (topics of ~1000
    around random centres, all sharing one direction), made in chunks to bound the temporaries."""
    import torch

    generator = torch.Generator(device=device).manual_seed(seed)
    clusters = max(16, n // 1000)
    centres = torch.randn(clusters, dim, device=device, generator=generator)
    centres = torch.nn.functional.normalize(centres, dim=1) + 0.35 * torch.nn.functional.normalize(
        torch.randn(1, dim, device=device, generator=generator), dim=1)
    out = torch.empty(n, dim, device=device)
    for start in range(0, n, 1_000_000):
        stop = min(n, start + 1_000_000)
        members = torch.randint(0, clusters, (stop - start,), device=device, generator=generator)
        block = centres[members] + torch.randn(stop - start, dim, device=device, generator=generator) / dim ** 0.5
        out[start:stop] = torch.nn.functional.normalize(block, dim=1)
    return out


def run_gpu_search_benchmark(n: int = 10_000_000, dim: int = 512, repeats: int = 5, queries_n: int = 200,
                             host_queries: int = 5, seed: int = 0, progress=None,
                             device: str = "cuda") -> GpuSearchReport:
    """Exact GPU search (float16, float32) beside numpy and FAISS on the host, on the same vectors."""
    import faiss
    import torch

    from index.ann import recall_at_k
    from index.gpu_flat import TorchFlatIndex
    from retrieval.bench.search_bench import numpy_search, time_singles

    say = progress or (lambda text: None)
    device = torch.device(device)
    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else f"{cpu_name()} (torch on CPU)"
    peak = next((gbs for key, gbs in PEAK_BANDWIDTH_GBS.items() if key in name), None)
    report = GpuSearchReport(n, dim, name, peak, cpu_name(), os.cpu_count() or 1, repeats, versions(np, faiss, torch))
    say(f"generating {n:,} vectors on {name}")
    base = _gpu_vectors(n + queries_n, dim, seed, device)
    queries = base[n:].cpu().numpy()
    base = base[:n]
    ids = np.arange(n, dtype=np.int64)
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)  # noqa: E731

    indexes = {}
    for dtype in ("float32", "float16"):
        say(f"building the GPU index ({dtype})")
        index = TorchFlatIndex(dim, str(device), dtype)
        index.add(ids, base)
        indexes[dtype] = index
    truth = indexes["float32"].search(queries, K)[1]
    for dtype, index in indexes.items():
        recall = recall_at_k(index.search(queries, K)[1], truth)
        method = GpuMethod(f"GPU exact {dtype}", index.bytes_per_vector, recall)
        say(f"timing {method.method}")
        # Each search ends by copying its answer to the host, which waits for the GPU: no extra sync.
        time_singles(lambda q, index=index: index.search(q, K), queries[:20])  # warm-up
        for _ in range(repeats):
            p50, p99 = time_singles(lambda q, index=index: index.search(q, K), queries)
            method.p50_ms.append(p50)
            method.p99_ms.append(p99)
            sync()
            started = time.perf_counter()
            for start in range(0, len(queries), BATCH):
                index.search(queries[start : start + BATCH], K)
            method.batch_qps.append(len(queries) / (time.perf_counter() - started))
        report.methods.append(method)
    del indexes
    say("copying the vectors to the host for numpy and FAISS")
    host = base.cpu().numpy()
    del base
    if cuda:
        torch.cuda.empty_cache()
    flat = faiss.IndexFlatIP(dim)
    flat.add(host)
    few = queries[:host_queries]
    for label, search in (("numpy brute force (host)", lambda q: numpy_search(host, q)),
                          ("FAISS exact (host)", lambda q: flat.search(q, K)[1])):
        say(f"timing {label}")
        found = np.concatenate([search(q[None]) for q in few])
        method = GpuMethod(label, 4.0 * dim, recall_at_k(found, truth[:host_queries]))
        for _ in range(repeats):
            p50, p99 = time_singles(search, few)
            method.p50_ms.append(p50)
            method.p99_ms.append(p99)
        report.methods.append(method)
    return report
