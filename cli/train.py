"""`xmodal train clip|audio|starter` and `xmodal eval`."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import typer

from cli import output
from cli.errors import translate_errors
from generation.config import GeneratorConfig

GeneratorDefaults = GeneratorConfig(cond_dim=1)  # the shipped generator's shape: a light import, no torch

train_app = typer.Typer(help="Train the shared space on your own pairs (or the bundled starter recipe).",
                        no_args_is_help=True)

PairsOption = typer.Option(..., "--pairs", help="A pairs .jsonl file (see the README: one item per line).")
OutOption = typer.Option(..., "--out", help="Model directory to write (usable as --model).")
EpochsOption = typer.Option(20, "--epochs", min=1)
BatchOption = typer.Option(128, "--batch-size", min=2)
SeedOption = typer.Option(0, "--seed")
PatienceOption = typer.Option(4, "--patience", min=1, help="Stop after this many epochs without improvement.")
MinutesOption = typer.Option(None, "--max-minutes", min=0.1, help="Stop after this long, keeping the best weights.")
DeviceOption = typer.Option(None, "--device", help="cpu or cuda (default: cuda when present).")
ResumeOption = typer.Option(False, "--resume", help="Continue an interrupted run in --out.")
WorkersOption = typer.Option(None, "--workers", min=1, max=64, help="Decode processes (default: one per core).")
AugmentOption = typer.Option(True, "--augment/--no-augment", help="Random shifts (images), gain and crops (audio).")


def _options(epochs, batch_size, lr, seed, patience, max_minutes, device, augment, weight_decay):
    from retrieval.training.loop import TrainOptions

    return TrainOptions(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, patience=patience,
                        max_minutes=max_minutes, device=device, augment=augment, weight_decay=weight_decay)


@contextmanager
def training_reporter(title: str):
    """Yields (on_load, on_event): one progress line for decoding and then training (rich allows one
    live display at a time), with the loss, on a terminal; one line per epoch everywhere."""
    progress = None
    if output.stderr.is_terminal:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[loss]}"), TextColumn("ETA"), TimeRemainingColumn(),
                            console=output.stderr, transient=True)
        progress.start()
        bar = progress.add_task(title, total=None, loss="")

    def on_load(done: int, total: int) -> None:
        if progress is not None:
            progress.update(bar, completed=done, total=total, loss="", description="decoding media")

    def on_event(event) -> None:
        if event.kind == "step" and progress is not None:
            progress.update(bar, completed=event.step, total=event.steps, loss=f"loss {event.loss:.3f}",
                            description=f"{title} epoch {event.epoch}/{event.epochs}")
        elif event.kind == "epoch":
            figures = ", ".join(f"{k} {v:.3f}" for k, v in event.metrics.items() if k != "score")
            mark = "  best so far" if event.improved else ""
            output.stderr.print(f"epoch {event.epoch:>3}: validation {event.metrics['score']:.3f} ({figures}){mark}",
                                highlight=False, soft_wrap=True)

    try:
        yield on_load, on_event
    finally:
        if progress is not None:
            progress.stop()


def _finish(result, prepared) -> None:
    for line in prepared.dropped[:10]:
        output.stderr.print(f"skipped pair {line}", highlight=False)
    if len(prepared.dropped) > 10:
        output.stderr.print(f"... and {len(prepared.dropped) - 10} more pairs skipped")
    epochs = f"{result.epochs_run} epoch{'' if result.epochs_run == 1 else 's'}"
    output.stdout.print(
        f"trained in {output.format_seconds(result.seconds)} ({epochs}, {result.stopped}); "
        f"best validation {result.best_score:.3f} at epoch {result.best_epoch}; model in {result.out}",
        highlight=False)


@train_app.command("clip")
@translate_errors
def train_clip(
    pairs: Path = PairsOption,
    out: Path = OutOption,
    arch: str = typer.Option("starter", "--arch", help="Architecture of a new model (a preset or open_clip name)."),
    base: str | None = typer.Option(None, "--base", help="Fine-tune this model directory (or starter) instead."),
    epochs: int = EpochsOption,
    batch_size: int = BatchOption,
    lr: float = typer.Option(2e-3, "--lr"),
    weight_decay: float = typer.Option(0.1, "--weight-decay"),
    seed: int = SeedOption,
    patience: int = PatienceOption,
    max_minutes: float | None = MinutesOption,
    device: str | None = DeviceOption,
    augment: bool = AugmentOption,
    resume: bool = ResumeOption,
    workers: int | None = WorkersOption,
) -> None:
    """Train image and text towers together on image–caption pairs (symmetric InfoNCE)."""
    from retrieval.training.clip import train_clip as run

    options = _options(epochs, batch_size, lr, seed, patience, max_minutes, device, augment, weight_decay)
    with training_reporter("clip") as (loading, on_event):
        result, prepared = run(pairs, out, options, arch, base, resume, workers, on_event, loading)
    _finish(result, prepared)


@train_app.command("audio")
@translate_errors
def train_audio(
    pairs: Path = PairsOption,
    base: str = typer.Option(..., "--base", help="Model whose image and text towers stay frozen (any spec)."),
    out: Path = OutOption,
    channels: str = typer.Option("16,32,64,128", "--channels", help="Channels of the audio tower's conv blocks."),
    epochs: int = EpochsOption,
    batch_size: int = BatchOption,
    lr: float = typer.Option(2e-3, "--lr"),
    weight_decay: float = typer.Option(0.05, "--weight-decay"),
    seed: int = SeedOption,
    patience: int = PatienceOption,
    max_minutes: float | None = MinutesOption,
    device: str | None = DeviceOption,
    augment: bool = AugmentOption,
    resume: bool = ResumeOption,
    workers: int | None = WorkersOption,
) -> None:
    """Train an audio tower into a model's frozen image–text space (audio–image and/or audio–caption pairs)."""
    from retrieval.training.audio import train_audio as run

    try:
        widths = tuple(int(c) for c in channels.split(","))
    except ValueError:
        raise typer.BadParameter("--channels takes comma-separated integers, e.g. 16,32,64,128") from None
    options = _options(epochs, batch_size, lr, seed, patience, max_minutes, device, augment, weight_decay)
    with training_reporter("audio") as (loading, on_event):
        result, prepared = run(pairs, base, out, options, widths, resume, workers, on_event, loading)
    _finish(result, prepared)


