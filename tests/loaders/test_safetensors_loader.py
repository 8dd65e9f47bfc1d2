import json
import struct

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file as np_save
from safetensors.torch import save_file

from wdist.loaders import Format, Role, open_checkpoint
from wdist.loaders.errors import CorruptCheckpointError


def test_single_file_matches_torch(ckpts, torch_model_sd):
    ck = open_checkpoint(str(ckpts["st"]))
    assert ck.format == Format.SAFETENSORS and ck.metadata == {"note": "test"}
    by = {t.name: t for t in ck.tensors}
    for k, v in torch_model_sd.items():
        np.testing.assert_array_equal(by[k].read(), v.float().numpy())


@pytest.mark.parametrize("dtype, name", [(torch.bfloat16, "bfloat16"), (torch.float16, "float16"),
                                         (torch.float8_e4m3fn, "float8_e4m3fn"), (torch.float8_e5m2, "float8_e5m2"),
                                         (torch.float64, "float64")])
def test_dtypes_without_torch(tmp_path, dtype, name):
    torch.manual_seed(0)
    x = (torch.randn(33, 17) * 3).to(dtype)
    p = tmp_path / "x.safetensors"
    save_file({"w": x}, str(p))
    (t,) = open_checkpoint(str(p)).tensors
    assert t.dtype == name
    np.testing.assert_array_equal(t.read(), x.float().numpy())


def test_sharded_index_and_directory(tmp_path, torch_model_sd):
    keys = list(torch_model_sd)
    parts = [keys[:4], keys[4:]]
    wm = {}
    for i, ks in enumerate(parts, 1):
        fn = f"model-0000{i}-of-00002.safetensors"
        save_file({k: torch_model_sd[k].contiguous() for k in ks}, str(tmp_path / fn))
        wm.update({k: fn for k in ks})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    for target in (tmp_path, tmp_path / "model.safetensors.index.json"):
        ck = open_checkpoint(str(target))
        assert ck.variant == "sharded" and sorted(t.name for t in ck.tensors) == sorted(keys)
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CorruptCheckpointError, match="missing"):
        open_checkpoint(str(tmp_path))


def _write(p, header: dict, data: bytes, declared_len: int | None = None) -> None:
    h = json.dumps(header).encode()
    p.write_bytes(struct.pack("<Q", len(h) if declared_len is None else declared_len) + h + data)


@pytest.mark.parametrize("header, data, match", [
    ({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 8]}}, b"\0" * 8, "needs 16 bytes"),
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, "past the end"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, "overlaps"),
    ({"w": {"dtype": "F32", "shape": [1 << 40, 1 << 20], "data_offsets": [0, 8]}}, b"\0" * 8, "needs"),
    ({"w": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "unknown dtype"),
    ({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 8]}}, b"\0" * 8, "bad shape"),
    ({"w": [1, 2]}, b"", "lacks"),
    ({"w": {"shape": [2], "data_offsets": [0, 8], "dtype": "F32"},  # keys in another order: still checked
      "v": {"data_offsets": [8, 8], "shape": [2], "dtype": "F32"}}, b"\0" * 8, "needs 8 bytes"),
    ({"w": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, b"\0" * 4, "bad shape"),
    ({"w": {"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]}}, b"\0" * 4, "bad shape"),
    ({"w": {"dtype": "F32", "shape": 1, "data_offsets": [0, 4]}}, b"\0" * 4, "bad shape"),
    ({"w": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "unknown dtype"),
    ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, True]}}, b"\0" * 4, "bad data_offsets"),
    ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}}, b"\0" * 8, "bad data_offsets"),
    ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}}, b"\0" * 4, "bad data_offsets"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, "'a'.*leaves a gap"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
      "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}, b"\0" * 12, "'b'.*8..12 leaves a gap"),
])
def test_lying_headers(tmp_path, header, data, match):
    p = tmp_path / "bad.safetensors"
    _write(p, header, data)
    with pytest.raises(CorruptCheckpointError, match=match):
        open_checkpoint(str(p))


def test_absurd_header_length_and_not_json(tmp_path):
    p = tmp_path / "big.safetensors"
    _write(p, {}, b"", declared_len=1 << 60)
    with pytest.raises(CorruptCheckpointError, match="exceeds"):
        open_checkpoint(str(p))
    p.write_bytes(struct.pack("<Q", 5) + b"{nope")
    with pytest.raises(CorruptCheckpointError, match="not valid JSON"):
        open_checkpoint(str(p))


