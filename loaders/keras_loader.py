"""Keras HDF5 weights (Keras 2 full model and save_weights, Keras 3 .weights.h5) and .keras archives.
Only HDF5 datasets are read; config.json is parsed as data; no Keras code is imported or run.

A checkpoint only ever reads itself: every link is inspected before it is followed (external links and
user-defined links are refused, soft links are resolved by hand so that their targets are checked too), and
every dataset is vetted before its data is touched (no virtual datasets, no external storage, only HDF5's
built-in filters, storage that is allocated, inside the file and plausible against the file's size)."""

from __future__ import annotations

import json
import math
import os
import re
import threading
import weakref
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wdist.loaders import fs, jsonbudget
from wdist.loaders.dtypes import STORAGE
from wdist.loaders.errors import (
    CorruptCheckpointError,
    MissingDependencyError,
    UnsafeContentError,
    WdistError,
)
from wdist.loaders.fileio import (
    ZIP_ERRORS,
    Window,
    open_zip,
    raw_name,
    read_zip_member,
    zip_member_offset,
    zip_members,
)
from wdist.loaders.model import Checkpoint, Format, Role, TensorRef
from wdist.loaders.roles import default_unit_axis, fix_norm_biases, infer_role

# Keras 3 stores variables by position; these are the names the layer classes give them.
K3_VAR_NAMES = {
    "dense": ["kernel", "bias"], "einsum_dense": ["kernel", "bias"], "conv1d": ["kernel", "bias"],
    "conv2d": ["kernel", "bias"], "conv3d": ["kernel", "bias"], "conv2d_transpose": ["kernel", "bias"],
    "conv1d_transpose": ["kernel", "bias"], "conv3d_transpose": ["kernel", "bias"],
    "depthwise_conv2d": ["kernel", "bias"], "depthwise_conv1d": ["kernel", "bias"],
    "separable_conv2d": ["depthwise_kernel", "pointwise_kernel", "bias"],
    "batch_normalization": ["gamma", "beta", "moving_mean", "moving_variance"],
    "layer_normalization": ["gamma", "beta"], "group_normalization": ["gamma", "beta"],
    "embedding": ["embeddings"], "lstm_cell": ["kernel", "recurrent_kernel", "bias"],
    "gru_cell": ["kernel", "recurrent_kernel", "bias"], "simple_rnn_cell": ["kernel", "recurrent_kernel", "bias"],
    "prelu": ["alpha"],
}

# Limits no real checkpoint reaches; each one bounds the work a small hostile file can ask for.
MAX_TENSORS = 1_000_000  # tensor names (aliases included): the largest real models have ~10^4
MAX_DEPTH = 64  # group nesting: Keras 3 nests a few levels per sub-model, ~10 in practice
MAX_SOFT_HOPS = 16  # soft links followed while resolving one path (HDF5's own default limit)
# Chunked data may be compressed, so its logical size can exceed its stored size: deflate cannot expand by
# more than ~1032x (zeros compress best), shuffle and fletcher32 do not expand and LZF expands less. A
# dataset claiming more than this many logical bytes per stored byte is not real data. Small datasets are
# always allowed: reading 16 MiB is cheap whatever the file claims.
MAX_EXPANSION = 1100
SMALL_BYTES = 16 << 20
# HDF5 decompresses a whole chunk to read any part of it: a bigger chunk would be a memory bomb. h5py's own
# chunks are at most 1 MiB and Keras does not chunk at all.
MAX_CHUNK_BYTES = 256 << 20
# metadata.json and config.json of a .keras archive: parsed only for a few metadata fields and the layer
# order. A 1,000-layer functional model's config is ~1 MB with ~10^4 arrays/objects and ~10^5 items; a
# deflated `[[],[],...]` (1000x smaller in the archive) took 1.7 GB and 12 s. Over a bound the member is
# skipped with a warning, as an over-long one always was: the weights do not depend on it. The worst member
# found within the bounds (0.5M distinct keys with `[]`, 0.5M with 0, padded to 16 MiB) peaks at 0.27 GB in
# `wdist ls`.
MAX_CONFIG_BYTES = 16 << 20
MAX_CONFIG_CONTAINERS = 1_000_000
MAX_CONFIG_ITEMS = 2_000_000
OPEN_DATASETS = 16  # datasets a handle keeps open: readers go tensor by tensor (two at a time in diff)
# HDF5's built-in filters (deflate, shuffle, fletcher32, szip, nbit, scaleoffset) and h5py's LZF. Any other
# id would make HDF5 search its plugin path for a shared library to load.
SAFE_FILTERS = frozenset({1, 2, 3, 4, 5, 6, 32000})
H5_ERRORS: tuple[type[BaseException], ...] = (
    KeyError, OSError, ValueError, TypeError, RuntimeError, AttributeError, IndexError, OverflowError,
    RecursionError, MemoryError, UnicodeError,
)


