"""Hostile and odd HDF5 / Keras files, each built here with h5py: a checkpoint only ever reads itself, walks
are linear in the number of objects, claimed sizes must be backed by stored bytes, and every failure is one
WdistError naming the file."""

from __future__ import annotations

import os
import pickle
import resource
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wdist.loaders import Role, open_checkpoint
from wdist.loaders import keras_loader as kl
from wdist.loaders.errors import CorruptCheckpointError, UnsafeContentError, WdistError

# A value pattern no real weight has: if any of it reaches a report, the other file was read.
SECRET = np.float32(1234.5678) + np.arange(16, dtype=np.float32)


def _k3(path: Path, layers: dict[str, tuple[str, list[np.ndarray]]]) -> None:
    """A Keras 3 .weights.h5 as Keras writes it: layers/<class>/vars/<i>, the layer name in vars' `name`."""
    with h5py.File(path, "w") as h:
        h.create_group("vars").attrs["name"] = "sequential"
        for cls, (name, arrays) in layers.items():
            v = h.create_group(f"layers/{cls}/vars")
            v.attrs["name"] = name
            for i, a in enumerate(arrays):
                v.create_dataset(str(i), data=a)


def _other_file(tmp_path: Path) -> tuple[Path, Path]:
    raw = tmp_path / "secret.bin"
    SECRET.tofile(raw)
    other = tmp_path / "secret.h5"
    with h5py.File(other, "w") as h:
        h["x"] = SECRET
        h.create_group("g")["kernel:0"] = SECRET.reshape(4, 4)
    return raw, other


def _cli(*args: str, limit_mb: int = 0, timeout: float = 60) -> subprocess.CompletedProcess:
    def limit() -> None:
        if limit_mb:
            resource.setrlimit(resource.RLIMIT_AS, (limit_mb << 20, limit_mb << 20))

    return subprocess.run([sys.executable, "-c", "from wdist.cli.main import main; main()", *args],
                          capture_output=True, text=True, timeout=timeout, preexec_fn=limit)


def _assert_refused(r: subprocess.CompletedProcess, path: Path, word: str) -> None:
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"wdist: error: {path}: ") and word in lines[0], r.stderr
    assert "1234.5" not in r.stdout + r.stderr and "Traceback" not in r.stderr


_BOMB = """
import sys, time
from wdist.loaders import open_checkpoint
from wdist.loaders.errors import WdistError
t = time.perf_counter()
try:
    ck = open_checkpoint(sys.argv[1])
    for tr in ck.tensors:
        for _ in tr.chunks():
            pass
    print("LOADED", len(ck.tensors))
except WdistError as e:
    print("REFUSED", e.reason)
print("SECONDS", time.perf_counter() - t)
"""


