"""A bounded queue in front of the generator: pictures are drawn a few at a time, a few more may
wait, and the rest are told when to come back (429 with Retry-After).

Why: a picture costs about a second of sampling on two cores, a text search a few milliseconds.
Without a bound, a flood of queries that nothing matches (each one drawing) held every search slot
for tens of seconds and plain searches were refused with 429 (measured: 40 concurrent drawing
queries, 32 slots, every text search refused). With it, drawing queries hold at most
`running + waiting` slots and the rest of the service answers as usual.

The gate wraps the engine's drawer, so only real drawing waits: a picture already drawn for the
same query is found in the collection folder without touching the queue.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from api.errors import ApiError

GENERATING_AT_ONCE = 1  # two samplers on two cores take as long as one after the other, and search slower
GENERATIONS_WAITING = 3
MAX_RETRY_AFTER = 60


class GenerationGate:
    """At most `running` drawings at once and `waiting` queued behind them; the next is refused."""

    def __init__(self, running: int = GENERATING_AT_ONCE, waiting: int = GENERATIONS_WAITING) -> None:
        self.running = running
        self.waiting = waiting
        self.admitted = 0  # drawing or waiting to draw
        self.refused = 0  # statistics, for tests and benches
        self._seconds = 1.0  # running mean of one drawing, for Retry-After
        self._lock = threading.Lock()
        self._turns = threading.Semaphore(running)

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained: its length times one drawing, per sampler."""
        with self._lock:
            ahead = self.admitted
            seconds = self._seconds
        return max(1, min(MAX_RETRY_AFTER, math.ceil(seconds * max(ahead, 1) / self.running)))

    def enter(self) -> None:
        """Join the queue, or raise ApiError(429) with Retry-After when it is full."""
        with self._lock:
            full = self.admitted >= self.running + self.waiting
            if not full:
                self.admitted += 1
            else:
                self.refused += 1
        if full:
            after = self.retry_after()
            raise ApiError(429, f"too many pictures are being drawn at once; retry in {after} s "
                                f"(or search with generate: never)", {"Retry-After": str(after)})
        self._turns.acquire()

    def leave(self, seconds: float) -> None:
        self._turns.release()
        with self._lock:
            self.admitted -= 1
            self._seconds = 0.8 * self._seconds + 0.2 * seconds


class GatedDrawer:
    """A drawer whose `draw` takes a turn at the gate first; everything else is the drawer's own."""

    def __init__(self, drawer: Any, gate: GenerationGate) -> None:
        self._drawer = drawer
        self.gate = gate

    def __getattr__(self, name: str) -> Any:
        return getattr(self._drawer, name)  # name, fingerprint, can_draw, config

    def draw(self, vector, text, count: int, seed: int):
        self.gate.enter()
        started = time.perf_counter()
        try:
            return self._drawer.draw(vector, text, count, seed)
        finally:
            self.gate.leave(time.perf_counter() - started)