def _file_size(path: str, window: tuple[int, int] | None) -> int:
    return window[1] if window else fs.size(path)


def _obj_addr(obj: Any) -> int:
    import h5py

    return int(h5py.h5o.get_info(obj.id).addr)


def _link(path: str, root: Any, g: Any, name: str, hops: int = 0) -> Any:
    """g's member `name` (one path component), or None; refuses links that lead out of the file."""
    import h5py

    bname = name.encode("utf-8")
    if not g.id.links.exists(bname):
        return None
    kind = g.id.links.get_info(bname).type
    if kind == h5py.h5l.TYPE_HARD:
        return g.get(name)
    if kind == h5py.h5l.TYPE_SOFT:
        # resolved by hand: HDF5 would follow any external link on the target's path without asking
        target = g.id.links.get_val(bname).decode("utf-8", "replace")
        return _lookup(path, root, root if target.startswith("/") else g, target, hops + 1)
    where = f"{g.name.rstrip('/')}/{name}"
    if kind == h5py.h5l.TYPE_EXTERNAL:
        raise UnsafeContentError(path, f"HDF5 object {where!r} is an external link to another file; refused "
                                       "(a checkpoint may only read itself)")
    raise UnsafeContentError(path, f"HDF5 object {where!r} is a user-defined link; refused")


def _lookup(path: str, root: Any, start: Any, target: str, hops: int = 0) -> Any:
    """The object at `target` (relative to `start`, or absolute), following only links that stay in the file."""
    import h5py

    if hops > MAX_SOFT_HOPS:
        raise CorruptCheckpointError(path, f"HDF5 soft links nest more than {MAX_SOFT_HOPS} deep at {target[:80]!r}")
    cur = root if target.startswith("/") else start
    for comp in target.split("/"):
        if comp in ("", "."):
            continue
        if not isinstance(cur, h5py.Group):
            return None
        cur = _link(path, root, cur, comp, hops)
        if cur is None:
            return None
    return cur


