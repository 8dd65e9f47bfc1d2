"""Hostile and odd pickles (issue 11): every file here is built by the test. Each must end as a valid result
or one WdistError naming the path, within a few seconds and ~200 MB (measured in a subprocess)."""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
import torch

from wdist.loaders import open_checkpoint
from wdist.loaders.errors import CorruptCheckpointError, UnsafeContentError, WdistError
from wdist.loaders.safe_pickle import safe_load

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

PROBE = """
import json, resource, sys, time
t = time.perf_counter()
from wdist.loaders import open_checkpoint
from wdist.loaders.errors import WdistError
out = {}
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
try:
    ck = open_checkpoint(sys.argv[1])
    out["tensors"] = len(ck.tensors)
except WdistError as e:
    out["error"] = type(e).__name__
    out["message"] = str(e)
out["seconds"] = time.perf_counter() - t
out["rss_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024  # growth while opening
print(json.dumps(out))
"""


def probe(path: os.PathLike) -> dict:
    """Open the file in a fresh interpreter; report outcome, wall time and peak RSS growth (MB)."""
    r = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def assert_bounded_error(path: os.PathLike, kind: str, match: str) -> dict:
    out = probe(path)
    assert out.get("error") == kind, out
    assert str(path) in out["message"] and match in out["message"], out
    assert out["seconds"] < 10 and out["rss_mb"] < 200, out
    return out


def _torch_zip_with(tmp_path, pkl: bytes, name: str = "evil.pt", compress: int = zipfile.ZIP_STORED):
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    src = zipfile.ZipFile(buf)
    p = tmp_path / name
    with zipfile.ZipFile(p, "w") as z:
        for n in src.namelist():
            if n.endswith("data.pkl"):
                z.writestr(n, pkl, compress_type=compress)
            else:
                z.writestr(n, src.read(n), compress_type=zipfile.ZIP_STORED)
    return p


def hash_bomb() -> bytes:
    """{t64: None} where t0 = () and t_i = (t_{i-1}, t_{i-1}): hashing t64 visits 2^64 nodes."""
    out = bytearray(b"\x80\x02}q\x00)q\x010")
    for i in range(2, 66):
        out += b"h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"\x86q" + bytes([i]) + (b"0" if i < 65 else b"")
    out += b"Ns."
    return bytes(out)


def test_hash_bomb_is_refused_before_hashing(tmp_path):
    data = hash_bomb()
    assert len(data) < 1200
    (tmp_path / "hash.pkl").write_bytes(data)
    assert_bounded_error(tmp_path / "hash.pkl", "CorruptCheckpointError", "dict key")
    assert_bounded_error(_torch_zip_with(tmp_path, data), "CorruptCheckpointError", "dict key")


class _Storage:
    def __init__(self, key: object, dtype: type = torch.FloatStorage, loc: str = "cpu", numel: int = 6,
                 data: bytes | None = None) -> None:
        self.key, self.dtype, self.loc, self.numel, self.data = key, dtype, loc, numel, data


class _Tensor:
    def __init__(self, storage: _Storage, shape: tuple, stride: tuple, offset: object = 0) -> None:
        self.storage, self.shape, self.stride, self.offset = storage, shape, stride, offset

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2,
                (self.storage, self.offset, self.shape, self.stride, False, collections.OrderedDict()))


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", obj.dtype, obj.key, obj.loc, obj.numel, None)
        return None


def _dumps(obj, protocol: int = 2) -> bytes:
    buf = io.BytesIO()
    _Pickler(buf, protocol=protocol).dump(obj)
    return buf.getvalue()


def test_str_bomb_storage_key(tmp_path):
    """A storage key that is a DAG of lists: str() of it would be 2^40 elements long."""
    node: list = []
    for _ in range(40):
        node = [node, node]
    data = _dumps({"w": _Tensor(_Storage(node), (2, 3), (3, 1))})
    assert len(data) < 5000
    assert_bounded_error(_torch_zip_with(tmp_path, data), "CorruptCheckpointError", "storage key")


