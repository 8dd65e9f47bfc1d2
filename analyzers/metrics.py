"""Final metrics from a Summary. Every definition here is the one the README states."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np

from wdist.analyzers import bins
from wdist.analyzers.summary import Summary

METRICS = (
    "mean", "std", "min", "max", "abs_mean", "rms", "l2_norm", "zero_fraction", "near_zero_fraction",
    "near_zero_threshold", "abs_p50", "abs_p90", "abs_p99", "abs_p999", "gini", "hoyer", "kurtosis",
    "skewness", "top1pct_l2_mass", "units", "dead_units", "nan_count", "inf_count", "numel", "finite_count",
)
QUANTILES = {"abs_p50": 0.5, "abs_p90": 0.9, "abs_p99": 0.99, "abs_p999": 0.999}


@dataclass(frozen=True)
class NearZero:
    """near_zero_threshold = rel * max|w| of the summarised values, or the absolute value when given."""

    rel: float = 0.01
    abs: float | None = None

    def threshold(self, max_abs: float) -> float:
        return self.abs if self.abs is not None else self.rel * max_abs


def _f(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


# Magnitude counts: a dense array over magnitude bins (abs_counts of a histogram), or the sparse pair
# (bins ascending, counts) of its occupied bins, which costs per occupied bin instead of per 32,768 bins.
Counts: TypeAlias = np.ndarray | tuple[np.ndarray, np.ndarray]


def _sparse(counts: Counts) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(counts, tuple):
        return counts
    nz = np.flatnonzero(counts)
    return nz, counts[nz]


def abs_bins(s: Summary) -> tuple[np.ndarray, np.ndarray]:
    """Occupied magnitude bins of a summary's histogram (dense or packed) and their counts."""
    return bins.abs_occupied(s.hist)


def _quantiles(idx: np.ndarray, cum: np.ndarray, val: np.ndarray, n: int, qs: tuple[float, ...]) -> list[float]:
    """Linear quantiles at each q from occupied bins `idx` and their cumulative counts, in one search."""
    if idx.size == 0:
        return [math.nan] * len(qs)
    hs = [(n - 1) * q for q in qs]
    ks = [math.floor(h) for h in hs] + [math.ceil(h) for h in hs]
    pos = np.minimum(np.searchsorted(cum, ks, side="right"), idx.size - 1)
    v = val[idx[pos]].tolist()
    m = len(qs)
    return [v[i] + (hs[i] - ks[i]) * (v[m + i] - v[i]) for i in range(m)]


def abs_quantile(counts: Counts, n: int, q: float, exact: bool) -> float:
    """numpy's default (linear) quantile of |w| from the magnitude histogram."""
    lo, _, rep = bins.abs_tables()
    idx, c = _sparse(counts)
    return _quantiles(idx, np.cumsum(c), lo if exact else rep, n, (q,))[0]


def count_at_most(counts: Counts, t: float, exact: bool) -> float:
    """Number of |w| <= t: bins wholly below t exactly, the bin holding t by linear interpolation
    (exact for bf16/fp8 data, whose bins hold a single value)."""
    lo, hi, _ = bins.abs_tables()
    if t < 0:
        return 0.0
    k = int(np.searchsorted(lo, t, side="right")) - 1  # bin whose lower edge <= t
    idx, c = _sparse(counts)
    j = int(np.searchsorted(idx, k, side="left"))
    below = float(c[:j].sum())
    at = float(c[j]) if j < idx.size and idx[j] == k else 0.0
    if exact or k == 0:  # bin 0 holds zeros (and sub-9.2e-41 subnormals, taken as zero)
        return below + at
    width = hi[k] - lo[k]
    frac = 1.0 if width <= 0 or not math.isfinite(width) else min(1.0, (t - lo[k]) / width)
    return float(below + frac * at)  # a plain float: a NumPy scalar compares to np.bool_ in rules


