"""The `xmodal` command line. Imports stay light here: decode workers are spawned processes that
re-import this module, and `xmodal errors` should not wait for torch."""

from __future__ import annotations

import os

# Idle OpenMP threads of torch sleep instead of spinning: while indexing, the encoder's threads
# share the cores with decode workers, and spinning threads would steal their time (measured:
# 1.5x faster end-to-end indexing on two cores). Set before torch loads; the user's value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from datetime import datetime  # noqa: E402
from enum import Enum  # noqa: E402
from pathlib import Path

import typer

from cli import output
from cli.errors import EXIT_USAGE, fail, translate_errors

app = typer.Typer(
    name="xmodal",
    help="Cross-modal search: index folders of images and sounds, search them with words, pictures or sounds.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class Target(str, Enum):
    image = "image"
    audio = "audio"
    all = "all"


DbOption = typer.Option(None, "--db", envvar="XMODAL_DB",
                        help="Collection directory (default: ~/.local/share/xmodal/default).")
ModelOption = typer.Option(None, "--model", "-m", envvar="XMODAL_MODEL",
                           help="Model spec: starter, ARCH:PRETRAINED (open_clip) or a model directory. "
                                "Default: the model the collection was built with; "
                                "ViT-B-32:laion2b_s34b_b79k for a new one.")
JsonOption = typer.Option(False, "--json", help="Print JSON instead of a table.")
GeneratorOption = typer.Option(None, "--generator", envvar="XMODAL_GENERATOR",
                               help="What draws when nothing matches: the model's own generator (default), "
                                    "'none', a generator directory, or diffusers:SOURCE[?steps=N&guidance=W] "
                                    "(extra [diffusers]).")


def _settings(db: Path | None, model: str | None = None, **overrides):
    from retrieval.settings import load_settings

    return load_settings(db=db, model=model, **overrides)


def _tuning(tuned: dict | None) -> str:
    """" (nprobe=8, recall@10 0.97)" for an approximate index, as measured when it was tuned."""
    if not tuned:
        return ""
    recall = f", recall@10 {tuned['recall_at_10']:.2f}" if tuned.get("recall_at_10") is not None else ""
    return f" ({tuned['parameter']}{recall})"


@app.command()
@translate_errors
def index(
    paths: list[Path] = typer.Argument(..., help="Folders (or files) to index, recursively."),
    db: Path | None = DbOption,
    model: str | None = ModelOption,
    workers: int | None = typer.Option(None, "--workers", min=1, max=64, envvar="XMODAL_WORKERS",
                                          help="Decode processes (default: cores - 1)."),
    ray: str | None = typer.Option(None, "--ray", envvar="XMODAL_RAY", metavar="ADDRESS",
                                   help="Decode and encode on a Ray cluster: auto, ray://HOST:PORT, or local "
                                        "(start one here). Files must be readable at the same paths on every "
                                        "node. Extra [distributed]."),
    index_spec: str | None = typer.Option(None, "--index-spec", envvar="XMODAL_INDEX_SPEC", metavar="SPEC",
                                          help="FAISS factory string for this collection's indexes, e.g. "
                                               "IVF4096,Flat or HNSW32 (kept for later runs; auto: chosen by "
                                               "size, the default)."),
    as_json: bool = JsonOption,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Index images and sounds under PATHS: new and changed files are encoded, renamed ones keep
    their vectors, deleted ones are removed. Bad files are skipped and recorded (`xmodal errors`)."""
    from retrieval.compose import run_index

    settings = _settings(db, model, workers=workers, ray_address=ray, index_spec=index_spec)
    with output.progress_bar("indexing", enabled=not quiet) as progress:
        summary = run_index(settings, paths, progress)
    if as_json:
        output.print_json(summary.to_dict())
    else:
        output.print_index_summary(summary)


@app.command()
@translate_errors
def search(
    text: str | None = typer.Argument(None, help="A text query."),
    image: Path | None = typer.Option(None, "--image", help="Search with this image file."),
    audio: Path | None = typer.Option(None, "--audio", help="Search with this sound file."),
    db: Path | None = DbOption,
    model: str | None = ModelOption,
    k: int = typer.Option(10, "-k", "--top", min=1, max=1000, help="How many results."),
    modality: Target = typer.Option(Target.all, "--modality", help="What to search among."),
    min_confidence: float | None = typer.Option(None, "--min-confidence", min=0.0, max=1.0,
                                                help="Confidence needed to call the best hit a match "
                                                     "(default: the calibration's, 0.5)."),
    no_generate: bool = typer.Option(False, "--no-generate", help="Never draw a picture when nothing matches."),
    always_generate: bool = typer.Option(False, "--always-generate", help="Draw a picture even when something "
                                                                          "matches."),
    keep_generated: bool = typer.Option(False, "--keep-generated", help="Add the drawn picture to the collection "
                                                                        "(its results are marked generated)."),
    generator: str | None = GeneratorOption,
    under: list[Path] = typer.Option([], "--under", help="Only files in this folder (repeatable)."),
    file_type: list[str] = typer.Option([], "--type", help="Only this file type: jpeg, png, wav, ... (repeatable)."),
    since: str | None = typer.Option(None, "--since", help="Only files modified on or after this date "
                                                          "(YYYY-MM-DD or an ISO date-time)."),
    until: str | None = typer.Option(None, "--until", help="Only files modified up to this date, inclusive."),
    as_json: bool = JsonOption,
) -> None:
    """Search the collection with TEXT, --image FILE or --audio FILE; say whether anything matches, and when
    nothing does, draw a picture of what was asked (labelled generated; kept under DB/generated).
    Filters (--under, --type, --since, --until, --modality) apply inside the search: k results come back
    whenever k files pass them."""
    given = [name for name, value in (("TEXT", text), ("--image", image), ("--audio", audio)) if value is not None]
    if len(given) != 1:
        raise fail("give exactly one query: TEXT, --image FILE or --audio FILE", EXIT_USAGE)
    if no_generate and always_generate:
        raise fail("--no-generate and --always-generate contradict each other", EXIT_USAGE)
    if no_generate and keep_generated:
        raise fail("--keep-generated keeps a drawn picture, and --no-generate draws none", EXIT_USAGE)
    generate = "never" if no_generate else "always" if always_generate else "auto"
    from retrieval.compose import build_engine
    from retrieval.filters import build_filter

    where = build_filter([os.path.abspath(os.path.expanduser(folder)) for folder in under], file_type, since, until)
    settings = _settings(db, model, generator=generator)
    engine = build_engine(settings)
    kept = False
    try:
        if text is not None:
            result = engine.search_text(text, k, modality.value, min_confidence, generate, where)
        elif image is not None:
            result = engine.search_file(image, "image", k, modality.value, min_confidence, generate, where)
        else:
            result = engine.search_file(audio, "audio", k, modality.value, min_confidence, generate, where)
        if keep_generated and result.generated_path:
            from retrieval.compose import keep_generated as keep

            kept = keep(settings, engine.encoder, Path(result.generated_path)).failures == []
    finally:
        engine.close()
    if as_json:
        output.print_json({**result.to_dict(), **({"kept": kept} if keep_generated else {})})
    else:
        output.print_search(result, filtered=where is not None)
        if kept:
            output.stdout.print("  kept: the picture is in the collection now, marked generated in results",
                                highlight=False)


@app.command()
@translate_errors
def info(db: Path | None = DbOption, as_json: bool = JsonOption) -> None:
    """Model, counts per modality, index specs, size on disk and error count of a collection."""
    from retrieval.compose import collection_info

    details = collection_info(_settings(db))
    if as_json:
        output.print_json(details.to_dict())
        return
    rows = [
        ("collection", details.db_dir),
        ("model", f"{details.model} (dim {details.dim})"),
        ("images", f"{details.items['image']} items, {details.vectors['image']} vectors"),
        ("sounds", f"{details.items['audio']} items, {details.vectors['audio']} vectors (pooled + windows)"),
        ("indexes", ", ".join(f"{m}: {spec}{_tuning(details.index_tuning.get(m))}"
                              for m, spec in details.index_specs.items()) or "not built yet"),
        ("generation", f"{details.generation}" + ("" if details.index_current else " (stale: rebuilt on next use)")),
        ("size on disk", output.format_bytes(details.disk_bytes)),
        ("errors", f"{details.errors} files skipped (see `xmodal errors`)"),
    ]
    for name, value in rows:
        output.stdout.print(f"{name:>13}  {value}", highlight=False)


@app.command()
@translate_errors
def errors(
    db: Path | None = DbOption,
    error_class: str | None = typer.Option(None, "--class", help="Only this class, e.g. CORRUPT."),
    as_json: bool = JsonOption,
) -> None:
    """The error ledger: files that were skipped, why, and when they were first and last seen."""
    from retrieval.compose import list_errors

    records = list_errors(_settings(db), error_class.upper() if error_class else None)
    if as_json:
        output.print_json([vars(r) for r in records])
        return
    if not records:
        output.stdout.print("no skipped files")
        return
    for record in records:
        seen = datetime.fromtimestamp(record.last_seen).strftime("%Y-%m-%d %H:%M")
        output.stdout.print(f"{record.error_class:<11} {seen}  {record.path}: {record.message}", highlight=False)


def _register_groups() -> None:
    from cli import bench, data, demo, models, serve, train

    app.add_typer(models.model_app, name="model")
    app.command("models")(models.list_models)
    app.add_typer(data.data_app, name="data")
    app.add_typer(bench.bench_app, name="bench")
    app.add_typer(train.train_app, name="train")
    app.command("eval")(train.evaluate)
    app.command("calibrate")(train.calibrate)
    app.command("demo")(demo.demo)
    app.command("serve")(serve.serve)


_register_groups()


def run() -> None:
    app()
