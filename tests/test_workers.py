"""The decode pool under real faults: a worker that segfaults, one that hangs and one whose decoder
raises each cost exactly one file (a CORRUPT failure), the pool replaces the worker and goes on,
and no worker process outlives the iteration, however it ends.

Faults are injected through `DecodePool(..., prepare=faulty_prepare)` (tests/helpers/faults.py):
the file name picks the fault, real decoding does the rest. Timings on the shared two-core machine
are noisy, so durations are only bounded loosely (a lower bound that physics guarantees, or an upper
bound far from the value a bug would produce).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from index.collection import Collection
from retrieval.encoders.config import AudioFrontEnd, ModelInputs
from retrieval.indexing import pipeline, workers
from retrieval.indexing.pipeline import IndexOptions, index_paths
from retrieval.indexing.prepare import DECODED, FAILED, Task
from retrieval.indexing.workers import DecodePool
from retrieval.media.errors import ErrorClass
from retrieval.media.limits import MediaLimits
from tests.helpers import faults
from tests.helpers.faults import FAULT_LOG_VARIABLE, faulty_prepare, live_decode_workers, read_fault_log

INPUTS = ModelInputs(32, AudioFrontEnd())
# Small, yet roomy for decoding a tiny PNG on a busy two-core machine, even in a worker that is
# still importing when its deadline starts.
TIMEOUT = 4.0
SIGSEGV = int(signal.SIGSEGV)


def write_images(folder: Path, names: list[str], seed: int = 0) -> list[str]:
    """Distinct small valid PNGs, so every fault file would decode if it were not for its fault."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for name in names:
        path = folder / f"{name}.png"
        Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def make_pool(worker_count: int, timeout: float = TIMEOUT, buffered: int = 128) -> DecodePool:
    return DecodePool(worker_count, INPUTS, MediaLimits(decode_timeout_seconds=timeout), buffered=buffered,
                      prepare=faulty_prepare)


@pytest.fixture
def fault_log(tmp_path, monkeypatch) -> Path:
    """A log of every prepare call (time, worker pid, file name), shared by all workers of a test."""
    path = tmp_path / "faults.log"
    monkeypatch.setenv(FAULT_LOG_VARIABLE, str(path))
    return path


@pytest.fixture(autouse=True)
def _no_leftover_workers():
    yield
    # A failing test must not leave workers behind for the next one (nor hide the leak it shows).
    deadline = time.monotonic() + 10
    while live_decode_workers() and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in live_decode_workers():
        os.kill(pid, signal.SIGKILL)
    multiprocessing.active_children()  # reaps what was killed, if multiprocessing started it


