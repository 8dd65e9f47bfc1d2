"""Change metrics against numpy on full arrays; alignment of names across wrappers and formats."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats as st
import torch
from safetensors.torch import save_file

from wdist.analyzers import distances
from wdist.analyzers.diff import Tolerance, canonical, compare, pair_chunk
from wdist.analyzers.inspect import Options
from wdist.analyzers.summary import summarize_chunk
from wdist.loaders import open_checkpoint


def ref_change(a: np.ndarray, b: np.ndarray, rtol=1e-5, atol=1e-8) -> dict:
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    d = b64 - a64
    nz = (a64 != 0) & (b64 != 0)
    return {"rel_l2_change": np.linalg.norm(d) / np.linalg.norm(a64),
            "cosine": a64 @ b64 / (np.linalg.norm(a64) * np.linalg.norm(b64)),
            "sign_flip_fraction": ((np.sign(a64) != np.sign(b64)) & nz).sum() / nz.sum(),
            "changed_fraction": (~np.isclose(b64, a64, rtol=rtol, atol=atol)).mean(),
            "max_abs_change": np.abs(d).max()}


def test_pair_sums_match_numpy(rng):
    a = rng.standard_normal(10_000).astype(np.float32)
    b = a + 0.1 * rng.standard_normal(10_000).astype(np.float32)
    a[:500] = 0
    p = pair_chunk(a[:3000], b[:3000], Tolerance()).merge(pair_chunk(a[3000:], b[3000:], Tolerance()))
    ref = ref_change(a, b)
    assert np.sqrt(p.dd / p.aa) == pytest.approx(ref["rel_l2_change"], rel=1e-9)
    assert p.ab / np.sqrt(p.aa * p.bb) == pytest.approx(ref["cosine"], rel=1e-9)
    assert p.flips / p.both_nonzero == pytest.approx(ref["sign_flip_fraction"])
    assert p.changed / a.size == pytest.approx(ref["changed_fraction"])
    assert p.max_abs == pytest.approx(ref["max_abs_change"])


def test_distances_match_scipy(rng):
    import torch

    a = torch.from_numpy(rng.standard_normal(20_000).astype(np.float32)).bfloat16().float().numpy()
    b = torch.from_numpy((rng.standard_normal(20_000) * 1.3 + 0.2).astype(np.float32)).bfloat16().float().numpy()
    sa, sb = summarize_chunk(a, True), summarize_chunk(b, True)
    assert distances.ks(sa.hist, sb.hist, True) == pytest.approx(st.ks_2samp(a, b).statistic, abs=1e-12)
    assert distances.wasserstein(sa.hist, sb.hist, True) == pytest.approx(st.wasserstein_distance(a, b), rel=1e-9)
    fa, fb = rng.standard_normal(20_000).astype(np.float32), rng.laplace(size=20_000).astype(np.float32)
    sa, sb = summarize_chunk(fa), summarize_chunk(fb)
    assert distances.ks(sa.hist, sb.hist, False) == pytest.approx(st.ks_2samp(fa, fb).statistic, abs=5e-3)
    assert distances.wasserstein(sa.hist, sb.hist, False) == pytest.approx(st.wasserstein_distance(fa, fb), rel=5e-3)


@pytest.mark.parametrize("name, expect", [("module.features.0.weight", "features.0.weight"),
                                          ("model.module._orig_mod.fc.bias", "fc.bias"), ("fc.weight", "fc.weight")])
def test_canonical_names(name, expect):
    assert canonical(name) == expect


def test_cross_format_diff_with_prefixes_and_mismatches(tmp_path, rng):
    torch.manual_seed(0)
    a = {"features.0.weight": torch.randn(8, 3, 3, 3), "features.0.bias": torch.randn(8),
         "fc.weight": torch.randn(4, 32), "old.weight": torch.randn(3, 3), "frozen.weight": torch.randn(5, 5)}
    b = {f"module.{k}": v + 0.05 * torch.randn_like(v) for k, v in a.items() if k != "old.weight"}
    b["module.fc.weight"] = torch.randn(4, 16)  # reshaped
    b["module.frozen.weight"] = a["frozen.weight"].clone()
    b["module.new.weight"] = torch.randn(2, 2)
    torch.save({"epoch": 1, "state_dict": a}, tmp_path / "a.pt")
    save_file(b, str(tmp_path / "b.safetensors"))
    r = compare(open_checkpoint(str(tmp_path / "a.pt")), open_checkpoint(str(tmp_path / "b.safetensors")),
                Options(jobs=1))
    status = {t.name: t.status for t in r.tensors}
    assert status == {"features.0.weight": "matched", "features.0.bias": "matched", "fc.weight": "shape_changed",
                      "old.weight": "only_a", "frozen.weight": "matched", "new.weight": "only_b"}
    row = next(t for t in r.tensors if t.name == "features.0.weight")
    ref = ref_change(a["features.0.weight"].numpy(), b["module.features.0.weight"].numpy())
    for k, v in ref.items():
        assert row.change[k] == pytest.approx(v, rel=1e-6), k
    assert row.delta["std"] == pytest.approx(row.b["std"] - row.a["std"])
    frozen = next(lr for lr in r.layers if lr.name == "frozen")
    assert frozen.changed_fraction == 0 and any("did not move" in n for n in frozen.notes)
    assert "frozen" in r.summary["least_moved"]