def _bounded(path: Path, limit_mb: int = 512) -> str:
    """Loads and reads `path` in a child limited to `limit_mb` of address space and 60 s."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit_mb << 20, limit_mb << 20))

    r = subprocess.run([sys.executable, "-c", _BOMB, str(path)], capture_output=True, text=True, timeout=60,
                       preexec_fn=limit)
    assert r.returncode == 0, r.stderr
    out = r.stdout.strip().splitlines()
    assert float(out[-1].split()[1]) < 5, out
    return out[0]


# ---- 1. local-file disclosure ----

@pytest.mark.parametrize("absolute", [True, False])
def test_external_storage_is_refused(tmp_path, absolute):
    raw, _ = _other_file(tmp_path)
    p = tmp_path / "ext.weights.h5"
    _k3(p, {"dense": ("d", [np.ones((4, 4), np.float32)])})
    with h5py.File(p, "a") as h:
        v = h["layers/dense/vars"]
        v.create_dataset("1", shape=(16,), dtype="<f4", external=[(str(raw) if absolute else raw.name, 0, 64)])
    cwd = os.getcwd()
    os.chdir(tmp_path)  # a relative external path is resolved from the working directory
    try:
        with pytest.raises(UnsafeContentError, match="external storage") as e:
            open_checkpoint(str(p))
    finally:
        os.chdir(cwd)
    assert "/layers/dense/vars/1" in e.value.reason
    r = _cli("inspect", str(p), "--format", "json", "--role", "all")
    _assert_refused(r, p, "external")


def test_external_storage_pointing_at_a_fifo_does_not_block(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    p = tmp_path / "fifo.h5"
    _k3(p, {"dense": ("d", [])})
    with h5py.File(p, "a") as h:
        h["layers/dense/vars"].create_dataset("0", shape=(16,), dtype="<f4", external=[(str(fifo), 0, 64)])
    _assert_refused(_cli("ls", str(p), timeout=30), p, "external")


def test_external_link_is_refused_without_opening_the_other_file(tmp_path):
    _, other = _other_file(tmp_path)
    fifo = tmp_path / "fifo.h5"
    os.mkfifo(fifo)  # opening this would block: the test also proves the link target is never opened
    for target in (other, fifo):
        p = tmp_path / f"elink_{target.stem}.weights.h5"
        _k3(p, {"dense": ("d", [np.ones((4, 4), np.float32)])})
        with h5py.File(p, "a") as h:
            h["layers/dense/vars/1"] = h5py.ExternalLink(str(target), "/x")
        _assert_refused(_cli("inspect", str(p), "--role", "all", timeout=30), p, "external link")


def test_external_link_inside_a_keras2_weight_path(tmp_path):
    """weight_names 'ext/kernel:0' passes through an external link: each path component is checked."""
    _, other = _other_file(tmp_path)
    p = tmp_path / "k2.h5"
    with h5py.File(p, "w") as h:
        h.attrs["layer_names"] = [b"dense"]
        g = h.create_group("dense")
        g.attrs["weight_names"] = [b"ext/kernel:0"]
        g["ext"] = h5py.ExternalLink(str(other), "/g")
    with pytest.raises(UnsafeContentError, match="external link"):
        open_checkpoint(str(p))


def test_soft_link_through_an_external_link(tmp_path):
    _, other = _other_file(tmp_path)
    p = tmp_path / "soft.weights.h5"
    _k3(p, {"dense": ("d", [np.ones((4, 4), np.float32)])})
    with h5py.File(p, "a") as h:
        h["elsewhere"] = h5py.ExternalLink(str(other), "/")
        h["layers/dense/vars/1"] = h5py.SoftLink("/elsewhere/x")
    with pytest.raises(UnsafeContentError, match="external link"):
        open_checkpoint(str(p))


def test_soft_link_inside_the_file_is_followed(tmp_path):
    p = tmp_path / "soft_ok.weights.h5"
    k = np.arange(12, dtype=np.float32).reshape(3, 4)
    _k3(p, {"dense": ("d", [k])})
    with h5py.File(p, "a") as h:
        h["layers/dense/vars/1"] = h5py.SoftLink("/layers/dense/vars/0")
    ck = open_checkpoint(str(p))
    assert [t.name for t in ck.tensors] == ["d/kernel"] and ck.tensors[0].aliases == ("d/bias",)
    np.testing.assert_array_equal(ck.tensors[0].read(), k)
    ck.close()
    with h5py.File(p, "a") as h:
        h["loop"] = h5py.SoftLink("/loop")  # a soft link to itself: bounded hops, never followed forever
    with pytest.raises(CorruptCheckpointError, match="soft links nest more than 16"):
        open_checkpoint(str(p))


def test_virtual_dataset_is_refused(tmp_path):
    _, other = _other_file(tmp_path)
    p = tmp_path / "vds.weights.h5"
    _k3(p, {"dense": ("d", [np.ones((4, 4), np.float32)])})
    with h5py.File(p, "a") as h:
        lay = h5py.VirtualLayout(shape=(16,), dtype="f4")
        lay[:] = h5py.VirtualSource(str(other), "x", shape=(16,))
        h["layers/dense/vars"].create_virtual_dataset("1", lay)
    with pytest.raises(UnsafeContentError, match="virtual dataset"):
        open_checkpoint(str(p))
    _assert_refused(_cli("inspect", str(p), "--format", "json"), p, "virtual")


def test_unknown_filter_is_refused(tmp_path):
    """A filter id outside HDF5's built-ins would make HDF5 look for a plug-in library to load."""
    p = tmp_path / "filter.weights.h5"
    _k3(p, {"dense": ("d", [])})
    with h5py.File(p, "a") as h:
        h["layers/dense/vars"].create_dataset("0", data=np.ones((64, 64), np.float32), chunks=(8, 8),
                                              compression=32004, compression_opts=(), allow_unknown_filter=True)
    with pytest.raises(UnsafeContentError, match="filter 32004"):
        open_checkpoint(str(p))


