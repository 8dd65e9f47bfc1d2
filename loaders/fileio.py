"""Bounded, read-only byte access: every read is checked against the file's real size first."""

from __future__ import annotations

import bz2
import io
import math
import struct
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from wdist.loaders import fs
from wdist.loaders.dtypes import storage_dtype
from wdist.loaders.errors import CorruptCheckpointError, UnsupportedFormatError

# what Python's zipfile raises on damaged archives, beyond BadZipFile
ZIP_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, OSError, ValueError, EOFError, KeyError,
    UnicodeDecodeError, OverflowError, RuntimeError, zlib.error, struct.error, IndexError,
)

# One pread plus its Python loop step and gather (~10 us measured) costs about as much as copying this
# many bytes from the page cache, so a strided read covers runs separated by smaller gaps with one read
# instead of issuing one read per run.
_SYSCALL_BYTES = 32 << 10
# Largest single read into scratch memory while gathering a strided view: about one 1 Mi-element chunk of
# float32, so a view's reader never holds much more than the chunk it serves.
_SCRATCH_BYTES = 4 << 20
_BLOCK = 1 << 16  # compressed bytes fed to a decompressor at a time


def file_size(path: str) -> int:
    return fs.size(path)


class _OwnedZip(zipfile.ZipFile):
    """A ZipFile over a file object it closes itself (zipfile leaves passed-in objects open)."""

    def __init__(self, fobj: Any) -> None:
        self._owned = fobj
        try:
            super().__init__(fobj)
        except BaseException:
            fobj.close()
            raise

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._owned.close()


# zipfile makes a ZipInfo (~500 bytes) per central-directory record before anyone can count them: an
# archive is refused from its end record when it claims more members than this (a torch.save of 10^5
# tensors with Adam state has 3 x 10^5) or a directory far larger than that many records need.
MAX_ZIP_MEMBERS = 1 << 19
_CD_BYTES_PER_MEMBER = 1024  # a record is 46 bytes plus its name, extra field and comment
_CD_SLACK = 1 << 20


def check_zip_directory(f: Any, path: str) -> None:
    """Refuse, from its end record alone, an archive whose central directory would cost more than
    MAX_ZIP_MEMBERS records to list (1M records of one 51 MB directory took 554 MB and 14 s)."""
    try:
        end = zipfile._EndRecData(f)  # type: ignore[attr-defined]
    except ZIP_ERRORS:
        return  # zipfile says what is wrong when it opens the archive
    finally:
        f.seek(0)
    if end is None:
        return
    count, size = end[zipfile._ECD_ENTRIES_TOTAL], end[zipfile._ECD_SIZE]  # type: ignore[attr-defined]
    if count > MAX_ZIP_MEMBERS:
        raise CorruptCheckpointError(path, f"zip archive claims {count:,} members, more than the "
                                           f"{MAX_ZIP_MEMBERS:,} wdist reads")
    if size > _CD_BYTES_PER_MEMBER * count + _CD_SLACK:
        raise CorruptCheckpointError(path, f"zip directory of {size:,} bytes for {count:,} members")


def open_zip(path: str) -> zipfile.ZipFile:
    """A zip archive from a local path or a URL (the latter read through ranged requests), its directory
    bounded first (check_zip_directory)."""
    f = fs.open_binary(path)
    try:
        check_zip_directory(f, path)
    except BaseException:
        f.close()
        raise
    return _OwnedZip(f)


def read_exact(f: io.BufferedIOBase | io.RawIOBase, n: int, path: str, what: str) -> bytes:
    data = f.read(n)
    if data is None or len(data) != n:
        raise CorruptCheckpointError(path, f"file is truncated ({what})")
    return bytes(data)


def _pread_into(src: Any, view: memoryview, pos: int, path: str) -> None:
    got = 0
    while got < len(view):
        n = src.readinto_at(view[got:], pos + got)
        if n <= 0:
            raise CorruptCheckpointError(path, "file is truncated (tensor data)")
        got += n