def _vet_dataset(path: str, d: Any, file_size: int) -> int:
    """Refuses a dataset whose data would come from elsewhere than this file or whose claimed size is not
    backed by stored bytes; returns the bytes it occupies in the file."""
    import h5py

    where = d.name
    if d.is_virtual:
        raise UnsafeContentError(path, f"dataset {where!r} is an HDF5 virtual dataset (data mapped from other "
                                       "files); refused")
    dcpl = d.id.get_create_plist()
    if dcpl.get_external_count() > 0:
        raise UnsafeContentError(path, f"dataset {where!r} keeps its data in an external file (HDF5 external "
                                       "storage); refused (a checkpoint may only read itself)")
    layout = dcpl.get_layout()
    if layout not in (h5py.h5d.COMPACT, h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED):
        raise UnsafeContentError(path, f"dataset {where!r} has an unsupported storage layout ({layout}); refused")
    for i in range(dcpl.get_nfilters()):
        code = int(dcpl.get_filter(i)[0])
        if code not in SAFE_FILTERS:
            raise UnsafeContentError(path, f"dataset {where!r} uses HDF5 filter {code}, not one of HDF5's "
                                           "built-in filters; refused")
    if layout == h5py.h5d.CHUNKED:
        chunk_bytes = d.dtype.itemsize
        for c in dcpl.get_chunk():
            chunk_bytes *= int(c)
        if chunk_bytes > MAX_CHUNK_BYTES:
            raise CorruptCheckpointError(path, f"dataset {where!r} has chunks of {chunk_bytes:,} bytes (over "
                                               f"{MAX_CHUNK_BYTES >> 20} MiB); refused")
    numel = math.prod(int(s) for s in d.shape or ())
    logical = numel * d.dtype.itemsize
    stored = int(d.id.get_storage_size())
    if logical == 0:
        return stored
    if stored == 0:
        raise CorruptCheckpointError(path, f"dataset {where!r} claims {numel:,} elements but was never written "
                                           "(no storage allocated)")
    if layout == h5py.h5d.CHUNKED:
        chunks = dcpl.get_chunk()
        expected = 1
        for s, c in zip(d.shape, chunks):
            expected *= -(-int(s) // max(int(c), 1))
        have = int(d.id.get_num_chunks())
        if have < expected:
            raise CorruptCheckpointError(path, f"dataset {where!r} has only {have:,} of its {expected:,} chunks "
                                               "written")
        if logical > max(SMALL_BYTES, MAX_EXPANSION * stored):
            raise CorruptCheckpointError(path, f"dataset {where!r} claims {logical:,} bytes from {stored:,} stored "
                                               f"bytes (over {MAX_EXPANSION}x); refused as implausible")
    elif layout == h5py.h5d.COMPACT and stored != logical:
        raise CorruptCheckpointError(path, f"dataset {where!r} claims {logical:,} bytes but stores {stored:,}")
    elif layout == h5py.h5d.CONTIGUOUS:
        offset = d.id.get_offset()
        if stored != logical or offset is None or offset + stored > file_size:
            raise CorruptCheckpointError(path, f"dataset {where!r} claims {logical:,} bytes that the file does not "
                                               "hold")
    if stored > file_size:
        raise CorruptCheckpointError(path, f"dataset {where!r} claims {stored:,} stored bytes in a file of "
                                           f"{file_size:,}")
    return stored


class _H5Handle:
    """The open HDF5 file of one checkpoint, shared by all its readers. Opens lazily, is safe under threads
    (h5py serialises its calls anyway; the lock makes open, read and close atomic), is never pickled (a
    worker process reopens the file itself), and is closed by Checkpoint.close(); reading after that
    reopens it and registers it with the checkpoint again."""

    def __init__(self, path: str, window: tuple[int, int] | None) -> None:
        self.path, self.window = path, window
        self.lock = threading.RLock()
        self._file: Any = None
        self._src: Window | None = None
        self._pid = 0
        self._size = 0
        self._datasets: dict[str, Any] = {}
        self._owner: weakref.ref[Checkpoint] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "window": self.window}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["window"])  # type: ignore[misc]

    def attach(self, ck: Checkpoint) -> None:
        self._owner = weakref.ref(ck)
        if self.close not in ck.closers:
            ck.closers.append(self.close)

    def file(self) -> Any:
        import h5py

        with self.lock:
            if self._file is not None and self._pid == os.getpid() and self._file.id.valid:
                return self._file
            self._drop()
            # a URL is read through ranged requests: h5py reads Python file objects (driver "fileobj")
            src: Any = (Window(self.path, *self.window) if self.window
                        else fs.open_binary(self.path) if fs.is_url(self.path) else None)
            try:
                self._size = _file_size(self.path, self.window)
                self._file = h5py.File(src if src is not None else fs.local_path(self.path), "r")
            except BaseException:
                if src is not None:
                    src.close()
                raise
            self._src, self._pid = src, os.getpid()
            ck = self._owner() if self._owner is not None else None
            if ck is not None and self.close not in ck.closers:
                ck.closers.append(self.close)
            return self._file

    def dataset(self, name: str) -> Any:
        """The vetted dataset at `name`, resolved link by link as during loading."""
        import h5py

        with self.lock:
            f = self.file()
            d = self._datasets.get(name)
            if d is None:
                d = _lookup(self.path, f, f, name)
                if not isinstance(d, h5py.Dataset):
                    raise CorruptCheckpointError(self.path, f"dataset {name!r} is missing")
                _vet_dataset(self.path, d, self._size)
                if len(self._datasets) >= OPEN_DATASETS:
                    self._datasets.clear()
                self._datasets[name] = d
            return d

    @property
    def size(self) -> int:
        self.file()
        return self._size

    def _drop(self) -> None:
        self._datasets.clear()
        f, src, self._file, self._src = self._file, self._src, None, None
        try:
            # a handle inherited through fork belongs to the parent; the child only drops its copy
            if f is not None and self._pid == os.getpid() and f.id.valid:
                f.close()
        finally:
            if src is not None:
                src.close()

    def close(self) -> None:
        with self.lock:
            self._drop()


