"""`xmodal bench ...`: benchmarks that print figures (part 5 grows the suite)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from cli import output
from cli.errors import translate_errors


class FsddSplit(str, Enum):
    takes = "takes"
    speaker = "speaker"


def _emit(report, json_out: Path | None) -> None:
    """Print a benchmark's table, and write its JSON when asked."""
    output.stdout.print(report.table(), highlight=False)
    if json_out:
        json_out.write_text(report.to_json())


bench_app = typer.Typer(help="Benchmarks that print tables and write JSON.", no_args_is_help=True)
JsonOutOption = typer.Option(None, "--json", help="Also write the figures here.")
# Speed depends on a model's shape, not its weights: a preset or architecture name measures untrained
# weights of that shape, which is how ViT-B-32 is measured offline.
PresetModelOption = typer.Option("small", "--model", "-m", help="A model spec, or a preset or open_clip architecture "
                                                                "name (micro, small, ViT-B-32) for untrained weights "
                                                                "of that shape.")


class BenchSize(str, Enum):
    ci = "ci"
    full = "full"


@bench_app.command("search")
@translate_errors
def bench_search(
    size: BenchSize = typer.Option(BenchSize.ci, "--size", help="ci: 100k vectors, seconds on two cores; "
                                                                 "full: 1M vectors, for real measurement."),
    n: int | None = typer.Option(None, "--n", min=1000, help="Override the number of vectors."),
    dim: int = typer.Option(512, "--dim", min=8),
    spec: list[str] = typer.Option([], "--spec", help="Also measure this FAISS factory string (repeatable), "
                                                      "e.g. IDMap2,HNSW32."),
    repeats: int = typer.Option(5, "--repeats", min=1),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("cpu", "--device", help="cuda: exact search on the GPU over 10M vectors (full) "
                                                       "against its memory bandwidth, beside numpy and FAISS."),
    json_out: Path | None = JsonOutOption,
) -> None:
    """Vector search side by side: numpy brute force, exact FAISS and the index xmodal would choose."""
    def say(text: str) -> None:
        output.stderr.print(text, highlight=False)

    if device.startswith("cuda"):
        from retrieval.bench.gpu_search_bench import run_gpu_search_benchmark

        gpu_n = n or (10_000_000 if size == BenchSize.full else 1_000_000)
        report = run_gpu_search_benchmark(gpu_n, dim, repeats, seed=seed, progress=say)
    else:
        from retrieval.bench.search_bench import run_search_benchmark

        report = run_search_benchmark(size.value, dim, seed, repeats, tuple(spec), n, say)
    _emit(report, json_out)


@bench_app.command("audio")
@translate_errors
def bench_audio(
    model: str = PresetModelOption,
    clips: int = typer.Option(64, "--clips", min=1),
    seconds: float = typer.Option(5.0, "--seconds", min=0.5, max=600.0, help="Length of each clip."),
    repeats: int = typer.Option(5, "--repeats", min=1),
    json_out: Path | None = JsonOutOption,
) -> None:
    """Audio feature extraction as × real time per core, and audio tower clips/s against batch size."""
    from retrieval.bench.audio_bench import run_audio_benchmark

    _emit(run_audio_benchmark(model, clips, seconds, repeats), json_out)


@bench_app.command("encode")
@translate_errors
def bench_encode(
    model: str = PresetModelOption,
    size: BenchSize = typer.Option(BenchSize.ci, "--size", help="ci: batches 1, 8, 32; full: up to 512."),
    repeats: int = typer.Option(5, "--repeats", min=1),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda (default: cuda when present)."),
    peak_tflops: float | None = typer.Option(None, "--peak-tflops", min=0.001,
                                             help="The device's dense bf16 peak, for MFU (known for H100/H200/A100)."),
    precision: str = typer.Option("autocast", "--precision", help="On CUDA: autocast (bf16 autocast, what "
                                                                 "indexing uses) or bf16 (bf16 weights)."),
    compile_towers: bool = typer.Option(False, "--compile", help="Run the towers through torch.compile."),
    json_out: Path | None = JsonOutOption,
) -> None:
    """Image and text tower throughput against batch size, achieved TFLOP/s and, on a GPU, MFU."""
    from retrieval.bench.encode_bench import run_encode_benchmark

    if precision not in ("autocast", "bf16"):
        raise typer.BadParameter("--precision must be autocast or bf16")
    _emit(run_encode_benchmark(model, size.value, repeats, device, peak_tflops, precision, compile_towers), json_out)


