"""A pool of spawned decode workers that survives the files it decodes.

Each worker takes one task at a time over its own pipe. A dispatcher thread in the main process
feeds idle workers and moves results into a bounded queue, so workers keep decoding while the main
thread encodes (the overlap that makes indexing fast) and stop when the queue is full (bounded
memory). A worker that crashes (a segfault in a decoder) or overruns the per-file deadline is
killed and replaced; its file comes back as a CORRUPT failure and the run goes on.

Workers are started with "spawn", never "fork": forking a process that has loaded torch, FAISS or
OpenMP thread pools can deadlock the child.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import Connection, wait

from retrieval.encoders.config import ModelInputs
from retrieval.indexing.prepare import FAILED, Prepared, Task, prepare_file
from retrieval.media.errors import ErrorClass, MediaError
from retrieval.media.limits import MediaLimits

_DONE = object()
# Decoders run one file per process; BLAS/OpenMP thread pools in them would only fight the encoder.
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
_ENVIRONMENT_LOCK = threading.Lock()


PrepareFunction = Callable[[Task, ModelInputs, MediaLimits, frozenset], Prepared]


def _worker_main(conn: Connection, inputs: ModelInputs, limits: MediaLimits, skip_hashes: frozenset[str],
                 prepare: PrepareFunction) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        try:
            result = prepare(task, inputs, limits, skip_hashes)
        except Exception as error:  # a decoder bug must cost one file, not the worker
            result = Prepared(task.path, FAILED, error=MediaError(
                ErrorClass.CORRUPT, f"decoder failed unexpectedly ({type(error).__name__}: {error})"))
        conn.send(result)


class _Worker:
    def __init__(self, context, inputs: ModelInputs, limits: MediaLimits, skip_hashes: frozenset[str],
                 prepare: PrepareFunction) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(
            target=_worker_main, args=(child, inputs, limits, skip_hashes, prepare), daemon=True,
            name="xmodal-decode",
        )
        self.process.start()
        child.close()
        self.task: Task | None = None
        self.deadline = 0.0

    def stop(self, force: bool = False) -> None:
        if force:
            self.process.kill()
        else:
            try:
                self.conn.send(None)
            except OSError:
                self.process.kill()
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


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
        """`prepare` must be a module-level function (it is pickled into spawned workers)."""
        self.inputs = inputs
        self.prepare = prepare
        self.limits = limits
        self.skip_hashes = skip_hashes
        self._context = multiprocessing.get_context("spawn")
        self._size = max(1, workers)
        self._results: queue.Queue = queue.Queue(maxsize=buffered)
        self._workers: list[_Worker] = []
        self._stop = threading.Event()
        self._error: BaseException | None = None

    def _spawn(self) -> _Worker:
        # A spawned child inherits os.environ at start, and the thread variables must be set before
        # it imports numpy; they are set only around the start and restored under a lock.
        with _ENVIRONMENT_LOCK:
            saved = {name: os.environ.get(name) for name in _THREAD_VARIABLES}
            os.environ.update({name: "1" for name in _THREAD_VARIABLES})
            try:
                return _Worker(self._context, self.inputs, self.limits, self.skip_hashes, self.prepare)
            finally:
                for name, value in saved.items():
                    if value is None:
                        os.environ.pop(name, None)
                    else:
                        os.environ[name] = value

    def run(self, tasks: Iterable[Task]) -> Iterator[Prepared]:
        """Yield one Prepared per task. Stops the workers when exhausted or abandoned."""
        self._workers = [self._spawn() for _ in range(self._size)]
        dispatcher = threading.Thread(target=self._dispatch, args=(iter(tasks),), daemon=True)
        dispatcher.start()
        try:
            while True:
                item = self._results.get()
                if item is _DONE:
                    break
                yield item
            if self._error is not None:
                raise self._error
        finally:
            self._stop.set()
            while dispatcher.is_alive():  # unblock a dispatcher waiting on a full queue
                try:
                    self._results.get_nowait()
                except queue.Empty:
                    pass
                dispatcher.join(timeout=0.05)
            for worker in self._workers:
                worker.stop(force=worker.task is not None)
            self._workers = []

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._results.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _replace(self, index: int) -> None:
        self._workers[index].stop(force=True)
        self._workers[index] = self._spawn()

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
        raise RuntimeError("decode workers die on start; see the messages above")

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
            wait_for = max(0.0, min(w.deadline for w in busy) - time.monotonic())
            ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout=wait_for))
            for index, worker in enumerate(self._workers):
                if worker.task is None:
                    continue
                if worker.conn in ready:
                    try:
                        result = worker.conn.recv()
                    except (EOFError, OSError):
                        ready.add(worker.process.sentinel)
                    else:
                        worker.task = None
                        if not self._put(result):
                            return
                        continue
                if worker.process.sentinel in ready:
                    worker.process.join(timeout=1)
                    code = worker.process.exitcode
                    reason = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                    failed = _failure(worker.task, f"decoder crashed ({reason}); the run went on without it")
                elif time.monotonic() >= worker.deadline:
                    failed = _failure(worker.task, f"decoding took longer than {timeout:.0f} s; worker stopped")
                else:
                    continue
                worker.task = None
                self._replace(index)
                if not self._put(failed):
                    return
