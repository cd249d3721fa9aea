"""Encoders: one factory builds every model from a spec string.

Imports are lazy so that `import retrieval.encoders` (and decode workers, which need only the
torch-free front end and configs) never pay for torch and open_clip.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from retrieval.encoders.factory import create_encoder, init_model_dir, list_encoders
    from retrieval.encoders.model import Encoder

__all__ = ["Encoder", "create_encoder", "init_model_dir", "list_encoders"]


def __getattr__(name: str) -> Any:
    if name in ("create_encoder", "list_encoders", "init_model_dir", "DEFAULT_MODEL"):
        from retrieval.encoders import factory

        return getattr(factory, name)
    if name == "Encoder":
        from retrieval.encoders.model import Encoder

        return Encoder
    raise AttributeError(name)
