"""Merging chunk summaries equals the one-shot summary (property tests)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from wdist.analyzers.metrics import NearZero, compute
from wdist.analyzers.summary import Summary, summarize_chunk

finite = st.floats(-1e4, 1e4, allow_nan=False, width=32)
values = st.one_of(finite, st.just(0.0), st.floats(allow_nan=True, allow_infinity=True, width=32))


def merged(x: np.ndarray, cuts: list[int]) -> Summary:
    s = Summary()
    edges = [0, *sorted(set(c % (x.size + 1) for c in cuts)), x.size]
    for a, b in zip(edges, edges[1:]):
        s.merge(summarize_chunk(x[a:b]))
    return s


@settings(max_examples=150, deadline=None)
@given(arrays(np.float32, st.integers(1, 300), elements=values), st.lists(st.integers(0, 400), max_size=6))
def test_merge_equals_one_shot(x, cuts):
    one = summarize_chunk(x)
    many = merged(x, cuts)
    assert (one.n, one.numel, one.zeros, one.nans, one.infs) == (many.n, many.numel, many.zeros, many.nans, many.infs)
    assert np.array_equal(one.hist, many.hist)
    if one.n:
        assert (one.min, one.max) == (many.min, many.max)
        scale = max(1.0, float(np.abs(x[np.isfinite(x)]).max()))
        assert many.mean == pytest.approx(one.mean, rel=1e-9, abs=1e-9 * scale)
        assert many.m2 == pytest.approx(one.m2, rel=1e-6, abs=1e-6 * scale ** 2)
        assert many.m4 == pytest.approx(one.m4, rel=1e-5, abs=1e-5 * scale ** 4)
        a, b = compute(one, NearZero()), compute(many, NearZero())
        for k in ("abs_p50", "abs_p999", "gini", "near_zero_fraction", "top1pct_l2_mass", "zero_fraction"):
            assert a[k] == pytest.approx(b[k], rel=1e-9, abs=1e-12) if a[k] is not None else b[k] is None


@pytest.mark.parametrize("chunk", [1, 7, 1000, 1 << 20])
def test_result_independent_of_chunk_size(rng, chunk):
    x = (rng.standard_t(3, 20_000) * 0.1).astype(np.float32)
    ref = compute(summarize_chunk(x), NearZero())
    s = Summary()
    for i in range(0, x.size, chunk):
        s.merge(summarize_chunk(x[i:i + chunk]))
    got = compute(s, NearZero())
    for k, v in ref.items():
        assert got[k] == pytest.approx(v, rel=1e-7, abs=1e-12) if v is not None else got[k] is None, k


def _same_part(a, b) -> None:
    """Two Parts are the same: every summary field, the sample, the histogram and the moment rows."""
    fa, fb = vars(a.summary), vars(b.summary)
    assert fa.keys() == fb.keys()
    for k in fa:
        if isinstance(fa[k], np.ndarray) or isinstance(fb[k], np.ndarray):
            np.testing.assert_array_equal(fa[k], fb[k])
            assert fa[k].dtype == fb[k].dtype
        else:
            assert fa[k] == fb[k] or (fa[k] != fa[k] and fb[k] != fb[k]), k
    assert a.subtrees == b.subtrees
    assert (a.alive is None) == (b.alive is None)
    if a.alive is not None:
        np.testing.assert_array_equal(a.alive, b.alive)


@pytest.mark.parametrize("kernel_env", ["", "numpy"])
@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.integers(1, 4096), elements=values), st.booleans())
def test_small_part_equals_the_accumulator(kernel_env, x, exact):
    """The tiny-tensor shortcut returns exactly what the streaming accumulator returns (C and numpy kernel)."""
    import os

    from wdist.analyzers.summary import RangeAccumulator, small_part

    old = os.environ.get("WDIST_KERNEL")
    os.environ["WDIST_KERNEL"] = kernel_env
    try:
        acc = RangeAccumulator(0, exact, small=True)
        acc.add(x)
        _same_part(small_part(x.copy(), exact), acc.part())
    finally:
        if old is None:
            del os.environ["WDIST_KERNEL"]
        else:
            os.environ["WDIST_KERNEL"] = old


def test_small_part_crafted_and_bounds():
    from wdist.analyzers.summary import SMALL, RangeAccumulator, small_part

    x = np.array([0.0, -0.0, 1e-45, -1e-40, 3.4e38, -3.4e38, np.nan, np.inf, -np.inf, 1.5, -2.5], np.float32)
    acc = RangeAccumulator(0, False, small=True)
    acc.add(x)
    p = small_part(x, False)
    _same_part(p, acc.part())
    assert (p.summary.nans, p.summary.infs, p.summary.zeros, p.summary.n) == (1, 2, 2, 8)
    buf = x.copy()
    p = small_part(buf, False)
    buf[:] = 7.0  # the sample is a copy: a reused read buffer cannot change it
    assert p.summary.sample is not None and 7.0 not in p.summary.sample
    for bad in (np.zeros(0, np.float32), np.zeros(SMALL + 1, np.float32)):
        with pytest.raises(ValueError):
            small_part(bad, False)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("shape", [(4, 4), (1,), (3, 0, 2), (64, 64), (8, 3, 3, 3), (64, 65)])
def test_tiny_tensor_shortcut_equals_the_streamed_path(dtype, shape):
    """engine.summarize_range's one-read path for tensors of <= SMALL values gives the Part the chunked
    path gives (dead units included), for a matrix with zero rows and for NaN/Inf."""
    from wdist.analyzers import engine
    from wdist.loaders.memory import from_object
    torch = pytest.importorskip("torch")

    g = torch.Generator().manual_seed(0)
    t = torch.randn(shape, generator=g).to(getattr(torch, dtype))
    if t.numel() > 4:
        t.view(-1)[:4] = 0.0
        t.view(-1)[5] = float("nan")
        if t.ndim >= 2:
            t[0].zero_()
    ref = from_object({"m.weight": t}).tensors[0]
    if not 0 < ref.numel <= engine.SMALL:
        assert ref.numel == 0 or ref.numel > engine.SMALL
        return
    streamed = engine.TensorAccumulator(ref, 0)
    for start, x in engine.range_chunks(ref, 0, ref.numel, 7 * 64, streamed.align):
        streamed.add(start, x)
    _same_part(engine.summarize_range(ref, 0, ref.numel), streamed.part())


@pytest.mark.parametrize("case", ["gauss", "nan_only", "empty", "big", "dense", "with_units"])
def test_one_part_combine_equals_the_general_combine(case):
    """combine()'s shortcut for one Part with one subtree gives the general path's Summary field by field."""
    from wdist.analyzers.summary import Part, RangeAccumulator, _combine, _combine_one

    rng = np.random.default_rng(3)
    x = {"gauss": rng.standard_normal(1000), "nan_only": np.full(9, np.nan), "empty": np.zeros(0),
         "big": rng.standard_normal(70_000), "dense": rng.standard_normal(5000),
         "with_units": rng.standard_normal(64)}[case].astype(np.float32)
    acc = RangeAccumulator(0, False, small=x.size <= 4096)
    acc.add(x)
    p = acc.part()
    if case == "with_units":
        p.summary.units, p.summary.dead_units, p.summary.tensors, p.summary.zn = 8, 2, 1, -0.0
    parts = [p]
    if len(p.subtrees) != 1:  # 70,000 values: two blocks, the general path only
        assert case in ("big", "empty")
        return
    got, want = _combine_one(p.summary, p.subtrees[0][1]), _combine([Part(p.summary, p.subtrees)])
    for k, v in vars(want).items():
        g = getattr(got, k)
        if isinstance(v, np.ndarray) or v is None:
            assert (g is None) == (v is None), k
            if v is not None:
                np.testing.assert_array_equal(g, v)
                assert g.dtype == v.dtype
        else:
            assert type(g) is type(v) and (g == v or (g != g and v != v)), k
            assert np.copysign(1.0, g) == np.copysign(1.0, v), k
    assert parts[0] is p
