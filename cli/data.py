"""`xmodal data sample`: a generated media folder for trying xmodal out."""

from __future__ import annotations

from pathlib import Path

import typer

from cli import output
from cli.errors import translate_errors

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