def _flat_slabs(shape: tuple[int, ...], start: int, stop: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Rectangular (offset, count) blocks that together cover the C-order flat range [start, stop) in order:
    at most 2 * ndim - 1 of them, one when the range is made of whole rows."""
    if len(shape) == 1:
        return [((start,), (stop - start,))]
    inner = 1
    for s in shape[1:]:
        inner *= s
    r0, o0 = divmod(start, inner)
    r1, o1 = divmod(stop, inner)
    rest = tuple(shape[1:])
    if r0 == r1:
        return [((r0, *off), (1, *cnt)) for off, cnt in _flat_slabs(rest, o0, o1)]
    out: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    if o0:
        out += [((r0, *off), (1, *cnt)) for off, cnt in _flat_slabs(rest, o0, inner)]
        r0 += 1
    if r1 > r0:
        out.append(((r0,) + (0,) * len(rest), (r1 - r0, *rest)))
    if o1:
        out += [((r1, *off), (1, *cnt)) for off, cnt in _flat_slabs(rest, 0, o1)]
    return out


@dataclass
class H5Reader:
    path: str
    dataset: str
    dtype: str
    window: tuple[int, int] | None = None  # (offset, size) of the HDF5 file inside a .keras zip
    handle: _H5Handle | None = field(default=None, repr=False, compare=False)
    reuses_buffer = True  # read_raw accepts out=

    def __post_init__(self) -> None:
        if self.handle is None:
            self.handle = _H5Handle(self.path, self.window)

    def read_raw(self, start: int, count: int, out: np.ndarray | None = None) -> np.ndarray:
        import h5py

        assert self.handle is not None
        want = STORAGE[self.dtype]
        with self.handle.lock:
            d = self.handle.dataset(self.dataset)
            if d.ndim == 0:
                arr = np.asarray(d[()]).reshape(1)[start:start + count]
                return arr.view(want) if arr.dtype.kind == "V" else arr.astype(want, copy=False)
            numel = math.prod(int(s) for s in d.shape)
            if start < 0 or count < 0 or start + count > numel:
                raise ValueError(f"range [{start}, {start + count}) outside {numel} elements")
            opaque = d.dtype.kind == "V"  # Keras 3 bf16/fp8: opaque bytes with a dtype attribute
            mem = d.dtype if opaque else want
            nbytes = count * mem.itemsize
            arr = out[:nbytes].view(mem) if out is not None and out.nbytes >= nbytes else np.empty(count, mem)
            if count:
                # exactly the flat range, as a few hyperslabs: a (1, 5e8) kernel must not read whole rows
                # (one read per slab: a union of hyperslabs is many times slower on chunked data)
                mtype = d.id.get_type() if opaque else None
                fspace = d.id.get_space()
                pos = 0
                for off, cnt in _flat_slabs(tuple(int(s) for s in d.shape), start, start + count):
                    n = 1
                    for c in cnt:
                        n *= c
                    fspace.select_hyperslab(off, cnt)
                    d.id.read(h5py.h5s.create_simple(cnt), fspace, arr[pos:pos + n], mtype)
                    pos += n
        return arr.view(want) if opaque else arr


def _attr_list(obj: Any, name: str) -> list[str] | None:
    """A string-list attribute, also when HDF5's 64 KB header limit split it into name0, name1, ..."""
    if name in obj.attrs:
        vals = list(np.asarray(obj.attrs[name]).reshape(-1))
    elif f"{name}0" in obj.attrs:
        vals, i = [], 0
        while f"{name}{i}" in obj.attrs:
            vals += list(np.asarray(obj.attrs[f"{name}{i}"]).reshape(-1))
            i += 1
    else:
        return None
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in vals]


