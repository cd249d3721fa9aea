"""Entry point of a decode worker process: `python -m retrieval.indexing.worker_main FD`.

Started with subprocess rather than multiprocessing's spawn, so it never re-imports the parent's
`__main__` (which fails for `python -`, notebooks and embedded interpreters, and costs start-up
time for the CLI). It talks over one socket wrapped in a multiprocessing Connection: first the
parent's sys.path, then the settings (inputs, limits, hashes, prepare function), then tasks, each
answered by one result. No torch is imported here.
"""

from __future__ import annotations

import os
import signal
import sys
from multiprocessing.connection import Connection


def main(fd: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    conn = Connection(fd)
    sys.path[:] = conn.recv()  # before unpickling anything that names a module
    inputs, limits, skip_hashes, prepare = conn.recv()
    from retrieval.indexing.prepare import FAILED, Prepared
    from retrieval.media.errors import ErrorClass, MediaError

    conn.send("ready")
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:  # a clean stop: skip the interpreter's teardown, which the parent waits for
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        try:
            result = prepare(task, inputs, limits, skip_hashes)
        except Exception as error:  # a decoder bug must cost one file, not the worker
            message = f"decoder failed unexpectedly ({type(error).__name__}: {error})"
            result = Prepared(task.path, FAILED, error=MediaError(ErrorClass.CORRUPT, message))
        conn.send(result)


if __name__ == "__main__":
    main(int(sys.argv[1]))
