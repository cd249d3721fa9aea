"""A pool of decode worker processes that survives the files it decodes.

Each worker takes one task at a time over its own pipe. A dispatcher thread in the main process
feeds idle workers and moves results into a bounded queue, so workers keep decoding while the main
thread encodes (the overlap that makes indexing fast) and stop when the queue is full (bounded
memory). A worker that crashes (a segfault in a decoder) or overruns the per-file deadline is
killed and replaced; its file comes back as a CORRUPT failure and the run goes on.

Workers are fresh interpreters (`python -m retrieval.indexing.worker_main`), never forks: forking a
process that has loaded torch, FAISS or OpenMP thread pools can deadlock the child. A worker that
cannot even start is a fatal error of the run (WorkerStartError), never a verdict on the files.
"""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import Connection, wait

from retrieval.encoders.config import ModelInputs
from retrieval.errors import WorkerStartError
from retrieval.indexing.prepare import FAILED, Prepared, Task, prepare_file
from retrieval.media.errors import ErrorClass, MediaError
from retrieval.media.limits import MediaLimits

_DONE = object()
# Decoders run one file per process; BLAS/OpenMP thread pools in them would only fight the encoder.
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
_START_TIMEOUT_SECONDS = 120.0
_POLL_SECONDS = 0.25

PrepareFunction = Callable[[Task, ModelInputs, MediaLimits, frozenset], Prepared]


class _Worker:
    """One decode process and its connection. The socket's end of file doubles as its death notice."""

    def __init__(self, settings: tuple) -> None:
        parent, child = socket.socketpair()
        environment = {**os.environ, **{name: "1" for name in _THREAD_VARIABLES}}
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "retrieval.indexing.worker_main", str(child.fileno())],
                pass_fds=[child.fileno()], env=environment, stdin=subprocess.DEVNULL,
            )
        finally:
            child.close()
        self.conn = Connection(parent.detach())
        self.task: Task | None = None
        self.deadline = 0.0
        self._settings = settings

    def wait_ready(self) -> None:
        """Hand the worker its settings and wait for it to say it is ready.

        Raises:
            WorkerStartError: it died or stayed silent; no file has been blamed for it.
        """
        try:
            self.conn.send(list(sys.path))
            self.conn.send(self._settings)
            ready = self.conn.poll(_START_TIMEOUT_SECONDS) and self.conn.recv() == "ready"
        except (EOFError, OSError):
            ready = False
        if not ready:
            self.stop(force=True)
            raise WorkerStartError(
                f"a decode worker could not start (exit code {self.process.returncode}); "
                f"its own error, if it printed one, is just above"
            )

    def exit_reason(self) -> str:
        try:
            code = self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return "stopped answering"
        return f"signal {-code}" if code < 0 else f"exit code {code}"

    def stop(self, force: bool = False) -> None:
        if not force:
            try:
                self.conn.send(None)
                self.process.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                force = True
        if force and self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.conn.close()


def put_unless_stopped(results: queue.Queue, item, stop: threading.Event) -> bool:
    """A producer thread's put: wait for room in the bounded queue, unless the consumer stopped
    listening meanwhile (False)."""
    while not stop.is_set():
        try:
            results.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def stop_producer(results: queue.Queue, producer: threading.Thread, stop: threading.Event) -> None:
    """The consumer's side: tell the producer to stop and wait for it, emptying the queue it may be
    blocked on."""
    stop.set()
    while producer.is_alive():
        try:
            results.get_nowait()
        except queue.Empty:
            pass
        producer.join(timeout=0.05)


def _failure(task: Task, message: str) -> Prepared:
    return Prepared(task.path, FAILED, error=MediaError(ErrorClass.CORRUPT, message))


