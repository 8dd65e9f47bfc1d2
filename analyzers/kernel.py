"""The per-block hot path: the C kernel (`_kernel.c`) when it is built, else the numpy reference below.

Values are summarised in fixed blocks of BLOCK elements, numbered by their position in the tensor. Each block
gives one row of sums; rows are combined in a binary tree over the block numbers (BlockTree), so a tensor's
result depends only on its values, never on how it is cut into chunks or into tasks whose sizes are a power
of two of blocks (the task size is fixed, never derived from --jobs).

WDIST_KERNEL=numpy (read at each call) forces the numpy path."""

from __future__ import annotations

import os
from collections.abc import Callable
from types import ModuleType

import numpy as np

BLOCK = 1 << 16
NBINS = 1 << 16
ROW = 8  # finite count, mean, m2, m3, m4, sum|x|, min, max
PAIR_ROW = 9  # count, aa, bb, ab, dd, both nonzero, flips, changed, max|b-a|

Row = tuple[float, ...]


def native() -> ModuleType | None:
    """The compiled kernel, or None for the numpy path (WDIST_KERNEL=numpy, or no built extension)."""
    if os.environ.get("WDIST_KERNEL", "").strip().lower() == "numpy":
        return None
    try:
        from wdist.analyzers import _kernel  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _kernel


def backend() -> str:
    return "c" if native() is not None else "numpy"


def _moments(xd: np.ndarray) -> Row:
    """(n, mean, m2, m3, m4) of finite float64 values, around their own mean."""
    n = xd.size
    if n == 0:
        return 0.0, 0.0, 0.0, 0.0, 0.0
    mean = float(xd.sum()) / n
    d = xd - mean
    d2 = d * d
    s1, s2 = float(d.sum()), float(d2.sum())
    d *= d2  # not np.dot: BLAS threads would make the sums depend on the machine
    d2 *= d2
    s3, s4 = float(d.sum()), float(d2.sum())
    mu = s1 / n  # the rounding left in `mean`
    return (float(n), mean + mu, max(s2 - s1 * mu, 0.0), s3 - 3.0 * mu * s2 + 2.0 * s1 * mu * mu,
            s4 - 4.0 * mu * s3 + 6.0 * mu * mu * s2 - 3.0 * s1 * mu ** 3)