def wait_for_log(log: Path, name: str, seconds: float = 15.0) -> tuple[float, int, str]:
    """The log entry of the first prepare call for `name`, waiting for it to appear."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for entry in read_fault_log(log):
            if entry[2] == name:
                return entry
        time.sleep(0.02)
    raise AssertionError(f"no worker took up {name} within {seconds} s; log: {read_fault_log(log)}")


def process_is_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def assert_no_workers_left() -> None:
    assert multiprocessing.active_children() == []
    assert live_decode_workers() == []


@pytest.mark.parametrize("worker_count", [1, 3])
def test_each_fault_costs_one_file_and_the_pool_goes_on(tmp_path, fault_log, worker_count):
    names = ["good-00", "good-01", "crash", "good-02", "hang", "good-03", "boom",
             "good-04", "good-05", "good-06", "good-07", "good-08"]
    paths = dict(zip(names, write_images(tmp_path / "media", names), strict=True))
    started = time.monotonic()
    arrivals: dict[str, float] = {}
    results = {}
    for prepared in make_pool(worker_count).run([Task(paths[name]) for name in names]):
        name = Path(prepared.path).stem
        assert name not in results, f"{name} came back twice"
        results[name] = prepared
        arrivals[name] = time.monotonic()

    assert sorted(results) == sorted(names), "every task yields exactly one result"
    for name in names:
        if name.startswith("good"):
            assert results[name].status == DECODED, (name, results[name].error)
            assert results[name].pixels.shape == (32, 32, 3)
            assert results[name].pixels.dtype == np.uint8

    crashed = results["crash"]
    assert crashed.status == FAILED and crashed.error.error_class == ErrorClass.CORRUPT
    assert "crashed" in crashed.error.message and f"signal {SIGSEGV}" in crashed.error.message

    hung = results["hang"]
    assert hung.status == FAILED and hung.error.error_class == ErrorClass.CORRUPT
    assert f"longer than {TIMEOUT:.0f} s" in hung.error.message
    assert arrivals["hang"] - started >= TIMEOUT  # the deadline ran out, it was not cut short

    boom = results["boom"]
    assert boom.status == FAILED and boom.error.error_class == ErrorClass.CORRUPT
    assert "RuntimeError" in boom.error.message and "injected fault in boom.png" in boom.error.message

    # The crashed and the hung worker were replaced: they are dead, and the files after them were
    # decoded by other processes. The one that raised kept its worker.
    log = read_fault_log(fault_log)
    pid_of = {Path(name).stem: pid for _time, pid, name in log}
    assert sorted(pid_of) == sorted(names), "each file was taken up exactly once (no retries)"
    assert len(log) == len(names)
    for fault in ("crash", "hang"):
        assert process_is_gone(pid_of[fault]), f"the worker that got {fault} is still alive"
        assert pid_of["good-08"] != pid_of[fault]
    if worker_count == 1:
        assert pid_of["good-02"] != pid_of["crash"] and pid_of["good-03"] != pid_of["hang"]
        assert pid_of["good-04"] == pid_of["boom"], "an exception in the decoder must not cost the worker"
    assert_no_workers_left()


def test_a_crash_storm_replaces_every_worker(tmp_path, fault_log):
    names = [f"crash-{n}" for n in range(6)] + ["good-0", "good-1", "good-2"]
    paths = write_images(tmp_path / "media", names)
    results = {Path(p.path).stem: p for p in make_pool(2).run([Task(path) for path in paths])}
    assert sorted(results) == sorted(names)
    for name, prepared in results.items():
        if name.startswith("crash"):
            assert prepared.status == FAILED and "crashed" in prepared.error.message
        else:
            assert prepared.status == DECODED
    assert len({pid for _time, pid, _name in read_fault_log(fault_log)}) >= 6  # one process per crash
    assert_no_workers_left()


def test_a_result_that_came_while_another_worker_was_replaced_is_not_called_late(tmp_path, monkeypatch):
    """Replacing a crashed worker starts an interpreter, seconds on a loaded machine. A result that
    arrived meanwhile, inside its deadline, is a result, though the deadline has passed by the
    time the dispatcher looks at that worker."""
    timeout = 4.0
    names = ["crash-0", "slow-1"]  # worker 0 crashes at once; worker 1 answers after 1.5 s
    paths = write_images(tmp_path / "media", names)
    pool = make_pool(2, timeout=timeout)
    replace = pool._replace

    def slow_replace(index: int) -> None:
        replace(index)
        time.sleep(timeout + 1)  # past worker 1's deadline, with its answer waiting

    monkeypatch.setattr(pool, "_replace", slow_replace)
    results = {Path(p.path).stem: p for p in pool.run([Task(path) for path in paths])}
    assert results["crash-0"].status == FAILED and "crashed" in results["crash-0"].error.message
    assert results["slow-1"].status == DECODED, results["slow-1"].error
    assert_no_workers_left()


def test_workers_are_fresh_interpreters_not_forks(tmp_path, monkeypatch):
    # A forked child would inherit this module attribute (and torch's thread pools with it).
    monkeypatch.setattr(faults, "PARENT_MARK", "set-in-the-parent")
    thread_variables = {name: os.environ.get(name) for name in workers._THREAD_VARIABLES}
    (probe,) = write_images(tmp_path, ["probe"])
    (result,) = list(make_pool(1).run([Task(probe)]))
    worker = json.loads(result.error.message)
    assert worker["pid"] != os.getpid()
    assert worker["parent_mark"] is None, "the worker saw the parent's memory: it was forked"
    with open(f"/proc/{os.getpid()}/cmdline", "rb") as handle:
        own_command = handle.read().replace(b"\0", b" ").decode(errors="replace")
    assert worker["command"] != own_command, "the worker runs the parent's command line: it was forked"
    assert worker["thread_variables"] == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    # ...set for the child only: the parent's environment is as it was.
    assert {name: os.environ.get(name) for name in workers._THREAD_VARIABLES} == thread_variables
    assert_no_workers_left()


def test_a_slow_consumer_gets_every_result_with_bounded_read_ahead(tmp_path, fault_log):
    worker_count, buffered = 2, 2
    names = [f"good-{n:02d}" for n in range(24)]
    paths = write_images(tmp_path / "media", names)
    consumed, leads = [], []
    for prepared in make_pool(worker_count, buffered=buffered).run([Task(path) for path in paths]):
        consumed.append(prepared)
        taken_up = len(read_fault_log(fault_log))
        leads.append(taken_up - len(consumed))
        # Queue (buffered) + one result in the dispatcher's hand + one file in each worker.
        assert taken_up <= len(consumed) + buffered + 1 + worker_count, "workers ran ahead without bound"
        time.sleep(0.1)  # a slow encoder
    assert sorted(Path(p.path).stem for p in consumed) == names
    assert all(p.status == DECODED for p in consumed)
    assert max(leads) >= 2, f"workers never decoded ahead of the slow consumer: leads {leads}"
    assert_no_workers_left()


def test_a_consumer_that_asks_hears_each_time_it_would_wait(tmp_path, fault_log):
    """The indexer encodes a partial batch instead of waiting: the pool says when nothing is ready
    (None), once per wait, and only to a consumer that asked."""
    names = ["good-0", "slow-1", "good-2", "slow-3"]
    tasks = [Task(path) for path in write_images(tmp_path / "media", names)]
    told = list(make_pool(1).run(tasks, report_idle=True))
    results = [p for p in told if p is not None]
    assert sorted(Path(p.path).stem for p in results) == sorted(names)
    assert all(p.status == DECODED for p in results)
    # One worker, in order: each slow file is waited for, so a None comes right before it.
    for index, prepared in enumerate(told):
        if prepared is not None and "slow" in prepared.path:
            assert told[index - 1] is None, [p and Path(p.path).stem for p in told]
    assert all(a is not None or b is not None for a, b in zip(told, told[1:], strict=False)), "None twice in a row"
    assert None not in list(make_pool(1).run(tasks)), "a consumer that did not ask was told"
    assert_no_workers_left()


@pytest.mark.parametrize("how", ["break", "raise"])
def test_abandoning_the_iteration_stops_every_worker(tmp_path, how):
    names = [f"good-{n:02d}" for n in range(40)]
    paths = write_images(tmp_path / "media", names)
    pool = make_pool(2, buffered=4)
    taken = 0

    def consume() -> None:
        nonlocal taken
        for _prepared in pool.run([Task(path) for path in paths]):
            taken += 1
            if taken == 3:
                if how == "raise":
                    raise KeyError("the consumer failed")
                break

    if how == "raise":
        with pytest.raises(KeyError):
            consume()
    else:
        consume()
    assert taken == 3
    assert_no_workers_left()


def test_abandoning_while_a_decoder_hangs_returns_promptly(tmp_path, fault_log):
    """Ctrl-C (or an encoder error) during a run with a stuck decoder must not wait out its deadline."""
    timeout = 8.0
    paths = write_images(tmp_path / "media", ["good-0", "hang", "good-1"])
    results = make_pool(1, timeout=timeout).run([Task(path) for path in paths])
    first = next(results)
    assert first.status == DECODED
    wait_for_log(fault_log, "hang.png")
    started = time.monotonic()
    results.close()
    elapsed = time.monotonic() - started
    assert_no_workers_left()
    assert elapsed < timeout / 2, (
        f"closing the iteration took {elapsed:.1f} s: it waited for the hung decoder's deadline "
        f"({timeout:.0f} s) instead of stopping it"
    )


def test_a_pool_runs_again_or_refuses(tmp_path):
    """A second `run` on the same pool must yield its results (or refuse at once), never hang."""
    paths = write_images(tmp_path / "media", ["good-0", "good-1"])
    pool = make_pool(1)
    assert [p.status for p in pool.run([Task(paths[0])])] == [DECODED]
    second: list = []
    failure: list[BaseException] = []

    def consume() -> None:
        try:
            second.extend(pool.run([Task(paths[1])]))
        except BaseException as error:  # reported below
            failure.append(error)

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    consumer.join(timeout=60)  # a healthy second run takes about a second; a hang never ends
    hung = consumer.is_alive()
    if hung:  # unblock the stuck consumer so that its workers are stopped, then report
        pool._results.put(workers._DONE)
        consumer.join(timeout=10)
    assert not hung, "the second run() on a pool never returned (its results never came)"
    if failure:
        assert isinstance(failure[0], RuntimeError), failure[0]
    else:
        assert [(Path(p.path).stem, p.status) for p in second] == [("good-1", DECODED)]
    assert_no_workers_left()


def test_a_crashing_decoder_costs_one_file_in_a_real_index_run(tmp_path, monkeypatch, micro_encoder):
    """Through the pipeline: the crash and the exception land in the error ledger as CORRUPT, the
    rest is indexed; a later run with a healthy decoder indexes them and clears their entries."""
    names = ["a", "b", "crash", "c", "boom", "d"]
    folder = tmp_path / "media"
    write_images(folder, names)
    shutil.copy(folder / "a.png", folder / "copy-of-a.png")
    options = IndexOptions(workers=2, limits=MediaLimits(decode_timeout_seconds=TIMEOUT))
    monkeypatch.setattr(pipeline, "DecodePool", partial(DecodePool, prepare=faulty_prepare))
    with Collection.open(tmp_path / "db", micro_encoder.identity, writable=True) as collection:
        summary = index_paths([str(folder)], collection, micro_encoder, options)
        assert summary.new == 5 and sorted(f.path for f in summary.failures) == [
            str(folder / "boom.png"), str(folder / "crash.png")]
        errors = {Path(e.path).stem: e for e in collection.store.list_errors()}
        assert sorted(errors) == ["boom", "crash"]
        assert errors["crash"].error_class == "CORRUPT" and "crashed" in errors["crash"].message
        assert errors["boom"].error_class == "CORRUPT" and "RuntimeError" in errors["boom"].message
        assert sorted(Path(p).stem for p in collection.store.items_under([str(folder)])) == [
            "a", "b", "c", "copy-of-a", "d"]
        assert collection.indexes["image"].count == 5
    assert_no_workers_left()

    monkeypatch.setattr(pipeline, "DecodePool", DecodePool)
    with Collection.open(tmp_path / "db", micro_encoder.identity, writable=True) as collection:
        summary = index_paths([str(folder)], collection, micro_encoder, options)
        assert summary.new == 2 and summary.unchanged == 5 and not summary.failures
        assert collection.store.list_errors() == []
        assert len(collection.store.items_under([str(folder)])) == 7
        assert sorted(collection.indexes["image"].ids()) == sorted(collection.store.vector_ids("image"))
    assert_no_workers_left()
