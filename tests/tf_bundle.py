"""A minimal TensorFlow tensor-bundle writer (SSTable index + one data shard), for crafted-file tests that a
real TF cannot write (missing CRCs, repeated blocks, symlinked shards). Real files written by TensorFlow are
in tests/data/formats/tf."""

from __future__ import annotations

import struct

from corpus import varint

from wdist.loaders.fmt_tf import TABLE_MAGIC, crc32c, mask


def field(fn: int, wt: int, v: int | bytes) -> bytes:
    if wt == 0:
        assert isinstance(v, int)
        return varint(fn << 3) + varint(v)
    if wt == 5:
        assert isinstance(v, int)
        return varint(fn << 3 | 5) + struct.pack("<I", v)
    assert isinstance(v, bytes)
    return varint(fn << 3 | 2) + varint(len(v)) + v


def header(num_shards: int = 1) -> bytes:
    return field(1, 0, num_shards) + field(2, 0, 0)


def entry(dtype: int, shape: list[int], offset: int, size: int, crc: int | None, shard: int = 0) -> bytes:
    """BundleEntryProto: dtype (1 = float32), shape, shard id, offset, size and (masked) crc32c."""
    shp = b"".join(field(2, 2, field(1, 0, d)) for d in shape)
    out = field(1, 0, dtype) + field(2, 2, shp) + field(3, 0, shard) + field(4, 0, offset) + field(5, 0, size)
    return out + (field(6, 5, crc) if crc is not None else b"")


def _block(kvs: list[tuple[bytes, bytes]]) -> bytes:
    body = b"".join(varint(0) + varint(len(k)) + varint(len(v)) + k + v for k, v in kvs)
    return body + struct.pack("<I", 0) + struct.pack("<I", 1)


def _framed(b: bytes) -> bytes:
    return b + b"\x00" + struct.pack("<I", mask(crc32c(b + b"\x00")))


def _handle(off: int, size: int) -> bytes:
    return varint(off) + varint(size)


def table(kvs: list[tuple[bytes, bytes]], index_repeats: int = 1) -> bytes:
    """An SSTable of one data block holding `kvs` (sorted), whose index names that block `index_repeats`
    times (more than once only in hostile files)."""
    data = _block(kvs)
    out = _framed(data)
    idx = _block([(b"\xff" * 8 + str(i).encode(), _handle(0, len(data))) for i in range(index_repeats)])
    io_ = len(out)
    out += _framed(idx)
    meta = _block([])
    mo = len(out)
    out += _framed(meta)
    foot = (_handle(mo, len(meta)) + _handle(io_, len(idx))).ljust(40, b"\x00") + struct.pack("<Q", TABLE_MAGIC)
    return out + foot


def tensor_crc(data: bytes) -> int:
    return mask(crc32c(data))
