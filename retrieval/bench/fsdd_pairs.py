"""The FSDD benchmark's data: scikit-learn's handwritten digit scans and the Free Spoken Digit
Dataset's recordings, turned into a pairs file (see `retrieval/bench/fsdd.py` for the benchmark)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from index.atomic import write_bytes_atomic
from retrieval.errors import TrainingDataError, TrainingStateError

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
WRITTEN_TEMPLATES = ("a handwritten {word}", "the digit {n}", "the number {word} written by hand",
                     "a hand-drawn {n}", "a scan of a handwritten {n}", "the numeral {word}, handwritten")
SPOKEN_TEMPLATES = ("someone saying {word}", "the spoken word {word}", "{word}, spoken",
                    "a voice saying the number {word}", "a recording of someone saying {word}",
                    "the digit {n} spoken aloud")
TEST_TAKES = range(5)  # the standard FSDD split: takes 0-4 test, the rest train
IMAGE_TRAIN_FRACTION = 0.4  # the rest of the scans is the test gallery (over 1,000 of the 1,797)
VAL_FRACTION = 0.1  # of the training scans
SPLITS = ("takes", "speaker")
MARKER = ".xmodal-bench-fsdd"  # a folder holding it was made by this benchmark and may be rebuilt


class DatasetNotFoundError(FileNotFoundError):
    """The FSDD recordings are not where they were looked for (the benchmark is skipped, not failed)."""


@dataclass(frozen=True)
class Recording:
    path: Path
    digit: int
    speaker: str
    take: int


@dataclass(frozen=True)
class FsddPairs:
    pairs_file: Path
    counts: dict[str, int]  # "image train|val|test", "audio train|test"
    speakers: tuple[str, ...]
    test_speakers: tuple[str, ...]



def default_data() -> Path:
    """../shared/data/fsdd from the working directory, else beside this checkout (the first that exists)."""
    candidates = [Path("../shared/data/fsdd"), Path(__file__).resolve().parents[3] / "shared" / "data" / "fsdd"]
    return next((c for c in candidates if (c / "recordings").is_dir()), candidates[0])


def find_recordings(data: Path) -> list[Recording]:
    """The recordings `{digit}_{speaker}_{take}.wav` under `data`/recordings, sorted.

    Raises:
        DatasetNotFoundError: no such folder, or no recording in it.
    """
    folder = Path(data) / "recordings"
    found = []
    if folder.is_dir():
        for path in sorted(folder.glob("*.wav")):
            parts = path.stem.split("_")
            if len(parts) == 3 and parts[0].isdigit() and parts[2].isdigit() and int(parts[0]) < 10:
                found.append(Recording(path.resolve(), int(parts[0]), parts[1], int(parts[2])))
    if not found:
        raise DatasetNotFoundError(f"FSDD recordings not found at {folder}")
    return found


def is_test_recording(recording: Recording, split: str, speaker: str) -> bool:
    return recording.take in TEST_TAKES if split == "takes" else recording.speaker == speaker


def _limited(recordings: list[Recording], test: set[Recording], limit: int | None) -> list[Recording]:
    """At most `limit` recordings (lowest takes) of each digit, speaker and split."""
    if limit is None:
        return recordings
    kept, seen = [], {}
    for r in sorted(recordings, key=lambda r: (r.digit, r.speaker, r.take)):
        key = (r.digit, r.speaker, r in test)
        seen[key] = seen.get(key, 0) + 1
        if seen[key] <= limit:
            kept.append(r)
    return kept


def load_digit_scans() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's handwritten digits: (1797, 8, 8) float ink in 0..16 and (1797,) labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target.astype(np.int64)


def render_scan(scan: np.ndarray, size: int) -> np.ndarray:
    """An 8x8 scan (ink 0..16) -> (size, size, 3) uint8, dark ink on light paper, bicubic upscale."""
    from PIL import Image

    grey = (255.0 - np.clip(scan, 0, 16) * (255.0 / 16.0)).round().astype(np.uint8)  # (8, 8)
    image = Image.fromarray(grey).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(image.convert("RGB"))


def split_scans(labels: np.ndarray, seed: int, limit: int | None = None) -> dict[str, list[int]]:
    """Scan indices per split, stratified by digit with a fixed seed.

    IMAGE_TRAIN_FRACTION of each digit is for training, of which VAL_FRACTION is held out as "val"
    (so that choosing the best epoch looks at scans training never saw); the rest is "test".
    """
    rng = np.random.default_rng(seed)
    splits: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for digit in range(10):
        members = rng.permutation(np.flatnonzero(labels == digit))
        cut = round(len(members) * IMAGE_TRAIN_FRACTION)
        held = max(1, round(cut * VAL_FRACTION))
        parts = {"val": members[:held], "train": members[held:cut], "test": members[cut:]}
        for name, part in parts.items():
            splits[name].extend(int(i) for i in part[:limit])
    return {name: sorted(indices) for name, indices in splits.items()}


def _captions(templates: tuple[str, ...], digit: int) -> list[str]:
    return [t.format(word=WORDS[digit], n=digit) for t in templates]


def prepare_out(out: Path) -> None:
    """Make `out` an empty folder of this benchmark; a folder of anything else is refused.

    Raises:
        TrainingStateError: `out` is a non-empty folder that this benchmark did not make.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise TrainingStateError(f"{out} exists and was not made by `xmodal bench fsdd`: choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by `xmodal bench fsdd`; rebuilt on every run\n")


