"""Value tables for the 65,536 top-16-bit bins, and the order they take on the number line."""

from __future__ import annotations

import functools

import numpy as np

from wdist.analyzers.summary import NBINS


@functools.cache
def tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(lo, hi, rep, finite) per bin: the magnitude range [lo, hi) the bin covers, the representative used
    for approximate bins (midpoint, so within 2^-8 relative of any member), and whether the bin is finite."""
    idx = np.arange(NBINS, dtype=np.uint32)
    mag = idx & 0x7FFF
    finite = (mag >> 7) != 0xFF
    lo = np.where(finite, (mag << 16).view(np.float32), 0).astype(np.float64)
    top = np.where(finite, ((mag << 16) | 0xFFFF).view(np.float32), 0).astype(np.float64)
    hi = np.where(finite, top, np.inf)
    rep = np.where(finite, (lo + top) / 2, np.nan)
    rep[mag == 0] = 0.0  # +-0 and subnormals below 9.2e-41 count as zero in histogram-derived metrics
    return lo, hi, rep, finite


@functools.cache
def abs_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """lo, hi, rep of the 32,768 magnitude bins (ascending, finite ones first: 0x0000..0x7F7F)."""
    lo, hi, rep, _ = tables()
    return lo[:0x8000], hi[:0x8000], rep[:0x8000]


@functools.cache
def signed_order() -> np.ndarray:
    """Finite bins sorted by value: negative bins from the most negative, then positive ones."""
    neg = np.arange(0xFF7F, 0x8000 - 1, -1)  # -max ... -0
    pos = np.arange(0x0000, 0x7F80)  # +0 ... +max
    return np.concatenate([neg, pos])


def abs_counts(hist: np.ndarray) -> np.ndarray:
    """Fold a signed histogram into magnitude bins."""
    return hist[:0x8000] + hist[0x8000:]


@functools.cache
def values(exact: bool) -> np.ndarray:
    """Signed value of each bin: exact lower edge for exact bins, else the midpoint (read-only: shared)."""
    lo, _, rep, _ = tables()
    mag = lo if exact else rep
    sign = np.where(np.arange(NBINS) >= 0x8000, -1.0, 1.0)
    out = mag * sign
    out.flags.writeable = False
    return out


def occupied(hist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bin indices ascending, their counts > 0) of a signed histogram, dense (65,536 counts) or packed
    (engine.pack's 2-row form: indices, counts)."""
    if hist.ndim == 2:
        keep = hist[1] != 0
        return (hist[0], hist[1]) if keep.all() else (hist[0][keep], hist[1][keep])
    nz = np.flatnonzero(hist)
    return nz, hist[nz]


def sample_bins(sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bin indices ascending, counts) of float32 values: what the summary histogram of exactly these
    values holds (the top 16 bits of each value), without touching 65,536 bins."""
    k = np.ascontiguousarray(sample, dtype=np.float32).reshape(-1).view(np.uint32) >> 16
    k.sort()
    n = k.size
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    # run starts of the sorted keys, as np.unique finds them, in fewer calls (called once per tiny tensor)
    starts = np.empty(n + 1, dtype=bool)
    starts[0] = starts[n] = True
    np.not_equal(k[1:], k[:-1], out=starts[1:n])
    b = np.flatnonzero(starts)
    return k[b[:-1]].astype(np.int64), np.diff(b)


def packed(idx: np.ndarray, cnt: np.ndarray) -> np.ndarray:
    """engine.pack's form of a histogram given sparse: 2 x k (indices, counts) while k < NBINS/4, else dense."""
    if idx.size < NBINS // 4:
        return np.array((idx.astype(np.int64, copy=False), cnt.astype(np.int64, copy=False)))
    dense = np.zeros(NBINS, dtype=np.int64)
    dense[idx] = cnt
    return dense


def merge_sparse(idx: np.ndarray, cnt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum the counts of repeated indices: (unique indices ascending, summed counts), exact in int64."""
    if idx.size == 0:
        return idx.astype(np.int64), cnt.astype(np.int64)
    order = np.argsort(idx, kind="stable")
    i, c = idx[order], cnt[order]
    first = np.flatnonzero(np.concatenate(([True], i[1:] != i[:-1])))
    return i[first].astype(np.int64), np.add.reduceat(c.astype(np.int64), first)


def abs_occupied(hist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(magnitude bins ascending, counts > 0) of a signed histogram, dense or packed: the occupied bins of
    abs_counts(hist), without building it for a packed one."""
    if hist.ndim == 1:
        c = abs_counts(hist)
        nz = np.flatnonzero(c)
        return nz, c[nz]
    idx, cnt = occupied(hist)
    neg = int(np.searchsorted(idx, 0x8000))
    if neg == 0 or neg == idx.size:  # one sign only: already unique and ascending
        return idx & 0x7FFF, cnt
    return merge_sparse(idx & 0x7FFF, cnt)
