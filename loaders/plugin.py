"""The interface every checkpoint format implements. A format is one module exposing `PLUGIN`, registered
in loaders/registry.py (built-ins) or through the `wdist.formats` entry-point group (third parties)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

from wdist.loaders.model import Checkpoint

# How many leading bytes of a file are handed to `sniff`.
SNIFF_BYTES = 4096


@dataclass(frozen=True)
class FormatPlugin:
    """One checkpoint format.

    name:       the `--input-format` value and `Checkpoint.format` of what it reads ("gguf").
    title:      a human name for `wdist formats` and the README ("GGUF (llama.cpp)").
    extensions: file-name endings that break ties in detection (".gguf"; ".weights.h5" allowed).
    load:       path -> Checkpoint; reads headers only, raises WdistError subclasses on bad input.
    sniff:      (first SNIFF_BYTES bytes, path) -> True when the bytes are this format. Must be cheap and
                must not raise; None for formats detected by extension only.
    requires:   importable modules of the optional dependency ("onnx",); () for none.
    extra:      the pip extra that installs them ("onnx" -> pip install 'wdist[onnx]').
    variants:   what is supported, for the format table.
    order:      detection order; lower sniffs first.
    fallback_by_extension: when no sniffer claims a file, one with this format's extension is still handed
                to this reader, so a damaged file gets the reader's own explanation.
    sniff_dir:  path -> True when a folder is one checkpoint of this format (a DCP folder, a SavedModel);
                must not raise. Such a folder is then handed to `load` whole.
    """

    name: str
    title: str
    extensions: tuple[str, ...]
    load: Callable[[str], Checkpoint]
    sniff: Callable[[bytes, str], bool] | None = None
    requires: tuple[str, ...] = ()
    extra: str | None = None
    variants: str = ""
    order: int = 100
    fallback_by_extension: bool = False
    sniff_dir: Callable[[str], bool] | None = None

    def available(self) -> bool:
        """Whether the optional dependency is importable (without importing it)."""
        return all(importlib.util.find_spec(m) is not None for m in self.requires)
