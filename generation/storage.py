"""Generator directories: `generator.json` (the config) and `model.safetensors` (the weights).
Nothing else is ever loaded: a pickle beside them is refused without being opened."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from generation.config import GeneratorConfig
from generation.errors import GeneratorLoadError
from generation.network import FlowUNet

CONFIG_NAME = "generator.json"
WEIGHTS_NAME = "model.safetensors"
_PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")


def save_generator(model: FlowUNet, folder: Path, dtype: torch.dtype = torch.float16) -> None:
    """Write the config and the weights (float16 by default: half the size, same pictures).

    The weights are written to a temporary name and renamed, so a reader never sees half a file.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().to("cpu", dtype).contiguous() for name, tensor in model.state_dict().items()}
    temporary = folder / f".{WEIGHTS_NAME}.tmp"
    save_file(state, str(temporary))
    os.replace(temporary, folder / WEIGHTS_NAME)
    (folder / CONFIG_NAME).write_text(model.config.to_json())


def load_generator(folder: Path, device: str | torch.device = "cpu") -> FlowUNet:
    """The generator in `folder`, in eval mode on `device`, weights widened to float32.

    Raises:
        GeneratorLoadError: no generator there, a damaged config or weights, or a pickle file in it.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    found = sorted(folder.iterdir()) if folder.is_dir() else []
    pickles = [path.name for path in found if path.suffix.lower() in _PICKLE_SUFFIXES]
    hint = f" (found {', '.join(pickles)}: pickles are never loaded)" if pickles else ""
    if not (folder / CONFIG_NAME).is_file():
        raise GeneratorLoadError(f"no generator in {folder}: {CONFIG_NAME} is missing{hint}")
    if not (folder / WEIGHTS_NAME).is_file():
        raise GeneratorLoadError(f"no generator weights in {folder}: {WEIGHTS_NAME} is missing{hint}")
    try:
        config = GeneratorConfig.from_json((folder / CONFIG_NAME).read_text())
    except (ValueError, TypeError) as error:
        raise GeneratorLoadError(f"{folder / CONFIG_NAME} is not a valid generator config: {error}") from None
    model = FlowUNet(config)
    try:
        state = load_file(str(folder / WEIGHTS_NAME))
    except (OSError, SafetensorError) as error:  # a pickle renamed .safetensors fails here, unexecuted
        raise GeneratorLoadError(f"{folder / WEIGHTS_NAME} is damaged or not a safetensors file: {error}") from None
    try:
        model.load_state_dict({name: tensor.float() for name, tensor in state.items()})
    except RuntimeError as error:
        raise GeneratorLoadError(f"{folder / WEIGHTS_NAME} does not fit {CONFIG_NAME}: {error}") from None
    return model.to(device).eval()
