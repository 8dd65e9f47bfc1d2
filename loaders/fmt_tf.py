"""TensorFlow checkpoints without TensorFlow: tensor bundles (`PREFIX.index` + `PREFIX.data-0000K-of-0000N`)
written by `tf.train.Checkpoint`, Keras 2 TF-format `save_weights`, TF1 `Saver`, and SavedModel folders
(`variables/variables.index`).

The index is a LevelDB-style SSTable (footer -> index block -> data blocks of prefix-compressed entries with
restart points). Its values are protobufs, decoded by the minimal reader below: the "" key holds a
BundleHeaderProto (num_shards, endianness), every other key a BundleEntryProto (dtype, shape, shard_id,
offset, size, crc32c, slices). Tensor bytes are read by range from the right data shard and their crc32c is
verified while the chunks stream. Names come from the `_CHECKPOINTABLE_OBJECT_GRAPH` entry (a
TrackableObjectGraph proto) when present: each variable's `full_name` (`sequential/hidden/kernel`) instead of
its object-path key; variables reachable only through the optimizer get role `optimizer_state`."""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wdist.loaders.errors import CorruptCheckpointError, UnsupportedFormatError
from wdist.loaders.fileio import RangeReader, file_size, shared_span
from wdist.loaders.fmt_dcp import Chunk, ChunkedReader, layout, overlap
from wdist.loaders.fs import inside_model_folder
from wdist.loaders.model import Checkpoint, Role, TensorRef, dtype_itemsize
from wdist.loaders.plugin import FormatPlugin
from wdist.loaders.roles import default_unit_axis, fix_norm_biases, infer_role, split_name

NAME = "tf-checkpoint"
TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER = 48
MAX_BLOCK = 64 << 20  # TF writes ~4 KB blocks; an index of a huge model stays far below this
MAX_ENTRIES = 1 << 20  # a TF checkpoint holds one entry per variable (+ slots): real ones ~10^3-10^5
MAX_GRAPH = 256 << 20
MAX_DIMS = 64
GRAPH_KEY = b"_CHECKPOINTABLE_OBJECT_GRAPH"
ATTR_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"

# tensorflow/core/framework/types.proto DataType -> wdist dtype (None: not numeric, never listed)
TF_DTYPES: dict[int, str | None] = {
    1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 7: None, 8: "complex64",
    9: "int64", 10: "bool", 14: "bfloat16", 17: "uint16", 18: "complex128", 19: "float16", 20: None, 21: None,
    22: "uint32", 23: "uint64", 24: "float8_e5m2", 25: "float8_e4m3fn",
}
DT_STRING = 7
# TF1 optimizer slot suffixes and accumulators (keys of Saver checkpoints, which carry no object graph)
_TF1_SLOT = re.compile(r"(/(Adam|Adam_\d+|Momentum|RMSProp|RMSProp_\d+|Adagrad|Adadelta|Adadelta_\d+|Ftrl|Ftrl_\d+|"
                       r"ExponentialMovingAverage|AdamW|AdamW_\d+)$)|(^|/)(beta1_power|beta2_power)$")
OPTIMIZER_EDGES = {"optimizer", "optim", "opt", "_optimizer"}


# ---------------------------------------------------------------------------------------------------- crc32c

@functools.cache
def _crc_table() -> np.ndarray:
    poly = 0x82F63B78  # Castagnoli, reflected
    t = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        t = np.where(t & 1, (t >> 1) ^ np.uint32(poly), t >> 1).astype(np.uint32)
    return t


@functools.cache
def _shift_tables(n: int) -> tuple[tuple[int, ...], ...]:
    """The linear map 'feed n zero bytes into the register', as 4 byte-indexed tables."""
    t = _crc_table()
    out = []
    for j in range(4):
        reg = (np.arange(256, dtype=np.uint32) << np.uint32(8 * j)).astype(np.uint32)
        for _ in range(n):
            reg = t[reg & 0xFF] ^ (reg >> np.uint32(8))
        out.append(tuple(int(v) for v in reg))
    return tuple(out)


