"""Fuzzing the loaders and the query parsers with Hypothesis: whatever the bytes or the text, only
the documented error classes come out (MediaError with an ErrorClass, QueryError, ...), each input
is answered within a wall-clock bound, and a header that declares a giant costs memory in
proportion to the caps, not to the declaration.

The media inputs are mutations of real files of every accepted format and of the hostile corpus:
truncations, bit flips (many in the header), byte overwrites, insertions, deletions, splices of two
files, and header size fields set to huge values. CI runs 500 to 2000 inputs per target (about 30 s); the long
run (marked slow) runs XMODAL_FUZZ_EXAMPLES per target and prints the figures:

    XMODAL_FUZZ_EXAMPLES=20000 pytest tests/test_fuzz.py -m slow -s -q
"""

from __future__ import annotations

import datetime as dt
import faulthandler
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retrieval.encoders.config import AudioFrontEnd, ModelInputs
from retrieval.errors import QueryError
from retrieval.filters import FILE_TYPES, build_filter, normalise_types, parse_time
from retrieval.indexing.prepare import Decoded, decode_media
from retrieval.media.audio import load_audio
from retrieval.media.errors import ErrorClass, MediaError
from retrieval.media.images import load_image
from retrieval.media.limits import MediaLimits
from retrieval.media.sniff import AUDIO_FORMATS, HEAD_BYTES, IMAGE_FORMATS, check_declared_type, sniff
from tests.helpers.media_builders import declare_huge, seed_corpus

REPO = Path(__file__).resolve().parent.parent
# Small caps keep each input cheap and make "bounded by the caps" a tight, testable number.
LIMITS = MediaLimits(max_audio_seconds=5, max_image_pixels=4_000_000)
INPUTS = ModelInputs(image_size=32, front_end=AudioFrontEnd())
# One input must be answered within this (the decode worker's own deadline is 60 s); a generous
# bound, since two shared cores can stall any process for a second.
SECONDS_PER_INPUT = 10.0
# A decoder stuck in C code ignores Python exceptions: past this, faulthandler prints every
# thread's stack and ends the process, so a hang fails the run instead of stalling it.
HANG_SECONDS = 120
LONG_EXAMPLES = int(os.environ.get("XMODAL_FUZZ_EXAMPLES", "20000"))
HUGE_VALUES = (0, 1, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF)


def _hostile_bytes() -> dict[str, bytes]:
    """The hostile corpus's regular files (links are the walk's business, not a decoder's)."""
    import tempfile

    from retrieval.data.samples import write_hostile_files

    with tempfile.TemporaryDirectory() as folder:
        expected = write_hostile_files(Path(folder), np.random.default_rng(3), max_audio_seconds=5)
        return {f"hostile-{Path(path).name}": Path(path).read_bytes()
                for path in expected if not os.path.islink(path)}


CORPUS = {**seed_corpus(), **_hostile_bytes()}
NAMES = sorted(CORPUS)

# --- mutations -------------------------------------------------------------------------------------

_POSITION = st.integers(0, 1 << 20)
MUTATION = st.one_of(
    st.tuples(st.just("truncate"), _POSITION),
    st.tuples(st.just("flip"), _POSITION, st.integers(0, 7)),
    st.tuples(st.just("flip_head"), st.integers(0, 95), st.integers(0, 7)),
    st.tuples(st.just("set"), _POSITION, st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF])),
    st.tuples(st.just("insert"), _POSITION, st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), _POSITION, st.integers(1, 64)),
    st.tuples(st.just("huge"), st.sampled_from(HUGE_VALUES)),
    st.tuples(st.just("splice"), _POSITION, st.sampled_from(NAMES)),
)