def gini(counts: Counts, n: int, exact: bool) -> float | None:
    """Hurley & Rickard Gini of |w|: sum_k (2k - n - 1) c_(k) / (n sum c), c ascending."""
    lo, _, rep = bins.abs_tables()
    nz, cnt = _sparse(counts)
    return _gini((lo if exact else rep)[nz], cnt.astype(np.float64), n)


def _gini(vals: np.ndarray, c: np.ndarray, n: int) -> float | None:
    """gini() from the occupied bins' magnitudes (ascending) and float64 counts."""
    r = np.cumsum(c) - c  # ranks before each bin
    mass = vals * c
    total = mass.sum()
    if n == 0 or total <= 0:
        return None
    return float((mass * (2 * r + c - n)).sum() / (n * total))


def top_mass(counts: Counts, n: int, exact: bool, share: float = 0.01) -> float | None:
    """Share of sum w^2 held by the ceil(share*n) weights of largest |w|."""
    lo, _, rep = bins.abs_tables()
    nz, cnt = _sparse(counts)
    return _top_mass((lo if exact else rep)[nz], cnt.astype(np.float64), n, share)


def _top_mass(vals: np.ndarray, c: np.ndarray, n: int, share: float = 0.01) -> float | None:
    """top_mass() from the occupied bins' magnitudes (ascending) and float64 counts."""
    c = c[::-1]
    sq = vals[::-1] ** 2
    total = float((sq * c).sum())
    if n == 0 or total <= 0:
        return None
    k = math.ceil(share * n)
    cum = np.cumsum(c)
    i = int(np.searchsorted(cum, k, side="left"))
    before = float(cum[i - 1]) if i else 0.0
    top = float((sq[:i] * c[:i]).sum()) + (k - before) * float(sq[i])
    return top / total


def finalise(s: Summary, nz: NearZero, counts: tuple[np.ndarray, np.ndarray] | None = None) -> Summary:
    """Record a finished tensor's own near-zero count and standardised moment sums, so that pooled
    summaries sum per-tensor counts (each tensor at its own threshold) and pool standardised shapes.
    `counts`: abs_bins(s) when the caller has it already."""
    if s.finalised or s.n == 0:
        s.finalised = 1
        return s
    max_abs = max(abs(s.min), abs(s.max))
    s.near_zero = count_at_most(abs_bins(s) if counts is None else counts, nz.threshold(max_abs), s.exact_bins)
    if s.n > 1 and s.m2 > 1e-300:
        sigma = math.sqrt(s.m2 / s.n)
        s.zn, s.z3, s.z4 = float(s.n), s.m3 / sigma ** 3, s.m4 / sigma ** 4
    s.finalised = 1
    return s


def pooled(s: Summary) -> bool:
    """A merge of finalised tensors (so near-zero counts are the sum of per-tensor counts)."""
    return s.tensors > 1 and s.finalised == s.tensors


def standardised(s: Summary) -> tuple[float | None, float | None]:
    """(excess kurtosis, skewness) of the pooled per-tensor-standardised values: each tensor contributes
    z = (x - its mean) / its std, so scale differences between tensors never read as heavy tails."""
    if s.zn <= 0:
        return None, None
    return _f(s.z4 / s.zn - 3.0), _f(s.z3 / s.zn)


def nonzero_moments(s: Summary) -> tuple[int, float | None, float | None, float | None]:
    """(count, mean, std, excess kurtosis) of the finite nonzero values. Exact up to rounding: zeros add
    nothing to the raw power sums, which follow from the central sums; the cancellation is negligible
    while |mean| is not much larger than std (weights)."""
    k = s.n - s.zeros
    if k <= 0 or s.n == 0:
        return max(k, 0), None, None, None
    n, mu = float(s.n), s.mean
    p1 = n * mu
    p2 = s.m2 + n * mu * mu
    p3 = s.m3 + 3 * mu * s.m2 + n * mu ** 3
    p4 = s.m4 + 4 * mu * s.m3 + 6 * mu * mu * s.m2 + n * mu ** 4
    m = p1 / k
    c2 = p2 / k - m * m
    if c2 <= 0:
        return k, _f(m), 0.0, None
    c4 = p4 / k - 4 * m * p3 / k + 6 * m * m * p2 / k - 3 * m ** 4
    return k, _f(m), _f(math.sqrt(c2)), _f(c4 / (c2 * c2) - 3.0)


