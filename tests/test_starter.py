"""The shipped starter model and `xmodal demo`: what a user gets on a fresh, offline machine."""

from __future__ import annotations

import json
import re

import pytest

from retrieval.encoders.factory import STARTER_DIR
from tests.conftest import run_json, run_xmodal

pytestmark = pytest.mark.skipif(not (STARTER_DIR / "xmodal_model.json").is_file(),
                                reason="the starter weights are not in this checkout")


def test_starter_is_small_documented_and_safetensors_only():
    files = {p.name for p in STARTER_DIR.iterdir()}
    assert {"xmodal_model.json", "model.safetensors", "README.md", "eval.json"} <= files
    assert not any(name.endswith((".pt", ".pth", ".bin", ".ckpt", ".pkl")) for name in files)
    assert sum(p.stat().st_size for p in STARTER_DIR.iterdir()) <= 25 * 2**20
    card = (STARTER_DIR / "README.md").read_text()
    assert "xmodal train starter" in card and "Training time" in card and "NOT met" not in card


def test_starter_understands_a_freshly_generated_world(tmp_path):
    """A corpus the starter never saw (another seed): words find the right pictures and sounds."""
    run_xmodal("data", "synth", str(tmp_path / "corpus"), "--n", "400", "--seed", "123", check=True)
    report = run_json("eval", "--model", "starter", "--pairs", str(tmp_path / "corpus" / "pairs.jsonl"))
    figures = report["directions"]
    # A 40-item gallery is small, so these floors sit well under the 1,000-item targets of the card.
    assert figures["text→image"]["R@1"] >= 0.85
    assert figures["image→text"]["R@1"] >= 0.85
    assert figures["audio→image"]["R@1"] >= 0.75


def test_demo_indexes_searches_and_writes_a_report(tmp_path):
    out = tmp_path / "demo"
    result = run_xmodal("demo", "--out", str(out), check=True, timeout=240)
    report = (out / "report.html").read_text()
    assert report.count("<section>") == 9
    assert report.count('<audio controls') == 3 + 2 * 5  # three query sounds, two queries ranking sounds
    for src in re.findall(r'src="([^"]+)"', report):  # every link of the page resolves
        assert (out / src).is_file(), src
    # Present concepts asked in words come back first, shown by their file names.
    blocks = [block.strip() for block in result.stdout.split("\n\n")]
    text_to_image = [b for b in blocks if b.startswith("text → image") and "absent" not in b]
    firsts = [b.splitlines()[1] for b in text_to_image]
    assert len(firsts) == 4 and all("✓" in line for line in firsts), result.stdout
    assert json.loads((out / "xmodal-demo.json").read_text())["model"] == "starter"
    # The absent concept is called out as such, and a labelled picture is drawn in its place.
    absent = next(b for b in blocks if "absent" in b)
    assert "NO GOOD MATCH" in absent and all("NO GOOD MATCH" not in b for b in text_to_image)
    if (STARTER_DIR / "generator" / "generator.json").is_file():
        assert "generated instead: db/generated/" in absent and report.count("Generated, not from the collection") == 1
    # A second run replaces the first; a folder that is not a demo is never overwritten.
    run_xmodal("demo", "--out", str(out), check=True, timeout=240)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("mine")
    refused = run_xmodal("demo", "--out", str(tmp_path / "mine"))
    assert refused.returncode == 2 and (tmp_path / "mine" / "keep.txt").read_text() == "mine"
