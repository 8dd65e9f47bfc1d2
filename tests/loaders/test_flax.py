"""Flax msgpack files: fixtures written once by flax 0.12.8 / jax 0.10.2 (tests/data/formats/make_fixtures.py),
plus files built here with the msgpack package in flax's exact encoding for the edge cases."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import msgpack
import numpy as np
import pytest
from cli_helpers import run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wdist.analyzers.inspect import Options, analyse
from wdist.loaders import Role, open_checkpoint
from wdist.loaders.errors import CorruptCheckpointError, WdistError
from wdist.loaders.fmt_flax import PLUGIN, ConcatReader, sniff

FLAX = Path(__file__).parent.parent / "data" / "formats" / "flax"
STATE = FLAX / "cnn_state.msgpack"
CHUNKED = FLAX / "chunked.msgpack"
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def nd(arr: np.ndarray, dtype_name: str | None = None) -> msgpack.ExtType:
    """flax.serialization._ndarray_to_bytes: ext 1 holding msgpack [shape, dtype name, C-order bytes]."""
    return msgpack.ExtType(1, msgpack.packb((arr.shape, dtype_name or arr.dtype.name, arr.tobytes("C")),
                                            use_bin_type=True))


def write(path: Path, tree: object) -> Path:
    path.write_bytes(msgpack.packb(tree, use_bin_type=True))
    return path


def test_train_state_names_roles_values():
    ck = PLUGIN.load(str(STATE))
    assert ck.format == "flax-msgpack" and ck.variant == "train-state"
    assert ck.metadata == {"step": 7}
    by = {t.name: t for t in ck.tensors}
    exp = np.load(FLAX / "cnn_state_expected.npz")
    for name in exp:
        np.testing.assert_array_equal(by[name].read(), exp[name].astype(np.float32), err_msg=name)
    assert by["params/Dense_0/kernel"].role is Role.WEIGHT and by["params/Dense_0/kernel"].unit_axis == 1
    assert by["params/Conv_0/kernel"].unit_axis == 3 and by["params/Conv_0/kernel"].layer == "params/Conv_0"
    assert by["params/Dense_0/bias"].role is Role.BIAS
    assert by["params/LayerNorm_0/scale"].role is Role.NORM and by["params/LayerNorm_0/bias"].role is Role.NORM
    assert by["params/BatchNorm_0/scale"].role is Role.NORM and by["params/BatchNorm_0/bias"].role is Role.NORM
    assert by["params/Embed_0/embedding"].role is Role.EMBEDDING
    assert by["batch_stats/BatchNorm_0/mean"].role is Role.RUNNING_STAT
    assert by["params/Dense_1/kernel"].dtype == "bfloat16"
    opt = [t for t in ck.tensors if t.role is Role.OPTIMIZER_STATE]
    assert len(opt) == 23 and all(t.name.startswith("opt_state/0/") for t in opt)  # count + mu + nu
    assert by["opt_state/0/mu/Dense_0/kernel"].shape == (144, 5)


def test_chunked_array_form():
    ck = PLUGIN.load(str(CHUNKED))
    assert ck.variant == "params, chunked arrays"
    k = next(t for t in ck.tensors if t.name == "params/Dense_0/kernel")
    assert isinstance(k.reader, ConcatReader) and len(k.reader.pieces) == 3  # 160 bytes in 64-byte pieces
    np.testing.assert_array_equal(k.read(), np.arange(40, dtype=np.float32).reshape(8, 5))
    got = np.concatenate([c.copy() for _, c in k.chunks(max_elems=7)])
    np.testing.assert_array_equal(got, np.arange(40, dtype=np.float32))


def test_dtypes_and_scalars(tmp_path):
    rng = np.random.default_rng(0)
    bf = (rng.normal(size=(3, 2)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    tree = {"params": {"a": {"kernel": nd(rng.normal(size=(2, 3)).astype(np.float16)),
                             "q": nd(np.arange(-3, 3, dtype=np.int8)), "m": nd(np.array([True, False])),
                             "b": nd(bf, "bfloat16"), "d": nd(rng.normal(size=(4,)))}},
            "step": msgpack.ExtType(3, msgpack.packb(((), "int64", np.int64(12).tobytes()), use_bin_type=True)),
            "note": "hello", "lr": 0.5}
    ck = PLUGIN.load(str(write(tmp_path / "t.msgpack", tree)))
    by = {t.name: t for t in ck.tensors}
    assert {n: t.dtype for n, t in by.items()} == {
        "params/a/kernel": "float16", "params/a/q": "int8", "params/a/m": "bool", "params/a/b": "bfloat16",
        "params/a/d": "float64", "step": "int64"}
    np.testing.assert_array_equal(by["params/a/b"].read(), (bf.astype(np.uint32) << 16).view(np.float32))
    np.testing.assert_array_equal(by["params/a/q"].read(), np.arange(-3, 3, dtype=np.float32))
    assert by["step"].read().tolist() == 12.0 and by["step"].shape == ()
    assert ck.metadata == {"note": "hello", "lr": 0.5}


def test_loading_holds_no_array_bytes(tmp_path):
    big = np.arange(4 << 20, dtype=np.float32)  # 16 MB in one array
    p = write(tmp_path / "big.msgpack", {"params": {"Dense_0": {"kernel": nd(big.reshape(1024, -1))}}})
    tracemalloc.start()
    ck = PLUGIN.load(str(p))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20, peak
    t = ck.tensors[0]
    np.testing.assert_array_equal(t.reader.read_raw(1_000_000, 3), big[1_000_000:1_000_003])


def test_malformed_files_are_one_typed_error(tmp_path):
    good = STATE.read_bytes()
    deep = b"\x81\xa1a" * 300 + b"\xc0"
    cases = {
        "truncated": good[:-100],
        "trailing": good + b"\x00",
        "huge_array": b"\x81\xa1a\xdd\xff\xff\xff\xff",
        "huge_bin": b"\x81\xa1a\xc6\xff\xff\xff\xf0",
        "deep": deep,
        "bad_type_byte": b"\x81\xa1a\xc1",
        "bad_size": msgpack.packb({"a": msgpack.ExtType(1, msgpack.packb(((2, 2), "float32", b"\x00" * 12)))}),
        "bad_dtype": msgpack.packb({"a": msgpack.ExtType(1, msgpack.packb(((1,), "object", b"\x00" * 8)))}),
        "not_a_map": msgpack.packb([1, 2, 3]),
        "bad_chunks": msgpack.packb({"a": {"__msgpack_chunked_array__": True, "shape": {"0": 4}, "chunks": {"1": 0}}}),
        "empty": b"",
    }
    for what, data in cases.items():
        p = tmp_path / f"{what}.msgpack"
        p.write_bytes(data)
        with pytest.raises(CorruptCheckpointError) as ei:
            PLUGIN.load(str(p))
        assert ei.value.path == str(p), what


def test_detection(tmp_path):
    head = STATE.read_bytes()[:4096]
    assert sniff(head, str(STATE)) and not sniff(head, str(tmp_path / "x.bin")) and not sniff(b"\x93", "a.msgpack")
    ck = open_checkpoint(str(STATE))
    assert ck.format == "flax-msgpack" and len(ck.tensors) == 36


def test_cli_ls_inspect_diff_check(tmp_path):
    r = run("ls", str(STATE), "--format", "json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["checkpoint"]["format"] == "flax-msgpack" and doc["checkpoint"]["tensors"] == 36
    r = run("inspect", str(STATE), "--format", "json", "-j", "1")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    exp = np.load(FLAX / "cnn_state_expected.npz")
    k = next(t for t in doc["tensors"] if t["name"] == "params/Dense_0/kernel")
    assert k["stats"]["l2_norm"] == pytest.approx(float(np.linalg.norm(exp["params/Dense_0/kernel"].astype(np.float64))),
                                                  rel=1e-6)
    assert k["stats"]["units"] == 5  # output axis last
    # the same params as safetensors: cross-format diff matches tensor for tensor
    from safetensors.numpy import save_file

    save_file({n: exp[n] for n in exp if n.startswith("params/")}, str(tmp_path / "same.safetensors"))
    r = run("diff", str(tmp_path / "same.safetensors"), str(STATE), "--format", "json", "-j", "1")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    status = {t["name"]: t["status"] for t in d["tensors"]}
    # Dense_1 is bfloat16 in the msgpack and float32 (exactly widened) in the safetensors
    assert status == {**{n: "matched" for n in exp if n.startswith("params/") and "Dense_1" not in n},
                      "params/Dense_1/kernel": "dtype_changed", "params/Dense_1/bias": "dtype_changed"}
    assert all(t["change"]["rel_l2_change"] == 0 for t in d["tensors"] if t["change"]["rel_l2_change"] is not None)
    r = run("check", str(STATE), "--rule", "params/Dense_0/kernel: zero_fraction < 0.5", "--no-config", "-j", "1")
    assert r.exit_code == 0, r.output
    r = run("check", str(STATE), "--rule", "params/Dense_0/bias: zero_fraction < 0.5", "--no-config", "-j", "1")
    assert r.exit_code == 1, r.output  # flax initialises biases to zeros
    bad = tmp_path / "bad.msgpack"
    bad.write_bytes(STATE.read_bytes()[:-50])
    r = run("ls", str(bad))
    assert r.exit_code == 2 and "bad.msgpack" in r.output and "runs past the end" in r.output
    bad.write_bytes(b"\x93\x01\x02\x03")  # an array, not a map: still the flax reader's explanation
    r = run("ls", str(bad))
    assert r.exit_code == 2 and "top level is not a map" in r.output


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=6),
       src=st.sampled_from([STATE, CHUNKED]), cut=st.integers(0, 3))
def test_fuzz_msgpack(tmp_path_factory, edits, src, cut):
    b = bytearray(src.read_bytes())
    for pos, val in edits:
        b[pos % len(b)] = val
    if cut:
        b = b[: len(b) - cut * 7]
    p = tmp_path_factory.mktemp("fx") / "f.msgpack"
    p.write_bytes(bytes(b))
    try:
        ck = open_checkpoint(str(p))
        analyse(ck, Options(jobs=1, roles=tuple(Role)))
    except WdistError:
        pass


def test_cli_trend(tmp_path):
    for i in (1, 2):
        (tmp_path / f"epoch{i}.msgpack").write_bytes(STATE.read_bytes())
    r = run("trend", str(tmp_path), "--format", "json", "-j", "1")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert len(doc["checkpoints"]) == 2
    assert "params/Dense_0" in {la["name"] for la in doc["layers"]}


def test_object_count_is_bounded(tmp_path, monkeypatch):
    """Every msgpack object becomes a step of the walk: 19M empty maps in 19 MB took 13 s and 1.3 GB when the
    limit was 2*10^7; it is 2^21 now (tested here with a small limit)."""
    from wdist.loaders import fmt_flax

    monkeypatch.setattr(fmt_flax, "MAX_NODES", 1000)
    w = np.ones((4, 4), np.float32)
    ok = write(tmp_path / "ok.msgpack", {"params": {"Dense_0": {"kernel": nd(w)}}, "pad": [{}] * 900})
    with open_checkpoint(str(ok)) as ck:
        assert [t.name for t in ck.tensors] == ["params/Dense_0/kernel"]
    bomb = write(tmp_path / "bomb.msgpack", {"params": {"Dense_0": {"kernel": nd(w)}}, "pad": [{}] * 1001})
    with pytest.raises(CorruptCheckpointError, match="more than 1000 objects"):
        open_checkpoint(str(bomb))