class DecodePool:
    """Decode files in `workers` processes; iterate `run(tasks)` for results in completion order."""

    def __init__(
        self,
        workers: int,
        inputs: ModelInputs,
        limits: MediaLimits,
        skip_hashes: frozenset[str] = frozenset(),
        buffered: int = 128,
        prepare: PrepareFunction = prepare_file,
    ) -> None:
        """`prepare` must be a module-level function (it is pickled into the workers)."""
        self.inputs = inputs
        self.prepare = prepare
        self.limits = limits
        self.skip_hashes = skip_hashes
        self._size = max(1, workers)
        self._buffered = buffered
        self._workers: list[_Worker] = []
        self._kept = False  # inside `with pool:` the workers outlive each run

    def __enter__(self) -> DecodePool:
        """Keep the workers between runs (a Ray actor decodes batch after batch) until the block ends."""
        self._workers = self._start(self._size)
        self._kept = True
        return self

    def __exit__(self, *exc_info) -> None:
        self._kept = False
        for worker in self._workers:
            worker.stop(force=worker.task is not None)
        self._workers = []

    def _start(self, count: int) -> list[_Worker]:
        """Start `count` workers at once (imports overlap), then wait until each is ready."""
        workers = [_Worker((self.inputs, self.limits, self.skip_hashes, self.prepare)) for _ in range(count)]
        try:
            for worker in workers:
                worker.wait_ready()
        except BaseException:
            for worker in workers:
                worker.stop(force=True)
            raise
        return workers

    def run(self, tasks: Iterable[Task], report_idle: bool = False) -> Iterator[Prepared | None]:
        """Yield one Prepared per task. Stops the workers when exhausted or abandoned (unless kept).

        `report_idle`: also yield None, once, each time no result is ready and the next one must be
        waited for, so the consumer can use the wait (the indexer encodes a partial batch).

        Each call is a fresh run (new queue and stop flag; new workers unless kept), so a pool can
        be run again.
        """
        self._results: queue.Queue = queue.Queue(maxsize=self._buffered)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        if not self._kept:
            self._workers = self._start(self._size)
        dispatcher = threading.Thread(target=self._dispatch, args=(iter(tasks),), daemon=True)
        dispatcher.start()
        try:
            while True:
                try:
                    item = self._results.get_nowait()
                except queue.Empty:
                    if report_idle:
                        yield None
                    item = self._results.get()
                if item is _DONE:
                    break
                yield item
            if self._error is not None:
                raise self._error
        finally:
            stop_producer(self._results, dispatcher, self._stop)
            if self._kept:  # a worker abandoned mid-file still works on it: replace it
                for index, worker in enumerate(self._workers):
                    if worker.task is not None:
                        self._replace(index)
            else:
                for worker in self._workers:
                    worker.stop(force=worker.task is not None)
                self._workers = []

    def _put(self, item) -> bool:
        return put_unless_stopped(self._results, item, self._stop)

    def _replace(self, index: int) -> None:
        self._workers[index].stop(force=True)
        self._workers[index] = self._start(1)[0]

    def _assign(self, index: int, task: Task, timeout: float) -> None:
        """Send a task; a worker found dead before it got the task is replaced and the send retried."""
        for _attempt in range(2):
            worker = self._workers[index]
            try:
                worker.conn.send(task)
            except OSError:
                self._replace(index)
                continue
            worker.task, worker.deadline = task, time.monotonic() + timeout
            return
        raise WorkerStartError("decode workers die as soon as they are given a file")

    def _dispatch(self, tasks: Iterator[Task]) -> None:
        try:
            self._dispatch_loop(tasks)
        except BaseException as error:  # surfaced in the consumer's thread
            self._error = error
        finally:
            self._put(_DONE)

    def _dispatch_loop(self, tasks: Iterator[Task]) -> None:
        exhausted = False
        timeout = self.limits.decode_timeout_seconds
        while not self._stop.is_set():
            for index in range(len(self._workers)):
                if self._workers[index].task is None and not exhausted:
                    task = next(tasks, None)
                    if task is None:
                        exhausted = True
                        break
                    self._assign(index, task, timeout)
            busy = [w for w in self._workers if w.task is not None]
            if not busy:
                if exhausted:
                    return
                continue
            # Short waits, so an abandoned run (Ctrl-C, an encoder error) is not held up until a
            # hung decoder's deadline.
            wait_for = min(_POLL_SECONDS, max(0.0, min(w.deadline for w in busy) - time.monotonic()))
            ready = set(wait([w.conn for w in busy], timeout=wait_for))
            if self._stop.is_set():
                return
            for index, worker in enumerate(self._workers):
                if worker.task is None:
                    continue
                if worker.conn in ready:
                    try:
                        result = worker.conn.recv()
                    except (EOFError, OSError):  # the worker died mid-file
                        failed = _failure(worker.task, f"decoder crashed ({worker.exit_reason()}); "
                                                       f"the run went on without it")
                    else:
                        worker.task = None
                        if not self._put(result):
                            return
                        continue
                elif time.monotonic() >= worker.deadline and not worker.conn.poll(0):
                    # (`ready` may be stale: replacing an earlier worker in this pass can take
                    # seconds, and a result that arrived meanwhile is read on the next pass.)
                    failed = _failure(worker.task, f"decoding took longer than {timeout:.0f} s; worker stopped")
                else:
                    continue
                worker.task = None
                self._replace(index)
                if not self._put(failed):
                    return
