"""Flax / JAX `flax.serialization` msgpack files (`to_bytes(state)`, `msgpack_serialize(tree)`).

The file is walked by wdist's own minimal msgpack reader, which keeps nothing but the tree's keys, scalars
and, for every array, its shape, dtype and the byte offset of its buffer in the file. flax stores an array
as ext type 1 whose payload is itself msgpack: [shape, dtype name, raw C-order bytes]; arrays above flax's
MAX_CHUNK_SIZE are a dict {"__msgpack_chunked_array__": True, "shape": {...}, "chunks": {"0": ext, ...}} of
flat pieces, read back to back. So memory stays bounded by the tree's structure, never by the array bytes,
and no msgpack package or object hook is needed. Names join dict keys with "/" (`params/Dense_0/kernel`)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from wdist.loaders.dtypes import storage_dtype
from wdist.loaders.errors import CorruptCheckpointError, UnsupportedFormatError
from wdist.loaders.fileio import RangeReader, file_size
from wdist.loaders.model import Checkpoint, Role, TensorRef, dtype_itemsize
from wdist.loaders.plugin import FormatPlugin
from wdist.loaders.roles import default_unit_axis, fix_norm_biases, infer_role, split_name

NAME = "flax-msgpack"
MAX_DEPTH = 128
MAX_NODES = 1 << 21  # msgpack objects walked: real Flax states hold ~10^4-10^5; 2M empty maps take ~1 s
MAX_KEY = 1 << 16
MAX_STR = 1 << 20  # strings kept as metadata; longer ones are skipped over
MAX_DIMS = 64
CHUNKED = "__msgpack_chunked_array__"
EXT_NDARRAY, EXT_COMPLEX, EXT_NPSCALAR = 1, 2, 3
# numpy dtype names flax writes (arr.dtype.name) -> wdist dtype
FLAX_DTYPES = {
    "float32": "float32", "float64": "float64", "float16": "float16", "bfloat16": "bfloat16",
    "float8_e4m3fn": "float8_e4m3fn", "float8_e5m2": "float8_e5m2", "float8_e4m3fnuz": "float8_e4m3fnuz",
    "float8_e5m2fnuz": "float8_e5m2fnuz", "int64": "int64", "int32": "int32", "int16": "int16", "int8": "int8",
    "uint64": "uint64", "uint32": "uint32", "uint16": "uint16", "uint8": "uint8", "bool": "bool",
    "complex64": "complex64", "complex128": "complex128",
}
OPTIMIZER_TOP = {"opt_state", "optimizer", "opt", "optimizer_state", "tx_state"}
RUNNING_TOP = {"batch_stats"}


class _Bad(Exception):
    pass


@dataclass
class ArrayDesc:
    shape: tuple[int, ...]
    dtype: str
    offset: int  # absolute file offset of the raw bytes
    nbytes: int


@dataclass
class Chunked:
    shape: tuple[int, ...]
    pieces: list[ArrayDesc]


class _Walker:
    """Reads msgpack objects from a file; containers become Python lists/dicts, arrays ArrayDescs, bytes
    and over-long strings are skipped (recorded as None)."""

    def __init__(self, f: Any, size: int) -> None:
        self.f, self.size, self.pos, self.nodes = f, size, 0, 0
        self._buf, self._buf_at = b"", 0

    def _take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.size:
            raise _Bad(f"object at byte {self.pos} runs past the end of the file")
        lo = self.pos - self._buf_at
        if lo >= 0 and lo + n <= len(self._buf):
            out = self._buf[lo:lo + n]
        else:
            self.f.seek(self.pos)
            self._buf_at = self.pos
            self._buf = self.f.read(max(n, 1 << 16))
            out = self._buf[:n]
            if len(out) != n:
                raise _Bad("file is truncated")
        self.pos += n
        return out

    def _skip(self, n: int) -> None:
        if n < 0 or self.pos + n > self.size:
            raise _Bad(f"object at byte {self.pos} runs past the end of the file")
        self.pos += n

    def _uint(self, n: int) -> int:
        return int.from_bytes(self._take(n), "big")

    def _len_left(self, n: int) -> int:
        if n > self.size - self.pos:  # each element takes at least a byte
            raise _Bad(f"container of {n} elements at byte {self.pos} cannot fit in the file")
        return n

    def read(self, depth: int = 0) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _Bad(f"more than {MAX_NODES} objects")
        if depth > MAX_DEPTH:
            raise _Bad("nested too deeply")
        b = self._take(1)[0]
        if b <= 0x7F:
            return b
        if b >= 0xE0:
            return b - 0x100
        if 0x80 <= b <= 0x8F:
            return self._map(b & 0x0F, depth)
        if 0x90 <= b <= 0x9F:
            return self._array(b & 0x0F, depth)
        if 0xA0 <= b <= 0xBF:
            return self._str(b & 0x1F)
        if b == 0xC0:
            return None
        if b == 0xC2:
            return False
        if b == 0xC3:
            return True
        if b in (0xC4, 0xC5, 0xC6):
            self._skip(self._uint(1 << (b - 0xC4)))
            return None
        if b in (0xC7, 0xC8, 0xC9):
            n = self._uint(1 << (b - 0xC7))
            return self._ext(self._take(1)[0], n, depth)
        if b == 0xCA:
            return float(np.frombuffer(self._take(4), ">f4")[0])
        if b == 0xCB:
            return float(np.frombuffer(self._take(8), ">f8")[0])
        if 0xCC <= b <= 0xCF:
            return self._uint(1 << (b - 0xCC))
        if 0xD0 <= b <= 0xD3:
            return int.from_bytes(self._take(1 << (b - 0xD0)), "big", signed=True)
        if 0xD4 <= b <= 0xD8:
            return self._ext(self._take(1)[0], 1 << (b - 0xD4), depth)
        if b in (0xD9, 0xDA, 0xDB):
            return self._str(self._uint(1 << (b - 0xD9)))
        if b in (0xDC, 0xDD):
            return self._array(self._uint(2 if b == 0xDC else 4), depth)
        if b in (0xDE, 0xDF):
            return self._map(self._uint(2 if b == 0xDE else 4), depth)
        raise _Bad(f"invalid msgpack type byte 0x{b:02x} at {self.pos - 1}")

    def _str(self, n: int) -> str | None:
        if n > MAX_STR:
            self._skip(n)
            return None
        try:
            return self._take(n).decode("utf-8")
        except UnicodeDecodeError:
            raise _Bad(f"invalid UTF-8 string at byte {self.pos - n}") from None

    def _array(self, n: int, depth: int) -> list:
        return [self.read(depth + 1) for _ in range(self._len_left(n))]

    def _map(self, n: int, depth: int) -> dict:
        out: dict = {}
        for _ in range(self._len_left(n)):
            k = self.read(depth + 1)
            if not isinstance(k, (str, int)) or isinstance(k, bool) or (isinstance(k, str) and len(k) > MAX_KEY):
                raise _Bad(f"map key at byte {self.pos} is not a string or integer")
            out[k] = self.read(depth + 1)
        return out

    def _ext(self, code: int, n: int, depth: int) -> Any:
        end = self.pos + n
        if end > self.size:
            raise _Bad("ext object runs past the end of the file")
        if code in (EXT_NDARRAY, EXT_NPSCALAR):
            desc = self._ndarray(end, depth)
            if code == EXT_NDARRAY:
                return desc
            return _Scalar(desc)
        self._skip(n)  # native complex scalars and unknown ext types carry no weights
        return None

    def _ndarray(self, end: int, depth: int) -> ArrayDesc:
        b = self._take(1)[0]
        if b != 0x93:
            raise _Bad("ndarray payload is not a 3-element array")
        shape = self.read(depth + 1)
        name = self.read(depth + 1)
        if isinstance(name, bytes):
            name = name.decode("latin1")
        if not isinstance(shape, list) or len(shape) > MAX_DIMS or \
                not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise _Bad("ndarray shape is not a list of non-negative integers")
        dtype = FLAX_DTYPES.get(name) if isinstance(name, str) else None
        if dtype is None:
            raise _Bad(f"ndarray dtype {str(name)[:40]!r} is not supported")
        t = self._take(1)[0]
        if t in (0xC4, 0xC5, 0xC6):
            n = self._uint(1 << (t - 0xC4))
        elif 0xA0 <= t <= 0xBF or t in (0xD9, 0xDA, 0xDB):  # raw-mode writers store bytes as str
            n = t & 0x1F if t <= 0xBF else self._uint(1 << (t - 0xD9))
        else:
            raise _Bad("ndarray buffer is not a bin object")
        offset = self.pos
        self._skip(n)
        if self.pos != end:
            raise _Bad("ndarray payload does not fill its ext object")
        numel = math.prod(shape)
        if numel * dtype_itemsize(dtype) != n:
            raise _Bad(f"ndarray of shape {shape} x {dtype} needs {numel * dtype_itemsize(dtype)} bytes, holds {n}")
        return ArrayDesc(tuple(shape), dtype, offset, n)


@dataclass
class _Scalar:
    desc: ArrayDesc


@dataclass
class ConcatReader:
    """A flat array stored as consecutive pieces (flax's chunked-array form)."""

    path: str
    dtype: str
    pieces: list[tuple[int, int]]  # (file offset, elements)

    def read_raw(self, start: int, count: int) -> np.ndarray:
        out = np.empty(count, dtype=storage_dtype(self.dtype))
        pos, filled = 0, 0
        for off, n in self.pieces:
            lo, hi = max(start, pos), min(start + count, pos + n)
            if lo < hi:
                out[filled:filled + hi - lo] = RangeReader(self.path, off, self.dtype).read_raw(lo - pos, hi - lo)
                filled += hi - lo
            pos += n
        return out


def _chunked(d: dict) -> Chunked | None:
    shape, chunks = d.get("shape"), d.get("chunks")
    if not isinstance(shape, dict) or not isinstance(chunks, dict):
        raise _Bad("chunked array lacks shape/chunks")
    try:
        dims = tuple(shape[str(i)] for i in range(len(shape)))
        pieces = [chunks[str(i)] for i in range(len(chunks))]
    except KeyError:
        raise _Bad("chunked array's shape/chunks keys are not 0..n-1") from None
    if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in dims) or \
            not all(isinstance(p, ArrayDesc) and len(p.shape) == 1 for p in pieces) or not pieces:
        raise _Bad("chunked array is damaged")
    if len({p.dtype for p in pieces}) != 1:
        raise _Bad("chunked array pieces have different dtypes")
    return Chunked(dims, pieces)


