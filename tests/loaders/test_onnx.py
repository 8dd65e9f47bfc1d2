"""ONNX: models written by onnx.helper / onnx.save_model (single file and external data) and by
torch.onnx.export, read by wdist's own protobuf reader without the onnx package."""

from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_helpers import run
from click.testing import CliRunner
from corpus import mutated_file_outcome
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wdist.analyzers.inspect import Options, analyse
from wdist.cli.main import cli
from wdist.loaders import Role, open_checkpoint
from wdist.loaders.errors import CorruptCheckpointError, UnsupportedFormatError, WdistError
from wdist.loaders.fileio import RangeReader
from wdist.loaders.fmt_onnx import PLUGIN, TypedReader, load_onnx

onnx = pytest.importorskip("onnx")
from onnx import TensorProto as TP  # noqa: E402
from onnx import helper  # noqa: E402
from onnx import numpy_helper as nh  # noqa: E402

RNG = np.random.default_rng(0)


def arr(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


INITS: dict[str, np.ndarray] = {
    "fc1.weight": arr(8, 16), "fc1.bias": arr(8),                  # Gemm transB=1: (out, in)
    "fc2_w": arr(8, 4), "fc2_b": arr(4),                           # Gemm transB=0: (in, out)
    "proj": arr(4, 6), "proj_bias": arr(6),                        # MatMul + Add
    "conv.weight": arr(5, 3, 3, 3), "conv.bias": arr(5),           # Conv
    "up_w": arr(3, 2, 2, 2),                                       # ConvTranspose: (in, out/group, k, k)
    "bn_scale": arr(5), "bn_b": arr(5), "bn_mean": arr(5), "bn_var": np.abs(arr(5)),
    "ln_scale": arr(6), "ln_bias": arr(6),
    "emb_table": arr(10, 16),
}


def graph_model(typed: bool = False) -> Any:
    """A graph touching every op wdist assigns roles from; typed=True also adds typed-field initializers."""
    nodes = [
        helper.make_node("Gather", ["emb_table", "ids"], ["e"], name="/embed/Gather"),
        helper.make_node("Gemm", ["e", "fc1.weight", "fc1.bias"], ["h1"], transB=1, name="/fc1/Gemm"),
        helper.make_node("Gemm", ["h1", "fc2_w", "fc2_b"], ["h2"], name="/fc2/Gemm"),
        helper.make_node("MatMul", ["h2", "proj"], ["h3"], name="/proj/MatMul"),
        helper.make_node("Add", ["h3", "proj_bias"], ["h4"], name="/proj/Add"),
        helper.make_node("LayerNormalization", ["h4", "ln_scale", "ln_bias"], ["y"], name="/ln/LayerNormalization"),
        helper.make_node("Conv", ["img", "conv.weight", "conv.bias"], ["c"], name="/conv/Conv"),
        helper.make_node("BatchNormalization", ["c", "bn_scale", "bn_b", "bn_mean", "bn_var"], ["b"],
                         name="/bn/BatchNormalization"),
        helper.make_node("ConvTranspose", ["b", "up_w"], ["u"], name="/up/ConvTranspose"),
    ]
    inits = [nh.from_array(v, k) for k, v in INITS.items()]
    if typed:
        inits += [
            helper.make_tensor("t_f32", TP.FLOAT, [2, 3], arr(6).tolist()),
            helper.make_tensor("t_f16", TP.FLOAT16, [4], [1.5, -2.0, 0.25, 65504.0]),
            helper.make_tensor("t_bf16", TP.BFLOAT16, [3], [1.5, -2.0, 3.0]),
            helper.make_tensor("t_f8", TP.FLOAT8E4M3FN, [3], [1.5, -2.0, 448.0]),
            helper.make_tensor("t_f8e5", TP.FLOAT8E5M2, [2], [1.5, -2.0]),
            helper.make_tensor("t_f64", TP.DOUBLE, [2], [1.25, -7.5]),
            helper.make_tensor("t_i8", TP.INT8, [3], [-3, 4, -128]),
            helper.make_tensor("t_i32", TP.INT32, [3], [-(1 << 31), 0, (1 << 31) - 1]),
            helper.make_tensor("t_i64", TP.INT64, [2], [-5, 1 << 40]),
            helper.make_tensor("t_u64", TP.UINT64, [2], [1, (1 << 64) - 1]),
            helper.make_tensor("t_bool", TP.BOOL, [3], [True, False, True]),
            nh.from_array(np.array([1.5, -2.0], np.float16), "r_f16"),
            nh.from_array(np.arange(6, dtype=np.int64).reshape(2, 3), "r_i64"),
            helper.make_tensor("empty", TP.FLOAT, [0, 4], []),
        ]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TP.INT64, [2]),
                                       helper.make_tensor_value_info("img", TP.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, None),
                           helper.make_tensor_value_info("u", TP.FLOAT, None)], initializer=inits)
    m = helper.make_model(g, producer_name="wdist-test", opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(m, {"author": "tests"})
    return m


def reference(path: Path) -> dict[str, np.ndarray]:
    m = onnx.load(str(path))  # loads external data too
    return {t.name: nh.to_array(t) for t in m.graph.initializer}


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("onnx") / "model.onnx"
    onnx.save_model(graph_model(typed=True), str(p))
    return p


@pytest.fixture(scope="module")
def external(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("onnx_ext") / "model.onnx"
    onnx.save_model(graph_model(typed=True), str(p), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=128)
    return p


def _check_values(path: Path) -> None:
    ref = reference(path)
    with open_checkpoint(str(path)) as ck:
        by = {t.name: t for t in ck.tensors}
        assert sorted(by) == sorted(ref)
        for name, want in ref.items():
            t = by[name]
            assert t.shape == want.shape, name
            assert t.dtype == str(want.dtype), name
            got = t._raw(0, t.numel)
            if t.is_float:
                np.testing.assert_array_equal(t.read(), want.astype(np.float32), err_msg=name)
            else:
                np.testing.assert_array_equal(got.reshape(want.shape), want, err_msg=name)


def test_single_file_every_initializer_and_dtype(single):
    _check_values(single)
    with open_checkpoint(str(single)) as ck:
        assert (ck.format, ck.variant) == ("onnx", "single file")
        assert ck.metadata["producer_name"] == "wdist-test" and ck.metadata["opset"] == 17
        assert ck.metadata["author"] == "tests" and ck.metadata["graph_name"] == "g"
        by = {t.name: t for t in ck.tensors}
        assert isinstance(by["fc1.weight"].reader, RangeReader)  # raw_data, read by range
        assert isinstance(by["t_i8"].reader, TypedReader)  # int32_data varints
        assert isinstance(by["t_f32"].reader, RangeReader)  # packed float_data is contiguous too


def test_external_data(external):
    d = external.parent
    assert (d / "model.onnx.data").stat().st_size > 0
    _check_values(external)
    with open_checkpoint(str(external)) as ck:
        assert ck.variant == "external data"
        assert str(d / "model.onnx.data") in ck.sources
        by = {t.name: t for t in ck.tensors}
        assert by["emb_table"].reader.path == str(d / "model.onnx.data")
        assert by["fc1.bias"].source == "model.onnx"  # under the size threshold: stays inline
        assert by["t_i8"].source == "model.onnx"  # typed fields are never moved out


def test_roles_and_output_axes_from_the_graph(single):
    with open_checkpoint(str(single)) as ck:
        by = {t.name: (t.role, t.unit_axis) for t in ck.tensors}
        layers = {t.name: t.layer for t in ck.tensors}
    assert by["fc1.weight"] == (Role.WEIGHT, 0)  # Gemm transB=1: (out, in)
    assert by["fc1.bias"] == (Role.BIAS, None)
    assert by["fc2_w"] == (Role.WEIGHT, 1)  # Gemm transB=0: (in, out)
    assert by["fc2_b"] == (Role.BIAS, None)
    assert by["proj"] == (Role.WEIGHT, 1)  # MatMul x @ W
    assert by["proj_bias"] == (Role.BIAS, None)  # Add after MatMul
    assert by["conv.weight"] == (Role.WEIGHT, 0) and by["conv.bias"] == (Role.BIAS, None)
    assert by["up_w"] == (Role.WEIGHT, 1)  # ConvTranspose: (in, out/group, ...)
    assert by["bn_scale"] == (Role.NORM, None) and by["bn_b"] == (Role.NORM, None)
    assert by["bn_mean"] == (Role.RUNNING_STAT, None) and by["bn_var"] == (Role.RUNNING_STAT, None)
    assert by["ln_scale"] == (Role.NORM, None) and by["ln_bias"] == (Role.NORM, None)
    assert by["emb_table"] == (Role.EMBEDDING, 0)
    assert by["t_i64"][0] is Role.OTHER
    # dotted names keep their own layer; others take the consuming node's (torch.onnx.export naming)
    assert layers["fc1.weight"] == "fc1" and layers["proj"] == "proj" and layers["bn_scale"] == "bn"


@pytest.fixture(scope="module")
def torch_export(tmp_path_factory) -> tuple[Path, Path, dict]:
    import torch
    from safetensors.torch import save_file
    from torch import nn

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
    d = tmp_path_factory.mktemp("torch_onnx")
    onnx_path = d / "m.onnx"
    m.train()
    # the dynamo exporter needs onnxscript (not installed); the TorchScript exporter works offline
    torch.onnx.export(m, (torch.randn(2, 3, 8, 8),), str(onnx_path), dynamo=False,
                      training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False)
    sd = {k: v.detach().clone().contiguous() for k, v in m.state_dict().items() if v.is_floating_point()}
    st_path = d / "m.safetensors"
    save_file(sd, str(st_path))
    return onnx_path, st_path, sd


def test_torch_export_matches_safetensors(torch_export):
    onnx_path, st_path, sd = torch_export
    opts = Options(jobs=1, roles=tuple(Role))
    with open_checkpoint(str(onnx_path)) as a, open_checkpoint(str(st_path)) as b:
        ta = {t.name: t for t in a.tensors}
        tb = {t.name: t for t in b.tensors}
        assert set(ta) == set(sd)
        for name in sd:
            assert (ta[name].role, ta[name].unit_axis, ta[name].shape) == \
                (tb[name].role, tb[name].unit_axis, tb[name].shape), name
            np.testing.assert_array_equal(ta[name].read(), sd[name].numpy())
        ra, rb = analyse(a, opts), analyse(b, opts)
    sa = {t.name: t.stats for t in ra.tensors}
    sb = {t.name: t.stats for t in rb.tensors}
    assert sa == sb
    res = CliRunner().invoke(cli, ["diff", str(st_path), str(onnx_path), "--format", "json", "-j", "1", "--role", "all"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["summary"]["statuses"] == {"matched": len(sd)}
    assert all(t["change"]["max_abs_change"] == 0.0 for t in out["tensors"])


def _cli(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(cli, list(args))
    return r.exit_code, r.output


def test_cli_on_external_data(external):
    code, out = _cli("ls", str(external), "--format", "json")
    assert code == 0, out
    ls = json.loads(out)
    assert ls["checkpoint"]["format"] == "onnx" and ls["checkpoint"]["variant"] == "external data"
    code, out = _cli("inspect", str(external), "--format", "json", "-j", "2", "--tensors")
    assert code == 0, out
    tens = {t["name"]: t for t in json.loads(out)["tensors"]}
    assert tens["emb_table"]["stats"]["max"] == pytest.approx(float(INITS["emb_table"].max()))
    assert tens["conv.weight"]["stats"]["units"] == 5
    assert tens["fc2_w"]["stats"]["units"] == 4  # the output axis of a (in, out) Gemm weight
    code, out = _cli("check", str(external), "--no-config", "--rule", "model: nan_count == 0")
    assert code == 0, out
    code, out = _cli("check", str(external), "--no-config", "--rule", "model: zero_fraction >= 0.5")
    assert code == 1, out


def test_large_inline_initializer_is_not_loaded_while_parsing(tmp_path):
    big = np.ones((2048, 4096), np.float32)  # 32 MiB of raw_data
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TP.FLOAT, [1, 2048])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, [1, 4096])], [nh.from_array(big, "w")])
    p = tmp_path / "big.onnx"
    onnx.save_model(helper.make_model(g), str(p))
    tracemalloc.start()
    try:
        ck = load_onnx(str(p))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20, f"parsing allocated {peak} bytes"
    (t,) = ck.tensors
    assert t.shape == (2048, 4096) and t.unit_axis == 1
    chunk = next(t.chunks(max_elems=4096))[1]
    assert chunk.size == 4096 and float(chunk.sum()) == 4096.0


# ---- external data that must not be followed ---------------------------------------------------------

def _ext_model(d: Path, location: str, offset: str | None = None, length: str | None = None) -> Path:
    t = onnx.TensorProto()
    t.name, t.data_type = "w.weight", TP.FLOAT
    t.dims.extend([2, 2])
    t.data_location = TP.EXTERNAL
    for k, v in (("location", location), ("offset", offset), ("length", length)):
        if v is not None:
            e = t.external_data.add()
            e.key, e.value = k, v
    g = helper.make_graph([], "g", [], [], [t])
    p = d / "m.onnx"
    p.write_bytes(helper.make_model(g).SerializeToString())
    return p


def test_external_data_paths_are_confined(tmp_path):
    outside = tmp_path / "secret.bin"
    outside.write_bytes(np.arange(4, dtype=np.float32).tobytes())
    d = tmp_path / "model"
    d.mkdir()
    (d / "ok.bin").write_bytes(bytes(8) + np.arange(4, dtype=np.float32).tobytes())
    (d / "link.bin").symlink_to(outside)
    with open_checkpoint(str(_ext_model(d, "ok.bin", "8", "16"))) as ck:
        np.testing.assert_array_equal(ck.tensors[0].read(), np.arange(4, dtype=np.float32).reshape(2, 2))
    cases = {
        str(outside): "not a relative path",
        "../secret.bin": "not a relative path",
        "sub/../../secret.bin": "not a relative path",
        "link.bin": "resolves outside",
        "missing.bin": "is missing",
        "": "not a relative path",
    }
    for loc, why in cases.items():
        with pytest.raises(CorruptCheckpointError, match=why):
            open_checkpoint(str(_ext_model(d, loc)))
    for off, length, why in [("16", "16", "runs past the end"), ("0", "12", "needs 16 bytes"),
                             ("-1", "16", "not a number"), ("1e3", None, "not a number"), ("0x10", None, "not a number")]:
        with pytest.raises(CorruptCheckpointError, match=why):
            open_checkpoint(str(_ext_model(d, "ok.bin", off, length)))


def test_external_data_in_a_hugging_face_cache(tmp_path, external):
    # snapshots/REV/ holds symlinks into the repository's blobs/ folder: that is still inside the model
    repo = tmp_path / "models--org--name"
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    for i, f in enumerate(("model.onnx", "model.onnx.data")):
        blob = repo / "blobs" / f"blob{i}"
        blob.write_bytes((external.parent / f).read_bytes())
        (snap / f).symlink_to(os.path.relpath(blob, snap))
    with open_checkpoint(str(snap / "model.onnx")) as ck:
        by = {t.name: t for t in ck.tensors}
        np.testing.assert_array_equal(by["emb_table"].read(), INITS["emb_table"])


# ---- malformed protobuf ------------------------------------------------------------------------------

def _varint(v: int) -> bytes:
    out = b""
    while True:
        b, v = v & 0x7F, v >> 7
        out += bytes([b | (0x80 if v else 0)])
        if not v:
            return out


def _ld(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _model_with(tensor: bytes) -> bytes:
    return b"\x08\x09" + _ld(7, _ld(5, tensor))


def _tensor(dims: list[int], dtype: int, name: bytes = b"t", raw: bytes | None = None, extra: bytes = b"") -> bytes:
    out = b"".join(b"\x08" + _varint(d & 0xFFFFFFFFFFFFFFFF) for d in dims) + b"\x10" + _varint(dtype)
    out += _ld(8, name)
    if raw is not None:
        out += _ld(9, raw)
    return out + extra


GOOD = _model_with(_tensor([2], 1, b"a.weight", raw=np.array([1, 2], np.float32).tobytes()))
BAD = {
    "truncated": (GOOD[:-3], CorruptCheckpointError, "runs past"),
    "no graph": (b"\x08\x09\x12\x03abc", CorruptCheckpointError, "no graph"),
    "random": (bytes(RNG.integers(0, 256, 200, dtype=np.uint8)), WdistError, ""),
    "group wire type": (b"\x08\x09\x3b", CorruptCheckpointError, "wire type"),
    "huge length": (b"\x08\x09\x3a" + _varint(1 << 60), CorruptCheckpointError, "runs past"),
    "varint too long": (b"\x08" + b"\xff" * 11, CorruptCheckpointError, "longer than 10"),
    "field zero": (b"\x08\x09\x02\x00", CorruptCheckpointError, "field number 0"),
    "raw size mismatch": (_model_with(_tensor([3], 1, raw=bytes(8))), CorruptCheckpointError, "needs 12 bytes"),
    "negative dim": (_model_with(_tensor([-1], 1, raw=b"")), CorruptCheckpointError, "negative"),
    "terabyte dims": (_model_with(_tensor([1 << 30, 1 << 30, 1 << 10], 1, raw=bytes(4))), CorruptCheckpointError,
                      "absurd"),
    "unknown dtype": (_model_with(_tensor([1], 99, raw=bytes(4))), CorruptCheckpointError, "unknown data type"),
    "undefined dtype": (_model_with(_tensor([1], 0, raw=bytes(4))), CorruptCheckpointError, "unknown data type"),
    "no data": (_model_with(_tensor([4], 1)), CorruptCheckpointError, "typed data holds 0"),
    "typed count short": (_model_with(_tensor([4], 6, extra=_ld(5, b"\x01\x02"))), CorruptCheckpointError,
                          "cannot hold"),
    "wrong typed field": (_model_with(_tensor([1], 1, extra=_ld(7, b"\x01"))), CorruptCheckpointError,
                          "does not fit"),
    "segment": (_model_with(_tensor([1], 1, raw=bytes(4), extra=_ld(3, b"\x08\x00\x10\x01"))),
                UnsupportedFormatError, "segments"),
    "duplicate names": (b"\x08\x09" + _ld(7, _ld(5, _tensor([1], 1, raw=bytes(4))) * 2), CorruptCheckpointError,
                        "appears twice"),
    "bad utf8 name": (_model_with(_tensor([1], 1, name=b"\xff\xfe", raw=bytes(4))), CorruptCheckpointError, "UTF-8"),
    "typed values more than the shape": (_model_with(_tensor([2], 10, extra=_ld(5, b"\x01\x02\x03"))),
                                         CorruptCheckpointError, "holds more than the 2 values the shape needs"),
    "varint ends early in typed data": (_model_with(_tensor([1], 10, extra=_ld(5, b"\x81"))), CorruptCheckpointError,
                                        "cannot be read|inside a varint"),
}


@pytest.mark.parametrize("what", sorted(BAD))
def test_malformed_files_are_one_typed_error(tmp_path, what):
    data, exc, match = BAD[what]
    p = tmp_path / "bad.onnx"
    p.write_bytes(data)
    with pytest.raises(exc, match=match) as ei, open_checkpoint(str(p)) as ck:
        analyse(ck, Options(jobs=1, roles=tuple(Role)))
    assert ei.value.path == str(p)
    code, out = _cli("inspect", str(p), "-j", "1", "--role", "all")
    assert code == 2 and out.startswith("wdist: error:") and out.count("\n") == 1, out


def test_hand_built_model_reads(tmp_path):
    p = tmp_path / "h.onnx"
    p.write_bytes(GOOD)
    with open_checkpoint(str(p)) as ck:
        np.testing.assert_array_equal(ck.tensors[0].read(), [1, 2])


def test_sniffed_without_extension(tmp_path, single):
    p = tmp_path / "weights"
    p.write_bytes(single.read_bytes())
    with open_checkpoint(str(p)) as ck:
        assert ck.format == "onnx"
    assert PLUGIN.sniff is not None and not PLUGIN.sniff(b"GGUF\x03", "x")


def test_onnx_package_not_needed(single, monkeypatch):
    import sys

    for mod in [m for m in sys.modules if m == "onnx" or m.startswith("onnx.")]:
        monkeypatch.setitem(sys.modules, mod, None)
    with open_checkpoint(str(single)) as ck:
        assert len(ck.tensors) == len(INITS) + 14


# ---- fuzz: mutated bytes of a valid model (structure and data alike: ONNX is all protobuf) -----------

SEED = graph_model(typed=True).SerializeToString()
edits = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=8)


@settings(deadline=10_000, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(edits, st.integers(0, 3))
def test_fuzz_protobuf_bytes(tmp_path, e, cut):
    b = bytearray(SEED)
    for pos, val in e:
        b[pos % len(b)] = val
    data = bytes(b) if cut else bytes(b[: len(b) // 2])
    p = tmp_path / "f.onnx"
    p.write_bytes(data)
    mutated_file_outcome(PLUGIN, str(p))
    assert not os.path.exists(tmp_path / "secret")


# ---- second adversarial review: where wdist and onnx read different values ---------------------------------

def _graph_model(init: Any, path: Path) -> Path:
    from onnx import helper

    x = helper.make_tensor_value_info("x", TP.FLOAT, [1, init.dims[0]])
    y = helper.make_tensor_value_info("y", TP.FLOAT, [1, init.dims[-1]])
    g = helper.make_graph([helper.make_node("MatMul", ["x", init.name], ["y"], name="/fc/MatMul")], "g", [x], [y],
                          [init])
    path.write_bytes(helper.make_model(g).SerializeToString())
    return path


def test_external_data_entries_without_external_location_are_not_the_data(tmp_path):
    """Inline raw_data plus external_data entries but data_location DEFAULT: onnx reads the inline values."""
    from onnx import numpy_helper

    t = numpy_helper.from_array(np.full((4, 4), 1.0, np.float32), "fc.weight")
    e = t.external_data.add()
    e.key, e.value = "location", "w.bin"
    np.full((4, 4), 1000.0, np.float32).tofile(tmp_path / "w.bin")
    p = _graph_model(t, tmp_path / "model.onnx")
    ref = numpy_helper.to_array(onnx.load(str(p)).graph.initializer[0], base_dir=str(tmp_path))
    with open_checkpoint(str(p)) as ck:
        np.testing.assert_array_equal(ck.tensors[0].read(), ref)  # 1.0, never the 1000.0 of w.bin
    # and with data_location EXTERNAL both read the file
    t.data_location = TP.EXTERNAL
    t.ClearField("raw_data")
    p = _graph_model(t, tmp_path / "model2.onnx")
    with open_checkpoint(str(p)) as ck:
        assert ck.tensors[0].read().max() == 1000.0


def test_typed_value_of_the_wrong_wire_type_is_refused(tmp_path):
    """A float_data value written as a varint: protobuf keeps it as an unknown field (onnx then cannot shape
    the tensor); counting it as a value gave max 1e6 and exit 0."""
    import struct

    t = TP(name="fc.weight", data_type=TP.FLOAT, dims=[2, 2])
    t.float_data.extend([1.0, 1.0, 1.0])
    bits = struct.unpack("<I", struct.pack("<f", 1e6))[0]
    t2 = TP()
    t2.ParseFromString(t.SerializeToString() + bytes([4 << 3 | 0]) + _varint(bits))
    assert list(t2.float_data) == [1.0, 1.0, 1.0]  # the reference does not count it
    p = _graph_model(t2, tmp_path / "w.onnx")
    with pytest.raises(CorruptCheckpointError, match="wire type 0"):
        open_checkpoint(str(p))


def test_typed_varint_data_decodes_in_bounded_memory(tmp_path):
    """float16 in int32_data, one byte per value: decoding the whole field at once took ~56x the file size;
    now the values go straight into a float16 array, 256 KiB of the file at a time."""
    from onnx import numpy_helper

    n = 4_000_000
    t = TP(name="fc.weight", data_type=TP.FLOAT16, dims=[n])
    t.int32_data.extend([0x3C] * n)  # one-byte varints
    p = tmp_path / "f16.onnx"
    p.write_bytes(onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [], [t])).SerializeToString())
    ref = numpy_helper.to_array(onnx.load(str(p)).graph.initializer[0])
    with open_checkpoint(str(p)) as ck:
        r = ck.tensors[0].reader
        assert isinstance(r, TypedReader)
        tracemalloc.start()
        got = r.read_raw(0, n)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        np.testing.assert_array_equal(got.view(np.float16), ref)
        assert peak < 2 * n + (24 << 20), peak  # the result (2 bytes a value) and one step's scratch
        np.testing.assert_array_equal(r.read_raw(n - 5, 5), got[-5:])  # kept by the reader, not re-decoded


def test_node_and_initializer_counts_are_bounded(tmp_path, monkeypatch):
    from wdist.loaders import fmt_onnx

    monkeypatch.setattr(fmt_onnx, "MAX_NODES", 1000)
    monkeypatch.setattr(fmt_onnx, "MAX_INITS", 1000)
    p = tmp_path / "nodes.onnx"
    p.write_bytes(b"\x08\x07" + _ld(7, b"\x0a\x00" * 1001))  # 1,001 empty NodeProtos
    with pytest.raises(CorruptCheckpointError, match="over 1,000 nodes"):
        open_checkpoint(str(p))
    p.write_bytes(b"\x08\x07" + _ld(7, b"\x2a\x00" * 1001))  # 1,001 empty initializers
    with pytest.raises(CorruptCheckpointError, match="over 1,000 initializers"):
        open_checkpoint(str(p))


def test_packed_and_unpacked_values_of_one_field_are_refused(tmp_path):
    """protobuf keeps repeated values in file order across packed and unpacked encodings: an unpacked 1.0
    before a packed [2, 3, 4] is [1, 2, 3, 4] for onnx, but was read as [2, 3, 4, 1] (found by review).
    No writer mixes the two; wdist refuses the mix rather than reorder."""
    import struct

    from onnx import numpy_helper

    t = b"".join(b"\x08" + _varint(d) for d in (2, 2)) + b"\x10\x01"
    t += bytes([4 << 3 | 5]) + struct.pack("<f", 1.0) + _ld(4, struct.pack("<3f", 2.0, 3.0, 4.0)) + _ld(8, b"W")
    p = tmp_path / "order.onnx"
    p.write_bytes(_model_with(t))
    assert numpy_helper.to_array(onnx.load(str(p)).graph.initializer[0]).ravel().tolist() == [1, 2, 3, 4]
    with pytest.raises(UnsupportedFormatError, match="mixes packed and unpacked"):
        open_checkpoint(str(p))


def test_unpacked_values_are_counted_over_the_whole_file(tmp_path, monkeypatch):
    """Each unpacked value is a Python int until decoded: 16 tensors of 2^20 values each (50 MB) took 22.5 s
    and 826 MB when the cap was per tensor (found by review)."""
    from wdist.loaders import fmt_onnx

    monkeypatch.setattr(fmt_onnx, "MAX_UNPACKED", 1000)
    one = b"".join(bytes([5 << 3]) + b"\x01" for _ in range(600))  # 600 unpacked int32_data values
    inits = b"".join(_ld(5, _tensor([600], 6, name=f"t{i}".encode(), extra=one)) for i in range(2))
    p = tmp_path / "unpacked.onnx"
    p.write_bytes(b"\x08\x09" + _ld(7, inits))
    with pytest.raises(UnsupportedFormatError, match="over 1,000 unpacked"):
        open_checkpoint(str(p))
    p.write_bytes(b"\x08\x09" + _ld(7, _ld(5, _tensor([600], 6, name=b"t0", extra=one))))
    with open_checkpoint(str(p)) as ck:
        assert ck.tensors[0].read().tolist() == [1.0] * 600


# ---- review of 2026-12-04 (fifth session): nothing skipped in silence, bounded records, own bytes ----

def test_subgraph_initializers_are_read_and_constants_reported(tmp_path):
    """A valid model (onnx.checker passes) whose If branch holds a 64x64 all-NaN initializer: it was
    dropped without a word and a nan_count gate passed. Subgraph initializers are read like the graph's
    (a body inside a body too), and a float Constant of more than one value is reported by name, while the
    scalar and integer constants of exported graphs are not."""
    def body(name: str, init: str, value: float, inner: Any = None) -> Any:
        nodes = [helper.make_node("MatMul", ["x", init], [name + "_t"])]
        if inner is not None:
            plain = helper.make_graph([helper.make_node("Identity", ["x"], ["p"])], "plain", [],
                                      [helper.make_tensor_value_info("p", TP.FLOAT, None)])
            nodes.append(helper.make_node("If", ["cond"], [name + "_i"], then_branch=inner, else_branch=plain))
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(name + "_t", TP.FLOAT, None)],
                                 initializer=[nh.from_array(np.full((4, 64), value, np.float32), init)])

    deep = helper.make_graph([helper.make_node("Identity", ["x"], ["d"])], "deep", [],
                             [helper.make_tensor_value_info("d", TP.FLOAT, None)],
                             initializer=[nh.from_array(np.ones(3, np.float32), "deep.scale")])
    nodes = [helper.make_node("MatMul", ["x", "fc.weight"], ["h"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=body("then", "branch.fc.weight", np.nan),
                              else_branch=body("else", "other.fc.weight", 1.0, deep), name="/gate/If"),
             helper.make_node("Constant", [], ["k"], value=nh.from_array(np.float32(8.0))),
             helper.make_node("Constant", [], ["s"], value=nh.from_array(np.arange(3, dtype=np.int64)))]
    inits = [nh.from_array(np.ones((4, 4), np.float32), "fc.weight"), nh.from_array(np.array(True), "cond")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TP.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, [1, 64])], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m)
    onnx.save(m, str(tmp_path / "sub.onnx"))
    with open_checkpoint(str(tmp_path / "sub.onnx")) as ck:
        assert not ck.warnings
        by = {t.name: t for t in ck.tensors}
        assert set(by) == {"fc.weight", "cond", "branch.fc.weight", "other.fc.weight", "deep.scale"}
        assert np.isnan(by["branch.fc.weight"].read()).all() and by["other.fc.weight"].read().shape == (4, 64)
    r = run("check", str(tmp_path / "sub.onnx"), "--no-config", "--rule", "model: nan_count == 0")
    assert r.exit_code == 1, r.output
    m.graph.node.append(helper.make_node("Constant", [], ["c"], value=nh.from_array(np.ones(3, np.float32)),
                                         name="/c/Constant"))
    onnx.save(m, str(tmp_path / "const.onnx"))
    with open_checkpoint(str(tmp_path / "const.onnx")) as ck:
        assert ck.warnings == ["1 tensors held by node attributes (Constant values) are not read: '/c/Constant'"]
    with open_checkpoint(str(_plain(tmp_path))) as ck:
        assert not [w for w in ck.warnings if "node attributes" in w]


