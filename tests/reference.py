"""Independent exact references: numpy/scipy on the full array, no wdist code."""

from __future__ import annotations

import math

import numpy as np
import scipy.stats as st


def exact_metrics(x: np.ndarray, rel: float = 0.01) -> dict:
    x = np.asarray(x, dtype=np.float32).ravel()
    numel = x.size
    f = x[np.isfinite(x)].astype(np.float64)
    n = f.size
    out: dict = {"numel": numel, "finite_count": n, "nan_count": int(np.isnan(x).sum()),
                 "inf_count": int(np.isinf(x).sum()), "zero_fraction": float((x == 0).sum() / numel) if numel else None}
    if n == 0:
        return out
    a = np.abs(f)
    srt = np.sort(a)
    l1, l2 = a.sum(), math.sqrt((f * f).sum())
    t = rel * a.max()
    out.update(mean=f.mean(), std=f.std(), min=f.min(), max=f.max(), abs_mean=a.mean(), rms=math.sqrt((f * f).mean()),
               l2_norm=l2, near_zero_threshold=t, near_zero_fraction=float((a <= t).sum() / numel))
    for name, q in (("abs_p50", 0.5), ("abs_p90", 0.9), ("abs_p99", 0.99), ("abs_p999", 0.999)):
        out[name] = float(np.quantile(a, q))
    k = np.arange(1, n + 1)
    out["gini"] = float(((2 * k - n - 1) * srt).sum() / (n * srt.sum())) if srt.sum() > 0 else None
    out["hoyer"] = (math.sqrt(n) - l1 / l2) / (math.sqrt(n) - 1) if n > 1 and l2 > 0 else None
    if f.std() > 0:
        out["kurtosis"] = float(st.kurtosis(f))
        out["skewness"] = float(st.skew(f))
    else:
        out["kurtosis"] = out["skewness"] = None
    top = math.ceil(0.01 * n)
    sq = srt ** 2
    out["top1pct_l2_mass"] = float(sq[-top:].sum() / sq.sum()) if sq.sum() > 0 else None
    return out


def boundary_share(x: np.ndarray, t: float) -> float:
    """Share of values whose |w| lies within one bf16 bin (2^-7 relative) of t: the most the
    histogram-based near-zero count can misplace."""
    a = np.abs(np.asarray(x, dtype=np.float64).ravel())
    a = a[np.isfinite(a)]
    return float(((a >= t / (1 + 2 ** -7)) & (a <= t * (1 + 2 ** -7))).sum() / max(1, np.asarray(x).size))
