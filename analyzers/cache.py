"""A persistent cache of per-tensor summaries, so that a run that keeps growing costs only its new
checkpoints: `trend` and `diff` on unchanged files read no tensor data.

Entries are keyed by the file's identity (canonical path or URL, size, mtime or ETag/version), the tensor's
place in it (reader description, dtype, shape), the chunking and the summary format version; options that
only change how a summary is read (near-zero rule, bins) are applied afterwards, so they are not in the key.
Each entry is one `.npz` file written atomically (temporary file + rename, safe with concurrent wdist
processes) and read without pickle; a damaged entry is ignored and rewritten. The folder is bounded in size
(least recently used entries go first). Nothing is ever written next to the inputs."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

# Bump when the Summary fields or their meaning change: old entries then simply miss.
FORMAT_VERSION = 1
DEFAULT_MAX_BYTES = 2 << 30
_EVICT_EVERY = 64  # puts between two size checks of the folder


def default_dir() -> str:
    """$WDIST_CACHE_DIR, else the user cache folder (XDG_CACHE_HOME, ~/.cache; platformdirs when installed)."""
    env = os.environ.get("WDIST_CACHE_DIR")
    if env:
        return env
    try:
        import platformdirs

        return os.path.join(platformdirs.user_cache_dir("wdist", appauthor=False), "summaries")
    except ImportError:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return os.path.join(base, "wdist", "summaries")


def _pack(obj: Any) -> bytes:
    """A dataclass of scalars, None and numpy arrays as npz bytes (arrays as members, the rest as JSON)."""
    meta: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, np.ndarray):
            arrays[f.name] = v
        elif v is None or isinstance(v, (bool, int, float, str)):
            meta[f.name] = v
        else:
            raise TypeError(f"cannot cache field {f.name} of type {type(v).__name__}")
    buf = io.BytesIO()
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(buf, allow_pickle=False, **arrays)
    return buf.getvalue()


def _unpack(cls: type, data: bytes) -> Any:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        meta = json.loads(bytes(z["__meta__"]).decode())
        arrays = {k: z[k] for k in z.files if k != "__meta__"}
    names = {f.name for f in dataclasses.fields(cls)}
    if set(meta) | set(arrays) != names:
        raise ValueError("fields differ")
    return cls(**meta, **arrays)


def file_identity(path: str) -> dict[str, Any]:
    """What makes a file's bytes the same as last time: canonical path, size and mtime (local files), or
    the remote store's size and ETag / version id."""
    from wdist.loaders import fs

    st = fs.stat(path)
    return {"path": fs.canonical(path), "size": st.size, "version": st.version}


@dataclass
class SummaryCache:
    """get(key) / put(key, summary). Keys are JSON-able dicts; see `tensor_key`."""

    directory: str
    max_bytes: int = DEFAULT_MAX_BYTES
    _puts: int = 0

    @classmethod
    def default(cls) -> SummaryCache:
        return cls(default_dir())

    def _path(self, key: dict[str, Any]) -> str:
        h = hashlib.sha256(json.dumps({"v": FORMAT_VERSION, **key}, sort_keys=True, default=str).encode()).hexdigest()
        return os.path.join(self.directory, h[:2], h + ".npz")

    def get(self, key: dict[str, Any], cls: type) -> Any | None:
        p = self._path(key)
        try:
            with open(p, "rb") as f:
                data = f.read()
            value = _unpack(cls, data)
        except FileNotFoundError:
            return None
        except Exception:  # a damaged entry (zip, npy or JSON errors of every kind): drop it, it is rewritten
            with contextlib.suppress(OSError):
                os.unlink(p)
            return None
        with contextlib.suppress(OSError):
            os.utime(p)  # most recently used
        return value

    def put(self, key: dict[str, Any], value: Any) -> None:
        p = self._path(key)
        data = _pack(value)
        try:
            os.makedirs(os.path.dirname(p), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(p), prefix=".tmp-", suffix=".npz")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, p)  # atomic: a reader sees the old entry or the new one, never half
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError:
            return  # a read-only or full cache folder must not fail the analysis
        self._puts += 1
        if self._puts % _EVICT_EVERY == 1:
            self.evict()

    def entries(self) -> list[tuple[str, int, float]]:
        out = []
        for root, _dirs, files in os.walk(self.directory):
            for f in files:
                if f.endswith(".npz") and not f.startswith(".tmp-"):
                    p = os.path.join(root, f)
                    try:
                        st = os.stat(p)
                    except OSError:
                        continue
                    out.append((p, st.st_size, st.st_mtime))
        return out

    def info(self) -> dict[str, Any]:
        e = self.entries()
        return {"directory": self.directory, "entries": len(e), "bytes": sum(s for _, s, _ in e),
                "max_bytes": self.max_bytes}

    def evict(self) -> int:
        """Remove least recently used entries until the folder is within max_bytes; returns how many."""
        e = sorted(self.entries(), key=lambda x: x[2])
        total = sum(s for _, s, _ in e)
        removed = 0
        while e and total > self.max_bytes:
            p, s, _ = e.pop(0)
            try:
                os.unlink(p)
                total -= s
                removed += 1
            except OSError:
                pass
        return removed

    def clear(self) -> int:
        n = 0
        for p, _, _ in self.entries():
            try:
                os.unlink(p)
                n += 1
            except OSError:
                pass
        return n


def tensor_key(ref: Any, chunk: int, extra: dict[str, Any] | None = None,
               identity: Callable[[str], dict[str, Any]] = file_identity) -> dict[str, Any] | None:
    """The cache key of one tensor's summary, or None when it must not be cached (in-memory data, or a
    reader that does not say which file it reads)."""
    reader = ref.reader
    if reader is None or getattr(reader, "in_memory", False):
        return None
    path = getattr(reader, "path", None)
    if not isinstance(path, str):
        return None
    try:
        ident = identity(path)
    except Exception:  # a file that cannot be stat'ed now will fail properly when it is read
        return None
    return {"file": ident, "reader": repr(reader), "name": ref.name, "dtype": ref.dtype, "shape": list(ref.shape),
            "unit_axis": ref.unit_axis, "chunk": chunk, **(extra or {})}
