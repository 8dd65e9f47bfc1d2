"""Readings found wrong by a reviewer with crafted checkpoints (pooled pruning gaps, pruned Laplace read as a
pruned normal, one outlier making a tensor "mostly small", a fresh Linear(256, 3) not at init). Each test
builds a checkpoint whose truth is known."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import wdist

torch = pytest.importorskip("torch")


def _pruned_normal(rng: np.random.Generator, n: int, amount: float, std: float = 0.05) -> np.ndarray:
    """Magnitude pruning: the `amount` share of smallest |w| set to 0."""
    w = rng.normal(0, std, n).astype(np.float32)
    w[np.abs(w) <= np.quantile(np.abs(w), amount)] = 0
    return w


def _random_sparse(rng: np.random.Generator, n: int, amount: float) -> np.ndarray:
    """Random (not magnitude) sparsity: zeros anywhere, non-zeros reach down to 0."""
    w = rng.normal(0, 0.05, n).astype(np.float32)
    w[rng.random(n) < amount] = 0
    return w


def _inspect(sd: dict[str, Any]) -> Any:
    return wdist.inspect({k: np.asarray(v) for k, v in sd.items()}, jobs=1)


def _layer(rep: Any, name: str) -> Any:
    return next(lr for lr in rep.layers if lr.name == name)


# --- 1. a pooled pruning gap is claimed only when every member has one --------------------------------------


def test_a_pooled_pruning_gap_needs_every_member_to_have_one() -> None:
    rng = np.random.default_rng(0)
    # two weight matrices of one layer (an LSTM's input and hidden weights): one magnitude-pruned, one not
    sd = {"lstm.weight_ih_l0": _pruned_normal(rng, 65536, 0.8).reshape(256, 256),
          "lstm.weight_hh_l0": _random_sparse(rng, 65536, 0.8).reshape(256, 256)}
    rep = _inspect(sd)
    by = {t.name: t.reading for t in rep.tensors}
    assert by["lstm.weight_ih_l0"].pruning_gap is not None and by["lstm.weight_hh_l0"].pruning_gap is None
    layer = _layer(rep, "lstm")
    assert layer.reading.shape == "sparse"
    text = " ".join(layer.notes)
    assert layer.reading.pruning_gap is None and "nothing below |w|" not in text
    assert layer.reading.pruning_gap_members == [1, 2] and "only 1 of 2 tensors show a magnitude-pruning gap" in text
    # the pooled values really have non-zeros far below the one member's gap
    pooled = np.concatenate([np.abs(v[v != 0]) for v in sd.values()])
    assert pooled.min() < 0.01 * by["lstm.weight_ih_l0"].pruning_gap
    assert rep.reading.shape == "sparse" and "nothing below |w|" not in rep.model.summary
    assert "only 1 of 2 tensors show a magnitude-pruning gap" in rep.model.summary


def test_two_of_three_members_with_a_gap_is_no_pooled_gap() -> None:
    """The old rule claimed a pooled gap when at least half the members had one (2 of 3 here)."""
    rng = np.random.default_rng(1)
    sd = {"a.weight": _pruned_normal(rng, 40000, 0.7).reshape(200, 200),
          "b.weight": _pruned_normal(rng, 40000, 0.9).reshape(200, 200),
          "c.weight": _random_sparse(rng, 40000, 0.8).reshape(200, 200)}
    rep = _inspect(sd)
    assert rep.reading.shape == "sparse"
    assert rep.model.reading is not None and "nothing below |w|" not in rep.model.summary
    assert "only 2 of 3 tensors" in rep.model.summary


def test_a_pooled_gap_when_every_member_has_one_is_the_pools_smallest_nonzero() -> None:
    rng = np.random.default_rng(2)
    sd = {"lstm.weight_ih_l0": _pruned_normal(rng, 65536, 0.8, 0.05).reshape(256, 256),
          "lstm.weight_hh_l0": _pruned_normal(rng, 65536, 0.6, 0.02).reshape(256, 256),
          "lstm.bias_ih_l0": np.zeros(256, np.float32)}  # a bias is not in the shape pool
    rep = _inspect(sd)
    layer = _layer(rep, "lstm")
    gaps = [t.reading.pruning_gap for t in rep.tensors if t.reading.group == "weight"]
    assert all(g is not None for g in gaps)
    assert layer.reading.pruning_gap == min(gaps) and getattr(layer.reading, "pruning_gap_members", None) is None
    true_min = min(float(np.abs(v[v != 0]).min()) for k, v in sd.items() if "weight" in k)
    assert true_min * (1 - 2 ** -7) <= layer.reading.pruning_gap <= true_min
    assert any("nothing below |w|" in n for n in layer.notes)


def test_a_member_too_small_to_judge_counts_through_the_pooled_values() -> None:
    """A 5x5 weight cannot show a gap of its own (< 64 values): the pool keeps its gap only when none of the
    small member's values lie below it."""
    rng = np.random.default_rng(6)
    sd = {"a.weight": _pruned_normal(rng, 40000, 0.8).reshape(200, 200),
          "b.weight": _pruned_normal(rng, 40000, 0.8).reshape(200, 200)}
    gap = min(float(np.abs(v[v != 0]).min()) for v in sd.values())
    below = dict(sd, **{"c.weight": (rng.standard_normal((5, 5)) * 0.1 * gap).astype(np.float32)})
    rep = _inspect(below)
    assert rep.reading.shape == "sparse" and "nothing below |w|" not in rep.model.summary
    assert "only 2 of 3 tensors show a magnitude-pruning gap" in rep.model.summary
    above = dict(sd, **{"c.weight": np.full((5, 5), 3 * gap, np.float32) * np.sign(rng.standard_normal((5, 5)))})
    rep = _inspect({k: v.astype(np.float32) for k, v in above.items()})
    assert "nothing below |w|" in rep.model.summary


