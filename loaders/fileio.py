"""Bounded, read-only byte access: every read is checked against the file's real size first."""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np

from wdist.loaders.dtypes import storage_dtype
from wdist.loaders.errors import CorruptCheckpointError

# what Python's zipfile raises on damaged archives, beyond BadZipFile
ZIP_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, OSError, ValueError, EOFError, KeyError,
    UnicodeDecodeError, OverflowError, RuntimeError, zlib.error, struct.error, IndexError,
)


def file_size(path: str) -> int:
    return os.stat(path).st_size


def read_exact(f: io.BufferedIOBase | io.RawIOBase, n: int, path: str, what: str) -> bytes:
    data = f.read(n)
    if data is None or len(data) != n:
        raise CorruptCheckpointError(path, f"file is truncated ({what})")
    return bytes(data)


@dataclass
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
        fd = os.open(self.path, os.O_RDONLY)
        try:
            view = memoryview(out).cast("B")  # type: ignore[arg-type]
            pos, got = self.offset + start * dt.itemsize, 0
            while got < nbytes:
                n = os.preadv(fd, [view[got:]], pos + got)
                if n <= 0:
                    raise CorruptCheckpointError(self.path, "file is truncated (tensor data)")
                got += n
        finally:
            os.close(fd)
        return out


@dataclass
class StridedReader:
    """A tensor that is a strided view of a stored buffer (e.g. a saved transpose): materialised once
    per process, since its elements are not contiguous in the file."""

    base: RangeReader
    span: int  # elements of the underlying buffer needed, from base.offset
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    def read_raw(self, start: int, count: int) -> np.ndarray:
        key = (self.base.path, self.base.offset, self.shape, self.stride)
        cached = _STRIDED_CACHE.get(key)
        if cached is None:
            buf = self.base.read_raw(0, self.span)
            it = buf.itemsize
            cached = np.ascontiguousarray(
                np.lib.stride_tricks.as_strided(buf, self.shape, tuple(s * it for s in self.stride))
            ).ravel()
            _STRIDED_CACHE.clear()
            _STRIDED_CACHE[key] = cached
        return cached[start:start + count]


_STRIDED_CACHE: dict[tuple, np.ndarray] = {}
os.register_at_fork(after_in_child=_STRIDED_CACHE.clear)


class Window(io.RawIOBase):
    """A read-only, seekable file object over bytes [offset, offset+size) of a file (a stored zip member)."""

    def __init__(self, path: str, offset: int, size: int) -> None:
        super().__init__()
        self._f = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._offset, self._size, self._pos = offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

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


def zip_member_offset(path: str, header_offset: int, compressed_size: int) -> int:
    """Byte offset of a stored zip member's data, from its local header; checked against the file size."""
    size = file_size(path)
    if header_offset < 0 or header_offset + 30 > size:
        raise CorruptCheckpointError(path, "zip member points outside the file")
    with open(path, "rb") as f:
        f.seek(header_offset)
        hdr = read_exact(f, 30, path, "zip local header")
    if hdr[:4] != b"PK\x03\x04":
        raise CorruptCheckpointError(path, "zip local header is damaged")
    name_len = int.from_bytes(hdr[26:28], "little")
    extra_len = int.from_bytes(hdr[28:30], "little")
    start = header_offset + 30 + name_len + extra_len
    if start + compressed_size > size:
        raise CorruptCheckpointError(path, "zip member points outside the file (truncated archive?)")
    return start
