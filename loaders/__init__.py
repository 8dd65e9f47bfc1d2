"""Checkpoint readers: every supported file becomes the same lazy Checkpoint of TensorRefs."""

from wdist.loaders.errors import (
    CorruptCheckpointError,
    MissingDependencyError,
    UnsafeContentError,
    UnsupportedFormatError,
    UsageError,
    WdistError,
)
from wdist.loaders.model import DEFAULT_ROLES, Checkpoint, Format, Role, TensorRef
from wdist.loaders.registry import open_checkpoint

__all__ = [
    "DEFAULT_ROLES", "SUPPORTED", "Checkpoint", "CorruptCheckpointError", "Format", "MissingDependencyError",
    "Role", "TensorRef", "UnsafeContentError", "UnsupportedFormatError", "UsageError", "WdistError",
    "open_checkpoint",
]


def __getattr__(name: str) -> str:
    # computed on use: it imports every format plug-in and scans the installed entry points
    if name == "SUPPORTED":
        from wdist.loaders.registry import supported

        return supported()
    raise AttributeError(f"module 'wdist.loaders' has no attribute {name!r}")
