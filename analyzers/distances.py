"""Distribution distances between two summaries: exact from the kept values when both tensors are small
(at most SAMPLE_MAX finite values each), else from the 65,536-bin histograms (shared bins by construction).

Histogram path bounds (non-bf16/fp8 data; values stand at their bin's midpoint, within 2^-8 relative):
|W1_hist - W1| <= 2^-8 (mean|a| + mean|b|), and |KS_hist - KS| <= the largest probability either
distribution puts in one bin (KS is read at bin edges only). bf16/fp8 data: both exact."""

from __future__ import annotations

import numpy as np

from wdist.analyzers import bins
from wdist.analyzers.summary import Summary


def _cdfs(ha: np.ndarray, hb: np.ndarray, exact: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    order = bins.signed_order()
    a = ha[order].astype(np.float64)
    b = hb[order].astype(np.float64)
    na, nb = a.sum(), b.sum()
    if na == 0 or nb == 0:
        return None
    keep = (a + b) > 0
    v = bins.values(exact)[order][keep]
    return np.cumsum(a[keep]) / na, np.cumsum(b[keep]) / nb, v


def _exact_cdfs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both empirical CDFs (right-continuous) at every distinct value of the pooled samples."""
    sa = np.sort(a.astype(np.float64))
    sb = np.sort(b.astype(np.float64))
    v = np.unique(np.concatenate([sa, sb]))
    fa = np.searchsorted(sa, v, side="right") / sa.size
    fb = np.searchsorted(sb, v, side="right") / sb.size
    return fa, fb, v


def _samples(sa: Summary | None, sb: Summary | None) -> tuple[np.ndarray, np.ndarray] | None:
    if sa is None or sb is None or sa.sample is None or sb.sample is None or not sa.sample.size or not sb.sample.size:
        return None
    return sa.sample, sb.sample


def ks(ha: np.ndarray, hb: np.ndarray, exact: bool, sa: Summary | None = None,
       sb: Summary | None = None) -> float | None:
    """Kolmogorov-Smirnov statistic max |F_a - F_b| (scipy.stats.ks_2samp's statistic)."""
    smp = _samples(sa, sb)
    if smp is not None:
        fa, fb, _ = _exact_cdfs(*smp)
        return float(np.max(np.abs(fa - fb)))
    c = _cdfs(ha, hb, exact)
    return None if c is None else float(np.max(np.abs(c[0] - c[1])))


def wasserstein(ha: np.ndarray, hb: np.ndarray, exact: bool, sa: Summary | None = None,
                sb: Summary | None = None) -> float | None:
    """1-Wasserstein distance: integral of |F_a - F_b| (scipy.stats.wasserstein_distance)."""
    smp = _samples(sa, sb)
    if smp is not None:
        fa, fb, v = _exact_cdfs(*smp)
        return float(np.sum(np.abs(fa - fb)[:-1] * np.diff(v)))
    c = _cdfs(ha, hb, exact)
    if c is None:
        return None
    fa, fb, v = c
    return float(np.sum(np.abs(fa - fb)[:-1] * np.diff(v)))
