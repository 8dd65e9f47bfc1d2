"""NumPy's own formats: `.npy` (one array) and `.npz` (a zip of `.npy` members, stored or deflated).

Read without `allow_pickle`: the `.npy` header is a Python literal dict parsed by `ast.literal_eval` (no
code), and only plain numeric dtypes are accepted, so an object array (a pickle inside) is refused."""

from __future__ import annotations

import ast
import math
import os
import threading
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wdist.loaders.errors import CorruptCheckpointError, UnsupportedFormatError
from wdist.loaders.model import Checkpoint, TensorRef, dtype_itemsize, some_names
from wdist.loaders.plugin import FormatPlugin
from wdist.loaders.roles import default_unit_axis, fix_norm_biases, infer_role, split_name

MAGIC = b"\x93NUMPY"
MAX_HEADER = 1 << 16  # numpy itself refuses headers over 10,000 bytes unless told otherwise
MAX_MEMBERS = 1_000_000
MAX_DIM = 1 << 62
# numpy dtype.str (little-endian or byte-order-free) -> wdist dtype
NP_DTYPES = {
    "<f8": "float64", "<f4": "float32", "<f2": "float16", "<i8": "int64", "<i4": "int32", "<i2": "int16",
    "|i1": "int8", "<u8": "uint64", "<u4": "uint32", "<u2": "uint16", "|u1": "uint8", "|b1": "bool",
    "<c8": "complex64", "<c16": "complex128",
}


def sniff(head: bytes, path: str) -> bool:
    if head.startswith(MAGIC):
        return True
    if head.startswith(b"PK\x03\x04") and path.lower().endswith(".npz"):
        return True
    # np.savez members are named NAME.npy: the first local header's file name shows it
    if head.startswith(b"PK\x03\x04") and len(head) >= 30:
        n = int.from_bytes(head[26:28], "little")
        return head[30:30 + n].endswith(b".npy")
    return False


def _parse_header(read: Any, path: str, what: str) -> tuple[tuple[int, ...], str, bool, int]:
    """(shape, wdist dtype, fortran_order, header bytes) of a .npy stream whose read(n) returns bytes."""
    pre = read(10)
    if len(pre) < 10 or not pre.startswith(MAGIC):
        raise CorruptCheckpointError(path, f"{what} is not a .npy array (bad magic)")
    major = pre[6]
    if major == 1:
        hlen, start = int.from_bytes(pre[8:10], "little"), 10
    elif major in (2, 3):
        pre += read(2)
        if len(pre) < 12:
            raise CorruptCheckpointError(path, f"{what} is truncated (.npy header)")
        hlen, start = int.from_bytes(pre[8:12], "little"), 12
    else:
        raise CorruptCheckpointError(path, f"{what}: unsupported .npy version {major}")
    if hlen > MAX_HEADER:
        raise CorruptCheckpointError(path, f"{what}: .npy header of {hlen} bytes is over the {MAX_HEADER}-byte limit")
    raw = read(hlen)
    if len(raw) != hlen:
        raise CorruptCheckpointError(path, f"{what} is truncated (.npy header)")
    try:
        text = raw.decode("utf-8" if major == 3 else "latin1")
        d = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError, UnicodeDecodeError, TypeError):
        raise CorruptCheckpointError(path, f"{what}: .npy header is not a literal dict") from None
    if not isinstance(d, dict) or set(d) != {"descr", "fortran_order", "shape"}:
        raise CorruptCheckpointError(path, f"{what}: .npy header lacks descr/fortran_order/shape")
    descr, fortran, shape = d["descr"], d["fortran_order"], d["shape"]
    if not isinstance(descr, str):
        raise UnsupportedFormatError(path, f"{what}: structured or object arrays are not read (descr {str(descr)[:40]})")
    if descr.startswith("="):
        descr = "<" + descr[1:]
    if descr not in NP_DTYPES:
        why = "big-endian arrays are not read" if descr.startswith(">") else "only plain numeric dtypes are read"
        if descr in ("|O", "<O", "O"):
            why = "object arrays need pickle, which wdist never runs"
        raise UnsupportedFormatError(path, f"{what}: dtype {descr!r}: {why}")
    if not (isinstance(shape, tuple) and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < MAX_DIM
                                             for x in shape)) or not isinstance(fortran, bool):
        raise CorruptCheckpointError(path, f"{what}: bad shape {str(shape)[:60]} or fortran_order")
    return tuple(shape), NP_DTYPES[descr], fortran, start + hlen


