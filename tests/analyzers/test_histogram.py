import numpy as np

from wdist.analyzers import histogram
from wdist.analyzers.summary import summarize_chunk


def test_linear_matches_numpy_histogram(rng):
    x = (rng.standard_normal(100_000) * 0.05).astype(np.float32)
    s = summarize_chunk(x)
    h = histogram.linear(s.hist, False, 0.15, 30)
    edges = np.array(h.edges)
    ref, _ = np.histogram(x, edges)
    # values within one 16-bit bin (2^-7 relative) of an edge may land on the other side of it
    near = sum(int(((np.abs(x) >= abs(e) / (1 + 2 ** -7)) & (np.abs(x) <= abs(e) * (1 + 2 ** -7))).sum()) for e in edges)
    assert np.abs(np.array(h.counts) - ref).sum() <= 2 * near
    edge_near = int(((np.abs(x) >= 0.15 / (1 + 2 ** -7)) & (np.abs(x) <= 0.15 * (1 + 2 ** -7))).sum())
    assert abs(h.underflow - int((x < -0.15).sum())) + abs(h.overflow - int((x > 0.15).sum())) <= edge_near
    assert sum(h.counts) + h.underflow + h.overflow == x.size


def test_linear_exact_for_bf16(rng):
    import torch

    x = torch.from_numpy(rng.standard_normal(50_000).astype(np.float32)).bfloat16().float().numpy()
    s = summarize_chunk(x, exact_bins=True)
    h = histogram.linear(s.hist, True, 2.0, 16)
    ref, _ = np.histogram(x[(x >= -2) & (x <= 2)], np.array(h.edges))
    assert h.counts == ref.tolist()


def test_log_histogram_counts_every_value(rng):
    x = rng.laplace(0, 0.01, 30_000).astype(np.float32)
    x[:100] = 0
    s = summarize_chunk(x)
    h = histogram.log_abs(s.hist, False, per_decade=5, decades=4)
    assert h.zeros == 100
    assert sum(h.counts) + h.underflow + h.overflow + h.zeros == x.size
    lv = np.log10(np.abs(x[x != 0]).astype(np.float64))
    assert h.underflow == int((lv < h.edges[0]).sum()) or abs(h.underflow - int((lv < h.edges[0]).sum())) < 200


def test_symmetric_range_ignores_one_outlier():
    assert histogram.symmetric_range(0.1, 0.3, max_abs=50.0) == 0.3
    assert histogram.symmetric_range(None, 0.0, max_abs=2.0) == 2.0


def _reference(vals: np.ndarray, cnt: np.ndarray, edges: np.ndarray) -> tuple[list[int], int, int]:
    """Independent count: np.histogram of the repeated values (the last bin closed), beyond counted apart."""
    x = np.repeat(vals, cnt)
    inside = x[(x >= edges[0]) & (x <= edges[-1])]
    return np.histogram(inside, edges)[0].tolist(), int((x < edges[0]).sum()), int((x > edges[-1]).sum())


def test_values_on_the_edges_count_as_numpy_counts_them(rng):
    """bf16 values exactly on the first, inner and last edges, beyond both ends, zeros, packed and dense."""
    import torch

    from wdist.analyzers.engine import pack

    edge_vals = [-2.0, -1.5, -1.0, -0.5, 0.0, -0.0, 0.5, 1.0, 2.0, 2.5, -3.0, 1e-30]
    x = np.concatenate([np.array(edge_vals * 3, np.float32), rng.standard_normal(500).astype(np.float32)])
    x = torch.from_numpy(x).bfloat16().float().numpy()
    for small in (False, True):
        s = summarize_chunk(x, exact_bins=True)
        if small:
            pack(s)
            assert s.hist.ndim == 2
        h = histogram.linear(s.hist, True, 2.0, 8)
        assert (h.counts, h.underflow, h.overflow) == _reference(x, np.ones(x.size, np.int64), np.array(h.edges))
        lh = histogram.log_abs(s.hist, True, per_decade=5, decades=3)
        mag = np.abs(x[x != 0]).astype(np.float64)
        assert lh.zeros == int((x == 0).sum())
        assert (lh.counts, lh.underflow, lh.overflow) == _reference(np.log10(mag), np.ones(mag.size, np.int64),
                                                                  np.array(lh.edges))


def test_weighted_bins_match_the_reference(rng):
    for _ in range(50):
        k = int(rng.integers(1, 40))
        vals = np.sort(rng.uniform(-3, 3, k))
        vals[rng.integers(0, k, 3)] = rng.choice([-2.0, 2.0, 0.0])
        cnt = rng.integers(1, 1000, k)
        edges = np.linspace(-2.0, 2.0, int(rng.integers(1, 20)) + 1)
        assert histogram._binned(vals, cnt, edges) == _reference(vals, cnt, edges)
