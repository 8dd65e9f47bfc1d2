"""NumPy .npy / .npz through the format plug-in: files written by numpy itself."""

from __future__ import annotations

import numpy as np
import pytest
from cli_helpers import run
from reference import exact_metrics

from wdist.analyzers.inspect import Options, analyse
from wdist.loaders import open_checkpoint
from wdist.loaders.errors import CorruptCheckpointError, UnsupportedFormatError


def _stats(path, chunk=1 << 20):
    rep = analyse(open_checkpoint(str(path)), Options(jobs=1, chunk=chunk))
    return {t.name: t.stats for t in rep.tensors}


@pytest.mark.parametrize("order", ["C", "F"])
def test_npy_in_both_memory_orders(tmp_path, rng, order):
    a = np.asarray(rng.normal(size=(64, 48)).astype(np.float32), order=order)
    a[3] = 0  # a dead output row, which only the right element order finds
    p = tmp_path / "fc.weight.npy"
    np.save(p, a)
    ck = open_checkpoint(str(p))
    assert ck.format == "numpy" and ck.variant == "npy"
    t = ck.tensors[0]
    assert t.shape == (64, 48) and t.dtype == "float32"
    np.testing.assert_array_equal(t.read(), a)
    st = _stats(p, chunk=1000)["fc.weight"]
    ref = exact_metrics(a)
    assert st["dead_units"] == 1 and st["units"] == 64
    assert st["std"] == pytest.approx(ref["std"], rel=2e-6)


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_stored_and_deflated(tmp_path, rng, compressed):
    arrays = {"conv.weight": rng.normal(size=(16, 8, 3, 3)).astype(np.float32),
              "conv.bias": np.zeros(16, np.float32),
              "emb.weight": rng.laplace(size=(300, 40)).astype(np.float16),
              "steps": np.arange(5, dtype=np.int64)}
    p = tmp_path / "model.npz"
    (np.savez_compressed if compressed else np.savez)(p, **arrays)
    ck = open_checkpoint(str(p))
    assert ck.variant == "npz" and sorted(t.name for t in ck.tensors) == sorted(arrays)
    for t in ck.tensors:
        np.testing.assert_array_equal(t.read(), arrays[t.name].astype(np.float32))
    # small chunks walk the deflate stream in many steps
    st = _stats(p, chunk=512)
    for name in ("conv.weight", "emb.weight"):
        ref = exact_metrics(arrays[name])
        assert st[name]["mean"] == pytest.approx(ref["mean"], rel=2e-6, abs=1e-9)
        assert st[name]["kurtosis"] == pytest.approx(ref["kurtosis"], rel=2e-6)


def test_deflated_reads_in_any_order(tmp_path, rng):
    a = rng.normal(size=200_000).astype(np.float32)
    p = tmp_path / "m.npz"
    np.savez_compressed(p, w=a)
    t = open_checkpoint(str(p)).tensors[0]
    for start, count in ((150_000, 1000), (10, 5), (199_990, 10), (0, 200_000)):
        np.testing.assert_array_equal(t.reader.read_raw(start, count), a[start:start + count])


def test_object_and_big_endian_arrays_are_refused(tmp_path):
    p = tmp_path / "obj.npy"
    np.save(p, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(UnsupportedFormatError, match="pickle"):
        open_checkpoint(str(p))
    p = tmp_path / "be.npy"
    np.save(p, np.arange(4, dtype=">f4"))
    with pytest.raises(UnsupportedFormatError, match="big-endian"):
        open_checkpoint(str(p))


def test_truncated_and_lying_files(tmp_path, rng):
    p = tmp_path / "t.npy"
    np.save(p, rng.normal(size=1000).astype(np.float32))
    data = p.read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[:-100])
    with pytest.raises(CorruptCheckpointError, match="needs"):
        open_checkpoint(str(tmp_path / "cut.npy"))
    hdr = data.replace(b"(1000,)", b"(10**12,)".ljust(7)[:7]) if b"(1000,)" in data else data
    (tmp_path / "lie.npy").write_bytes(hdr)
    with pytest.raises(CorruptCheckpointError):
        open_checkpoint(str(tmp_path / "lie.npy"))
    big = data.replace(b"(1000,)", b"(99999999999,)") if b"(1000,)" in data else data
    (tmp_path / "big.npy").write_bytes(big)
    with pytest.raises(CorruptCheckpointError, match="needs"):
        open_checkpoint(str(tmp_path / "big.npy"))


def test_cli_reads_npz(tmp_path, rng):
    p = tmp_path / "m.npz"
    np.savez(p, **{"fc.weight": rng.normal(size=(32, 16)).astype(np.float32)})
    r = run("ls", p)
    assert r.exit_code == 0 and "fc.weight" in r.output
    r = run("inspect", p, "--format", "json")
    assert r.exit_code == 0 and '"format": "numpy"' in r.output
    r = run("ls", p, "--input-format", "numpy")
    assert r.exit_code == 0
