"""Items as clients see them: display paths instead of server paths, and files served by id only.

A file is served only if its real path (every symbolic link resolved) still lies inside a folder
that was indexed: replacing an indexed photo by a link to /etc/passwd gets a 404, not the file.
"""

from __future__ import annotations

import os
import stat
from pathlib import PurePosixPath

from api.errors import ApiError
from index.records import ItemRecord

MEDIA_TYPES = {
    "jpeg": "image/jpeg", "png": "image/png", "gif": "image/gif", "webp": "image/webp", "bmp": "image/bmp",
    "wav": "audio/wav", "flac": "audio/flac", "ogg": "audio/ogg", "mp3": "audio/mpeg",
}

Roots = list[tuple[str, str]]  # (absolute path as indexed, real path)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def display_path(path: str, roots: Roots | None) -> str:
    """The indexed folder's name and the path below it ("media/images/cat.png"), never the server's
    full path."""
    for absolute, _real in roots or ():
        if _inside(path, absolute):
            relative = os.path.relpath(path, os.path.dirname(absolute.rstrip("/")) or "/")
            return PurePosixPath(relative).as_posix()
    return os.path.basename(path)


def server_folders(shown: list[str], roots: Roots | None) -> list[str]:
    """The server paths of folders given as results show them ("media/images"), for filtering.

    Raises:
        ApiError(400): a folder that is absolute, climbs out with "..", or is in no indexed folder.
    """
    found = []
    for folder in shown:
        parts = PurePosixPath(folder.replace("\\", "/")).parts
        if not parts or folder.startswith("/") or ".." in parts:
            raise ApiError(400, f"under: {folder[:100]!r} must be a folder as results show it, e.g. media/photos")
        matched = [os.path.join(absolute.rstrip("/"), *parts[1:]) for absolute, _real in roots or ()
                   if parts[0] == os.path.basename(absolute.rstrip("/"))]
        if not matched:
            known = ", ".join(sorted({os.path.basename(a.rstrip("/")) for a, _ in roots or ()})) or "none"
            raise ApiError(400, f"under: {folder[:100]!r} is in no indexed folder (they are: {known})")
        found += matched
    return found


def urls(item_id: int) -> dict[str, str]:
    return {"media_url": f"/items/{item_id}/media", "thumbnail_url": f"/items/{item_id}/thumbnail"}


def servable_path(item: ItemRecord, roots: Roots | None) -> str:
    """The real path to read `item` from, after checking it is still a regular file inside a root.

    Raises:
        ApiError(404): the file is gone, not a regular file, or resolves outside every indexed root.
    """
    real = os.path.realpath(item.path)
    if roots is None:  # a collection indexed before roots were recorded: no links at all
        inside = real == os.path.abspath(item.path)
    else:
        inside = any(_inside(real, real_root) for _absolute, real_root in roots)
    unavailable = ApiError(404, f"the file of item {item.id} is not available")
    if not inside:
        raise unavailable
    try:
        info = os.stat(real)
    except OSError:
        raise unavailable from None
    if not stat.S_ISREG(info.st_mode):
        raise unavailable
    return real


def media_type(item: ItemRecord) -> str:
    return MEDIA_TYPES.get(item.format, "application/octet-stream")