@bench_app.command("index")
@translate_errors
def bench_index(
    model: str = PresetModelOption,
    images: int = typer.Option(200, "--images", min=1),
    sounds: int = typer.Option(50, "--sounds", min=0),
    workers: int | None = typer.Option(None, "--workers", min=1),
    repeats: int = typer.Option(3, "--repeats", min=1),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda: where the encoder runs."),
    jpeg_only: bool = typer.Option(False, "--jpeg-only", help="A folder of --images JPEGs and nothing else."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Images per encoder call."),
    json_out: Path | None = JsonOutOption,
) -> None:
    """End-to-end indexing rate beside the decode-only and encode-only rates it is bounded by."""
    from retrieval.bench.index_bench import run_index_benchmark

    report = run_index_benchmark(model, images, sounds, workers, repeats, device=device, jpeg_only=jpeg_only,
                                 batch_size=batch_size)
    _emit(report, json_out)


@bench_app.command("fsdd")
@translate_errors
def bench_fsdd(
    data: Path | None = typer.Option(None, "--data", envvar="XMODAL_FSDD",
                                     help="The FSDD folder (holding recordings/); by default ../shared/data/fsdd."),
    out: Path | None = typer.Option(None, "--out", help="Work folder: pairs, scans and the trained models; rebuilt "
                                                         "on every run (default ~/.cache/xmodal/bench-fsdd/SPLIT)."),
    split: FsddSplit = typer.Option(FsddSplit.takes, "--split", help="takes: takes 0-4 are the test set "
                                                                     "(standard); speaker: --speaker is the test set."),
    speaker: str = typer.Option("theo", "--speaker", help="The test speaker of --split speaker."),
    epochs_clip: int = typer.Option(5, "--epochs-clip", min=1, help="Epochs of the image and text towers."),
    epochs_audio: int = typer.Option(15, "--epochs-audio", min=1, help="Epochs of the audio tower."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="A quick run: at most N recordings per digit, "
                                                                  "speaker and split; N scans per digit and split."),
    arch: str = typer.Option("starter", "--arch", help="Architecture of the image and text towers (a preset)."),
    seed: int = typer.Option(0, "--seed"),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda (default: cuda when present)."),
    workers: int | None = typer.Option(None, "--workers", min=1, max=64, help="Decode processes."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the figures here: a file, or a folder "
                                                              "(e.g. docs/results) that gets bench-fsdd-SPLIT.json."),
) -> None:
    """Spoken digit → handwritten digit on real data (FSDD recordings, scikit-learn's scans): build pairs, train
    image/text then audio towers, report every direction on the test split."""
    from cli.train import print_report, training_reporter
    from retrieval.bench import fsdd

    options = fsdd.FsddOptions(split=split.value, speaker=speaker, limit=limit, epochs_clip=epochs_clip,
                               epochs_audio=epochs_audio, architecture=arch, seed=seed, device=device, workers=workers)
    data = data if data is not None else fsdd.default_data()
    try:
        fsdd.select_recordings(data, options.split, speaker, limit)  # a bad --speaker fails here, before torch loads
    except fsdd.DatasetNotFoundError:
        output.stdout.print(f"skipped: FSDD recordings not found at {data} (see ../shared/data/README.md)",
                            highlight=False)
        return

    def stage(line: str) -> None:
        output.stderr.print(line, highlight=False)

    with training_reporter("training") as (_loading, on_event):
        report = fsdd.run_fsdd_benchmark(data, out or fsdd.default_out(options), options, stage, on_event)
    for line in report.summary():
        output.stdout.print(line, highlight=False)
    print_report(report.evaluation)
    for line in report.headline():
        output.stdout.print(line, highlight=False)
    output.stdout.print(f"model: {report.model} (README.md: licences, attribution and figures)", highlight=False)
    if json_out:
        target = fsdd.json_target(json_out, options)
        target.write_text(report.to_json())
        output.stdout.print(f"figures written to {target}", highlight=False)


@bench_app.command("api")
@translate_errors
def bench_api(
    db: Path | None = typer.Option(None, "--db", envvar="XMODAL_DB", help="Collection to serve; default: one "
                                   "built for the run like the demo's (--images, --sounds; starter model)."),
    requests: int = typer.Option(400, "--requests", min=10, help="Requests per concurrency level."),
    concurrency: list[int] = typer.Option([1, 8], "--concurrency", "-c", min=1, max=256,
                                          help="Concurrent clients (repeatable)."),
    k: int = typer.Option(10, "-k", min=1, max=1000),
    images: int = typer.Option(240, "--images", min=8, help="Pictures in the collection built without --db."),
    sounds: int = typer.Option(120, "--sounds", min=0, help="Sounds in the collection built without --db."),
    json_out: Path | None = JsonOutOption,
) -> None:
    """`/search/text` p50/p99 over real HTTP at each concurrency, beside in-process search and `/health`."""
    from retrieval.bench.api_bench import run_api_benchmark

    report = run_api_benchmark(db, requests, tuple(concurrency), k, images, sounds,
                               say=lambda line: output.stderr.print(line, highlight=False))
    _emit(report, json_out)


@bench_app.command("load")
@translate_errors
def bench_load(
    work: Path = typer.Option(..., "--work", help="An empty folder for the collection, its growth and the server log."),
    seconds: float = typer.Option(180.0, "--seconds", min=5, help="How long to send queries."),
    clients: int = typer.Option(8, "--clients", "-c", min=1, max=256, help="Concurrent HTTP clients."),
    images: int = typer.Option(240, "--images", min=8, help="Pictures in the collection at the start."),
    sounds: int = typer.Option(120, "--sounds", min=4, help="Sounds in the collection at the start."),
    batch: int = typer.Option(12, "--batch", min=2, help="Files added per indexing round while serving."),
    json_out: Path | None = JsonOutOption,
) -> None:
    """Mixed text, image and audio queries against `xmodal serve` while `xmodal index` adds files:
    p50/p95/p99 per kind, status counts, 5xx and files lost (exit 1 unless both are zero)."""
    from retrieval.bench.load_bench import run_load_benchmark

    if work.exists() and any(work.iterdir()):
        raise typer.BadParameter(f"{work} is not empty", param_hint="--work")
    work.mkdir(parents=True, exist_ok=True)
    report = run_load_benchmark(work, seconds, clients, images, sounds, batch,
                                say=lambda line: output.stderr.print(line, highlight=False))
    _emit(report, json_out)
    if not report.passed:
        raise typer.Exit(1)


@bench_app.command("generate")
@translate_errors
def bench_generate(
    generator: Path | None = typer.Option(None, "--generator", help="A generator directory (generator.json + "
                                          "weights); default: the model's own (MODEL_DIR/generator)."),
    model: str = typer.Option("starter", "--model", "-m", help="The embedding model the generator was trained for."),
    candidates: int = typer.Option(4, "--candidates", min=1, max=16, help="Pictures drawn per query; the best "
                                                                           "by cosine to the query is kept."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N absent concepts (a quick run)."),
    seed: int = typer.Option(0, "--seed"),
    json_out: Path | None = JsonOutOption,
) -> None:
    """Generate for concepts the demo collection lacks, from words and from sounds; judge each picture zero-shot."""
    from retrieval.bench.generation_bench import own_generator, run_generation_benchmark

    report = run_generation_benchmark(generator or own_generator(model), model, candidates, seed, limit)
    _emit(report, json_out)


@bench_app.command("decision")
@translate_errors
def bench_decision(
    calibration: Path = typer.Option(..., "--calibration", help="A calibration JSON (from `xmodal calibrate`)."),
    model: str = typer.Option(..., "--model", "-m", help="The model it was fitted for."),
    pairs: Path = typer.Option(..., "--pairs", help="A pairs file the calibration did not see (another corpus)."),
    split: str = typer.Option("test", "--split"),
    removed: float = typer.Option(0.25, "--removed", min=0.05, max=0.9),
    seed: int = typer.Option(1, "--seed", help="Which concepts are removed and which items are queries."),
    json_out: Path | None = JsonOutOption,
) -> None:
    """The match decision on fresh present/absent queries: calibrated AUROC and F1 at the default threshold,
    beside the raw cosine's AUROC and its best single cut."""
    import json

    from cli.train import print_decision_figures
    from retrieval.calibration import Calibration, check_calibration
    from retrieval.encoders.factory import create_encoder

    fitted = Calibration.from_json(calibration.read_text())
    encoder = create_encoder(model)
    with output.progress_bar("decoding media", True) as loading:
        figures = check_calibration(fitted, encoder, pairs, split, removed, seed, progress=loading)
    print_decision_figures(figures)
    if json_out:
        json_out.write_text(json.dumps({"calibration": str(calibration), "model": model, "pairs": str(pairs),
                                        "split": split, "removed": removed, "seed": seed, "figures": figures},
                                       indent=2, ensure_ascii=False) + "\n")
