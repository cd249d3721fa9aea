"""Search filters from what a user types: folders, file types and a modified-date range.

`xmodal search ... --under ~/Photos/2024 --type jpeg --since 2024-01-01` and the API's `under`,
`types`, `since` and `until` fields both come through `build_filter`, which checks them and returns
the index layer's `SearchFilter` (applied inside the search, not to its results).
"""

from __future__ import annotations

import datetime as dt
import os

from index.filters import SearchFilter
from retrieval.errors import QueryError
from retrieval.media.sniff import AUDIO_FORMATS, IMAGE_FORMATS

FILE_TYPES = IMAGE_FORMATS + AUDIO_FORMATS
_ALIASES = {"jpg": "jpeg", "jpe": "jpeg", "jfif": "jpeg", "wave": "wav", "oga": "ogg", "dib": "bmp"}
MAX_FOLDERS = 32


def parse_time(text: str, end: bool = False) -> int:
    """An ISO date or date-time as ns since the epoch. A bare date is local midnight; as the end of a
    range (`end`), the midnight after it, so `--until 2024-12-31` includes that whole day. A time
    without an offset is local time, as file managers show modification times.

    Dates beyond what a file time can be (int64 nanoseconds: 1677 to 2262) clamp to that range, so
    `--until 9999-12-31` means "no end" and `--since 0001-01-01` "no start".

    Raises:
        QueryError: not an ISO date (YYYY-MM-DD) or date-time.
    """
    text = text.strip()
    try:
        if len(text) == 10:
            day = dt.date.fromisoformat(text)
            moment = dt.datetime.combine(day, dt.time())
            if end:
                if day == dt.date.max:
                    return _NS_MAX  # the midnight after 9999-12-31 is no date at all
                moment += dt.timedelta(days=1)
        else:
            moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise QueryError(f"{text!r} is not a date: use YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS][+HH:MM]") from None
    return _epoch_ns(moment)


_NS_MIN, _NS_MAX = -(2**63), 2**63 - 1  # the store keeps modification times as int64 nanoseconds
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def _epoch_ns(moment: dt.datetime) -> int:
    """Exact integer nanoseconds (a float timestamp truncated towards zero put times before 1970
    a second late), clamped to what a file time can be."""
    try:
        if moment.tzinfo is None:
            moment = moment.astimezone()  # local time
        micros = (moment - _EPOCH) // dt.timedelta(microseconds=1)
    except (OverflowError, ValueError):  # hours from year 1 or 9999 in local time: far outside file times
        return _NS_MIN if moment.year < 1970 else _NS_MAX
    return min(max(micros * 1000, _NS_MIN), _NS_MAX)


def normalise_types(types: list[str]) -> tuple[str, ...]:
    """File types as the index records them ("jpg" -> "jpeg").

    Raises:
        QueryError: a type xmodal does not index.
    """
    found = []
    for name in types:
        value = _ALIASES.get(name.strip().lower().lstrip("."), name.strip().lower().lstrip("."))
        if value not in FILE_TYPES:
            raise QueryError(f"unknown file type {name!r}: use one of {', '.join(FILE_TYPES)}")
        found.append(value)
    return tuple(sorted(set(found)))


def build_filter(under: list[str] | None = None, types: list[str] | None = None, since: str | None = None,
                 until: str | None = None) -> SearchFilter | None:
    """A `SearchFilter`, or None when nothing filters. `under` must already be absolute paths.

    Raises:
        QueryError: a bad date or type, too many folders, or a range that ends before it starts.
    """
    under = [os.path.normpath(path) for path in under or []]
    if len(under) > MAX_FOLDERS:
        raise QueryError(f"at most {MAX_FOLDERS} folders to search under")
    if any(not os.path.isabs(path) for path in under):
        raise QueryError("folders to search under must be absolute paths")
    since_ns = parse_time(since) if since else None
    until_ns = parse_time(until, end=True) if until else None
    if since_ns is not None and until_ns is not None and until_ns <= since_ns:
        raise QueryError(f"the date range is empty: {until} is not after {since}")
    where = SearchFilter(tuple(under), normalise_types(types or []), since_ns, until_ns)
    return None if where.empty else where
