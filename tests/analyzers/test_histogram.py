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
