"""`xmodal train starter`: the recipe of the bundled starter model, start to finish in one command.

Generate the synthetic world's corpus, train the image and text towers on it, train the audio tower
against them, store the weights as float16, evaluate on the corpus's test and held-out splits,
fit the match decision's calibration, train the fallback generator for the new space, check what
it draws, and write the model cards. Each stage leaves its result in the work folder, so a run that is stopped
resumes at the stage (and the checkpoint) where it stopped.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from generation.config import GeneratorConfig
from retrieval.errors import TrainingStateError
from retrieval.training.data import prepare_pairs
from retrieval.training.evaluate import EvalReport, embed_pairs, rank_split
from retrieval.training.loop import CHECKPOINT, HISTORY, TrainEvent, TrainOptions


@dataclass(frozen=True)
class StarterRecipe:
    corpus_items: int = 12_000
    corpus_seed: int = 0
    # The epochs fit the 20-minute budget on two cores; the time caps only guard it on slower machines.
    clip: TrainOptions = field(default_factory=lambda: TrainOptions(epochs=22, lr=2e-3, weight_decay=0.1,
                                                                    max_minutes=9.5, patience=4))
    audio: TrainOptions = field(default_factory=lambda: TrainOptions(epochs=9, batch_size=64, lr=3e-3,
                                                                     weight_decay=0.05, max_minutes=6.5, patience=3))
    # The generator's epochs fit ~26 minutes on two cores with its data loading (the issue allows
    # 30); the cap guards slower machines. No weight decay: it only has to fit this world.
    generator: TrainOptions = field(default_factory=lambda: TrainOptions(epochs=18, batch_size=64, lr=2e-3,
                                                                         weight_decay=0.0, max_minutes=26,
                                                                         patience=4))
    generator_config: GeneratorConfig = field(default_factory=lambda: GeneratorConfig(cond_dim=1))
    generator_check_limit: int | None = None  # None: check every absent concept (a test checks a few)


@dataclass
class StarterResult:
    out: Path
    seconds: dict[str, float]
    reports: dict[str, EvalReport]
    size_bytes: int


def _done(stage_dir: Path) -> bool:
    return (stage_dir / HISTORY).is_file() and not (stage_dir / CHECKPOINT).exists()


def train_starter(out: Path, work: Path, recipe: StarterRecipe = StarterRecipe(), workers: int | None = None,
                  on_stage: Callable[[str], None] | None = None,
                  on_event: Callable[[TrainEvent], None] | None = None,
                  on_progress: Callable[[int, int], None] | None = None) -> StarterResult:
    """Run the whole recipe; `out` receives the model directory with its card (README.md) and eval.json."""
    from retrieval.data.synth import write_corpus
    from retrieval.encoders.factory import create_encoder
    from retrieval.encoders.weights import save_model_dir
    from retrieval.training.audio import train_audio
    from retrieval.training.clip import train_clip

    stage = on_stage or (lambda name: None)
    work, out = Path(work), Path(out)
    _check_out(out)  # before, not after, a quarter of an hour of training
    work.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    corpus = work / "corpus"
    pairs = corpus / "pairs.jsonl"

    started = time.monotonic()
    if not pairs.is_file():
        stage(f"generating the corpus ({recipe.corpus_items} items, seed {recipe.corpus_seed})")
        shutil.rmtree(corpus, ignore_errors=True)  # a corpus without pairs.jsonl is an interrupted one
        write_corpus(corpus, recipe.corpus_items, recipe.corpus_seed, progress=on_progress)
    seconds["corpus"] = time.monotonic() - started

    clip_dir = work / "clip"
    started = time.monotonic()
    if not _done(clip_dir):
        stage("training the image and text towers")
        train_clip(pairs, clip_dir, recipe.clip, "starter", resume=(clip_dir / CHECKPOINT).exists(),
                   workers=workers, on_event=on_event, on_load=on_progress)
    seconds["clip"] = time.monotonic() - started

    audio_dir = work / "audio"
    started = time.monotonic()
    if not _done(audio_dir):
        stage("training the audio tower")
        train_audio(pairs, str(clip_dir), audio_dir, recipe.audio, resume=(audio_dir / CHECKPOINT).exists(),
                    workers=workers, on_event=on_event, on_load=on_progress)
    seconds["audio"] = time.monotonic() - started

    stage("storing float16 weights and evaluating")
    started = time.monotonic()
    encoder = create_encoder(str(audio_dir), device="cpu")
    config = replace(encoder.config, name="starter", description="The bundled starter model, trained on xmodal's "
                                                                  "synthetic shapes-and-sounds world (see README.md).")
    shutil.rmtree(out, ignore_errors=True)
    save_model_dir(out, config, {"clip": encoder.clip_model, "audio": encoder.audio_tower}, dtype=torch.float16)
    starter = create_encoder(str(out), device="cpu")
    embedded = embed_pairs(starter, prepare_pairs(pairs, ("test", "heldout"), starter.inputs, need=(),
                                                  decode=("image", "audio"), workers=workers))
    reports = {split: rank_split(embedded, str(out), pairs, split) for split in ("test", "heldout")}
    reports["heldout (gallery: test + heldout)"] = rank_split(embedded, str(out), pairs, "heldout", "all")
    seconds["evaluation"] = time.monotonic() - started
    size = sum(p.stat().st_size for p in out.iterdir())
    histories = {name: json.loads((work / name / HISTORY).read_text()) for name in ("clip", "audio")}
    (out / "eval.json").write_text(json.dumps({k: r.to_dict() for k, r in reports.items()}, indent=2) + "\n")
    from retrieval.training.model_card import starter_card

    (out / "README.md").write_text(starter_card(recipe, reports, seconds, size, histories))

    stage("fitting the match decision's calibration")
    from retrieval.calibration import calibrate_model

    started = time.monotonic()
    (out / "calibration.json").write_text(calibrate_model(starter, pairs, "test", workers=workers).to_json())
    seconds["calibration"] = time.monotonic() - started

    started = time.monotonic()
    _generator_stage(out, work, pairs, recipe, workers, stage, on_event, on_progress)
    seconds["generator"] = time.monotonic() - started
    (out / "training.json").write_text(json.dumps({"recipe": asdict(recipe), "seconds": seconds,
                                                   "stages": histories}, indent=2) + "\n")
    return StarterResult(out, seconds, reports, size)


def _generator_stage(out: Path, work: Path, pairs: Path, recipe: StarterRecipe, workers: int | None,
                     stage: Callable[[str], None], on_event, on_progress) -> None:
    """Train the generator for the new model's space (resumable in WORK/generator), copy it into
    OUT/generator, measure what it draws and write its card."""
    from generation.storage import CONFIG_NAME, WEIGHTS_NAME, load_generator
    from retrieval.bench.generation_bench import run_generation_benchmark
    from retrieval.training.generator import train_generator
    from retrieval.training.model_card import generator_card

    generator_dir = work / "generator"
    started, wall_minutes = time.monotonic(), None
    if not _done(generator_dir):
        stage("training the fallback generator")
        train_generator(pairs, str(out), generator_dir, recipe.generator, recipe.generator_config,
                        resume=(generator_dir / CHECKPOINT).exists(), workers=workers, on_event=on_event,
                        on_load=on_progress)
        wall_minutes = (time.monotonic() - started) / 60
    target = out / "generator"
    target.mkdir(exist_ok=True)
    for name in (CONFIG_NAME, WEIGHTS_NAME, HISTORY):
        shutil.copy2(generator_dir / name, target / name)
    stage("checking what the generator draws")
    report = run_generation_benchmark(target, str(out), limit=recipe.generator_check_limit)
    (target / "bench-generate.json").write_text(report.to_json())
    params = sum(p.numel() for p in load_generator(target).parameters())
    options, config = recipe.generator, recipe.generator_config
    corpus = pairs.parent.name
    commands = [f"xmodal data synth {corpus} --n {recipe.corpus_items} --seed {recipe.corpus_seed}",
                f"xmodal train generator --pairs {corpus}/{pairs.name} --model starter --out generator --image-size "
                f"{config.image_size} --patch {config.patch} --channels {config.channels} --channel-mults "
                f"{','.join(map(str, config.channel_mults))} --epochs {options.epochs}"
                + (f" --max-minutes {options.max_minutes:g}" if options.max_minutes else "")]
    (target / "README.md").write_text(generator_card(json.loads((target / HISTORY).read_text()),
                                                     (target / WEIGHTS_NAME).stat().st_size, params, report, commands,
                                                     wall_minutes))


def _check_out(out: Path) -> None:
    """`out` is replaced at the end: it must be empty or an earlier starter model, nothing else."""
    from retrieval.encoders.config import CONFIG_NAME

    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    try:
        earlier = json.loads((out / CONFIG_NAME).read_text()).get("name") == "starter"
    except (OSError, ValueError, AttributeError):
        earlier = False
    if not earlier:
        raise TrainingStateError(f"{out} exists and is not an earlier starter model: choose another --out")
