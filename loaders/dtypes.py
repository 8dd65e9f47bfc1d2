"""Stored dtypes and their exact conversion to float32, without torch (bf16 and fp8 by bit patterns)."""

from __future__ import annotations

import functools

import numpy as np

# numpy type used to hold each stored dtype's raw values (bf16/fp8 as unsigned bit patterns).
STORAGE: dict[str, np.dtype] = {
    "float64": np.dtype("<f8"), "float32": np.dtype("<f4"), "float16": np.dtype("<f2"),
    "bfloat16": np.dtype("<u2"), "float8_e4m3fn": np.dtype("u1"), "float8_e5m2": np.dtype("u1"),
    "float8_e4m3fnuz": np.dtype("u1"), "float8_e5m2fnuz": np.dtype("u1"), "float8_e8m0fnu": np.dtype("u1"),
    "int64": np.dtype("<i8"), "int32": np.dtype("<i4"), "int16": np.dtype("<i2"), "int8": np.dtype("i1"),
    "uint64": np.dtype("<u8"), "uint32": np.dtype("<u4"), "uint16": np.dtype("<u2"), "uint8": np.dtype("u1"),
    "bool": np.dtype("?"), "complex64": np.dtype("<c8"), "complex128": np.dtype("<c16"),
}

# Formats whose every value is exactly a bfloat16 value: their 16-bit histogram bins hold one value each.
BF16_EXACT = frozenset({"bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz",
                        "float8_e8m0fnu"})


def storage_dtype(dtype: str) -> np.dtype:
    try:
        return STORAGE[dtype]
    except KeyError:
        raise ValueError(f"unsupported dtype {dtype}") from None


@functools.cache
def fp8_table(dtype: str) -> np.ndarray:
    """float32 value of each of the 256 bit patterns of an fp8 format (OCP / MLIR definitions)."""
    if dtype == "float8_e8m0fnu":  # OCP MX scale: exponent only, 2^(code - 127), 0xFF is NaN
        t = np.array([2.0 ** (c - 127) for c in range(255)] + [float("nan")], dtype=np.float64)
        return t.astype(np.float32)
    exp_bits, bias, fnuz = {
        "float8_e4m3fn": (4, 7, False), "float8_e5m2": (5, 15, False),
        "float8_e4m3fnuz": (4, 8, True), "float8_e5m2fnuz": (5, 16, True),
    }[dtype]
    man_bits = 7 - exp_bits
    out = np.empty(256, dtype=np.float64)
    for code in range(256):
        sign = -1.0 if code & 0x80 else 1.0
        e = (code >> man_bits) & ((1 << exp_bits) - 1)
        m = code & ((1 << man_bits) - 1)
        if e == 0:
            v = sign * (m / (1 << man_bits)) * 2.0 ** (1 - bias)
        else:
            v = sign * (1 + m / (1 << man_bits)) * 2.0 ** (e - bias)
        if fnuz:
            if code == 0x80:
                v = float("nan")
        elif dtype == "float8_e4m3fn":
            if e == 15 and m == 7:
                v = float("nan")
        elif e == 31:  # e5m2 is IEEE-like
            v = sign * float("inf") if m == 0 else float("nan")
        out[code] = v
    return out.astype(np.float32)


_F32_MAX = float(np.finfo(np.float32).max)
_F32_TINY = float(np.finfo(np.float32).smallest_subnormal)


def _float64_to_float32(raw: np.ndarray) -> np.ndarray:
    """float64 rounded to float32, saturating instead of leaving float32's range: a finite value beyond
    ±3.4e38 stays finite (±float32 max) and a nonzero one below ±1.4e-45 stays nonzero (± the smallest
    subnormal), so the counts of finite, infinite and zero values are the file's own."""
    with np.errstate(over="ignore"):
        y = raw.astype(np.float32)
    big = np.isinf(y) & np.isfinite(raw)
    if big.any():
        y[big] = np.copysign(_F32_MAX, raw[big])
    tiny = (y == 0) & (raw != 0)
    if tiny.any():
        y[tiny] = np.copysign(_F32_TINY, raw[tiny])
    return y


def to_float32(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Exact float32 view/copy of raw stored values (float64 is rounded to float32, saturating at float32's
    limits: see _float64_to_float32)."""
    if dtype == "float32":
        return raw if raw.dtype == np.float32 else raw.view(np.float32)
    if dtype == "bfloat16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    if dtype == "float16":
        return raw.astype(np.float32)
    if dtype == "float64":
        return _float64_to_float32(raw)
    if dtype.startswith("float8"):
        return fp8_table(dtype)[raw]
    return raw.astype(np.float32)
