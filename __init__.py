"""wdist: weight-distribution and sparsity analysis of checkpoint files and in-memory models.

The public API (`wdist.open`, `wdist.ls`, `wdist.inspect`, `wdist.diff`, `wdist.trend`, `wdist.check`,
`wdist.plot`) lives in `wdist.api` and is imported on first use, so `import wdist` stays light."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("wdist")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["open", "ls", "inspect", "diff", "trend", "check", "plot", "__version__"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from wdist import api

        return getattr(api, name)
    raise AttributeError(f"module 'wdist' has no attribute {name!r}")
