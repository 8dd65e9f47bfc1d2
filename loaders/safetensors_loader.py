"""safetensors: header parsed and validated here (as the reference implementation does), data read in
bounded ranges. No torch, no safetensors package needed for reading; every dtype incl. BF16, F16, F8."""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import numpy as np

from wdist.loaders import fs, jsonbudget
from wdist.loaders.errors import CorruptCheckpointError
from wdist.loaders.fileio import RangeReader, file_size
from wdist.loaders.model import Checkpoint, Format, Role, TensorRef, dtype_itemsize, some_names
from wdist.loaders.roles import default_unit_axis, fix_norm_biases, infer_role, natural_key, split_name

MAX_HEADER = 100_000_000  # the reference implementation's limit
# A valid header has 3 JSON containers per tensor (entry, shape, data_offsets) and 4 colons and 3 + ndim
# commas: 10^6 tensors (10x the largest real file; benchmarks/bench_many.py) are 3M containers and 8-11M
# items. 33M `[]` inside one shape took 2.5 GB and 16 s to parse before its shape was refused. The worst
# header found within the bounds (4M distinct keys with `[]`, 2M more with 0, padded to 100 MB) peaks at
# 1.8 GB in `wdist ls` before it is refused, 1.35x what the valid 10^6-tensor file costs (1.36 GB). Tighter
# would need a parser of our own; these keep a hostile header near the cost of the largest valid one.
MAX_CONTAINERS = 4_000_000
MAX_ITEMS = 12_000_000

ST_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
    "C64": "complex64", "F8_E8M0": "float8_e8m0fnu",
}
_ITEM = {k: dtype_itemsize(v) for k, v in ST_DTYPES.items()}
# Packed sub-byte dtypes of the format (MX / NVFP4 weights): listed with their bytes, not analysed.
SUB_BYTE = {"F4": ("float4_e2m1fn", 4), "F6_E2M3": ("float6_e2m3fn", 6), "F6_E3M2": ("float6_e3m2fn", 6)}
MAX_NDIM = 64  # numpy's limit; real tensors have a handful
_U64 = 1 << 64  # the format's dimensions and offsets are u64


_ENTRY_KEYS = ("dtype", "shape", "data_offsets")


class _Duplicate(ValueError):
    pass


def _object(pairs: list[tuple[str, Any]]) -> Any:
    """json's object hook: a tensor entry ({"dtype": str, "shape", "data_offsets"} in that order, as every
    writer puts them) becomes the tuple (dtype, shape, data_offsets) instead of a dict: a million small dicts
    are most of a parsed header's memory. A key twice in one object is an error (json would keep the last,
    another reader the first: two tools would see different tensors)."""
    if len(pairs) == 3 and type(pairs[0][1]) is str and tuple(k for k, _ in pairs) == _ENTRY_KEYS:
        return (pairs[0][1], pairs[1][1], pairs[2][1])
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _Duplicate(k)
            seen.add(k)
    return d


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # json.loads would accept NaN, Infinity and -Infinity


def _brief(v: Any) -> str:
    """repr of a value from the file for a message: at most 60 characters, and never an exception (the
    repr of an int of more than 4,300 digits raises ValueError)."""
    try:
        r = repr(v)
    except ValueError:
        return "(a number too long to print)"
    return r if len(r) <= 60 else r[:57] + "..."


