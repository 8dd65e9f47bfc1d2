"""Mergeable summaries: a tensor is consumed in chunks whose summaries merge exactly (moments, extremes,
counts) and through a 65,536-bin histogram of each value's top 16 bits (its bfloat16 truncation).

A tensor (or an element range of it) is accumulated by one RangeAccumulator: fixed blocks of values reduced
in a binary tree over block numbers (see kernel.py), so its summary does not depend on chunk sizes nor on
how it was split into tasks. Tensors then merge into a layer's summary, layers into the model's (Chan)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from wdist.analyzers import kernel

NBINS = 1 << 16
SAMPLE_MAX = 1 << 16  # up to this many finite values a summary also keeps them all (exact W1/KS on small tensors)
SMALL = 4096  # a tensor of at most this many values keeps its histogram packed (bins, counts) from the start


def _no_sample() -> np.ndarray:
    return np.zeros(0, dtype=np.float32)


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
    # Filled once per tensor by `finalise` (metrics.py), then summed by merge: the near-zero count at the
    # tensor's own threshold, and the tensor's standardised moment sums (z = (x - mean) / std; sum z^2 = zn).
    # Pooling standardised tensors keeps differences of scale between tensors from reading as heavy tails.
    near_zero: float = 0.0
    zn: float = 0.0
    z3: float = 0.0
    z4: float = 0.0
    finalised: int = 0
    # every finite value (float32), while there are at most SAMPLE_MAX of them; None once there are more
    sample: np.ndarray | None = field(default_factory=_no_sample, repr=False)

    def plausible(self) -> bool:
        """Whether the counts, moments and histogram can describe real data: what a summary read back from
        the cache must satisfy (the histogram holds the n finite values; numel = n + NaNs + Infs)."""
        counts = (self.numel, self.n, self.zeros, self.nans, self.infs, self.units, self.dead_units, self.tensors,
                  self.finalised)
        if any(c < 0 or c >= 1 << 62 for c in counts) or self.n + self.nans + self.infs != self.numel:
            return False
        if self.zeros > self.n or self.dead_units > self.units or not 0 <= self.near_zero <= self.numel:
            return False
        moments = (self.mean, self.m2, self.m3, self.m4, self.l1, self.sumsq, self.zn, self.z3, self.z4)
        if self.n and not (all(math.isfinite(v) for v in moments) and self.m2 >= 0 and self.m4 >= 0
                           and self.l1 >= 0 and self.sumsq >= 0 and self.min <= self.max):
            return False
        h = self.hist
        if h.dtype.kind not in "iu":
            return False
        if h.ndim == 1:
            if h.size != NBINS or (h.size and int(h.min()) < 0):
                return False
            total = int(h.sum())
        elif h.ndim == 2 and h.shape[0] == 2:  # packed: ascending bin indices, counts
            idx, cnt = h
            if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= NBINS or int(cnt.min()) < 0
                             or bool((np.diff(idx) <= 0).any())):
                return False
            total = int(cnt.sum())
        else:
            return False
        s = self.sample
        return total == self.n and (s is None or (s.ndim == 1 and s.size <= SAMPLE_MAX))

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
        self.near_zero += o.near_zero
        self.zn += o.zn
        self.z3 += o.z3
        self.z4 += o.z4
        self.finalised += o.finalised
        if self.sample is not None and o.sample is not None and self.sample.size + o.sample.size <= SAMPLE_MAX:
            self.sample = np.concatenate([self.sample, o.sample]) if o.sample.size else self.sample
        else:
            self.sample = None
        return self


@dataclass
class Part:
    """What one task returns for an element range of a tensor: counts, extremes, histogram and sample in
    `summary` (its moments and sum |x| unset), the moment rows as BlockTree subtrees in element order, and
    which output units have a nonzero value (None without a unit tracker)."""

    summary: Summary
    subtrees: list[tuple[int, tuple[float, ...]]]
    alive: np.ndarray | None = None


class RangeAccumulator:
    """One running summary over consecutive float32 chunks of a range that starts on a block boundary
    (`start` is the range's first element in the tensor). Thread-safe per instance: all state, the kernel's
    included, belongs to the instance."""

    def __init__(self, start: int = 0, exact_bins: bool = False, small: bool = False) -> None:
        """`small`: the caller feeds at most SMALL values in all; the histogram is then made from the kept
        values at the end (packed, the same counts) instead of 65,536 counts per tensor."""
        if start % kernel.BLOCK:
            raise ValueError(f"range start {start} is not on a {kernel.BLOCK}-element block boundary")
        self.small = small
        self.hist = np.zeros(0 if small else NBINS, dtype=np.int64)
        self.tree = kernel.BlockTree(kernel.merge_moments)
        self.buf = kernel.Buffered(1)
        self.exact_bins = exact_bins
        self.numel = self.zeros = self.nans = self.infs = 0
        self.sample: list[np.ndarray] | None = []
        self.nsample = 0
        self.k = kernel.native()

    def _run(self, x: np.ndarray) -> None:
        rows, z, nn, ni = kernel.blocks(x, self.hist, self.k)
        self.zeros += z
        self.nans += nn
        self.infs += ni
        for r in rows.tolist():
            self.tree.push(tuple(r))

    def _keep_sample(self, x: np.ndarray) -> None:
        if self.sample is None:
            return
        if self.nsample + x.size <= SAMPLE_MAX:
            with np.errstate(invalid="ignore", over="ignore"):  # +Inf and -Inf together sum to NaN
                clean = np.isfinite(x.sum(dtype=np.float64))
            f = x.copy() if clean else x[np.isfinite(x)]
        else:  # most chunks end the sample here; only a chunk mostly NaN/Inf keeps it going
            fin = np.isfinite(x)
            f = x[fin] if self.nsample + int(np.count_nonzero(fin)) <= SAMPLE_MAX else None
        if f is None:
            self.sample = None
            return
        self.sample.append(f)
        self.nsample += f.size

    def add(self, x: np.ndarray) -> None:
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
        if x.size == 0:
            return
        self.numel += x.size
        if self.small and self.numel > SMALL:
            raise ValueError(f"a small range holds at most {SMALL} values")
        self._keep_sample(x)
        self.buf.feed((x,), self._run)

    def part(self) -> Part:
        """This range's Part (ends the accumulation)."""
        self.buf.flush(self._run)
        total = self.tree.total()
        n = int(total[0]) if total else 0
        sample = None if self.sample is None else (np.concatenate(self.sample) if self.sample else _no_sample())
        hist = self.hist
        if self.small:  # every finite value was kept (SMALL <= SAMPLE_MAX): its bins are the histogram
            from wdist.analyzers.bins import sample_bins  # bins imports this module: imported at use

            assert sample is not None
            hist = np.array(sample_bins(sample))
        s = Summary(numel=self.numel, n=n, zeros=self.zeros, nans=self.nans, infs=self.infs, hist=hist,
                    exact_bins=self.exact_bins, sample=sample)
        if total and n:
            s.min, s.max = float(total[6]), float(total[7])
        return Part(s, self.tree.subtrees())

    def result(self) -> Summary:
        return combine([self.part()])


def small_part(x: np.ndarray, exact_bins: bool) -> Part:
    """The Part of a whole tensor of 1..SMALL float32 values given at once: what a RangeAccumulator fed
    `x` returns (one kernel block, so one moment row; the sample is every finite value and the packed
    histogram their bins), without its buffering and tree (many tiny tensors: per-tensor overhead)."""
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    if not 0 < x.size <= SMALL:
        raise ValueError(f"a small part holds 1 to {SMALL} values, not {x.size}")
    rows, zeros, nans, infs = kernel.blocks(x, np.zeros(0, dtype=np.int64), kernel.native())
    row = tuple(rows[0].tolist())
    # a copy: x may be a reused buffer or a live tensor's memory
    sample = x.copy() if not (nans or infs) else x[np.isfinite(x)]
    from wdist.analyzers.bins import sample_bins  # bins imports this module: imported at use

    s = Summary(numel=x.size, n=int(row[0]), zeros=zeros, nans=nans, infs=infs, hist=np.array(sample_bins(sample)),
                exact_bins=exact_bins, sample=sample)
    if s.n:
        s.min, s.max = float(row[6]), float(row[7])
    return Part(s, [(0, row)])


def combine(parts: list[Part]) -> Summary:
    """One Summary from the Parts of consecutive ranges, in order (the ranges aligned to their size, as
    engine.task_ranges makes them): identical to accumulating all of it in one range. One part keeps its
    histogram as it is (dense or packed); several are summed dense."""
    if len(parts) == 1 and len(parts[0].subtrees) == 1:
        return _combine_one(parts[0].summary, parts[0].subtrees[0][1])
    return _combine(parts)


def _combine_one(o: Summary, t: tuple[float, ...]) -> Summary:
    """combine() of one Part holding one moment subtree `t` (every tensor of at most 2^26 values), without
    the general path's merge and tree: the same Summary field by field (tested against _combine)."""
    fin = o.sample is not None and o.sample.size <= SAMPLE_MAX
    out = Summary(numel=o.numel, n=o.n, zeros=o.zeros, nans=o.nans, infs=o.infs, hist=o.hist,
                  exact_bins=o.exact_bins, units=o.units, dead_units=o.dead_units, tensors=o.tensors,
                  near_zero=0.0 + o.near_zero, zn=0.0 + o.zn, z3=0.0 + o.z3, z4=0.0 + o.z4, finalised=o.finalised,
                  sample=(o.sample if o.sample.size else _no_sample()) if fin else None)  # type: ignore[union-attr]
    if o.n:
        out.min, out.max = o.min, o.max
        out.mean, out.m2, out.m3, out.m4, out.l1 = t[1], t[2], t[3], t[4], t[5]
        out.sumsq = out.m2 + out.n * out.mean * out.mean
    return out


def _combine(parts: list[Part]) -> Summary:
    one = len(parts) == 1
    out = Summary(exact_bins=all(p.summary.exact_bins for p in parts) if parts else True,
                  hist=np.zeros(0, dtype=np.int64) if one else np.zeros(NBINS, dtype=np.int64))
    tree = kernel.BlockTree(kernel.merge_moments)
    for p in parts:
        if one:
            hist, p.summary.hist = p.summary.hist, out.hist
            try:
                out.merge(p.summary)
            finally:
                p.summary.hist = hist
            out.hist = hist
        else:
            if p.summary.hist.ndim == 2:
                raise ValueError("combine: the parts of a split tensor must carry dense histograms")
            out.merge(p.summary)  # counts, extremes, histogram, sample; the moments are set below
        for level, v in p.subtrees:
            tree.push(v, level)
    t = tree.total()
    if t is not None and out.n:
        out.mean, out.m2, out.m3, out.m4, out.l1 = t[1], t[2], t[3], t[4], t[5]
        out.sumsq = out.m2 + out.n * out.mean * out.mean
    else:
        out.mean = out.m2 = out.m3 = out.m4 = out.l1 = out.sumsq = 0.0
    return out


def summarize_chunk(x: np.ndarray, exact_bins: bool = False) -> Summary:
    """Summary of one float32 chunk. Non-finite values are counted and excluded from everything else."""
    acc = RangeAccumulator(0, exact_bins)
    acc.add(x)
    return acc.result()
