"""A persistent cache of per-tensor summaries, so that a run that keeps growing costs only its new
checkpoints: `trend` and `diff` on unchanged files read no tensor data.

Entries are keyed by the file's identity (canonical path or URL, size, mtime or ETag/version), the tensor's
place in it (reader description, dtype, shape), the chunking and the summary format version; options that
only change how a summary is read (near-zero rule, bins) are applied afterwards, so they are not in the key.
Entries are bundled per checkpoint file in one `.npz` written atomically (temporary file + rename, safe
with concurrent wdist processes: the last writer wins) and read without pickle; a damaged bundle is
ignored and rewritten. The folder is bounded in size
(least recently used entries go first). Nothing is ever written next to the inputs."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import re
import stat
import tempfile
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wdist.loaders.errors import UsageError

# Bump when the Summary fields or their meaning change (3: the C kernel sums in 16 lanes, which moves the
# last bits of the moments): old entries then simply miss.
FORMAT_VERSION = 3
DEFAULT_MAX_BYTES = 2 << 30


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


def file_identity(path: str) -> dict[str, Any]:
    """What makes a file's bytes the same as last time: canonical path, size and mtime (local files), or
    the remote store's size and ETag / version id."""
    from wdist.loaders import fs

    st = fs.stat(path)
    if fs.is_url(path) and not st.version:
        # a server that gives no ETag, version or modification time: a replaced object of the same size
        # could not be told apart, so nothing of it is cached (tensor_key: None)
        raise ValueError(f"{fs.redact(path)}: no version, ETag or modification time to key the cache by")
    return {"path": fs.canonical(path), "size": st.size, "version": st.version}


def _files_in(key: Any) -> list[Any]:
    """The file identities a key refers to (one for a tensor, two for a diff pair)."""
    if isinstance(key, dict):
        if "file" in key and isinstance(key["file"], dict):
            return [key["file"]]
        return [f for v in key.values() for f in _files_in(v)]
    if isinstance(key, list):
        return [f for v in key for f in _files_in(v)]
    return []


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class SummaryCache:
    """get(key, cls) / put(key, value) / flush(). Keys are JSON-able dicts (see `tensor_key`).

    Entries are kept in one bundle file per checkpoint file (per pair of files for diff), so a checkpoint
    of 10^4 tensors is one cache file, read once and written once (by flush())."""

    directory: str
    max_bytes: int = DEFAULT_MAX_BYTES
    _bundles: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    _dirty: set[str] = field(default_factory=set, repr=False)
    _puts: int = 0

    @classmethod
    def default(cls) -> SummaryCache:
        return cls(default_dir())

    def _bundle_id(self, key: dict[str, Any]) -> str:
        return _digest({"v": FORMAT_VERSION, "files": _files_in(key)})

    def _path(self, bundle: str) -> str:
        return os.path.join(self.directory, bundle[:2], bundle + ".npz")

    def _load(self, bundle: str) -> dict[str, Any]:
        entries = self._bundles.get(bundle)
        if entries is not None:
            return entries
        entries = {}
        p = self._path(bundle)
        try:
            data = _read_regular(p, self.max_bytes)
            entries = _unpack_bundle(data)
            with contextlib.suppress(OSError):
                os.utime(p)  # most recently used
        except FileNotFoundError:
            pass
        except Exception:  # a damaged bundle (zip, npy or JSON errors of every kind): dropped, rewritten
            with contextlib.suppress(OSError):
                os.unlink(p)
            entries = {}
        self._bundles[bundle] = entries
        return entries

    def get(self, key: dict[str, Any], cls: type) -> Any | None:
        entry = self._load(self._bundle_id(key)).get(_digest(key))
        if entry is None or entry[0] != cls.__name__:
            return None
        try:
            value = _build(cls, entry[1])
        except (TypeError, ValueError):
            return None
        # right types but impossible values (a negative count, a histogram of the wrong shape) would fail
        # every later run: such an entry is a miss, recomputed and rewritten
        plausible = getattr(value, "plausible", None)
        return value if plausible is None or plausible() else None

    def put(self, key: dict[str, Any], value: Any) -> None:
        bundle = self._bundle_id(key)
        self._load(bundle)[_digest(key)] = (type(value).__name__, _fields(value))
        self._dirty.add(bundle)

    def flush(self) -> None:
        """Write every bundle that changed (atomically: temporary file + rename), then bound the folder."""
        for bundle in sorted(self._dirty):
            p = self._path(bundle)
            try:
                data = _pack_bundle(self._bundles[bundle])
                os.makedirs(os.path.dirname(p), exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=os.path.dirname(p), prefix=".tmp-", suffix=".npz")
                try:
                    with os.fdopen(fd, "wb") as f:
                        f.write(data)
                    os.replace(tmp, p)  # a reader sees the old bundle or the new one, never half of one
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                    raise
            except OSError:
                continue  # a read-only or full cache folder must not fail the analysis
            self._puts += 1
        if self._dirty:
            self.evict()
        self._dirty.clear()

    def entries(self) -> list[tuple[str, int, float]]:
        """The cache's own bundle files, <2 hex>/<64 hex>.npz: nothing else in the folder is counted, evicted
        or cleared (WDIST_CACHE_DIR may point at a folder that holds other files)."""
        out: list[tuple[str, int, float]] = []
        try:
            subs = [d for d in os.listdir(self.directory) if _SUBDIR.fullmatch(d)]
        except OSError:
            return out
        for sub in subs:
            root = os.path.join(self.directory, sub)
            try:
                files = os.listdir(root)
            except OSError:
                continue
            for f in files:
                if _BUNDLE.fullmatch(f) and f.startswith(sub):
                    p = os.path.join(root, f)
                    try:
                        st = os.stat(p)
                    except OSError:
                        continue
                    out.append((p, st.st_size, st.st_mtime))
        return out

    def info(self) -> dict[str, Any]:
        e = self.entries()
        return {"directory": self.directory, "files": len(e), "bytes": sum(s for _, s, _ in e),
                "max_bytes": self.max_bytes}

    def evict(self) -> int:
        """Remove least recently used bundles until the folder is within max_bytes; returns how many."""
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
        """Remove every bundle; returns how many. Raises UsageError naming the folder when some could not
        be removed (a read-only cache): "removed 0 files" would read as an empty cache."""
        n = 0
        failed: list[OSError] = []
        for p, _, _ in self.entries():
            try:
                os.unlink(p)
                n += 1
            except FileNotFoundError:
                pass
            except OSError as e:
                failed.append(e)
        self._bundles.clear()
        self._dirty.clear()
        if failed:
            raise UsageError(self.directory, f"removed {n} files; {len(failed)} could not be removed "
                             f"({failed[0].strerror or failed[0]})")
        return n


