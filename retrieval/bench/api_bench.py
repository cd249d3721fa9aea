"""`xmodal bench api`: what the HTTP layer costs. `/search/text` latency over real loopback HTTP at
several concurrency levels, beside the same search called in-process (the floor the service adds
to) and `/health` (the floor of HTTP itself), all in one run on one machine. At concurrency 1 the
in-process and HTTP queries alternate one by one, so the overhead is a difference measured under
the same noise, not across two moments of a shared machine.

The server is the real `xmodal serve` in a child process; the client is the standard library's
http.client with one keep-alive connection per client thread, so no extra package is measured.
On a small machine the client threads share the cores with the server: the figures include that,
and the report says how many cores there were.
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from retrieval.bench.live_server import serve_collection
from retrieval.bench.machine import cpu_name
from retrieval.demo import build_collection

QUERIES = (
    "a big red circle on grey", "small yellow star, white background", "a large green square on stripes",
    "tiny blue triangle on black", "big orange cross on grey", "a small pink hexagon on white",
    "purple star on a striped background", "a cyan circle",
)


@dataclass
class Latency:
    name: str
    concurrency: int
    requests: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    per_second: float


@dataclass
class ApiBenchReport:
    db_dir: str
    model: str
    items: dict[str, int]
    k: int
    cpu: str
    cores: int
    python: str
    rows: list[Latency] = field(default_factory=list)

    def row(self, name: str, concurrency: int) -> Latency | None:
        return next((r for r in self.rows if r.name == name and r.concurrency == concurrency), None)

    def overhead_ms(self) -> float | None:
        """HTTP p50 at concurrency 1 minus in-process p50: what the service adds to a lone query."""
        http_row, local = self.row("POST /search/text", 1), self.row("in-process search_text", 1)
        return None if http_row is None or local is None else http_row.p50_ms - local.p50_ms

    def table(self) -> str:
        lines = [f"{self.model} over {self.items.get('image', 0)} images and {self.items.get('audio', 0)} sounds, "
                 f"k={self.k}; {self.cpu}, {self.cores} cores",
                 f"{'what':<26} {'conc':>4} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'req/s':>8}"]
        for r in self.rows:
            lines.append(f"{r.name:<26} {r.concurrency:>4} {r.requests:>8} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} "
                         f"{r.mean_ms:>8.2f} {r.per_second:>8.1f}")
        overhead = self.overhead_ms()
        if overhead is not None:
            lines.append(f"HTTP overhead at concurrency 1 (p50 over in-process p50): {overhead:+.2f} ms")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "overhead_ms_p50_c1": self.overhead_ms()}, indent=2) + "\n"


def _summarise(name: str, concurrency: int, seconds: list[float], wall: float) -> Latency:
    millis = np.asarray(seconds) * 1000
    return Latency(name, concurrency, len(millis), float(np.percentile(millis, 50)), float(np.percentile(millis, 99)),
                   float(millis.mean()), len(millis) / wall)


def _drive(port: int, method: str, path: str, bodies: list[bytes | None],
           concurrency: int) -> tuple[list[float], float]:
    """Send `bodies` (one request each) from `concurrency` threads on keep-alive connections."""
    seconds: list[float] = []
    lock = threading.Lock()
    next_index = iter(range(len(bodies)))
    failures: list[str] = []

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Content-Type": "application/json"}
        while True:
            with lock:
                index = next(next_index, None)
            if index is None:
                break
            begin = time.perf_counter()
            connection.request(method, path, body=bodies[index], headers=headers)
            response = connection.getresponse()
            response.read()
            elapsed = time.perf_counter() - begin
            with lock:
                seconds.append(elapsed)
                if response.status != 200:
                    failures.append(f"{response.status}")
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"{len(failures)} of {len(bodies)} requests failed (statuses {sorted(set(failures))})")
    return seconds, time.perf_counter() - started


def _paired(engine, port: int, bodies: list[bytes], k: int) -> tuple[Latency, Latency]:
    """The same queries in-process and over HTTP, alternating one by one, so that both see the same
    moments of a noisy machine."""
    local, remote = [], []
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for number, body in enumerate(bodies):
        begin = time.perf_counter()
        engine.search_text(QUERIES[number % len(QUERIES)], k)
        local.append(time.perf_counter() - begin)
        begin = time.perf_counter()
        connection.request("POST", "/search/text", body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        remote.append(time.perf_counter() - begin)
        if response.status != 200:
            raise RuntimeError(f"/search/text answered {response.status}")
    connection.close()
    # Each side's rate is over its own time: the wall clock here holds both.
    return (_summarise("in-process search_text", 1, local, sum(local)),
            _summarise("POST /search/text", 1, remote, sum(remote)))


def run_api_benchmark(db_dir: Path | None = None, requests: int = 400, concurrency: tuple[int, ...] = (1, 8),
                      k: int = 10, images: int = 240, sounds: int = 120,
                      say: Callable[[str], None] = lambda line: None) -> ApiBenchReport:
    """The real server beside an in-process engine over the same collection: concurrency 1
    alternates the two query by query; higher levels and /health follow.

    Args:
        db_dir: the collection to serve; None: the demo's kind of collection (`images` pictures and
            `sounds` sounds of 60 concepts, the bundled starter model), built for this run and removed.
    """
    with tempfile.TemporaryDirectory(prefix="xmodal-bench-api-") as work:
        if db_dir is None:
            say(f"building a collection of {images} images and {sounds} sounds (starter model) in {work}")
            report = _measure(build_collection(Path(work), images, sounds), Path(work) / "server.log",
                              requests, concurrency, k)
            report.db_dir = f"built for the run ({images} images, {sounds} sounds), then removed"
            return report
        # Absolute: the server runs in the package's folder, not the caller's.
        return _measure(Path(db_dir).absolute(), Path(work) / "server.log", requests, concurrency, k)


def _measure(db_dir: Path, log_file: Path, requests: int, concurrency: tuple[int, ...], k: int) -> ApiBenchReport:
    from retrieval.compose import build_engine, collection_info
    from retrieval.settings import Settings

    details = collection_info(Settings(db_dir=db_dir))
    report = ApiBenchReport(str(db_dir), details.model, details.items, k, cpu_name(), os.cpu_count() or 1,
                            platform.python_version())
    bodies = [json.dumps({"query": QUERIES[n % len(QUERIES)], "k": k}).encode() for n in range(requests)]
    engine = build_engine(Settings(db_dir=db_dir))
    try:
        # A log file, not a pipe: a pipe nobody reads would stall a server with things to say.
        with serve_collection(db_dir, log_file=log_file) as base:
            port = urllib.parse.urlsplit(base).port
            _paired(engine, port, bodies[: min(50, requests)], k)  # warm-up of both
            report.rows.extend(_paired(engine, port, bodies, k))
            for level in concurrency:
                if level == 1:
                    continue
                seconds, wall = _drive(port, "POST", "/search/text", bodies, level)
                report.rows.append(_summarise("POST /search/text", level, seconds, wall))
            seconds, wall = _drive(port, "GET", "/health", [None] * requests, 1)
            report.rows.append(_summarise("GET /health", 1, seconds, wall))
    finally:
        engine.close()
    return report
