"""Model files: only `.safetensors` and JSON are ever loaded. A pickle planted in a model or
generator directory, under any usual checkpoint name or disguised as `model.safetensors`, is refused
with a clear error, and its payload, which creates a sentinel file when unpickled, never runs:
through the encoder factory, the `xmodal` CLI's `--model DIR` and `--generator DIR`, the generator
loader, and pretrained open_clip pairs (a pickle in the Hugging Face cache or offered by the hub).
"""

from __future__ import annotations

import io
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from generation.config import GeneratorConfig
from generation.errors import GeneratorLoadError
from generation.network import FlowUNet
from generation.storage import load_generator, save_generator
from retrieval.encoders import create_encoder
from retrieval.errors import ModelLoadError, WeightsUnavailableError
from tests.conftest import run_xmodal

TINY = GeneratorConfig(cond_dim=8, image_size=16, channels=16, channel_mults=(1, 2), embed_dim=32, groups=4, steps=2)


class Payload:
    """Unpickling this creates `sentinel`: proof that a pickle was executed."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (Path.touch, (self.sentinel,))


def pickle_bytes(sentinel: Path) -> bytes:
    return pickle.dumps({"state_dict": {"weight": Payload(sentinel)}})


def torch_zip_bytes(sentinel: Path) -> bytes:
    """What torch.save writes (a zip around data.pkl): the usual pytorch_model.bin."""
    buffer = io.BytesIO()
    torch.save({"state_dict": {"weight": Payload(sentinel)}}, buffer)
    return buffer.getvalue()


PLANTED = ["pytorch_model.bin", "model.pt", "open_clip_model.pt", "open_clip_pytorch_model.bin", "last.ckpt",
           "weights.pth", "model.pkl", "MODEL.PT"]


@pytest.fixture
def tripwire(monkeypatch):
    """Fail the test the moment anything unpickles or torch.loads a file, whatever the payload."""
    def refuse(*_args, **_kwargs):
        raise AssertionError("a pickle was opened")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)


def test_the_payload_really_runs_when_unpickled(tmp_path):
    """The sentinel proves something only if a naive load would create it."""
    for make in (pickle_bytes, torch_zip_bytes):
        sentinel = tmp_path / f"ran-{make.__name__}"
        data = make(sentinel)
        if make is torch_zip_bytes:
            torch.load(io.BytesIO(data), weights_only=False)
        else:
            pickle.loads(data)
        assert sentinel.exists()


# --- model directories through the encoder factory -----------------------------------------------------


@pytest.mark.parametrize("name", PLANTED)
def test_a_pickle_instead_of_the_weights_is_refused_by_name(tmp_path, micro_model, tripwire, name):
    model_dir = tmp_path / "model"
    shutil.copytree(micro_model, model_dir)
    (model_dir / "model.safetensors").unlink()
    sentinel = tmp_path / "pwned"
    (model_dir / name).write_bytes(torch_zip_bytes(sentinel) if name.endswith(".bin") else pickle_bytes(sentinel))
    with pytest.raises(ModelLoadError, match=f"refusing to load {name}.*pickle checkpoints can execute code"):
        create_encoder(str(model_dir))
    assert not sentinel.exists()


@pytest.mark.parametrize("disguise", ["pickle", "torch zip"])
def test_a_pickle_named_model_safetensors_is_refused(tmp_path, micro_model, tripwire, disguise):
    model_dir = tmp_path / "model"
    shutil.copytree(micro_model, model_dir)
    sentinel = tmp_path / "pwned"
    make = pickle_bytes if disguise == "pickle" else torch_zip_bytes
    (model_dir / "model.safetensors").write_bytes(make(sentinel))
    with pytest.raises(ModelLoadError, match="damaged or not a safetensors file"):
        create_encoder(str(model_dir))
    assert not sentinel.exists()


def test_a_pickle_beside_valid_weights_is_never_opened(tmp_path, micro_model, tripwire):
    model_dir = tmp_path / "model"
    shutil.copytree(micro_model, model_dir)
    sentinel = tmp_path / "pwned"
    for name in PLANTED:
        (model_dir / name).write_bytes(pickle_bytes(sentinel))
    encoder = create_encoder(str(model_dir), device="cpu")
    assert encoder.encode_text(["a red circle"]).shape[0] == 1
    assert not sentinel.exists()


def test_a_pickle_as_the_json_config_is_refused(tmp_path, micro_model, tripwire):
    model_dir = tmp_path / "model"
    shutil.copytree(micro_model, model_dir)
    sentinel = tmp_path / "pwned"
    (model_dir / "xmodal_model.json").write_bytes(pickle_bytes(sentinel))
    with pytest.raises(ModelLoadError, match="cannot read"):
        create_encoder(str(model_dir))
    assert not sentinel.exists()


# --- pretrained open_clip pairs ----------------------------------------------------------------------------


def test_a_pickle_in_the_hub_cache_is_not_a_cached_checkpoint(tmp_path, monkeypatch, tripwire):
    """Before, a cached open_clip_pytorch_model.bin (or OpenAI's .pt) counted as the checkpoint and
    open_clip torch.loaded it."""
    import huggingface_hub
    import open_clip

    from retrieval.encoders.pretrained import cached_checkpoint

    sentinel = tmp_path / "pwned"
    planted = tmp_path / "open_clip_pytorch_model.bin"
    planted.write_bytes(torch_zip_bytes(sentinel))
    asked: list[str] = []

    def fake_cache(repo_id, filename, *args, **kwargs):
        asked.append(filename)
        return str(planted) if filename.endswith((".bin", ".pt", ".pth")) else None

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", fake_cache)
    assert cached_checkpoint(open_clip.get_pretrained_cfg("ViT-B-32", "laion2b_s34b_b79k")) is None
    assert cached_checkpoint(open_clip.get_pretrained_cfg("ViTamin-S", "datacomp1b")) is None
    assert asked and all(name.endswith(".safetensors") for name in asked)
    with pytest.raises(WeightsUnavailableError):  # offline in tests: not cached, cannot download
        create_encoder("ViT-B-32:laion2b_s34b_b79k")
    assert not sentinel.exists()


def test_a_pickle_offered_by_the_hub_is_refused(tmp_path, monkeypatch, tripwire):
    import open_clip

    from retrieval.encoders import pretrained

    sentinel = tmp_path / "pwned"
    planted = tmp_path / "open_clip_pytorch_model.bin"
    planted.write_bytes(torch_zip_bytes(sentinel))
    monkeypatch.setattr(pretrained, "hub_reachable", lambda: True)
    monkeypatch.setattr(pretrained, "cached_checkpoint", lambda cfg: None)
    monkeypatch.setattr(open_clip, "download_pretrained", lambda cfg, **kwargs: str(planted))
    with pytest.raises(ModelLoadError, match="only as a pickle checkpoint.*never loads"):
        create_encoder("ViT-B-32:laion2b_s34b_b79k")
    assert not sentinel.exists()


# --- generator directories -------------------------------------------------------------------------------


@pytest.fixture
def generator_dir(tmp_path) -> Path:
    torch.manual_seed(0)
    folder = tmp_path / "generator"
    save_generator(FlowUNet(TINY), folder)
    return folder


@pytest.mark.parametrize("name", PLANTED)
def test_a_generator_with_a_pickle_for_weights_is_refused(tmp_path, generator_dir, tripwire, name):
    sentinel = tmp_path / "pwned"
    (generator_dir / "model.safetensors").unlink()
    (generator_dir / name).write_bytes(pickle_bytes(sentinel))
    with pytest.raises(GeneratorLoadError, match=f"model.safetensors is missing \\(found {name}: pickles are never"):
        load_generator(generator_dir)
    assert not sentinel.exists()


@pytest.mark.parametrize("disguise", ["pickle", "torch zip"])
def test_a_generator_whose_safetensors_is_a_pickle_is_refused(tmp_path, generator_dir, tripwire, disguise):
    sentinel = tmp_path / "pwned"
    make = pickle_bytes if disguise == "pickle" else torch_zip_bytes
    (generator_dir / "model.safetensors").write_bytes(make(sentinel))
    with pytest.raises(GeneratorLoadError, match="damaged or not a safetensors file"):
        load_generator(generator_dir)
    assert not sentinel.exists()


def test_a_pickle_beside_a_valid_generator_is_never_opened(tmp_path, generator_dir, tripwire):
    sentinel = tmp_path / "pwned"
    for name in PLANTED:
        (generator_dir / name).write_bytes(pickle_bytes(sentinel))
    assert load_generator(generator_dir).config == TINY
    assert not sentinel.exists()


# --- the CLI: --model DIR and --generator DIR ----------------------------------------------------------------


def _one_line_error(result) -> str:
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_cli_refuses_a_model_dir_holding_only_a_pickle(tmp_path, micro_model):
    model_dir = tmp_path / "model"
    shutil.copytree(micro_model, model_dir)
    (model_dir / "model.safetensors").unlink()
    sentinel = tmp_path / "pwned"
    (model_dir / "pytorch_model.bin").write_bytes(torch_zip_bytes(sentinel))
    media = tmp_path / "media"
    media.mkdir()
    result = run_xmodal("index", str(media), "--db", str(tmp_path / "db"), "--model", str(model_dir))
    assert result.returncode == 4
    assert "refusing to load pytorch_model.bin" in _one_line_error(result)
    assert not sentinel.exists()


def test_cli_refuses_a_generator_dir_whose_weights_are_a_pickle(tmp_path, micro_model):
    from PIL import Image

    media = tmp_path / "media"
    media.mkdir()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(media / "red.png")
    db = tmp_path / "db"
    run_xmodal("index", str(media), "--db", str(db), "--model", str(micro_model), "--workers", "1", check=True)
    generator = tmp_path / "generator"
    save_generator(FlowUNet(GeneratorConfig(cond_dim=16, image_size=16, channels=16, channel_mults=(1, 2),
                                            embed_dim=32, groups=4)), generator)
    sentinel = tmp_path / "pwned"
    (generator / "model.safetensors").write_bytes(pickle_bytes(sentinel))
    result = run_xmodal("search", "a red square", "--db", str(db), "--generator", str(generator))
    assert result.returncode == 4
    assert "cannot use the generator" in _one_line_error(result)
    assert "not a safetensors file" in result.stderr
    assert not sentinel.exists()
