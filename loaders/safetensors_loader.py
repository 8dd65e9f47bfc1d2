"""safetensors: header parsed and validated here (as the reference implementation does), data read in
bounded ranges. No torch, no safetensors package needed for reading; every dtype incl. BF16, F16, F8."""

from __future__ import annotations

import json
import json.scanner
import math
import re
from array import array
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import numpy as np

from wdist.loaders import fs, jsonbudget
from wdist.loaders.errors import CorruptCheckpointError
from wdist.loaders.fileio import RangeReader, file_size
from wdist.loaders.model import MAX_NAME, Checkpoint, Format, Role, TensorRef, dtype_itemsize, some_names
from wdist.loaders.roles import default_unit_axis, fix_norm_biases, infer_role, natural_key, split_name

MAX_HEADER = 100_000_000  # the reference implementation's limit
# A valid header has 3 JSON containers per tensor (entry, shape, data_offsets) and 4 colons and 3 + ndim
# commas: 10^6 tensors (10x the largest real file; benchmarks/bench_many.py) are 3M containers and 8-11M
# items. These counts are a cheap first bound; the header is then read against the format's schema (see
# _parse), so a header of millions of `[]`, `{}`, numbers or strings is refused at its first bad member
# (~130 MB peak for 100 MB of it, where json.loads took 1.2-1.9 GB; benchmarks/bench_header.py).
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


class Entries(NamedTuple):
    """A header's tensor entries in file order, in parallel sequences (a million dicts, lists and ints are
    most of what json.loads made of a large header): names, safetensors dtypes (shared strings), shapes
    (tuples, shared between equal shapes) and the data spans as int64 arrays."""

    names: list[str]
    dtypes: list[str]
    shapes: list[tuple[int, ...]]
    begins: np.ndarray
    ends: np.ndarray


# The header is read by a small tokenizer over its bytes, one top-level member at a time, and checked as it
# is read against the format's schema: each value must be an entry object (or __metadata__ an object of
# strings, or null), so a header of millions of `[]`, `{}`, numbers or strings is refused at its first
# member, and a valid one never becomes a dict of dicts and lists. An entry written as the reference
# writes it (dtype, shape, data_offsets in that order; any JSON whitespace) is matched by one regex; any
# other entry is read member by member. A value that has to be parsed as JSON (a dtype that is not a
# string, an unknown key's value, a malformed shape) is parsed from a window of at most _WINDOW bytes and
# refused when longer, an unknown key's value (which the format allows and ignores) included. Problems are
# reported in file order: the first one in the file is the one named.
_WS = rb"[ \t\n\r]*"
_STR = rb'"((?:[^"\\\x00-\x1f]++|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*+)"'
_INT = rb"(?:0|[1-9][0-9]{0,19})"  # u64 has at most 20 digits; a longer number is never valid
_INTS = rb"((?:" + _INT + rb"(?:" + _WS + rb"," + _WS + _INT + rb"){0,%d})?)" % (MAX_NDIM - 1)
_ENTRY = re.compile(
    _WS + _STR + _WS + rb":" + _WS + rb"\{" + _WS + rb'"dtype"' + _WS + rb":" + _WS + rb'"([A-Z0-9_]{1,24})"'
    + _WS + rb"," + _WS + rb'"shape"' + _WS + rb":" + _WS + rb"\[" + _WS + _INTS + _WS + rb"\]" + _WS + rb","
    + _WS + rb'"data_offsets"' + _WS + rb":" + _WS + rb"\[" + _WS + rb"(" + _INT + rb")" + _WS + rb"," + _WS
    + rb"(" + _INT + rb")" + _WS + rb"\]" + _WS + rb"\}" + _WS + rb"([,}])")
