"""`xmodal bench load`, short: the real server under mixed text, image, audio and drawing queries
while `xmodal index` adds files to the collection it serves. No 5xx, no transport error, no file
lost, and the server serves every item at the end. The few-minute run is the same command with
`--seconds 180` (its figures are in RELIABILITY.md)."""

from __future__ import annotations

import json

import pytest

from retrieval.encoders.factory import STARTER_DIR
from tests.conftest import run_xmodal

pytestmark = pytest.mark.skipif(not (STARTER_DIR / "xmodal_model.json").is_file(),
                                reason="the starter weights are not in this checkout")


def test_a_short_load_run_loses_nothing_and_never_answers_5xx(tmp_path):
    figures = tmp_path / "load.json"
    result = run_xmodal("bench", "load", "--work", str(tmp_path / "work"), "--seconds", "10", "--clients", "4",
                        "--images", "16", "--sounds", "6", "--batch", "4", "--json", str(figures), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(figures.read_text())
    assert report["passed"] and report["five_xx"] == 0 and report["transport_errors"] == 0
    assert report["files_lost"] == [] and report["index_rounds"] >= 1 and report["files_added"] >= 4
    assert report["server_items_after"] == report["store_items_after"] == 22 + report["files_added"]
    served = {row["kind"]: row for row in report["rows"]}
    assert {"text", "image", "audio"} <= set(served)
    for row in served.values():
        assert set(row["statuses"]) <= {"200", "429"} and row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
    assert "p95 ms" in result.stdout and "PASS" in result.stdout