def blocks_numpy(x: np.ndarray, hist: np.ndarray) -> tuple[np.ndarray, int, int, int]:
    """Reference implementation of `_kernel.blocks`: (rows, zeros, nans, infs); hist is incremented (an
    empty hist: none kept)."""
    nb = -(-x.size // BLOCK)
    rows = np.empty((nb, ROW))
    if hist.size:
        hist += np.bincount(x.view(np.uint32) >> 16, minlength=NBINS)
    zeros = nans = infs = 0
    for b in range(nb):
        xd = x[b * BLOCK:(b + 1) * BLOCK].astype(np.float64)
        zeros += int(xd.size - np.count_nonzero(xd))
        a = np.abs(xd)
        l1 = float(a.sum())
        if not np.isfinite(l1):
            fin = np.isfinite(xd)
            bad = int(xd.size - np.count_nonzero(fin))
            nn = int(np.count_nonzero(np.isnan(xd)))
            nans, infs = nans + nn, infs + bad - nn
            xd, a = xd[fin], a[fin]
            l1 = float(a.sum())
        lo, hi = (float(xd.min()), float(xd.max())) if xd.size else (np.inf, -np.inf)
        rows[b] = (*_moments(xd), l1, lo, hi)
    if (nans or infs) and hist.size:  # only NaN/Inf land in these bins
        hist[0x7F80:0x8000] = 0
        hist[0xFF80:] = 0
    return rows, zeros, nans, infs


def blocks(x: np.ndarray, hist: np.ndarray, k: ModuleType | None) -> tuple[np.ndarray, int, int, int]:
    """Rows of per-block sums of float32 `x` (BLOCK values per block, the last may be short), with its
    zero / NaN / Inf counts; the top-16-bit histogram of its finite values is added to `hist` (65,536
    counts, or an empty array for none)."""
    if k is None:
        return blocks_numpy(x, hist)
    rows = np.empty((-(-x.size // BLOCK), ROW))
    zeros, nans, infs = k.blocks(x, BLOCK, hist, rows)
    return rows, zeros, nans, infs


def pair_blocks_numpy(a: np.ndarray, b: np.ndarray, rtol: float, atol: float) -> np.ndarray:
    nb = -(-a.size // BLOCK)
    rows = np.empty((nb, PAIR_ROW))
    for i in range(nb):
        a64 = a[i * BLOCK:(i + 1) * BLOCK].astype(np.float64)
        b64 = b[i * BLOCK:(i + 1) * BLOCK].astype(np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            if not (np.isfinite(a64.sum()) and np.isfinite(b64.sum())):
                fin = np.isfinite(a64) & np.isfinite(b64)
                a64, b64 = a64[fin], b64[fin]
        d = b64 - a64
        t = a64 * b64  # cannot underflow for float32 inputs: nonzero iff both are, negative iff signs differ
        ad = np.abs(d)
        rows[i] = (a64.size, (a64 * a64).sum(), (b64 * b64).sum(), t.sum(), (d * d).sum(), np.count_nonzero(t),
                   np.count_nonzero(t < 0), np.count_nonzero(ad > np.abs(a64) * rtol + atol),
                   ad.max() if ad.size else 0.0)
    return rows


def pair_blocks(a: np.ndarray, b: np.ndarray, rtol: float, atol: float, k: ModuleType | None) -> np.ndarray:
    if k is None:
        return pair_blocks_numpy(a, b, rtol, atol)
    rows = np.empty((-(-a.size // BLOCK), PAIR_ROW))
    k.pair_blocks(a, b, BLOCK, rtol, atol, rows)
    return rows


def merge_moments(a: Row, b: Row) -> Row:
    """Rows (n, mean, m2, m3, m4, l1, min, max) of consecutive values, a before b (Chan/Pébay)."""
    lo = b[6] if b[6] < a[6] else a[6]  # ties keep the earlier value (-0.0 vs 0.0 stays deterministic)
    hi = b[7] if b[7] > a[7] else a[7]
    if b[0] == 0 or a[0] == 0:
        m = b if a[0] == 0 else a
        return (*m[:5], a[5] + b[5], lo, hi)
    na, nb = a[0], b[0]
    n = na + nb
    d = b[1] - a[1]
    d_n = d / n
    m2 = a[2] + b[2] + d * d_n * na * nb
    m3 = a[3] + b[3] + d * d_n * d_n * na * nb * (na - nb) + 3.0 * d_n * (na * b[2] - nb * a[2])
    m4 = (a[4] + b[4] + d * d_n ** 3 * na * nb * (na * na - na * nb + nb * nb)
          + 6.0 * d_n * d_n * (na * na * b[2] + nb * nb * a[2]) + 4.0 * d_n * (na * b[3] - nb * a[3]))
    return n, a[1] + d_n * nb, m2, m3, m4, a[5] + b[5], lo, hi


def merge_pairs(a: Row, b: Row) -> Row:
    return (*(x + y for x, y in zip(a[:8], b[:8])), b[8] if b[8] > a[8] else a[8])


class BlockTree:
    """Rows of consecutive blocks reduced pairwise in a binary tree over block numbers: the subtree over
    blocks [k*2^j, (k+1)*2^j) is the same number whoever computes it, so ranges aligned to 2^j blocks can be
    reduced apart (in other processes) and pushed here as level-j subtrees, giving bit-identical totals."""

    def __init__(self, merge: Callable[[Row, Row], Row]) -> None:
        self.merge = merge
        self.levels: list[Row | None] = []

    def push(self, v: Row, level: int = 0) -> None:
        """Add the subtree of 2^level blocks that follows everything pushed so far (all lower levels must
        be empty, which holds whenever ranges are aligned to their own size)."""
        lv = self.levels
        while level < len(lv) and lv[level] is not None:
            v = self.merge(lv[level], v)  # type: ignore[arg-type]
            lv[level] = None
            level += 1
        lv.extend([None] * (level + 1 - len(lv)))
        lv[level] = v

    def subtrees(self) -> list[tuple[int, Row]]:
        """The pending subtrees in element order (largest first), for pushing into another tree."""
        return [(j, v) for j, v in reversed(list(enumerate(self.levels))) if v is not None]

    def total(self) -> Row | None:
        out: Row | None = None
        for v in self.levels:  # smallest (last) subtrees first: the same fold for any split
            if v is not None:
                out = v if out is None else self.merge(v, out)
        return out


def check_task_size(task: int) -> int:
    """Task ranges must be a power-of-two number of blocks for BlockTree to give split-independent totals."""
    nb = task // BLOCK
    if task % BLOCK or nb & (nb - 1):
        raise ValueError(f"task size {task} is not a power-of-two multiple of {BLOCK}")
    return task


class Buffered:
    """Feeds consecutive float32 chunks of one range to `run` in whole blocks (the last block of the range
    may be short), copying only the pieces of blocks that straddle chunk boundaries."""

    def __init__(self, arrays: int) -> None:
        self.pending: list[np.ndarray] = []
        self.fill = 0
        self.arrays = arrays

    def feed(self, xs: tuple[np.ndarray, ...], run: Callable[..., None]) -> None:
        n = xs[0].size
        i = 0
        if self.fill:
            take = min(BLOCK - self.fill, n)
            for p, x in zip(self.pending, xs):
                p[self.fill:self.fill + take] = x[:take]
            self.fill += take
            i = take
            if self.fill == BLOCK:
                run(*self.pending)
                self.fill = 0
        whole = (n - i) // BLOCK * BLOCK
        if whole:
            run(*(x[i:i + whole] for x in xs))
            i += whole
        if i < n:
            if not self.pending:
                self.pending = [np.empty(BLOCK, dtype=np.float32) for _ in range(self.arrays)]
            for p, x in zip(self.pending, xs):
                p[:n - i] = x[i:]
            self.fill = n - i

    def flush(self, run: Callable[..., None]) -> None:
        if self.fill:
            run(*(p[:self.fill] for p in self.pending))
            self.fill = 0


class PairAccumulator:
    """Running pair sums (diff) over consecutive chunk pairs of one range that starts on a block boundary."""

    def __init__(self, rtol: float, atol: float) -> None:
        self.rtol, self.atol = rtol, atol
        self.tree = BlockTree(merge_pairs)
        self.buf = Buffered(2)
        self.k = native()

    def _run(self, a: np.ndarray, b: np.ndarray) -> None:
        for r in pair_blocks(a, b, self.rtol, self.atol, self.k).tolist():
            self.tree.push(tuple(r))

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        a = np.ascontiguousarray(a, dtype=np.float32)
        b = np.ascontiguousarray(b, dtype=np.float32)
        self.buf.feed((a, b), self._run)

    def subtrees(self) -> list[tuple[int, Row]]:
        self.buf.flush(self._run)
        return self.tree.subtrees()


def join_pairs(parts: list[list[tuple[int, Row]]]) -> Row:
    """Total pair row of a tensor from its ranges' subtrees, in order."""
    tree = BlockTree(merge_pairs)
    for sub in parts:
        for level, v in sub:
            tree.push(v, level)
    return tree.total() or (0.0,) * PAIR_ROW


def pair_fields(r: Row) -> tuple[int, float, float, float, float, int, int, int, float]:
    """A pair row as diff.PairSums's fields (counts as ints)."""
    return int(r[0]), r[1], r[2], r[3], r[4], int(r[5]), int(r[6]), int(r[7]), r[8]
