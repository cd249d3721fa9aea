"""`xmodal bench api` and `bench generate` run on a clean clone with no arguments: they build or
find what they measure themselves."""

from __future__ import annotations

import json

from tests.conftest import run_xmodal


def test_bench_api_without_a_collection_builds_one_serves_it_and_cleans_up(tmp_path):
    out = tmp_path / "api.json"
    result = run_xmodal("bench", "api", "--requests", "20", "-c", "1", "-c", "2", "--images", "8", "--sounds", "2",
                        "--json", str(out), env={"TMPDIR": str(tmp_path), "XMODAL_DB": ""}, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["model"] == "starter" and report["items"] == {"image": 8, "audio": 2}
    rows = {(row["name"], row["concurrency"]): row for row in report["rows"]}
    assert set(rows) == {("in-process search_text", 1), ("POST /search/text", 1), ("POST /search/text", 2),
                         ("GET /health", 1)}
    assert all(row["requests"] == 20 and row["p50_ms"] > 0 for row in rows.values())
    overhead = rows[("POST /search/text", 1)]["p50_ms"] - rows[("in-process search_text", 1)]["p50_ms"]
    assert report["overhead_ms_p50_c1"] == overhead
    assert "HTTP overhead at concurrency 1" in result.stdout
    assert not any(tmp_path.glob("xmodal-bench-api-*"))  # the collection built for the run is gone


def test_bench_api_serves_a_collection_named_relative_to_where_it_was_run(demo_dir, tmp_path):
    """The server runs in the package's folder: a relative --db must still name the caller's collection."""
    import os
    import shutil
    import subprocess
    import sys

    from tests.conftest import REPO

    shutil.copytree(demo_dir / "db", tmp_path / "db")
    out = tmp_path / "api.json"
    result = subprocess.run([sys.executable, "-m", "cli", "bench", "api", "--db", "db", "--requests", "10",
                             "-c", "1", "--json", str(out)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["items"] == {"image": 240, "audio": 120}


def test_bench_generate_defaults_to_the_model_s_own_generator(micro_model, tmp_path):
    from retrieval.bench.generation_bench import own_generator
    from retrieval.encoders.factory import STARTER_DIR

    assert own_generator("starter") == STARTER_DIR / "generator"  # what the demo and search draw with
    # A model without one says what to do, in one line, before loading anything.
    result = run_xmodal("bench", "generate", "--model", str(micro_model), "--limit", "1")
    assert result.returncode == 4
    assert "has no generator of its own" in result.stderr and "--generator DIR" in result.stderr
    assert "Traceback" not in result.stderr
