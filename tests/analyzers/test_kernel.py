"""The C kernel against its numpy reference, and both against exact numpy/scipy metrics."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from reference import exact_metrics

from wdist.analyzers import kernel
from wdist.analyzers.diff import Tolerance, pair_chunk
from wdist.analyzers.metrics import NearZero, compute
from wdist.analyzers.summary import Summary, summarize_chunk
from wdist.loaders.dtypes import fp8_table, to_float32

needs_c = pytest.mark.skipif(kernel.native() is None, reason="C kernel not built")

MOMENTS = ("mean", "std", "abs_mean", "rms", "l2_norm", "kurtosis", "skewness", "hoyer")


def both(x: np.ndarray, exact_bins: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[Summary, Summary]:
    monkeypatch.delenv("WDIST_KERNEL", raising=False)
    c = summarize_chunk(x, exact_bins)
    monkeypatch.setenv("WDIST_KERNEL", "numpy")
    n = summarize_chunk(x, exact_bins)
    monkeypatch.delenv("WDIST_KERNEL")
    return c, n


def crafted(rng: np.random.Generator) -> dict[str, tuple[np.ndarray, bool]]:
    base = (rng.standard_normal(200_003) * 0.02).astype(np.float32)
    special = base.copy()
    idx = rng.choice(base.size, 500, replace=False)
    special[idx[:100]] = np.nan
    special[idx[100:200]] = np.inf
    special[idx[200:250]] = -np.inf
    special[idx[250:350]] = 0.0
    special[idx[350:450]] = -0.0
    special[idx[450:]] = np.float32(1e-42) * rng.choice([-1, 1], 50)  # subnormals
    sub = (rng.standard_normal(70_000) * 1e-39).astype(np.float32)  # all subnormal
    bf16 = to_float32((base.view(np.uint32) >> 16).astype(np.uint16), "bfloat16")
    fp16 = to_float32(base.astype(np.float16), "float16")
    fp8 = to_float32(rng.integers(0, 256, 150_000).astype(np.uint8), "float8_e4m3fn")  # includes its NaNs
    e5 = to_float32(rng.integers(0, 256, 150_000).astype(np.uint8), "float8_e5m2")  # NaN and Inf codes
    offset = (rng.standard_normal(300_000) * 1e-3 + 50.0).astype(np.float32)  # |mean| >> std
    blocky = base.copy()
    blocky[:70_000] = np.nan  # a whole block of NaN
    return {"normal": (base, False), "special": (special, False), "subnormal": (sub, False),
            "bf16": (bf16, True), "fp16": (fp16, False), "fp8_e4m3": (fp8, True), "fp8_e5m2": (e5, True),
            "offset": (offset, False), "nan_block": (blocky, False), "tiny": (base[:5], False),
            "zeros": (np.zeros(100_000, np.float32), False), "all_nan": (np.full(1000, np.nan, np.float32), False)}


def test_fp8_fixture_really_has_specials():
    t = fp8_table("float8_e5m2")
    assert np.isnan(t).any() and np.isinf(t).any()


@needs_c
@pytest.mark.parametrize("case", ["normal", "special", "subnormal", "bf16", "fp16", "fp8_e4m3", "fp8_e5m2",
                                  "offset", "nan_block", "tiny", "zeros", "all_nan"])
def test_c_matches_numpy_reference(case, rng, monkeypatch):
    x, exact = crafted(rng)[case]
    c, n = both(x, exact, monkeypatch)
    for f in ("numel", "n", "zeros", "nans", "infs", "exact_bins"):
        assert getattr(c, f) == getattr(n, f), f
    assert np.array_equal(c.hist, n.hist)
    assert (c.sample is None) == (n.sample is None)
    if c.sample is not None:
        assert np.array_equal(c.sample, n.sample)
    if c.n:
        assert (c.min, c.max) == (n.min, n.max)
        scale = max(abs(c.mean), np.sqrt(c.m2 / c.n), 1e-300)
        assert c.mean == pytest.approx(n.mean, rel=1e-12, abs=1e-12 * scale)
        for f, p in (("m2", 2), ("m3", 3), ("m4", 4)):
            tol = 1e-10 * c.n * np.sqrt(c.m2 / c.n + c.mean ** 2) ** p + 1e-300
            assert getattr(c, f) == pytest.approx(getattr(n, f), rel=1e-9, abs=tol), f
        assert c.l1 == pytest.approx(n.l1, rel=1e-12)
    mc, mn = compute(c, NearZero()), compute(n, NearZero())
    for k, v in mc.items():
        assert mn[k] == pytest.approx(v, rel=1e-9, abs=1e-12) if v is not None else mn[k] is None, k


@pytest.mark.parametrize("force_numpy", [False, True])
@pytest.mark.parametrize("case", ["normal", "special", "subnormal", "bf16", "fp16", "offset", "nan_block"])
def test_moments_exact_to_2e6(case, force_numpy, rng, monkeypatch):
    if force_numpy:
        monkeypatch.setenv("WDIST_KERNEL", "numpy")
    x, exact = crafted(rng)[case]
    got, ref = compute(summarize_chunk(x, exact), NearZero()), exact_metrics(x)
    for k in ("numel", "finite_count", "nan_count", "inf_count", "zero_fraction", "min", "max"):
        assert got[k] == ref[k], k
    for k in MOMENTS:
        if ref.get(k) is None:
            continue
        assert got[k] == pytest.approx(ref[k], rel=2e-6, abs=1e-12), k


def test_env_var_selects_numpy_at_call_time(monkeypatch):
    monkeypatch.setenv("WDIST_KERNEL", "numpy")
    assert kernel.native() is None and kernel.backend() == "numpy"
    monkeypatch.setenv("WDIST_KERNEL", "auto")
    assert kernel.backend() == ("c" if kernel.native() is not None else "numpy")


@needs_c
def test_pair_sums_c_matches_numpy(rng, monkeypatch):
    a = (rng.standard_normal(150_001) * 0.02).astype(np.float32)
    b = a + (rng.standard_normal(a.size) * 1e-3).astype(np.float32)
    same = rng.random(a.size) < 0.2
    b[same] = a[same]  # unchanged elements
    a[:10] = np.nan
    b[20:25] = np.inf
    a[30:40] = 0.0
    b[40:45] = -0.0
    tol = Tolerance()
    c = pair_chunk(a, b, tol)
    monkeypatch.setenv("WDIST_KERNEL", "numpy")
    n = pair_chunk(a, b, tol)
    for f in ("n", "both_nonzero", "flips", "changed", "max_abs"):
        assert getattr(c, f) == getattr(n, f), f
    for f in ("aa", "bb", "ab", "dd"):
        assert getattr(c, f) == pytest.approx(getattr(n, f), rel=1e-12), f
    fin = np.isfinite(a) & np.isfinite(b)
    a64, b64 = a[fin].astype(np.float64), b[fin].astype(np.float64)
    assert c.n == fin.sum() and c.dd == pytest.approx(((b64 - a64) ** 2).sum(), rel=1e-12)
    assert c.changed == int((~np.isclose(b[fin], a[fin])).sum())


@needs_c
def test_kernel_threads_give_identical_results(rng):
    """No shared scratch: tensors summarised concurrently in threads match the sequential results."""
    from concurrent.futures import ThreadPoolExecutor

    xs = [(rng.standard_normal(300_000) * s).astype(np.float32) for s in (0.01, 0.1, 1.0, 10.0)]
    seq = [summarize_chunk(x) for x in xs]
    with ThreadPoolExecutor(4) as ex:
        par = list(ex.map(summarize_chunk, xs * 3))
    for i, s in enumerate(par):
        ref = seq[i % 4]
        assert (s.mean, s.m2, s.m3, s.m4, s.l1) == (ref.mean, ref.m2, ref.m3, ref.m4, ref.l1)
        assert np.array_equal(s.hist, ref.hist)


@needs_c
def test_kernel_rejects_bad_buffers():
    k = kernel.native()
    assert k is not None
    with pytest.raises(ValueError):
        k.blocks(np.zeros(10, np.float32), kernel.BLOCK, np.zeros(10, np.int64), np.zeros(8))
    with pytest.raises(ValueError):
        k.pair_blocks(np.zeros(10, np.float32), np.zeros(9, np.float32), kernel.BLOCK, 0.0, 0.0, np.zeros(9))


def test_summary_fields_all_set(rng):
    s = summarize_chunk((rng.standard_normal(1000)).astype(np.float32))
    assert {f.name for f in dataclasses.fields(Summary)} >= {"mean", "m2", "m3", "m4", "l1", "sumsq", "sample"}
    assert s.sumsq == pytest.approx(s.m2 + s.n * s.mean ** 2) and s.sample is not None and s.sample.size == 1000


@pytest.mark.parametrize("force_numpy", [False, True])
@pytest.mark.parametrize("case", ["special", "subnormal", "bf16", "fp16", "fp8_e5m2", "tiny", "zeros", "all_nan"])
def test_small_range_keeps_the_same_summary_packed(case, force_numpy, rng, monkeypatch):
    """A small range (<= SMALL values) runs the kernel without a histogram and makes its bins from the kept
    values: the same counts, rows, sample and metrics as the 65,536-bin path, only packed."""
    from wdist.analyzers.engine import unpack
    from wdist.analyzers.summary import SMALL, RangeAccumulator

    if force_numpy:
        monkeypatch.setenv("WDIST_KERNEL", "numpy")
    x, exact = crafted(rng)[case]
    x = x[:SMALL] if x.size > SMALL else x
    if case == "special":  # the specials are spread over 200,003 values: put some into the first SMALL
        x = x.copy()
        x[[1, 7, 99]] = [np.nan, np.inf, -0.0]
    dense, small = RangeAccumulator(0, exact), RangeAccumulator(0, exact, small=True)
    for acc in (dense, small):
        acc.add(x[: x.size // 3])  # in two chunks, as a tensor's chunks arrive
        acc.add(x[x.size // 3:])
    d, s = dense.result(), small.result()
    assert s.hist.ndim == 2 and d.hist.ndim == 1
    assert np.array_equal(unpack(dataclasses.replace(s)).hist, d.hist)
    for f in dataclasses.fields(Summary):
        if f.name not in ("hist", "sample"):
            assert getattr(s, f.name) == getattr(d, f.name) or (getattr(s, f.name) != getattr(s, f.name)), f.name
    assert np.array_equal(s.sample, d.sample)
    assert compute(s, NearZero()) == compute(d, NearZero())
    with pytest.raises(ValueError, match="at most"):
        small.add(np.zeros(SMALL + 1, np.float32))


@needs_c
def test_kernel_without_histogram_gives_the_same_rows(rng):
    x = rng.standard_normal(200_000).astype(np.float32)
    x[::997] = np.nan
    h = np.zeros(kernel.NBINS, dtype=np.int64)
    a, b = kernel.blocks(x, h, kernel.native()), kernel.blocks(x, np.zeros(0, np.int64), kernel.native())
    assert np.array_equal(a[0], b[0]) and a[1:] == b[1:] and h.sum() == np.isfinite(x).sum()
    with pytest.raises(ValueError, match="bad buffer"):
        kernel.native().blocks(x, kernel.BLOCK, np.zeros(3, np.int64), np.empty((4, kernel.ROW)))


@needs_c
def test_large_call_histogram_matches_bincount(rng):
    """A call of >= 2^20 values counts into two 32-bit tables flushed every 4 Mi values: 5 Mi values with
    NaN, Inf and a third of them ±0 cross a flush and give numpy's exact counts, rows equal to the
    small-call path's."""
    native = kernel.native()
    x = (rng.standard_normal(5 * (1 << 20) + 7) * 0.02).astype(np.float32)
    x[::3] = 0.0  # runs of one bin, in the even and the odd table (the kernel counts them apart)
    x[1::7] = -0.0
    x[rng.choice(x.size, 300, replace=False)] = [np.nan] * 100 + [np.inf] * 100 + [0.0] * 100
    hist = np.zeros(kernel.NBINS, np.int64)
    nb = -(-x.size // kernel.BLOCK)
    rows = np.zeros(nb * kernel.ROW)
    counts = native.blocks(x, kernel.BLOCK, hist, rows)
    ref = np.bincount(x.view(np.uint32) >> 16, minlength=kernel.NBINS)
    ref[0x7f80:0x8000] = 0  # NaN/Inf bins are cleared: the histogram is of finite values
    ref[0xff80:] = 0
    assert np.array_equal(hist, ref)
    assert counts == (int((x == 0).sum()), 100, 100)
    small = np.zeros(kernel.NBINS, np.int64)
    rows_small = np.zeros_like(rows)
    step = 8 * kernel.BLOCK  # calls below 2^20 values: straight into 64-bit bins
    for lo in range(0, x.size, step):
        native.blocks(x[lo:lo + step], kernel.BLOCK, small, rows_small[lo // kernel.BLOCK * kernel.ROW:])
    assert np.array_equal(small, hist) and np.array_equal(rows_small, rows)


@needs_c
def test_block_larger_than_the_buffer_is_one_block(rng):
    """nblocks was (n + block - 1) / block: for block near 2^63 it overflowed to a negative count and the
    rows were silently left unset; any block >= n is one block."""
    native = kernel.native()
    x = rng.standard_normal(37).astype(np.float32)
    a, b = np.zeros(kernel.ROW), np.zeros(kernel.ROW)
    ha, hb = np.zeros(kernel.NBINS, np.int64), np.zeros(kernel.NBINS, np.int64)
    assert native.blocks(x, 2**63 - 1, ha, a) == native.blocks(x, kernel.BLOCK, hb, b)
    assert np.array_equal(a, b) and np.array_equal(ha, hb) and a[0] == 37
    pa, pb = np.zeros(kernel.PAIR_ROW), np.zeros(kernel.PAIR_ROW)
    native.pair_blocks(x, x + 1, 2**63 - 1, 0.0, 0.0, pa)
    native.pair_blocks(x, x + 1, kernel.BLOCK, 0.0, 0.0, pb)
    assert np.array_equal(pa, pb) and pa[0] == 37
