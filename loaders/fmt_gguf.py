"""GGUF (llama.cpp): header, metadata and tensor infos parsed here by a bounded reader; tensor data read by
range. F32/F16/BF16/F64/I8-I64 and the Q8_0, Q4_0, Q4_1, Q4_K, Q5_K and Q6_K block types (so the usual
Q4_K_M / Q5_K_M / Q8_0 files) need nothing else: they are dequantised here. The other block types (Q5_0, Q5_1,
Q2_K, Q3_K, and any the package knows) are dequantised with the `gguf` package's numpy dequantisers (optional
extra `gguf`). Either way only the
blocks covering the requested elements are read.

GGUF lists a tensor's dims fastest-first (ne[0] is the contiguous axis); shapes here are reversed into the
numpy/PyTorch order, so `blk.0.attn_q.weight` with ne = [n_in, n_out] is reported as (n_out, n_in)."""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from wdist.loaders.errors import CorruptCheckpointError, MissingDependencyError, UnsupportedFormatError
from wdist.loaders.fileio import RangeReader, file_size
from wdist.loaders.model import Checkpoint, Role, TensorRef
from wdist.loaders.plugin import FormatPlugin
from wdist.loaders.roles import default_unit_axis, fix_norm_biases, infer_role, split_name

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NAME = 1 << 16  # llama.cpp allows 64; anything longer than this is not a name
MAX_KEY = 1 << 16
MAX_META_STRING = 256  # longer metadata strings (chat templates) are summarised, not copied
MAX_META_ENTRIES = 4096  # metadata entries kept for display (all are parsed and checked)
MAX_KV = 1 << 16  # metadata entries at all: real files hold tens (gguf-py and llama.cpp set no limit)
# strings in all metadata arrays together: they are walked one by one (~0.3 us each), and real files hold
# under a million (a 262K vocabulary, its merges and a few small arrays)
MAX_ARRAY_STRINGS = 1 << 22
ALIGNMENT_KEY = "general.alignment"
SCALE_BLOCKS_PER_READ = 1 << 16

# ggml type id -> (name, numpy dtype it is stored as / decoded to, elements per block, bytes per block)
PLAIN: dict[int, tuple[str, str]] = {
    0: ("F32", "float32"), 1: ("F16", "float16"), 30: ("BF16", "bfloat16"), 28: ("F64", "float64"),
    24: ("I8", "int8"), 25: ("I16", "int16"), 26: ("I32", "int32"), 27: ("I64", "int64"),
}
QUANT: dict[int, tuple[str, int, int]] = {
    2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
}
# byte offset of each block's (super-)block scale `d` (an fp16) inside a block, from ggml-common.h
SCALE_OFFSET = {"Q4_0": 0, "Q4_1": 0, "Q5_0": 0, "Q5_1": 0, "Q8_0": 0, "Q2_K": 80, "Q3_K": 108, "Q4_K": 0,
                "Q5_K": 0, "Q6_K": 208}

# metadata value types: id -> (struct format, size) for fixed-size scalars
_SCALAR = {0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4), 6: ("<f", 4),
           7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8)}
_STRING, _ARRAY = 8, 9
_TYPE_NAMES = {0: "uint8", 1: "int8", 2: "uint16", 3: "int16", 4: "uint32", 5: "int32", 6: "float32",
               7: "bool", 8: "string", 9: "array", 10: "uint64", 11: "int64", 12: "float64"}