def test_opcode_flood_is_bounded(tmp_path):
    flood = b"\x80\x02" + b"(1" * 25_000_000 + b"N."  # 50 M opcodes, deflates to ~50 KB
    small = tmp_path / "small.pt"
    small.write_bytes(b"x" * 1000)
    t = time.perf_counter()
    with pytest.raises(CorruptCheckpointError, match="more than 1001000 opcodes") as e:
        safe_load(io.BytesIO(flood), str(small), what="data.pkl")
    assert time.perf_counter() - t < 5 and str(small) in str(e.value)
    p = _torch_zip_with(tmp_path, flood, "flood.pt", zipfile.ZIP_DEFLATED)
    assert p.stat().st_size < 200_000
    out = probe(p)  # refused by the zip reader's size checks or by the opcode limit: bounded either way
    assert "error" in out and str(p) in out["message"] and out["seconds"] < 10 and out["rss_mb"] < 200, out


def test_real_state_dict_is_far_below_the_limits(tmp_path):
    """A 10^4-tensor state dict is 0.3 M opcodes: the limits leave a wide margin (see safe_pickle)."""
    sd = {f"layer{i}.weight": torch.full((2,), float(i)) for i in range(10_000)}
    p = tmp_path / "big.pt"
    torch.save(sd, p)
    ck = open_checkpoint(str(p))
    assert len(ck.tensors) == 10_000 and ck.tensors[-1].read().tolist() == [9999.0, 9999.0]