def nonzero_counts(s: Summary) -> np.ndarray:
    """Magnitude histogram without the zero bin (dense; nonzero_bins is the sparse form)."""
    idx, cnt = nonzero_bins(s)
    c = np.zeros(0x8000, dtype=np.int64)
    c[idx] = cnt
    return c


def nonzero_bins(s: Summary) -> tuple[np.ndarray, np.ndarray]:
    """Occupied magnitude bins without the zero bin, and their counts."""
    idx, cnt = abs_bins(s)
    return (idx[1:], cnt[1:]) if idx.size and idx[0] == 0 else (idx, cnt)


def smallest_nonzero(s: Summary) -> float | None:
    """Lower edge of the lowest occupied nonzero magnitude bin (within 2^-7 relative of the true min)."""
    idx, _ = nonzero_bins(s)
    if idx.size == 0 or idx[0] >= 0x7F80:
        return None
    lo, _, _ = bins.abs_tables()
    return float(lo[idx[0]])


def compute(s: Summary, nz: NearZero, counts: tuple[np.ndarray, np.ndarray] | None = None,
            near_zero_count: float | None = None) -> dict[str, float | int | None]:
    """Every metric of a summary. `counts`: abs_bins(s) when the caller has it already;
    `near_zero_count`: s.near_zero when the caller has just finalised this one tensor with the same `nz`
    (the same count, not searched for twice)."""
    n = s.n
    out: dict[str, float | int | None] = {k: None for k in METRICS}
    out.update(numel=s.numel, finite_count=n, nan_count=s.nans, inf_count=s.infs,
               units=s.units if s.units else None, dead_units=s.dead_units if s.units else None)
    if s.numel:
        out["zero_fraction"] = s.zeros / s.numel
    if n == 0:
        return out
    if counts is None:
        counts = abs_bins(s)
    max_abs = max(abs(s.min), abs(s.max))
    var = s.m2 / n
    out.update(
        mean=_f(s.mean), std=_f(math.sqrt(var)), min=_f(s.min), max=_f(s.max), abs_mean=_f(s.l1 / n),
        rms=_f(math.sqrt(s.sumsq / n)), l2_norm=_f(math.sqrt(s.sumsq)),
    )
    if pooled(s):  # each tensor at its own threshold (one number for an absolute threshold)
        out["near_zero_threshold"] = nz.abs
        out["near_zero_fraction"] = float(s.near_zero) / s.numel
    else:
        t = nz.threshold(max_abs)
        out["near_zero_threshold"] = _f(t)
        near = count_at_most(counts, t, s.exact_bins) if near_zero_count is None else near_zero_count
        out["near_zero_fraction"] = float(near) / s.numel
    lo, _, rep = bins.abs_tables()
    table = lo if s.exact_bins else rep
    qv = _quantiles(counts[0], np.cumsum(counts[1]), table, n, tuple(QUANTILES.values()))
    for name, v in zip(QUANTILES, qv):
        out[name] = _f(v)
    vals, c = table[counts[0]], counts[1].astype(np.float64)  # shared by Gini and the top-1% mass
    out["gini"] = _gini(vals, c, n)
    l2 = math.sqrt(s.sumsq)
    if n > 1 and l2 > 0:
        out["hoyer"] = _f((math.sqrt(n) - s.l1 / l2) / (math.sqrt(n) - 1))
    if var > 0 and s.m2 > 1e-300:
        m2 = s.m2 / n
        out["skewness"] = _f((s.m3 / n) / m2 ** 1.5)
        out["kurtosis"] = _f((s.m4 / n) / (m2 * m2) - 3.0)
    out["top1pct_l2_mass"] = _top_mass(vals, c, n)
    return out