def mutate(data: bytes, name: str, mutations: list[tuple]) -> bytes:
    """`data` after each mutation in turn; positions wrap around the current length."""
    for kind, *args in mutations:
        at = args[0] % (len(data) + 1) if kind not in ("huge",) else 0
        if kind == "truncate":
            data = data[:at]
        elif kind in ("flip", "flip_head") and data:
            at = min(args[0], len(data) - 1) if kind == "flip_head" else at % len(data)
            data = data[:at] + bytes([data[at] ^ (1 << args[1])]) + data[at + 1:]
        elif kind == "set" and data:
            at %= len(data)
            data = data[:at] + bytes([args[1]]) + data[at + 1:]
        elif kind == "insert":
            data = data[:at] + args[1] + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + args[1]:]
        elif kind == "huge":
            data = declare_huge(data, args[0])
        elif kind == "splice":
            other = CORPUS[args[1]]
            data = data[:at] + other[at % (len(other) + 1):]
    return data


MUTATED = st.tuples(st.sampled_from(NAMES), st.lists(MUTATION, min_size=1, max_size=4))
# Some inputs are not derived from media at all, with a magic number in front to reach a decoder.
_MAGICS = [b"", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"RIFF\x00\x00\x00\x00WEBP", b"BM",
           b"RIFF\x00\x00\x00\x00WAVE", b"fLaC", b"OggS", b"ID3", b"\xff\xfb\x90\x00"]
RAW = st.tuples(st.sampled_from(_MAGICS), st.binary(max_size=2048)).map(lambda parts: parts[0] + parts[1])


# --- the checks, shared by the CI tests and the long run -------------------------------------------


class Bounded:
    """One input's wall-clock bound, with a watchdog for hangs that Python cannot interrupt."""

    def __enter__(self) -> Bounded:
        faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        faulthandler.cancel_dump_traceback_later()
        elapsed = time.perf_counter() - self.started
        assert elapsed < SECONDS_PER_INPUT, f"one input took {elapsed:.1f} s"


def expect_media_error(error: MediaError) -> None:
    assert type(error) is MediaError
    assert isinstance(error.error_class, ErrorClass), error
    assert error.message and isinstance(error.message, str)


def check_decode(data: bytes, name: str) -> None:
    """decode_media, as a worker and an upload run it: media, not media, or a MediaError."""
    with Bounded():
        try:
            decoded = decode_media(data, name, INPUTS, LIMITS)
        except MediaError as error:
            expect_media_error(error)
            return
    if decoded is None:
        return
    assert isinstance(decoded, Decoded)
    if decoded.info.modality == "image":
        assert decoded.pixels.shape == (32, 32, 3) and decoded.pixels.dtype == np.uint8
        assert decoded.info.width * decoded.info.height <= LIMITS.max_image_pixels
    else:
        assert np.isfinite(decoded.log_mel).all()
        assert decoded.info.duration <= LIMITS.max_audio_seconds + 0.01


def check_loaders(data: bytes) -> None:
    """Every loader with every format name, whatever sniffing would have said (defence in depth)."""
    for image_format in IMAGE_FORMATS:
        with Bounded():
            try:
                image, info = load_image(data, image_format, LIMITS, draft_size=32)
            except MediaError as error:
                expect_media_error(error)
            else:
                assert image.mode == "RGB" and info.width * info.height <= LIMITS.max_image_pixels
    for audio_format in AUDIO_FORMATS:
        with Bounded():
            try:
                wave, info = load_audio(data, audio_format, LIMITS, INPUTS.front_end.sample_rate)
            except MediaError as error:
                expect_media_error(error)
            else:
                assert wave.dtype == np.float32 and np.isfinite(wave).all()
                assert info.duration <= LIMITS.max_audio_seconds + 0.01


def check_sniff(data: bytes, media_type: str) -> None:
    with Bounded():
        try:
            found = sniff(data[:HEAD_BYTES])
            if found is not None:
                check_declared_type(media_type, found)
        except MediaError as error:
            expect_media_error(error)
            assert error.error_class is ErrorClass.UNSUPPORTED