def _legacy_file(path: os.PathLike, obj: object, storages: list[_Storage]) -> None:
    """A pre-1.6 torch.save file written the way torch 0.4 did: magic, protocol, sys_info, the object
    pickle with persistent storage ids, the sorted storage keys, then each storage as numel + bytes."""
    with open(path, "wb") as f:
        pickle.dump(LEGACY_MAGIC, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
        pickle.dump({"protocol_version": 1001, "little_endian": True,
                     "type_sizes": {"short": 2, "int": 4, "long": 4}}, f, protocol=2)
        _Pickler(f, protocol=2).dump(obj)
        keys = sorted(s.key for s in storages)
        pickle.dump(keys, f, protocol=2)
        for key in keys:
            s = next(s for s in storages if s.key == key)
            f.write(struct.pack("<q", s.numel))
            f.write(s.data or b"")


class _Py2OrderedDict:
    """Reduces as py2's OrderedDict did: OrderedDict([[k, v], ...])."""

    def __init__(self, items: list) -> None:
        self.items = items

    def __reduce__(self):
        return (collections.OrderedDict, ([[k, v] for k, v in self.items],))


def test_legacy_list_of_pairs_ordered_dict_on_cuda(tmp_path):
    w = np.arange(6, dtype=np.float32)
    b = np.array([1.5, -2.0], dtype=np.float32)
    sw = _Storage("94011", torch.cuda.FloatStorage, "cuda:0", 6, w.tobytes())
    sb = _Storage("94012", torch.cuda.FloatStorage, "cuda:0", 2, b.tobytes())
    sd = _Py2OrderedDict([("fc.weight", _Tensor(sw, (2, 3), (3, 1))), ("fc.bias", _Tensor(sb, (2,), (1,)))])
    p = tmp_path / "old.pth"
    _legacy_file(p, sd, [sw, sb])
    assert b"collections\nOrderedDict" in p.read_bytes() and b"cuda:0" in p.read_bytes()
    ck = open_checkpoint(str(p))
    assert ck.format == "torch-legacy" and [t.name for t in ck.tensors] == ["fc.weight", "fc.bias"]
    np.testing.assert_array_equal(ck.tensors[0].read(), w.reshape(2, 3))
    np.testing.assert_array_equal(ck.tensors[1].read(), b)


def test_storages_without_tensors_is_an_error(tmp_path):
    s = _Storage("1", torch.FloatStorage, "cpu", 2, b"\0" * 8)
    p = tmp_path / "lost.pth"
    _legacy_file(p, {"not_a_tensor": s}, [s])  # a bare storage: tensor data, but no tensor
    with pytest.raises(CorruptCheckpointError, match="no tensor") as e:
        open_checkpoint(str(p))
    assert str(p) in str(e.value)


def _plain(tmp_path, name: str, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return p


G_REBUILD = b"ctorch._utils\n_rebuild_tensor_v2\n"
G_STORAGE = b"ctorch\nFloatStorage\n"


@pytest.mark.parametrize("name, data", [
    ("build_on_function", b"\x80\x02" + G_REBUILD + b"}b."),
    ("build_on_storage_type", b"\x80\x02" + G_STORAGE + b"}b."),
    ("setitem_on_function", b"\x80\x02" + G_REBUILD + b"X\x01\x00\x00\x00aKds."),
    ("append_on_storage_type", b"\x80\x02" + G_STORAGE + b"Ka."),
    ("call_an_int", b"\x80\x02K\x01)R."),
    ("huge_text_int", b"\x80\x02I" + b"9" * 5000 + b"\n."),
    ("huge_long4", b"\x80\x02\x8b" + struct.pack("<i", 4000) + b"\x01" * 4000 + b"."),
    ("deep_nesting", b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b"."),
    ("truncated", b"\x80\x02}q\x00X\xff\xff\x00\x00ab"),
    ("stack_underflow", b"\x80\x02\x86."),
])
def test_malformed_pickles_are_one_corrupt_error(tmp_path, name, data):
    p = _plain(tmp_path, name + ".pkl", data)
    with pytest.raises(CorruptCheckpointError) as e:
        open_checkpoint(str(p))
    assert str(p) in str(e.value)


def test_bad_shape_dimension_is_refused(tmp_path):
    for bad in (10 ** 5000, -1, 1 << 62, "3"):
        s = _Storage("0", torch.FloatStorage, "cpu", 6)
        data = _dumps({"w": _Tensor(s, (bad, 3), (3, 1))})
        p = _torch_zip_with(tmp_path, data, "dim.pt")
        with pytest.raises(CorruptCheckpointError, match="dimension|integer|bytes") as e:
            open_checkpoint(str(p))
        assert str(p) in str(e.value)


def test_numpy_pickle_protocol2(tmp_path):
    arrays = {"conv1_w": np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32),
              "conv1_b": np.arange(4, dtype=np.float64), "fc_w": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
              "ids": np.array([1, 2, 3], dtype=np.int64)}
    p = tmp_path / "model_final.pkl"
    with open(p, "wb") as f:
        pickle.dump({"blobs": arrays, "cfg": "some yaml"}, f, protocol=2)
    ck = open_checkpoint(str(p))
    assert ck.format == "torch-legacy" and ck.variant == "numpy-pickle"
    by = {t.name: t for t in ck.tensors}
    assert sorted(by) == sorted(arrays)
    for k, v in arrays.items():
        assert by[k].shape == v.shape
        np.testing.assert_array_equal(by[k].read(), v.astype(np.float32), err_msg=k)


def test_numpy_pickle_py2_latin1_form_reads_by_offset(tmp_path):
    """Py2-era model-zoo files: numpy.core.multiarray._reconstruct, numpy.dtype + BUILD, raw data as a
    py2 str (BINSTRING). Large payloads stay in the file and are read by offset."""
    big = np.arange(300_000, dtype=np.float32)  # 1.2 MB: above the by-offset threshold
    small = np.array([[1, 2], [3, 4]], dtype=np.int32)

    def arr(a: np.ndarray) -> bytes:
        raw = a.tobytes()
        shape = b"(" + b"".join(b"J" + struct.pack("<i", d) for d in a.shape) + b"t"
        head = b"T" + struct.pack("<i", len(raw)) if len(raw) > 255 else b"U" + bytes([len(raw)])
        return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
                b"(K\x01" + shape + b"cnumpy\ndtype\nU\x02" + a.dtype.str[1:].encode() + b"K\x00K\x01\x87R"
                b"(K\x03U\x01<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89" + head + raw + b"tb")

    data = (b"\x80\x02}(U\x03big" + arr(big) + b"U\x05small" + arr(small) + b"U\x04evilcposix\nsystem\n"
            b"U\x02ls\x85Ru.")
    p = _plain(tmp_path, "py2.pkl", data)
    ck = open_checkpoint(str(p))
    assert ck.variant == "numpy-pickle" and ck.unsafe_globals == ["posix.system"]
    by = {t.name: t for t in ck.tensors}
    assert by["big"].reader.__class__.__name__ == "RangeReader"  # read from the file, not held
    np.testing.assert_array_equal(by["big"].read(), big)
    np.testing.assert_array_equal(by["small"].read(), small.astype(np.float32))


def test_numpy_object_arrays_and_other_globals_are_refused(tmp_path):
    p = tmp_path / "obj.pkl"
    with open(p, "wb") as f:
        pickle.dump({"a": np.array([{"x": 1}, None], dtype=object)}, f, protocol=2)
    with pytest.raises(UnsafeContentError, match="numpy.dtype") as e:
        open_checkpoint(str(p))
    assert str(p) in str(e.value)
    q = tmp_path / "mixed.pkl"
    with open(q, "wb") as f:
        pickle.dump({"w": np.ones(3, np.float32), "o": collections.Counter("ab")}, f, protocol=2)
    ck = open_checkpoint(str(q))
    assert [t.name for t in ck.tensors] == ["w"] and ck.unsafe_globals == ["collections.Counter"]