@train_app.command("generator")
@translate_errors
def train_generator(
    pairs: Path = PairsOption,
    model: str = typer.Option(..., "--model", "-m", help="The embedding model whose space conditions the generator."),
    out: Path = OutOption,
    image_size: int = typer.Option(GeneratorDefaults.image_size, "--image-size",
                                   help="Side of the generated images, in pixels."),
    patch: int = typer.Option(GeneratorDefaults.patch, "--patch", min=1,
                              help="Pixels per side folded into channels before the first level "
                                   "(2: a 64 px image is worked on at 32 px)."),
    channels: int = typer.Option(GeneratorDefaults.channels, "--channels", help="Width of the network's first level."),
    channel_mults: str = typer.Option(",".join(map(str, GeneratorDefaults.channel_mults)), "--channel-mults",
                                      help="Width multiple per level; each level but the last halves the image."),
    epochs: int = EpochsOption,
    batch_size: int = typer.Option(64, "--batch-size", min=2),
    lr: float = typer.Option(2e-3, "--lr"),
    weight_decay: float = typer.Option(0.0, "--weight-decay"),
    seed: int = SeedOption,
    patience: int = PatienceOption,
    max_minutes: float | None = MinutesOption,
    device: str | None = DeviceOption,
    resume: bool = ResumeOption,
    workers: int | None = WorkersOption,
) -> None:
    """Train a conditional image generator for a model's space (images, with their image, caption and sound
    embeddings as conditions)."""
    from generation.config import GeneratorConfig
    from retrieval.training.generator import train_generator as run

    try:
        mults = tuple(int(m) for m in channel_mults.split(","))
        config = GeneratorConfig(cond_dim=1, image_size=image_size, patch=patch, channels=channels,
                                 channel_mults=mults)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    options = _options(epochs, batch_size, lr, seed, patience, max_minutes, device, False, weight_decay)
    with training_reporter("generator") as (loading, on_event):
        result = run(pairs, model, out, options, config, resume, workers, on_event, loading)
    output.stdout.print(f"trained in {output.format_seconds(result.seconds)} ({result.epochs_run} epochs, "
                        f"{result.stopped}); best validation loss {-result.best_score:.4f} at epoch "
                        f"{result.best_epoch}; generator in {result.out}", highlight=False)


