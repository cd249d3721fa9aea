"""Model directories on disk: JSON config plus `.safetensors` weights, and nothing else is loaded.

Pickle-based checkpoints (`.pt`, `.pth`, `.bin`, `.ckpt`, `.pkl`) can run code when loaded; they are
refused without being opened, even if they sit next to a valid config.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from index.atomic import sha256_file, write_atomic, write_bytes_atomic
from retrieval.encoders.config import CONFIG_NAME, WEIGHTS_NAME, ModelConfig
from retrieval.errors import ModelLoadError

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")


def load_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    """The tensors of `model_dir/model.safetensors`.

    Raises:
        ModelLoadError: the file is missing (pickles present are named and refused) or damaged.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(model_dir) / WEIGHTS_NAME
    if not path.is_file():
        pickles = sorted(p.name for p in Path(model_dir).iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise ModelLoadError(
                f"refusing to load {', '.join(pickles)} from {model_dir}: pickle checkpoints can execute code; "
                f"only {WEIGHTS_NAME} is ever loaded (convert with safetensors.torch.save_file)"
            )
        raise ModelLoadError(f"{model_dir} has no {WEIGHTS_NAME}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelLoadError(f"{path} is damaged or not a safetensors file: {error}") from None


def split_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under `prefix.` with the prefix removed."""
    cut = len(prefix) + 1
    return {key[cut:]: value for key, value in state.items() if key.startswith(prefix + ".")}


def load_module_state(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, model_dir: Path) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        summary = str(error).splitlines()[0]
        raise ModelLoadError(f"{what} weights in {model_dir} do not match its config: {summary}") from None


def save_model_dir(
    model_dir: Path,
    config: ModelConfig,
    modules: dict[str, torch.nn.Module],
    dtype: torch.dtype | None = None,
) -> None:
    """Write config and weights (modules saved under their prefix, e.g. {"clip": ..., "audio": ...}).

    `dtype=torch.float16` halves the file (the shipped starter); floats are widened again on load.
    """
    from safetensors.torch import save_file

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    state = {
        f"{prefix}.{key}": _stored(tensor, dtype)
        for prefix, module in modules.items()
        for key, tensor in module.state_dict().items()
    }
    write_atomic(model_dir / WEIGHTS_NAME, lambda temp: save_file(state, str(temp), metadata={"format": "pt"}))
    write_bytes_atomic(model_dir / CONFIG_NAME, (json.dumps(config.to_dict(), indent=2) + "\n").encode())


def _stored(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    tensor = tensor.detach().cpu()
    if dtype is not None and tensor.is_floating_point():
        tensor = tensor.to(dtype)
    return tensor.contiguous().clone()


def fingerprint_dir(model_dir: Path) -> str:
    """Changes whenever the config or the weights change; stored with every index built from it."""
    config_bytes = (Path(model_dir) / CONFIG_NAME).read_bytes()
    digest = hashlib.sha256(config_bytes)
    digest.update(sha256_file(Path(model_dir) / WEIGHTS_NAME).encode())
    return digest.hexdigest()[:32]