def test_plain_pickle_without_arrays_is_still_refused(tmp_path):
    p = tmp_path / "plain.pkl"
    with open(p, "wb") as f:
        pickle.dump({"a": 1, "b": [1, 2]}, f, protocol=2)
    with pytest.raises(WdistError, match="not a torch.save checkpoint"):
        open_checkpoint(str(p))


@pytest.mark.parametrize("unit", [b"]a", b"}a", b"(la", b"\x8f\x94"])
def test_container_bomb_is_refused_early(tmp_path, unit):
    """2.5 M fresh empty lists/dicts/sets in 5 MB: 8 s and 600 MB before the object budget; now refused
    after MAX_CONTAINERS (see safe_pickle) in about a second."""
    p = _plain(tmp_path, "bomb.pkl", b"\x80\x02]" + unit * 2_500_000 + b".")
    assert_bounded_error(p, "CorruptCheckpointError", "lists, dicts and sets")


@pytest.mark.parametrize("unit", [b")\x85a", b"\x94", b"\x8c\x02ab\x94a", b"(K\x01K\x02K\x03K\x04t\x940"])
def test_allocation_budget_is_absolute(monkeypatch, tmp_path, unit):
    """Tuples, memo entries, strings: bounded by estimated bytes built, whatever the file's size (the real
    limit is 4 GiB; lowered here so the test is quick)."""
    from wdist.loaders import safe_pickle

    monkeypatch.setattr(safe_pickle, "MAX_VM_BYTES", 16 << 20)
    small = _plain(tmp_path, "small.pkl", b"x")
    t = time.perf_counter()
    with pytest.raises(CorruptCheckpointError, match="more than 16 MiB of objects") as e:
        safe_load(io.BytesIO(b"\x80\x02]" + unit * 400_000 + b"."), str(small))
    assert time.perf_counter() - t < 5 and str(small) in str(e.value)


def test_distinct_globals_are_bounded(tmp_path):
    small = _plain(tmp_path, "small.pkl", b"x")
    data = b"\x80\x02" + b"".join(b"cm\nG%d\n0" % i for i in range(10_001)) + b"N."
    with pytest.raises(CorruptCheckpointError, match="more than 10000 distinct globals"):
        safe_load(io.BytesIO(data), str(small))


def test_state_dict_with_adam_is_far_below_the_object_budget(tmp_path):
    """10^4 parameters + Adam state (4 * 10^4 tensors, one state dict per parameter): a tenth of the
    10^5-parameter checkpoint the budget was measured on (100,007 containers, ~0.97 GB estimated)."""
    from wdist.loaders import safe_pickle

    params = [torch.nn.Parameter(torch.full((2,), float(i))) for i in range(10_000)]
    opt = torch.optim.Adam(params, foreach=True)
    for q in params:
        q.grad = torch.ones(2)
    opt.step()
    p = tmp_path / "adam.pt"
    torch.save({"model": {f"l{i}.weight": q.data for i, q in enumerate(params)}, "optim": opt.state_dict()}, p)
    ck = open_checkpoint(str(p))
    assert len(ck.tensors) >= 30_000
    name = next(n for n in zipfile.ZipFile(p).namelist() if n.endswith("data.pkl"))
    src = safe_pickle._Source(safe_pickle.Bounded(io.BytesIO(zipfile.ZipFile(p).read(name))))
    vm = safe_pickle._VM(src, str(p), "data.pkl", {}, False, safe_pickle.MAX_OPCODES)
    vm.run()
    made, spent = vm.built
    assert 10_000 <= made <= safe_pickle.MAX_CONTAINERS // 50, made
    assert spent <= safe_pickle.MAX_VM_BYTES // 20, spent


def test_protocol0_list_frozenset_and_inst():
    """LIST, FROZENSET and INST take their items from the mark before pushing (a protocol-0 list was lost)."""
    obj = {"a": [1, 2], "b": frozenset([3]), "c": collections.OrderedDict(x=1)}
    assert safe_load(io.BytesIO(pickle.dumps(obj, protocol=0)), "p0.pkl").obj == {"a": [1, 2], "b": [],
                                                                                "c": {"x": 1}}
    r = safe_load(io.BytesIO(b"(S'ls'\niposix\nsystem\n."), "inst.pkl")
    assert r.unsafe_globals == ["posix.system"] and r.obj.wdist_args == ("ls",)
