"""`xmodal bench fsdd`: spoken digit → handwritten digit, on real data nobody on this project made.

    OUT/pairs.jsonl   OUT/images/digit-NNNN.png   OUT/clip/ (image + text towers)
    OUT/fsdd-{takes | speaker-NAME}/ (the model: all three towers, README.md with licences and figures)

Images are scikit-learn's handwritten digits (1,797 real 8x8 scans, BSD), drawn as dark ink on light
paper and split per digit with a fixed seed: 40 % train (a tenth of it held out as "val" to choose
the best epoch) and 60 % test, so that the test gallery holds over 1,000 images. Sounds are the Free
Spoken Digit Dataset's recordings (CC BY-SA 4.0), read where they lie, never copied: the standard
split tests on takes 0-4, the speaker split on one speaker whom training never hears. A training
recording is paired with a random training scan of its digit and with spoken-digit captions; a test
recording has captions only, so audio→image is measured against scans no sound was paired with.

The image and text towers are trained first (`train_clip` on every train item with an image:
the scans with written captions and the recordings' scans with spoken captions, so that the text
tower knows both phrasings), then the audio tower against them (`train_audio`), then every direction
is evaluated on the test split.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from index.atomic import write_bytes_atomic
from retrieval.errors import TrainingDataError, TrainingStateError

if TYPE_CHECKING:
    from retrieval.training.evaluate import EvalReport

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
ATTRIBUTION = (
    "Sounds: Free Spoken Digit Dataset, https://github.com/Jakobovski/free-spoken-digit-dataset "
    "(CC BY-SA 4.0; Jakobovski and contributors). Images: scikit-learn's handwritten digits "
    "(sklearn.datasets.load_digits, a copy of the UCI ML hand-written digits test set; BSD-3-Clause)."
)
# The headline figures and what the standard split should reach.
TARGETS = {"audio→text": 0.95, "audio→image": 0.90}


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


@dataclass(frozen=True)
class FsddOptions:
    split: str = "takes"  # takes | speaker
    speaker: str = "theo"  # the test speaker of the speaker split
    limit: int | None = None  # at most this many recordings per digit, speaker and split (and images per digit)
    # An epoch is 26 steps of 128 (clip) and 20 (audio) at full size. Measured on two cores that another
    # job was also using: ~4.2 s per step of the small image tower, ~2.2 s of the audio tower (about
    # half that on two free cores), so these defaults train for ~4 + ~5 minutes there.
    epochs_clip: int = 5
    epochs_audio: int = 15
    batch_size: int = 128
    lr_clip: float = 2e-3
    lr_audio: float = 3e-3
    patience: int = 4
    seed: int = 0
    device: str | None = None
    architecture: str = "starter"
    workers: int | None = None


@dataclass
class FsddReport:
    options: FsddOptions
    data: str
    out: str
    model: str
    counts: dict[str, int]
    test_speakers: list[str]
    machine: dict[str, object]
    versions: dict[str, str]
    training: dict[str, dict] = field(default_factory=dict)  # "clip" / "audio" -> fit summary
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> wall seconds
    evaluation: EvalReport | None = None
    attribution: str = ATTRIBUTION

    @property
    def directions(self) -> dict[str, dict[str, float]]:
        return self.evaluation.directions if self.evaluation is not None else {}

    def headline(self) -> list[str]:
        """One line per headline figure, beside its target."""
        lines = []
        for direction, target in TARGETS.items():
            value = self.directions.get(direction, {}).get("R@1", float("nan"))
            verdict = "meets" if value >= target else "below"
            lines.append(f"{direction} R@1 {value:.3f} ({verdict} the standard split's target of {target:.2f})")
        return lines

    def summary(self) -> list[str]:
        c, o = self.counts, self.options
        split = "takes 0-4 test" if o.split == "takes" else f"speaker {o.speaker} test, the others train"
        return [
            f"xmodal bench fsdd: split {o.split} ({split}){f', limit {o.limit}' if o.limit else ''}",
            f"scans: {c['image train']} train, {c['image val']} val, {c['image test']} test; "
            f"recordings: {c['audio train']} train, {c['audio test']} test",
            f"machine: {self.machine['platform']}, {self.machine['cpu_count']} cores, device {self.machine['device']}",
            "time: " + ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in self.seconds.items()),
        ]

    def to_json(self) -> str:
        data = asdict(self)
        data["evaluation"] = self.evaluation.to_dict() if self.evaluation is not None else None
        data["figures"] = self.directions
        data["headline"] = {d: self.directions.get(d, {}).get("R@1") for d in TARGETS}
        return json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n"


# ------------------------------------------------------------------------------------------ pairs

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


# -------------------------------------------------------------------------------------- benchmark

def _machine(device: str) -> tuple[dict[str, object], dict[str, str]]:
    import open_clip
    import sklearn
    import torch

    machine: dict[str, object] = {"platform": f"{platform.machine()} {platform.processor() or ''}".strip(),
                                  "cpu_count": os.cpu_count() or 0, "torch_threads": torch.get_num_threads(),
                                  "device": device}
    if device.startswith("cuda"):
        machine["gpu"] = torch.cuda.get_device_name(0)
    versions = {"python": platform.python_version(), "torch": torch.__version__, "open_clip": open_clip.__version__,
                "numpy": np.__version__, "scikit-learn": sklearn.__version__}
    return machine, versions


def _fit_summary(result, prepared) -> dict:
    return {"best_validation": round(result.best_score, 4), "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run, "steps": result.steps, "stopped": result.stopped,
            "train_seconds": round(result.seconds, 1), "items": len(prepared.pairs), "dropped": len(prepared.dropped)}


def _train_options(options: FsddOptions, epochs: int, lr: float, weight_decay: float):
    from retrieval.training.loop import TrainOptions

    return TrainOptions(epochs=epochs, batch_size=options.batch_size, lr=lr, weight_decay=weight_decay,
                        seed=options.seed, patience=options.patience, device=options.device, augment=True)


def run_fsdd_benchmark(data: Path, out: Path, options: FsddOptions, on_stage: Callable[[str], None] | None = None,
                       on_event: Callable | None = None) -> FsddReport:
    """Build the pairs, train image/text then audio towers, evaluate every direction on the test split.

    `on_stage` hears a line as each stage starts; `on_event` gets the trainers' events.

    Raises:
        DatasetNotFoundError: no recordings under `data` (checked before `out` is touched).
        TrainingDataError, TrainingStateError: see `build_fsdd_pairs`, `prepare_out` and the trainers.
    """
    select_recordings(data, options.split, options.speaker, options.limit)  # fail before anything is written
    from retrieval.encoders.factory import select_device
    from retrieval.encoders.presets import preset_config
    from retrieval.training.audio import train_audio
    from retrieval.training.clip import train_clip
    from retrieval.training.evaluate import evaluate

    stage = on_stage or (lambda line: None)
    out = Path(out)
    started = time.monotonic()
    prepare_out(out)
    stage(f"building pairs in {out}")
    image_size = preset_config(options.architecture).image.size
    built = build_fsdd_pairs(data, out, options.split, options.speaker, options.limit, image_size, options.seed)
    machine, versions = _machine(str(select_device(options.device)))
    model_dir = out / f"fsdd-{split_tag(options)}"
    report = FsddReport(options, str(Path(data).resolve()), str(out), str(model_dir), built.counts,
                        list(built.test_speakers), machine, versions)
    report.seconds["pairs"] = round(time.monotonic() - started, 1)

    stage("training the image and text towers")
    mark = time.monotonic()
    clip_options = _train_options(options, options.epochs_clip, options.lr_clip, 0.1)
    result, prepared = train_clip(built.pairs_file, out / "clip", clip_options, options.architecture,
                                  workers=options.workers, on_event=on_event)
    report.training["clip"] = {**_fit_summary(result, prepared), "options": asdict(clip_options)}
    report.seconds["clip"] = round(time.monotonic() - mark, 1)

    stage("training the audio tower")
    mark = time.monotonic()
    audio_options = _train_options(options, options.epochs_audio, options.lr_audio, 0.05)
    result, prepared = train_audio(built.pairs_file, str(out / "clip"), model_dir, audio_options,
                                   workers=options.workers, on_event=on_event)
    report.training["audio"] = {**_fit_summary(result, prepared), "options": asdict(audio_options)}
    report.seconds["audio"] = round(time.monotonic() - mark, 1)

    stage("evaluating on the test split")
    mark = time.monotonic()
    report.evaluation = evaluate(str(model_dir), built.pairs_file, "test", "split", options.workers,
                                 options.device)
    report.seconds["evaluate"] = round(time.monotonic() - mark, 1)
    report.seconds["total"] = round(time.monotonic() - started, 1)
    write_model_card(model_dir, report)
    write_bytes_atomic(model_dir / "bench-fsdd.json", report.to_json().encode())
    return report


def write_model_card(model_dir: Path, report: FsddReport) -> None:
    """README.md beside the weights: what the model was trained on, under which licences, and how it scores."""
    o = report.options
    rows = "\n".join(f"| {d} | {m['R@1']:.3f} | {m['R@5']:.3f} | {m['R@10']:.3f} | {m['median_rank']:g} | "
                     f"{m['queries']} | {m['gallery']} |" for d, m in report.directions.items())
    split = ("standard (takes 0-4 of every speaker are the test set)" if o.split == "takes"
             else f"speaker-disjoint (test speaker: {o.speaker}, never heard in training)")
    clip, audio = report.training["clip"], report.training["audio"]
    text = f"""# {Path(model_dir).name}: spoken digits and handwritten digits in one space