def _leaves(obj: Any, path: tuple[str, ...], out: list, meta: dict) -> None:
    if isinstance(obj, dict):
        if obj.get(CHUNKED) is True:
            out.append((path, _chunked(obj)))
            return
        for k, v in obj.items():
            _leaves(v, path + (str(k),), out, meta)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _leaves(v, path + (str(i),), out, meta)
    elif isinstance(obj, ArrayDesc):
        out.append((path, obj))
    elif isinstance(obj, _Scalar):
        out.append((path, obj.desc))
    elif isinstance(obj, (int, float, str)) and not isinstance(obj, bool) and len(path) == 1:
        meta[path[0]] = obj


def _role(path: tuple[str, ...], name: str, layer: str, param: str, shape: tuple[int, ...], dtype: str) -> Role:
    top = path[0] if path else ""
    if top in OPTIMIZER_TOP:
        return Role.OPTIMIZER_STATE
    if top in RUNNING_TOP:
        return Role.RUNNING_STAT
    if param == "embedding" and len(shape) >= 2:
        return Role.EMBEDDING
    return infer_role(name, layer, param, shape, dtype)


def tree_tensor(path: tuple[str, ...], name: str, shape: tuple[int, ...], dtype: str, reader: Any,
                source: str) -> TensorRef:
    """One leaf of a flax/orbax parameter tree as a TensorRef (shared by the msgpack and Orbax readers)."""
    layer, param = split_name(name, "/")
    role = _role(path, name, layer, param, shape, dtype)
    if role is Role.NORM and param == "scale" and len(shape) != 1:
        role = Role.WEIGHT  # a multi-dimensional "scale" is a learned weight, not a norm gain
    return TensorRef(name=name, layer=layer, role=role, shape=shape, dtype=dtype, reader=reader,
                     unit_axis=default_unit_axis(role, len(shape), keras=True), source=source)


