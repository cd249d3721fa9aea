"""`xmodal bench fsdd`: the pairs it builds from real data, a tiny run end to end, and the skip without data.

The Free Spoken Digit Dataset lies beside the checkout (../shared/data/fsdd) on developer machines
and in CI, never in the repository; without it the data tests skip and say why.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import run_xmodal

FSDD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd"
needs_fsdd = pytest.mark.skipif(not (FSDD / "recordings").is_dir(),
                                reason=f"FSDD recordings not found at {FSDD} (see ../shared/data/README.md)")
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _records(pairs_file: Path) -> list[dict]:
    return [json.loads(line) for line in pairs_file.read_text().splitlines() if line.strip()]


def _recording(record: dict) -> tuple[int, str, int]:
    digit, speaker, take = Path(record["audio"]).stem.split("_")
    return int(digit), speaker, int(take)


@pytest.fixture(scope="module")
def takes_pairs(tmp_path_factory):
    from retrieval.bench.fsdd import build_fsdd_pairs

    return build_fsdd_pairs(FSDD, tmp_path_factory.mktemp("fsdd") / "takes", split="takes")


@needs_fsdd
def test_standard_split_tests_on_takes_0_to_4_and_pairs_training_sounds_with_a_training_scan(takes_pairs):
    records = _records(takes_pairs.pairs_file)
    sounds = [r for r in records if "audio" in r]
    assert len(sounds) == 3000
    by_id = {r["id"]: r for r in records}
    for record in sounds:
        digit, _, take = _recording(record)
        assert record["split"] == ("test" if take < 5 else "train")
        assert record["concept"] == f"digit {digit}"
        if record["split"] == "test":
            assert "image" not in record  # audio→image is measured against scans no sound was paired with
        else:
            scan = by_id[Path(record["image"]).stem.replace("digit", "scan")]
            assert scan["split"] == "train" and scan["concept"] == record["concept"]
    assert takes_pairs.counts["audio test"] == 300 and takes_pairs.counts["audio train"] == 2700


@needs_fsdd
def test_scans_are_split_by_digit_and_the_test_gallery_has_over_1000_images(takes_pairs):
    records = [r for r in _records(takes_pairs.pairs_file) if "audio" not in r]
    assert len(records) == 1797
    per_split = Counter(r["split"] for r in records)
    assert per_split["test"] >= 1000
    assert per_split["train"] + per_split["val"] == pytest.approx(0.4 * 1797, abs=10)
    for digit in range(10):
        of_digit = [r for r in records if r["concept"] == f"digit {digit}"]
        share = sum(r["split"] != "test" for r in of_digit) / len(of_digit)
        assert share == pytest.approx(0.4, abs=0.02)  # stratified: every digit is split alike


@needs_fsdd
def test_every_caption_names_its_digit(takes_pairs):
    for record in _records(takes_pairs.pairs_file):
        digit = int(record["concept"].split()[-1])
        assert record["captions"]
        for caption in record["captions"]:
            words = re.findall(r"[a-z]+|\d", caption)
            assert WORDS[digit] in words or str(digit) in words, caption
            others = {WORDS[d] for d in range(10) if d != digit} | {str(d) for d in range(10) if d != digit}
            assert not others & set(words), caption
        if "audio" in record:
            assert any(w in " ".join(record["captions"]) for w in ("saying", "spoken")), record["captions"]


@needs_fsdd
def test_scans_exist_and_decode_as_dark_ink_on_light_paper(takes_pairs):
    import numpy as np

    from retrieval.training.pairs import load_pairs

    images = {p.image for p in load_pairs(takes_pairs.pairs_file) if p.image is not None}
    assert len(images) == 1797
    for path in images:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("L"))
        assert image.size == (64, 64)
        assert pixels.mean() > 128 and pixels.min() < 100  # mostly paper, some ink


@needs_fsdd
def test_speaker_split_puts_exactly_that_speaker_in_test(tmp_path):
    from retrieval.bench.fsdd import build_fsdd_pairs

    built = build_fsdd_pairs(FSDD, tmp_path, split="speaker", speaker="jackson", limit=2)
    sounds = [r for r in _records(built.pairs_file) if "audio" in r]
    test = {_recording(r)[1] for r in sounds if r["split"] == "test"}
    train = {_recording(r)[1] for r in sounds if r["split"] == "train"}
    assert test == {"jackson"} and built.test_speakers == ("jackson",)
    assert train == {"george", "lucas", "nicolas", "theo", "yweweler"}
    assert built.counts["audio test"] == 10 * 2 and built.counts["audio train"] == 5 * 10 * 2  # --limit 2


@needs_fsdd
def test_unknown_speaker_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "out"
    result = run_xmodal("bench", "fsdd", "--data", str(FSDD), "--split", "speaker", "--speaker", "nobody",
                        "--out", str(out))
    assert result.returncode == 2
    assert "speaker 'nobody' is not in the recordings" in result.stderr
    assert not out.exists()


@needs_fsdd
def test_tiny_run_end_to_end_prints_every_direction_and_writes_json_and_card(tmp_path):
    out = tmp_path / "bench"
    (tmp_path / "results").mkdir()
    result = run_xmodal("bench", "fsdd", "--data", str(FSDD), "--out", str(out), "--limit", "1",
                        "--epochs-clip", "1", "--epochs-audio", "1", "--workers", "1",
                        "--json", str(tmp_path / "results"), check=True, timeout=120)
    for direction in ("text→image", "image→text", "audio→image", "audio→text", "text→audio"):
        assert direction in result.stdout
    assert "audio→text R@1" in result.stdout and "audio→image R@1" in result.stdout
    report = json.loads((tmp_path / "results" / "bench-fsdd-takes.json").read_text())
    assert set(report["figures"]) == {"text→image", "image→text", "audio→image", "audio→text", "text→audio"}
    assert report["counts"] == {"image train": 10, "image val": 10, "image test": 10, "audio train": 60,
                                "audio test": 60}
    assert report["machine"]["cpu_count"] >= 1 and "torch" in report["versions"]
    assert {"pairs", "clip", "audio", "evaluate", "total"} <= set(report["seconds"])
    card = (out / "fsdd-takes" / "README.md").read_text()
    assert "CC BY-SA 4.0" in card and "Jakobovski/free-spoken-digit-dataset" in card and "BSD" in card
    assert "| audio→image |" in card
    # The data is read where it lies: nothing of it is copied into the work folder.
    assert not list(out.rglob("*.wav"))


def test_missing_data_is_a_skip_not_a_failure(tmp_path):
    missing = tmp_path / "no-fsdd-here"
    result = run_xmodal("bench", "fsdd", "--data", str(missing), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"skipped: FSDD recordings not found at {missing} (see ../shared/data/README.md)"
    assert not (tmp_path / "out").exists()


def test_work_folder_is_rebuilt_when_it_is_ours_and_refused_otherwise(tmp_path):
    from retrieval.bench.fsdd import MARKER, prepare_out
    from retrieval.errors import TrainingStateError

    ours = tmp_path / "ours"
    prepare_out(ours)
    (ours / "pairs.jsonl").write_text("stale\n")
    prepare_out(ours)
    assert sorted(p.name for p in ours.iterdir()) == [MARKER]

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "photo.jpg").write_bytes(b"keep me")
    with pytest.raises(TrainingStateError, match="not made by `xmodal bench fsdd`"):
        prepare_out(theirs)
    assert (theirs / "photo.jpg").read_bytes() == b"keep me"
