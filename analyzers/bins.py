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


def values(exact: bool) -> np.ndarray:
    """Signed value of each bin: exact lower edge for exact bins, else the midpoint."""
    lo, _, rep, _ = tables()
    mag = lo if exact else rep
    sign = np.where(np.arange(NBINS) >= 0x8000, -1.0, 1.0)
    return mag * sign
