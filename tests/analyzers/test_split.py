"""Results do not depend on chunk sizes, on element-range task sizes nor on --jobs (bit for bit)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from safetensors.numpy import save_file

from wdist.analyzers import engine, kernel
from wdist.analyzers.diff import compare
from wdist.analyzers.engine import summarize_tensor, task_ranges
from wdist.analyzers.inspect import Options, analyse
from wdist.analyzers.summary import Summary
from wdist.loaders import open_checkpoint

B = kernel.BLOCK


def fields(s: Summary) -> dict:
    out = {}
    for f in dataclasses.fields(Summary):
        v = getattr(s, f.name)
        out[f.name] = v.tobytes() if isinstance(v, np.ndarray) else v
    return out


@pytest.fixture(scope="module")
def tensors(tmp_path_factory: pytest.TempPathFactory) -> dict:
    rng = np.random.default_rng(7)
    w = (rng.standard_t(4, (900, 1000)) * 0.02).astype(np.float32)  # 13.7 blocks, units on axis 0
    w[[3, 450, 899]] = 0.0  # dead rows, one of them across a 4-block task boundary (row 262..)
    w[262, :] = 0.0
    w[100, 5] = np.nan
    k = (rng.standard_normal((1100, 700)) * 0.05 + 0.01).astype(np.float32)  # Keras kernel: units last
    k[:, [0, 374, 699]] = 0.0
    k[5, 6] = np.inf
    p = tmp_path_factory.mktemp("split") / "m.safetensors"
    save_file({"dense.weight": w, "dense.bias": w[0].copy(), "kern": k}, str(p))
    p2 = p.with_name("m2.safetensors")
    w2 = w + (rng.standard_normal(w.shape) * 1e-3).astype(np.float32)
    save_file({"dense.weight": w2, "dense.bias": w[0].copy(), "kern": k * 1.5}, str(p2))
    return {"path": str(p), "path2": str(p2), "w": w, "w2": w2, "k": k}


def refs(path: str) -> dict:
    ck = open_checkpoint(path)
    out = {t.name: t for t in ck.tensors}
    out["kern"] = dataclasses.replace(out["kern"], unit_axis=-1)
    return out


def test_task_ranges_are_fixed_and_aligned():
    assert task_ranges(10) == [(0, 10)]
    r = task_ranges(3 * engine.TASK_ELEMS + 5)
    assert [lo for lo, _ in r] == [0, engine.TASK_ELEMS, 2 * engine.TASK_ELEMS, 3 * engine.TASK_ELEMS]
    assert r[-1][1] == 3 * engine.TASK_ELEMS + 5
    with pytest.raises(ValueError):
        task_ranges(10, 3 * B)


@pytest.mark.parametrize("force_numpy", [False, True])
@pytest.mark.parametrize("name", ["dense.weight", "kern"])
def test_split_and_chunking_give_identical_summaries(tensors, name, force_numpy, monkeypatch):
    if force_numpy:
        monkeypatch.setenv("WDIST_KERNEL", "numpy")
    ref = refs(tensors["path"])[name]
    whole = summarize_tensor(ref, 1 << 20, task=1 << 26)
    want = fields(whole)
    for task in (B, 2 * B, 4 * B):
        for chunk in (1000, 7777, 1 << 17):
            assert len(task_ranges(ref.numel, task)) > 1
            assert fields(summarize_tensor(ref, chunk, task)) == want, (task, chunk)
    x = tensors["w"] if name == "dense.weight" else tensors["k"]
    dead = (x == 0).all(axis=1).sum() if name == "dense.weight" else (x == 0).all(axis=0).sum()
    assert (whole.units, whole.dead_units) == (x.shape[0] if name == "dense.weight" else x.shape[1], dead)
    assert whole.numel == x.size and whole.nans + whole.infs == 1


def test_jobs_1_and_2_identical_json_with_split_tensors(tensors, monkeypatch):
    monkeypatch.setattr(engine, "TASK_ELEMS", 2 * B)  # several tasks per tensor
    monkeypatch.setattr(engine, "PARALLEL_MIN_BYTES", 0)
    ck = open_checkpoint(tensors["path"])
    one = analyse(ck, Options(jobs=1, chunk=10_000)).to_json()
    two = analyse(ck, Options(jobs=2)).to_json()
    assert one == two
    monkeypatch.setattr(engine, "TASK_ELEMS", 1 << 26)
    assert analyse(ck, Options(jobs=1)).to_json() == one  # and the same as without splitting


def test_diff_split_identical(tensors, monkeypatch):
    monkeypatch.setattr(engine, "PARALLEL_MIN_BYTES", 0)
    a, b = open_checkpoint(tensors["path"]), open_checkpoint(tensors["path2"])
    whole = compare(a, b, Options(jobs=1)).to_json()
    monkeypatch.setattr(engine, "TASK_ELEMS", B)
    assert compare(a, b, Options(jobs=2, chunk=5000)).to_json() == whole
    rep = compare(a, b, Options(jobs=1))
    row = next(t for t in rep.tensors if t.name == "dense.weight")
    fin = np.isfinite(tensors["w"]) & np.isfinite(tensors["w2"])
    wa, wb = tensors["w"][fin].astype(np.float64), tensors["w2"][fin].astype(np.float64)
    assert row.change is not None
    assert row.change["rel_l2_change"] == pytest.approx(np.linalg.norm(wb - wa) / np.linalg.norm(wa), rel=1e-10)
    assert row.change["max_abs_change"] == np.abs(wb - wa).max()
