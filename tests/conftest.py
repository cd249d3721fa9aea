"""Shared fixtures: a micro model with random (BatchNorm-calibrated) weights, generated media
folders, and a helper that runs the real `xmodal` command in a subprocess. No network anywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="session")
def _offline_environment():
    # Tests never touch the network; a pretrained spec must fail fast instead of retrying.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("XMODAL_DEVICE", "cpu")
    yield


@pytest.fixture(scope="session")
def micro_model(tmp_path_factory) -> Path:
    """A micro model directory (JSON config + safetensors), untrained but calibrated."""
    from retrieval.encoders import init_model_dir

    path = tmp_path_factory.mktemp("models") / "micro"
    init_model_dir(path, "micro", seed=0)
    return path


@pytest.fixture(scope="session")
def micro_encoder(micro_model):
    from retrieval.encoders import create_encoder

    return create_encoder(str(micro_model), device="cpu")


@pytest.fixture(scope="session")
def sample_folder(tmp_path_factory) -> Path:
    """A small generated media folder with the hostile corpus (read-only for tests: copy to modify)."""
    from retrieval.data.samples import generate_sample_folder

    path = tmp_path_factory.mktemp("sample") / "media"
    generate_sample_folder(path, images=24, sounds=8, hostile=True, seed=0)
    return path


def run_xmodal(*args: str, check: bool = False, timeout: float = 300,
               env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real CLI (`python -m cli`) and capture its output."""
    environment = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    result = subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True,
                            timeout=timeout, env=environment, cwd=REPO)
    if check and result.returncode != 0:
        raise AssertionError(f"xmodal {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def run_json(*args: str, **kwargs):
    result = run_xmodal(*args, "--json", check=True, **kwargs)
    return json.loads(result.stdout)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """The demo collection (`xmodal demo`): 240 images and 120 sounds indexed with the starter model."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    run_xmodal("demo", "--out", str(out), check=True, timeout=300)
    return out