def read_header(path: str) -> tuple[dict[str, Any], dict[str, Any], int]:
    """(tensor entries, __metadata__, data start offset), validated against the file size. Each entry is
    the tuple (safetensors dtype, shape list, data_offsets list)."""
    size = file_size(path)
    if size < 8:
        raise CorruptCheckpointError(path, "file too small for a safetensors header")
    n = int.from_bytes(fs.pread(path, 0, 8), "little")
    if n > MAX_HEADER:
        raise CorruptCheckpointError(path, f"safetensors header length {n} exceeds the {MAX_HEADER}-byte limit")
    if 8 + n > size:
        raise CorruptCheckpointError(path, f"safetensors header length {n} runs past the end of the file")
    raw = fs.pread(path, 8, n)  # one ranged read: `ls` of a remote file fetches the header only
    jsonbudget.check(path, raw, "safetensors header", MAX_CONTAINERS, MAX_ITEMS)
    try:
        text = raw.decode("utf-8")
        del raw
        header = json.loads(text, object_pairs_hook=_object, parse_constant=_constant)
        del text
    except _Duplicate as dup:
        raise CorruptCheckpointError(path, f"safetensors header has the key {_brief(str(dup))} twice in one "
                                           "object") from None
    except (UnicodeDecodeError, ValueError):
        raise CorruptCheckpointError(path, "safetensors header is not valid JSON") from None
    except RecursionError:
        raise CorruptCheckpointError(path, "safetensors header JSON is nested too deeply") from None
    if not isinstance(header, dict):
        raise CorruptCheckpointError(path, "safetensors header is not a JSON object")
    meta = header.pop("__metadata__", None)
    if meta is None:
        meta = {}
    if type(meta) is tuple:  # string metadata that happened to be keyed like a tensor entry
        meta = dict(zip(_ENTRY_KEYS, meta))
    if not isinstance(meta, dict) or not all(type(v) is str for v in meta.values()):
        raise CorruptCheckpointError(path, "safetensors __metadata__ is not an object of strings")
    data_len = size - 8 - n
    # one lean pass per entry (a header may list a million tensors): exact type checks (bool is not int),
    # then the data spans checked for gaps and overlaps on int64 arrays instead of a million tuples
    begins = np.empty(len(header), dtype=np.int64)
    ends = np.empty(len(header), dtype=np.int64)
    for i, (name, e) in enumerate(header.items()):
        if type(e) is tuple:
            dt, shape, offs = e
        elif type(e) is dict and "dtype" in e and "shape" in e and "data_offsets" in e:
            dt, shape, offs = header[name] = e["dtype"], e["shape"], e["data_offsets"]
        else:
            raise CorruptCheckpointError(path, f"tensor {name!r}: entry lacks dtype/shape/data_offsets")
        item = _ITEM.get(dt) if type(dt) is str else None
        bits = 8 * item if item is not None else (SUB_BYTE[dt][1] if type(dt) is str and dt in SUB_BYTE else 0)
        if not bits:
            raise CorruptCheckpointError(path, f"tensor {name!r}: unknown dtype {_brief(dt)}")
        if type(shape) is not list or len(shape) > MAX_NDIM:
            raise CorruptCheckpointError(path, f"tensor {name!r}: bad shape {_brief(shape)}")
        zero = False
        for d in shape:
            if type(d) is not int or not 0 <= d < _U64:
                raise CorruptCheckpointError(path, f"tensor {name!r}: bad shape {_brief(shape)}")
            zero = zero or d == 0
        numel = 0 if zero else math.prod(shape)  # at most 64 factors below 2^64: cheap, however hostile
        if type(offs) is not list or len(offs) != 2 or type(offs[0]) is not int or type(offs[1]) is not int:
            raise CorruptCheckpointError(path, f"tensor {name!r}: bad data_offsets {_brief(offs)}")
        begin, end = offs
        if not (0 <= begin < _U64 and 0 <= end < _U64):
            raise CorruptCheckpointError(path, f"tensor {name!r}: bad data_offsets {_brief(offs)}")
        if (numel * bits) % 8:
            raise CorruptCheckpointError(path, f"tensor {name!r}: {numel} values of {dt} do not fill whole bytes")
        need = numel * bits // 8
        if end < begin or end - begin != need:
            raise CorruptCheckpointError(
                path, f"tensor {name!r}: shape {_brief(shape)} x {dt} needs {_brief(need)} bytes but offsets give "
                      f"{end - begin}")
        if end > data_len:
            raise CorruptCheckpointError(path, f"tensor {name!r}: data offsets {_brief(offs)} run past the end of the file")
        begins[i], ends[i] = begin, end  # both <= data_len < 2^63 here
    order = np.lexsort((ends, begins))  # by begin, then end: the order sorted() of (begin, end, name) gave
    b, e_ = begins[order], ends[order]
    prev = np.concatenate((np.zeros(1, dtype=np.int64), e_[:-1]))
    bad = np.flatnonzero(b != prev)
    if bad.size:
        j = int(bad[0])
        name = next(itertools.islice(header.keys(), int(order[j]), None))
        why = "overlaps another tensor" if b[j] < prev[j] else "leaves a gap before it"
        raise CorruptCheckpointError(path, f"tensor {name!r}: data offsets {int(b[j])}..{int(e_[j])} {why}")
    covered = int(e_[-1]) if e_.size else 0
    if covered != data_len:  # as the reference: bytes after the last tensor are not part of any tensor
        raise CorruptCheckpointError(path, f"{data_len - covered} bytes of data after the last tensor (the file "
                                           "is not fully covered by its header)")
    return header, {str(k): v for k, v in meta.items()}, 8 + n


def load_safetensors_files(path: str, files: list[str], variant: str) -> Checkpoint:
    tensors: list[TensorRef] = []
    metadata: dict = {}
    owner: dict[str, str] = {}
    packed: list[str] = []
    for fp in files:
        header, meta, data_start = read_header(fp)
        metadata.update(meta)
        source = fs.basename(fp)  # once per file: a million tensors share one string and one path lookup
        for name in header if len(files) > 1 else ():
            if name in owner:  # the same name in two shards: which one is the model's is undecidable
                raise CorruptCheckpointError(path, f"tensor {name!r} is in two shards: "
                                             f"{fs.basename(owner[name])} and {source}")
            owner[name] = fp
        first = len(tensors)
        while header:  # entries popped as their refs are made: the parsed header and the refs never both peak
            name, (st_dtype, st_shape, offs) = header.popitem()
            shape = tuple(st_shape)
            layer, param = split_name(name)
            if st_dtype in SUB_BYTE:  # listed with its bytes; no reader: not a dtype wdist analyses
                packed.append(name)
                tensors.append(TensorRef(name=name, layer=layer, role=Role.OTHER, shape=shape,
                                         dtype=SUB_BYTE[st_dtype][0], reader=None, source=source,
                                         stored_as=st_dtype, stored_nbytes=offs[1] - offs[0]))
                continue
            dtype = ST_DTYPES[st_dtype]
            role = infer_role(name, layer, param, shape, dtype)
            tensors.append(TensorRef(
                name=name, layer=layer, role=role, shape=shape, dtype=dtype,
                reader=RangeReader(fp, data_start + offs[0], dtype),
                unit_axis=default_unit_axis(role, len(shape), keras=False), source=source))
        tensors[first:] = tensors[first:][::-1]  # popitem went last to first: back to header order
    # writers reorder tensors (by dtype, by name); natural name order puts layers.2 before layers.10, and
    # across shards too: a model split over files lists its layers in model order, not file order
    tensors.sort(key=lambda t: natural_key(t.name))
    fix_norm_biases(tensors)
    warnings = []
    if packed:
        warnings.append(f"{len(packed)} tensor(s) of packed sub-byte dtypes (F4/F6) are listed but not analysed: "
                        + some_names(packed))
    return Checkpoint(path=path, format=Format.SAFETENSORS, variant=variant, tensors=tensors,
                      metadata=metadata, sources=list(files), warnings=warnings)