def _str_attr(obj: Any, name: str, default: str) -> str:
    v = obj.attrs.get(name, default)
    if isinstance(v, np.ndarray) and v.size == 1:
        v = v.reshape(-1)[0]
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def _dtype_of(d: Any) -> str | None:
    if d.dtype.kind == "V":
        tag = d.attrs.get("dtype")
        tag = tag.decode() if isinstance(tag, bytes) else tag
        return tag if isinstance(tag, str) and tag in STORAGE and d.dtype.itemsize == STORAGE[tag].itemsize else None
    name = d.dtype.name
    return name if name in STORAGE else None


class _Collector:
    def __init__(self, handle: _H5Handle) -> None:
        self.handle = handle
        self.path, self.window = handle.path, handle.window
        self.root = handle.file()
        self.file_size = handle.size
        self.tensors: list[TensorRef] = []
        self.skipped: list[str] = []
        self.names: set[str] = set()
        self.by_addr: dict[int, TensorRef | None] = {}  # each dataset once; later paths to it are aliases
        self.groups: set[int] = set()
        self.stored = 0

    def lookup(self, start: Any, target: str) -> Any:
        return _lookup(self.path, self.root, start, target)

    def member(self, g: Any, name: str) -> Any:
        return _link(self.path, self.root, g, name)

    def first_visit(self, g: Any) -> bool:
        """True the first time a group is reached: a hard-linked DAG or cycle is walked once per object."""
        a = _obj_addr(g)
        if a in self.groups:
            return False
        self.groups.add(a)
        return True

    def _claim(self, name: str) -> None:
        if name in self.names:
            raise CorruptCheckpointError(self.path, f"two weights are both named {name!r}")
        if len(self.names) >= MAX_TENSORS:
            raise CorruptCheckpointError(self.path, f"more than {MAX_TENSORS:,} weights; refused as implausible")
        self.names.add(name)

    def add(self, d: Any, name: str, layer: str, param: str, forced: Role | None = None,
            alt_name: str | None = None) -> None:
        import h5py

        if alt_name is not None and name in self.names:
            name = alt_name  # e.g. two Keras 3 layers given the same name inside one custom layer
        self._claim(name)
        if not isinstance(d, h5py.Dataset) or d.shape is None:  # a group, a named type, an empty dataspace
            self.skipped.append(name)
            return
        addr = _obj_addr(d)
        if addr in self.by_addr:  # the same dataset again, through another hard link
            first = self.by_addr[addr]
            if first is not None:
                first.aliases += (name,)
            return
        dtype = _dtype_of(d)
        if dtype is None:
            self.by_addr[addr] = None
            self.skipped.append(f"{name} (dtype {d.dtype})")
            return
        self.stored += _vet_dataset(self.path, d, self.file_size)
        if self.stored > self.file_size:
            raise CorruptCheckpointError(self.path, f"datasets claim {self.stored:,} stored bytes in a file of "
                                                    f"{self.file_size:,} (overlapping storage); refused")
        shape = tuple(int(s) for s in d.shape)
        role = forced or infer_role(name, layer, param, shape, dtype)
        if role is Role.WEIGHT and param in ("embeddings",):
            role = Role.EMBEDDING
        t = TensorRef(
            name=name, layer=layer, role=role, shape=shape, dtype=dtype,
            reader=H5Reader(self.path, d.name, dtype, self.window, self.handle),
            unit_axis=None if role is Role.OPTIMIZER_STATE else default_unit_axis(role, len(shape), keras=True),
            source=fs.basename(self.path))
        self.by_addr[addr] = t
        self.tensors.append(t)