def _plain(tmp_path: Path) -> Path:
    p = tmp_path / "plain.onnx"
    onnx.save_model(graph_model(typed=True), str(p))
    return p


def _raw_model(tmp_path: Path, extra: bytes) -> Path:
    """A minimal ModelProto (ir_version, one graph with a 2x2 initializer) followed by `extra` fields."""
    from corpus import varint

    def ld(fn: int, b: bytes) -> bytes:
        return varint(fn << 3 | 2) + varint(len(b)) + b

    init = nh.from_array(np.ones((2, 2), np.float32), "w").SerializeToString()
    body = varint(1 << 3) + varint(8) + ld(7, ld(5, init)) + extra
    p = tmp_path / "raw.onnx"
    p.write_bytes(body)
    return p


def test_metadata_and_node_records_are_bounded(tmp_path, monkeypatch):
    """2M metadata_props took 342 MB (722 MB for inspect --format json), a node of 3M inputs 955 MB, 30M
    empty value_info fields 30 s: each kind of record is counted (limits far above real models), and a
    file over them is one error."""
    from corpus import varint

    from wdist.loaders import fmt_onnx

    def ld(fn: int, b: bytes) -> bytes:
        return varint(fn << 3 | 2) + varint(len(b)) + b

    props = b"".join(ld(14, ld(1, b"k%d" % i) + ld(2, b"")) for i in range(fmt_onnx.MAX_META_ENTRIES))
    with open_checkpoint(str(_raw_model(tmp_path, props))) as ck:
        assert ck.metadata["k4095"] == "" and [t.name for t in ck.tensors] == ["w"]
    with pytest.raises(CorruptCheckpointError, match="over 4,096 metadata_props"):
        open_checkpoint(str(_raw_model(tmp_path, props + ld(14, ld(1, b"one-more")))))
    opsets = b"".join(ld(8, ld(1, b"d%d" % i) + varint(2 << 3) + varint(1)) for i in range(4097))
    with pytest.raises(CorruptCheckpointError, match="over 4,096 opset_import"):
        open_checkpoint(str(_raw_model(tmp_path, opsets)))
    monkeypatch.setattr(fmt_onnx, "MAX_NODE_ITEMS", 1000)
    node = ld(7, ld(1, b"".join(ld(1, b"i%d" % i) for i in range(1001))))
    with pytest.raises(CorruptCheckpointError, match="over 1,000 inputs, outputs and attributes"):
        open_checkpoint(str(_raw_model(tmp_path, node)))
    monkeypatch.setattr(fmt_onnx, "MAX_FIELDS", 10_000)
    junk = ld(7, b"".join(ld(13, b"") for _ in range(10_000)))  # empty value_info records, skipped
    with pytest.raises(CorruptCheckpointError, match="over 10,000 protobuf fields"):
        open_checkpoint(str(_raw_model(tmp_path, junk)))


