"""Display histograms derived from the 65,536-bin summary histogram (no second pass over the data)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from wdist.analyzers import bins


@dataclass
class Histogram:
    """Counts of w on `edges` (len(counts)+1 edges); values beyond the range go to underflow/overflow.
    For log histograms edges are log10|w|, zeros are counted apart and underflow holds tiny nonzero |w|."""

    edges: list[float]
    counts: list[int]
    underflow: int
    overflow: int
    zeros: int = 0
    log: bool = False


def _occupied(hist: np.ndarray, exact: bool) -> tuple[np.ndarray, np.ndarray]:
    """(value, count) of the occupied finite bins of a dense or packed (engine.pack) histogram."""
    nz, cnt = bins.occupied(hist)
    _, _, _, finite = bins.tables()
    keep = finite[nz]
    if not keep.all():
        nz, cnt = nz[keep], cnt[keep]
    return bins.values(exact)[nz], cnt


def symmetric_range(*abs_p999: float | None, max_abs: float | None = None) -> float:
    """Half-width shared by histograms drawn together: the largest 99.9th percentile of |w| among them,
    so one extreme weight does not squash everything else into a single bar."""
    r = max((v for v in abs_p999 if v), default=0.0)
    if r <= 0:
        r = max_abs or 1.0
    return float(r)


def _binned(x: np.ndarray, cnt: np.ndarray, edges: np.ndarray) -> tuple[list[int], int, int]:
    """Counts of x (weighted by cnt) on `edges` as np.histogram bins them (the last bin includes its right
    edge), with the weight below the first edge and above the last: one searchsorted and one bincount
    (this runs for every tensor, and most are small)."""
    n = edges.size - 1
    pos = np.searchsorted(edges, x, side="right")  # 0: below; n + 1: at or above the last edge
    b = np.bincount(pos, weights=cnt, minlength=n + 2).astype(np.int64)  # float64 sums: exact below 2^53
    at_top = int(cnt[x == edges[-1]].sum())
    b[n] += at_top
    return b[1:n + 1].tolist(), int(b[0]), int(b[n + 1]) - at_top


def linear(hist: np.ndarray, exact: bool, half_width: float, nbins: int = 64) -> Histogram:
    edges = np.linspace(-half_width, half_width, nbins + 1)
    vals, cnt = _occupied(hist, exact)
    counts, under, over = _binned(vals, cnt, edges)
    return Histogram(edges.tolist(), counts, under, over)


def log_abs(hist: np.ndarray, exact: bool, per_decade: int = 5, decades: int = 10,
            top: float | None = None) -> Histogram:
    """Histogram of log10|w| for nonzero w, `per_decade` bins per decade, ending at max|w| (or `top`)."""
    vals, cnt = _occupied(hist, exact)
    mag = np.abs(vals)
    zeros = int(cnt[mag == 0].sum())
    keep = mag > 0
    mag, cnt = mag[keep], cnt[keep]
    if mag.size == 0:
        return Histogram([0.0, 1.0], [0], 0, 0, zeros, log=True)
    hi = math.ceil(math.log10(top if top else float(mag.max())) * per_decade + 1e-9) / per_decade
    lo_data = math.floor(math.log10(float(mag.min())) * per_decade) / per_decade
    lo = max(lo_data, hi - decades)
    n = max(1, round((hi - lo) * per_decade))
    edges = lo + np.arange(n + 1) / per_decade
    counts, under, over = _binned(np.log10(mag), cnt, edges)
    return Histogram(edges.tolist(), counts, under, over, zeros, log=True)
