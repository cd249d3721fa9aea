"""Connecting to Milvus (a server or an embedded milvus-lite file) and speaking its filter language.

pymilvus is an optional extra (`pip install 'xmodal[milvus]'`), imported only here and only when a
Milvus collection is opened.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from pathlib import Path

from index.backends import MilvusTarget
from index.errors import MilvusError
from index.filters import SearchFilter
from index.lock import is_file_locked

CONNECT_TIMEOUT_S = 5.0  # an unreachable server fails the command in seconds, not after gRPC's retries
TOKEN_ENV = "XMODAL_MILVUS_TOKEN"  # "user:password" or an API key; read at connect time, never stored

# milvus-lite runs in-process, one server per file, and holds the file's lock until released: count
# the collections using each file so the last one to close lets another process open it.
_lite_users: dict[str, int] = {}
_lite_lock = threading.Lock()


def load_pymilvus():
    """The pymilvus module, or a MilvusError naming the extra to install."""
    try:
        import pymilvus
    except ImportError:
        raise MilvusError("the Milvus backend needs pymilvus and milvus-lite: pip install 'xmodal[milvus]'") from None
    return pymilvus


def connect_milvus(target: MilvusTarget):
    """A `MilvusClient` for `target`.

    Raises:
        MilvusError: pymilvus (or milvus-lite) missing, server unreachable, lite file busy.
    """
    pymilvus = load_pymilvus()
    if target.lite:
        Path(target.uri).parent.mkdir(parents=True, exist_ok=True)
    try:
        client = pymilvus.MilvusClient(uri=target.uri, token=os.environ.get(TOKEN_ENV, ""),
                                       timeout=CONNECT_TIMEOUT_S)
    except pymilvus.MilvusException as error:
        raise MilvusError(_connect_failure(target, error)) from None
    if target.lite:
        with _lite_lock:
            _lite_users[target.uri] = _lite_users.get(target.uri, 0) + 1
    return client


def _connect_failure(target: MilvusTarget, error: Exception) -> str:
    if not target.lite:
        return f"cannot reach Milvus at {target.describe()}: {getattr(error, 'message', error)}"
    if _lite_file_busy(Path(target.uri)):
        return (f"the milvus-lite database {target.uri} is open in another process; milvus-lite serves one "
                f"process at a time (stop `xmodal serve` before indexing, or use a Milvus server)")
    return f"cannot open the milvus-lite database {target.uri}: {getattr(error, 'message', error)}"


def _lite_file_busy(path: Path) -> bool:
    """True when another process holds milvus-lite's lock on `path` (pymilvus hides why it failed)."""
    return is_file_locked(path / "LOCK")


def release_milvus(target: MilvusTarget, client) -> None:
    """Close `client`; the last user of a milvus-lite file stops its in-process server."""
    client.close()
    if not target.lite:
        return
    with _lite_lock:
        users = _lite_users.get(target.uri, 1) - 1
        if users > 0:
            _lite_users[target.uri] = users
            return
        _lite_users.pop(target.uri, None)
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_server(target.uri)


@contextmanager
def translated(target: MilvusTarget, action: str):
    """Turn pymilvus errors into MilvusError, which the CLI and API report in one line."""
    pymilvus = load_pymilvus()
    try:
        yield
    except pymilvus.MilvusException as error:
        raise MilvusError(f"Milvus at {target.describe()} failed to {action}: "
                          f"{getattr(error, 'message', error)}") from None


# ------------------------------------------------------------------------------------ filters

# milvus-lite accepts exactly these escapes; other characters (any Unicode, control characters but
# CR and LF) may stand in a Milvus string literal as they are.
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def string_literal(text: str) -> str:
    """`text` as a double-quoted Milvus string literal."""
    return '"' + "".join(_ESCAPES.get(char, char) for char in text) + '"'


def milvus_filter(where: SearchFilter) -> str:
    """The Milvus boolean expression meaning `where.matches(item)` over the fields path, format and
    mtime_ns; "" for an empty filter.

    Folders compare as a range, not with `like`: '%' and '_' in a folder name would be wildcards
    there. Every path that starts with "/a/b/" sorts in ["/a/b/", "/a/b0"), '0' being the character
    after '/'; Milvus and Python both order strings by code point (bytes of UTF-8).
    """
    clauses: list[str] = []
    if where.under:
        folders = []
        for exact, inside in where.prefixes():
            upper = inside[:-1] + chr(ord(inside[-1]) + 1)
            folders.append(f"(path == {string_literal(exact)} or "
                           f"(path >= {string_literal(inside)} and path < {string_literal(upper)}))")
        clauses.append("(" + " or ".join(folders) + ")")
    if where.formats:
        clauses.append(f"format in [{', '.join(string_literal(name) for name in where.formats)}]")
    if where.since_ns is not None:
        clauses.append(f"mtime_ns >= {int(where.since_ns)}")
    if where.until_ns is not None:
        clauses.append(f"mtime_ns < {int(where.until_ns)}")
    return " and ".join(clauses)
