"""Pretrained open_clip towers: from open_clip's download cache, or downloaded when online.

Offline, Hugging Face's client retries for ~25 s before failing; we look in the cache first and,
if the weights are not there, probe the hub with a 3 s timeout so the user gets one clear line
instead of a long wait and a traceback.

Only `.safetensors` checkpoints are used, as for model directories: open_clip would torch.load a
cached `open_clip_pytorch_model.bin` (a pickle; weights_only narrows what it may build, but a
pickle is still executed by an unpickler), so such files are neither looked up nor loaded.
"""

from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlparse

from retrieval.encoders.config import ImagePreprocess
from retrieval.errors import ModelLoadError, ModelNotFoundError, WeightsUnavailableError

_PROBE_TIMEOUT_SECONDS = 3.0


def split_pair(spec: str) -> tuple[str, str]:
    arch, _, tag = spec.partition(":")
    return arch, tag


def is_open_clip_pair(spec: str) -> bool:
    import open_clip

    arch, tag = split_pair(spec)
    return bool(tag) and arch in open_clip.list_models()


def load_pretrained_clip(spec: str):
    """(model, tokenizer, ImagePreprocess) for "ARCH:TAG", downloading the weights if needed.

    Raises:
        ModelNotFoundError: unknown tag for a known architecture.
        WeightsUnavailableError: not cached and the hub cannot be reached.
    """
    import open_clip

    arch, tag = split_pair(spec)
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
        raise ModelNotFoundError(f"open_clip has no pretrained tag {tag!r} for {arch}; known tags: {tags}")
    checkpoint = cached_checkpoint(cfg)
    if checkpoint is None:
        if not hub_reachable():
            raise WeightsUnavailableError(
                f"cannot download {spec}: the model hub is unreachable and the weights are not in the cache. "
                f"Run once with a network (they are cached under ~/.cache/huggingface), or use "
                f"--model starter or a model directory"
            )
        try:
            checkpoint = open_clip.download_pretrained(cfg)  # tries the .safetensors alternative first
        except Exception as error:  # any transport failure is the same story for the user
            raise WeightsUnavailableError(f"downloading {spec} failed: {error}") from None
        if not str(checkpoint).endswith(".safetensors"):
            raise ModelLoadError(f"{spec} is published only as a pickle checkpoint ({os.path.basename(checkpoint)}), "
                                 f"which xmodal never loads: pickles can execute code")
    model = open_clip.create_model(arch, pretrained=checkpoint, force_quick_gelu=bool(cfg.get("quick_gelu")))
    image_size = model.visual.image_size
    size = image_size if isinstance(image_size, int) else image_size[0]
    preprocess = ImagePreprocess(
        size=size,
        mean=tuple(cfg.get("mean") or ImagePreprocess.mean),
        std=tuple(cfg.get("std") or ImagePreprocess.std),
    )
    return model, open_clip.get_tokenizer(arch), preprocess


def cached_checkpoint(cfg: dict) -> str | None:
    """The local path of a pretrained `.safetensors` checkpoint if the Hugging Face cache holds it.

    Pickle checkpoints in the cache (`open_clip_pytorch_model.bin`, the `.pt` files of OpenAI's
    URLs) do not count: they are never loaded.
    """
    hub = cfg.get("hf_hub", "")
    if not hub:
        return None
    from huggingface_hub import try_to_load_from_cache

    repo_id, filename = os.path.split(hub)  # "org/name/" means the default file, as in open_clip
    stem = os.path.splitext(filename)[0] if filename else "open_clip_pytorch_model"
    # open_clip's own safetensors alternatives of a pickle's name (open_clip.pretrained._get_safe_alternatives)
    names = [stem.replace("pytorch_model", "model") + ".safetensors", stem + ".safetensors"]
    for name in dict.fromkeys(names):
        found = try_to_load_from_cache(repo_id, name)
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def hub_reachable() -> bool:
    """Whether the Hugging Face endpoint accepts a TCP connection within a few seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or 443
    result: list[bool] = []

    def probe() -> None:  # getaddrinfo has no timeout of its own, hence the thread
        try:
            with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_SECONDS):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(_PROBE_TIMEOUT_SECONDS + 0.5)
    return bool(result and result[0])
