"""`xmodal bench load`: the service under mixed load while its collection grows.

A fresh collection is built in a work folder and served by the real `xmodal serve` on loopback.
For `seconds`, `clients` asynchronous HTTP clients send a mix of text, image and audio searches
(and a small share of queries that ask for a drawing, which meet the bounded drawing queue),
while an indexer keeps writing new pictures and sounds under the served folder and running
`xmodal index` on it. The report gives status counts and p50/p95/p99 per kind of query, and checks
afterwards that every file added is in the collection and that the server serves all of them.

The pass criteria are the reliability promises: no 5xx, no transport error, no file lost. 429s
are allowed (they are the admission limits speaking, with Retry-After) and counted; latency
percentiles are those of the answered (2xx) requests.

httpx is imported inside the driver only: the benches stay importable without the API extras.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from retrieval.bench.api_bench import QUERIES
from retrieval.bench.live_server import serve_collection
from retrieval.bench.machine import cpu_name

REPO = Path(__file__).resolve().parents[2]
KINDS = ("text", "image", "audio", "draw")
DEFAULT_MIX = {"text": 0.5, "image": 0.25, "audio": 0.2, "draw": 0.05}


@dataclass
class KindRow:
    kind: str
    requests: int
    statuses: dict[str, int]
    p50_ms: float
    p95_ms: float
    p99_ms: float
    per_second: float


@dataclass
class LoadReport:
    seconds: float
    clients: int
    cpu: str
    cores: int
    items_before: int
    index_rounds: int
    files_added: int
    files_lost: list[str]
    server_items_after: int
    store_items_after: int
    five_xx: int
    transport_errors: int
    server_tracebacks: int
    rows: list[KindRow] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (self.five_xx == 0 and self.transport_errors == 0 and not self.files_lost
                and self.server_items_after == self.store_items_after and self.server_tracebacks == 0)

    def table(self) -> str:
        lines = [f"{self.seconds:.0f} s, {self.clients} clients, {self.cpu}, {self.cores} cores; "
                 f"{self.items_before} items at the start",
                 f"{'kind':<6} {'requests':>8} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}  statuses "
                 f"(percentiles of the answered)"]
        for row in self.rows:
            statuses = ", ".join(f"{code}: {count}" for code, count in sorted(row.statuses.items()))
            lines.append(f"{row.kind:<6} {row.requests:>8} {row.per_second:>7.1f} {row.p50_ms:>8.1f} "
                         f"{row.p95_ms:>8.1f} {row.p99_ms:>8.1f}  {statuses}")
        lines += [f"indexing while serving: {self.index_rounds} rounds, {self.files_added} files added, "
                  f"{len(self.files_lost)} lost; the server serves {self.server_items_after} of "
                  f"{self.store_items_after} items",
                  f"5xx: {self.five_xx}, transport errors: {self.transport_errors}, "
                  f"server tracebacks: {self.server_tracebacks} -> {'PASS' if self.passed else 'FAIL'}"]
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "passed": self.passed}, indent=2)


def run_load_benchmark(work: Path, seconds: float = 180.0, clients: int = 8, images: int = 240, sounds: int = 120,
                       batch: int = 12, mix: dict[str, float] | None = None, seed: int = 0,
                       say=lambda line: None) -> LoadReport:
    """Build a collection in `work`, serve it and load it for `seconds` while indexing `batch` new
    files per round into it; `mix` weighs the kinds of query (default DEFAULT_MIX)."""
    from retrieval.demo import build_collection

    work = Path(work).absolute()  # the server and `xmodal index` run in the package's folder, not the caller's
    media = work / "media"
    say(f"building {images} images and {sounds} sounds in {work}")
    db = build_collection(work, images, sounds, seed, concepts=12, workers=1)
    items_before = len(_stored_paths(db, media))
    material = _query_material(media, seed)
    with serve_collection(db, log_file=work / "server.log") as base:
        indexer = _Indexer(db, media, batch, seed)
        say(f"serving at {base}; {clients} clients for {seconds:.0f} s while indexing")
        indexer.start()
        try:
            samples, elapsed = asyncio.run(_drive(base, seconds, clients, material, mix or DEFAULT_MIX, seed))
        finally:
            indexer.stop()
        stored = _stored_paths(db, media)
        served = _wait_for_server(base, len(stored))
    log = (work / "server.log").read_text(errors="replace")
    rows = [_row(kind, samples[kind], elapsed) for kind in KINDS if samples[kind]]
    every = [status for kind in KINDS for status, _ in samples[kind]]
    return LoadReport(seconds=elapsed, clients=clients, cpu=cpu_name(), cores=os.cpu_count() or 0,
                      items_before=items_before, index_rounds=indexer.rounds, files_added=len(indexer.added),
                      files_lost=sorted(set(indexer.added) - stored), server_items_after=served,
                      store_items_after=len(stored), five_xx=sum(1 for s in every if s >= 500),
                      transport_errors=sum(1 for s in every if s == 0), server_tracebacks=log.count("Traceback"),
                      rows=rows)


def _row(kind: str, samples: list[tuple[int, float]], elapsed: float) -> KindRow:
    """Percentiles of the answered requests: a refusal (429) comes back in milliseconds and would
    hide how long answers take; refusals are counted in `statuses`."""
    answered = [ms for status, ms in samples if 200 <= status < 300]
    times = np.array(answered or [ms for _, ms in samples])
    statuses: dict[str, int] = {}
    for status, _ in samples:
        name = str(status) if status else "error"
        statuses[name] = statuses.get(name, 0) + 1
    p50, p95, p99 = (float(v) for v in np.percentile(times, [50, 95, 99]))
    return KindRow(kind, len(samples), statuses, round(p50, 2), round(p95, 2), round(p99, 2),
                   round(len(samples) / elapsed, 2))


# ---------------------------------------------------------------- the collection


def _stored_paths(db: Path, media: Path) -> set[str]:
    from index.collection import STORE_NAME
    from index.store import Store

    store = Store.open(db / STORE_NAME, readonly=True)
    try:
        return set(store.items_under([str(media.resolve())]))
    finally:
        store.close()


def _query_material(media: Path, seed: int) -> dict[str, list[bytes]]:
    """A few pictures and sounds of the collection, sent as uploads."""
    rng = random.Random(seed)
    pictures = sorted((media / "images").glob("*.png"))
    sounds = sorted((media / "sounds").glob("*.wav"))
    return {"image": [p.read_bytes() for p in rng.sample(pictures, min(8, len(pictures)))],
            "audio": [s.read_bytes() for s in rng.sample(sounds, min(8, len(sounds)))]}


class _Indexer:
    """Writes `batch` new files into a new folder under the served media and runs `xmodal index`
    on the media, round after round, until stopped (the round in progress is finished)."""

    def __init__(self, db: Path, media: Path, batch: int, seed: int) -> None:
        self.db, self.media, self.batch, self.seed = db, media, batch, seed
        self.added: list[str] = []
        self.rounds = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="load-indexer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        if self.failures:
            raise RuntimeError("xmodal index failed during the load run:\n" + "\n".join(self.failures))

    def _work(self) -> None:
        from retrieval.demo import write_collection

        while not self._stop.is_set():
            folder = self.media / f"added-{self.rounds:03d}"
            sounds = max(1, self.batch // 3)
            write_collection(folder, images=self.batch - sounds, sounds=sounds, seed=self.seed + 1000 + self.rounds,
                             concepts=8)
            written = [str(path.resolve()) for path in folder.rglob("*") if path.is_file()]
            command = [sys.executable, "-m", "cli", "index", "--db", str(self.db), "--workers", "1", str(self.media)]
            done = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                                  env={**os.environ, "PYTHONPATH": str(REPO)})
            if done.returncode != 0:
                self.failures.append(f"round {self.rounds}: exit {done.returncode}: {done.stderr[-2000:]}")
                return
            self.added += written
            self.rounds += 1


# ---------------------------------------------------------------- the server and the clients


def _wait_for_server(base: str, expected: int, timeout: float = 30.0) -> int:
    """How many items the server serves once it has loaded the last generation (or at `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(base + "/info", timeout=10) as response:
            served = sum(json.load(response)["items"].values())
        if served == expected or time.monotonic() > deadline:
            return served
        time.sleep(0.5)


def _noise_png(rng: np.random.Generator) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


async def _drive(base: str, seconds: float, clients: int, material: dict[str, list[bytes]],
                 mix: dict[str, float], seed: int) -> tuple[dict[str, list[tuple[int, float]]], float]:
    """(kind -> [(status or 0 for a transport error, milliseconds)], seconds elapsed)."""
    import httpx

    samples: dict[str, list[tuple[int, float]]] = {kind: [] for kind in KINDS}
    kinds, weights = zip(*[(kind, mix.get(kind, 0.0)) for kind in KINDS], strict=True)
    started = time.perf_counter()
    end = started + seconds

    async def one(client: httpx.AsyncClient, kind: str, rng: random.Random, noise: np.random.Generator) -> None:
        if kind == "text":
            request = client.post("/search/text", json={"query": rng.choice(QUERIES), "k": 10, "generate": "never"})
        elif kind == "draw":
            request = client.post("/search/image", data={"generate": "always", "k": "5"},
                                  files={"file": ("noise.png", _noise_png(noise), "image/png")})
        else:
            name, content_type = ("q.png", "image/png") if kind == "image" else ("q.wav", "audio/wav")
            request = client.post(f"/search/{kind}", data={"generate": "never", "k": "10"},
                                  files={"file": (name, rng.choice(material[kind]), content_type)})
        sent = time.perf_counter()
        try:
            status = (await request).status_code
        except httpx.HTTPError:
            status = 0
        samples[kind].append((status, (time.perf_counter() - sent) * 1000))

    async def client_loop(number: int) -> None:
        rng = random.Random(seed * 1000 + number)
        noise = np.random.default_rng(seed * 1000 + number)
        async with httpx.AsyncClient(base_url=base, timeout=120) as client:
            while time.perf_counter() < end:
                await one(client, rng.choices(kinds, weights)[0], rng, noise)

    await asyncio.gather(*(client_loop(number) for number in range(clients)))
    return samples, time.perf_counter() - started