def load(path: str) -> Checkpoint:
    if os.path.isdir(path):
        raise UnsupportedFormatError(path, "a flax msgpack checkpoint is a single file")
    size = file_size(path)
    if size == 0:
        raise CorruptCheckpointError(path, "file is empty")
    with open(path, "rb") as f:
        w = _Walker(f, size)
        try:
            tree = w.read()
            if w.pos != size:
                raise _Bad(f"{size - w.pos} bytes of trailing data after the msgpack object")
            leaves: list = []
            meta: dict = {}
            _leaves(tree, (), leaves, meta)
        except _Bad as e:
            raise CorruptCheckpointError(path, f"not a readable flax msgpack file ({e})") from None
        except RecursionError:
            raise CorruptCheckpointError(path, "msgpack tree is nested too deeply") from None
    if not isinstance(tree, dict):
        raise CorruptCheckpointError(path, "msgpack file does not hold a tree of named arrays (top level is not a map)")
    tensors: list[TensorRef] = []
    for p, leaf in leaves:
        name = "/".join(p) or "value"
        if isinstance(leaf, Chunked):
            numel = math.prod(leaf.shape)
            if sum(x.shape[0] for x in leaf.pieces) != numel:
                raise CorruptCheckpointError(path, f"chunked array {name!r}: pieces do not add up to shape {list(leaf.shape)}")
            dtype, shape = leaf.pieces[0].dtype, leaf.shape
            reader: Any = ConcatReader(path, dtype, [(x.offset, x.shape[0]) for x in leaf.pieces])
        else:
            dtype, shape = leaf.dtype, leaf.shape
            reader = RangeReader(path, leaf.offset, dtype)
        tensors.append(tree_tensor(p, name, shape, dtype, reader, os.path.basename(path)))
    fix_norm_biases(tensors)
    variant = "train-state" if any(t.role is Role.OPTIMIZER_STATE for t in tensors) else "params"
    if any(isinstance(t.reader, ConcatReader) for t in tensors):
        variant += ", chunked arrays"
    return Checkpoint(path=path, format=NAME, variant=variant, tensors=tensors, metadata=meta, sources=[path])


def sniff(head: bytes, path: str) -> bool:
    """A msgpack map whose first value (or nested first value) soon holds an ext-1 ndarray or a map.
    msgpack has no magic, so the extension decides and the content only confirms it is a map."""
    if not head:
        return False
    b = head[0]
    is_map = 0x80 <= b <= 0x8F or b in (0xDE, 0xDF)
    return is_map and path.lower().endswith(".msgpack")


PLUGIN = FormatPlugin(
    name=NAME, title="Flax / JAX msgpack (flax.serialization)", extensions=(".msgpack",), load=load, sniff=sniff,
    variants="flax.serialization.to_bytes / msgpack_serialize files: params, batch_stats, optax opt_state "
             "(TrainState), chunked arrays; all numpy dtypes incl. bfloat16",
    order=90, fallback_by_extension=True,
)