def check_filter(under: list[str], types: list[str], since: str | None, until: str | None) -> None:
    """The --under/--type/--since/--until parser: a filter (or None), or a QueryError."""
    with Bounded():
        try:
            where = build_filter(under, types, since, until)
        except QueryError as error:
            assert type(error) is QueryError and str(error)
            return
    if where is not None:
        assert set(where.formats) <= set(FILE_TYPES)
        for bound in (where.since_ns, where.until_ns):
            assert bound is None or -(2**63) <= bound < 2**63  # fits the store's INTEGER column


def check_spec(text: str) -> None:
    """A generator spec from --generator or settings: parsed, or a GeneratorLoadError."""
    from generation.diffusers_adapter import parse_spec
    from generation.errors import GeneratorLoadError

    with Bounded():
        try:
            parse_spec("diffusers:" + text)
        except GeneratorLoadError as error:
            assert str(error)


# --- strategies for text -----------------------------------------------------------------------------

# Dates around every edge (year 1, 9999, the epoch, the int64-nanosecond range 1677..2262).
_EDGE_DATES = st.one_of(
    st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31, 23, 59, 59)),
    st.datetimes(min_value=dt.datetime(1677, 1, 1), max_value=dt.datetime(2263, 1, 1)),
    st.datetimes(min_value=dt.datetime(1969, 12, 30), max_value=dt.datetime(1970, 1, 2)),
)
_OFFSETS = st.sampled_from(["", "Z", "+00:00", "-12:00", "+14:00", "+05:30", "+23:59"])
DATE_TEXT = st.one_of(
    _EDGE_DATES.map(lambda moment: moment.date().isoformat()),
    st.tuples(_EDGE_DATES, _OFFSETS).map(lambda pair: pair[0].isoformat() + pair[1]),
    st.text(max_size=40),
    st.text(alphabet="0123456789-:T+.Z ", max_size=32),
)
TYPE_TEXT = st.one_of(st.sampled_from(list(FILE_TYPES) + ["JPG", ".png", " wave", "tiff", "jpeg\x00"]),
                      st.text(max_size=12))
FOLDER_TEXT = st.one_of(st.text(max_size=30), st.text(max_size=30).map(lambda text: "/" + text))
FILTER_ARGS = st.tuples(st.lists(FOLDER_TEXT, max_size=40), st.lists(TYPE_TEXT, max_size=5),
                        st.none() | DATE_TEXT, st.none() | DATE_TEXT)
MEDIA_TYPES = st.one_of(st.sampled_from(["", "image/png", "image/jpeg; charset=x", "AUDIO/WAV", "audio/mpeg",
                                         "application/octet-stream", "text/plain"]), st.text(max_size=30))
SPEC_TEXT = st.one_of(st.text(max_size=40),
                      st.tuples(st.text(max_size=10), st.text(alphabet="?&=stepguidance0123456789.-einfa", max_size=40))
                      .map(lambda pair: pair[0] + "?" + pair[1]))

TARGETS = {
    "decode_media (mutated corpus)": (MUTATED, lambda value: check_decode(mutate(CORPUS[value[0]], value[0],
                                                                                value[1]), value[0])),
    "decode_media (raw bytes)": (st.tuples(RAW, st.sampled_from(["x.jpg", "x.wav", "x.txt", "x"])),
                                 lambda value: check_decode(*value)),
    "every loader, every format": (MUTATED, lambda value: check_loaders(mutate(CORPUS[value[0]], value[0],
                                                                               value[1]))),
    "sniff + declared type": (st.tuples(st.one_of(RAW, MUTATED.map(lambda v: mutate(CORPUS[v[0]], v[0], v[1]))),
                                        MEDIA_TYPES), lambda value: check_sniff(*value)),
    "filters (--under/--type/--since/--until)": (FILTER_ARGS, lambda value: check_filter(*value)),
    "diffusers generator spec": (SPEC_TEXT, check_spec),
}


