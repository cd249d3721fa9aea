"""`xmodal bench ...`: benchmarks that print figures (part 5 grows the suite)."""

from __future__ import annotations

from pathlib import Path

import typer

from cli import output
from cli.errors import translate_errors

bench_app = typer.Typer(help="Benchmarks that print tables and write JSON.", no_args_is_help=True)


@bench_app.command("index")
@translate_errors
def bench_index(
    model: str = typer.Option("small", "--model", "-m", help="A model spec, or a preset name (micro, small) to "
                                                              "create an untrained model of that size."),
    images: int = typer.Option(200, "--images", min=1),
    sounds: int = typer.Option(50, "--sounds", min=0),
    workers: int | None = typer.Option(None, "--workers", min=1),
    repeats: int = typer.Option(3, "--repeats", min=1),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the figures here."),
) -> None:
    """End-to-end indexing rate beside the decode-only and encode-only rates it is bounded by."""
    from retrieval.bench.index_bench import run_index_benchmark

    report = run_index_benchmark(model, images, sounds, workers, repeats)
    output.stdout.print(report.table(), highlight=False)
    if json_out:
        json_out.write_text(report.to_json())