class _Cursor:
    """Sequential little-endian reads of a file through a bounded buffer; every read is checked against
    the real file size first, so a lying count can never cause a large allocation."""

    WINDOW = 1 << 20

    def __init__(self, path: str, f: Any, size: int) -> None:
        self.path, self.f, self.size = path, f, size
        self.pos = 0
        self._buf, self._buf_at = b"", 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > self.size:
            raise CorruptCheckpointError(self.path, f"GGUF {what} runs past the end of the file")
        rel = self.pos - self._buf_at
        if rel < 0 or rel + n > len(self._buf):
            self.f.seek(self.pos)
            self._buf = self.f.read(max(n, self.WINDOW))
            self._buf_at, rel = self.pos, 0
            if len(self._buf) < n:
                raise CorruptCheckpointError(self.path, f"GGUF file is truncated ({what})")
        self.pos += n
        return self._buf[rel:rel + n]

    def skip(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise CorruptCheckpointError(self.path, f"GGUF {what} runs past the end of the file")
        self.pos += n

    def u32(self, what: str) -> int:
        return int(struct.unpack("<I", self.take(4, what))[0])

    def u64(self, what: str) -> int:
        return int(struct.unpack("<Q", self.take(8, what))[0])

    def skip_strings(self, count: int, what: str) -> None:
        """Skips `count` length-prefixed strings; reads their lengths from the buffer directly, as this is
        the one loop whose length a file controls (a vocabulary)."""
        unpack = struct.unpack_from
        for _ in range(count):
            rel = self.pos - self._buf_at
            if rel >= 0 and rel + 8 <= len(self._buf):
                n = unpack("<Q", self._buf, rel)[0]
                self.pos += 8
            else:
                n = self.u64(what)
            if n > self.size - self.pos:
                raise CorruptCheckpointError(self.path, f"GGUF {what} runs past the end of the file")
            self.pos += n

    def string(self, what: str, limit: int | None) -> str | int:
        """The string, or its byte length when it is longer than `limit` (it is then skipped)."""
        n = self.u64(what)
        if limit is not None and n > limit:
            self.skip(n, what)
            return n
        raw = self.take(n, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CorruptCheckpointError(self.path, f"GGUF {what} is not valid UTF-8") from None


def _value(c: _Cursor, vtype: int, key: str, budget: list[int]) -> Any:
    """One metadata value: numbers and short strings as themselves, anything else summarised as a string.
    `budget` holds the strings that metadata arrays may still hold (shared by all of them)."""
    what = f"metadata value {key!r}"
    if vtype in _SCALAR:
        fmt, n = _SCALAR[vtype]
        return struct.unpack(fmt, c.take(n, what))[0]
    if vtype == _STRING:
        s = c.string(what, MAX_META_STRING)
        return s if isinstance(s, str) else f"<string of {s} bytes>"
    if vtype == _ARRAY:
        itype = c.u32(what)
        count = c.u64(what)
        if itype in _SCALAR:
            n = _SCALAR[itype][1]
            if count > (c.size - c.pos) // n:
                raise CorruptCheckpointError(
                    c.path, f"GGUF {what}: array of {count} items runs past the end of the file")
            c.skip(count * n, what)
        elif itype == _STRING:
            # each string takes at least its 8-byte length: a count beyond that cannot be real
            if count > (c.size - c.pos) // 8:
                raise CorruptCheckpointError(
                    c.path, f"GGUF {what}: array of {count} strings runs past the end of the file")
            if count > budget[0]:
                raise CorruptCheckpointError(
                    c.path, f"GGUF {what}: array of {count} strings takes the metadata over "
                            f"{MAX_ARRAY_STRINGS:,} strings in all, implausibly many")
            budget[0] -= count
            c.skip_strings(count, what)
        else:
            # nested arrays are legal but no model metadata uses them; refusing keeps the parser non-recursive
            raise CorruptCheckpointError(c.path, f"GGUF {what}: array of value type {itype} is not supported")
        return f"<array of {count} {_TYPE_NAMES.get(itype, '?')}>"
    raise CorruptCheckpointError(c.path, f"GGUF {what} has unknown value type {vtype}")


def _brief(s: str) -> str:
    return s if len(s) <= 80 else s[:77] + "..."


@dataclass(frozen=True)
class _Info:
    name: str
    ne: tuple[int, ...]
    type_id: int
    offset: int


def read_header(path: str) -> tuple[int, dict[str, Any], list[_Info], int, int]:
    """(version, metadata, tensor infos, alignment, data start), validated against the file size."""
    size = file_size(path)
    with open(path, "rb") as f:
        c = _Cursor(path, f, size)
        if size < 24:
            raise CorruptCheckpointError(path, "file too small for a GGUF header")
        if c.take(4, "magic") != MAGIC:
            raise CorruptCheckpointError(path, "not a GGUF file (bad magic)")
        version = c.u32("version")
        if version not in (2, 3):
            if version in (1,):
                raise UnsupportedFormatError(path, "GGUF version 1 is not supported (versions 2 and 3 are)")
            if int.from_bytes(struct.pack("<I", version), "big") in (2, 3):
                raise UnsupportedFormatError(path, "big-endian GGUF is not supported")
            raise CorruptCheckpointError(path, f"GGUF version {version} is not one wdist knows (2, 3)")
        n_tensors = c.u64("tensor count")
        n_kv = c.u64("metadata count")
        # smallest possible entries: key length + type + 1-byte value; name length + n_dims + type + offset
        if n_kv > (size - c.pos) // 13 or n_tensors > (size - c.pos) // 24:
            raise CorruptCheckpointError(path, f"GGUF header claims {n_tensors} tensors and {n_kv} metadata "
                                               f"entries, more than a {size}-byte file can hold")
        if n_kv > MAX_KV:
            raise CorruptCheckpointError(path, f"GGUF header claims {n_kv:,} metadata entries, over the limit "
                                               f"of {MAX_KV:,} (real files hold tens)")
        meta: dict[str, Any] = {}
        keys: set[str | bytes] = set()  # every key, to refuse duplicates (long ones by digest: bounded memory)
        budget = [MAX_ARRAY_STRINGS]
        alignment: Any = DEFAULT_ALIGNMENT
        for _ in range(n_kv):
            key = c.string("metadata key", MAX_KEY)
            if not isinstance(key, str):
                raise CorruptCheckpointError(path, f"GGUF metadata key of {key} bytes is too long")
            seen_as: str | bytes = key if len(key) <= 64 else hashlib.blake2b(key.encode(), digest_size=16).digest()
            if seen_as in keys:  # gguf-py and llama.cpp refuse them: which one counts is up to the reader
                raise CorruptCheckpointError(path, f"GGUF metadata key {_brief(key)!r} appears twice")
            keys.add(seen_as)
            vtype = c.u32(f"metadata type of {_brief(key)!r}")
            value = _value(c, vtype, _brief(key), budget)
            if key == ALIGNMENT_KEY:
                # looked up apart from the display copy below, which stops at MAX_META_ENTRIES: an alignment
                # after that many entries still decides where the tensor data starts
                if vtype != 4:
                    raise CorruptCheckpointError(path, f"GGUF {ALIGNMENT_KEY} has value type "
                                                       f"{_TYPE_NAMES.get(vtype, vtype)}, not uint32")
                alignment = value
            if len(meta) < MAX_META_ENTRIES and len(key) <= MAX_META_STRING:
                meta[key] = value
        infos: list[_Info] = []
        seen: set[str] = set()
        for i in range(n_tensors):
            name = c.string(f"tensor info {i} name", MAX_NAME)
            if not isinstance(name, str):
                raise CorruptCheckpointError(path, f"GGUF tensor info {i}: name of {name} bytes is too long")
            if name in seen:
                raise CorruptCheckpointError(path, f"GGUF tensor {name!r} appears twice")
            seen.add(name)
            n_dims = c.u32(f"tensor {name!r} n_dims")
            if not 1 <= n_dims <= MAX_DIMS:
                raise CorruptCheckpointError(
                    path, f"GGUF tensor {name!r}: {n_dims} dims (1 to {MAX_DIMS} allowed)")
            ne = tuple(c.u64(f"tensor {name!r} dims") for _ in range(n_dims))
            type_id = c.u32(f"tensor {name!r} type")
            offset = c.u64(f"tensor {name!r} offset")
            infos.append(_Info(name, ne, type_id, offset))
        if alignment <= 0 or alignment & (alignment - 1):
            raise CorruptCheckpointError(path, f"GGUF general.alignment {alignment!r} is not a power of two")
        data_start = -(-c.pos // alignment) * alignment
    return version, meta, infos, alignment, data_start


@dataclass
class BlockReader:
    """A block-quantised GGUF tensor: read_raw reads only the blocks that cover the requested elements and
    dequantises them to float32 with gguf.quants."""

    path: str
    offset: int
    qtype: str
    type_id: int
    block_size: int
    type_size: int

    def _blocks(self, first: int, n: int) -> np.ndarray:
        fd = os.open(self.path, os.O_RDONLY)
        try:
            want = n * self.type_size
            data = os.pread(fd, want, self.offset + first * self.type_size)
        finally:
            os.close(fd)
        if len(data) != want:
            raise CorruptCheckpointError(self.path, "file is truncated (tensor data)")
        return np.frombuffer(data, dtype=np.uint8)

    def read_raw(self, start: int, count: int) -> np.ndarray:
        native = NATIVE.get(self.qtype)
        if native is None:
            try:
                from gguf import quants
                from gguf.constants import GGMLQuantizationType
            except ImportError:
                raise MissingDependencyError(
                    self.path, f"{self.qtype} tensors are dequantised by the gguf package: "
                               "pip install 'wdist[gguf]'") from None
        if count <= 0:
            return np.empty(0, dtype=np.float32)
        first = start // self.block_size
        last = -(-(start + count) // self.block_size)
        raw = self._blocks(first, last - first)
        with np.errstate(all="ignore"):  # damaged scales decode to inf/NaN, which the metrics count
            if native is not None:
                vals = native(raw)
            else:
                vals = quants.dequantize(raw, GGMLQuantizationType(self.type_id))
        skip = start - first * self.block_size
        return np.ascontiguousarray(vals.reshape(-1)[skip:skip + count], dtype=np.float32)

    def block_scales(self, n_blocks: int) -> np.ndarray:
        """Every block's scale `d` (the super-block scale for K-quants) as float32, in bounded batches."""
        off = SCALE_OFFSET[self.qtype]
        out = np.empty(n_blocks, dtype=np.float32)
        for b in range(0, n_blocks, SCALE_BLOCKS_PER_READ):
            n = min(SCALE_BLOCKS_PER_READ, n_blocks - b)
            blocks = self._blocks(b, n).reshape(n, self.type_size)
            out[b:b + n] = blocks[:, off:off + 2].copy().view("<f2").reshape(-1).astype(np.float32)
        return out


def _f16(b: np.ndarray, off: int) -> np.ndarray:
    """The fp16 at byte `off` of each block row, as an (n, 1) float32 column."""
    return b[:, off:off + 2].copy().view("<f2").astype(np.float32)


def _q8_0(raw: np.ndarray) -> np.ndarray:
    b = raw.reshape(-1, 34)
    out = np.empty((b.shape[0], 32), np.float32)
    out[:] = b[:, 2:].view(np.int8)
    out *= _f16(b, 0)
    return out.reshape(-1)


def _q4_0(raw: np.ndarray) -> np.ndarray:
    b = raw.reshape(-1, 18)
    out = np.empty((b.shape[0], 32), np.float32)
    qs = b[:, 2:]
    out[:, :16] = qs & 0x0F
    out[:, 16:] = qs >> 4
    out -= 8
    out *= _f16(b, 0)
    return out.reshape(-1)


def _q4_1(raw: np.ndarray) -> np.ndarray:
    b = raw.reshape(-1, 20)
    out = np.empty((b.shape[0], 32), np.float32)
    qs = b[:, 4:]
    out[:, :16] = qs & 0x0F
    out[:, 16:] = qs >> 4
    out *= _f16(b, 0)
    out += _f16(b, 2)
    return out.reshape(-1)


def _k_scales(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The eight 6-bit sub-block scales and mins packed into bytes 4..15 of Q4_K/Q5_K blocks, as float32."""
    n = b.shape[0]
    s = b[:, 4:16].reshape(n, 3, 4)
    lo, hi, mix = s[:, 0], s[:, 1], s[:, 2]
    sc = np.concatenate([lo & 0x3F, (mix & 0x0F) | ((lo >> 2) & 0x30)], axis=-1).astype(np.float32)
    mn = np.concatenate([hi & 0x3F, (mix >> 4) | ((hi >> 2) & 0x30)], axis=-1).astype(np.float32)
    return (_f16(b, 0) * sc).reshape(n, 8, 1), (_f16(b, 2) * mn).reshape(n, 8, 1)


def _q4_k(raw: np.ndarray) -> np.ndarray:
    # block_q4_K: d, dmin (fp16), 12 bytes of packed scales and mins, 128 bytes of nibbles; sub-block 2j takes
    # the low nibbles of qs[32j:32j+32], sub-block 2j+1 the high ones
    b = raw.reshape(-1, 144)
    n = b.shape[0]
    scale, low = _k_scales(b)
    qs = b[:, 16:].reshape(n, 4, 1, 32)
    buf = np.empty((n, 4, 2, 32), np.float32)
    buf[:, :, 0:1] = qs & 0x0F
    buf[:, :, 1:2] = qs >> 4
    out: np.ndarray = buf.reshape(n, 8, 32)
    out *= scale
    out -= low
    return out.reshape(-1)


_BITS8 = np.arange(8, dtype=np.uint8).reshape(1, 8, 1)
_BITS4x2 = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)


def _q5_k(raw: np.ndarray) -> np.ndarray:
    # block_q5_K: as Q4_K, plus 32 bytes holding the fifth bit of every value (bit j for sub-block j)
    b = raw.reshape(-1, 176)
    n = b.shape[0]
    scale, low = _k_scales(b)
    qs = b[:, 48:].reshape(n, 4, 1, 32)
    low4 = np.empty((n, 4, 2, 32), np.uint8)
    low4[:, :, 0:1] = qs & 0x0F
    low4[:, :, 1:2] = qs >> 4
    q: np.ndarray = low4.reshape(n, 8, 32) | (((b[:, 16:48].reshape(n, 1, 32) >> _BITS8) & 1) << 4)
    out = q.astype(np.float32)
    out *= scale
    out -= low
    return out.reshape(-1)


def _q6_k(raw: np.ndarray) -> np.ndarray:
    # block_q6_K: 128 bytes of low nibbles, 64 of high 2-bit pairs, 16 int8 sub-block scales, d (fp16);
    # values are 6-bit with an offset of 32, in two halves of 128
    b = raw.reshape(-1, 210)
    n = b.shape[0]
    ql = b[:, :128].reshape(n, 2, 1, 64)
    lo = np.empty((n, 2, 2, 64), np.uint8)
    lo[:, :, 0:1] = ql & 0x0F
    lo[:, :, 1:2] = ql >> 4
    hi = (b[:, 128:192].reshape(n, 2, 1, 32) >> _BITS4x2) & 3
    q = lo.reshape(n, 2, 4, 32) | (hi << 4)
    out = q.reshape(n, 16, 16).astype(np.float32)
    out -= 32
    out *= (_f16(b, 208) * b[:, 192:208].view(np.int8).astype(np.float32)).reshape(n, 16, 1)
    return out.reshape(-1)


# Dequantised here (bit-identical to gguf.quants, several times faster, no package needed); the other
# block types go through gguf.quants.
NATIVE = {"Q8_0": _q8_0, "Q4_0": _q4_0, "Q4_1": _q4_1, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k}


def _extra_type(path: str, type_id: int, name: str) -> tuple[str, int, int]:
    """A ggml type outside the built-in table (IQ*, TQ*, MXFP4 ...), readable only through gguf.quants."""
    try:
        from gguf import quants
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
        qt = GGMLQuantizationType(type_id)
    except ImportError:
        raise UnsupportedFormatError(path, f"GGUF tensor {name!r} has ggml type {type_id}; reading it needs "
                                           f"the gguf package: pip install 'wdist[gguf]'") from None
    except ValueError:
        raise CorruptCheckpointError(path, f"GGUF tensor {name!r} has unknown ggml type {type_id}") from None
    if qt not in getattr(quants, "_type_traits", {}) or qt not in GGML_QUANT_SIZES:
        raise UnsupportedFormatError(path, f"GGUF tensor {name!r} is {qt.name}, which has no dequantiser")
    bs, ts = GGML_QUANT_SIZES[qt]
    return qt.name, bs, ts


def _role(name: str, layer: str, param: str, shape: tuple[int, ...], dtype: str) -> Role:
    # llama.cpp spells embeddings "token_embd" / "position_embd", which the shared rules do not know
    if len(shape) >= 2 and dtype.startswith("float") and layer.endswith("_embd"):
        return Role.EMBEDDING
    return infer_role(name, layer, param, shape, dtype)


def load_gguf(path: str) -> Checkpoint:
    version, meta, infos, alignment, data_start = read_header(path)
    size = file_size(path)
    tensors: list[TensorRef] = []
    spans: list[tuple[int, int, str]] = []
    quantised = 0
    for ti in infos:
        shape = tuple(reversed(ti.ne))
        numel = math.prod(ti.ne)
        stored_as: str | None = None
        reader: Any
        if ti.type_id in PLAIN:
            _, dtype = PLAIN[ti.type_id]
            nbytes = numel * np.dtype(dtype if dtype != "bfloat16" else "u2").itemsize
            reader = RangeReader(path, data_start + ti.offset, dtype)
        else:
            known = QUANT.get(ti.type_id)
            qname, bs, ts = known if known else _extra_type(path, ti.type_id, ti.name)
            if ti.ne[0] % bs:
                raise CorruptCheckpointError(
                    path, f"GGUF tensor {ti.name!r}: row of {ti.ne[0]} is not a whole "
                          f"number of {qname} blocks of {bs}")
            dtype, stored_as = "float32", qname
            nbytes = numel // bs * ts
            reader = BlockReader(path, data_start + ti.offset, qname, ti.type_id, bs, ts)
            quantised += qname not in NATIVE
        if ti.offset % alignment:
            raise CorruptCheckpointError(
                path, f"GGUF tensor {ti.name!r}: offset {ti.offset} is not a multiple "
                      f"of the alignment {alignment}")
        if data_start + ti.offset + nbytes > size:
            raise CorruptCheckpointError(
                path, f"GGUF tensor {ti.name!r}: {nbytes} bytes at offset {ti.offset} "
                      f"run past the end of the file")
        spans.append((ti.offset, ti.offset + nbytes, ti.name))
        layer, param = split_name(ti.name)
        role = _role(ti.name, layer, param, shape, dtype)
        tensors.append(TensorRef(
            name=ti.name, layer=layer, role=role, shape=shape, dtype=dtype, reader=reader,
            unit_axis=default_unit_axis(role, len(shape), keras=False), source=os.path.basename(path),
            stored_as=stored_as, stored_nbytes=nbytes if stored_as else None))
    end = -1
    for begin, stop, name in sorted(spans):
        if begin < end:
            raise CorruptCheckpointError(
                path, f"GGUF tensor {name!r}: data at {begin}..{stop} overlaps another tensor")
        end = max(end, stop)
    fix_norm_biases(tensors)
    # NaN/inf would make the JSON output invalid
    metadata: dict[str, Any] = {k: v for k, v in meta.items()
                                if not (isinstance(v, float) and not math.isfinite(v))}
    metadata["gguf.version"] = version
    warnings: list[str] = []
    if quantised and importlib.util.find_spec("gguf") is None:
        warnings.append(f"{quantised} tensors of block types other than {', '.join(NATIVE)} need the gguf "
                        "package: pip install 'wdist[gguf]'")
    return Checkpoint(path=path, format="gguf", variant=f"v{version}", tensors=tensors, metadata=metadata,
                      sources=[path], warnings=warnings)


def block_scales(ref: TensorRef) -> np.ndarray | None:
    """The per-block scales of a block-quantised GGUF tensor (one float32 per block: `d`, the super-block
    scale for K-quants), or None for a tensor that is not block-quantised. 4 bytes per block."""
    r = ref.reader
    if not isinstance(r, BlockReader) or r.qtype not in SCALE_OFFSET:
        return None
    return r.block_scales(ref.numel // r.block_size)


def scale_summary(ref: TensorRef) -> dict[str, float | int | str] | None:
    """Distribution of a quantised tensor's block scales: count, min, median, max, mean of |d|, and the
    fraction of blocks whose scale is zero (all-zero blocks) or not finite (a damaged block)."""
    d = block_scales(ref)
    if d is None:
        return None
    finite = d[np.isfinite(d)]
    a = np.abs(finite) if finite.size else np.full(1, np.nan, dtype=np.float32)
    return {
        "type": str(ref.stored_as), "blocks": int(d.size),
        "min": float(a.min()), "median": float(np.median(a)), "max": float(a.max()), "mean": float(a.mean()),
        "zero_fraction": float((d == 0).mean()) if d.size else 0.0,
        "nonfinite_fraction": float(1 - finite.size / d.size) if d.size else 0.0,
    }


def sniff(head: bytes, path: str) -> bool:
    return head[:4] == MAGIC


PLUGIN = FormatPlugin(
    name="gguf", title="GGUF (llama.cpp)", extensions=(".gguf",), load=load_gguf, sniff=sniff,
    # F32/F16/BF16 files need nothing, so the format is always available; quantised tensors ask for the extra
    extra="gguf", fallback_by_extension=True,
    variants="v2, v3; F32 F16 BF16 F64 I8-I64 and Q8_0 Q4_0 Q4_1 Q4_K Q5_K Q6_K without extras; Q5_0 Q5_1 "
             "Q2_K Q3_K (and the gguf package's other dequantisable types) with the gguf extra",
    order=20,
)