Made by `xmodal bench fsdd --split {o.split}`: image and text towers ({o.architecture}) trained on
handwritten digit scans with written and spoken-digit captions, then an audio tower trained on spoken
digits against them.
A spoken "seven" finds handwritten 7s and the captions of seven.

## Data and licences

- Free Spoken Digit Dataset, https://github.com/Jakobovski/free-spoken-digit-dataset
  (Jakobovski and contributors), licensed CC BY-SA 4.0. This model is derived from those recordings:
  it and any figure reported from it carry that attribution, and share-alike applies.
- scikit-learn's handwritten digits (`sklearn.datasets.load_digits`, 1,797 8x8 scans; a copy of the
  UCI ML hand-written digits test set), distributed with scikit-learn under the BSD-3-Clause licence.

Split: {split}. Training: {report.counts['image train']} scans (and {report.counts['image val']} to choose the
best epoch), {report.counts['audio train']} recordings.
Test: {report.counts['image test']} scans, {report.counts['audio test']} recordings.
Image and text towers: {clip['epochs_run']} epochs ({clip['stopped']}), best validation {clip['best_validation']:.3f}
at epoch {clip['best_epoch']}. Audio tower: {audio['epochs_run']} epochs ({audio['stopped']}), best validation
{audio['best_validation']:.3f} at epoch {audio['best_epoch']}.

## Figures (test split, gallery: the test split; a hit shows the query's digit)

| direction | R@1 | R@5 | R@10 | median rank | queries | gallery |
|---|---|---|---|---|---|---|
{rows}

Machine: {report.machine['platform']}, {report.machine['cpu_count']} cores, device {report.machine['device']};
{report.seconds.get('total', 0):.0f} s from pairs to figures.
"""
    write_bytes_atomic(Path(model_dir) / "README.md", text.encode())


def split_tag(options: FsddOptions) -> str:
    return options.split if options.split == "takes" else f"speaker-{options.speaker}"


def default_out(options: FsddOptions) -> Path:
    """~/.cache/xmodal/bench-fsdd/{takes | speaker-NAME}: kept, so that the trained model can be used."""
    return Path.home() / ".cache" / "xmodal" / "bench-fsdd" / split_tag(options)


def json_target(path: Path, options: FsddOptions) -> Path:
    """`--json` names a file, or a folder that gets bench-fsdd-{split}.json (e.g. docs/results)."""
    path = Path(path)
    if path.is_dir():
        return path / f"bench-fsdd-{options.split}.json"
    return path


