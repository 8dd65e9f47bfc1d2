"""ONNX (.onnx, with or without external data files), read by a minimal protobuf wire-format reader of the
ModelProto / GraphProto / NodeProto / TensorProto fields wdist needs. Tensor bytes are never copied while
parsing: each initializer records where its `raw_data` (or external data range, or packed typed field)
lies, and is read later by range. No dependency is needed to read.

Roles and output axes come from the graph: which node consumes which initializer (Conv/Gemm/MatMul weight
vs bias, normalisation scales, Gather embeddings), with Gemm's transB and the op's weight layout deciding
the output-unit axis. Initializers of subgraphs (If/Loop/Scan bodies, at any depth) are read like the
graph's; tensors held by node attributes (Constant values) and sparse initializers are not read (reported
in a warning)."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wdist.loaders.dtypes import storage_dtype
from wdist.loaders.errors import CorruptCheckpointError, UnsupportedFormatError
from wdist.loaders.fileio import RangeReader, file_size, shared_span
from wdist.loaders.fs import inside_model_folder
from wdist.loaders.model import Checkpoint, Role, TensorRef, dtype_itemsize
from wdist.loaders.plugin import FormatPlugin
from wdist.loaders.roles import default_unit_axis, infer_role, split_name

MAX_NAME = 1 << 16
MAX_META_STRING = 256
# typed values written unpacked (one tag per value; protobuf writers pack them): each is kept as a Python int
# until decoded, so they are counted over the whole file, not per tensor
MAX_UNPACKED = 1 << 20
MAX_SEGMENTS = 1024  # packed typed-field pieces per tensor
# graph nodes and initializers: the largest exported LLM graphs hold ~10^5 nodes and ~10^4 initializers;
# each costs a few hundred bytes and microseconds to record, so a file of 5M empty records is refused in ~2 s
MAX_NODES = 1 << 19
MAX_INITS = 1 << 19
# strings and attributes recorded from nodes (inputs, outputs, int attributes), over the whole graph: real
# graphs have a few per node (~5 x 10^5 for the largest); a node of 3M inputs took 955 MB
MAX_NODE_ITEMS = 1 << 21
MAX_META_ENTRIES = 4096  # metadata_props and opset_import entries (real models: a handful of each)
# protobuf fields walked in all, read or skipped, at ~1 us each: a real model of 10^5 nodes has ~3M (its
# weights are a few long fields each); 30M empty value_info fields took 30 s
MAX_FIELDS = 1 << 23
DECODE_BYTES = 1 << 18  # typed data decoded this many bytes at a time (varint scratch: ~64 bytes a byte)

# TensorProto.DataType -> (wdist dtype, typed field number, wire kind of that field, values per element)
DTYPES: dict[int, tuple[str, int, str, int]] = {
    1: ("float32", 4, "f4", 1), 2: ("uint8", 5, "varint", 1), 3: ("int8", 5, "varint", 1),
    4: ("uint16", 5, "varint", 1), 5: ("int16", 5, "varint", 1), 6: ("int32", 5, "varint", 1),
    7: ("int64", 7, "varint", 1), 9: ("bool", 5, "varint", 1), 10: ("float16", 5, "varint", 1),
    11: ("float64", 10, "f8", 1), 12: ("uint32", 11, "varint", 1), 13: ("uint64", 11, "varint", 1),
    14: ("complex64", 4, "f4", 2), 15: ("complex128", 10, "f8", 2), 16: ("bfloat16", 5, "varint", 1),
    17: ("float8_e4m3fn", 5, "varint", 1), 18: ("float8_e4m3fnuz", 5, "varint", 1),
    19: ("float8_e5m2", 5, "varint", 1), 20: ("float8_e5m2fnuz", 5, "varint", 1),
}
UNREAD_DTYPES = {8: "STRING", 21: "UINT4", 22: "INT4", 23: "FLOAT4E2M1", 24: "INT2", 25: "UINT2"}
_TYPED_FIELDS = {4, 5, 7, 10, 11}
# wire type of one value of each typed field written unpacked: float_data fixed32, double_data fixed64,
# the integer fields varints (protobuf keeps a value of another wire type as an unknown field, not data)
_UNPACKED_WIRE = {4: 5, 10: 1, 5: 0, 7: 0, 11: 0}
_DIGITS = re.compile(r"[0-9]{1,19}")


class _PB:
    """Protobuf wire-format access to a file through a bounded window; every length is checked against
    its enclosing message's end before anything is read."""

    WINDOW = 1 << 16

    def __init__(self, path: str, f: Any, size: int) -> None:
        self.path, self.f, self.size = path, f, size
        self._buf, self._at = b"", 0
        self.fields_left = MAX_FIELDS
        self.items_left = MAX_NODE_ITEMS

    def bad(self, why: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(self.path, f"ONNX protobuf is damaged: {why}")

    def get(self, pos: int, n: int) -> bytes:
        rel = pos - self._at
        if rel < 0 or rel + n > len(self._buf):
            self.f.seek(pos)
            self._buf = self.f.read(max(n, self.WINDOW))
            self._at, rel = pos, 0
            if len(self._buf) < n:
                raise self.bad("truncated")
        return self._buf[rel:rel + n]

    def varint(self, pos: int, end: int) -> tuple[int, int]:
        raw = self.get(pos, min(10, end - pos)) if pos < end else b""
        v = shift = 0
        for i, b in enumerate(raw):
            v |= (b & 0x7F) << shift
            if b < 0x80:
                return v & 0xFFFFFFFFFFFFFFFF, pos + i + 1
            shift += 7
        raise self.bad("varint runs past its message" if len(raw) < 10 else "varint longer than 10 bytes")

    def fields(self, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
        """(field number, wire type, value, payload offset): the value is the integer for varint/fixed
        fields and the payload length for length-delimited ones (whose payload is not read)."""
        pos = start
        while pos < end:
            self.fields_left -= 1
            if self.fields_left < 0:
                raise self.bad(f"the file holds over {MAX_FIELDS:,} protobuf fields (real models: a few million)")
            key, pos = self.varint(pos, end)
            fn, wt = key >> 3, key & 7
            if fn == 0:
                raise self.bad("field number 0")
            if wt == 0:
                v, pos = self.varint(pos, end)
                yield fn, wt, v, pos
            elif wt == 1 or wt == 5:
                n = 8 if wt == 1 else 4
                if pos + n > end:
                    raise self.bad("fixed-size field runs past its message")
                yield fn, wt, int.from_bytes(self.get(pos, n), "little"), pos
                pos += n
            elif wt == 2:
                n, pos = self.varint(pos, end)
                if n > end - pos:
                    raise self.bad(f"field {fn} of {n} bytes runs past its message")
                yield fn, wt, n, pos
                pos += n
            else:
                raise self.bad(f"unsupported wire type {wt}")

    def string(self, pos: int, n: int, what: str, limit: int = MAX_NAME) -> str:
        if n > limit:
            raise self.bad(f"{what} of {n} bytes is too long")
        try:
            return self.get(pos, n).decode("utf-8")
        except UnicodeDecodeError:
            raise self.bad(f"{what} is not valid UTF-8") from None


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


@dataclass(slots=True)
class _Node:
    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    ints: dict[str, int]
    unread: int = 0  # float tensors of more than one value held by its attributes (not read)


@dataclass(slots=True)
class _Init:
    name: str = ""
    dims: list[int] = field(default_factory=list)
    data_type: int = 0
    raw: tuple[int, int] | None = None  # offset, length
    external: dict[str, str] = field(default_factory=dict)
    location: int = 0
    typed: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # packed pieces per field
    unpacked: dict[int, list[int]] = field(default_factory=dict)
    segmented: bool = False


_FLOAT_TYPES = frozenset(k for k, v in DTYPES.items() if v[0].startswith(("float", "bfloat")))


def _weightlike(pb: _PB, start: int, end: int) -> bool:
    """Whether a TensorProto held by a node attribute could be weights: floating point with more than one
    element (exported graphs hold many scalar and integer shape constants; those are not reported)."""
    dtype, numel = 0, 1
    for fn, wt, v, p in pb.fields(start, end):
        if fn == 2 and wt == 0:
            dtype = v
        elif fn == 1 and wt == 0:
            numel *= v
        elif fn == 1 and wt == 2:  # packed dims
            q = p
            while q < p + v:
                d, q = pb.varint(q, p + v)
                numel *= d
    return dtype in _FLOAT_TYPES and numel > 1


def _node(pb: _PB, start: int, end: int, body: Any) -> _Node:
    """One NodeProto; `body(start, end)` reads a subgraph it holds (an If/Loop/Scan body) into the model's
    nodes and initializers."""
    n = _Node("", "", [], [], {})
    for fn, wt, v, p in pb.fields(start, end):
        if wt != 2 and fn in (1, 2, 3, 4, 5):
            raise pb.bad(f"NodeProto field {fn} has wire type {wt}")
        if fn in (1, 2, 5):
            pb.items_left -= 1
            if pb.items_left < 0:
                raise pb.bad(f"graph nodes hold over {MAX_NODE_ITEMS:,} inputs, outputs and attributes")
        if fn == 1:
            n.inputs.append(pb.string(p, v, "node input"))
        elif fn == 2:
            n.outputs.append(pb.string(p, v, "node output"))
        elif fn == 3:
            n.name = pb.string(p, v, "node name")
        elif fn == 4:
            n.op = pb.string(p, v, "op_type")
        elif fn == 5:
            name, ival = "", None
            for afn, awt, av, ap in pb.fields(p, p + v):
                if afn == 1 and awt == 2:
                    name = pb.string(ap, av, "attribute name")
                elif afn == 3 and awt == 0:
                    ival = _signed(av)
                elif afn in (5, 10) and awt == 2:  # t, tensors: a Constant's value, say
                    n.unread += _weightlike(pb, ap, ap + av)
                elif afn in (6, 11) and awt == 2:  # g, graphs: an If/Loop/Scan body, read like the graph
                    body(ap, ap + av)
            if name and ival is not None:
                n.ints[name] = ival
    return n


def _tensor(pb: _PB, start: int, end: int, left: list[int]) -> _Init:
    """One TensorProto; `left` holds the unpacked typed values the rest of the file may hold."""
    t = _Init()
    for fn, wt, v, p in pb.fields(start, end):
        if fn == 1:
            if wt == 0:
                t.dims.append(_signed(v))
            elif wt == 2:
                q = p
                while q < p + v:
                    d, q = pb.varint(q, p + v)
                    t.dims.append(_signed(d))
                    if len(t.dims) > 64:
                        break
            if len(t.dims) > 64:
                raise pb.bad("tensor has more than 64 dims")
        elif fn == 2 and wt == 0:
            t.data_type = v
        elif fn == 3:
            t.segmented = True
        elif fn == 8 and wt == 2:
            t.name = pb.string(p, v, "tensor name")
        elif fn == 9 and wt == 2:
            t.raw = (p, v)
        elif fn == 13 and wt == 2:
            key = val = ""
            for efn, ewt, ev, ep in pb.fields(p, p + v):
                if ewt == 2 and efn == 1:
                    key = pb.string(ep, ev, "external_data key")
                elif ewt == 2 and efn == 2:
                    val = pb.string(ep, ev, "external_data value")
            t.external[key] = val
        elif fn == 14 and wt == 0:
            t.location = v
        elif fn in _TYPED_FIELDS:
            # protobuf concatenates packed pieces and unpacked values in file order; no writer mixes the two,
            # and keeping them apart would reorder the values: a mix is refused
            if wt != 2 and wt != _UNPACKED_WIRE[fn]:
                raise pb.bad(f"tensor {t.name!r}: typed field {fn} holds a value of wire type {wt}")
            if (fn in t.unpacked) if wt == 2 else (fn in t.typed):
                raise UnsupportedFormatError(pb.path, f"tensor {t.name!r}: typed field {fn} mixes packed and "
                                                      "unpacked values")
            if wt == 2:
                pieces = t.typed.setdefault(fn, [])
                pieces.append((p, v))
                if len(pieces) > MAX_SEGMENTS:
                    raise UnsupportedFormatError(
                        pb.path, f"tensor {t.name!r}: typed data in over {MAX_SEGMENTS} pieces")
            else:
                left[0] -= 1
                if left[0] < 0:
                    raise UnsupportedFormatError(
                        pb.path, f"tensor {t.name!r}: the file holds over {MAX_UNPACKED:,} unpacked typed values "
                                 "(write it with raw_data)")
                t.unpacked.setdefault(fn, []).append(v)
    return t


@dataclass
class _Parsed:
    meta: dict[str, Any]
    nodes: list[_Node]
    inits: list[_Init]
    notes: list[str]


def parse(path: str) -> _Parsed:
    size = file_size(path)
    if size == 0:
        raise CorruptCheckpointError(path, "file is empty")
    meta: dict[str, Any] = {}
    nodes: list[_Node] = []
    inits: list[_Init] = []
    notes: list[str] = []
    graphs = 0
    unpacked_left = [MAX_UNPACKED]
    entries = {8: 0, 14: 0}  # opset_import, metadata_props
    sparse = 0

    def graph(start: int, end: int, top: bool = False) -> None:
        """A GraphProto's nodes and initializers, its subgraphs' (If/Loop/Scan bodies) included: their
        initializers are weights like the graph's (a NaN in a branch was dropped without a word)."""
        nonlocal sparse
        for gfn, gwt, gv, gp in pb.fields(start, end):
            if gwt != 2:
                continue
            if gfn == 1:
                if len(nodes) >= MAX_NODES:
                    raise pb.bad(f"graph holds over {MAX_NODES:,} nodes (real models: ~10^5)")
                nodes.append(_node(pb, gp, gp + gv, graph))
            elif gfn == 2 and top:
                meta["graph_name"] = pb.string(gp, gv, "graph name")[:MAX_META_STRING]
            elif gfn == 5:
                if len(inits) >= MAX_INITS:
                    raise pb.bad(f"graph holds over {MAX_INITS:,} initializers")
                inits.append(_tensor(pb, gp, gp + gv, unpacked_left))
            elif gfn == 15:
                sparse += 1

    def entry(fn: int) -> None:
        entries[fn] += 1
        if entries[fn] > MAX_META_ENTRIES:
            raise pb.bad(f"over {MAX_META_ENTRIES:,} {'opset_import' if fn == 8 else 'metadata_props'} entries "
                         "(real models: a handful)")
    with open(path, "rb") as f:
        pb = _PB(path, f, size)
        for fn, wt, v, p in pb.fields(0, size):
            if fn == 1 and wt == 0:
                meta["ir_version"] = _signed(v)
            elif fn in (2, 3, 4) and wt == 2:
                key = {2: "producer_name", 3: "producer_version", 4: "domain"}[fn]
                meta[key] = pb.string(p, v, key, 1 << 20)[:MAX_META_STRING]
            elif fn == 5 and wt == 0:
                meta["model_version"] = _signed(v)
            elif fn == 8 and wt == 2:
                entry(fn)
                dom, ver = "", None
                for ofn, owt, ov, op_ in pb.fields(p, p + v):
                    if ofn == 1 and owt == 2:
                        dom = pb.string(op_, ov, "opset domain")
                    elif ofn == 2 and owt == 0:
                        ver = _signed(ov)
                if ver is not None:
                    meta["opset" if dom in ("", "ai.onnx") else f"opset.{dom[:64]}"] = ver
            elif fn == 14 and wt == 2:
                entry(fn)
                key = val = ""
                for mfn, mwt, mv, mp in pb.fields(p, p + v):
                    if mwt == 2 and mfn == 1:
                        key = pb.string(mp, mv, "metadata key", 1 << 20)[:MAX_META_STRING]
                    elif mwt == 2 and mfn == 2:
                        val = pb.string(mp, mv, "metadata value", 1 << 20)[:MAX_META_STRING]
                if key:
                    meta[key] = val
            elif fn == 7 and wt == 2:
                graphs += 1
                graph(p, p + v, True)
    if sparse:
        notes.append(f"{sparse} sparse initializers not read")
    held = [nd for nd in nodes if nd.unread]
    if held:  # never a silent skip: a NaN there is not in any number wdist reports
        names = ", ".join(repr(nd.name or nd.op)[:80] for nd in held[:5]) + (" ..." if len(held) > 5 else "")
        notes.append(f"{sum(nd.unread for nd in held)} tensors held by node attributes (Constant values) are "
                     f"not read: {names}")
    if not graphs:
        raise CorruptCheckpointError(path, "not an ONNX model (no graph in the protobuf)")
    return _Parsed(meta, nodes, inits, notes)


def _decode_varints(buf: np.ndarray, path: str) -> np.ndarray:
    """Packed protobuf varints -> uint64, vectorised."""
    if buf.size == 0:
        return np.empty(0, dtype=np.uint64)
    ends = np.flatnonzero(buf < 0x80)
    if ends.size == 0 or ends[-1] != buf.size - 1:
        raise CorruptCheckpointError(path, "ONNX typed data ends inside a varint")
    starts = np.concatenate(([0], ends[:-1] + 1))
    lens = ends - starts + 1
    if int(lens.max()) > 10:
        raise CorruptCheckpointError(path, "ONNX typed data holds a varint longer than 10 bytes")
    pos_in = np.arange(buf.size) - np.repeat(starts, lens)
    vals = (buf & 0x7F).astype(np.uint64) << (7 * pos_in).astype(np.uint64)
    return np.bitwise_or.reduceat(vals, starts)


@dataclass
class TypedReader:
    """An initializer stored in TensorProto's typed fields (int32_data, int64_data, float_data written in
    pieces, unpacked values ...): decoded on first use, DECODE_BYTES of the file at a time straight into an
    array of its own dtype (so memory is the tensor's size, at most 2x the bytes it takes in the file, plus
    one step's scratch), kept by this reader and sliced."""

    path: str
    dtype: str
    kind: str  # "f4", "f8" or "varint"
    pieces: tuple[tuple[int, int], ...]
    unpacked: tuple[int, ...] = ()
    values: int = 0  # values the shape needs (two per element for complex types)
    _decoded: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict:  # a worker decodes for itself: never ship the decoded array
        d = dict(self.__dict__)
        d["_decoded"] = None
        return d

    def _convert(self, vals: np.ndarray) -> np.ndarray:
        """Decoded field values -> stored values of the tensor's dtype (complex: two floats per element)."""
        st = storage_dtype(self.dtype)
        if self.kind != "varint":
            return vals if self.dtype.startswith("complex") else vals.astype(st)
        if self.dtype == "float16":
            return vals.astype(np.uint16).view(st)
        if self.dtype.startswith("int"):
            return vals.view(np.int64).astype(st)
        if self.dtype == "bool":
            return vals != 0
        return vals.astype(st)  # uint*, bfloat16 and float8 bit patterns

    def _decode(self) -> np.ndarray:
        st = storage_dtype(self.dtype)
        complex_ = self.dtype.startswith("complex")
        flat = np.empty(self.values, dtype=np.dtype(st.char.lower()) if complex_ else st)  # f4/f8 halves
        n = 0

        def put(vals: np.ndarray) -> None:
            nonlocal n
            if n + vals.size > self.values:
                raise CorruptCheckpointError(self.path, f"ONNX typed data holds more than the {self.values} "
                                             "values the shape needs")
            flat[n:n + vals.size] = self._convert(vals)
            n += vals.size

        width = 4 if self.kind == "f4" else 8
        with open(self.path, "rb") as f:
            for off, size in self.pieces:
                f.seek(off)
                carry = b""  # the bytes of a value cut by a step's end, decoded with the next step
                left = size
                while left > 0:
                    data = f.read(min(DECODE_BYTES, left))
                    if not data:
                        raise CorruptCheckpointError(self.path, "file is truncated (tensor data)")
                    left -= len(data)
                    b = np.frombuffer(carry + data, dtype=np.uint8)
                    if left == 0:  # the piece's last step decodes everything (a cut value is an error there)
                        cut = b.size
                    elif self.kind == "varint":
                        ends = np.flatnonzero(b < 0x80)
                        cut = int(ends[-1]) + 1 if ends.size else 0  # whole varints only
                    else:
                        cut = b.size - b.size % width
                    if self.kind == "varint":
                        put(_decode_varints(b[:cut], self.path))
                    else:
                        put(b[:cut].view("<f4" if width == 4 else "<f8"))
                    carry = b[cut:].tobytes()
        if self.unpacked:
            u = np.array(self.unpacked, dtype=np.uint64)
            if self.kind == "f4":
                u = u.astype(np.uint32).view("<f4")
            elif self.kind == "f8":
                u = u.view("<f8")
            put(u)
        if n != self.values:
            raise CorruptCheckpointError(
                self.path, f"ONNX typed data holds {n} values, the shape needs {self.values}")
        return flat.view(st) if complex_ else flat

    def read_raw(self, start: int, count: int) -> np.ndarray:
        dec = self._decoded if self._decoded is not None else self._decode()
        # kept only until the tensor's last values are read (an analysis reads a tensor front to back
        # once): 30 typed tensors of 10 MB stayed decoded for the whole run, 649 MB
        self._decoded = None if start + count >= len(dec) else dec
        return dec[start:start + count]


def _external_file(path: str, name: str, location: str) -> str:
    """The external data file, which must be a regular file inside the model's folder."""
    bad = (not location or "\x00" in location or os.path.isabs(location) or location.startswith(("/", "\\"))
           or re.match(r"^[A-Za-z]:", location) is not None
           or any(part == ".." for part in re.split(r"[/\\]", location)))
    if bad:
        raise CorruptCheckpointError(
            path, f"tensor {name!r}: external data location {location[:200]!r} is not a "
                  f"relative path inside the model's folder")
    base = os.path.dirname(os.path.abspath(path))
    full = os.path.join(base, location)
    if not inside_model_folder(full, base):
        raise CorruptCheckpointError(
            path, f"tensor {name!r}: external data {location!r} resolves outside the "
                  f"model's folder")
    if not os.path.isfile(full):
        raise CorruptCheckpointError(path, f"tensor {name!r}: external data file {location!r} is missing or not a "
                                           "regular file")
    return full


def _reader(path: str, t: _Init, dtype: str, numel: int, size: int) -> tuple[Any, str | None]:
    """(reader, external file or None) for one initializer, with every range checked."""
    need = numel * dtype_itemsize(dtype)
    if t.location == 1:  # EXTERNAL; as in onnx, external_data entries without it are not where the data is
        ext = t.external
        for k in ("offset", "length"):
            if k in ext and not _DIGITS.fullmatch(ext[k]):
                raise CorruptCheckpointError(
                    path, f"tensor {t.name!r}: external data {k} {ext[k][:40]!r} is not a number")
        fp = _external_file(path, t.name, ext.get("location", ""))
        off = int(ext.get("offset", "0"))
        length = int(ext["length"]) if "length" in ext else need
        if length != need:
            raise CorruptCheckpointError(
                path, f"tensor {t.name!r}: shape x {dtype} needs {need} bytes but external "
                      f"data length is {length}")
        if off + length > file_size(fp):
            raise CorruptCheckpointError(
                path, f"tensor {t.name!r}: external data {off}..{off + length} runs past the "
                      f"end of {os.path.basename(fp)}")
        return RangeReader(fp, off, dtype), fp
    if t.raw is not None:
        off, length = t.raw
        if length != need:
            raise CorruptCheckpointError(
                path, f"tensor {t.name!r}: shape x {dtype} needs {need} bytes but raw_data "
                      f"holds {length}")
        return RangeReader(path, off, dtype), None
    _, fno, kind, per = DTYPES[t.data_type]
    pieces = tuple(t.typed.get(fno, ()))
    unpacked = tuple(t.unpacked.get(fno, ()))
    stray = [f for f in (set(t.typed) | set(t.unpacked)) if f != fno]
    if stray:
        raise CorruptCheckpointError(
            path, f"tensor {t.name!r}: typed field {stray[0]} does not fit data type {dtype}")
    values = numel * per
    if kind in ("f4", "f8"):
        width = 4 if kind == "f4" else 8
        got = sum(n for _, n in pieces) + width * len(unpacked)
        if got != values * width:
            raise CorruptCheckpointError(
                path, f"tensor {t.name!r}: shape needs {values} values, typed data holds "
                      f"{got // width}")
        if len(pieces) == 1 and not unpacked and dtype in ("float32", "float64"):
            return RangeReader(path, pieces[0][0], dtype), None
    else:
        # each varint takes 1 to 10 bytes
        got = sum(n for _, n in pieces)
        if not (values - len(unpacked) <= got <= 10 * (values - len(unpacked))):
            raise CorruptCheckpointError(
                path, f"tensor {t.name!r}: shape needs {values} values, typed data cannot "
                      f"hold that many")
    if values == 0:
        return RangeReader(path, 0, dtype), None
    return TypedReader(path, dtype, kind, pieces, unpacked, values), None


def _layer_of_node(node_name: str, op: str) -> str:
    """'/encoder/layer.0/attention/MatMul' -> 'encoder.layer.0.attention' (torch.onnx.export's node names)."""
    parts = [p for p in node_name.split("/") if p]
    if len(parts) > 1 and (parts[-1] == op or parts[-1].startswith(op + "_")):
        parts = parts[:-1]
    return ".".join(parts)


_NORM_OPS = {"BatchNormalization", "LayerNormalization", "InstanceNormalization", "GroupNormalization",
             "RMSNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization",
             "SkipSimplifiedLayerNormalization"}


def graph_role(uses: list[tuple[_Node, int]], ndim: int,
               producers: dict[str, str]) -> tuple[Role, int | None] | None:
    """Role and output-unit axis of an initializer from the nodes that consume it, or None when the graph
    does not decide (the name rules apply then)."""
    for node, idx in uses:
        op = node.op
        if op in ("Conv", "ConvInteger", "QLinearConv") and idx in (1, 3):
            return Role.WEIGHT, 0 if ndim >= 2 else None
        if op == "ConvTranspose" and idx == 1:
            return Role.WEIGHT, 1 if ndim >= 2 else None
        if op in ("Conv", "ConvTranspose") and idx == 2:
            return Role.BIAS, None
        if op == "Gemm":
            if idx == 1 and ndim == 2:
                return Role.WEIGHT, 0 if node.ints.get("transB", 0) else 1
            if idx == 0 and ndim == 2:
                return Role.WEIGHT, 1 if node.ints.get("transA", 0) else 0
            if idx == 2:
                return Role.BIAS, None
        if op in ("MatMul", "MatMulInteger", "FusedMatMul") and ndim >= 2 and idx in (0, 1):
            # y = x @ W with W (in, out): the output units run along W's last axis
            return Role.WEIGHT, ndim - 1 if idx == 1 else ndim - 2
        if op in _NORM_OPS:
            if op == "BatchNormalization" and idx in (3, 4):
                return Role.RUNNING_STAT, None
            if idx >= 1:
                return Role.NORM, None
        if op in ("LSTM", "GRU", "RNN"):
            if idx in (1, 2):
                return Role.WEIGHT, 1 if ndim == 3 else None
            if idx == 3:
                return Role.BIAS, None
        if op == "Gather" and idx == 0 and ndim == 2:
            return Role.EMBEDDING, 0
        if op == "Add" and ndim == 1:
            other = [i for j, i in enumerate(node.inputs) if j != idx]
            if other and producers.get(other[0]) in ("MatMul", "Gemm", "Conv", "FusedMatMul"):
                return Role.BIAS, None
    return None


def load_onnx(path: str) -> Checkpoint:
    parsed = parse(path)
    size = file_size(path)
    uses: dict[str, list[tuple[_Node, int]]] = {}
    producers: dict[str, str] = {}
    for node in parsed.nodes:
        for out in node.outputs:
            producers[out] = node.op
        for i, inp in enumerate(node.inputs):
            if inp:
                uses.setdefault(inp, []).append((node, i))
    tensors: list[TensorRef] = []
    decided: set[int] = set()
    warnings = list(parsed.notes)
    externals: list[str] = []
    spans: list[tuple[str, int, int, str]] = []  # external data ranges: each tensor's own bytes
    seen: set[str] = set()
    for t in parsed.inits:
        if t.segmented:
            raise UnsupportedFormatError(
                path, f"tensor {t.name!r} is stored in segments, which wdist does not read")
        if t.name in seen:
            raise CorruptCheckpointError(path, f"initializer {t.name!r} appears twice")
        seen.add(t.name)
        if t.data_type in UNREAD_DTYPES:
            warnings.append(f"initializer {t.name!r} ({UNREAD_DTYPES[t.data_type]}) not read")
            continue
        if t.data_type not in DTYPES:
            raise CorruptCheckpointError(path, f"tensor {t.name!r} has unknown data type {t.data_type}")
        if any(d < 0 for d in t.dims):
            raise CorruptCheckpointError(path, f"tensor {t.name!r} has a negative dim {t.dims}")
        dtype = DTYPES[t.data_type][0]
        shape = tuple(t.dims)
        numel = math.prod(shape)
        if numel * dtype_itemsize(dtype) > 1 << 50:
            raise CorruptCheckpointError(path, f"tensor {t.name!r}: shape {list(shape)} is absurd")
        reader, ext = _reader(path, t, dtype, numel, size)
        if ext:
            if ext not in externals:
                externals.append(ext)
            spans.append((ext, reader.offset, numel * dtype_itemsize(dtype), f"tensor {t.name!r}"))
        u = uses.get(t.name, [])
        if "." in t.name and not t.name.startswith("onnx::"):
            layer, param = split_name(t.name)
        else:
            layer = _layer_of_node(u[0][0].name, u[0][0].op) if u and u[0][0].name else t.name
            param = t.name
        g = graph_role(u, len(shape), producers) if dtype.startswith(("float", "bfloat")) else None
        if g is not None:
            role, axis = g
            decided.add(len(tensors))
        else:
            role = infer_role(t.name, layer, param, shape, dtype)
            axis = default_unit_axis(role, len(shape), keras=False)
        tensors.append(TensorRef(name=t.name, layer=layer, role=role, shape=shape, dtype=dtype, reader=reader,
                                 unit_axis=axis, source=os.path.basename(ext or path)))
    shared = shared_span(spans)
    if shared is not None:
        raise CorruptCheckpointError(path, shared)
    norm_layers = {ref.layer for ref in tensors if ref.role in (Role.NORM, Role.RUNNING_STAT)}
    for i, ref in enumerate(tensors):
        if i not in decided and ref.role is Role.BIAS and ref.layer in norm_layers:
            ref.role = Role.NORM
    variant = "external data" if externals else "single file"
    return Checkpoint(path=path, format="onnx", variant=variant, tensors=tensors, metadata=parsed.meta,
                      sources=[path, *externals], warnings=warnings)


# ModelProto fields a file may start with, as protobuf keys: producer_name .. opset_import, graph
_SECOND_KEYS = {0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72}


def sniff(head: bytes, path: str) -> bool:
    """ONNX has no magic; writers put ir_version (field 1, a small varint) first, then another field."""
    return len(head) >= 3 and head[0] == 0x08 and 1 <= head[1] <= 30 and head[2] in _SECOND_KEYS


PLUGIN = FormatPlugin(
    name="onnx", title="ONNX", extensions=(".onnx",), load=load_onnx, sniff=sniff,
    variants="single file, external data (location/offset/length inside the model's folder); raw_data and "
             "typed fields; float32/16/64, bfloat16, float8, ints, bool; roles from the graph",
    order=90, fallback_by_extension=True,
)