@dataclass(slots=True)  # no instance dict: one reader per tensor, millions of tensors
class RangeReader:
    """Reads a contiguous C-order tensor stored at a byte offset of a plain file."""

    path: str
    offset: int
    dtype: str
    reuses_buffer = True  # read_raw accepts out=

    def read_raw(self, start: int, count: int, out: np.ndarray | None = None) -> np.ndarray:
        dt = storage_dtype(self.dtype)
        # a reused buffer avoids faulting in fresh pages for every chunk
        nbytes = count * dt.itemsize
        out = out[:nbytes].view(dt) if out is not None and out.nbytes >= nbytes else np.empty(count, dtype=dt)
        with fs.source(self.path) as src:
            _pread_into(src, memoryview(out).cast("B"), self.offset + start * dt.itemsize, self.path)  # type: ignore[arg-type]
        return out


Dims = list[tuple[int, int]]  # (size, stride in elements) per dimension


def simplify_view(shape: tuple[int, ...], stride: tuple[int, ...]) -> Dims:
    """The same element sequence with size-1 dimensions dropped and C-contiguous neighbours merged: a
    contiguous tensor becomes [(numel, 1)] (or [] for one element), a transpose stays two dimensions."""
    dims: Dims = []
    for n, s in zip(shape, stride):
        if n == 1:
            continue
        if dims and dims[-1][1] == n * s:
            dims[-1] = (dims[-1][0] * n, s)
        else:
            dims.append((n, s))
    return dims


def _boxes(dims: Dims, lo: int, hi: int) -> list[tuple[int, Dims]]:
    """Rectangular blocks (storage offset, dims) that cover the C-order element range [lo, hi) in order:
    at most 2 * ndim - 1 of them."""
    inner = [1] * len(dims)
    for d in range(len(dims) - 2, -1, -1):
        inner[d] = inner[d + 1] * dims[d + 1][0]
    out: list[tuple[int, Dims]] = []

    def rec(d: int, lo: int, hi: int, off: int) -> None:
        if lo >= hi:
            return
        if d == len(dims):
            out.append((off, []))
            return
        s, w = dims[d][1], inner[d]
        i0, r0 = divmod(lo, w)
        i1, r1 = divmod(hi, w)
        if i0 == i1:
            rec(d + 1, r0, r1, off + i0 * s)
            return
        if r0:
            rec(d + 1, r0, w, off + i0 * s)
            i0 += 1
        if i1 > i0:
            out.append((off + i0 * s, [(i1 - i0, s), *dims[d + 1:]]))
        if r1:
            rec(d + 1, 0, r1, off + i1 * s)

    rec(0, lo, hi, 0)
    return out


