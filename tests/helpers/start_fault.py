"""Importing this module inside a decode worker kills the worker (a broken installation as the
worker sees it); the test process imports it normally."""

import os
import sys

_main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)
if _main_spec is not None and _main_spec.name == "retrieval.indexing.worker_main":
    os._exit(3)


def prepare(task, inputs, limits, skip_hashes):
    raise AssertionError("never reached: the worker dies while loading this module")
