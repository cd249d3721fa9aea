"""`xmodal data sample`: a generated media folder for trying xmodal out; `xmodal data synth`: the
synthetic training and evaluation corpus."""

from __future__ import annotations

from pathlib import Path

import typer

from cli import output
from cli.errors import EXIT_INTERRUPTED, EXIT_USAGE, fail, translate_errors

data_app = typer.Typer(help="Generate media for demos, tests and benchmarks.", no_args_is_help=True)


@data_app.command("sample")
@translate_errors
def sample(
    out: Path = typer.Argument(..., help="Folder to write."),
    images: int = typer.Option(200, "--images", min=0),
    sounds: int = typer.Option(50, "--sounds", min=0),
    hostile: bool = typer.Option(True, "--hostile/--no-hostile", help="Add ten broken or refused files."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Write distinct images (JPEG, PNG, WebP, GIF, BMP, tricky modes) and sounds (WAV, FLAC, OGG,
    MP3), plus hostile files; OUT/sample.json lists them with each hostile file's expected class."""
    from retrieval.data.samples import generate_sample_folder

    manifest = generate_sample_folder(out, images, sounds, hostile, seed)
    output.stdout.print(f"wrote {len(manifest.images)} images, {len(manifest.sounds)} sounds and "
                        f"{len(manifest.hostile)} hostile files under {out}")


@data_app.command("synth")
@translate_errors
def synth(
    out: Path = typer.Argument(..., help="Folder to write (new or empty)."),
    n: int = typer.Option(12_000, "--n", min=30, help="Items in all: a tenth test, a tenth held-out, the rest train."),
    seed: int = typer.Option(0, "--seed", min=0),
    workers: int = typer.Option(2, "--workers", min=1, max=64, help="Processes that render items."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Write the synthetic world's corpus: shapes of 8 colours, 2 sizes and 4 backgrounds as images,
    sounds and captions, in train/test/heldout splits; OUT/pairs.jsonl lists the items."""
    from retrieval.data.synth import write_corpus

    with output.progress_bar("generating", enabled=not quiet) as progress:
        try:
            summary = write_corpus(out, n=n, seed=seed, workers=workers, progress=progress)
        except FileExistsError as error:
            raise fail(f"{error.strerror}: {error.filename}", EXIT_USAGE) from None
        except ValueError as error:
            raise fail(str(error), EXIT_USAGE) from None
        except KeyboardInterrupt:
            raise fail(f"interrupted; {out} holds an unfinished corpus (no pairs.jsonl): delete it and run again",
                       EXIT_INTERRUPTED) from None
    counts = summary.counts
    output.stdout.print(f"wrote {summary.total} items (train {counts['train']}, test {counts['test']}, "
                        f"heldout {counts['heldout']}) under {out} in {summary.seconds:.1f} s", highlight=False)