# ---- 2. hard-link DAGs and cycles ----

def test_hard_link_dag_with_2_to_the_40_paths_is_walked_once(tmp_path):
    p = tmp_path / "dag.weights.h5"
    with h5py.File(p, "w") as h:
        nxt = h.create_group("bottom")
        v = nxt.create_group("vars")
        v.attrs["name"] = "leaf"
        v["0"] = np.ones((2, 2), np.float32)
        for i in range(40):  # level i links twice to level i+1: 2^40 paths down to the one dataset
            g = h.create_group(f"level{i}")
            g["a"], g["b"] = nxt, nxt
            nxt = g
        h["layers"] = nxt
        nxt["loop"] = nxt  # and a cycle
        nxt["up"] = h["layers"]
    assert _bounded(p) == "LOADED 1"  # in a child: a walk per path would never end
    assert [t.name for t in open_checkpoint(str(p)).tensors] == ["leaf/var0"]


def test_cycle_through_the_root(tmp_path):
    p = tmp_path / "cycle.weights.h5"
    _k3(p, {"dense": ("d", [np.ones((3, 2), np.float32), np.zeros(2, np.float32)])})
    with h5py.File(p, "a") as h:
        h["layers/dense/root"] = h["/"]
        h["layers/again"] = h["layers"]
    ck = open_checkpoint(str(p))
    assert [t.name for t in ck.tensors] == ["d/kernel", "d/bias"]


def test_depth_is_bounded(tmp_path):
    p = tmp_path / "deep.weights.h5"
    with h5py.File(p, "w") as h:
        g = h.create_group("layers")
        for i in range(kl.MAX_DEPTH + 5):
            g = g.create_group(f"l{i}")
        g.create_group("vars")["0"] = np.ones(2, np.float32)
    with pytest.raises(CorruptCheckpointError, match="nest more than"):
        open_checkpoint(str(p))


# ---- 3. claimed sizes not backed by stored bytes ----

def test_unwritten_huge_dataset(tmp_path):
    p = tmp_path / "unwritten.weights.h5"
    _k3(p, {"dense": ("d", [])})
    with h5py.File(p, "a") as h:
        h["layers/dense/vars"].create_dataset("0", shape=(10**11,), dtype="f4")
    assert p.stat().st_size < 10_000
    out = _bounded(p)
    assert out.startswith("REFUSED") and "never written" in out


def test_chunked_dataset_with_unwritten_chunks(tmp_path):
    p = tmp_path / "sparse_chunks.weights.h5"
    _k3(p, {"dense": ("d", [])})
    with h5py.File(p, "a") as h:
        d = h["layers/dense/vars"].create_dataset("0", shape=(10**11,), dtype="f4", chunks=(1 << 16,))
        d[:10] = 1.0  # one chunk allocated, the rest would read as fill value
    out = _bounded(p)
    assert out.startswith("REFUSED") and "chunks written" in out


def test_huge_chunks_are_refused(tmp_path):
    """HDF5 inflates a whole chunk to read any of it: a 2 GiB chunk of compressed zeros would take 2 GiB."""
    p = tmp_path / "bigchunk.weights.h5"
    _k3(p, {"dense": ("d", [])})
    with h5py.File(p, "a") as h:
        h["layers/dense/vars"].create_dataset("0", shape=(1 << 30,), dtype="f4", chunks=(1 << 29,),
                                              compression="gzip")
    out = _bounded(p)
    assert out.startswith("REFUSED") and "chunks of 2,147,483,648 bytes" in out