def _strip(wname: str) -> str:
    return re.sub(r":\d+$", "", wname)


def _no_duplicates(col: _Collector, names: list[str], what: str) -> None:
    dup = next((n for n, c in Counter(names).items() if c > 1), None)
    if dup is not None:
        raise CorruptCheckpointError(col.path, f"{what} lists {dup!r} more than once")


def _keras2_layers(col: _Collector, root: Any, layer_names: list[str]) -> None:
    import h5py

    _no_duplicates(col, layer_names, "layer_names")
    for lname in layer_names:
        g = col.lookup(root, lname)
        if not isinstance(g, h5py.Group):
            raise CorruptCheckpointError(col.path, f"layer {lname[:80]!r} is listed but has no group")
        wnames = _attr_list(g, "weight_names") or []
        _no_duplicates(col, wnames, f"weight_names of layer {lname[:80]!r}")
        for w in wnames:
            d = col.lookup(g, w)
            clean = _strip(w)
            # nested models store 'inner/kernel:0' under the outer layer's group
            layer = clean.rsplit("/", 1)[0] if "/" in clean else lname
            if not (layer == lname or layer.startswith(lname + "/")):
                layer = f"{lname}/{layer}"
            name = clean if clean.startswith(lname + "/") else f"{lname}/{clean}"
            if d is None:
                raise CorruptCheckpointError(col.path, f"weight {w[:80]!r} of layer {lname[:80]!r} is missing")
            col.add(d, name, layer, clean.rsplit("/", 1)[-1])


def _keras2_optimizer(col: _Collector, g: Any) -> None:
    wnames = _attr_list(g, "weight_names") or []
    _no_duplicates(col, wnames, "weight_names of optimizer_weights")
    for w in wnames:
        d = col.lookup(g, w)
        if d is not None:
            clean = _strip(w)
            col.add(d, f"optimizer/{clean}", "optimizer/" + clean.rsplit("/", 1)[0] if "/" in clean else "optimizer",
                    clean.rsplit("/", 1)[-1], Role.OPTIMIZER_STATE)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix and name else prefix or name


def _keras3_vars(col: _Collector, vars_g: Any, layer: str, classes: tuple[str, ...], forced: Role | None) -> None:
    # ASCII digits only, ordered by value without int(): a 5000-digit key must not raise
    keys = sorted((k for k in vars_g if re.fullmatch(r"[0-9]+", k)), key=lambda k: (len(k.lstrip("0")), k))
    cls = next((c for c in classes if c in K3_VAR_NAMES), None)
    names = K3_VAR_NAMES[cls][: len(keys)] if cls else []
    names += [f"var{k}" for k in keys[len(names):]]
    hpath = re.sub(r"/vars$", "", vars_g.name.strip("/"))
    for k, param in zip(keys, names):
        col.add(col.member(vars_g, k), _join(layer, param), layer or "model", param, forced,
                alt_name=f"{hpath}/{param}")