def test_numpy_written_file(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np_save({"layer.weight": x}, str(tmp_path / "n.safetensors"))
    (t,) = open_checkpoint(str(tmp_path / "n.safetensors")).tensors
    np.testing.assert_array_equal(t.read(), x)


def test_natural_order_key_matches_numeric_comparison():
    """Tensors are listed in natural name order; the one-string key orders names exactly as comparing
    their text and digit runs part by part (runs as integers) does, and a 5,000-digit run is just a long
    key (int() of it raised ValueError: a valid file was refused)."""
    import random
    import re

    from wdist.loaders.roles import natural_key as _natural

    def by_parts(s: str) -> list:
        return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"([0-9]+)", s)]

    rng = random.Random(0)
    for _ in range(3000):
        names = ["".join(rng.choice("ab._09170") for _ in range(rng.randint(0, 9))) for _ in range(8)]
        assert sorted(names, key=_natural) == sorted(names, key=by_parts)
    assert sorted(["l.10.w", "l.2.w", "l.2", "e", "l.02.b"], key=_natural) == ["e", "l.2", "l.02.b", "l.2.w", "l.10.w"]
    assert _natural("a" + "9" * 5000) > _natural("a" + "9" * 4999) > _natural("a" + "1" * 10)


def test_long_digit_run_name_and_entry_shaped_metadata(tmp_path):
    p = tmp_path / "m.safetensors"
    big = "layer" + "7" * 5000 + ".weight"
    np_save({big: np.ones((2, 2), np.float32), "layer2.weight": np.zeros((2, 2), np.float32)}, str(p),
            metadata={"dtype": "x", "shape": "y", "data_offsets": "z"})  # string metadata keyed like an entry
    ck = open_checkpoint(str(p))
    assert [t.name for t in ck.tensors] == ["layer2.weight", big]
    assert ck.metadata == {"dtype": "x", "shape": "y", "data_offsets": "z"}


_ENTRY_OF = '{"a":{"dtype":"F32","shape":[%s],"data_offsets":[0,0]}}'  # noqa: UP031 (JSON braces)


def _raw(p, header: bytes, data: bytes = b"") -> str:
    p.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return str(p)


def test_hostile_shapes_are_refused_in_linear_time(tmp_path):
    """Dimensions are u64 and a tensor has at most 64 of them: 300 dimensions of 4,000 digits (a 1.2 MB
    header whose product took 29 s to compute) and a million dimensions are refused at once."""
    import time

    cases = [(",".join(["9" * 4000] * 300) + ",0", "bad shape"), (",".join(["2"] * 1_000_000), "bad shape"),
             ("18446744073709551616,0", "bad shape"), (",".join(["18446744073709551615"] * 64), r"needs \d+\.\.\. bytes")]
    for i, (dims, match) in enumerate(cases):
        p = _raw(tmp_path / f"s{i}.safetensors",
                 (_ENTRY_OF % dims).encode())
        t = time.perf_counter()
        with pytest.raises(CorruptCheckpointError, match=match) as e:
            open_checkpoint(p)
        assert time.perf_counter() - t < 2.0 and len(str(e.value)) < 300
    # 64 huge dimensions and a zero one: a valid empty tensor
    dims = ",".join(["18446744073709551615"] * 63 + ["0"])
    p = _raw(tmp_path / "empty.safetensors", (_ENTRY_OF % dims).encode())
    (t,) = open_checkpoint(p).tensors
    assert t.numel == 0 and len(t.shape) == 64


