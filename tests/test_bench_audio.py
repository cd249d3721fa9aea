"""`xmodal bench audio`: both stages are measured on the same clips and reported per batch size.
Speeds are figures for the benchmark, never asserted here."""

from __future__ import annotations

import json

from retrieval.bench.audio_bench import BATCHES, run_audio_benchmark


def test_the_audio_benchmark_reports_features_and_tower(micro_model):
    report = run_audio_benchmark(str(micro_model), clips=8, clip_seconds=2.0, repeats=2)
    assert len(report.feature_realtime) == 2 and min(report.feature_realtime) > 0
    assert list(report.tower_clips_per_second) == list(BATCHES)
    assert all(len(rates) == 2 and min(rates) > 0 for rates in report.tower_clips_per_second.values())
    body = json.loads(report.to_json())
    assert body["clips"] == 8 and body["clip_seconds"] == 2.0 and "librosa" in body["versions"]
    assert set(body["tower_clips_per_second_median"]) == {str(b) for b in BATCHES}
    assert "× real time" in report.table()