@translate_errors
def evaluate(
    model: str = typer.Option(..., "--model", "-m", help="Model spec to evaluate."),
    pairs: Path = PairsOption,
    split: str = typer.Option("test", "--split", help="Queries from this split: test, heldout or val."),
    gallery: str = typer.Option("split", "--gallery",
                                help="split: search the same split; all: test and heldout items together."),
    workers: int | None = WorkersOption,
    device: str | None = DeviceOption,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Recall@1/5/10 and median rank, text↔image, audio→image, audio↔text (a hit shows the query's concept)."""
    from retrieval.training.evaluate import evaluate as run

    if gallery not in ("split", "all"):
        raise typer.BadParameter("--gallery is split or all")
    with output.progress_bar("decoding media", not as_json) as loading:
        report = run(model, pairs, split, gallery, workers, device, loading)
    if as_json:
        output.print_json(report.to_dict())
        return
    print_report(report)


def print_report(report) -> None:
    from rich.table import Table

    output.stdout.print(f"{report.model} on {report.pairs}, split {report.split} ({report.items} items), "
                        f"gallery: {report.gallery}", highlight=False)
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("direction", "R@1", "R@5", "R@10", "median rank", "queries", "gallery"):
        table.add_column(name, justify="left" if name == "direction" else "right")
    for direction, m in report.directions.items():
        table.add_row(direction, f"{m['R@1']:.3f}", f"{m['R@5']:.3f}", f"{m['R@10']:.3f}",
                      f"{m['median_rank']:g}", str(m["queries"]), str(m["gallery"]))
    output.stdout.print(table)
    for warning in report.warnings:
        output.stderr.print(f"warning: {warning}", highlight=False, soft_wrap=True)
    if report.dropped:
        output.stderr.print(f"{len(report.dropped)} pairs skipped (first: {report.dropped[0]})", highlight=False)


@train_app.command("starter")
@translate_errors
def train_starter(
    out: Path = typer.Option(Path("starter"), "--out", help="Model directory to write."),
    work: Path = typer.Option(Path("starter-work"), "--work",
                              help="Corpus and intermediate models; a rerun resumes from what is here."),
    workers: int | None = WorkersOption,
) -> None:
    """Train the bundled starter model from scratch: corpus, image/text towers, audio tower, evaluation, card."""
    from retrieval.training.model_card import target_lines
    from retrieval.training.starter import train_starter as run

    def stage(text: str) -> None:
        output.stderr.print(f"[bold]{text}[/bold]")

    with training_reporter("starter") as (progress, on_event):
        result = run(out, work, workers=workers, on_stage=stage, on_event=on_event, on_progress=progress)
    for name, report in result.reports.items():
        output.stdout.print(f"\n{name}:")
        print_report(report)
    output.stdout.print("\n" + "\n".join(target_lines(result.reports)), highlight=False)
    total = sum(result.seconds.values())
    output.stdout.print(f"\nstarter model in {result.out} ({result.size_bytes / 2**20:.1f} MiB), "
                        f"{total / 60:.1f} min in all; its card is {result.out / 'README.md'}", highlight=False)


@translate_errors
def calibrate(
    model: str = typer.Option(..., "--model", "-m", help="The model whose match decision to fit (any spec)."),
    pairs: Path = PairsOption,
    split: str = typer.Option("test", "--split", help="The split whose items become collection and queries."),
    removed: float = typer.Option(0.25, "--removed", min=0.05, max=0.9, help="Share of concepts left out of the "
                                                                             "collection (the absent queries)."),
    seed: int = SeedOption,
    out: Path = typer.Option(..., "--out", help="The calibration JSON to write (e.g. MODEL_DIR/calibration.json)."),
    workers: int | None = WorkersOption,
    device: str | None = DeviceOption,
) -> None:
    """Fit the calibrated match decision ("does the collection hold this?") on labelled present/absent queries."""
    from retrieval.calibration import calibrate_model
    from retrieval.encoders.factory import create_encoder

    encoder = create_encoder(model, device=device)
    with output.progress_bar("decoding media", True) as loading:
        calibration = calibrate_model(encoder, pairs, split, removed, seed, workers, loading)
    out.write_text(calibration.to_json())
    print_decision_figures(calibration.figures)
    output.stdout.print(f"calibration written to {out}", highlight=False)


def print_decision_figures(figures: dict) -> None:
    """Calibrated AUROC and F1 at the default threshold beside the raw cosine's best single cut."""
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("query→target", "queries", "AUROC", "F1 @0.5", "raw AUROC", "raw best cut", "raw best F1",
                 "raw F1 @text cut"):
        table.add_column(name, justify="left" if name == "query→target" else "right")
    for key, f in figures.items():
        at_text = f.get("raw_f1_at_text_floor")
        table.add_row(key, str(f["queries"]), f"{f['auroc']:.3f}", f"{f['f1']:.3f}", f"{f['raw_auroc']:.3f}",
                      f"{f['raw_best_threshold']:.3f}", f"{f['raw_best_f1']:.3f}",
                      "" if at_text is None else f"{at_text:.3f}")
    output.stdout.print(table)
