"""`xmodal bench encode`: what it counts (FLOPs, including attention's fused fast path) and what it
reports. Speeds are figures for the benchmark, never asserted here."""

from __future__ import annotations

import json

import pytest
import torch

from retrieval.bench.encode_bench import BATCHES, _flops, run_encode_benchmark


def test_attention_is_counted_even_where_pytorch_fuses_it():
    attention = torch.nn.MultiheadAttention(64, 4, batch_first=True).eval()
    tokens = torch.randn(1, 10, 64)
    with torch.inference_mode():  # where the fused fast path would hide the projections
        counted = _flops(lambda: attention(tokens, tokens, tokens, need_weights=False))
    projections = 10 * 4 * 64 * 64  # q, k, v and out, per token
    scores_and_mix = 2 * 10 * 10 * 64  # QKᵀ and the weighted sum of V
    assert counted == 2 * (projections + scores_and_mix)


def test_the_encode_benchmark_reports_every_tower_and_batch(micro_model):
    report = run_encode_benchmark(str(micro_model), "ci", repeats=2, device="cpu")
    assert [(row.tower, row.batch) for row in report.rows] == [(t, b) for t in ("image", "text") for b in BATCHES["ci"]]
    assert all(len(row.items_per_second) == 2 and min(row.items_per_second) > 0 for row in report.rows)
    assert report.flops_per_item["image"] > 0 and report.flops_per_item["text"] > 0
    assert report.peak_tflops is None  # no MFU on a CPU: there is no honest peak to divide by
    body = json.loads(report.to_json())
    first = body["rows"][0]
    assert first["mfu"] is None
    assert first["achieved_tflops"] * 1e12 == pytest.approx(first["items_per_second"] * report.flops_per_item["image"])
    assert "GFLOP/item" in report.table()
