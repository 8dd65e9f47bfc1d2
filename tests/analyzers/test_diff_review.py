"""diff defects found by the 2026-12-03 review, on pairs whose truth the test knows: a tensor colliding with
another once its prefix is dropped, changed_fraction's denominator, "identical" for a layer that moved
below the tolerance, most/least moved in JSON and text, unmatched tensors in CSV; and API arguments."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from cli_helpers import run
from safetensors.numpy import save_file

import wdist
from wdist.loaders.errors import UsageError


def _save(path, tensors) -> str:
    save_file({k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}, str(path))
    return str(path)


def test_a_tensor_that_collides_without_its_prefix_is_never_dropped(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(8, 4))
    pa = _save(tmp_path / "p.safetensors", {"fc.weight": a, "fc.bias": np.ones(8)})
    pb = _save(tmp_path / "pdup.safetensors", {"fc.weight": 5 * a, "module.fc.weight": a, "fc.bias": np.ones(8)})
    for x, y, side in ((pa, pb, "B"), (pb, pa, "A")):
        rep = wdist.diff(x, y).to_dict()
        names = {t["name"]: t for t in rep["tensors"]}
        assert "module.fc.weight" in names, names.keys()
        assert names["module.fc.weight"]["status"] == ("only_b" if side == "B" else "only_a")
        # the exact name pairs, whatever the key order: fc.weight of A with fc.weight (5a) of B
        assert names["fc.weight"]["status"] == "matched"
        assert names["fc.weight"]["change"]["rel_l2_change"] == pytest.approx(4.0 if side == "B" else 0.8, rel=1e-6)
        assert any(n.startswith(f"{side}: 2 tensors read as fc.weight without their prefix") for n in rep["notes"])


def test_changed_fraction_counts_over_elements_finite_in_both(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.normal(size=(20, 10))
    b = a + 0.5
    b[:19:2, 0] = a[:19:2, 0]  # 10 unchanged elements
    a[0, 1], a[1, 1], a[2, 1] = np.nan, np.inf, -np.inf
    b[3, 1], b[4, 1] = np.nan, np.inf
    b[0, 2] = np.inf
    rep = wdist.diff(_save(tmp_path / "a.safetensors", {"w.weight": a}),
                     _save(tmp_path / "b.safetensors", {"w.weight": b})).to_dict()
    fa, fb = np.asarray(a, np.float32), np.asarray(b, np.float32)
    both = np.isfinite(fa) & np.isfinite(fb)
    changed = ~np.isclose(fb[both], fa[both], rtol=1e-5, atol=1e-8)
    expect = changed.sum() / both.sum()
    assert both.sum() == 194
    assert rep["tensors"][0]["change"]["changed_fraction"] == pytest.approx(expect, rel=1e-12)
    assert rep["layers"][0]["changed_fraction"] == pytest.approx(expect, rel=1e-12)


def test_a_layer_that_moved_below_the_tolerance_is_not_called_identical(tmp_path):
    a = np.linspace(-1, 1, 64).reshape(8, 8)
    pa = _save(tmp_path / "a.safetensors", {"fc.weight": a, "frozen.weight": a})
    pb = _save(tmp_path / "b.safetensors", {"fc.weight": a * (1 + 3e-6), "frozen.weight": a})
    rep = wdist.diff(pa, pb).to_dict()
    layers = {lr["name"]: lr for lr in rep["layers"]}
    assert layers["fc"]["changed_fraction"] == 0 and layers["fc"]["max_abs_change"] > 0
    assert not any("did not move" in n for n in layers["fc"]["notes"])
    assert any(n.startswith("no value changed beyond the tolerance") for n in layers["fc"]["notes"])
    assert layers["frozen"]["notes"] == ["did not move at all between the checkpoints: frozen, or not trained?"]
    assert "1 layer identical in both checkpoints: frozen" in rep["notes"]


def test_most_and_least_moved_agree_between_json_and_text(tmp_path):
    rng = np.random.default_rng(2)
    w = {f"l{i}.weight": rng.normal(size=(4, 4)) for i in range(3)}
    pa = _save(tmp_path / "a.safetensors", {**w, "z.weight": np.zeros((4, 4))})
    # every layer exactly doubles (ties); z is all zero in A: its relative change is undefined
    pb = _save(tmp_path / "b.safetensors", {**{k: 2 * v for k, v in w.items()}, "z.weight": np.ones((4, 4))})
    rep = wdist.diff(pa, pb).to_dict()
    s = rep["summary"]
    assert "z" not in s["most_moved"] and "z" not in s["least_moved"]
    note = next(n for n in rep["notes"] if n.startswith("most moved"))
    assert note.startswith(f"most moved: {s['most_moved'][0]} ") and f"least moved: {s['least_moved'][0]} " in note


def test_csv_per_tensor_lists_every_tensor(tmp_path):
    pa = _save(tmp_path / "a.safetensors", {"l1.weight": np.ones((2, 2)), "l2.weight": np.ones((2, 2)),
                                            "gone.weight": np.ones(3)})
    pb = _save(tmp_path / "b.safetensors", {"l1.weight": 2 * np.ones((2, 2)), "l2.weight": np.ones((4,)),
                                            "new.weight": np.ones(3)})
    r = run("diff", pa, pb, "--format", "csv", "--tensors")
    rows = {row["name"]: row for row in csv.DictReader(io.StringIO(r.output))}
    js = json.loads(run("diff", pa, pb, "--format", "json").output)
    assert set(rows) == {t["name"] for t in js["tensors"]}
    assert rows["gone.weight"]["status"] == "only_a" and rows["new.weight"]["status"] == "only_b"
    assert rows["l2.weight"]["status"] == "shape_changed" and rows["l2.weight"]["rel_l2_change"] == ""


def test_the_api_refuses_what_the_cli_refuses(tmp_path):
    p = _save(tmp_path / "a.safetensors", {"w": np.ones(4)})
    for jobs in (-3, 257, 1.5, True):
        with pytest.raises(UsageError):
            wdist.inspect(p, jobs=jobs)  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        wdist.trend([])


def test_nan_inf_or_a_reshaped_tensor_is_never_called_identical(tmp_path):
    """max |B-A| is over the values finite in both, so a layer whose NaNs appeared, whose Inf went away, or
    one of whose tensors changed shape was "identical in both checkpoints: frozen"."""
    w = np.linspace(-1, 1, 1000)
    w_nan = w.copy()
    w_nan[:10] = np.nan
    w_nan[10:20] = np.inf
    pa = _save(tmp_path / "a.safetensors", {"nan.weight": w, "inf.weight": np.r_[np.inf, 1, 2, 3],
                                            "sh.weight": w, "sh.bias": np.zeros(4), "same.weight": w})
    pb = _save(tmp_path / "b.safetensors", {"nan.weight": w_nan, "inf.weight": np.r_[1.0, 1, 2, 3],
                                            "sh.weight": w, "sh.bias": np.zeros(8), "same.weight": w})
    rep = wdist.diff(pa, pb).to_dict()
    layers = {lr["name"]: lr for lr in rep["layers"]}
    assert all(layers[k]["max_abs_change"] == 0 for k in ("nan", "inf", "sh", "same"))
    assert "1 layer identical in both checkpoints: same" in rep["notes"]
    assert layers["same"]["notes"] == ["did not move at all between the checkpoints: frozen, or not trained?"]
    for k in ("nan", "inf", "sh"):
        assert not any("did not move at all" in n for n in layers[k]["notes"]), k
    assert "non-finite values changed: none in A, 10 NaN and 10 Inf in B" in layers["nan"]["notes"]
    assert "non-finite values changed: 1 Inf in A, none in B" in layers["inf"]["notes"]
    assert any("not all of its tensors are matched" in n for n in layers["sh"]["notes"])
