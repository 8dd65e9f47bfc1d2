"""Spectral metrics of weight matrices (the ESD: eigenvalues of WᵀW), computed while streaming.

Each matrix's Gram matrix of its smaller side is accumulated in float64 over row chunks of the tensor, then
`numpy.linalg.eigvalsh` gives the squared singular values: memory is O(min(m, n)²) plus one chunk, never the
whole matrix. Matrices whose smaller side exceeds `SpectralOptions.max_side` get σ_max from a streamed
randomized subspace iteration instead, with `alpha_skipped` saying why the full-spectrum metrics are absent.

Conventions (see `matrix_view`): PyTorch tensors are [out, in, *kernel], Keras kernels [*kernel, in, out]
(pass keras=True). A tensor of rank ≥ 3 is a conv kernel: in "per-kernel" mode (the default, as
WeightWatcher) every kernel position gives one out×in matrix and the eigenvalues of all of them are pooled
into one ESD; in "flatten" mode the tensor is one out × (in·kh·kw) matrix. LSTM/GRU gate matrices are
analysed as stored (the gates stacked into one matrix); GPT-2 Conv1D [in, out] and Keras Dense [in, out]
are plain matrices (singular values do not depend on the orientation).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from wdist.loaders.model import DEFAULT_CHUNK, TensorRef

# Scalar metrics a tensor or layer result exposes through `stats()` (for check rules and trend series).
SPECTRAL_METRICS = ("spectral_norm", "stable_rank", "effective_rank", "alpha", "alpha_weighted", "alpha_ks",
                    "mp_spikes", "tail_count")

# WeightWatcher 0.7.7's fit (WW_powerlaw.WWFit): below this many eigenvalues it switches to a bias-corrected
# MLE with a minimum tail of 8 and a size-penalised KS objective. Replicated so that alphas agree.
_SMALL_N = 20
_SMALL_N_MIN_TAIL = 8


@dataclass(frozen=True)
class SpectralOptions:
    """How the spectral pass runs. Frozen and picklable, so it can be handed to worker processes."""

    max_side: int = 8192           # a matrix whose smaller side exceeds this gets the randomized σ_max only
    conv_mode: str = "per-kernel"  # "per-kernel": kh·kw matrices of out×in; "flatten": out × (in·kh·kw)
    min_tail: int = 50             # fewer eigenvalues than this in the fitted tail: alpha is flagged untrusted
    fit_min_eval: float = 1e-5     # eigenvalues at or below this are left out of the fit (WeightWatcher's EVALS_THRESH)
    max_xmin_candidates: int = 10000  # above this many eigenvalues, xmin is scanned on an evenly spaced subset
    mp_tw_margin: float = 3.0      # spikes must clear the MP edge by this many Tracy–Widom scales
    mp_random_ks: float = 0.05     # bulk-vs-MP KS distance at or below which (with no spikes) a layer looks random
    # ... or at or below this over M (the smaller side of one matrix), whichever is larger: random matrices with
    # few singular values fit MP loosely (measured 95th percentile of the KS distance ≈ 3.5/M for M = 8-768)
    mp_random_ks_scale: float = 4.0
    hist_bins: int = 64            # log10 bins of the ESD histogram
    chunk_elems: int = DEFAULT_CHUNK  # elements per streamed chunk (rounded up to whole rows)
    panel_elems: int = 1 << 21     # float64 column panel (16 MiB) for wide matrices, whose Gram needs all rows
    power_block: int = 10          # randomized path: block size of the subspace iteration
    power_iters: int = 30          # randomized path: at most this many passes over the tensor
    power_tol: float = 1e-6        # randomized path: stop when the top Ritz value changes less than this (relative)
    seed: int = 0                  # randomized path: fixed seed of the start block

    def __post_init__(self) -> None:
        if self.conv_mode not in ("per-kernel", "flatten"):
            raise ValueError(f"conv_mode must be 'per-kernel' or 'flatten', not {self.conv_mode!r}")
        if self.max_side < 1 or self.chunk_elems < 1 or self.panel_elems < 1 or self.power_block < 1:
            raise ValueError("max_side, chunk_elems, panel_elems and power_block must be positive")


@dataclass(frozen=True)
class MatrixView:
    """How a tensor is read as `kernels` matrices of rows × cols each.

    layout "rows": one matrix, element (r, c) at r·cols + c.
    layout "kernel-last" (PyTorch conv [out, in, *k]): element (k, r, c) at (r·cols + c)·kernels + k.
    layout "kernel-first" (Keras conv [*k, in, out]): element (k, r, c) at (k·rows + r)·cols + c."""

    layout: str
    kernels: int
    rows: int
    cols: int
    mode: str        # "matrix", "per-kernel" or "flatten"
    convention: str  # human-readable description of the matrices

    @property
    def side(self) -> int:
        return min(self.rows, self.cols)

    @property
    def n(self) -> int:
        """The larger side N (MP convention N ≥ M)."""
        return max(self.rows, self.cols)

    @property
    def row_len(self) -> int:
        """Elements per C-order row as streamed."""
        return self.cols * self.kernels if self.layout == "kernel-last" else self.cols


def matrix_view(shape: Sequence[int], keras: bool = False, opts: SpectralOptions | None = None) -> MatrixView | None:
    """The matrices a tensor of this shape is analysed as, or None when it has none (rank < 2, or empty)."""
    opts = opts or SpectralOptions()
    shape = tuple(int(d) for d in shape)
    if len(shape) < 2 or any(d == 0 for d in shape):
        return None
    if len(shape) == 2:
        return MatrixView("rows", 1, shape[0], shape[1], "matrix", f"{shape[0]}x{shape[1]} matrix as stored")
    if keras:
        kdims, cin, cout = shape[:-2], shape[-2], shape[-1]
    else:
        cout, cin, kdims = shape[0], shape[1], shape[2:]
    k = math.prod(kdims)
    ktxt = "x".join(str(d) for d in kdims)
    if k == 1:
        return MatrixView("rows", 1, k * cin if keras else cout, cout if keras else cin * k, "matrix",
                          f"{ktxt} kernel: one {cout}x{cin} (out x in) matrix")
    if opts.conv_mode == "flatten":
        if keras:  # rows (kh, kw, in) stay in storage order; the flattened axis order does not change σ
            return MatrixView("rows", 1, k * cin, cout, "flatten", f"{k * cin}x{cout} ((kernel·in) x out) matrix")
        return MatrixView("rows", 1, cout, cin * k, "flatten", f"{cout}x{cin * k} (out x (in·kernel)) matrix")
    if keras:
        return MatrixView("kernel-first", k, cin, cout, "per-kernel",
                          f"{k} matrices of {cin}x{cout} (in x out), one per {ktxt} kernel position, pooled ESD")
    return MatrixView("kernel-last", k, cout, cin, "per-kernel",
                      f"{k} matrices of {cout}x{cin} (out x in), one per {ktxt} kernel position, pooled ESD")


def _row_blocks(ref: TensorRef, view: MatrixView, chunk_elems: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """(kernel k, first row r0 within matrix k, float32 block [n, cols]) covering every matrix once, in one
    read of the tensor. Blocks may be strided views valid only until the next one."""
    row_len = view.row_len
    for start, x in ref.chunks(max(chunk_elems, row_len), align=row_len):
        q0, nrows = start // row_len, x.size // row_len
        if view.layout == "rows":
            yield 0, q0, x.reshape(nrows, view.cols)
        elif view.layout == "kernel-last":
            x3 = x.reshape(nrows, view.cols, view.kernels)
            for k in range(view.kernels):
                yield k, q0, x3[:, :, k]
        else:
            x2 = x.reshape(nrows, view.cols)
            i = 0
            while i < nrows:  # split the chunk where one kernel's matrix ends and the next begins
                k, r0 = divmod(q0 + i, view.rows)
                n = min(nrows - i, view.rows - r0)
                yield k, r0, x2[i:i + n]
                i += n


@dataclass
class GramState:
    """Running Gram matrices of one tensor's matrices: `gram[k]` is WₖᵀWₖ ("cols", cols×cols) or WₖWₖᵀ ("rows").
    Partial states of the same tensor (disjoint row or column ranges) merge by addition; merge in a fixed
    order for bit-identical results across worker layouts."""

    view: MatrixView
    side: str
    gram: np.ndarray  # [kernels, s, s] float64

    @classmethod
    def empty(cls, view: MatrixView) -> GramState:
        side = "cols" if view.cols <= view.rows else "rows"
        s = view.side
        return cls(view, side, np.zeros((view.kernels, s, s), dtype=np.float64))

    def merge(self, other: GramState) -> GramState:
        if other.view != self.view or other.side != self.side:
            raise ValueError("cannot merge Gram states of different matrices")
        self.gram += other.gram
        return self

    def pack(self) -> dict[str, Any]:
        """Compact picklable form: only the upper triangle of each symmetric Gram."""
        iu = np.triu_indices(self.view.side)
        return {"view": self.view, "side": self.side, "upper": self.gram[:, iu[0], iu[1]].copy()}

    @classmethod
    def unpack(cls, d: dict[str, Any]) -> GramState:
        view: MatrixView = d["view"]
        s = view.side
        g = np.zeros((view.kernels, s, s), dtype=np.float64)
        iu = np.triu_indices(s)
        g[:, iu[0], iu[1]] = d["upper"]
        g[:, iu[1], iu[0]] = d["upper"]
        return cls(view, d["side"], g)

    @property
    def frobenius_sq(self) -> float:
        return float(np.trace(self.gram, axis1=1, axis2=2).sum())

    def eigenvalues(self) -> np.ndarray:
        """Eigenvalues of every matrix, pooled and sorted ascending; rounding negatives clipped to 0."""
        ev = np.concatenate([np.linalg.eigvalsh(g) for g in self.gram])
        ev.sort()
        return np.maximum(ev, 0.0)


def accumulate_gram(ref: TensorRef, view: MatrixView, opts: SpectralOptions | None = None) -> GramState:
    """Stream the tensor once (tall matrices) or once per column panel (wide ones) into its Gram matrices.
    NaN/Inf make a non-finite Gram, which the caller reports ("the tensor has NaN or Inf values"): numpy's
    RuntimeWarning about it would only reach the user's stderr as noise."""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        return _accumulate_gram(ref, view, opts or SpectralOptions())