# --- 2. magnitude-pruned Laplace weights are not a pruned normal --------------------------------------------


@pytest.mark.parametrize("amount", [0.5, 0.7, 0.8, 0.9])
@pytest.mark.parametrize("nonzeros", [5_000, 10_000, 100_000])
def test_magnitude_pruned_laplace_is_not_a_pruned_normal(amount: float, nonzeros: int) -> None:
    rng = np.random.default_rng(int(100 * amount) + nonzeros)
    n = 100 * round(nonzeros / (1 - amount) / 100)
    lap = rng.laplace(0, 0.05, n).astype(np.float32)
    lap[np.abs(lap) <= np.quantile(np.abs(lap), amount)] = 0
    normal = _pruned_normal(rng, n, amount)
    rep = _inspect({"lap.weight": lap.reshape(-1, 100), "fc.weight": normal.reshape(-1, 100)})
    by = {t.name: t.reading for t in rep.tensors}
    assert by["lap.weight"].shape == "sparse" and by["lap.weight"].pruning_gap is not None
    assert by["lap.weight"].nonzero_shape != "gaussian", by["lap.weight"]
    assert by["fc.weight"].nonzero_shape == "gaussian", by["fc.weight"]


def test_pruned_normals_still_read_gaussian_across_sizes_and_seeds() -> None:
    """The tighter test (the centre-truncated normal's own standard error, not a normal's sqrt(24/k)) must
    not lose pruned normals: 120 tensors, 64 to 39,000 non-zeros, 50% to 99% pruned."""
    rng = np.random.default_rng(3)
    sd = {}
    for amount in (0.5, 0.8, 0.9, 0.95, 0.97, 0.99):
        for n in (4096, 16384, 65536):
            if n * (1 - amount) < 64:
                continue
            for i in range(5):
                sd[f"p{amount}_{n}_{i}.weight"] = _pruned_normal(rng, n, amount, 0.01 * (i + 1)).reshape(-1, 64)
    rep = _inspect(sd)
    wrong = [(t.name, t.reading.nonzero_kurtosis) for t in rep.tensors if t.reading.nonzero_shape != "gaussian"]
    assert not wrong


def test_the_kurtosis_standard_error_of_a_truncated_normal() -> None:
    from wdist.analyzers.verdict import truncated_normal_kurtosis, truncated_normal_kurtosis_sd

    assert truncated_normal_kurtosis_sd(0.0) == pytest.approx(24 ** 0.5, rel=1e-9)  # a normal's sqrt(24)
    rng = np.random.default_rng(4)
    a, k = 1.645, 4000  # 90% pruning
    ks = []
    for _ in range(400):
        z = rng.standard_normal(int(k / 0.1))
        z = z[np.abs(z) > a]
        ks.append(((z - z.mean()) ** 4).mean() / z.var() ** 2 - 3)
    assert np.mean(ks) == pytest.approx(truncated_normal_kurtosis(a), abs=0.005)
    se = truncated_normal_kurtosis_sd(a) / np.sqrt(k)
    assert np.std(ks) == pytest.approx(se, rel=0.15)
    assert se < 0.1 * (24 / k) ** 0.5  # the old tolerance's scale was ten times too wide here


# --- 3. one outlier does not make a tensor "mostly small" ---------------------------------------------------