_KEY = re.compile(_WS + _STR + _WS + rb":" + _WS)
_STRING = re.compile(_STR)
_ARRAY = re.compile(rb"\[" + _WS + _INTS + _WS + rb"\]")
_SKIP_WS = re.compile(_WS)
_WINDOW = 1 << 16
# A name of more bytes than this holds more than MAX_NAME characters whatever it spells (a character is at
# most 12 bytes, as an escaped surrogate pair): refused before it is decoded; a shorter one that is still
# too long is refused by the registry with every other format's.
_NAME_BYTES = 12 * MAX_NAME


def _long_name(path: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(path, f"a tensor name of more than {MAX_NAME:,} characters (wdist reads names "
                                        f"of up to {MAX_NAME:,})")
MAX_METADATA = 100_000  # __metadata__ members: real files have a handful; each costs ~150 bytes once read
_BITS = {**{k: 8 * v for k, v in _ITEM.items()}, **{k: v[1] for k, v in SUB_BYTE.items()}}
_DTYPE_OF = {k.encode(): k for k in _BITS}
# (value, end) of the JSON value at an index of a str: json.loads' own C scanner, called on a window
_SCAN: Callable[[str, int], tuple[Any, int]] = json.scanner.make_scanner(
    cast(Any, json.JSONDecoder(object_pairs_hook=_object, parse_constant=_constant)))


def _skip(raw: bytes, i: int) -> int:
    """The index of the first byte at or after i that is not JSON whitespace."""
    m = _SKIP_WS.match(raw, i)
    return m.end() if m is not None else i


class _Long(Exception):
    """A JSON value longer than the window it is parsed from."""


def _string(raw: bytes, m: re.Match[bytes]) -> str:
    """The str of a JSON string matched by _STR (group 1 its body), decoded as json.loads would."""
    body = m.group(1)
    text = body.decode("utf-8")  # strict: no surrogates, as the whole header's decode was
    return json.loads('"' + text + '"') if "\\" in text else text


def _value(raw: bytes, i: int, whole: bool = False) -> tuple[Any, int]:
    """(the JSON value at byte i, the byte after it), parsed from a window of _WINDOW bytes (the whole
    rest when `whole`); _Long when it runs past the window. ValueError, RecursionError and _Duplicate as
    json.loads would raise them."""
    chunk = memoryview(raw)[i:] if whole else memoryview(raw)[i:i + _WINDOW]  # no copy of the bytes
    final = whole or i + len(chunk) >= len(raw)
    try:
        text = str(chunk, "utf-8")
    except UnicodeDecodeError as e:  # a character cut by the window's end, or bad bytes after the value
        text = str(chunk[:e.start], "utf-8")
        final = final or e.start < len(chunk) - 3  # not a character cut by the window: bad bytes
    try:
        v, end = _SCAN(text, 0)
    except StopIteration as e:  # no value where one must be: at e.value
        if not final and e.value >= len(text) - 64:
            raise _Long from None
        raise ValueError("no JSON value") from None
    except ValueError as e:  # a JSON error, or a number json.loads refuses (too many digits)
        if not final and isinstance(e, json.JSONDecodeError) and e.pos >= len(text) - 64:
            raise _Long from None
        raise
    return v, i + (end if text.isascii() else len(text[:end].encode("utf-8")))


def _check_entry(path: str, name: str, dt: Any, shape: Any, offs: Any, data_len: int) -> tuple[int, int]:
    """(begin, end) of an entry, after the checks of the reference implementation: exact types (bool is
    not int), a known dtype, at most 64 u64 dimensions, u64 offsets spanning exactly the tensor's bytes
    inside the data."""
    bits = _BITS.get(dt, 0) if type(dt) is str else 0
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
    return begin, end


def _ints(group: bytes) -> list[int]:
    return [int(x) for x in group.split(b",")] if group.strip() else []


def _parse(path: str, raw: bytes, data_len: int) -> tuple[Entries, dict[str, str]]:
    """The tokenizer described above _WS: (entries, metadata) of a header, or CorruptCheckpointError."""
    def invalid() -> CorruptCheckpointError:
        return CorruptCheckpointError(path, "safetensors header is not valid JSON")

    def twice(key: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(path, f"safetensors header has the key {_brief(key)} twice in one object")

    def bad_meta() -> CorruptCheckpointError:
        return CorruptCheckpointError(path, "safetensors __metadata__ is not an object of strings")

    def _not_json(raw: bytes, i: int) -> CorruptCheckpointError | None:
        """The error of a value that is refused whatever it holds, when it is not even JSON (read from a
        window: one longer than that is not looked at further)."""
        try:
            _value(raw, i)
        except _Long:
            pass
        except _Duplicate as dup:
            return twice(str(dup))
        except (ValueError, UnicodeDecodeError):
            return invalid()
        except RecursionError:
            return CorruptCheckpointError(path, "safetensors header JSON is nested too deeply")
        return None

    names: list[str] = []
    dtypes: list[str] = []
    shapes: list[tuple[int, ...]] = []
    begins, ends = array("q"), array("q")
    seen: set[str] = set()
    meta: dict[str, str] | None = None
    shape_of: dict[bytes, tuple[tuple[int, ...], int | None]] = {}  # shape text -> (dims, numel or None: bad)
    shared: dict[tuple[int, ...], tuple[int, ...]] = {}  # equal shapes of entries read member by member
    n = len(raw)
    i = _skip(raw, 0)
    if raw[i:i + 1] != b"{":  # not an object: which error json.loads would have given, from a window
        try:
            _, end = _value(raw, i)
        except _Long:
            end = n
        except (_Duplicate, ValueError, RecursionError):
            raise invalid() from None
        raise invalid() if _skip(raw, end) != n else \
            CorruptCheckpointError(path, "safetensors header is not a JSON object")
    i = _skip(raw, i + 1)
    more = raw[i:i + 1] != b"}"
    if not more:
        i += 1
    entry, key_at = _ENTRY.match, _KEY.match
    while more:
        m = entry(raw, i)
        if m is not None:  # the reference's form: one match, checked from its groups
            dtb, sb, b0, e0, sep = m.group(2, 3, 4, 5, 6)
            s1, e1 = m.span(1)
            if e1 - s1 > _NAME_BYTES:
                raise _long_name(path)
            try:  # a long name is decoded where it lies, not copied first
                nb = raw[s1:e1] if e1 - s1 < 4096 else memoryview(raw)[s1:e1]
                name = str(nb, "utf-8") if raw.find(b"\\", s1, e1) < 0 else _string(raw, m)
            except (UnicodeDecodeError, ValueError):
                raise invalid() from None
            if name in seen or name == "__metadata__":
                if name in seen or meta is not None:
                    raise twice(name)
                raise bad_meta()  # __metadata__ keyed like an entry: shape and offsets are not strings
            seen.add(name)
            dt = _DTYPE_OF.get(dtb) or dtb.decode()
            info = shape_of.get(sb)
            if info is None:
                dims = tuple(_ints(sb))
                info = (dims, math.prod(dims) if all(d < _U64 for d in dims) else None)
                if len(shape_of) < 100_000:  # one tuple per distinct shape, not per tensor
                    shape_of[sb] = info
            begin, end = int(b0), int(e0)
            bits, numel = _BITS.get(dt, 0), info[1]
            if (not bits or numel is None or (numel * bits) % 8 or end - begin != numel * bits // 8
                    or end > data_len):
                _check_entry(path, name, dt, list(info[0]), [begin, end], data_len)  # raises its message
            names.append(name)
            dtypes.append(dt)
            shapes.append(info[0])
            begins.append(begin)
            ends.append(end)
            i = m.end()
            more = sep == b","
            continue
        k = key_at(raw, i)  # any other member: its key, then its value read by its kind
        if k is None:
            raise invalid()
        if k.end(1) - k.start(1) > _NAME_BYTES:
            raise _long_name(path)
        try:
            name = _string(raw, k)
        except (UnicodeDecodeError, ValueError):
            raise invalid() from None
        i = k.end()
        c = raw[i:i + 1]
        if name == "__metadata__":
            if meta is not None:
                raise twice(name)
            meta = {}
            if raw.startswith(b"null", i):
                i += 4
            elif c != b"{":
                raise _not_json(raw, i) or bad_meta()
            else:
                i = _skip(raw, i + 1)
                if raw[i:i + 1] == b"}":
                    i += 1
                while raw[i - 1:i] != b"}":
                    k = key_at(raw, i)
                    if k is None:
                        raise invalid()
                    try:
                        key = _string(raw, k)
                        i = k.end()
                        s = _STRING.match(raw, i)
                        if s is None:  # not a string: refused, as invalid JSON when it is not JSON
                            _value(raw, i)
                            raise bad_meta()
                        val = _string(raw, s)
                    except _Duplicate as dup:
                        raise twice(str(dup)) from None
                    except _Long:
                        raise bad_meta() from None
                    except (UnicodeDecodeError, ValueError, RecursionError):
                        raise invalid() from None
                    if key in meta:
                        raise twice(key)
                    meta[key] = val
                    if len(meta) > MAX_METADATA:
                        raise CorruptCheckpointError(path, f"safetensors __metadata__ holds more than "
                                                           f"{MAX_METADATA:,} entries")
                    i = _skip(raw, s.end())
                    c = raw[i:i + 1]
                    if c not in (b",", b"}"):
                        raise invalid()
                    i += 1
        else:
            if name in seen:
                raise twice(name)
            seen.add(name)
            if c != b"{":  # a tensor entry is an object, whatever else the value is
                raise _not_json(raw, i) or CorruptCheckpointError(
                    path, f"tensor {name!r}: entry lacks dtype/shape/data_offsets")
            fields: dict[str, Any] = {}
            i = _skip(raw, i + 1)
            if raw[i:i + 1] == b"}":
                i += 1
            while raw[i - 1:i] != b"}":
                k = key_at(raw, i)
                if k is None:
                    raise invalid()
                try:
                    key = _string(raw, k)
                    if key in fields:
                        raise twice(key)
                    i = k.end()
                    a = _ARRAY.match(raw, i) if key in ("shape", "data_offsets") else None
                    s = _STRING.match(raw, i) if key == "dtype" else None
                    if a is not None:
                        v: Any = _ints(a.group(1))
                        i = a.end()
                    elif s is not None:
                        v, i = _string(raw, s), s.end()
                    else:
                        try:
                            v, i = _value(raw, i)
                        except _Long:
                            if key in ("dtype", "shape", "data_offsets"):  # none of them is ever that long
                                what = "unknown dtype" if key == "dtype" else f"bad {key}"
                                raise CorruptCheckpointError(path, f"tensor {name!r}: {what} (a JSON value of "
                                                                   f"more than {_WINDOW:,} bytes)") from None
                            # an unknown key (allowed, and ignored): the reference writer never writes
                            # one, so a value of more than the window is refused rather than parsed whole
                            # (100 MB of `[]` would take ~500 MB as Python lists)
                            raise CorruptCheckpointError(path, f"tensor {name!r}: its unknown key {_brief(key)} "
                                                               f"holds a JSON value of more than {_WINDOW:,} "
                                                               "bytes") from None
                except _Duplicate as dup:
                    raise twice(str(dup)) from None
                except (UnicodeDecodeError, ValueError):
                    raise invalid() from None
                except RecursionError:
                    raise CorruptCheckpointError(path, "safetensors header JSON is nested too deeply") from None
                fields[key] = v
                i = _skip(raw, i)
                c = raw[i:i + 1]
                if c not in (b",", b"}"):
                    raise invalid()
                i += 1
            if not ("dtype" in fields and "shape" in fields and "data_offsets" in fields):
                raise CorruptCheckpointError(path, f"tensor {name!r}: entry lacks dtype/shape/data_offsets")
            dt, shape, offs = fields["dtype"], fields["shape"], fields["data_offsets"]
            begin, end = _check_entry(path, name, dt, shape, offs, data_len)
            names.append(name)
            dtypes.append(_DTYPE_OF[dt.encode()])
            dims = tuple(shape)
            shapes.append(shared.setdefault(dims, dims) if len(shared) < 100_000 else dims)
            begins.append(begin)
            ends.append(end)
        i = _skip(raw, i)
        c = raw[i:i + 1]
        if c not in (b",", b"}"):
            raise invalid()
        i += 1
        more = c == b","
    if _skip(raw, i) != n:
        raise invalid()
    return (Entries(names, dtypes, shapes, np.frombuffer(begins, dtype=np.int64), np.frombuffer(ends, dtype=np.int64)),
            meta or {})


def read_header(path: str) -> tuple[Entries, dict[str, str], int]:
    """(tensor entries, __metadata__, data start offset), validated against the file size."""
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
    data_len = size - 8 - n
    entries, meta = _parse(path, raw, data_len)
    del raw
    # the data spans checked for gaps and overlaps on int64 arrays instead of a million tuples
    begins, ends = entries.begins, entries.ends
    order = np.lexsort((ends, begins))  # by begin, then end: the order sorted() of (begin, end, name) gave
    b, e_ = begins[order], ends[order]
    prev = np.concatenate((np.zeros(1, dtype=np.int64), e_[:-1]))
    bad = np.flatnonzero(b != prev)
    if bad.size:
        j = int(bad[0])
        name = entries.names[int(order[j])]
        why = "overlaps another tensor" if b[j] < prev[j] else "leaves a gap before it"
        raise CorruptCheckpointError(path, f"tensor {name!r}: data offsets {int(b[j])}..{int(e_[j])} {why}")
    covered = int(e_[-1]) if e_.size else 0
    if covered != data_len:  # as the reference: bytes after the last tensor are not part of any tensor
        raise CorruptCheckpointError(path, f"{data_len - covered} bytes of data after the last tensor (the file "
                                           "is not fully covered by its header)")
    return entries, meta, 8 + n


def load_safetensors_files(path: str, files: list[str], variant: str) -> Checkpoint:
    tensors: list[TensorRef] = []
    metadata: dict = {}
    owner: dict[str, str] = {}
    packed: list[str] = []
    for fp in files:
        header, meta, data_start = read_header(fp)
        metadata.update(meta)
        source = fs.basename(fp)  # once per file: a million tensors share one string and one path lookup
        for name in header.names if len(files) > 1 else ():
            if name in owner:  # the same name in two shards: which one is the model's is undecidable
                raise CorruptCheckpointError(path, f"tensor {name!r} is in two shards: "
                                             f"{fs.basename(owner[name])} and {source}")
            owner[name] = fp
        names, dtypes, shapes, begins, ends = header
        del header
        for name, st_dtype, shape, begin, end in zip(names, dtypes, shapes, begins.tolist(), ends.tolist()):
            layer, param = split_name(name)
            if st_dtype in SUB_BYTE:  # listed with its bytes; no reader: not a dtype wdist analyses
                packed.append(name)
                tensors.append(TensorRef(name=name, layer=layer, role=Role.OTHER, shape=shape,
                                         dtype=SUB_BYTE[st_dtype][0], reader=None, source=source,
                                         stored_as=st_dtype, stored_nbytes=end - begin))
                continue
            dtype = ST_DTYPES[st_dtype]
            role = infer_role(name, layer, param, shape, dtype)
            tensors.append(TensorRef(
                name=name, layer=layer, role=role, shape=shape, dtype=dtype,
                reader=RangeReader(fp, data_start + begin, dtype),
                unit_axis=default_unit_axis(role, len(shape), keras=False), source=source))
        del names, dtypes, shapes, begins, ends
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