@dataclass
class _Inflater:
    """Sequential reader of a deflated zip member: chunks are requested in order, so one decompressor state
    is kept and restarted only when a read goes backwards. Memory: one chunk plus zlib's window. Every byte
    of the member passes through the decompressor from its start, so the CRC-32 is computed on the way and
    checked, with the claimed size, once the stream reaches the member's end (as numpy.load does)."""

    path: str
    offset: int  # of the compressed data in the file
    csize: int
    data_start: int  # of the array inside the uncompressed member
    dtype: str
    usize: int = -1  # claimed uncompressed size of the member (-1: not checked)
    crc: int = 0  # claimed CRC-32
    what: str = "compressed .npz member"
    nbytes: int = -1  # bytes of the array after data_start: reading its last one ends the member's check
    _state: Any = field(default=None, repr=False, compare=False)
    _lock: Any = field(default_factory=threading.Lock, repr=False, compare=False)

    def __getstate__(self) -> dict:  # worker processes start their own decompressor
        d = dict(self.__dict__)
        d["_state"] = None
        d.pop("_lock", None)
        return d

    def __setstate__(self, d: dict) -> None:
        self.__dict__.update(d)
        self._lock = threading.Lock()

    def read_raw(self, start: int, count: int) -> np.ndarray:
        from wdist.loaders.dtypes import storage_dtype

        dt = storage_dtype(self.dtype)
        lo, want = self.data_start + start * dt.itemsize, count * dt.itemsize
        with self._lock:
            st = self._state
            if st is None or st["upos"] > lo:  # a read backwards restarts the stream (workers read in order)
                st = {"z": zlib.decompressobj(-15), "cpos": 0, "tail": b"", "upos": 0, "buf": b"", "out": 0,
                      "crc": 0}
            self._state = None  # a failure below leaves no half-updated state behind
            with open(self.path, "rb") as f:
                while st["upos"] + len(st["buf"]) < lo + want:
                    inp = st["tail"]
                    if not inp:
                        if st["cpos"] >= self.csize:
                            raise CorruptCheckpointError(self.path, "compressed .npz member is truncated")
                        f.seek(self.offset + st["cpos"])
                        inp = f.read(min(1 << 20, self.csize - st["cpos"]))
                        if not inp:
                            raise CorruptCheckpointError(self.path, "compressed .npz member is truncated")
                        st["cpos"] += len(inp)
                    try:  # at most 4 MiB out per step: a deflate bomb cannot inflate beyond what was asked
                        data = st["z"].decompress(inp, 4 << 20)
                    except zlib.error as e:
                        raise CorruptCheckpointError(self.path, f"compressed .npz member is damaged ({e})") from None
                    st["tail"] = st["z"].unconsumed_tail
                    if not data and not st["tail"] and st["cpos"] >= self.csize:
                        raise CorruptCheckpointError(self.path, "compressed .npz member is truncated")
                    st["out"] += len(data)
                    st["crc"] = zlib.crc32(data, st["crc"])
                    buf = st["buf"] + data
                    if st["upos"] + len(buf) <= lo:  # all before the wanted range: drop it
                        st["upos"] += len(buf)
                        buf = b""
                    elif st["upos"] < lo:
                        buf = buf[lo - st["upos"]:]
                        st["upos"] = lo
                    st["buf"] = buf
                # the member is checked once its claimed end, its stream's end or the array's last byte is
                # reached (a claim longer than the stream never reaches the first: it must not skip the check)
                if self.usize >= 0 and (st["out"] >= self.usize or st["z"].eof
                                        or (self.nbytes >= 0 and lo + want >= self.data_start + self.nbytes)):
                    self._finish(f, st)
            a = lo - st["upos"]
            out = st["buf"][a:a + want]
            st["buf"], st["upos"] = st["buf"][a + want:], lo + want
            self._state = st
        return np.frombuffer(out, dtype=dt).copy()

    def _finish(self, f: Any, st: dict) -> None:
        """At the member's claimed end: the stream must end there too, and the CRC-32 must match."""
        if st.get("checked"):
            return
        z = st["z"]
        while not z.eof:  # what is left of the compressed data may only close the stream
            inp = st["tail"]
            if not inp and st["cpos"] < self.csize:
                f.seek(self.offset + st["cpos"])
                inp = f.read(min(1 << 20, self.csize - st["cpos"]))
                st["cpos"] += len(inp)
            if not inp:
                raise CorruptCheckpointError(self.path, f"{self.what} is truncated (its stream does not end)")
            try:
                extra = z.decompress(inp, 1)
            except zlib.error as e:
                raise CorruptCheckpointError(self.path, f"{self.what} is damaged ({e})") from None
            st["tail"] = z.unconsumed_tail
            st["out"] += len(extra)
            st["crc"] = zlib.crc32(extra, st["crc"])
            if st["out"] > self.usize:
                break
        if st["out"] != self.usize:
            how = "more" if st["out"] > self.usize else "fewer"
            raise CorruptCheckpointError(self.path, f"{self.what} holds {how} than the {self.usize:,} bytes its "
                                         "zip entry claims")
        if st["crc"] != self.crc:
            raise CorruptCheckpointError(self.path, f"{self.what} fails its CRC-32 check (damaged data)")
        st["checked"] = True