def _keras3_group(col: _Collector, g: Any, prefix: str, forced: Role | None, depth: int,
                  label: str | None = None) -> int:
    """Walks one group: its own `vars` (a layer or model's variables) and every subgroup (nested layers,
    containers such as `layers`, sub-models tracked as attributes). Returns the number of `vars` groups."""
    import h5py

    if depth > MAX_DEPTH:
        raise CorruptCheckpointError(col.path, f"HDF5 groups nest more than {MAX_DEPTH} deep at {g.name[:80]!r}")
    if not col.first_visit(g):
        return 0
    found = 0
    own = g.name.rsplit("/", 1)[-1]
    vars_g = col.member(g, "vars")
    if isinstance(vars_g, h5py.Group) and col.first_visit(vars_g):
        found += 1
        vname = _str_attr(vars_g, "name", own)
        layer = _join(prefix, label if label is not None else vname)
        classes = (re.sub(r"_\d+$", "", own), re.sub(r"_\d+$", "", vname))
        _keras3_vars(col, vars_g, layer, classes, forced)
    else:
        layer = _join(prefix, label) if label is not None else prefix
    for k in g:  # nested layers ("layers", an RNN's "cell", ...) keep this layer's name as prefix
        if k != "vars":
            sub = col.member(g, k)
            if isinstance(sub, h5py.Group):
                found += _keras3_group(col, sub, layer, forced, depth + 1)
    return found


def _keras3(col: _Collector, h: Any) -> int:
    """Keras 3 layout: `layers/...` for a Functional or Sequential model's layers, `optimizer/...`, the
    model's own `vars`, and one group per attribute holding a sub-model or layer (a custom Model's
    `self.block1 = Sequential(...)` gives `block1/layers/conv2d/vars`), named by that attribute."""
    import h5py

    found = 0
    groups = [(k, col.member(h, k)) for k in h]
    groups = [(k, g) for k, g in groups if isinstance(g, h5py.Group)]
    col.first_visit(h)
    for k, g in groups:
        if k == "layers":
            found += _keras3_group(col, g, "", None, 1)
    for k, g in groups:
        if k not in ("layers", "optimizer", "vars"):
            found += _keras3_group(col, g, "", None, 1, label=k)
    for k, g in groups:
        if k == "vars" and col.first_visit(g):
            found += 1
            _keras3_vars(col, g, _str_attr(g, "name", "model"), (), None)
    for k, g in groups:
        if k == "optimizer":
            found += _keras3_group(col, g, "optimizer", Role.OPTIMIZER_STATE, 1)
    return found


def _walk(col: _Collector, h: Any, variant_hint: str, meta: dict) -> str:
    import h5py

    mw = col.member(h, "model_weights")
    if isinstance(mw, h5py.Group):
        _keras2_layers(col, mw, _attr_list(mw, "layer_names") or [])
        ow = col.member(h, "optimizer_weights")
        if isinstance(ow, h5py.Group):
            _keras2_optimizer(col, ow)
        return "keras2-model"
    names = _attr_list(h, "layer_names")
    if names is not None:
        _keras2_layers(col, h, names)
        return "keras2-weights"
    if _keras3(col, h):
        meta.setdefault("keras_version", "3")
        return variant_hint or "keras3-weights"
    raise CorruptCheckpointError(col.path, "HDF5 file holds no Keras weights (no model_weights, layer_names or "
                                           "vars groups)")


def _read_h5(path: str, window: tuple[int, int] | None, variant_hint: str, extra_meta: dict) -> Checkpoint:
    handle = _H5Handle(path, window)
    try:
        try:
            h = handle.file()
        except H5_ERRORS as e:
            raise CorruptCheckpointError(path, f"not a readable HDF5 file ({str(e)[:80]})") from None
        col = _Collector(handle)
        meta: dict = dict(extra_meta)
        try:
            for k in ("keras_version", "backend"):
                if k in h.attrs:
                    meta[k] = _str_attr(h, k, "")
            variant = _walk(col, h, variant_hint, meta)
        except WdistError:
            raise
        except H5_ERRORS as e:
            raise CorruptCheckpointError(path, f"HDF5 structure is damaged ({type(e).__name__}: "
                                               f"{str(e)[:80]})") from None
        if not col.tensors:
            raise CorruptCheckpointError(path, "HDF5 file holds no weight tensors")
    except BaseException:
        handle.close()  # a refused file leaves no handle open
        raise
    fix_norm_biases(col.tensors)
    ck = Checkpoint(path=path, format=Format.KERAS_H5, variant=variant, tensors=col.tensors, metadata=meta,
                    sources=[path])
    handle.attach(ck)
    if col.skipped:
        ck.warnings.append("datasets with unsupported dtypes were not analysed: " + ", ".join(col.skipped[:10]))
    return ck