def test_empty_dataspace_is_skipped(tmp_path):
    p = tmp_path / "null.weights.h5"
    _k3(p, {"dense": ("d", [np.ones((2, 2), np.float32)])})
    with h5py.File(p, "a") as h:
        h["layers/dense/vars/1"] = h5py.Empty("f4")
    ck = open_checkpoint(str(p))
    assert [t.name for t in ck.tensors] == ["d/kernel"] and "d/bias" in ck.warnings[0]


def test_implausible_compression_ratio(tmp_path):
    """Deflate applied twice squeezes 128 MB of zeros into a few KB: over any real compression ratio."""
    p = tmp_path / "ratio.weights.h5"
    _k3(p, {"dense": ("d", [])})
    with h5py.File(p, "a") as h:
        n, chunk = 32 << 20, 4 << 20
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk((chunk,))
        dcpl.set_deflate(1)
        dcpl.set_deflate(1)
        space = h5py.h5s.create_simple((n,))
        dsid = h5py.h5d.create(h["layers/dense/vars"].id, b"0", h5py.h5t.IEEE_F32LE, space, dcpl=dcpl)
        d = h5py.Dataset(dsid)
        zeros = np.zeros(chunk, np.float32)
        for i in range(0, n, chunk):
            d[i:i + chunk] = zeros
    assert p.stat().st_size < 200_000
    out = _bounded(p)
    assert out.startswith("REFUSED") and "implausible" in out


def test_compressed_real_data_is_accepted(tmp_path):
    p = tmp_path / "gzip.weights.h5"
    k = np.zeros((512, 512), np.float32)
    k[::7] = np.random.default_rng(0).standard_normal((74, 512))
    with h5py.File(p, "w") as h:
        v = h.create_group("layers/dense/vars")
        v.attrs["name"] = "d"
        v.create_dataset("0", data=k, chunks=(64, 64), compression="gzip", shuffle=True)
    ck = open_checkpoint(str(p))
    np.testing.assert_array_equal(ck.tensors[0].read(), k)


def test_contiguous_storage_claims_past_the_end_of_file(tmp_path):
    p = tmp_path / "short.weights.h5"
    _k3(p, {"dense": ("d", [np.ones(1 << 16, np.float32)])})
    size = p.stat().st_size
    with open(p, "r+b") as f:
        f.truncate(size - 100_000)
    with pytest.raises(CorruptCheckpointError):
        ck = open_checkpoint(str(p))
        ck.tensors[0].read()


def test_datasets_sharing_storage_are_refused(tmp_path):
    """Dataset headers pointing at one contiguous block would multiply the work per stored byte."""
    p = tmp_path / "shared.weights.h5"
    nbytes = 1 << 18
    with h5py.File(p, "w") as h:
        v = h.create_group("layers/dense/vars")
        v.attrs["name"] = "d"
        v["0"] = np.ones(nbytes // 4, np.float32)
        for i in range(1, 4):
            v.create_dataset(str(i), shape=(nbytes // 4,), dtype="f4")  # never written: address undefined
    with h5py.File(p, "r") as h:
        a = h["layers/dense/vars/0"].id.get_offset()
    # each unwritten dataset's layout message is (undefined address, size): point it at the first one's data
    data = p.read_bytes()
    layout = b"\xff" * 8 + nbytes.to_bytes(8, "little")
    assert data.count(layout) == 3
    p.write_bytes(data.replace(layout, a.to_bytes(8, "little") + nbytes.to_bytes(8, "little")))
    with h5py.File(p, "r") as h:
        assert [h[f"layers/dense/vars/{i}"].id.get_offset() for i in range(4)] == [a] * 4
    with pytest.raises(CorruptCheckpointError, match="overlapping storage"):
        open_checkpoint(str(p))


# ---- 4. exact flat-range reads ----

def _rchar() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar"))


def test_one_long_row_reads_only_the_requested_range(tmp_path):
    p = tmp_path / "row.weights.h5"
    k = np.arange(1 << 23, dtype=np.float32).reshape(1, -1)  # a (1, 8 Mi) kernel: 32 MB in one row
    _k3(p, {"dense": ("d", [k])})
    t = open_checkpoint(str(p)).tensors[0]
    t.reader.read_raw(0, 16)  # opens the file
    before = _rchar()
    buf = np.empty(4 << 20, np.uint8)
    got = t.reader.read_raw(3 << 20, 1 << 20, out=buf)
    read = _rchar() - before
    np.testing.assert_array_equal(got, k.reshape(-1)[3 << 20: 4 << 20])
    assert read < 5 << 20, read  # 4 MB asked for; the old whole-row read took all 32 MB
    assert np.shares_memory(got, buf)


@st.composite
def _shapes_and_ranges(draw: st.DrawFn) -> tuple[tuple[int, ...], int, int, bool]:
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=4)))
    n = int(np.prod(shape))
    start = draw(st.integers(0, n - 1))
    count = draw(st.integers(1, n - start))
    return shape, start, count, draw(st.booleans())


