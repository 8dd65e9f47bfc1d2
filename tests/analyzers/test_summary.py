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
