"""Tables, JSON and progress bars. Results go to stdout; progress and messages to stderr."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager

from rich.console import Console
from rich.table import Table
from rich.text import Text

# Piped output is for other programs: never wrap or fold a path at some assumed 80 columns.
stdout = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 100_000)
stderr = Console(stderr=True)


def print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def format_seconds(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}:{rest:04.1f}"


def format_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


@contextmanager
def progress_bar(description: str, enabled: bool):
    """A progress callback (done, total) drawing files/s and ETA on a terminal; silent otherwise."""
    if not enabled or not stderr.is_terminal:
        yield lambda done, total: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
               TextColumn("{task.fields[rate]}"), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=stderr, transient=True) as progress:
        task = progress.add_task(description, total=None, rate="")

        def update(done: int, total: int) -> None:
            speed = progress.tasks[0].speed
            progress.update(task, completed=done, total=total, rate=f"{speed:.1f} files/s" if speed else "")

        yield update


def print_search(result, filtered: bool = False) -> None:
    if not result.results:
        why = "nothing in the collection passes the filters" if filtered else \
            "the collection has nothing of the requested modality"
        stdout.print(f"no results ({why})")
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name, justify in (("rank", "right"), ("score", "right"), ("modality", "left"), ("path", "left"),
                          ("segment", "left")):
        table.add_column(name, justify=justify, overflow="fold")
    for rank, hit in enumerate(result.results, 1):
        segment = f"{format_seconds(hit.segment[0])}-{format_seconds(hit.segment[1])}" if hit.segment else ""
        # Text, not markup: a file named "[red].png" must print as it is.
        path = Text(f"{hit.path}  [generated]" if hit.generated else hit.path)
        table.add_row(str(rank), f"{hit.score:.4f}", hit.modality, path, segment)
    stdout.print(table)
    decision = result.decision
    if decision is not None:
        verdict = "match" if decision.match else "NO GOOD MATCH"
        stdout.print(f"{verdict} (confidence {decision.confidence:.2f}, threshold {decision.threshold:.2f}): "
                     f"{decision.reason}", highlight=False)
    if result.generated is not None:
        made = result.generated
        stdout.print(f"GENERATED (not from the collection): {result.generated_path}\n"
                     f"  drawn for this query by {made.generator}, seed {made.seed}; similarity to the query "
                     f"{made.score:.2f}", highlight=False, markup=False)


def print_index_summary(summary, max_failures: int = 20) -> None:
    rate = f"{summary.rate:.1f} files/s" if summary.processed else "nothing to read"
    stdout.print(f"indexed {', '.join(summary.roots)} in {summary.seconds:.1f} s ({rate})")
    stdout.print(
        f"  new {summary.new}, updated {summary.updated}, renamed {summary.renamed}, removed {summary.removed}, "
        f"unchanged {summary.unchanged}, not media {summary.ignored}"
    )
    if summary.failures:
        by_class = ", ".join(f"{name} {count}" for name, count in summary.skipped.items())
        stdout.print(f"  skipped {len(summary.failures)}: {by_class}")
        for failure in summary.failures[:max_failures]:
            stdout.print(f"    {failure.error_class:<11} {failure.path}: {failure.message}", highlight=False)
        if len(summary.failures) > max_failures:
            stdout.print(f"    ... and {len(summary.failures) - max_failures} more (see `xmodal errors`)")