@dataclass(slots=True)
class _StoredMember:
    """A stored (uncompressed) .npz member read by range through `inner`, whose CRC-32 is checked once, by
    one streaming pass over the member, before its first values are returned: numpy.load refuses a member
    whose CRC does not match, so wdist never reports numbers from one. Listing reads nothing."""

    inner: Any  # RangeReader, or StridedReader for a column-major array
    member_offset: int
    member_size: int
    crc: int
    what: str
    verified: bool = False
    reuses_buffer = True

    @property
    def path(self) -> str:
        return str(self.inner.path)

    @property
    def offset(self) -> int:
        return int(self.inner.offset)

    @property
    def dtype(self) -> str:
        return str(self.inner.dtype)

    def read_raw(self, start: int, count: int, out: np.ndarray | None = None) -> np.ndarray:
        from wdist.loaders.fileio import crc32_of_range

        if not self.verified:
            if crc32_of_range(self.path, self.member_offset, self.member_size) != self.crc:
                raise CorruptCheckpointError(self.path, f"{self.what} fails its CRC-32 check (damaged data)")
            self.verified = True
        return self.inner.read_raw(start, count, out)  # type: ignore[no-any-return]


def _tensor(name: str, shape: tuple[int, ...], dtype: str, fortran: bool, reader: Any, source: str) -> TensorRef:
    from wdist.loaders.fileio import RangeReader, StridedReader

    checked = reader if isinstance(reader, _StoredMember) else None
    if checked is not None:
        reader = checked.inner
    if fortran and len(shape) > 1:
        if not isinstance(reader, RangeReader):
            raise UnsupportedFormatError(reader.path, f"array {name!r} is column-major inside a compressed .npz; "
                                         "re-save it in C order or with np.savez")
        # stored column-major: the C-order element (i0, i1, ...) lies at i0*1 + i1*d0 + i2*d0*d1 + ...
        strides, acc = [], 1
        for d in shape:
            strides.append(acc)
            acc *= d
        reader = StridedReader(reader.path, reader.offset, dtype, shape, tuple(strides))
    if checked is not None:
        checked.inner = reader
        reader = checked
    layer, param = split_name(name)
    role = infer_role(name, layer, param, shape, dtype)
    return TensorRef(name=name, layer=layer, role=role, shape=shape, dtype=dtype, reader=reader,
                     unit_axis=default_unit_axis(role, len(shape), keras=False), source=source)


def _check_size(path: str, shape: tuple[int, ...], dtype: str, available: int, what: str) -> None:
    n = math.prod(shape)
    if n * dtype_itemsize(dtype) > available:
        raise CorruptCheckpointError(path, f"{what}: shape {list(shape)} x {dtype} needs {n * dtype_itemsize(dtype)} "
                                     f"bytes, but only {available} are there")


def load_npy(path: str) -> Checkpoint:
    from wdist.loaders.fileio import RangeReader

    size = os.path.getsize(path)
    with open(path, "rb") as f:
        shape, dtype, fortran, data_start = _parse_header(f.read, path, "file")
    _check_size(path, shape, dtype, size - data_start, "array")
    name = os.path.splitext(os.path.basename(path))[0] or "array"
    t = _tensor(name, shape, dtype, fortran, RangeReader(path, data_start, dtype), os.path.basename(path))
    return Checkpoint(path=path, format="numpy", variant="npy", tensors=[t], sources=[path])


