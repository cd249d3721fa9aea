"""Run the real `xmodal serve` in a subprocess on a free loopback port: for `xmodal bench load`,
and for tests that need a real HTTP server (a browser, raw sockets, concurrency)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_PORT_ATTEMPTS = 3  # servers started, each on a fresh port, while the chosen port is taken


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serve_collection(db_dir: Path, *extra_args: str, timeout: float = 120.0, env: dict[str, str] | None = None,
                     log_file: Path | None = None) -> Iterator[str]:
    """Start `xmodal serve --db DB_DIR` and yield its base URL once /health answers; stop it after.

    Args:
        log_file: where the server's output goes (for tests that read its log); default a pipe.

    Raises:
        RuntimeError: the server exited or did not answer within `timeout` (its output is included).
    """
    environment = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    level = [] if "--log-level" in extra_args else ["--log-level", "warning"]
    deadline = time.monotonic() + timeout
    for attempt in range(_PORT_ATTEMPTS):
        # The port is free when chosen but bound only once the server has loaded its model:
        # something else may take it meanwhile. Then the server says so, and another port is tried.
        port = free_port()
        command = [sys.executable, "-m", "cli", "serve", "--db", str(db_dir), "--port", str(port), *level,
                   *extra_args]
        output = open(log_file, "w") if log_file is not None else subprocess.PIPE  # noqa: SIM115 - closed below
        process = subprocess.Popen(command, cwd=REPO, env=environment, stdout=output, stderr=subprocess.STDOUT,
                                   text=True)
        try:
            said = _wait_until_healthy(process, f"http://127.0.0.1:{port}", deadline, timeout, log_file)
            if said is None:
                yield f"http://127.0.0.1:{port}"
                return
            if "address already in use" not in said.lower() or attempt == _PORT_ATTEMPTS - 1:
                raise RuntimeError(f"xmodal serve exited with {process.returncode}:\n{said}")
        finally:
            _stop(process)
            if log_file is not None:
                output.close()


def _wait_until_healthy(process: subprocess.Popen, base: str, deadline: float, timeout: float,
                        log_file: Path | None) -> str | None:
    """None once /health answers 200; the server's output if it exited first."""
    while True:
        if process.poll() is not None:
            return process.stdout.read() if log_file is None else Path(log_file).read_text()
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as response:
                if response.status == 200:
                    return None
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"xmodal serve did not answer within {timeout} s")
        time.sleep(0.2)


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