def test_one_outlier_does_not_make_a_tensor_mostly_small() -> None:
    w = torch.randn(10000, generator=torch.Generator().manual_seed(0))
    w[0] = 1e4
    rep = _inspect({"x.weight": w.reshape(100, 100).numpy()})
    t = rep.tensors[0]
    assert t.stats["near_zero_fraction"] > 0.99  # every other value is below 0.01 x max|w| ...
    assert "outliers" in t.reading.flags and "mostly_small" not in t.reading.flags  # ... but that is the outlier
    assert not any("mostly small" in n for n in t.notes) and any("outlier weights" in n for n in t.notes)
    assert "mostly_small" not in rep.reading.flags and "mostly_small" not in _layer(rep, "x").reading.flags
    # pooled with an ordinary tensor: the summed near-zero share (51%) is the outlier's doing too
    rep = _inspect({"x.weight": w.reshape(100, 100).numpy(),
                    "y.weight": torch.randn(100, 100, generator=torch.Generator().manual_seed(1)).numpy()})
    assert rep.model.stats["near_zero_fraction"] > 0.5
    assert "mostly_small" not in rep.reading.flags and "outliers" in rep.reading.flags


def test_a_genuinely_mostly_small_tensor_stays_mostly_small() -> None:
    rng = np.random.default_rng(5)
    w = (rng.standard_normal(10000) * 1e-6).astype(np.float32)
    big = rng.random(10000) < 0.1
    w[big] = rng.standard_normal(int(big.sum())).astype(np.float32)
    rep = _inspect({"x.weight": w.reshape(100, 100)})
    assert "mostly_small" in rep.tensors[0].reading.flags and "outliers" not in rep.tensors[0].reading.flags
    assert "mostly_small" in rep.reading.flags
    w[0] = 1e4  # with an outlier as well: still mostly small, and the outlier is flagged
    rep = _inspect({"x.weight": w.reshape(100, 100)})
    assert {"mostly_small", "outliers"} <= set(rep.tensors[0].reading.flags)
    assert "mostly_small" in rep.reading.flags


# --- 4. a fresh Linear(256, 3) is at init; its 3-value bias does not veto it ---------------------------------


def _read(tmp_path: Path, sd: dict[str, Any], name: str) -> Any:
    p = tmp_path / f"{name}.pt"
    torch.save({f"fc.{k}": v for k, v in sd.items()}, p)
    return wdist.inspect(str(p), jobs=1)


@pytest.mark.parametrize("seed", range(5))
def test_a_fresh_linear_with_a_3_value_bias_is_at_init(tmp_path: Path, seed: int) -> None:
    torch.manual_seed(seed)
    rep = _read(tmp_path, torch.nn.Linear(256, 3).state_dict(), "fresh")
    by = {t.name: t.reading for t in rep.tensors}
    assert "at_init" in by["fc.weight"].flags and rep.reading.state == "initialised"
    assert "at_init" in _layer(rep, "fc").reading.flags
    assert by["fc.bias"].init_undecided and "at_init" not in by["fc.bias"].flags  # 3 values: not judged


def test_a_trained_linear_with_a_3_value_bias_is_not_at_init(tmp_path: Path) -> None:
    torch.manual_seed(0)
    sd = torch.nn.Linear(256, 3).state_dict()
    scaled = {k: v * 3 for k, v in sd.items()}  # no initialiser gives 3x PyTorch's default at these fans
    rep = _read(tmp_path, scaled, "x3")
    assert "at_init" not in _layer(rep, "fc").reading.flags
    torch.manual_seed(1)
    heavy = {"weight": torch.distributions.StudentT(3.0).sample((3, 256)) * 0.02, "bias": sd["bias"]}
    rep = _read(tmp_path, heavy, "heavy")
    assert "at_init" not in _layer(rep, "fc").reading.flags and rep.reading.state == "trained"
    # weight at init, bias far outside +-1/sqrt(256): the bias was trained (or set), the layer is not at init
    moved = {"weight": sd["weight"], "bias": torch.tensor([0.5, -0.7, 0.9])}
    rep = _read(tmp_path, moved, "bias")
    by = {t.name: t.reading for t in rep.tensors}
    assert not getattr(by["fc.bias"], "init_undecided", False) and "at_init" not in _layer(rep, "fc").reading.flags
    # a weight too small to judge is no init evidence: an undecided bias never makes a layer at init
    torch.manual_seed(0)
    tiny = torch.nn.Linear(4, 3).state_dict()  # 12 weights (< 64) and 3 biases
    rep = _read(tmp_path, tiny, "tiny")
    assert "at_init" not in _layer(rep, "fc").reading.flags
