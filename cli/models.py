"""`xmodal models` and `xmodal model init`."""

from __future__ import annotations

from pathlib import Path

import typer

from cli import output
from cli.errors import translate_errors

model_app = typer.Typer(help="Create model directories.", no_args_is_help=True)


@translate_errors
def list_models(
    show_all: bool = typer.Option(False, "--all", help="Also list pretrained pairs that are not cached."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Model specs you can pass to --model (a model directory path works too)."""
    from retrieval.encoders import list_encoders
    from retrieval.encoders.factory import DEFAULT_MODEL

    infos = [i for i in list_encoders() if show_all or i.available or i.kind == "starter" or i.spec == DEFAULT_MODEL]
    if as_json:
        output.print_json([vars(i) for i in infos])
        return
    for info in infos:
        output.stdout.print(f"{info.spec:<48} {info.kind:<10} {info.note}", highlight=False)
    if not show_all:
        output.stdout.print("(--all lists every open_clip pretrained pair; any model directory is a spec too)")


@model_app.command("init")
@translate_errors
def init(
    out: Path = typer.Argument(..., help="Directory to create."),
    arch: str = typer.Option("small", "--arch",
                             help="A preset (micro, small) or an open_clip architecture (ViT-B-32)."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Create an untrained model directory (JSON config + safetensors). Usable as --model at once:
    exact and near-duplicate search work; meaningful text search needs training (part 2)."""
    from retrieval.encoders import init_model_dir

    if out.exists() and any(out.iterdir()):
        raise typer.BadParameter(f"{out} exists and is not empty")
    config = init_model_dir(out, arch, seed)
    output.stdout.print(f"wrote {out}: {config.name}, embedding dim {config.embed_dim}, untrained (seed {seed})")
