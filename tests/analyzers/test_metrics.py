"""Every metric against an exact numpy/scipy computation on the full array."""

from __future__ import annotations

import math

import numpy as np
import pytest
from reference import boundary_share, exact_metrics

from wdist.analyzers.metrics import NearZero, compute
from wdist.analyzers.summary import Summary, summarize_chunk

QUANTILE_RTOL = 2 ** -8  # the README's stated bound for abs_pXX on non-bf16 data
BF16 = "bf16"


def summarize(x: np.ndarray, chunk: int = 4096, exact: bool = False) -> Summary:
    s = Summary(exact_bins=exact)
    x = np.asarray(x, dtype=np.float32).ravel()
    for i in range(0, max(1, x.size), chunk):
        s.merge(summarize_chunk(x[i:i + chunk], exact))
    return s


def to_bf16(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 -> bfloat16, returned as float32 (independent of wdist)."""
    import torch

    return torch.from_numpy(np.asarray(x, dtype=np.float32)).bfloat16().float().numpy()


def to_fp16(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float16).astype(np.float32)


def samples(rng: np.random.Generator) -> dict[str, np.ndarray]:
    sparse = rng.standard_normal(50_000).astype(np.float32)
    sparse[rng.random(50_000) < 0.7] = 0
    return {
        "normal": (rng.standard_normal(60_001) * 0.02 + 0.001).astype(np.float32),
        "uniform": rng.uniform(-0.3, 0.3, 40_000).astype(np.float32),
        "laplace": rng.laplace(0, 0.05, 50_000).astype(np.float32),
        "sparse": sparse,
        "heavy": (rng.standard_t(2.5, 50_000) * 0.01).astype(np.float32),
    }


EXACT_KEYS = ("mean", "std", "min", "max", "abs_mean", "rms", "l2_norm", "zero_fraction", "near_zero_threshold",
              "numel", "finite_count", "nan_count", "inf_count", "hoyer", "kurtosis", "skewness")


def check(got: dict, ref: dict, x: np.ndarray, exact_bins: bool) -> None:
    for k in EXACT_KEYS:
        if ref.get(k) is None:
            assert got[k] is None, k
        else:
            assert got[k] == pytest.approx(ref[k], rel=2e-6, abs=1e-9), k
    for k in ("abs_p50", "abs_p90", "abs_p99", "abs_p999"):
        tol = 1e-12 if exact_bins else QUANTILE_RTOL
        assert got[k] == pytest.approx(ref[k], rel=tol, abs=1e-30), k
    nz_tol = 1e-12 if exact_bins else boundary_share(x, ref["near_zero_threshold"]) + 1e-12
    assert abs(got["near_zero_fraction"] - ref["near_zero_fraction"]) <= nz_tol
    if ref["gini"] is None:
        assert got["gini"] is None
    else:
        assert got["gini"] == pytest.approx(ref["gini"], abs=1e-12 if exact_bins else 2e-3)
        assert got["top1pct_l2_mass"] == pytest.approx(ref["top1pct_l2_mass"], abs=1e-12 if exact_bins else 4e-3)


@pytest.mark.parametrize("kind", ["normal", "uniform", "laplace", "sparse", "heavy"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_random_distributions(rng, kind, dtype):
    x = samples(rng)[kind]
    x = {"float32": x, "bfloat16": to_bf16(x), "float16": to_fp16(x)}[dtype]
    exact = dtype == "bfloat16"
    got = compute(summarize(x, exact=exact), NearZero())
    check(got, exact_metrics(x), x, exact)


def test_reference_points(rng):
    """The reading's reference numbers: normal top-1% mass ~0.085, uniform kurtosis -1.2, Gini 1/3, ..."""
    n = rng.standard_normal(400_000).astype(np.float32)
    u = rng.uniform(-1, 1, 400_000).astype(np.float32)
    lap = rng.laplace(size=400_000).astype(np.float32)
    gn, gu, gl = (compute(summarize(v), NearZero()) for v in (n, u, lap))
    assert gn["top1pct_l2_mass"] == pytest.approx(0.085, abs=0.003)
    assert gn["gini"] == pytest.approx(math.sqrt(2) - 1, abs=0.003) and abs(gn["kurtosis"]) < 0.05
    assert gu["kurtosis"] == pytest.approx(-1.2, abs=0.02) and gu["gini"] == pytest.approx(1 / 3, abs=0.003)
    assert gl["kurtosis"] == pytest.approx(3.0, abs=0.15) and gl["gini"] == pytest.approx(0.5, abs=0.005)


@pytest.mark.parametrize("x", [
    np.zeros(100, np.float32), np.full(50, 0.25, np.float32), np.array([3.5], np.float32),
    np.array([-1.0, 0.0, 2.0, -0.5], np.float32), np.array([], np.float32),
])
def test_crafted(x):
    got = compute(summarize(x, chunk=3), NearZero())
    ref = exact_metrics(x)
    for k in ("numel", "finite_count", "zero_fraction", "mean", "std", "min", "max", "gini", "hoyer", "kurtosis",
              "skewness", "abs_p50", "top1pct_l2_mass", "near_zero_fraction"):
        if ref.get(k) is None:
            assert got[k] is None, k
        else:
            assert got[k] == pytest.approx(ref[k], rel=QUANTILE_RTOL, abs=1e-12), k


def test_non_finite_values_are_counted_and_excluded():
    x = np.array([1.0, np.nan, -2.0, np.inf, 0.0, -np.inf, 4.0], np.float32)
    with np.errstate(all="raise"):
        got = compute(summarize(x, chunk=2), NearZero())
    assert got["nan_count"] == 1 and got["inf_count"] == 2 and got["finite_count"] == 4
    f = np.array([1.0, -2.0, 0.0, 4.0])
    assert got["mean"] == pytest.approx(f.mean()) and got["std"] == pytest.approx(f.std())
    assert got["zero_fraction"] == pytest.approx(1 / 7)
    assert compute(summarize(np.array([np.nan, np.nan], np.float32)), NearZero())["mean"] is None


def test_absolute_near_zero_threshold(rng):
    x = to_bf16(rng.standard_normal(10_000).astype(np.float32))
    got = compute(summarize(x, exact=True), NearZero(abs=0.1))
    assert got["near_zero_threshold"] == 0.1
    assert got["near_zero_fraction"] == pytest.approx((np.abs(x) <= 0.1).mean(), abs=1e-12)


@pytest.mark.parametrize("nz", [NearZero(), NearZero(rel=0.1), NearZero(abs=0.05)])
@pytest.mark.parametrize("exact", [False, True])
def test_compute_with_the_finalised_near_zero_count_is_unchanged(nz, exact):
    """inspect passes finalise's near-zero count to compute: every metric equals compute's own count, and
    Gini / top-1% mass equal the public functions on the same bins."""
    from wdist.analyzers import metrics
    from wdist.analyzers.summary import summarize_chunk

    x = np.random.default_rng(7).laplace(0, 0.02, 3000).astype(np.float32)
    x[:300] = 0.0
    if exact:
        x = (x.view(np.uint32) & 0xFFFF0000).view(np.float32)
    s = summarize_chunk(x, exact)
    ab = metrics.abs_bins(s)
    metrics.finalise(s, nz, ab)
    own, given = metrics.compute(s, nz, ab), metrics.compute(s, nz, ab, s.near_zero)
    assert own == given
    assert own["gini"] == metrics.gini(ab, s.n, exact)
    assert own["top1pct_l2_mass"] == metrics.top_mass(ab, s.n, exact)
