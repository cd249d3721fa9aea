"""Fault injection for the decode pool: a prepare function that misbehaves on purpose.

`DecodePool(..., prepare=faulty_prepare)` pickles this module-level function into its spawned
workers. The file's base name picks the behaviour, so one task list can mix good and bad files:

    "crash" in the name   the worker kills itself with SIGSEGV (a decoder segfault)
    "hang"  in the name   the worker sleeps forever (a decoder stuck in a loop)
    "boom"  in the name   prepare raises an unexpected exception (a decoder bug)
    "probe" in the name   no decoding: the result's error message is a JSON description of the
                          worker process (pid, start method evidence, thread variables)
    anything else         the real `prepare_file`

Paths listed (separated by os.pathsep) in the variable named by DENIED_VARIABLE get a real
PermissionError from `os.open` inside the worker, so the real `prepare_file` meets an unreadable
file even when the tests run as root (for whom chmod 000 changes nothing).

When the environment variable named by FAULT_LOG_VARIABLE is set (before the pool starts, since
workers copy the environment when they start), every call appends "monotonic_time pid name" to
that file first, which lets a test see when each file was taken up and by which process.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import time

from retrieval.indexing.prepare import FAILED, Prepared, Task, prepare_file
from retrieval.media.errors import ErrorClass, MediaError

FAULT_LOG_VARIABLE = "XMODAL_TEST_FAULT_LOG"
DENIED_VARIABLE = "XMODAL_TEST_DENIED_PATHS"
# A test sets this in its own process before starting a pool. A forked worker would inherit the
# value; a fresh interpreter imports this module anew and sees None.
PARENT_MARK: str | None = None


def _log(name: str) -> None:
    path = os.environ.get(FAULT_LOG_VARIABLE)
    if path:
        # One short O_APPEND write per line: lines from several workers never interleave.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{time.monotonic():.6f} {os.getpid()} {name}\n".encode())
        finally:
            os.close(fd)


def read_fault_log(path) -> list[tuple[float, int, str]]:
    """The (time, pid, file name) lines written so far, in file order."""
    try:
        with open(path) as handle:
            text = handle.read()
    except FileNotFoundError:
        return []
    entries = []
    for line in text.split("\n")[:-1]:  # the last piece is empty, or a line still being written
        stamp, pid, name = line.split(" ", 2)
        entries.append((float(stamp), int(pid), name))
    return entries


def describe_worker() -> dict:
    with open(f"/proc/{os.getpid()}/cmdline", "rb") as handle:
        command = handle.read().replace(b"\0", b" ").decode(errors="replace")
    return {
        "pid": os.getpid(),
        "parent_mark": PARENT_MARK,
        "command": command,
        "thread_variables": {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
    }


def _prepare_denied(task: Task, inputs, limits, skip_hashes: frozenset) -> Prepared:
    real_open = os.open

    def denied_open(path, flags, *args, **kwargs):
        if os.fspath(path) == task.path:
            raise PermissionError(errno.EACCES, "Permission denied", task.path)
        return real_open(path, flags, *args, **kwargs)

    os.open = denied_open  # this worker process only, for this one call
    try:
        return prepare_file(task, inputs, limits, skip_hashes)
    finally:
        os.open = real_open


def faulty_prepare(task: Task, inputs, limits, skip_hashes: frozenset) -> Prepared:
    name = os.path.basename(task.path)
    _log(name)
    if "crash" in name:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file in the working directory
        os.kill(os.getpid(), signal.SIGSEGV)
        time.sleep(60)  # not reached: the default action of SIGSEGV ends the process at once
    if "hang" in name:
        while True:
            time.sleep(3600)
    if "slow" in name:  # a big file: its result comes late, after the other workers' ones
        time.sleep(1.5)  # long beside a scheduling stall of the consumer, short of the 4 s deadline
    if "boom" in name:
        raise RuntimeError(f"injected fault in {name}")
    if "probe" in name:
        return Prepared(task.path, FAILED, error=MediaError(ErrorClass.CORRUPT, json.dumps(describe_worker())))
    if task.path in os.environ.get(DENIED_VARIABLE, "").split(os.pathsep):
        return _prepare_denied(task, inputs, limits, skip_hashes)
    return prepare_file(task, inputs, limits, skip_hashes)


WORKER_COMMAND = b"retrieval.indexing.worker_main"


def living_processes():
    """(pid, parent pid, process group, command line) of every living (not zombie) process, from /proc."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()  # after "(comm)": state, ppid, pgrp, ...
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                command = handle.read()
        except OSError:
            continue  # gone meanwhile
        if fields[0] != "Z":
            yield int(entry), int(fields[1]), int(fields[2]), command


def live_decode_workers(parent_pid: int | None = None) -> list[int]:
    """Pids of living decode worker processes whose parent is `parent_pid` (default: us)."""
    parent_pid = os.getpid() if parent_pid is None else parent_pid
    return [pid for pid, ppid, _group, command in living_processes()
            if ppid == parent_pid and WORKER_COMMAND in command]