@given(_shapes_and_ranges())
def test_read_raw_is_exactly_the_flat_range(tmp_path_factory, case):
    shape, start, count, chunked = case
    p = tmp_path_factory.mktemp("slab") / "t.h5"
    a = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    with h5py.File(p, "w") as h:
        h.create_dataset("w", data=a, chunks=tuple(max(1, s // 2) for s in shape) if chunked else None)
    r = kl.H5Reader(str(p), "/w", "float32")
    slabs = kl._flat_slabs(shape, start, start + count)
    assert len(slabs) <= 2 * len(shape) - 1
    np.testing.assert_array_equal(r.read_raw(start, count), a.reshape(-1)[start:start + count])
    buf = np.empty(count * 4 + 8, np.uint8)
    np.testing.assert_array_equal(r.read_raw(start, count, out=buf), a.reshape(-1)[start:start + count])
    assert r.handle is not None
    r.handle.close()


def test_whole_rows_are_one_slab():
    assert kl._flat_slabs((1000, 64, 3), 64 * 3 * 10, 64 * 3 * 500) == [((10, 0, 0), (490, 64, 3))]


def test_big_endian_and_opaque_bf16_reads(tmp_path):
    p = tmp_path / "be.weights.h5"
    k = np.linspace(-1, 1, 60, dtype=">f4").reshape(5, 12)
    bits = (np.linspace(-2, 2, 24, dtype=np.float32).view(np.uint32) >> 16).astype("<u2")
    with h5py.File(p, "w") as h:
        v = h.create_group("layers/dense/vars")
        v.attrs["name"] = "d"
        v["0"] = k
        b = v.create_dataset("1", data=bits.view("V2"))
        b.attrs["dtype"] = "bfloat16"
    by = {t.name: t for t in open_checkpoint(str(p)).tensors}
    np.testing.assert_array_equal(by["d/kernel"].read(), k.astype(np.float32))
    assert by["d/bias"].dtype == "bfloat16"
    np.testing.assert_array_equal(by["d/bias"].reader.read_raw(5, 7), bits[5:12])


# ---- 5. Keras 2 repetition bomb ----

def test_keras2_repeated_layer_names(tmp_path):
    p = tmp_path / "bomb.h5"
    with h5py.File(p, "w", libver="latest") as h:  # dense attribute storage: no 64 KB header limit
        h.attrs["layer_names"] = np.array([b"d"] * 10_000, dtype="S1")
        g = h.create_group("d")
        g.attrs["weight_names"] = np.array([b"k:0"] * 10_000, dtype="S3")
        g["k:0"] = np.ones(4, np.float32)
    assert p.stat().st_size < 100_000
    t = time.perf_counter()
    with pytest.raises(CorruptCheckpointError, match="more than once"):
        open_checkpoint(str(p))
    assert time.perf_counter() - t < 2


def test_keras2_repeated_weight_names(tmp_path):
    p = tmp_path / "bomb2.h5"
    with h5py.File(p, "w") as h:
        h.attrs["layer_names"] = [f"d{i}".encode() for i in range(100)]
        for i in range(100):
            g = h.create_group(f"d{i}")
            g.attrs["weight_names"] = [b"k:0"] * 1000
            g["k:0"] = np.ones(4, np.float32)
    with pytest.raises(CorruptCheckpointError, match="weight_names of layer 'd0' lists 'k:0' more than once"):
        open_checkpoint(str(p))


def test_keras2_names_hard_linked_to_one_dataset_are_aliases(tmp_path):
    p = tmp_path / "alias.h5"
    with h5py.File(p, "w") as h:
        h.attrs["layer_names"] = [b"d"]
        g = h.create_group("d")
        g["k:0"] = np.ones((4, 4), np.float32)
        for i in range(1, 500):
            g[f"k{i}:0"] = g["k:0"]
        g.attrs["weight_names"] = [b"k:0"] + [f"k{i}:0".encode() for i in range(1, 500)]
    ck = open_checkpoint(str(p))
    assert len(ck.tensors) == 1 and len(ck.tensors[0].aliases) == 499  # read once, not 500 times


def test_tensor_count_is_bounded(tmp_path, monkeypatch):
    p = tmp_path / "many.h5"
    with h5py.File(p, "w") as h:
        h.attrs["layer_names"] = [b"d"]
        g = h.create_group("d")
        g.attrs["weight_names"] = [f"k{i}:0".encode() for i in range(300)]
        for i in range(300):
            g[f"k{i}:0"] = np.ones(1, np.float32)
    monkeypatch.setattr(kl, "MAX_TENSORS", 200)
    with pytest.raises(CorruptCheckpointError, match="more than 200 weights"):
        open_checkpoint(str(p))


# ---- 6. Keras 3 sub-models tracked as attributes ----

def _submodel_file(p: Path) -> dict[str, np.ndarray]:
    """What Keras 3 writes for a Model subclass with `self.block1 = Sequential([Conv2D, BatchNormalization])`,
    `self.head = Dense(...)` and an Adam optimizer: one group per attribute, `layers` inside Sequentials."""
    rng = np.random.default_rng(3)
    w = {"conv": rng.standard_normal((3, 3, 3, 8), dtype=np.float32), "head": rng.standard_normal((8, 2), dtype=np.float32)}
    with h5py.File(p, "w") as h:
        h.create_group("vars").attrs["name"] = "my_model"
        h.create_group("block1/vars").attrs["name"] = "sequential"
        c = h.create_group("block1/layers/conv2d/vars")
        c.attrs["name"] = "conv2d"
        c["0"], c["1"] = w["conv"], np.zeros(8, np.float32)
        bn = h.create_group("block1/layers/batch_normalization/vars")
        bn.attrs["name"] = "batch_normalization"
        for i in range(4):
            bn[str(i)] = np.full(8, float(i), np.float32)
        d = h.create_group("head/vars")
        d.attrs["name"] = "dense"
        d["0"], d["1"] = w["head"], np.zeros(2, np.float32)
        o = h.create_group("optimizer/vars")
        o.attrs["name"] = "adam"
        o["0"] = np.int64(10)
        o["1"] = np.float32(0.001)
        o["2"] = np.zeros((3, 3, 3, 8), np.float32)
    return w


def test_keras3_submodels(tmp_path):
    p = tmp_path / "sub.weights.h5"
    w = _submodel_file(p)
    ck = open_checkpoint(str(p))
    by = {t.name: t for t in ck.tensors}
    assert {"block1/conv2d/kernel", "block1/conv2d/bias", "block1/batch_normalization/gamma",
            "block1/batch_normalization/moving_variance", "head/kernel", "head/bias"} <= set(by)
    assert by["block1/conv2d/kernel"].layer == "block1/conv2d" and by["block1/conv2d/kernel"].role is Role.WEIGHT
    assert by["block1/batch_normalization/moving_mean"].role is Role.RUNNING_STAT
    np.testing.assert_array_equal(by["block1/conv2d/kernel"].read(), w["conv"])
    np.testing.assert_array_equal(by["head/kernel"].read(), w["head"])
    opt = [t for t in ck.tensors if t.name.startswith("optimizer/")]
    assert len(opt) == 3 and all(t.role is Role.OPTIMIZER_STATE for t in opt)
    assert ck.variant == "keras3-weights"


def test_keras3_nested_sequential_in_layers(tmp_path):
    p = tmp_path / "nested.weights.h5"
    with h5py.File(p, "w") as h:
        h.create_group("vars").attrs["name"] = "functional"
        h.create_group("layers/sequential/vars").attrs["name"] = "encoder"
        d = h.create_group("layers/sequential/layers/dense/vars")
        d.attrs["name"] = "dense_4"
        d["0"], d["1"] = np.ones((4, 3), np.float32), np.zeros(3, np.float32)
    assert [t.name for t in open_checkpoint(str(p)).tensors] == ["encoder/dense_4/kernel", "encoder/dense_4/bias"]


def test_keras3_same_layer_name_twice_falls_back_to_hdf5_path(tmp_path):
    p = tmp_path / "samename.weights.h5"
    with h5py.File(p, "w") as h:
        h.create_group("layers/attention/vars").attrs["name"] = "attn"
        for attr in ("q", "k"):
            v = h.create_group(f"layers/attention/{attr}/vars")
            v.attrs["name"] = "dense_7"
            v["0"] = np.ones((4, 4), np.float32)
        h["layers/odd/vars"] = h5py.Empty("f")  # a `vars` that is not a group: no variables there
    names = [t.name for t in open_checkpoint(str(p)).tensors]
    assert names == ["attn/dense_7/kernel", "layers/attention/q/kernel"]


def test_keras3_real_fixture_still_reads(ckpts):
    ck = open_checkpoint(str(ckpts["keras3_conv.weights.h5"]))
    assert "stem/kernel" in {t.name for t in ck.tensors}


# ---- 7. per-checkpoint handles ----

def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("name", ["keras2_mlp_epoch1.h5", "keras3_conv.keras"])
def test_close_releases_every_handle_and_reading_again_reopens(ckpts, name):
    before = _fds()
    ck = open_checkpoint(str(ckpts[name]))
    first = [t.read() for t in ck.tensors]
    assert _fds() > before
    ck.close()
    assert _fds() == before
    again = [t.read() for t in ck.tensors]  # reopens, and registers with the checkpoint again
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    with ck:
        pass
    assert _fds() == before
    assert not hasattr(kl, "_H5_CACHE")


def test_refused_file_leaves_no_handle_open(tmp_path):
    p = tmp_path / "unwritten.weights.h5"
    _k3(p, {"dense": ("d", [])})
    with h5py.File(p, "a") as h:
        h["layers/dense/vars"].create_dataset("0", shape=(1000,), dtype="f4")
    before = _fds()
    with pytest.raises(CorruptCheckpointError):
        open_checkpoint(str(p))
    assert _fds() == before


def test_readers_of_one_checkpoint_share_one_handle(ckpts):
    with open_checkpoint(str(ckpts["keras2_lstm.h5"])) as ck:
        assert len({id(t.reader.handle) for t in ck.tensors}) == 1


def test_two_threads_reading_two_files(ckpts):
    paths = [str(ckpts["keras2_mlp_epoch10.h5"]), str(ckpts["keras3_conv.keras"])]
    serial = {p: {t.name: t.read() for t in open_checkpoint(p).tensors} for p in paths}
    got: dict[str, list[dict[str, np.ndarray]]] = {p: [] for p in paths}
    errors: list[BaseException] = []

    def work(p: str) -> None:
        try:
            with open_checkpoint(p) as ck:
                for _ in range(20):
                    got[p].append({t.name: t.read() for t in ck.tensors})
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(p,)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    for p in paths:
        assert len(got[p]) == 20
        for run in got[p]:
            assert run.keys() == serial[p].keys()
            for k in run:
                np.testing.assert_array_equal(run[k], serial[p][k])


def test_threads_sharing_one_checkpoint(ckpts):
    ck = open_checkpoint(str(ckpts["keras3_conv.weights.h5"]))
    want = {t.name: t.read() for t in ck.tensors}
    out: list[bool] = []

    def work() -> None:
        out.append(all(np.array_equal(t.read(), want[t.name]) for _ in range(10) for t in ck.tensors))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    ck.close()
    assert out == [True] * 4


def _read_in_worker(t: object) -> np.ndarray:
    return t.read()  # type: ignore[attr-defined]


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_readers_travel_to_worker_processes(ckpts, method):
    ck = open_checkpoint(str(ckpts["keras3_conv.keras"]))
    t = ck.tensors[0]
    want = t.read()  # the parent's handle is open now; the pickle must not carry it
    state = pickle.loads(pickle.dumps(t.reader.handle))
    assert state._file is None and state.path == t.reader.path
    with ProcessPoolExecutor(1, mp_context=get_context(method)) as ex:
        got = list(ex.map(_read_in_worker, [t, ck.tensors[-1]]))
    np.testing.assert_array_equal(got[0], want)
    np.testing.assert_array_equal(got[1], ck.tensors[-1].read())
    ck.close()


# ---- 8. duplicate zip members ----

def test_keras_archive_with_two_weight_members(ckpts, tmp_path):
    p = tmp_path / "dup.keras"
    shutil.copy(ckpts["keras3_conv.keras"], p)
    with zipfile.ZipFile(ckpts["keras3_conv.keras"]) as src:
        data = src.read("model.weights.h5")
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(p, "a") as z:
        z.writestr("model.weights.h5", data)
    with pytest.raises(CorruptCheckpointError, match="'model.weights.h5' more than once"):
        open_checkpoint(str(p))


# ---- 9. every failure is one error naming the file ----

def _odd(h: h5py.File, kind: str) -> None:
    if kind == "layer_is_dataset":
        h.attrs["layer_names"] = [b"x"]
        h["x"] = [1]
    elif kind == "weight_names_int":
        h.attrs["layer_names"] = [b"x"]
        h.create_group("x").attrs["weight_names"] = 5
    elif kind == "bad_utf8_name":
        v = h.create_group("layers/dense/vars")
        v.attrs["name"] = np.bytes_(b"\xff\xfe")
        v["0"] = np.ones(3, "f4")
    elif kind == "layer_names_empty":
        h.attrs["layer_names"] = [b""]
    elif kind == "model_weights_dataset":
        h["model_weights"] = [1]
    elif kind == "huge_key":  # a 5000-digit variable index: int() would raise; it sorts and loads
        h.create_group("layers/dense/vars")["9" * 5000] = np.ones(3, "f4")


@pytest.mark.parametrize("kind,error", [
    ("layer_is_dataset", "listed but has no group"), ("weight_names_int", "weight '5' of layer 'x' is missing"),
    ("bad_utf8_name", "HDF5 structure is damaged"), ("layer_names_empty", "holds no weight tensors"),
    ("model_weights_dataset", "no Keras weights"), ("huge_key", None), ("truncated", "not a readable HDF5"),
])
def test_odd_files_give_one_error(tmp_path, kind, error):
    p = tmp_path / f"{kind}.weights.h5"
    if kind == "truncated":
        _k3(p, {"dense": ("d", [np.ones((64, 64), np.float32)])})
        p.write_bytes(p.read_bytes()[:3000])
    else:
        with h5py.File(p, "w") as h:
            _odd(h, kind)
    if error is None:
        assert [t.read().size for t in open_checkpoint(str(p)).tensors] == [3]
        return
    with pytest.raises(WdistError) as e:
        open_checkpoint(str(p))
    assert e.value.path == str(p) and error in e.value.reason
    if kind in ("truncated", "bad_utf8_name"):  # and through the CLI: one line, exit 2
        r = _cli("ls", str(p), timeout=60)
        assert r.returncode == 2 and r.stderr.strip() == f"wdist: error: {p}: {e.value.reason}", r.stderr