def select_recordings(data: Path, split: str = "takes", speaker: str = "theo",
                      limit: int | None = None) -> tuple[list[Recording], set[Recording]]:
    """The recordings a run uses and which of them are the test set.

    Raises:
        DatasetNotFoundError: no recordings under `data`.
        TrainingDataError: an unknown split or speaker, or a limit below one.
    """
    if split not in SPLITS:
        raise TrainingDataError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    if limit is not None and limit < 1:
        raise TrainingDataError("--limit must be at least 1")
    recordings = find_recordings(data)
    speakers = tuple(sorted({r.speaker for r in recordings}))
    if split == "speaker" and speaker not in speakers:
        raise TrainingDataError(f"speaker {speaker!r} is not in the recordings; there are {', '.join(speakers)}")
    test = {r for r in recordings if is_test_recording(r, split, speaker)}
    return _limited(recordings, test, limit), test


def build_fsdd_pairs(data: Path, out: Path, split: str = "takes", speaker: str = "theo", limit: int | None = None,
                     image_size: int = 64, seed: int = 0) -> FsddPairs:
    """Write the digit scans as PNGs and a pairs file of scans and recordings into `out`.

    Raises:
        DatasetNotFoundError, TrainingDataError: see `select_recordings`.
    """
    from PIL import Image

    recordings, test = select_recordings(data, split, speaker, limit)
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    scans, labels = load_digit_scans()
    scan_splits = split_scans(labels, seed, limit)
    records = []
    for name, indices in scan_splits.items():
        for i in indices:
            relative = f"images/digit-{i:04d}.png"
            Image.fromarray(render_scan(scans[i], image_size)).save(out / relative)
            digit = int(labels[i])
            records.append({"id": f"scan-{i:04d}", "split": name, "image": relative,
                            "captions": _captions(WRITTEN_TEMPLATES, digit), "concept": f"digit {digit}"})

    # A training recording shows a random training scan of its digit (seeded, so reruns pair alike).
    train_scans = {d: [i for i in scan_splits["train"] if labels[i] == d] for d in range(10)}
    rng = np.random.default_rng(seed + 1)
    for r in recordings:
        record = {"id": f"fsdd-{r.path.stem}", "split": "test" if r in test else "train",
                  "audio": str(r.path),  # absolute: the data stays where it is, outside the repository
                  "captions": _captions(SPOKEN_TEMPLATES, r.digit), "concept": f"digit {r.digit}"}
        if r not in test:
            record["image"] = f"images/digit-{int(rng.choice(train_scans[r.digit])):04d}.png"
        records.append(record)
    lines = "".join(json.dumps(record) + "\n" for record in records)
    write_bytes_atomic(out / "pairs.jsonl", lines.encode())

    counts = {f"image {name}": len(indices) for name, indices in scan_splits.items()}
    counts.update({f"audio {name}": sum(1 for r in recordings if (r in test) == (name == "test"))
                   for name in ("train", "test")})
    test_speakers = tuple(sorted({r.speaker for r in recordings if r in test}))
    speakers = tuple(sorted({r.speaker for r in recordings}))
    return FsddPairs(out / "pairs.jsonl", counts, speakers, test_speakers)