@functools.cache
def _shift_arrays(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """_shift_tables(n) as numpy arrays; for n = block * 2^k built by squaring the map for n/2."""
    if n <= BLOCK or n % 2:
        return tuple(np.array(t, dtype=np.uint32) for t in _shift_tables(n))  # type: ignore[return-value]
    half = _shift_arrays(n // 2)
    out = []
    for j in range(4):
        x = (np.arange(256, dtype=np.uint32) << np.uint32(8 * j)).astype(np.uint32)
        out.append(_apply(half, _apply(half, x)))
    return out[0], out[1], out[2], out[3]


def _apply(tabs: tuple[np.ndarray, ...], x: np.ndarray) -> np.ndarray:
    return (tabs[0][x & 0xFF] ^ tabs[1][(x >> np.uint32(8)) & 0xFF] ^ tabs[2][(x >> np.uint32(16)) & 0xFF]
            ^ tabs[3][x >> np.uint32(24)])


BLOCK = 256


@functools.cache
def _fast_crc() -> Any:
    """google-crc32c (C, hardware CRC instructions) when installed: about 8x the numpy path's speed."""
    try:
        import google_crc32c  # type: ignore[import-not-found]
    except ImportError:
        return None
    return google_crc32c


def _crc_update(reg: int, data: np.ndarray) -> int:
    """Raw CRC-32C register after `data` (uint8), without the initial/final inversion. Long inputs are cut
    into equal blocks whose registers numpy computes side by side from a zero register (the incoming
    register is the same as XOR-ing it into the first 4 bytes); the block registers are then combined
    pairwise in a tree (CRC is linear: crc(AB) = shift_|B|(crc(A)) ^ crc(B)). Zero blocks prepended to
    reach a power of two change nothing, since zeros fed into a zero register leave it zero."""
    n = data.size
    fast = _fast_crc()
    if fast is not None and n >= 64:
        return int(fast.extend(reg ^ 0xFFFFFFFF, data.tobytes())) ^ 0xFFFFFFFF
    nb = n // BLOCK if n >= 8 * BLOCK else 0
    if nb:
        t = _crc_table()
        cols = data[: nb * BLOCK].reshape(nb, BLOCK).T.copy()
        first = cols[:4, 0].copy()
        cols[:4, 0] = first ^ np.frombuffer(reg.to_bytes(4, "little"), dtype=np.uint8)
        regs = np.zeros(nb, dtype=np.uint32)
        low = regs.view(np.uint8)[::4]  # little-endian: the register's low byte
        idx = np.empty(nb, dtype=np.uint8)
        for k in range(BLOCK):
            np.bitwise_xor(low, cols[k], out=idx)
            tk = t[idx]
            regs >>= np.uint32(8)
            regs ^= tk
        size = 1 << (nb - 1).bit_length()
        level = np.concatenate([np.zeros(size - nb, dtype=np.uint32), regs])
        length = BLOCK
        while level.size > 1:
            level = _apply(_shift_arrays(length), level[0::2]) ^ level[1::2]
            length *= 2
        reg = int(level[0])
    tl = _crc_table_list()
    for b in data[nb * BLOCK:].tolist():
        reg = tl[(reg ^ b) & 0xFF] ^ (reg >> 8)
    return reg


@functools.cache
def _crc_table_list() -> tuple[int, ...]:
    return tuple(int(v) for v in _crc_table())


def crc32c(data: bytes | np.ndarray) -> int:
    arr = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    return _crc_update(0xFFFFFFFF, arr) ^ 0xFFFFFFFF


def unmask(masked: int) -> int:
    """TF/LevelDB store crc32c 'masked' so that CRCs of data holding CRCs stay well distributed."""
    rot = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


def mask(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------------- protobuf

class _Bad(Exception):
    """Internal: malformed bytes; turned into CorruptCheckpointError with the path by the caller."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _Bad("truncated or overlong varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value): varints as int, fixed as int, length-delimited as bytes; one at
    a time (a list of every field of a 30 MB entry padded with unknown fields took 1.2 GB)."""
    pos, n = 0, len(buf)
    while pos < n:
        key, pos = _varint(buf, pos)
        fno, wt = key >> 3, key & 7
        v: Any
        if fno == 0:
            raise _Bad("field number 0")
        if wt == 0:
            v, pos = _varint(buf, pos)
        elif wt == 1:
            if pos + 8 > n:
                raise _Bad("truncated fixed64")
            v, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wt == 2:
            ln, pos = _varint(buf, pos)
            if pos + ln > n:
                raise _Bad("length-delimited field runs past its message")
            v, pos = bytes(buf[pos:pos + ln]), pos + ln
        elif wt == 5:
            if pos + 4 > n:
                raise _Bad("truncated fixed32")
            v, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        else:
            raise _Bad(f"unsupported wire type {wt}")
        yield fno, wt, v


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


@dataclass
class Entry:
    dtype: int = 0
    shape: tuple[int, ...] = ()
    unknown_rank: bool = False
    shard_id: int = 0
    offset: int = 0
    size: int = 0
    crc32c: int | None = None
    slices: list[list[tuple[int, int | None]]] = field(default_factory=list)  # per slice: (start, length)


# A BundleEntryProto is tens of bytes, a partitioned variable's ~20 more per slice: 1 MiB is 50,000 slices
MAX_ENTRY_BYTES = 1 << 20


def _entry(buf: bytes) -> Entry:
    if len(buf) > MAX_ENTRY_BYTES:  # walked field by field in Python: 15M fields of a 30 MB entry, 15 s
        raise _Bad(f"an entry of {len(buf):,} bytes (more than {MAX_ENTRY_BYTES:,})")
    e = Entry()
    dims: list[int] = []
    for fno, wt, v in _fields(buf):
        if fno == 1 and wt == 0:
            e.dtype = v
        elif fno == 2 and wt == 2:
            for sf, swt, sv in _fields(v):
                if sf == 2 and swt == 2:
                    size = 0
                    for df, dwt, dv in _fields(sv):
                        if df == 1 and dwt == 0:
                            size = _signed(dv)
                    dims.append(size)
                elif sf == 3 and swt == 0:
                    e.unknown_rank = bool(sv)
        elif fno == 3 and wt == 0:
            e.shard_id = v
        elif fno == 4 and wt == 0:
            e.offset = _signed(v)
        elif fno == 5 and wt == 0:
            e.size = _signed(v)
        elif fno == 6 and wt == 5:
            e.crc32c = v
        elif fno == 7 and wt == 2:
            ext: list[tuple[int, int | None]] = []
            for xf, xwt, xv in _fields(v):
                if xf == 1 and xwt == 2:
                    start, length = 0, None
                    for f3, w3, v3 in _fields(xv):
                        if f3 == 1 and w3 == 0:
                            start = _signed(v3)
                        elif f3 == 2 and w3 == 0:
                            length = _signed(v3)
                    ext.append((start, length))
            e.slices.append(ext)
    if len(dims) > MAX_DIMS:
        raise _Bad("too many dimensions")
    e.shape = tuple(dims)
    return e


# ------------------------------------------------------------------------------------- slice keys (OrderedCode)

def _num_increasing(v: int) -> bytes:
    body = v.to_bytes((v.bit_length() + 7) // 8, "big") if v else b""
    return bytes([len(body)]) + body


def _signed_increasing(v: int) -> bytes:
    x = ~v if v < 0 else v
    if x < 64:
        return bytes([(0x80 ^ v) & 0xFF])
    n = x.bit_length() // 7 + 1
    buf = bytearray((v & ((1 << 80) - 1)).to_bytes(10, "big"))[10 - n:]
    head = [(0, 0), (0x80, 0), (0xC0, 0), (0xE0, 0), (0xF0, 0), (0xF8, 0), (0xFC, 0), (0xFE, 0), (0xFF, 0),
            (0xFF, 0x80), (0xFF, 0xC0)][n]
    buf[0] ^= head[0]
    buf[1] ^= head[1]
    return bytes(buf)


def slice_key(name: bytes, extents: list[tuple[int, int]]) -> bytes:
    """TF's EncodeTensorNameSlice: the key under which one slice of a partitioned variable is stored."""
    esc = b"".join(b"\x00\xff" if c == 0 else b"\xff\x00" if c == 255 else bytes([c]) for c in name)
    out = _num_increasing(0) + esc + b"\x00\x01" + _num_increasing(len(extents))
    for start, length in extents:
        out += _signed_increasing(start) + _signed_increasing(length)
    return out


# ---------------------------------------------------------------------------------------------------- SSTable

def _pread(fd: int, offset: int, n: int) -> bytes:
    data = os.pread(fd, n, offset)
    if len(data) != n:
        raise _Bad("file is truncated")
    return data


def _handle(buf: bytes, pos: int) -> tuple[int, int, int]:
    off, pos = _varint(buf, pos)
    size, pos = _varint(buf, pos)
    return off, size, pos


def _block(fd: int, fsize: int, off: int, size: int) -> bytes:
    if size > MAX_BLOCK or off < 0 or off + size + 5 > fsize:
        raise _Bad(f"block at {off}+{size} lies outside the file")
    raw = _pread(fd, off, size + 5)
    contents, kind = raw[:size], raw[size]
    if unmask(int.from_bytes(raw[size + 1:], "little")) != crc32c(raw[:size + 1]):
        raise _Bad(f"block at {off} fails its crc32c check")
    if kind == 1:
        raise _Bad("block is snappy-compressed, which wdist does not decode (TF writes bundles uncompressed)")
    if kind != 0:
        raise _Bad(f"block has unknown compression type {kind}")
    return contents


def _block_entries(block: bytes, limit: int = MAX_ENTRIES) -> list[tuple[bytes, bytes]]:
    """The block's (key, value) pairs; more than `limit` of them is an error (checked as they are read)."""
    if len(block) < 4:
        raise _Bad("block too small")
    nrest = int.from_bytes(block[-4:], "little")
    end = len(block) - 4 - 4 * nrest
    if nrest == 0 or end < 0:
        raise _Bad("block has a bad restart array")
    out: list[tuple[bytes, bytes]] = []
    key = b""
    pos = 0
    while pos < end:
        shared, pos = _varint(block, pos)
        non_shared, pos = _varint(block, pos)
        vlen, pos = _varint(block, pos)
        if shared > len(key) or pos + non_shared + vlen > end:
            raise _Bad("block entry runs past its block")
        key = key[:shared] + block[pos:pos + non_shared]
        pos += non_shared
        out.append((key, block[pos:pos + vlen]))
        pos += vlen
        if len(out) > limit:
            raise _Bad(f"more than {MAX_ENTRIES:,} entries")
    return out


def read_table(path: str) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of an SSTable file, in key order."""
    fsize = file_size(path)
    if fsize < FOOTER:
        raise CorruptCheckpointError(path, "file too small for a TensorFlow checkpoint index")
    fd = os.open(path, os.O_RDONLY)
    try:
        footer = _pread(fd, fsize - FOOTER, FOOTER)
        if int.from_bytes(footer[-8:], "little") != TABLE_MAGIC:
            raise CorruptCheckpointError(path, "no SSTable magic number at the end: not a TensorFlow checkpoint index")
        _mo, _ms, pos = _handle(footer, 0)
        io_, is_, _ = _handle(footer, pos)
        entries: list[tuple[bytes, bytes]] = []
        # data blocks lie in order, apart, before the index block (as LevelDB writes them): an index naming
        # one block many times would multiply a small file's entries (9 x 1M from 11 MB took 39 s, 3.7 GB)
        next_free = 0
        for _k, hv in _block_entries(_block(fd, fsize, io_, is_)):
            do, ds, _ = _handle(hv, 0)
            if do < next_free or do + ds + 5 > io_:
                raise _Bad(f"data block at {do}+{ds} overlaps another block or lies after the index")
            next_free = do + ds + 5
            entries += _block_entries(_block(fd, fsize, do, ds), MAX_ENTRIES - len(entries))
        for (a, _), (b, _) in zip(entries, entries[1:]):  # a key twice: which entry counts is up to the reader
            if b <= a:
                raise _Bad(f"key {b[:80]!r} is out of order or repeated")
        return entries
    except _Bad as e:
        raise CorruptCheckpointError(path, f"checkpoint index is damaged ({e})") from None
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------------- readers

@dataclass
class CrcRangeReader(RangeReader):
    """A RangeReader that checks the entry's crc32c when a pass reads the tensor from its first to its last
    element in order (as TensorRef.chunks does); other access patterns are served unchecked."""

    nbytes: int = 0
    # the entry's masked crc32c; an entry without one holds 0 (proto3 leaves a zero field out) and is checked
    # against 0, as TensorFlow's BundleReader does, so it fails unless its data's masked CRC really is 0
    crc: int | None = None
    name: str = ""
    whole_pass = True  # analysed as one task (never split into element ranges), so the check always runs
    _next: int = field(default=0, init=False, repr=False)
    _reg: int = field(default=0xFFFFFFFF, init=False, repr=False)

    def read_raw(self, start: int, count: int, out: np.ndarray | None = None) -> np.ndarray:
        arr = super().read_raw(start, count, out)
        if self.crc is None:
            return arr
        itemsize = arr.itemsize
        if start == 0:
            self._next, self._reg = 0, 0xFFFFFFFF
        if start * itemsize != self._next:
            self._next = -1  # out of order: this pass cannot be checked
            return arr
        self._reg = _crc_update(self._reg, arr.view(np.uint8).reshape(-1))
        self._next += count * itemsize
        if self._next == self.nbytes:
            self._next = -1
            if mask(self._reg ^ 0xFFFFFFFF) != self.crc:
                raise CorruptCheckpointError(self.path, f"tensor {self.name!r}: data fails its crc32c check")
        return arr


# ---------------------------------------------------------------------------------------------------- names

@dataclass
class _Var:
    key: str
    full_name: str
    optimizer: bool


def _object_graph(buf: bytes, max_nodes: int) -> dict[str, _Var]:
    """checkpoint_key -> readable name and whether it is optimizer state, from a TrackableObjectGraph of at
    most `max_nodes` nodes (_Bad beyond: each costs ~250 bytes here, and 5M empty ones took 1.7 GB)."""
    nodes: list[tuple[list[tuple[int, str]], list[tuple[str, str]], list[int]]] = []
    for fno, wt, node in _fields(buf):
        if fno != 1 or wt != 2:
            continue
        if len(nodes) >= max_nodes:
            raise _Bad(f"more than {max_nodes:,} nodes for the checkpoint's entries")
        children: list[tuple[int, str]] = []
        attrs: list[tuple[str, str]] = []
        slots: list[int] = []
        for f2, w2, v2 in _fields(node):
            if f2 == 1 and w2 == 2:
                nid, lname = 0, ""
                for f3, w3, v3 in _fields(v2):
                    if f3 == 1 and w3 == 0:
                        nid = v3
                    elif f3 == 2 and w3 == 2:
                        lname = v3.decode("utf-8", "replace")
                children.append((nid, lname))
            elif f2 == 2 and w2 == 2:
                full, ckey = "", ""
                for f3, w3, v3 in _fields(v2):
                    if f3 == 2 and w3 == 2:
                        full = v3.decode("utf-8", "replace")
                    elif f3 == 3 and w3 == 2:
                        ckey = v3.decode("utf-8", "replace")
                attrs.append((full, ckey))
            elif f2 == 3 and w2 == 2:
                for f3, w3, v3 in _fields(v2):
                    if f3 == 3 and w3 == 0:
                        slots.append(v3)
        nodes.append((children, attrs, slots))
    if not nodes:
        return {}
    # nodes the model reaches without passing through an optimizer edge are model state
    model = {0}
    todo = [0]
    while todo:
        n = todo.pop()
        for cid, lname in nodes[n][0]:
            if lname in OPTIMIZER_EDGES or cid in model or cid >= len(nodes):
                continue
            model.add(cid)
            todo.append(cid)
    slot_nodes = {s for node in nodes for s in node[2]}
    out: dict[str, _Var] = {}
    for i, (_c, attrs, _s) in enumerate(nodes):
        for full, ckey in attrs:
            if ckey:
                out[ckey] = _Var(ckey, full, i not in model or i in slot_nodes)
    return out


def _names(keys: list[str], graph: dict[str, _Var]) -> dict[str, tuple[str, bool]]:
    """Key -> (display name, optimizer?). full_name is used when every variable has a distinct one."""
    fulls = [graph[k].full_name if k in graph else "" for k in keys]
    use_full = all(fulls) and len(set(fulls)) == len(fulls)
    out: dict[str, tuple[str, bool]] = {}
    for k, full in zip(keys, fulls):
        v = graph.get(k)
        name = full if use_full else (k[: -len(ATTR_SUFFIX)] if k.endswith(ATTR_SUFFIX) else k)
        opt = v.optimizer if v is not None else bool(_TF1_SLOT.search(k)) or k.split("/", 1)[0] in OPTIMIZER_EDGES
        out[k] = (name, opt)
    return out


# ---------------------------------------------------------------------------------------------------- loading

_DATA_RE = re.compile(r"^(.*)\.data-\d{5}-of-\d{5}$")


def resolve_index(path: str) -> str:
    """The .index file of a prefix, an index or data file, a SavedModel folder or a checkpoint folder."""
    if os.path.isdir(path):
        index = _index_in_folder(path)
        if not inside_model_folder(index, path):  # as for shards: a symlink out of the folder is not followed
            raise CorruptCheckpointError(path, f"{os.path.relpath(index, path)!r} resolves outside the "
                                               "checkpoint's folder (a symlink out of it is not followed)")
        return index
    if path.endswith(".index"):
        return path
    m = _DATA_RE.match(path)
    if m and os.path.isfile(m.group(1) + ".index"):
        return m.group(1) + ".index"
    if os.path.isfile(path + ".index"):
        return path + ".index"
    return path


def _index_in_folder(path: str) -> str:
    """The .index a SavedModel or checkpoint folder points at (not yet checked to stay inside it)."""
    sm = os.path.join(path, "variables", "variables.index")
    if os.path.isfile(sm):
        return sm
    cp = os.path.join(path, "checkpoint")
    # a `checkpoint` file that is a symlink out of the folder is not read (it is as if absent): it would name
    # an .index of another run's choosing and reads a file outside the checkpoint
    if os.path.isfile(cp) and inside_model_folder(cp, path):
        with open(cp, encoding="utf-8", errors="replace") as f:
            m = re.search(r'^model_checkpoint_path:\s*"([^"]+)"', f.read(1 << 16), re.MULTILINE)
        if m:
            cand = os.path.normpath(os.path.join(path, m.group(1) + ".index"))
            if os.path.dirname(cand) == os.path.normpath(path) and os.path.isfile(cand):
                return cand
    idx = sorted(n for n in os.listdir(path) if n.endswith(".index"))
    if len(idx) == 1:
        return os.path.join(path, idx[0])
    raise UnsupportedFormatError(path, "folder holds no single TensorFlow checkpoint (.index file)")


def _read_string_scalar(path: str, e: Entry, fp: str) -> bytes:
    """A DT_STRING scalar: varint length, a 4-byte checksum of the lengths, then the bytes."""
    if e.size > MAX_GRAPH or e.size < 5:
        raise _Bad("object graph entry has an implausible size")
    fd = os.open(fp, os.O_RDONLY)
    try:
        raw = _pread(fd, e.offset, e.size)
    finally:
        os.close(fd)
    ln, pos = _varint(raw, 0)
    if pos + 4 + ln != len(raw):
        raise _Bad("object graph string does not fill its entry")
    return raw[pos + 4:]


def _sliced(index: str, key: str, kb: bytes, e: Entry, dtype: str, by_key: dict[bytes, Entry],
            located: Any) -> ChunkedReader:
    """A partitioned variable: its slices must tile the full shape exactly; each is read (and
    crc-checked) from its own entry."""
    if e.unknown_rank or any(d < 0 for d in e.shape):
        raise CorruptCheckpointError(index, f"entry {key!r} has an unknown or negative shape")
    chunks: list[Chunk] = []
    total = 0
    for ext in e.slices:
        if len(ext) != len(e.shape):
            raise CorruptCheckpointError(index, f"partitioned variable {key!r}: a slice has {len(ext)} extents "
                                         f"for {len(e.shape)} dimensions")
        full = [(st, d if ln is None else ln) for (st, ln), d in zip(ext, e.shape)]
        if any(st < 0 or ln < 0 or st + ln > d for (st, ln), d in zip(full, e.shape)):
            raise CorruptCheckpointError(index, f"partitioned variable {key!r}: slice {full} lies outside {list(e.shape)}")
        enc = slice_key(kb, [(st, -1 if ln is None else ln) for st, ln in ext])
        se = by_key.get(enc)
        if se is None:
            raise CorruptCheckpointError(index, f"partitioned variable {key!r}: slice {full} has no entry")
        if se.dtype != e.dtype or se.shape != tuple(ln for _st, ln in full) or se.slices:
            raise CorruptCheckpointError(index, f"partitioned variable {key!r}: slice {full} entry does not match")
        fp = located(key, se, dtype)
        ch = Chunk(tuple(st for st, _ln in full), se.shape,
                   CrcRangeReader(fp, se.offset, dtype, nbytes=se.size, crc=se.crc32c or 0, name=key))
        layout(ch, e.shape)
        chunks.append(ch)
        total += math.prod(se.shape)
    why = overlap(chunks, e.shape) if total == math.prod(e.shape) else "their sizes do not add up to it"
    if why is not None:
        raise CorruptCheckpointError(index, f"partitioned variable {key!r}: slices do not tile its shape "
                                            f"{list(e.shape)} ({why})")
    return ChunkedReader(index, e.shape, dtype, chunks)


def load(path: str) -> Checkpoint:
    index = resolve_index(path)
    if not os.path.isfile(index):
        raise UnsupportedFormatError(path, "no TensorFlow checkpoint .index file found")
    entries = read_table(index)
    prefix = index[: -len(".index")]
    try:
        if not entries or entries[0][0] != b"":
            raise _Bad("no bundle header entry")
        num_shards, endian = 1, 0
        for fno, wt, v in _fields(entries[0][1]):
            if fno == 1 and wt == 0:
                num_shards = v
            elif fno == 2 and wt == 0:
                endian = v
        if endian != 0:
            raise UnsupportedFormatError(index, "big-endian TensorFlow checkpoints are not supported")
        if not 1 <= num_shards <= 1 << 16:
            raise _Bad(f"implausible shard count {num_shards}")
        parsed = [(k, _entry(v)) for k, v in entries[1:]]
    except _Bad as err:
        raise CorruptCheckpointError(index, f"checkpoint index is damaged ({err})") from None

    shard_sizes: dict[int, int] = {}
    spans: list[tuple[str, int, int, str]] = []  # (shard, offset, size, what) of every entry read as data

    def shard(sid: int, key: str) -> str:
        if not 0 <= sid < num_shards:
            raise CorruptCheckpointError(index, f"entry {key!r} names shard {sid} of {num_shards}")
        fp = f"{prefix}.data-{sid:05d}-of-{num_shards:05d}"
        if sid not in shard_sizes:
            if not inside_model_folder(fp, os.path.dirname(os.path.abspath(index))):
                raise CorruptCheckpointError(index, f"data shard {os.path.basename(fp)} resolves outside the "
                                                    "checkpoint's folder (a symlink out of it is not followed)")
            if not os.path.isfile(fp):
                raise CorruptCheckpointError(index, f"data shard {os.path.basename(fp)} is missing")
            shard_sizes[sid] = file_size(fp)
        return fp

    def located(key: str, e: Entry, dtype: str) -> str:
        """The shard file of an entry whose size matches its shape and whose bytes lie inside the shard."""
        if e.unknown_rank or any(d < 0 for d in e.shape):
            raise CorruptCheckpointError(index, f"entry {key!r} has an unknown or negative shape")
        need = math.prod(e.shape) * dtype_itemsize(dtype)
        if e.size != need:
            raise CorruptCheckpointError(index, f"entry {key!r}: shape {list(e.shape)} x {dtype} needs {need} bytes "
                                         f"but the entry says {e.size}")
        fp = shard(e.shard_id, key)
        if e.offset < 0 or e.offset + e.size > shard_sizes[e.shard_id]:
            raise CorruptCheckpointError(index, f"entry {key!r} lies outside {os.path.basename(fp)}")
        spans.append((fp, e.offset, e.size, f"entry {key!r}"))
        return fp

    warnings: list[str] = []
    graph: dict[str, _Var] = {}
    kept: list[tuple[str, Entry, str, Any]] = []
    skipped: list[str] = []
    by_key = dict(parsed)
    for kb, e in parsed:
        if kb[:1] == b"\x00":
            continue  # one slice of a partitioned variable, keyed by an encoded (name, slice) pair
        key = kb.decode("utf-8", "replace")
        if kb == GRAPH_KEY and e.dtype == DT_STRING:
            fp = shard(e.shard_id, key)
            if e.offset < 0 or e.offset + e.size > shard_sizes[e.shard_id]:
                raise CorruptCheckpointError(index, "object graph entry lies outside its data shard")
            try:
                # a node per variable, layer, container and slot: a few per entry in real graphs
                graph = _object_graph(_read_string_scalar(index, e, fp), 8 * len(parsed) + 10_000)
            except _Bad as err:
                warnings.append(f"object graph unreadable ({err}); names are checkpoint keys")
            continue
        dtype = TF_DTYPES.get(e.dtype)
        if dtype is None:
            if e.dtype not in TF_DTYPES:
                skipped.append(key)
            continue
        if e.slices:
            kept.append((key, e, "", _sliced(index, key, kb, e, dtype, by_key, located)))
            continue
        kept.append((key, e, located(key, e, dtype), None))
    shared = shared_span(spans)  # BundleWriter appends each tensor's bytes once
    if shared is not None:
        raise CorruptCheckpointError(index, shared)
    if skipped:
        warnings.append("entries of unsupported dtypes not read: " + ", ".join(skipped[:10]))
    names = _names([k for k, _e, _f, _r in kept], graph)
    tensors: list[TensorRef] = []
    meta: dict[str, Any] = {}
    for key, e, fp, sliced in kept:
        dtype = TF_DTYPES[e.dtype]
        assert dtype is not None
        name, opt = names[key]
        layer, param = split_name(name, "/")
        role = Role.OPTIMIZER_STATE if opt else infer_role(name, layer, param, e.shape, dtype)
        reader: Any = sliced if sliced is not None else \
            CrcRangeReader(fp, e.offset, dtype, nbytes=e.size, crc=e.crc32c or 0, name=name)
        if sliced is not None:
            for ch in sliced.chunks:
                ch.reader.name = f"{name} slice {list(ch.offsets)}"
        src = ",".join(sorted({os.path.basename(c.reader.path) for c in sliced.chunks})) if sliced is not None \
            else os.path.basename(fp)
        tensors.append(TensorRef(name=name, layer=layer, role=role, shape=e.shape, dtype=dtype, reader=reader,
                                 unit_axis=default_unit_axis(role, len(e.shape), keras=True), source=src))
        if e.shape == () and dtype.startswith("int") and re.search(r"(^|/)(iterations?|global_step|iter)$", name):
            meta.setdefault("step", int(reader.read_raw(0, 1)[0]))
    fix_norm_biases(tensors)
    variant = "saved-model" if index.endswith(os.path.join("variables", "variables.index")) else \
        ("object-graph" if graph else "tf1-saver")
    if num_shards > 1:
        variant += f", {num_shards} shards"
    return Checkpoint(path=path, format=NAME, variant=variant, tensors=tensors, metadata=meta,
                      sources=[index] + [f"{prefix}.data-{s:05d}-of-{num_shards:05d}" for s in sorted(shard_sizes)],
                      warnings=warnings)


def _has_magic(path: str) -> bool:
    try:
        size = os.path.getsize(path)
        if size < FOOTER:
            return False
        with open(path, "rb") as f:
            f.seek(size - 8)
            return int.from_bytes(f.read(8), "little") == TABLE_MAGIC
    except OSError:
        return False


def sniff(head: bytes, path: str) -> bool:
    """An .index file ends with the SSTable magic; a data shard is recognised by its name and its index."""
    if _DATA_RE.match(path):
        m = _DATA_RE.match(path)
        return m is not None and _has_magic(m.group(1) + ".index")
    return path.endswith(".index") and _has_magic(path)


def sniff_dir(path: str) -> bool:
    """A SavedModel folder, or a folder holding one TF checkpoint (a `checkpoint` file or a single .index)."""
    try:
        return _has_magic(resolve_index(path))
    except (OSError, UnsupportedFormatError):
        return False


PLUGIN = FormatPlugin(
    name=NAME, title="TensorFlow checkpoint / SavedModel variables", extensions=(".index",), load=load, sniff_dir=sniff_dir,
    sniff=sniff,
    variants="tf.train.Checkpoint and Keras TF-format weights (PREFIX.index + PREFIX.data-K-of-N, any number "
             "of shards), TF1 Saver checkpoints, SavedModel folders (variables/variables.index); names from the "
             "object graph; crc32c verified; partitioned variables (TF1 partitioners, TF2 sharding policies) assembled from their slices; snappy-compressed indexes refused",
    order=45, fallback_by_extension=True,
)
