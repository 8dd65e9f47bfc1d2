"""wdist: weight-distribution and sparsity analysis of checkpoint files and in-memory models.

The public API (`wdist.open`, `wdist.ls`, `wdist.inspect`, `wdist.diff`, `wdist.trend`, `wdist.check`,
`wdist.plot`, `wdist.options`, `wdist.dask_engine`) lives in `wdist.api`, and the optional modules
(`wdist.tbexport`, `wdist.plots`, `wdist.spectral_plots`) are imported on first use, so `import wdist`
stays light."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["open", "ls", "inspect", "diff", "trend", "check", "plot", "options", "dask_engine", "__version__"]
_MODULES = ("tbexport", "plots", "spectral_plots", "api", "analyzers", "loaders", "cli")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("wdist")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":  # looked up on first use: importlib.metadata is ~60 ms of every start-up
        v = globals()["__version__"] = _version()
        return v
    if name in __all__:
        from wdist import api

        return getattr(api, name)
    if name in _MODULES:  # `wdist.tbexport.write_trend(...)` after a plain `import wdist`
        return importlib.import_module(f"wdist.{name}")
    raise AttributeError(f"module 'wdist' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_MODULES})