def _fields(obj: Any) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if not (v is None or isinstance(v, (bool, int, float, str, np.ndarray))):
            raise TypeError(f"cannot cache field {f.name} of type {type(v).__name__}")
        out[f.name] = v
    return out


_INT64 = 1 << 63
_SUBDIR = re.compile(r"[0-9a-f]{2}")
_BUNDLE = re.compile(r"[0-9a-f]{64}\.npz")


def _fits(v: Any, hint: Any) -> bool:
    """Whether a cached value has the type its field declares (bundles are files: one written by something
    else, or damaged in a way the npz/JSON layer does not notice, must not reach the analysis)."""
    args = typing.get_args(hint)
    if args and type(None) in args:  # X | None
        return v is None or any(_fits(v, a) for a in args if a is not type(None))
    if hint is bool:
        return isinstance(v, bool)
    if hint is int:
        return isinstance(v, int) and not isinstance(v, bool) and -_INT64 <= v < _INT64
    if hint is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if hint is str:
        return isinstance(v, str)
    if hint is np.ndarray:
        return isinstance(v, np.ndarray) and v.dtype.kind in "biuf" and v.ndim <= 2
    return False


def _build(cls: type, values: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    if set(values) != names:
        raise ValueError("fields differ")
    hints = typing.get_type_hints(cls)
    for k, v in values.items():
        if not _fits(v, hints.get(k)):
            raise TypeError(f"cached field {k} is not a {hints.get(k)}")
    return cls(**{k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in values.items()})


def _pack_bundle(entries: dict[str, Any]) -> bytes:
    """Entries {digest: (class name, fields)} as npz bytes: arrays as members, the rest as one JSON."""
    meta: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    for i, (digest, (cls, values)) in enumerate(entries.items()):
        scalars, names = {}, []
        for k, v in values.items():
            if isinstance(v, np.ndarray):
                arrays[f"a{i}_{k}"] = v
                names.append(k)
            else:
                scalars[k] = v
        meta[digest] = {"cls": cls, "i": i, "scalars": scalars, "arrays": names}
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **arrays)
    return buf.getvalue()


def _read_regular(path: str, limit: int) -> bytes:
    """A bundle's bytes, only from a regular file of at most `limit` bytes: the cache folder may be shared,
    and a FIFO (would block) or a link to /dev/zero (endless) in a bundle's place is a damaged bundle."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            raise ValueError(f"{path}: not a regular file of at most {limit} bytes")
        return f.read(st.st_size + 1)  # a file that grew meanwhile reads long and fails to unpack


def _unpack_bundle(data: bytes) -> dict[str, Any]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        meta = json.loads(bytes(z["__meta__"]).decode())
        out = {}
        for digest, m in meta.items():
            values = dict(m["scalars"])
            for k in m["arrays"]:
                values[k] = z[f"a{m['i']}_{k}"]
            out[digest] = (m["cls"], values)
    return out


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