def test_typed_data_is_not_kept_decoded_after_its_last_read(single):
    """A typed tensor is decoded once per front-to-back read and released after its last values (30 such
    10 MB tensors stayed decoded for the whole run: 649 MB)."""
    with open_checkpoint(str(single)) as ck:
        t = next(t for t in ck.tensors if t.name == "t_f16")
        r = t.reader
        assert isinstance(r, TypedReader)
        first = r.read_raw(0, 2).copy()
        assert r._decoded is not None  # kept while the rest is still to be read
        rest = r.read_raw(2, 2)
        assert r._decoded is None
        np.testing.assert_array_equal(np.concatenate([first, rest]).view(np.float16),
                                      np.array([1.5, -2.0, 0.25, 65504.0], np.float16))
        np.testing.assert_array_equal(t.read(), np.array([1.5, -2.0, 0.25, 65504.0], np.float32))


def test_initializers_sharing_external_bytes_are_refused(tmp_path):
    """2,000 initializers naming one 4 MiB range of w.bin (a 161 KB model) were analysed as 8 GB."""
    w = np.arange(64, dtype=np.float32)
    (tmp_path / "w.bin").write_bytes(w.tobytes())
    inits = []
    for i in range(3):
        t = TP(name=f"l{i}.weight", dims=[8, 8], data_type=TP.FLOAT, data_location=TP.EXTERNAL)
        for k, v in (("location", "w.bin"), ("offset", "0"), ("length", str(w.nbytes))):
            e = t.external_data.add()
            e.key, e.value = k, v
        inits.append(t)
    g = helper.make_graph([], "g", [], [], initializer=inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "amp.onnx"))
    with pytest.raises(CorruptCheckpointError, match="overlapping bytes of w.bin"):
        open_checkpoint(str(tmp_path / "amp.onnx"))
    del inits[1:]
    onnx.save(helper.make_model(helper.make_graph([], "g", [], [], initializer=inits),
                                opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "one.onnx"))
    with open_checkpoint(str(tmp_path / "one.onnx")) as ck:
        np.testing.assert_array_equal(ck.tensors[0].read().ravel(), w)