@pytest.mark.parametrize("header, data, match", [
    (b'{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}', bytes(32), "16 bytes of data after the last"),
    (b'{}', bytes(4), "4 bytes of data after the last"),
    (b'{"a":{"dtype":"F32","dtype":"I32","shape":[4],"data_offsets":[0,16]}}', bytes(16), "'dtype' twice"),
    (b'{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"a":{"dtype":"I32","shape":[4],'
     b'"data_offsets":[0,16]}}', bytes(16), "'a' twice"),
    (b'{"__metadata__":{"k":"1"},"__metadata__":{"k":"2"}}', b"", "'__metadata__' twice"),
    (b'{"__metadata__":{"k":NaN}}', b"", "not valid JSON"),
    (b'{"__metadata__":{"k":1}}', b"", "object of strings"),
    (b'{"__metadata__":[]}', b"", "object of strings"),
    (b'{"__metadata__":false}', b"", "object of strings"),
    (b'{"__metadata__":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}', b"", "object of strings"),
    (b'{"a":{"dtype":"F32","shape":[%s],"data_offsets":[0,16]}}' % (b"1" * 5000), bytes(16), "not valid JSON"),
    (b'{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}', bytes(2), "do not fill whole bytes"),
])
def test_header_checks_match_the_reference(tmp_path, header, data, match):
    """Files the reference implementation refuses (found in an adversarial review): trailing bytes, a key
    twice, non-JSON constants, metadata that is not strings; and messages never fail to print a number."""
    p = _raw(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(CorruptCheckpointError, match=match):
        open_checkpoint(p)


def test_mx_dtypes(tmp_path):
    """F8_E8M0 (MX scales: 2^(code-127), 0xFF NaN) is read and analysed; packed F4 values are listed with
    their bytes and a warning, not analysed."""
    import json as _json

    codes = np.arange(256, dtype=np.uint8)
    hdr = {"s": {"dtype": "F8_E8M0", "shape": [256], "data_offsets": [0, 256]},
           "w": {"dtype": "F4", "shape": [4, 8], "data_offsets": [256, 272]}}
    p = _raw(tmp_path / "mx.safetensors", _json.dumps(hdr).encode(), codes.tobytes() + bytes(16))
    ck = open_checkpoint(p)
    s, w = ck.tensors
    want = np.array([2.0 ** (c - 127) for c in range(255)] + [np.nan], dtype=np.float32)
    np.testing.assert_array_equal(s.read(), want)
    assert (w.dtype, w.nbytes, w.stored_as, w.reader, w.is_float) == ("float4_e2m1fn", 16, "F4", None, False)
    assert any("F4/F6" in x and "w" in x for x in ck.warnings)
    from wdist.analyzers.inspect import Options, analyse

    rep = analyse(ck, Options(jobs=1, roles=tuple(Role)))
    st = rep.tensors[0].stats
    fin = want[np.isfinite(want)].astype(np.float64)
    assert [t.name for t in rep.tensors] == ["s"] and st["nan_count"] == 1 and st["max"] == fin.max()
    assert st["mean"] == pytest.approx(fin.mean(), rel=1e-12)


def test_e8m0_written_by_torch_and_safetensors(tmp_path):
    """float8_e8m0fnu from the real writers (torch.save, safetensors.torch, an in-memory state dict) decodes
    exactly as torch's own .float() does, NaN code included."""
    import wdist

    t = torch.arange(256, dtype=torch.uint8).view(torch.float8_e8m0fnu)
    want = t.float().numpy()
    torch.save({"scale": t}, str(tmp_path / "e8.pt"))
    save_file({"scale": t}, str(tmp_path / "e8.safetensors"))
    for src in (str(tmp_path / "e8.pt"), str(tmp_path / "e8.safetensors"), {"scale": t}):
        with wdist.open(src) as ck:
            (r,) = ck.tensors
            assert r.dtype == "float8_e8m0fnu"
            np.testing.assert_array_equal(r.read(), want)


def _as_json_loads(p) -> tuple[list, dict]:
    """What a plain json.loads of the header gives: [(name, dtype, shape, offsets)] in file order, metadata."""
    raw = p.read_bytes()
    h = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
    meta = h.pop("__metadata__", None) or {}
    return [(k, v["dtype"], v["shape"], v["data_offsets"]) for k, v in h.items()], meta


def _read(p) -> tuple[list, dict]:
    from wdist.loaders.safetensors_loader import read_header

    e, meta, _ = read_header(str(p))
    return [(n, d, list(s), [int(b), int(x)]) for n, d, s, b, x in zip(*e)], meta


def test_reference_written_headers_read_as_json_loads_reads_them(tmp_path):
    """The header tokenizer reads what safetensors.numpy and safetensors.torch write (metadata, unicode and
    escaped names, 0-d, empty and 20-dimensional tensors, every dtype) exactly as json.loads does."""
    names = ["a", "é.weight", "层.bias", "emoji😀", 'q"uote', "back\\slash", "ctl\x01", "x" * 3000, "", " ", "dtype"]
    arrays = {f"{n}{i}": np.zeros(s, d) for i, (n, s, d) in enumerate(zip(
        names, [(), (0,), (2, 3), (1,) * 20, (3, 0, 2), (5,), (), (2, 2), (1,), (4,), (2,)],
        [np.float32, np.float16, np.int8, np.uint64, np.bool_, np.float64, np.complex64, np.int64, np.uint8,
         np.int16, np.uint32]))}
    meta = {"format": "np", "é": 'x\\y"z', "dtype": "F32", "": ""}
    for i, save in enumerate((lambda p: np_save(arrays, str(p), metadata=meta),
                              lambda p: save_file({k: torch.from_numpy(v.copy()) for k, v in arrays.items()
                                                   if v.dtype != np.uint64}, str(p), metadata=meta),
                              lambda p: save_file({"w": torch.ones(2, dtype=torch.bfloat16)}, str(p)))):
        p = tmp_path / f"r{i}.safetensors"
        save(p)
        assert _read(p) == _as_json_loads(p)


@pytest.mark.parametrize("dumps", [
    lambda h: json.dumps(h), lambda h: json.dumps(h, indent=3), lambda h: json.dumps(h, ensure_ascii=False),
    lambda h: json.dumps(h).replace('"dtype"', '"\\u0064type"'),  # keys written with escapes
])
def test_other_writers_headers_read_as_json_loads_reads_them(tmp_path, dumps):
    """Keys in another order, whitespace, escapes, `"__metadata__": null` anywhere and keys the format
    does not know are read member by member, with json.loads' result."""
    h = {"b": {"shape": [2, 1], "dtype": "F16", "data_offsets": [0, 4]},
         "__metadata__": None,
         "é": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8], "extra": {"k": [1, [2.5, None]]}},
         "c": {"data_offsets": [8, 8], "dtype": "I8", "shape": [0, 7]}}
    p = tmp_path / "o.safetensors"
    _write(p, h, bytes(8))
    p.write_bytes(struct.pack("<Q", len(b := dumps(h).encode())) + b + bytes(8))
    assert _read(p) == _as_json_loads(p)
    assert [t.name for t in open_checkpoint(str(p)).tensors] == ["b", "c", "é"]
