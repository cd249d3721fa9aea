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
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from index.atomic import write_bytes_atomic
from retrieval.bench.fsdd_pairs import (  # noqa: F401 (re-exported: the CLI and tests use them from here)
    MARKER,
    DatasetNotFoundError,
    FsddPairs,
    build_fsdd_pairs,
    default_data,
    prepare_out,
    select_recordings,
)
from retrieval.bench.machine import cpu_name

if TYPE_CHECKING:
    from retrieval.training.evaluate import EvalReport

ATTRIBUTION = (
    "Sounds: Free Spoken Digit Dataset, https://github.com/Jakobovski/free-spoken-digit-dataset "
    "(CC BY-SA 4.0; Jakobovski and contributors). Images: scikit-learn's handwritten digits "
    "(sklearn.datasets.load_digits, a copy of the UCI ML hand-written digits test set; BSD-3-Clause)."
)
# The headline figures and what the standard split should reach.
TARGETS = {"audio→text": 0.95, "audio→image": 0.90}



@dataclass(frozen=True)
class FsddOptions:
    split: str = "takes"  # takes | speaker
    speaker: str = "theo"  # the test speaker of the speaker split
    limit: int | None = None  # at most this many recordings per digit, speaker and split (and images per digit)
    # An epoch is 26 steps of 128 (clip) and 21 (audio) at full size. Measured on two free cores with the
    # starter architecture: clip 64 s, audio about 5 minutes for these epochs (2026-11-22).
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



# -------------------------------------------------------------------------------------- benchmark

def _machine(device: str) -> tuple[dict[str, object], dict[str, str]]:
    import open_clip
    import sklearn
    import torch

    machine: dict[str, object] = {"platform": cpu_name(),
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


