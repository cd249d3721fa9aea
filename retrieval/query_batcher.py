"""One thread owns the model while a server answers queries: text queries that arrive together are
encoded as one batch, and image and audio queries take their turn.

Why one thread: on two CPU cores, eight threads each running the towers with torch's own thread
pool oversubscribe the cores and every query gets slower; on a GPU, two threads must never drive
one model at once. Why batch: a batch of eight short texts costs about what one does, so under
load the text tower's cost is shared instead of queued.

Batches form without waiting: while one batch is being encoded, new queries queue up and the next
batch takes all of them (up to `max_batch`). `max_wait_ms` adds an optional short wait for
stragglers; the default 0 keeps a lone query's latency at exactly the encoder's.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from retrieval.encoders.model import Encoder


class BatcherClosedError(RuntimeError):
    """The batcher was closed (the server is shutting down)."""


@dataclass
class _Job:
    text: str | None  # a text query, or None for a job that runs `call`
    call: Callable[[Encoder], Any] | None
    future: Future = field(default_factory=Future)


class QueryBatcher:
    """Serialises all use of one encoder on a worker thread; batches concurrent text queries."""

    def __init__(self, encoder: Encoder, max_batch: int = 32, max_wait_ms: float = 0.0) -> None:
        self.encoder = encoder
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.batches = 0  # statistics, for tests and /info
        self.texts = 0
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="xmodal-encoder", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- callers (any thread)

    def encode_text(self, text: str) -> np.ndarray:
        """The query vector (dim,) of one text, encoded together with any concurrent ones."""
        return self._submit(_Job(text, None)).result()

    def run(self, call: Callable[[Encoder], Any]) -> Any:
        """Run `call(encoder)` on the encoder's thread (image and audio queries) and return its result."""
        return self._submit(_Job(None, call)).result()

    def close(self) -> None:
        """Stop the worker after the queued jobs; later calls raise BatcherClosedError."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join(timeout=30)

    def _submit(self, job: _Job) -> Future:
        if self._closed:
            raise BatcherClosedError("the query encoder is shut down")
        self._queue.put(job)
        return job.future

    # ---------------------------------------------------------------- the worker thread

    def _work(self) -> None:
        pending: _Job | None = None  # a non-text job met while gathering a text batch
        while True:
            job = pending or self._queue.get()
            pending = None
            if job is None:
                self._fail_queued()
                return
            if job.text is None:
                self._run_one(job)
                continue
            batch = [job]
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    timeout = deadline - time.monotonic()
                    extra = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if extra is None:
                    self._queue.put(None)  # shut down after this batch
                    break
                if extra.text is None:
                    pending = extra  # an image or audio query: its turn comes right after this batch
                    break
                batch.append(extra)
            self._encode_texts(batch)

    def _encode_texts(self, batch: list[_Job]) -> None:
        try:
            vectors = self.encoder.encode_text([job.text for job in batch])  # (B, dim)
        except BaseException as error:  # noqa: BLE001 - every waiting caller gets the failure
            for job in batch:
                job.future.set_exception(error)
            return
        self.batches += 1
        self.texts += len(batch)
        for job, vector in zip(batch, vectors, strict=True):
            job.future.set_result(vector)

    def _run_one(self, job: _Job) -> None:
        try:
            job.future.set_result(job.call(self.encoder))
        except BaseException as error:  # noqa: BLE001 - the caller re-raises it in its own thread
            job.future.set_exception(error)

    def _fail_queued(self) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                job.future.set_exception(BatcherClosedError("the query encoder is shut down"))
