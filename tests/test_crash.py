"""kill -9 of `xmodal index` at random moments, with the folder changing between kills (files deleted,
renamed, added, rewritten in place, copied); one more run must then end consistent: every good file
an item exactly once with its current content and one item vector, renamed files keeping their item
ids (rewritten ones too), the ids in each saved FAISS index equal to the SQLite vector ids of that
modality with the same vectors and no duplicates, the manifest at the store's version, the hostile
files in the error ledger with their classes, and a search with a file finding that file first.

Kill moments are seeded and spread over the length of one measured full run, so they land in
start-up, walking, decoding, encoding, commits and index saves. Killed runs alternate between the
real `python -m cli index` and the same command with tiny batches (tests/helpers/crash_cli.py),
which commits and saves many times per run, so kills also land inside and between commits and saves.
The final run is always the real command. The decode workers of a killed indexer must exit by
themselves (they are orphans, as after a real `kill -9`).

The CI test kills 5 times; the slow variant kills XMODAL_CRASH_ITERATIONS times (default 40) and
checks consistency every 10 kills as well.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from index.collection import Collection
from retrieval.data.samples import generate_sample_folder
from retrieval.engine import SearchEngine
from tests.helpers.crash_acks import AckLedger, check_after_kill, run_stream_and_kill
from tests.helpers.crash_harness import (
    FolderModel,
    check_consistent,
    describe_db,
    modality_of,
    run_index,
    stored_items,
)

SEED = 1729


@pytest.fixture(scope="module")
def crash_sample(tmp_path_factory) -> Path:
    """A few dozen images and sounds plus the hostile corpus (copied before every use)."""
    path = tmp_path_factory.mktemp("crash-sample") / "media"
    generate_sample_folder(path, images=32, sounds=10, hostile=True, seed=SEED)
    return path


def measure_full_run(source: Path, work: Path, micro_model: Path) -> tuple[float, float]:
    """Seconds of one uninterrupted run on a fresh copy and of its start-up (until the store
    exists); the clean run also shows that the checks hold without kills."""
    model = FolderModel.copy_sample(source, work / "measure-media")
    outcome = run_index("cli", model.root, work / "measure-db", micro_model)
    assert outcome.returncode == 0, outcome.stderr
    assert not outcome.stragglers
    check_consistent(work / "measure-db", model)
    return outcome.seconds, outcome.store_seen_after or 0.0


STARTUP_SHARE = 0.2  # of the kill fractions; start-up is a third to a half of a run but one phase


def kill_moment(fraction: float, full: float, startup: float, db: Path, model: FolderModel) -> float:
    """Seconds into the next run at which `fraction` (0..1) of it has passed, counting start-up as
    STARTUP_SHARE and the rest as the work left: a full run's work scaled by the share of files not
    committed yet (a later run has less to do; the floor covers walking and changed files)."""
    committed = len(set(stored_items(db)) & model.good)
    work = (full - startup) * max(0.2, 1 - committed / max(1, len(model.good)))
    if fraction < STARTUP_SHARE:
        return startup * fraction / STARTUP_SHARE
    return startup + work * (fraction - STARTUP_SHARE) / (1 - STARTUP_SHARE)


def assert_search_finds_itself(db: Path, model: FolderModel, encoder, rng: np.random.Generator) -> None:
    """A search with a stored file (a renamed one when there is one) ranks that file first."""
    engine = SearchEngine(encoder, Collection.open(db, encoder.identity, writable=False))
    try:
        assert engine.collection.status.state == "loaded", engine.collection.status
        unique = set(model.unique_content())  # a copy would tie with its original
        for modality in ("image", "audio"):
            files = sorted(p for p in unique if modality_of(p) == modality)
            renamed = sorted(p for p in model.renamed_ids if modality_of(p) == modality and p in unique)
            pool = renamed or files
            path = pool[int(rng.integers(len(pool)))]
            hits = engine.search_file(path, modality, k=3, modality=modality).results
            ranked = [(h.path, h.score) for h in hits]
            # First, or tied with a file that decodes to the same pixels (the sample's 16-bit and
            # grey+alpha PNGs are the same grey picture, so they share one vector).
            own = [score for hit_path, score in ranked if hit_path == path]
            assert own and own[0] >= ranked[0][1] - 1e-5, (path, ranked)
    finally:
        engine.close()


def note(line: str) -> None:
    print(line, flush=True)  # the story of the kills, shown by pytest when a check fails


def finish_and_check(db: Path, model: FolderModel, micro_model: Path, encoder, rng: np.random.Generator) -> None:
    final = run_index("cli", model.root, db, micro_model)
    note(f"run to completion: exit {final.returncode} after {final.seconds:.1f} s; left {describe_db(db)}")
    assert final.returncode == 0, final.stderr
    assert not final.stragglers
    summary = final.summary()
    assert {f["path"]: f["error_class"] for f in summary["failures"]} == model.hostile
    check_consistent(db, model)
    assert_search_finds_itself(db, model, encoder, rng)


def crash_repeatedly(tmp_path: Path, source: Path, micro_model: Path, encoder, fractions: list[float],
                     seed: int, check_every: int | None = None) -> None:
    """Kill one run at each of `fractions` (of the expected run), changing the folder after each
    kill; then, and every `check_every` kills, run to completion and check the database."""
    full, startup = measure_full_run(source, tmp_path, micro_model)
    note(f"one full run: {full:.1f} s, of which start-up {startup:.1f} s")
    rng = np.random.default_rng(seed)
    model = FolderModel.copy_sample(source, tmp_path / "media")
    db = tmp_path / "db"
    for number, fraction in enumerate(fractions):
        entry = "cli" if number % 2 == 0 else "small-batches"
        moment = kill_moment(fraction, full, startup, db, model)
        outcome = run_index(entry, model.root, db, micro_model, kill_after=moment)
        ending = "killed" if outcome.killed else f"finished first, exit {outcome.returncode}"
        note(f"run {number} ({entry}): kill at {moment:.1f} s ({fraction:.2f} of the expected run), {ending}; "
             f"left {describe_db(db)}")
        assert not outcome.stragglers, f"processes of the indexer outlived it: {outcome.stragglers}"
        assert outcome.killed or outcome.returncode == 0, outcome.stderr
        changes = model.mutate(rng, db)
        note(f"  then {len(changes)} changes: " + ", ".join(changes))
        if check_every and (number + 1) % check_every == 0:
            finish_and_check(db, model, micro_model, encoder, rng)
    finish_and_check(db, model, micro_model, encoder, rng)


def test_kill_9_at_random_moments_then_a_rerun_is_consistent(tmp_path, crash_sample, micro_model, micro_encoder):
    kills = 5
    rng = np.random.default_rng(SEED)
    # One kill in each fifth of a run, in a random order.
    fractions = [(number + rng.uniform(0.1, 0.9)) / kills for number in range(kills)]
    rng.shuffle(fractions)
    crash_repeatedly(tmp_path, crash_sample, micro_model, micro_encoder, fractions, seed=SEED)


@pytest.mark.slow
def test_kill_9_many_times_then_a_rerun_is_consistent(tmp_path, micro_model, micro_encoder):
    iterations = int(os.environ.get("XMODAL_CRASH_ITERATIONS", "40"))
    source = tmp_path / "sample"
    generate_sample_folder(source, images=60, sounds=16, hostile=True, seed=SEED + 1)
    rng = np.random.default_rng(SEED + 1)
    fractions = [float(rng.uniform(0.02, 1.1)) for _ in range(iterations)]
    crash_repeatedly(tmp_path, source, micro_model, micro_encoder, fractions, seed=SEED + 1, check_every=10)


# ---------------------------------------------------------------- a stream of additions and deletions


def crash_stream_repeatedly(db: Path, kills: int, seed: int) -> AckLedger:
    """Kill the streaming writer `kills` times; after each kill check the collection against what
    it acknowledged. Returns the ledger with its figures."""
    rng = np.random.default_rng(seed)
    ledger = AckLedger()
    for number in range(kills):
        run = run_stream_and_kill(db, seed * 1_000_000 + number, rng)  # one seed, and item names, per run
        assert run.killed, f"the streaming writer ended by itself (exit {run.returncode}):\n{run.stderr[-3000:]}"
        interrupted = ledger.read(run.output)
        check_after_kill(db, ledger, interrupted)
    note(f"{ledger.kills} kills ({dict(ledger.phases)}); acknowledged {ledger.acked_adds} additions and "
         f"{ledger.acked_deletes} deletions; {len(ledger.live)} live items at the end; "
         f"{ledger.items_checked} item searches checked")
    return ledger


def test_kill_9_during_a_stream_of_additions_and_deletions_keeps_every_acknowledgement(tmp_path):
    ledger = crash_stream_repeatedly(tmp_path / "db", kills=10, seed=SEED)
    assert ledger.acked_adds > 0 and ledger.acked_deletes > 0  # both kinds of promise were tested


@pytest.mark.slow
def test_kill_9_during_a_stream_many_times_keeps_every_acknowledgement(tmp_path):
    kills = int(os.environ.get("XMODAL_STREAM_CRASH_ITERATIONS", "300"))
    started = time.monotonic()
    ledger = crash_stream_repeatedly(tmp_path / "db", kills=kills, seed=SEED + 2)
    note(f"{kills} kills in {time.monotonic() - started:.0f} s")
    assert ledger.kills == kills
