"""Distribution distances between two summaries' 65,536-bin histograms (shared bins by construction)."""

from __future__ import annotations

import numpy as np

from wdist.analyzers import bins


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


def ks(ha: np.ndarray, hb: np.ndarray, exact: bool) -> float | None:
    """Kolmogorov-Smirnov statistic: max |F_a - F_b| over bin edges (exact for bf16/fp8 data)."""
    c = _cdfs(ha, hb, exact)
    return None if c is None else float(np.max(np.abs(c[0] - c[1])))


def wasserstein(ha: np.ndarray, hb: np.ndarray, exact: bool) -> float | None:
    """1-Wasserstein distance: integral of |F_a - F_b|, values placed at their bin's value."""
    c = _cdfs(ha, hb, exact)
    if c is None:
        return None
    fa, fb, v = c
    return float(np.sum(np.abs(fa - fb)[:-1] * np.diff(v)))
