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
from wdist.loaders.registry import SUPPORTED, open_checkpoint

__all__ = [
    "DEFAULT_ROLES", "SUPPORTED", "Checkpoint", "CorruptCheckpointError", "Format", "MissingDependencyError",
    "Role", "TensorRef", "UnsafeContentError", "UnsupportedFormatError", "UsageError", "WdistError",
    "open_checkpoint",
]
