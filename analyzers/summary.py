"""Mergeable summaries: a tensor is consumed in chunks whose summaries merge exactly (moments, extremes,
counts) and through a 65,536-bin histogram of each value's top 16 bits (its bfloat16 truncation).

Chunks merge into a tensor's summary, tensors into a layer's, layers into the model's: the result does not
depend on chunk size, except for floating-point rounding of the moment sums."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

NBINS = 1 << 16


@dataclass
class Summary:
    numel: int = 0  # all elements, finite or not
    n: int = 0  # finite elements (moments, quantiles and shape metrics are over these)
    mean: float = 0.0
    m2: float = 0.0  # central moment sums: sum (x-mean)^k
    m3: float = 0.0
    m4: float = 0.0
    l1: float = 0.0  # sum |x|
    sumsq: float = 0.0  # sum x^2
    min: float = float("inf")
    max: float = float("-inf")
    zeros: int = 0
    nans: int = 0
    infs: int = 0
    hist: np.ndarray = field(default_factory=lambda: np.zeros(NBINS, dtype=np.int64))
    exact_bins: bool = True  # every value is exactly its bin's lower edge (bf16 / fp8 data)
    units: int = 0  # output units of matrices/convs covered, and how many are entirely zero
    dead_units: int = 0
    tensors: int = 0

    def merge(self, o: Summary) -> Summary:
        """Merge o into self (Chan/Pébay pairwise update of the central moments)."""
        if o.n:
            if self.n == 0:
                self.mean, self.m2, self.m3, self.m4 = o.mean, o.m2, o.m3, o.m4
            else:
                na, nb = float(self.n), float(o.n)
                n = na + nb
                d = o.mean - self.mean
                d_n = d / n
                m2 = self.m2 + o.m2 + d * d_n * na * nb
                m3 = (self.m3 + o.m3 + d * d_n * d_n * na * nb * (na - nb)
                      + 3.0 * d_n * (na * o.m2 - nb * self.m2))
                m4 = (self.m4 + o.m4 + d * d_n ** 3 * na * nb * (na * na - na * nb + nb * nb)
                      + 6.0 * d_n * d_n * (na * na * o.m2 + nb * nb * self.m2)
                      + 4.0 * d_n * (na * o.m3 - nb * self.m3))
                self.mean += d_n * nb
                self.m2, self.m3, self.m4 = m2, m3, m4
            self.min = min(self.min, o.min)
            self.max = max(self.max, o.max)
        self.n += o.n
        self.numel += o.numel
        self.l1 += o.l1
        self.sumsq += o.sumsq
        self.zeros += o.zeros
        self.nans += o.nans
        self.infs += o.infs
        self.hist += o.hist
        self.exact_bins = self.exact_bins and o.exact_bins
        self.units += o.units
        self.dead_units += o.dead_units
        self.tensors += o.tensors
        return self


_BLOCK = 1 << 15  # float64 temporaries stay in cache


class _Workspace:
    """Scratch buffers reused across chunks (one set per process)."""

    def __init__(self) -> None:
        self.d = np.empty(_BLOCK)
        self.d2 = np.empty(_BLOCK)
        self.a32 = np.empty(_BLOCK, dtype=np.float32)
        self.idx = np.empty(0, dtype=np.intp)

    def index(self, n: int) -> np.ndarray:
        if self.idx.size < n:
            self.idx = np.empty(n, dtype=np.intp)
        return self.idx[:n]


_WS = _Workspace()


def _block_sums(x: np.ndarray, shift: float) -> tuple[float, float, float, float, float, float, float]:
    """(min, max, sum|x|, and sums of d, d^2, d^3, d^4 with d = x - shift) in one cache-sized pass per
    block. float64 moments; einsum's own sum-of-products loop (not BLAS) keeps results independent of
    threads and --jobs."""
    s1 = s2 = s3 = s4 = l1 = 0.0
    lo, hi = np.inf, -np.inf
    for i in range(0, x.size, _BLOCK):
        xb = x[i:i + _BLOCK]
        k = xb.size
        db, d2b, ab = _WS.d[:k], _WS.d2[:k], _WS.a32[:k]
        lo = min(lo, float(xb.min()))
        hi = max(hi, float(xb.max()))
        l1 += float(np.abs(xb, out=ab).sum())
        np.subtract(xb, shift, out=db, dtype=np.float64)
        np.multiply(db, db, out=d2b)
        s1 += float(db.sum())
        s2 += float(d2b.sum())
        s3 += float(np.einsum("i,i->", d2b, db))
        s4 += float(np.einsum("i,i->", d2b, d2b))
    return lo, hi, l1, s1, s2, s3, s4


def summarize_chunk(x: np.ndarray, exact_bins: bool = False) -> Summary:
    """Summary of one float32 chunk. Non-finite values are counted and excluded from everything else."""
    s = Summary(numel=int(x.size), exact_bins=exact_bins, hist=_EMPTY)
    if x.size == 0:
        s.hist = np.zeros(NBINS, dtype=np.int64)
        return s
    with np.errstate(over="ignore", invalid="ignore"):  # inf - inf or overflow just means "look closer"
        rough = float(x.sum())  # float32 pairwise sum: only a shift for the moments and a NaN/Inf probe
    if not np.isfinite(rough):
        finite = np.isfinite(x)
        nf = int(x.size - np.count_nonzero(finite))
        s.nans = int(np.count_nonzero(np.isnan(x)))
        s.infs = nf - s.nans
        if nf:
            x = x[finite]
        if x.size == 0:
            s.hist = np.zeros(NBINS, dtype=np.int64)
            return s
        rough = float(np.add.reduce(x, dtype=np.float64))
    n = int(x.size)
    s.n = n
    idx = _WS.index(n)
    np.right_shift(x.view(np.uint32), 16, out=idx, casting="unsafe")
    s.hist = np.bincount(idx, minlength=NBINS)
    # bins 0x0000 / 0x8000 hold +-0 and the tiniest subnormals: count exactly only when they are occupied
    if s.hist[0] or s.hist[0x8000]:
        s.zeros = int(s.hist[0] + s.hist[0x8000]) if exact_bins else n - int(np.count_nonzero(x))
    shift = rough / n
    s.min, s.max, s.l1, s1, s2, s3, s4 = _block_sums(x, shift)
    mu = s1 / n  # the mean relative to the shift
    s.mean = shift + mu
    s.m2 = max(s2 - s1 * mu, 0.0)
    s.m3 = s3 - 3.0 * mu * s2 + 2.0 * s1 * mu * mu
    s.m4 = s4 - 4.0 * mu * s3 + 6.0 * mu * mu * s2 - 3.0 * s1 * mu ** 3
    s.sumsq = s.m2 + n * s.mean * s.mean
    return s


_EMPTY = np.zeros(0, dtype=np.int64)