def run_target(name: str, examples: int, derandomize: bool = True) -> int:
    """Run one target for `examples` inputs; the number of inputs actually tried."""
    strategy, check = TARGETS[name]
    tried = [0]

    @settings(max_examples=examples, deadline=None, derandomize=derandomize, database=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def fuzz(value) -> None:
        tried[0] += 1
        check(value)

    fuzz()
    return tried[0]


# --- CI: 500 to 2000 inputs per target -------------------------------------------------------------

CI_EXAMPLES = {
    "decode_media (mutated corpus)": 2000, "decode_media (raw bytes)": 1000, "every loader, every format": 500,
    "sniff + declared type": 1000, "filters (--under/--type/--since/--until)": 1000, "diffusers generator spec": 500,
}


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fuzz_gives_only_documented_errors(target):
    assert run_target(target, CI_EXAMPLES[target]) > 0


def test_the_corpus_covers_every_accepted_format():
    found = {sniff(data[:HEAD_BYTES]).format for data in seed_corpus().values()}
    assert found == set(IMAGE_FORMATS + AUDIO_FORMATS)


def test_every_seed_decodes_and_every_huge_declaration_is_refused():
    """The seeds are real media (so mutations start from a decoder's happy path), and each header
    edit is one the loaders see through: refused from the header, not after decoding a giant."""
    for name, data in seed_corpus().items():
        if name != "unknown-length.flac":
            assert decode_media(data, name, INPUTS, LIMITS) is not None, name
        for value in (0x7FFF, 0xFFFFFFFF):
            if name.endswith((".ogg", ".mp3")):
                continue  # no size field in the first bytes: covered by the mutations
            with pytest.raises(MediaError) as caught:
                decode_media(declare_huge(data, value), name, INPUTS, LIMITS)
            assert caught.value.error_class in (ErrorClass.TOO_LARGE, ErrorClass.TOO_LONG, ErrorClass.CORRUPT,
                                                ErrorClass.TRUNCATED), (name, value, caught.value)


# --- parsers: typed errors only, and the right answer where there is one -----------------------------


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(_EDGE_DATES, _OFFSETS)
def test_parse_time_is_exact_or_a_query_error(moment, offset):
    text = moment.isoformat() + offset
    try:
        got = parse_time(text)
    except QueryError:
        pytest.fail(f"{text!r} is a valid ISO date-time")
    aware = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    try:
        aware = aware if aware.tzinfo else aware.astimezone()
        expected = (aware - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(microseconds=1) * 1000
    except (OverflowError, ValueError):
        return  # within hours of year 1 or 9999 in local time: only "no error" is asserted
    assert got == min(max(expected, -(2**63)), 2**63 - 1)


def test_dates_beyond_file_times_clamp_instead_of_crashing():
    """`--until 9999-12-31` means "no end"; it used to raise OverflowError, and `--since 0001-01-01`
    a ValueError, both untyped (a traceback in the CLI, a 500 from the API)."""
    assert parse_time("9999-12-31", end=True) == 2**63 - 1
    assert parse_time("0001-01-01") == -(2**63)
    assert parse_time("0001-01-01T00:00") == -(2**63)
    where = build_filter(since="2024-01-01", until="9999-12-31")
    assert where.until_ns == 2**63 - 1 and where.since_ns > 0


def test_date_times_before_1970_keep_their_fraction_of_a_second():
    # int(timestamp()) truncated towards zero: 1.5 s before the epoch came out as 0.5 s before it.
    assert parse_time("1969-12-31T23:59:58.5+00:00") == -1_500_000_000
    assert parse_time("1970-01-01T00:00:01.25+00:00") == 1_250_000_000


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(st.lists(TYPE_TEXT, max_size=6))
def test_normalise_types_gives_known_types_or_a_query_error(types):
    try:
        found = normalise_types(types)
    except QueryError:
        return
    assert set(found) <= set(FILE_TYPES) and list(found) == sorted(set(found))


# --- bounded memory for declared giants ----------------------------------------------------------------

_MEMORY_PROBE = r"""
import json, resource, sys
from pathlib import Path
from retrieval.media.limits import MediaLimits
from retrieval.encoders.config import AudioFrontEnd, ModelInputs
from retrieval.indexing.prepare import decode_media
from retrieval.media.errors import MediaError
from tests.helpers.media_builders import declare_huge, seed_corpus

limits = MediaLimits(max_audio_seconds=float(sys.argv[1]), max_image_pixels=int(sys.argv[2]))
inputs = ModelInputs(image_size=32, front_end=AudioFrontEnd())
corpus = seed_corpus()
giants = {f"{name}/{value:#x}": (name, declare_huge(data, value))
          for name, data in corpus.items() for value in (0, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF)}
giants["audio-bomb"] = ("bomb.flac", Path(sys.argv[3]).read_bytes())
for name in ("rgb.png", "stereo.flac", "float.wav"):  # lazy imports are not the decoders' cost
    decode_media(corpus[name], name, inputs, limits)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
outcomes = {}
for key, (name, data) in giants.items():
    try:
        decode_media(data, name, inputs, limits)
        outcomes[key] = "decoded"
    except MediaError as error:
        outcomes[key] = error.error_class.value
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"grown_mib": (peak - before) / 1024, "peak_mib": peak / 1024, "outcomes": outcomes}))
"""


def write_audio_bomb(path: Path, seconds: int) -> int:
    """A FLAC of silence, 8 channels at 384 kHz for `seconds`, its length left unknown (as a
    streaming encoder leaves it): a few KB per second that decode to 12 MB per second."""
    import soundfile

    from tests.helpers.media_builders import set_flac_total_samples

    with soundfile.SoundFile(path, "w", 384_000, 8, format="FLAC", subtype="PCM_16") as sound:
        for _ in range(seconds):
            sound.write(np.zeros((384_000, 8), dtype=np.float32))
    path.write_bytes(set_flac_total_samples(path.read_bytes(), 0))
    return path.stat().st_size


def memory_probe(max_audio_seconds: int, max_image_pixels: int, bomb: Path) -> dict:
    """Decode every declared giant in a fresh process: its growth of peak resident memory."""
    result = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(max_audio_seconds), str(max_image_pixels),
                             str(bomb)], cwd=REPO, capture_output=True, text=True, timeout=300, check=True)
    return json.loads(result.stdout)