def _plan(dims: Dims, item: int) -> tuple[int, int, int]:
    """How to read a block whose dims are in storage order (largest stride first, all strides > 0): loop
    over dims [0, k) in Python, and over dim k in groups of g indices, reading each group's covering byte
    range with one pread. Picks the k with the least estimated cost (reads x syscall cost + bytes read)
    among those whose covering range fits the scratch budget. Returns (k, g, cover of one group)."""
    m = len(dims)
    budget = max(1, _SCRATCH_BYTES // item)
    best: tuple[int, int, int, int] | None = None  # cost, k, g, cover
    iters = 1
    for k in range(m + 1):
        if k == m:
            cost = iters * (_SYSCALL_BYTES + item)
            if best is None or cost < best[0]:
                best = (cost, m, 1, 1)
            break
        n, s = dims[k]
        inner_cover = 1 + sum((nn - 1) * ss for nn, ss in dims[k + 1:])
        if inner_cover <= budget:
            g = min(n, (budget - inner_cover) // s + 1)
            groups = -(-n // g)
            cover = (g - 1) * s + inner_cover
            cost = iters * groups * (_SYSCALL_BYTES + cover * item)
            if best is None or cost < best[0]:
                best = (cost, k, g, cover)
        iters *= n
    assert best is not None
    return best[1], best[2], best[3]


def _read_box(fd: Any, path: str, base: int, dt: np.dtype, off: int, box: Dims, dst: np.ndarray) -> None:
    """Fill dst (C-contiguous, shape of box) with the elements of box at storage element offset off."""
    if any(s == 0 for _, s in box):  # a repeated element (expand, broadcast) is read once
        sub = [(n, s) for n, s in box if s != 0]
        tmp = np.empty([n for n, _ in sub], dtype=dt)
        _read_box(fd, path, base, dt, off, sub, tmp)
        dst[...] = tmp.reshape([n if s else 1 for n, s in box])
        return
    item = dt.itemsize
    order = sorted(range(len(box)), key=lambda i: -box[i][1])
    sd = [box[i] for i in order]
    dstp = dst.transpose(order)
    k, g, cover = _plan(sd, item)
    scratch = np.empty(cover, dtype=dt)
    raw = memoryview(scratch).cast("B")  # type: ignore[arg-type]
    if k == len(sd):  # isolated elements: no merging pays off
        for idx in np.ndindex(*[n for n, _ in sd]):
            _pread_into(fd, raw, base + (off + sum(i * s for i, (_, s) in zip(idx, sd))) * item, path)
            dstp[idx] = scratch[0]
        return
    n_k, s_k = sd[k]
    inner = sd[k + 1:]
    inner_cover = 1 + sum((n - 1) * s for n, s in inner)
    for idx in np.ndindex(*[n for n, _ in sd[:k]]):
        o = off + sum(i * s for i, (_, s) in zip(idx, sd))
        for g0 in range(0, n_k, g):
            g1 = min(n_k, g0 + g)
            need = (g1 - g0 - 1) * s_k + inner_cover
            _pread_into(fd, raw[: need * item], base + (o + g0 * s_k) * item, path)
            view = np.lib.stride_tricks.as_strided(
                scratch, [g1 - g0] + [n for n, _ in inner], [s_k * item] + [s * item for _, s in inner])
            dstp[(*idx, slice(g0, g1))] = view


@dataclass(slots=True)
class StridedReader:
    """A tensor that is a strided view of a stored buffer (a saved transpose, an expand, overlapping
    slices). Each read_raw(start, count) reads only the byte ranges that cover the requested elements,
    merged into runs where gaps are small, and gathers them: memory is bounded by the chunk, a stride-0
    dimension reads its element once, and nothing is cached between calls (so it is thread-safe). The
    loader checks that every element lies inside its storage."""

    path: str
    offset: int  # byte offset of the view's first element (storage offset applied)
    dtype: str
    shape: tuple[int, ...]
    stride: tuple[int, ...]  # in elements, all >= 0
    reuses_buffer = True  # read_raw accepts out=

    def read_raw(self, start: int, count: int, out: np.ndarray | None = None) -> np.ndarray:
        dt = storage_dtype(self.dtype)
        nbytes = count * dt.itemsize
        res = out[:nbytes].view(dt) if out is not None and out.nbytes >= nbytes else np.empty(count, dtype=dt)
        if count <= 0:
            return res
        dims = simplify_view(self.shape, self.stride)
        with fs.source(self.path) as src:
            pos = 0
            for off, box in _boxes(dims, start, start + count):
                shape = [n for n, _ in box]
                n = int(np.prod(shape, dtype=np.int64)) if shape else 1
                _read_box(src, self.path, self.offset, dt, off, box, res[pos:pos + n].reshape(shape))
                pos += n
        return res


class Window(fs.PositionedRaw):
    """A read-only, seekable file object over bytes [offset, offset+size) of a file (a stored zip member)."""

    def __init__(self, path: str, offset: int, size: int) -> None:
        super().__init__()
        self._f = fs.open_binary(path)  # closed by close()
        self._offset, self._size, self._pos = offset, size, 0

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        n = max(0, min(len(b), self._size - self._pos))
        if n == 0:
            return 0
        self._f.seek(self._offset + self._pos)
        data = self._f.read(n)
        b[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        self._f.close()
        super().close()


def zip_member_offset(path: str, header_offset: int, compressed_size: int, name: bytes | None = None,
                      decoded: str | None = None) -> int:
    """Byte offset of a stored zip member's data, from its local header; checked against the file size.
    With `name` (the central directory's raw name), the local header must carry the same bytes (a reader
    that walks local headers would see another file). With `decoded` too (ZipInfo.orig_filename), the
    local name decoded by the local header's own UTF-8 flag must equal it, as Python's zipfile (so
    numpy.load and Keras) insists: the same bytes flagged differently are another name for them."""
    size = file_size(path)
    if header_offset < 0 or compressed_size < 0 or header_offset + 30 > size:
        raise CorruptCheckpointError(path, "zip member points outside the file")
    hdr = fs.pread(path, header_offset, 30 + (len(name) if name is not None else 0))  # one read for both
    if len(hdr) < 30:
        raise CorruptCheckpointError(path, "file is truncated (zip local header)")
    if hdr[:4] != b"PK\x03\x04":
        raise CorruptCheckpointError(path, "zip local header is damaged")
    name_len = int.from_bytes(hdr[26:28], "little")
    extra_len = int.from_bytes(hdr[28:30], "little")
    start = header_offset + 30 + name_len + extra_len
    if name is not None and hdr[30:30 + name_len] != name:
        raise CorruptCheckpointError(path, f"zip member {name[:80]!r}: its local header names another file")
    if name is not None and decoded is not None:
        raw = hdr[30:30 + name_len]
        flags = int.from_bytes(hdr[6:8], "little")
        try:
            local = raw.decode("utf-8") if flags & 0x800 else raw.decode("cp437")
        except UnicodeDecodeError:
            local = None
        if local != decoded:
            raise CorruptCheckpointError(path, f"zip member {decoded[:80]!r}: its local header names another "
                                               "file (or flags its name's encoding otherwise)")
    if start + compressed_size > size:
        raise CorruptCheckpointError(path, "zip member points outside the file (truncated archive?)")
    return start


def crc32_of_range(path: str, offset: int, size: int) -> int:
    """zlib.crc32 of bytes [offset, offset+size) of a file, read in blocks."""
    crc, left = 0, size
    with fs.open_binary(path) as f:
        f.seek(offset)
        while left > 0:
            data = f.read(min(_BLOCK, left))
            if not data:
                raise CorruptCheckpointError(path, "file is truncated (zip member)")
            crc = zlib.crc32(data, crc)
            left -= len(data)
    return crc


def raw_name(info: zipfile.ZipInfo) -> bytes:
    """The member name's bytes as stored (zipfile decodes them: UTF-8 when flagged, else cp437)."""
    return info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437", errors="replace")


def zip_members(zf: zipfile.ZipFile, path: str, fold_case: bool = True) -> dict[str, zipfile.ZipInfo]:
    """The archive's members by name, refusing any archive on which two readers could disagree about which
    bytes a name means: duplicate names (Python's zipfile keeps the last, torch's miniz finds either),
    names equal but for ASCII case (miniz looks names up case-insensitively), names with a NUL (zipfile
    cuts them there, miniz does not), data before the archive (zipfile shifts every offset, miniz does
    not) and a central directory whose entry count disagrees with its size. `fold_case=False` for archives
    only Python's zipfile reads (.npz: np.savez(W=..., w=...) is a legitimate pair of names)."""
    infos = zf.infolist()
    try:
        end = zipfile._EndRecData(zf.fp)  # type: ignore[attr-defined]
    except ZIP_ERRORS as e:
        raise CorruptCheckpointError(path, f"zip end record cannot be read ({e})") from None
    if end is None:
        raise CorruptCheckpointError(path, "zip end record is missing")
    if end[zipfile._ECD_ENTRIES_TOTAL] != len(infos):  # type: ignore[attr-defined]
        raise CorruptCheckpointError(path, f"zip directory claims {end[zipfile._ECD_ENTRIES_TOTAL]} members "  # type: ignore[attr-defined]
                                     f"but holds {len(infos)}")
    if zf.start_dir != end[zipfile._ECD_OFFSET]:  # type: ignore[attr-defined]
        raise CorruptCheckpointError(path, "zip archive has data before its first member; readers disagree "
                                     "on where its members are")
    members: dict[str, zipfile.ZipInfo] = {}
    folded: dict[bytes, str] = {}
    for info in infos:
        name = info.filename
        if "\x00" in info.orig_filename:
            raise CorruptCheckpointError(path, f"zip member name {info.orig_filename[:80]!r} holds a NUL byte")
        key = raw_name(info).lower() if fold_case else raw_name(info)
        if name in members or key in folded:
            raise CorruptCheckpointError(path, f"zip archive holds two members named {name[:80]!r}; readers "
                                         "would disagree on which one is the data")
        members[name] = info
        folded[key] = name
    return members


def read_zip_member(path: str, info: zipfile.ZipInfo, limit: int, what: str) -> bytes:
    """A (small) member's bytes, decompressed in a stream that stops at its claimed size: never more than
    min(claimed size, limit) + 1 bytes are produced, and compressed input comes only from the member's own
    byte range inside the file. Checks the CRC."""
    if info.flag_bits & 0x1:
        raise UnsupportedFormatError(path, f"{what} is encrypted")
    claimed = info.file_size
    if claimed > limit:
        raise CorruptCheckpointError(path, f"{what} claims {claimed:,} bytes, over the limit of {limit:,}")
    method = info.compress_type
    if method == zipfile.ZIP_STORED and info.compress_size != claimed:
        raise CorruptCheckpointError(path, f"{what} is stored but its sizes disagree")
    if method not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2):
        raise UnsupportedFormatError(path, f"{what} uses zip compression method {method}; torch.save writes "
                                     "stored members (stored, deflate and bzip2 are read)")
    start = zip_member_offset(path, info.header_offset, info.compress_size, raw_name(info))
    cap = claimed + 1  # one byte more than claimed is enough to see a lie
    got = bytearray()
    left = info.compress_size
    with fs.open_binary(path) as f:
        f.seek(start)

        def more() -> bytes:
            nonlocal left
            data = f.read(min(_BLOCK, left)) if left > 0 else b""
            left -= len(data)
            return data

        try:
            if method == zipfile.ZIP_STORED:
                while len(got) < claimed and (data := more()):
                    got += data
            elif method == zipfile.ZIP_DEFLATED:
                z = zlib.decompressobj(-15)
                pending = b""
                while len(got) < cap and not z.eof:
                    if not pending and not (pending := more()):
                        break
                    got += z.decompress(pending, cap - len(got))
                    pending = z.unconsumed_tail
            else:
                b = bz2.BZ2Decompressor()
                while len(got) < cap and not b.eof:
                    data = b""
                    if b.needs_input and not (data := more()):
                        break
                    got += b.decompress(data, cap - len(got))
        except (zlib.error, OSError, EOFError, ValueError) as e:
            raise CorruptCheckpointError(path, f"{what} cannot be decompressed ({e})") from None
    if len(got) > claimed:
        raise CorruptCheckpointError(path, f"{what} expands past its claimed size of {claimed:,} bytes")
    if len(got) < claimed:
        raise CorruptCheckpointError(path, f"{what} is truncated ({len(got):,} of {claimed:,} bytes)")
    if zlib.crc32(got) != info.CRC:
        raise CorruptCheckpointError(path, f"{what} fails its CRC check")
    return bytes(got)


# Views can make a tensor's logical size exceed the bytes stored for it (expand, overlapping slices). Real
# checkpoints stay near one logical byte per stored byte: tied weights are listed once, and a saved
# transpose or slice reads no more than its storage. A fixed allowance of 2 GiB lets through small files
# with legitimate broadcast views (torch.ones(1, 1).expand(25000, 10000) is 1 GB of logical float32 from
# a 1.6 KB file, a few seconds to analyse); the multiple of the file size covers checkpoints that save a
# tensor together with a few views of it. 4,000 overlapping views of one 4 MB storage (16 GB of work) are
# far above it.
VIEW_ALLOWANCE_BYTES = 2 << 30
VIEW_EXPANSION = 4
MAX_DIM = 1 << 62  # sizes, strides and offsets: below this, so storage offsets fit numpy's int64
MAX_NDIM = 64  # torch's own kernels handle at most 25 dimensions; real checkpoints use up to ~6


def shared_span(spans: list[tuple[str, int, int, str]]) -> str | None:
    """Why stored byte ranges (file, offset, length, what) overlap, or None. A writer stores each tensor or
    chunk once, in its own bytes (DCP items, TensorFlow bundle entries, ONNX external data); ranges that
    overlap would let a small file describe any amount of data (2,000 chunks of one 4 MB item: 8 GB read
    from a 4 MB folder). Empty ranges take no bytes and are passed over."""
    spans = sorted(sp for sp in spans if sp[2] > 0)
    for (f0, o0, n0, w0), (f1, o1, _n1, w1) in zip(spans, spans[1:]):
        if f0 == f1 and o1 < o0 + n0:
            return f"{w0} and {w1} are stored in overlapping bytes of {fs.basename(f0)}"
    return None


def view_work_limit(stored_bytes: int) -> int:
    """Most logical tensor bytes a checkpoint of stored_bytes may describe (see VIEW_ALLOWANCE_BYTES)."""
    return VIEW_ALLOWANCE_BYTES + VIEW_EXPANSION * stored_bytes


# A strided view is read chunk by chunk without caching, so a chunk of a transposed matrix reads (ranges
# of) every storage row it touches: reading the whole view costs up to (its bytes)^2 / (chunk bytes) - 256
# GiB for a 1 GiB transposed matrix, 64x its bytes for a 256 MiB one. Sparse views (a few elements per
# storage row, many views of one storage) could otherwise ask for that much work from small logical
# sizes. The limit lets every transposed tensor up to ~1 GiB through and keeps a hostile file's read work
# within a fixed multiple of its size.
READ_ALLOWANCE_BYTES = 16 << 30
READ_EXPANSION = 256


def read_work_limit(stored_bytes: int) -> int:
    return READ_ALLOWANCE_BYTES + READ_EXPANSION * stored_bytes


def strided_read_cost(shape: tuple[int, ...], stride: tuple[int, ...], item: int, chunk: int) -> int:
    """Estimated bytes StridedReader reads (a pread counted as _SYSCALL_BYTES) to serve the whole view in
    chunks of `chunk` elements: the plan of the first chunk, times the number of chunks."""
    numel = math.prod(shape)
    if numel == 0:
        return 0
    dims = simplify_view(shape, stride)
    first = 0
    for _, box in _boxes(dims, 0, min(chunk, numel)):
        sub = sorted(((n, s) for n, s in box if s != 0), key=lambda d: -d[1])
        k, g, cover = _plan(sub, item)
        if k == len(sub):
            reads, nbytes = int(np.prod([n for n, _ in sub], dtype=object)) if sub else 1, item
        else:
            reads = int(np.prod([n for n, _ in sub[:k]], dtype=object)) * -(-sub[k][0] // g)
            nbytes = cover * item
        first += reads * (_SYSCALL_BYTES + nbytes)
    return first * -(-numel // chunk)


def range_boxes(shape: tuple[int, ...], a: int, b: int) -> list[tuple[Any, ...]]:
    """The flat C-order range [a, b) as at most 2*ndim-1 hyperslabs (index tuples), in order."""
    if a >= b:
        return []
    if not shape:
        return [()]
    if len(shape) == 1:
        return [(slice(a, b),)]
    row = 1
    for d in shape[1:]:
        row *= d
    if row == 0:
        return []
    i0, i1 = a // row, (b - 1) // row
    if i0 == i1:
        return [(i0,) + s for s in range_boxes(shape[1:], a - i0 * row, b - i0 * row)]
    out: list[tuple[Any, ...]] = []
    first = i0
    if a % row:
        out += [(i0,) + s for s in range_boxes(shape[1:], a % row, row)]
        first = i0 + 1
    stop = i1 if b % row else i1 + 1
    if first < stop:
        out.append((slice(first, stop),) + tuple(slice(None) for _ in shape[1:]))
    if b % row:
        out += [(i1,) + s for s in range_boxes(shape[1:], 0, b % row)]
    return out
