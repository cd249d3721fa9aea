"""`xmodal bench index`: the rates it prints are of runs that indexed every file."""

from __future__ import annotations

import json

from retrieval.bench.index_bench import run_index_benchmark


def test_a_jpeg_only_bench_reports_the_host_side_of_the_gpu_road(tmp_path):
    report = run_index_benchmark("micro", images=40, repeats=1, workers=1, jpeg_only=True, batch_size=16)
    assert (report.files, report.images) == (40, 40)
    table = report.table()
    line = next(row for row in table.splitlines() if row.startswith("host side of the GPU JPEG road"))
    rate = float(line.rsplit(":", 1)[1].split()[0])
    assert rate > 0 and rate == round(report.rate(report.host_seconds), 1)
    figures = json.loads(report.to_json())
    assert figures["host_rate"] > 0 and len(figures["host_seconds"]) == 1
    # A folder with sounds has no GPU JPEG road: no such line.
    mixed = run_index_benchmark("micro", images=4, sounds=2, repeats=1, workers=1, hostile=False)
    assert mixed.host_seconds == [] and "host side" not in mixed.table()
