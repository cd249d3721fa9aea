"""`xmodal demo`: generate, index and search a small collection offline, and write a report page."""

from __future__ import annotations

from pathlib import Path

import typer

from cli import output
from cli.errors import translate_errors


@translate_errors
def demo(
    out: Path = typer.Option(Path("xmodal-demo"), "--out", help="Folder for media, index and report.html "
                                                                "(an earlier demo there is replaced)."),
    model: str = typer.Option("starter", "--model", "-m", help="Model spec to index and search with."),
    k: int = typer.Option(5, "-k", min=1, max=50, help="Results per query."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Generate a few hundred images and sounds, index them, search with words and sounds, write a report."""
    from retrieval.demo import run_demo

    def stage(text: str) -> None:
        output.stderr.print(text, highlight=False)

    try:
        with output.progress_bar("indexing", True) as progress:
            run = run_demo(out, model, k=k, seed=seed, on_stage=stage, progress=progress)
    except FileExistsError as error:
        raise typer.BadParameter(str(error)) from None
    for answer in run.answers:
        query = f'"{answer.query}"' if answer.kind == "text" else f"a sound of {answer.query} ({answer.query_file})"
        output.stdout.print(f"\n{answer.kind} → {answer.target}: {query}  [{answer.millis:.0f} ms]", highlight=False)
        if not answer.present:
            output.stdout.print("  (absent from the collection on purpose: no result can be right)")
        for hit in answer.hits:
            mark = "✓" if hit.correct else "✗"
            output.stdout.print(f"  {hit.rank:>2}  {hit.score:.3f}  {mark}  {hit.path}", highlight=False)
        if answer.match is not None:
            verdict = "match" if answer.match else "NO GOOD MATCH"
            output.stdout.print(f"  {verdict} (confidence {answer.confidence:.2f})", highlight=False)
        if answer.generated_file:
            output.stdout.print(f"  generated instead: {answer.generated_file} "
                                f"(similarity {answer.generated_score:.2f})", highlight=False)
    timing = ", ".join(f"{name} {value:.1f} s" for name, value in run.seconds.items())
    output.stdout.print(f"\n{run.images} images and {run.sounds} sounds ({timing})\nreport: {run.report}",
                        highlight=False)