def test_declared_giants_cost_memory_in_proportion_to_the_caps(tmp_path):
    """Headers declaring 4 billion pixels, 65535 channels or 2^36 samples, and a 100 KB FLAC that
    decodes to 8 channels at 384 kHz for longer than the cap: the peak resident memory of a fresh
    process grows by what the caps allow (4 MP, 20 s at the model's 16 kHz), not by what the
    headers declare. Before decoding was streamed, the FLAC alone took 1.4 GB for 120 s."""
    assert write_audio_bomb(tmp_path / "bomb.flac", seconds=30) < 200_000
    probe = memory_probe(max_audio_seconds=20, max_image_pixels=4_000_000, bomb=tmp_path / "bomb.flac")
    assert probe["outcomes"]["audio-bomb"] == "TOO_LONG"
    assert all(outcome != "decoded" for key, outcome in probe["outcomes"].items()
               if key.endswith(("0x7fff", "0xffffffff")) and not key.startswith(("vorbis", "layer3")))
    # 20 s x 384 kHz x 8 channels as float32 is 234 MiB: the decoder must never hold it all.
    assert probe["grown_mib"] < 64, probe


# --- the long run ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_long_fuzz_run():
    """XMODAL_FUZZ_EXAMPLES inputs per target (default 20000), random seeds; prints the figures."""
    figures = {}
    started = time.perf_counter()
    for target in sorted(TARGETS):
        begun = time.perf_counter()
        tried = run_target(target, LONG_EXAMPLES, derandomize=False)
        figures[target] = {"inputs": tried, "seconds": round(time.perf_counter() - begun, 1)}
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"targets": figures, "failures": 0, "total_seconds": round(time.perf_counter() - started, 1),
                      "peak_rss_mib": round(peak_mib), "examples_per_target": LONG_EXAMPLES}, indent=2))