def _accumulate_gram(ref: TensorRef, view: MatrixView, opts: SpectralOptions) -> GramState:
    st = GramState.empty(view)
    if st.side == "cols":
        for k, _r0, b in _row_blocks(ref, view, opts.chunk_elems):
            b64 = np.array(b, dtype=np.float64)  # contiguous copy: b64.T @ b64 runs as a symmetric rank-k update
            st.gram[k] += b64.T @ b64
        return st
    # Wide matrices: WWᵀ needs every row together, so read column panels of all rows, one pass per panel.
    width = max(1, min(view.cols, opts.panel_elems // (view.kernels * view.rows)))
    for c0 in range(0, view.cols, width):
        c1 = min(view.cols, c0 + width)
        panel = np.empty((view.kernels, view.rows, c1 - c0), dtype=np.float64)
        for k, r0, b in _row_blocks(ref, view, opts.chunk_elems):
            panel[k, r0:r0 + b.shape[0]] = b[:, c0:c1]
        for k in range(view.kernels):
            st.gram[k] += panel[k] @ panel[k].T
        del panel
    return st


@dataclass
class PowerResult:
    lambda_max: float  # largest eigenvalue of WᵀW over all the tensor's matrices (σ_max²)
    frobenius_sq: float
    iterations: int
    converged: bool


def randomized_lambda_max(ref: TensorRef, view: MatrixView, opts: SpectralOptions | None = None) -> PowerResult:
    """σ_max² by block subspace iteration on WₖᵀWₖ with Rayleigh–Ritz, one streamed pass per iteration
    (WᵀW Q = Σᵢ Xᵢᵀ(Xᵢ Q) over row blocks Xᵢ); the start block is Gaussian with a fixed seed. Memory
    O(cols·block) per kernel matrix. The Ritz value is a lower bound that increases to λ_max."""
    opts = opts or SpectralOptions()
    rng = np.random.default_rng(opts.seed)
    p = min(opts.power_block, view.cols)
    q = np.linalg.qr(rng.standard_normal((view.kernels, view.cols, p)))[0]
    prev, est, frob = 0.0, 0.0, 0.0
    it, converged = 0, False
    for it in range(1, opts.power_iters + 1):
        z = np.zeros_like(q)
        fsq = 0.0
        for k, _r0, b in _row_blocks(ref, view, opts.chunk_elems):
            b64 = np.asarray(b, dtype=np.float64)
            z[k] += b64.T @ (b64 @ q[k])
            if it == 1:
                fsq += float(np.einsum("ij,ij->", b64, b64))
        if it == 1:
            frob = fsq
        if not np.isfinite(z).all():
            return PowerResult(float("nan"), frob, it, False)
        ritz = np.linalg.eigvalsh(np.einsum("kcp,kcq->kpq", q, z))  # Qᵀ(WᵀW)Q per kernel
        est = float(ritz[:, -1].max())
        q = np.linalg.qr(z)[0]
        if it > 1 and abs(est - prev) <= opts.power_tol * max(est, 1e-300):
            converged = True
            break
        prev = est
    return PowerResult(max(est, 0.0), frob, it, converged)


# ----------------------------------------------------------------------------------------------------------
# Metrics from the eigenvalues


@dataclass
class PowerLawFit:
    alpha: float
    xmin: float
    ks: float
    tail_count: int
    method: str  # "mle-ks" (Clauset et al.) or "small-n" (WeightWatcher's bias-corrected variant)


def fit_power_law(evals: np.ndarray, opts: SpectralOptions | None = None) -> PowerLawFit | None:
    """Continuous power-law fit of the ESD tail as WeightWatcher 0.7.7 does by default (WW_powerlaw.WWFit):
    for every candidate xmin among the sorted eigenvalues (all but the largest), alpha = 1 + n/Σ ln(λ/xmin)
    over the n eigenvalues λ ≥ xmin, and the KS distance D = max|1 − (λ/xmin)^(1−alpha) − i/n| (i = 0..n−1);
    the xmin with the smallest D wins (Clauset, Shalizi & Newman 2009). Eigenvalues ≤ `fit_min_eval` are
    dropped first. With fewer than 20 eigenvalues, WeightWatcher's small-N rule: alpha = 1 + (n−1)/Σ ln,
    tails of at least 8, xmin minimising D − 0.868/√n. None when fewer than 2 eigenvalues remain."""
    opts = opts or SpectralOptions()
    x = np.sort(np.asarray(evals, dtype=np.float64))
    x = x[np.isfinite(x) & (x > opts.fit_min_eval)]
    n_all = x.size
    if n_all < 2:
        return None
    logx = np.log(x)
    suffix = np.cumsum(logx[::-1])[::-1]  # Σ_{j≥i} ln x_j
    small = n_all < _SMALL_N
    cand = np.arange(n_all - 1)
    if small:
        cand = cand[n_all - cand >= _SMALL_N_MIN_TAIL]
        if cand.size == 0:
            cand = np.array([0])
    elif cand.size > opts.max_xmin_candidates:
        cand = np.unique(np.linspace(0, n_all - 2, opts.max_xmin_candidates).round().astype(np.int64))
    ntail = (n_all - cand).astype(np.float64)
    s = suffix[cand] - ntail * logx[cand]
    with np.errstate(divide="ignore", invalid="ignore"):
        alphas = 1.0 + (ntail - 1.0 if small else ntail) / s
    valid = np.isfinite(alphas) & (alphas > 1.0) & (s > 0)
    ds = np.ones(cand.size)
    # KS distances for many candidates at once: rows = candidates i, columns = eigenvalue index j ≥ lo (the
    # block's first candidate). Columns j < i of a row hold ln(λ_j/xmin_i) ≤ 0 and j − i < 0: clipping both
    # at 0 makes them |0 − 0| = 0, which leaves the row's maximum over j ≥ i as it is (no mask pass). Blocks
    # of ~n/8 candidates skip most of the triangle j < i that a single square block would compute.
    n_tail = n_all - int(cand[0])  # the longest row; cand is never empty here
    block = max(1, min((1 << 17) // n_tail, max(16, -(-cand.size // 8))))  # temporaries <= 1 MiB
    j = np.arange(n_all, dtype=np.float64)
    for b0 in range(0, cand.size, block):
        sl = slice(b0, min(cand.size, b0 + block))
        ok = valid[sl]
        if not ok.any():
            continue
        ci, nt = cand[sl][ok], ntail[sl][ok]
        lo = int(ci[0])
        rel = logx[None, lo:] - logx[ci, None]          # ln(λ_j / xmin_i)
        np.maximum(rel, 0.0, out=rel)
        rel *= (1.0 - alphas[sl][ok])[:, None]
        np.exp(rel, out=rel)
        np.subtract(1.0, rel, out=rel)                  # the fitted CDF 1 − (λ_j/xmin_i)^(1−alpha)
        emp = j[None, lo:] - ci[:, None]
        np.maximum(emp, 0.0, out=emp)
        emp /= nt[:, None]                              # the empirical CDF (j − i)/n
        rel -= emp
        np.abs(rel, out=rel)
        d = ds[sl]
        d[ok] = rel.max(axis=1)
    if small:
        objective = np.where(valid, ds - 0.868 / np.sqrt(ntail), np.inf)
        if not np.isfinite(objective).any():
            return None
        best = int(np.argmin(objective))
    else:
        if not valid.any():
            return None
        best = int(np.argmin(ds))
    return PowerLawFit(float(alphas[best]), float(x[cand[best]]), float(ds[best]), int(ntail[best]),
                       "small-n" if small else "mle-ks")


def _mp_cdf_table(y: float, npts: int = 4097) -> tuple[np.ndarray, np.ndarray]:
    """Grid and CDF of the Marchenko–Pastur law with unit variance and ratio y = M/N ≤ 1 (no mass at 0).
    Integrated in θ with x = a + (b−a)(1−cos θ)/2, which removes the square-root edges."""
    a, b = (1 - math.sqrt(y)) ** 2, (1 + math.sqrt(y)) ** 2
    th = np.linspace(0.0, math.pi, npts)
    xg = a + (b - a) * (1 - np.cos(th)) / 2
    num = ((b - a) / 2) ** 2 * np.sin(th) ** 2
    dens = np.empty_like(th)
    dens[1:] = num[1:] / (2 * math.pi * y * xg[1:])
    dens[0] = dens[1] if a == 0 else 0.0  # at y = 1 the integrand tends to a constant at x = 0
    cdf = np.concatenate([[0.0], np.cumsum((dens[1:] + dens[:-1]) / 2 * np.diff(th))])
    return xg, cdf / cdf[-1]


@dataclass
class MPFit:
    spikes: int
    sigma2: float       # estimated per-entry variance of the bulk
    edge: float         # bulk edge λ+ in eigenvalue units of WᵀW: σ²(√N + √M)²
    threshold: float    # edge plus the Tracy–Widom margin; eigenvalues above it are spikes
    ks: float           # KS distance between the bulk eigenvalues and the fitted MP law


def sorted_median(x: np.ndarray) -> float:
    """np.median of an ascending float64 array, read off its middle: the same value (for an even length the
    mean of the two middle values, (a + b) / 2 as np.mean computes it; NaN, sorted last, gives NaN), without
    np.median's partition and its first-call import of numpy.ma (~30 ms in every worker process)."""
    size = x.size
    if size == 0 or math.isnan(x[-1]):
        return math.nan
    h = size // 2
    return float(x[h]) if size % 2 else float((x[h - 1] + x[h]) / 2.0)


def mp_fit(evals: np.ndarray, n: int, m: int, opts: SpectralOptions | None = None) -> MPFit | None:
    """Marchenko–Pastur bulk and spikes of the ESD of N×M matrices (N ≥ M, Q = N/M ≥ 1).

    With x = λ/N, the bulk of an i.i.d. matrix with entry variance σ² lies below λ+ = σ²(1 + √(1/Q))².
    σ² is estimated robustly from the median: σ² = median(bulk x) / median(MP(1/Q, 1)), the bulk being all
    eigenvalues but the k largest, iterated until the spike count k is stable (the median barely moves with a
    few spikes, unlike ‖W‖²_F/(NM), which they inflate). An eigenvalue is a spike when it exceeds λ+ by more
    than `mp_tw_margin` Tracy–Widom scales σ²(√N+√M)(1/√N+1/√M)^(1/3) (raw units), so that the random
    fluctuation of the largest bulk eigenvalue is not counted. None when the bulk median is 0."""
    opts = opts or SpectralOptions()
    x = np.sort(np.asarray(evals, dtype=np.float64)) / n
    total = x.size
    if total == 0 or n < 1 or m < 1:
        return None
    y = m / n
    xg, cdf = _mp_cdf_table(y)
    med1 = float(np.interp(0.5, cdf, xg))
    tw = (math.sqrt(n) + math.sqrt(m)) * (1 / math.sqrt(n) + 1 / math.sqrt(m)) ** (1 / 3) / n
    k = 0
    sigma2 = edge = thr = 0.0
    for _ in range(50):
        sigma2 = sorted_median(x[:total - k]) / med1
        if sigma2 <= 0:
            return None
        edge = sigma2 * (1 + math.sqrt(y)) ** 2
        thr = edge + opts.mp_tw_margin * sigma2 * tw
        k_new = int(np.count_nonzero(x > thr))
        if k_new == k or k_new >= total // 2:
            k = min(k_new, total // 2)
            break
        k = k_new
    bulk = x[:total - k] / sigma2
    f = np.interp(bulk, xg, cdf)
    i = np.arange(bulk.size)
    ks = float(max(np.max(np.abs(f - i / bulk.size)), np.max(np.abs(f - (i + 1) / bulk.size)))) if bulk.size else 1.0
    return MPFit(k, sigma2, edge * n, thr * n, ks)


def esd_histogram(evals: np.ndarray, bins: int = 64) -> dict[str, Any]:
    """Histogram of log10 λ over the positive eigenvalues: {"edges" (log10 λ), "counts", "zeros"}."""
    ev = np.asarray(evals, dtype=np.float64)
    pos = ev[ev > 0]
    zeros = int(ev.size - pos.size)
    if pos.size == 0:
        return {"edges": [], "counts": [], "zeros": zeros}
    lg = np.log10(pos)
    lo, hi = float(lg.min()), float(lg.max())
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(lg, bins=bins, range=(lo, hi))
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts], "zeros": zeros}


def _opt(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


@dataclass
class SpectralResult:
    """Spectral metrics of one tensor (or, from `combine_layer`, one layer). JSON-friendly: plain floats, ints,
    strings, lists and None. λ are eigenvalues of WᵀW (squared singular values), unnormalised."""

    name: str
    shape: list[int]
    mode: str                    # "matrix", "per-kernel", "flatten" or "layer"
    convention: str
    matrices: int                # matrices whose eigenvalues are pooled
    matrix_shape: list[int]      # [N, M] of each matrix (N ≥ M); a layer of mixed shapes: the largest
    method: str                  # "gram" (full spectrum), "randomized" (σ_max only) or "none"
    n_evals: int = 0
    frobenius_sq: float | None = None
    spectral_norm: float | None = None     # λ_max = σ_max²
    log_spectral_norm: float | None = None  # log10 λ_max
    stable_rank: float | None = None       # ‖W‖²_F / λ_max
    effective_rank: float | None = None    # exp(entropy of σ/Σσ)
    alpha: float | None = None
    alpha_weighted: float | None = None    # alpha · log10 λ_max
    alpha_ks: float | None = None
    xmin: float | None = None
    tail_count: int | None = None
    tail_trusted: bool | None = None       # tail_count ≥ min_tail
    fit_method: str | None = None
    alpha_skipped: str | None = None       # why alpha (and the other full-spectrum metrics) are absent
    mp_spikes: int | None = None
    mp_sigma2: float | None = None
    mp_edge: float | None = None
    mp_threshold: float | None = None
    mp_ks: float | None = None
    looks_random: bool | None = None       # no spikes and the bulk fits MP: an untrained (random) matrix
    esd_histogram: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    # Pooled eigenvalues (ascending), kept for layer pooling and plots; left out of to_dict() by default.
    eigenvalues: list[float] | None = field(default=None, repr=False)

    def stats(self) -> dict[str, float | int | None]:
        return {k: getattr(self, k) for k in SPECTRAL_METRICS}

    def to_dict(self, eigenvalues: bool = False) -> dict[str, Any]:
        """Plain data, independent of this object. Built field by field: dataclasses.asdict deep-copies the
        eigenvalue list only for it to be dropped, which cost more than the spectral pass's own serial work."""
        return {f.name: copy.deepcopy(v) if isinstance(v := getattr(self, f.name), (list, dict)) else v
                for f in fields(self) if eigenvalues or f.name != "eigenvalues"}


def spectral_metrics(res: SpectralResult, evals: np.ndarray, n: int, m: int, frobenius_sq: float,
                     opts: SpectralOptions | None = None) -> SpectralResult:
    """Fill `res` with every metric of the pooled eigenvalues `evals` of matrices of N×M (N ≥ M)."""
    opts = opts or SpectralOptions()
    ev = np.sort(np.maximum(np.asarray(evals, dtype=np.float64), 0.0))
    res.n_evals = int(ev.size)
    res.frobenius_sq = _opt(frobenius_sq)
    res.eigenvalues = [float(v) for v in ev]
    if ev.size == 0 or not np.isfinite(ev).all():
        res.method, res.alpha_skipped = "none", "the tensor has NaN or Inf values"
        res.eigenvalues = None
        return res
    lmax = float(ev[-1])
    res.spectral_norm = lmax
    res.esd_histogram = esd_histogram(ev, opts.hist_bins)
    if lmax <= 0:
        res.alpha_skipped = "the matrix is all zeros"
        res.stable_rank = None  # 0/0: undefined, as on the randomized path
        return res
    res.log_spectral_norm = math.log10(lmax)
    res.stable_rank = float(frobenius_sq / lmax)
    # Eigenvalues below eigvalsh's rounding floor are zero singular values, not tiny ones: for the effective
    # rank, the power-law fit and the MP bulk alike (a rank-1 matrix with lambda_max 1e12 would otherwise get
    # an alpha fitted on rounding noise above the fit's absolute 1e-5 cut)
    floor = lmax * ev.size * 1e-15
    sv = np.sqrt(ev[ev > floor])
    p = sv / sv.sum()
    res.effective_rank = float(np.exp(-np.sum(p * np.log(p))))
    ev = np.where(ev > floor, ev, 0.0)
    fit = fit_power_law(ev, opts)
    if fit is None:
        res.alpha_skipped = f"fewer than 2 eigenvalues above {max(opts.fit_min_eval, floor):g}"
    else:
        res.alpha, res.xmin, res.alpha_ks, res.tail_count = fit.alpha, fit.xmin, fit.ks, fit.tail_count
        res.fit_method = fit.method
        res.alpha_weighted = fit.alpha * res.log_spectral_norm
        res.tail_trusted = fit.tail_count >= opts.min_tail
        if not res.tail_trusted:
            res.notes.append(f"alpha fitted on {fit.tail_count} tail eigenvalues (< {opts.min_tail}): unreliable")
    mp = mp_fit(ev, n, m, opts)
    if mp is not None:
        res.mp_spikes, res.mp_sigma2, res.mp_edge = mp.spikes, mp.sigma2, mp.edge
        res.mp_threshold, res.mp_ks = mp.threshold, mp.ks
        # with fewer than 8 eigenvalues the KS allowance (4/m) reaches 1 and anything would "look random"
        res.looks_random = (mp.spikes == 0 and mp.ks <= max(opts.mp_random_ks, opts.mp_random_ks_scale / m)
                            if m >= 8 else None)
    return res


def _new_result(name: str, shape: Sequence[int], view: MatrixView) -> SpectralResult:
    return SpectralResult(name=name, shape=list(shape), mode=view.mode, convention=view.convention,
                          matrices=view.kernels, matrix_shape=[view.n, view.side], method="gram")


def analyze_tensor(ref: TensorRef, opts: SpectralOptions | None = None, keras: bool = False) -> SpectralResult | None:
    """Spectral metrics of one tensor, streamed. None for a tensor without matrices (rank < 2, empty, not
    floating point). Read errors propagate as the loaders' WdistError. Picklable arguments, so it can be
    mapped over worker processes (e.g. with analyzers.engine.ordered_map)."""
    opts = opts or SpectralOptions()
    view = matrix_view(ref.shape, keras, opts)
    if view is None or not ref.is_float:
        return None
    res = _new_result(ref.name, ref.shape, view)
    if view.side > opts.max_side:
        pw = randomized_lambda_max(ref, view, opts)
        res.method = "randomized"
        res.frobenius_sq = _opt(pw.frobenius_sq)
        res.alpha_skipped = (f"smaller side {view.side} > max_side {opts.max_side}: no full spectrum, so no alpha, "
                             f"effective rank, MP spikes or ESD; spectral norm and stable rank by randomized "
                             f"subspace iteration (block {min(opts.power_block, view.cols)}, {pw.iterations} "
                             f"passes, seed {opts.seed}{'' if pw.converged else ', not converged'})")
        if math.isfinite(pw.lambda_max) and math.isfinite(pw.frobenius_sq):
            res.spectral_norm = pw.lambda_max
            if pw.lambda_max > 0:
                res.log_spectral_norm = math.log10(pw.lambda_max)
                res.stable_rank = pw.frobenius_sq / pw.lambda_max
        else:
            res.method, res.alpha_skipped = "none", "the tensor has NaN or Inf values"
        return res
    st = accumulate_gram(ref, view, opts)
    if not np.isfinite(st.gram).all():
        res.method, res.alpha_skipped = "none", "the tensor has NaN or Inf values"
        return res
    return spectral_metrics(res, st.eigenvalues(), view.n, view.side, st.frobenius_sq, opts)


def combine_layer(name: str, results: Sequence[SpectralResult], opts: SpectralOptions | None = None) -> SpectralResult | None:
    """One layer's spectrum from its tensors' results: a single tensor is passed through (renamed); several
    (e.g. LSTM weight_ih and weight_hh) have their eigenvalues pooled into one ESD, as kernel matrices are,
    with ‖W‖²_F summed and the MP fit done for the largest matrix shape. Randomized-only tensors contribute
    their λ_max and ‖W‖²_F; the pooled alpha is then not computed (said in alpha_skipped)."""
    opts = opts or SpectralOptions()
    results = [r for r in results if r is not None]
    if not results:
        return None
    if len(results) == 1:
        r = results[0]
        return replace(r, name=name, notes=list(r.notes))  # shares the never-mutated eigenvalue list
    shape = max((r.matrix_shape for r in results), key=lambda s: s[0] * s[1])
    res = SpectralResult(name=name, shape=list(shape), mode="layer",
                         convention=f"{len(results)} tensors pooled: " + ", ".join(r.name for r in results),
                         matrices=sum(r.matrices for r in results), matrix_shape=list(shape), method="gram")
    frob = sum(r.frobenius_sq or 0.0 for r in results)
    partial = [r for r in results if r.eigenvalues is None]
    if partial:
        lmax = [r.spectral_norm for r in results if r.spectral_norm is not None]
        res.method = "randomized" if lmax else "none"
        res.frobenius_sq = frob
        res.alpha_skipped = "not every tensor has a full spectrum: " + "; ".join(
            f"{r.name}: {r.alpha_skipped}" for r in partial)
        if lmax and max(lmax) > 0:
            res.spectral_norm = max(lmax)
            res.log_spectral_norm = math.log10(res.spectral_norm)
            res.stable_rank = frob / res.spectral_norm
        return res
    ev = np.concatenate([np.asarray(r.eigenvalues, dtype=np.float64) for r in results])
    res = spectral_metrics(res, ev, shape[0], shape[1], frob, opts)
    # One MP law does not describe matrices of different shapes: spikes add up, the bulk fit is the worst one.
    fits = [r for r in results if r.mp_spikes is not None]
    res.mp_sigma2 = res.mp_edge = res.mp_threshold = None
    res.mp_spikes = sum(r.mp_spikes or 0 for r in fits) if len(fits) == len(results) else None
    res.mp_ks = max((r.mp_ks for r in fits if r.mp_ks is not None), default=None)
    judged = [r.looks_random for r in results]
    res.looks_random = (all(judged) if None not in judged else None) if res.mp_spikes is not None else None
    return res