def load_keras_h5(path: str) -> Checkpoint:
    try:
        import h5py  # noqa: F401
    except ImportError:
        raise MissingDependencyError(path, "reading Keras HDF5 needs h5py (pip install h5py)") from None
    return _read_h5(path, None, "", {})


def load_keras_zip(path: str) -> Checkpoint:
    try:
        zf = open_zip(path)
    except ZIP_ERRORS as e:
        raise CorruptCheckpointError(path, f"not a readable zip archive ({e})") from None
    with zf:
        infos = zf.infolist()
        dup = next((n for n, c in Counter(i.filename for i in infos).items() if c > 1), None)
        if dup is not None:  # readers disagree on which copy counts: one could be checked, another loaded
            raise CorruptCheckpointError(path, f".keras archive holds {dup!r} more than once")
        names = zip_members(zf, path)
        info = names.get("model.weights.h5")
        if info is None:
            raise CorruptCheckpointError(path, ".keras archive has no model.weights.h5")
        if info.compress_type != zipfile.ZIP_STORED:
            raise CorruptCheckpointError(path, "model.weights.h5 is compressed inside the archive; re-save with Keras")
        meta: dict = {}
        order: list[str] = []
        skipped: list[str] = []
        for member in ("metadata.json", "config.json"):
            if member not in names:
                continue
            why = "keras_version and model_class not shown" if member == "metadata.json" else \
                "tensors are in the HDF5 file's order"
            if names[member].file_size > MAX_CONFIG_BYTES:
                skipped.append(f"{member} is {names[member].file_size:,} bytes, over the limit of "
                               f"{MAX_CONFIG_BYTES:,}: not read ({why})")
                continue
            try:  # decompressed in a stream capped at the claimed size: no zip bomb
                raw = read_zip_member(path, names[member], MAX_CONFIG_BYTES, member)
            except ZIP_ERRORS:
                raise CorruptCheckpointError(path, f"{member} in the archive is not valid JSON") from None
            try:
                jsonbudget.check(path, raw, member, MAX_CONFIG_CONTAINERS, MAX_CONFIG_ITEMS)
            except CorruptCheckpointError as e:
                skipped.append(f"{e.reason}: not read ({why})")
                continue
            try:
                data = json.loads(raw)
            except ZIP_ERRORS + (RecursionError,):
                raise CorruptCheckpointError(path, f"{member} in the archive is not valid JSON") from None
            if member == "metadata.json" and isinstance(data, dict):
                meta.update({k: str(v) for k, v in data.items() if isinstance(v, (str, int))})
            elif isinstance(data, dict):
                meta["model_class"] = str(data.get("class_name", ""))
                order = _config_layer_order(data)
        offset = zip_member_offset(path, info.header_offset, info.compress_size, raw_name(info), info.orig_filename)
    ck = _read_h5(path, (offset, info.file_size), "keras3-archive", meta)
    ck.format = Format.KERAS_ZIP
    ck.warnings += skipped
    if order:  # HDF5 lists groups alphabetically; config.json has the model's own layer order
        rank = {name: i for i, name in enumerate(order)}
        ck.tensors.sort(key=lambda t: rank.get(t.layer.split("/")[0], len(rank)))
    return ck


def _config_layer_order(config: dict) -> list[str]:
    layers = config.get("config", {}).get("layers", []) if isinstance(config.get("config"), dict) else []
    out = []
    for layer in layers if isinstance(layers, list) else []:
        cfg = layer.get("config") if isinstance(layer, dict) else None
        if isinstance(cfg, dict) and isinstance(cfg.get("name"), str):
            out.append(cfg["name"])
    return out
