"""Find the files under the roots: regular files only, no links leading outside the roots, no
FIFOs or devices (opening a FIFO would block forever), each inode once, hidden entries skipped."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from retrieval.errors import QueryError
from retrieval.media.errors import ErrorClass, MediaError, error_from_os

_SPECIAL = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


@dataclass(frozen=True)
class FoundFile:
    path: str
    size: int
    mtime_ns: int


@dataclass
class WalkResult:
    files: list[FoundFile] = field(default_factory=list)
    issues: dict[str, MediaError] = field(default_factory=dict)  # path -> why it was not listed
    unreadable_dirs: list[str] = field(default_factory=list)  # their items must not count as deleted


def resolve_roots(paths: list[Path]) -> list[str]:
    """Absolute roots, each existing; a missing root is fatal so an unmounted drive never reads as
    "every file was deleted".

    Raises:
        QueryError: a root does not exist.
    """
    roots = []
    for path in paths:
        absolute = os.path.abspath(os.path.expanduser(path))
        if not os.path.exists(absolute):
            raise QueryError(f"{path} does not exist (nothing was changed)")
        roots.append(absolute)
    return roots


class _Walker:
    def __init__(self, roots: list[str], exclude: list[str]) -> None:
        self.real_roots = [os.path.realpath(root) for root in roots]
        self.exclude = [os.path.realpath(path) for path in exclude]
        self.result = WalkResult()
        self.seen: set[tuple[int, int]] = set()

    def _inside_roots(self, real: str) -> bool:
        return any(real == root or real.startswith(root.rstrip("/") + "/") for root in self.real_roots)

    def _excluded(self, real: str) -> bool:
        return any(real == path or real.startswith(path.rstrip("/") + "/") for path in self.exclude)

    def visit(self, path: str, is_link: bool) -> None:
        try:
            info = os.stat(path)  # follows links: ELOOP and dangling links surface here
        except OSError as error:
            self.result.issues[path] = error_from_os(error)
            return
        if is_link and not self._inside_roots(os.path.realpath(path)):
            self.result.issues[path] = MediaError(ErrorClass.UNSUPPORTED,
                                                  "symbolic link leads outside the indexed folders")
            return
        key = (info.st_dev, info.st_ino)
        if key in self.seen:
            return  # the same file or folder reached twice (hard link, link to a sibling)
        self.seen.add(key)
        if stat.S_ISDIR(info.st_mode):
            if not self._excluded(os.path.realpath(path)):
                self.walk_dir(path)
        elif stat.S_ISREG(info.st_mode):
            self.result.files.append(FoundFile(path, info.st_size, info.st_mtime_ns))
        else:
            kind = _SPECIAL.get(stat.S_IFMT(info.st_mode), "not a regular file")
            self.result.issues[path] = MediaError(ErrorClass.UNSUPPORTED, f"not a regular file ({kind})")

    def walk_dir(self, directory: str) -> None:
        try:
            with os.scandir(directory) as entries:
                listed = sorted((entry.name, entry.path, entry.is_symlink()) for entry in entries)
        except OSError as error:
            self.result.issues[directory] = error_from_os(error)
            self.result.unreadable_dirs.append(directory)
            return
        for name, path, is_link in listed:
            if not name.startswith("."):
                self.visit(path, is_link)


def walk_roots(roots: list[str], exclude: list[str] = ()) -> WalkResult:
    """Every regular file under `roots` (files given as roots are taken as they are).

    Args:
        exclude: folders never entered (the database directory, when it lies inside a root).
    """
    walker = _Walker(roots, list(exclude))
    for root in roots:
        walker.visit(root, os.path.islink(root))
    return walker.result