def load_npz(path: str) -> Checkpoint:
    from wdist.loaders.fileio import (
        ZIP_ERRORS,
        RangeReader,
        Window,
        open_zip,
        raw_name,
        zip_member_offset,
        zip_members,
    )

    try:
        zf = open_zip(path)  # its directory bounded before zipfile lists it
        infos = zf.infolist()
    except ZIP_ERRORS as e:
        raise CorruptCheckpointError(path, f"not a readable zip archive ({str(e)[:80]})") from None
    tensors: list[TensorRef] = []
    with zf:
        if len(infos) > MAX_MEMBERS:
            raise CorruptCheckpointError(path, f"archive has {len(infos)} members, over the {MAX_MEMBERS} limit")
        # duplicate names, NUL in names, data before the archive, a miscounted directory: refused, as two
        # readers could disagree on which bytes a name means (names equal but for case are distinct arrays)
        zip_members(zf, path, fold_case=False)
        all_names = {i.filename for i in infos}
        others: list[str] = []
        for info in infos:
            what = f"member {info.filename!r}"
            if info.is_dir():
                continue
            if info.flag_bits & 0x1:
                raise UnsupportedFormatError(path, f"{what} is encrypted")
            # numpy.load names an array after its member, less a ".npy" suffix, and reads any member that
            # starts with the .npy magic as an array, suffix or not
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            offset = zip_member_offset(path, info.header_offset, info.compress_size, raw_name(info), info.orig_filename)
            if not info.filename.endswith(".npy") and not _starts_with_magic(zf, info, path, offset):
                others.append(info.filename)  # not an array: numpy.load would give its bytes
                continue
            # numpy looks a key up as a member first, then as key + ".npy": "w.npy" beside "w" (or "w.npy.npy"
            # beside "w.npy") names an array that numpy.load never gives under that name. (Two members that
            # strip to one name always meet here: equal names are refused by zip_members.)
            if name != info.filename and name in all_names:
                raise CorruptCheckpointError(path, f"members {name!r} and {info.filename!r} are both the array "
                                                   f"{name!r}; readers would disagree on which")
            if info.compress_type == zipfile.ZIP_STORED:
                if info.compress_size != info.file_size:
                    raise CorruptCheckpointError(path, f"{what} is stored but its zip sizes disagree")
                w = Window(path, offset, info.compress_size)
                try:
                    shape, dtype, fortran, start = _parse_header(w.read, path, what)
                finally:
                    w.close()
                _check_size(path, shape, dtype, info.compress_size - start, what)
                reader: Any = _StoredMember(RangeReader(path, offset + start, dtype), offset, info.compress_size,
                                            info.CRC, what)
            elif info.compress_type == zipfile.ZIP_DEFLATED:
                try:
                    with zf.open(info) as m:
                        shape, dtype, fortran, start = _parse_header(m.read, path, what)
                except ZIP_ERRORS as e:
                    raise CorruptCheckpointError(path, f"{what} cannot be read ({str(e)[:60]})") from None
                _check_size(path, shape, dtype, info.file_size - start, what)
                reader = _Inflater(path, offset, info.compress_size, start, dtype, info.file_size, info.CRC, what,
                                   math.prod(shape) * dtype_itemsize(dtype))
            else:
                raise CorruptCheckpointError(path, f"{what} uses an unsupported zip compression")
            tensors.append(_tensor(name, shape, dtype, fortran, reader, os.path.basename(path)))
    if not tensors:
        raise CorruptCheckpointError(path, ".npz archive holds no .npy arrays")
    fix_norm_biases(tensors)
    warnings = []
    if others:
        warnings.append(f"{len(others)} archive member(s) that are not .npy arrays were not read: "
                        + some_names([repr(o) for o in others]))
    return Checkpoint(path=path, format="numpy", variant="npz", tensors=tensors, sources=[path], warnings=warnings)


def _starts_with_magic(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: str, offset: int) -> bool:
    """Whether a member's data begins with the .npy magic (its first bytes only are read or inflated)."""
    from wdist.loaders import fs
    from wdist.loaders.fileio import ZIP_ERRORS

    if info.file_size < len(MAGIC):
        return False
    if info.compress_type == zipfile.ZIP_STORED:
        return fs.pread(path, offset, len(MAGIC)) == MAGIC
    if info.compress_type != zipfile.ZIP_DEFLATED:
        return False
    try:
        with zf.open(info) as m:
            return bool(m.read(len(MAGIC)) == MAGIC)
    except ZIP_ERRORS:
        return False


def load(path: str) -> Checkpoint:
    with open(path, "rb") as f:
        head = f.read(8)
    return load_npy(path) if head.startswith(MAGIC) else load_npz(path)


PLUGIN = FormatPlugin(
    name="numpy", title="NumPy", extensions=(".npy", ".npz"), load=load, sniff=sniff, order=50,
    fallback_by_extension=True,
    variants=".npy arrays and .npz archives (np.savez, np.savez_compressed), without allow_pickle")
