"""What an indexing run did, for the CLI table, `--json` and the API."""

from __future__ import annotations

from dataclasses import dataclass, field

from retrieval.media.errors import MediaError


@dataclass(frozen=True)
class Failure:
    path: str
    error_class: str
    message: str


@dataclass
class IndexSummary:
    roots: list[str]
    files_seen: int = 0
    new: int = 0
    updated: int = 0
    renamed: int = 0
    removed: int = 0
    unchanged: int = 0
    ignored: int = 0  # files that are not media at all (a README, a .DS_Store)
    encoded: int = 0  # files that went through an encoder (the rest reused stored vectors)
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0
    index_status: str = ""

    def skip(self, path: str, error: MediaError) -> None:
        self.failures.append(Failure(path, error.error_class.value, error.message))

    @property
    def skipped(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for failure in self.failures:
            counts[failure.error_class] = counts.get(failure.error_class, 0) + 1
        return dict(sorted(counts.items()))

    @property
    def processed(self) -> int:
        """Files read this run (new, updated, renamed, failed or ignored); unchanged ones are not read."""
        return self.new + self.updated + self.renamed + len(self.failures) + self.ignored

    @property
    def rate(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            "roots": self.roots,
            "files_seen": self.files_seen,
            "new": self.new,
            "updated": self.updated,
            "renamed": self.renamed,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "ignored": self.ignored,
            "encoded": self.encoded,
            "skipped": self.skipped,
            "failures": [vars(f) for f in self.failures],
            "seconds": round(self.seconds, 3),
            "files_per_second": round(self.rate, 2),
        }
