"""GGUF: files written by gguf.GGUFWriter (and hand-built headers for the malformed cases), read by wdist's own
header parser; quantised tensors dequantised block by block."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from corpus import mutated_file_outcome
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wdist.analyzers.inspect import Options, analyse
from wdist.cli.main import cli
from wdist.loaders import Role, open_checkpoint
from wdist.loaders.errors import (
    CorruptCheckpointError,
    MissingDependencyError,
    UnsupportedFormatError,
)
from wdist.loaders.fmt_gguf import NATIVE, PLUGIN, QUANT, BlockReader, block_scales, scale_summary

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf import quants  # noqa: E402

WRITABLE = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]  # gguf 0.19 quantises these
K_QUANTS = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]  # gguf 0.19 only dequantises these
# byte offsets of the fp16 fields of each K-quant block (d, and dmin where it has one), from ggml-common.h
K_FP16 = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def write(path: Path, tensors: dict[str, tuple[np.ndarray, str | None]], meta: dict | None = None,
          alignment: int | None = None) -> Path:
    w = gguf.GGUFWriter(str(path), "llama")
    if alignment:
        w.add_custom_alignment(alignment)
    w.add_name("tiny-llama")
    w.add_context_length(128)
    for k, v in (meta or {}).items():
        if isinstance(v, str):
            w.add_string(k, v)
        elif isinstance(v, list):
            w.add_array(k, v)
        else:
            w.add_uint32(k, v)
    for name, (arr, qt) in tensors.items():
        if qt is None:
            w.add_tensor(name, arr)
        else:
            w.add_tensor(name, arr, raw_dtype=T[qt])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def k_blocks(qt: str, rows: int, cols: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random K-quant blocks (gguf 0.19 cannot quantise to K-quants) with finite fp16 scales;
    returns (bytes shaped (rows, cols/256*type_size), the d of each block)."""
    bs, ts = quants.GGML_QUANT_SIZES[T[qt]]
    n = rows * cols // bs
    rng = np.random.default_rng(seed)
    b = rng.integers(0, 256, size=(n, ts), dtype=np.uint8)
    d = rng.uniform(0.001, 0.05, size=n).astype(np.float16)
    for i, off in enumerate(K_FP16[qt]):
        v = d if i == 0 else rng.uniform(0.001, 0.05, size=n).astype(np.float16)
        b[:, off:off + 2] = v.view(np.uint8).reshape(n, 2)
    return b.reshape(rows, cols // bs * ts), d.astype(np.float32)


@pytest.fixture(scope="module")
def weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "token_embd.weight": rng.standard_normal((16, 256)).astype(np.float32),
        "blk.0.attn_norm.weight": (1 + 0.1 * rng.standard_normal(256)).astype(np.float32),
        "blk.0.attn_q.weight": (0.05 * rng.standard_normal((64, 256))).astype(np.float32),
        "blk.0.ffn_down.weight": (0.05 * rng.standard_normal((3, 512))).astype(np.float32),
        "output.weight": (0.05 * rng.standard_normal((16, 256))).astype(np.float32),
    }


@pytest.fixture(scope="module")
def f32_file(tmp_path_factory, weights) -> Path:
    d = tmp_path_factory.mktemp("gguf")
    return write(d / "tiny.gguf", {k: (v, None) for k, v in weights.items()},
                 meta={"general.architecture_note": "x" * 1000, "tokenizer.ggml.tokens": ["a", "b", "c"]})


def test_header_metadata_shapes_and_roles(f32_file, weights):
    with open_checkpoint(str(f32_file)) as ck:
        assert (ck.format, ck.variant) == ("gguf", "v3")
        assert ck.metadata["general.architecture"] == "llama"
        assert ck.metadata["general.name"] == "tiny-llama"
        assert ck.metadata["llama.context_length"] == 128
        assert ck.metadata["tokenizer.ggml.tokens"] == "<array of 3 string>"
        assert ck.metadata["general.architecture_note"] == "<string of 1000 bytes>"
        by = {t.name: t for t in ck.tensors}
        # GGUF stores ne fastest-first; wdist reports the numpy order the array was written in
        raw = {t.name: tuple(int(x) for x in t.shape) for t in gguf.GGUFReader(str(f32_file)).tensors}
        assert raw["blk.0.ffn_down.weight"] == (512, 3)
        assert by["blk.0.ffn_down.weight"].shape == (3, 512)
        for name, arr in weights.items():
            assert by[name].shape == arr.shape
            np.testing.assert_array_equal(by[name].read(), arr)
        assert by["token_embd.weight"].role is Role.EMBEDDING
        assert by["blk.0.attn_norm.weight"].role is Role.NORM
        assert by["blk.0.attn_q.weight"].role is Role.WEIGHT
        assert by["blk.0.attn_q.weight"].layer == "blk.0.attn_q"
        assert by["blk.0.attn_q.weight"].unit_axis == 0
        assert by["output.weight"].stored_as is None


def test_plain_types_exact(tmp_path, weights):
    x = weights["blk.0.attn_q.weight"]
    ints = np.arange(-50, 50, dtype=np.int32).reshape(4, 25)
    p = write(tmp_path / "plain.gguf", {"a.f16": (x.astype(np.float16), None),
                                        "a.bf16": (quants.quantize(x, T.BF16), "BF16"),
                                        "a.i32": (ints, None)})
    with open_checkpoint(str(p)) as ck:
        by = {t.name: t for t in ck.tensors}
        assert by["a.f16"].dtype == "float16"
        np.testing.assert_array_equal(by["a.f16"].read(), x.astype(np.float16).astype(np.float32))
        assert by["a.bf16"].dtype == "bfloat16" and by["a.bf16"].shape == x.shape
        bf = (x.view(np.uint32) + 0x7FFF + ((x.view(np.uint32) >> 16) & 1)) >> 16 << 16  # round to nearest even
        np.testing.assert_array_equal(by["a.bf16"].read(), bf.astype(np.uint32).view(np.float32))
        assert by["a.i32"].dtype == "int32" and by["a.i32"].role is Role.OTHER
        np.testing.assert_array_equal(by["a.i32"]._raw(0, 100), ints.ravel())


@pytest.mark.parametrize("qt", WRITABLE)
def test_quantised_types_written_by_gguf(tmp_path, weights, qt):
    x = weights["blk.0.attn_q.weight"]
    q = quants.quantize(x, T[qt])
    p = write(tmp_path / f"{qt}.gguf", {"blk.0.attn_q.weight": (q, qt)})
    with open_checkpoint(str(p)) as ck:
        (t,) = ck.tensors
        assert (t.shape, t.dtype, t.stored_as) == (x.shape, "float32", qt)
        bs, ts = QUANT[{v[0]: k for k, v in QUANT.items()}[qt]][1:]
        assert t.nbytes == x.size // bs * ts == q.nbytes
        ref = quants.dequantize(q, T[qt]).ravel()
        got = t.read().ravel()
        np.testing.assert_array_equal(got, ref)
        # chunked, unaligned reads give the same values
        for start, count in [(0, 1), (5, 40), (31, 2), (100, 1000), (x.size - 7, 7)]:
            np.testing.assert_array_equal(t.reader.read_raw(start, count), ref[start:start + count])
        scales = block_scales(t)
        assert scales is not None and scales.size == x.size // 32
        err = np.abs(got - x.ravel()).reshape(-1, 32).max(axis=1)
        assert np.all(err <= np.abs(scales) + 1e-6), "dequantised values are not within one step of the originals"


def test_q8_0_against_scalar_reference(tmp_path, weights):
    x = weights["blk.0.attn_q.weight"]
    q = quants.quantize(x, T.Q8_0)
    p = write(tmp_path / "q8.gguf", {"w.weight": (q, "Q8_0")})
    blocks = q.reshape(-1, 34)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    vals = blocks[:, 2:].view(np.int8).astype(np.float32)
    with open_checkpoint(str(p)) as ck:
        np.testing.assert_array_equal(ck.tensors[0].read().ravel(), (d * vals).ravel())
        np.testing.assert_allclose(block_scales(ck.tensors[0]), np.abs(x).reshape(-1, 32).max(1) / 127, rtol=1e-3)


def _q4k_scalar(block: bytes) -> list[float]:
    """dequantize_row_q4_K from llama.cpp ggml-quants.c, transcribed literally."""
    d = float(np.frombuffer(block[0:2], np.float16)[0])
    dmin = float(np.frombuffer(block[2:4], np.float16)[0])
    sc, qs = block[4:16], block[16:144]

    def scale_min(j: int) -> tuple[int, int]:
        if j < 4:
            return sc[j] & 63, sc[j + 4] & 63
        return (sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4), (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4)

    y: list[float] = []
    q, is_ = 0, 0
    for _ in range(0, 256, 64):
        s1, m1 = scale_min(is_)
        s2, m2 = scale_min(is_ + 1)
        y += [d * s1 * (qs[q + ll] & 0xF) - dmin * m1 for ll in range(32)]
        y += [d * s2 * (qs[q + ll] >> 4) - dmin * m2 for ll in range(32)]
        q += 32
        is_ += 2
    return y


@pytest.mark.parametrize("qt", K_QUANTS)
def test_k_quants(tmp_path, qt):
    raw, d = k_blocks(qt, 4, 512)
    p = write(tmp_path / f"{qt}.gguf", {"blk.1.ffn_up.weight": (raw, qt)})
    with open_checkpoint(str(p)) as ck:
        (t,) = ck.tensors
        assert (t.shape, t.stored_as, t.nbytes) == ((4, 512), qt, raw.nbytes)
        ref = quants.dequantize(raw, T[qt]).ravel()
        np.testing.assert_array_equal(t.read().ravel(), ref)
        for start, count in [(0, 256), (255, 2), (300, 700), (2047, 1)]:
            np.testing.assert_array_equal(t.reader.read_raw(start, count), ref[start:start + count])
        np.testing.assert_array_equal(block_scales(t), d)
        s = scale_summary(t)
        assert s is not None and s["blocks"] == 8 and s["type"] == qt
        assert s["min"] == pytest.approx(float(d.min())) and s["max"] == pytest.approx(float(d.max()))
        if qt == "Q4_K":
            blocks = raw.reshape(-1, 144)
            scalar = np.array([v for b in blocks for v in _q4k_scalar(bytes(b))], dtype=np.float32)
            np.testing.assert_allclose(t.read().ravel(), scalar, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("qt", sorted(NATIVE))
def test_native_dequantisers_are_bit_identical_to_gguf(qt):
    # fully random blocks: every bit pattern, NaN/inf fp16 scales included
    tid = next(k for k, v in QUANT.items() if v[0] == qt)
    _, bs, ts = QUANT[tid]
    raw = np.random.default_rng(3).integers(0, 256, size=64 * ts, dtype=np.uint8)
    with np.errstate(all="ignore"):
        ref = quants.dequantize(raw, T[qt]).ravel()
        got = NATIVE[qt](raw)
    assert got.dtype == np.float32 and got.shape == (64 * bs,)
    np.testing.assert_array_equal(got, ref)


def test_reads_only_the_covering_blocks(tmp_path, weights, monkeypatch):
    q = quants.quantize(weights["blk.0.attn_q.weight"], T.Q4_0)
    raw, _ = k_blocks("Q4_K", 4, 512)
    p = write(tmp_path / "mix.gguf", {"a.weight": (q, "Q4_0"), "b.weight": (raw, "Q4_K")})
    calls: list[tuple[int, int]] = []
    orig = BlockReader._blocks

    def spy(self: BlockReader, first: int, n: int) -> np.ndarray:
        calls.append((first, n))
        return orig(self, first, n)

    monkeypatch.setattr(BlockReader, "_blocks", spy)
    with open_checkpoint(str(p)) as ck:
        a, b = ck.tensors
        a.reader.read_raw(300, 10)
        a.reader.read_raw(320, 64)
        b.reader.read_raw(300, 10)
        b.reader.read_raw(512, 1024)
    assert calls == [(9, 1), (10, 2), (1, 1), (2, 4)]


def test_chunks_follow_rows_and_stats_cover_every_value(tmp_path, weights):
    raw, _ = k_blocks("Q6_K", 8, 1024)
    p = write(tmp_path / "q6.gguf", {"blk.0.ffn_gate.weight": (raw, "Q6_K")})
    with open_checkpoint(str(p)) as ck:
        t = ck.tensors[0]
        starts = [s for s, _ in t.chunks(max_elems=2500, align=1024)]
        assert starts == [0, 2048, 4096, 6144]
        joined = np.concatenate([c.copy() for _, c in t.chunks(max_elems=2500, align=1024)])
        np.testing.assert_array_equal(joined, quants.dequantize(raw, T.Q6_K).ravel())


def test_without_the_gguf_package(tmp_path, weights, monkeypatch):
    x = weights["blk.0.attn_q.weight"]
    q8, q4 = quants.quantize(x, T.Q8_0), quants.quantize(x, T.Q4_0)
    q5 = quants.quantize(x, T.Q5_0)
    raw, _ = k_blocks("Q4_K", 4, 512)
    raw6, _ = k_blocks("Q6_K", 4, 512)
    want = {"q8.weight": quants.dequantize(q8, T.Q8_0), "q4.weight": quants.dequantize(q4, T.Q4_0),
            "q4k.weight": quants.dequantize(raw, T.Q4_K), "q6k.weight": quants.dequantize(raw6, T.Q6_K)}
    p = write(tmp_path / "nogguf.gguf", {"a.weight": (weights["output.weight"], None), "q8.weight": (q8, "Q8_0"),
                                         "q4.weight": (q4, "Q4_0"), "q4k.weight": (raw, "Q4_K"),
                                         "q6k.weight": (raw6, "Q6_K"), "q5.weight": (q5, "Q5_0")})
    for mod in [m for m in sys.modules if m == "gguf" or m.startswith("gguf.")]:
        monkeypatch.setitem(sys.modules, mod, None)
    with open_checkpoint(str(p)) as ck:
        assert ck.warnings and "1 tensors" in ck.warnings[0] and "pip install 'wdist[gguf]'" in ck.warnings[0]
        by = {t.name: t for t in ck.tensors}
        np.testing.assert_array_equal(by["a.weight"].read(), weights["output.weight"])
        for name, ref in want.items():  # dequantised natively
            np.testing.assert_array_equal(by[name].read(), ref.reshape(by[name].shape))
        with pytest.raises(MissingDependencyError, match=r"Q5_0 .*pip install 'wdist\[gguf\]'"):
            by["q5.weight"].read()
    code, out = _cli("inspect", str(p), "-j", "1")
    assert code == 2 and "pip install 'wdist[gguf]'" in out, out


def test_alignment_and_version_2(tmp_path, weights):
    p = write(tmp_path / "a64.gguf", {"x.weight": (weights["blk.0.ffn_down.weight"], None),
                                      "y.weight": (weights["output.weight"], None)}, alignment=64)
    with open_checkpoint(str(p)) as ck:
        assert ck.metadata["general.alignment"] == 64
        assert all(t.reader.offset % 64 == 0 for t in ck.tensors)
        np.testing.assert_array_equal(ck.tensors[1].read(), weights["output.weight"])
    v2 = tmp_path / "v2.gguf"
    data = bytearray(p.read_bytes())
    data[4:8] = struct.pack("<I", 2)
    v2.write_bytes(bytes(data))
    with open_checkpoint(str(v2)) as ck:
        assert ck.variant == "v2"
        np.testing.assert_array_equal(ck.tensors[0].read(), weights["blk.0.ffn_down.weight"])


def test_same_model_as_safetensors_and_gguf_gives_identical_stats(tmp_path, weights):
    from safetensors.numpy import save_file

    st_path = tmp_path / "m.safetensors"
    save_file(dict(weights), str(st_path))
    gg = write(tmp_path / "m.gguf", {k: (v, None) for k, v in weights.items()})
    opts = Options(jobs=1)
    with open_checkpoint(str(st_path)) as a, open_checkpoint(str(gg)) as b:
        ra, rb = analyse(a, opts), analyse(b, opts)
    ta = {t.name: t for t in ra.tensors}
    tb = {t.name: t for t in rb.tensors}
    assert sorted(ta) == sorted(tb) == sorted(weights)
    for name in ta:
        assert ta[name].shape == tb[name].shape, name
        assert ta[name].stats == tb[name].stats, name
    # the one difference: GGUF's "token_embd" is known as an embedding, a safetensors name rule does not know it
    assert [n for n in ta if ta[n].role != tb[n].role] == ["token_embd.weight"]
    res = CliRunner().invoke(cli, ["diff", str(st_path), str(gg), "--format", "json", "-j", "1"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["summary"]["statuses"] == {"matched": len(weights)}
    for t in out["tensors"]:
        assert t["change"]["max_abs_change"] == 0.0 and t["change"]["rel_l2_change"] == 0.0, t["name"]


def _cli(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(cli, list(args))
    return r.exit_code, r.output


def test_cli_ls_inspect_check_on_quantised(tmp_path, weights):
    q = quants.quantize(weights["blk.0.attn_q.weight"], T.Q4_0)
    p = write(tmp_path / "cli.gguf", {"token_embd.weight": (weights["token_embd.weight"], None),
                                      "blk.0.attn_q.weight": (q, "Q4_0")})
    code, out = _cli("ls", str(p), "--format", "json")
    assert code == 0, out
    ls = json.loads(out)
    assert ls["checkpoint"]["format"] == "gguf"
    byname = {t["name"]: t for t in ls["tensors"]}
    assert byname["blk.0.attn_q.weight"]["nbytes"] == q.nbytes
    code, out = _cli("inspect", str(p), "--format", "json", "-j", "1", "--tensors")
    assert code == 0, out
    rep = json.loads(out)
    tens = {t["name"]: t for t in rep["tensors"]}
    deq = quants.dequantize(q, T.Q4_0)
    assert tens["blk.0.attn_q.weight"]["stats"]["max"] == pytest.approx(float(deq.max()))
    assert tens["blk.0.attn_q.weight"]["stats"]["min"] == pytest.approx(float(deq.min()))
    assert tens["blk.0.attn_q.weight"]["stats"]["numel"] == deq.size
    code, out = _cli("check", str(p), "--no-config", "--rule", "model: nan_count == 0")
    assert code == 0, out
    code, out = _cli("check", str(p), "--no-config", "--rule", "blk.*: zero_fraction >= 0.9")
    assert code == 1, out


def test_cli_diff_f32_vs_q8_reports_change(tmp_path, weights):
    x = weights["blk.0.attn_q.weight"]
    a = write(tmp_path / "f32.gguf", {"blk.0.attn_q.weight": (x, None)})
    b = write(tmp_path / "q8.gguf", {"blk.0.attn_q.weight": (quants.quantize(x, T.Q8_0), "Q8_0")})
    code, out = _cli("diff", str(a), str(b), "--format", "json", "-j", "1")
    assert code == 0, out
    (t,) = json.loads(out)["tensors"]
    assert t["status"] == "matched"
    # Q8_0 moves each value by at most half a step: a small but non-zero change
    assert 0 < t["change"]["rel_l2_change"] < 0.01
    assert t["change"]["cosine"] > 0.9999


# ---- malformed files: hand-built headers -------------------------------------------------------------

def _s(b: bytes) -> bytes:
    return struct.pack("<Q", len(b)) + b


def build(infos: list[tuple[bytes, list[int], int, int]], data: bytes, *, version: int = 3,
          kvs: bytes = b"", n_kv: int = 0, n_tensors: int | None = None, magic: bytes = b"GGUF",
          align: int = 32) -> bytes:
    out = magic + struct.pack("<IQQ", version, len(infos) if n_tensors is None else n_tensors, n_kv) + kvs
    for name, ne, typ, off in infos:
        out += _s(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne)
        out += struct.pack("<IQ", typ, off)
    out += bytes(-len(out) % align)
    return out + data


GOOD = build([(b"a.weight", [4, 2], 0, 0)], np.arange(8, dtype=np.float32).tobytes())


def test_hand_built_header_is_read(tmp_path):
    p = tmp_path / "h.gguf"
    p.write_bytes(GOOD)
    with open_checkpoint(str(p)) as ck:
        np.testing.assert_array_equal(ck.tensors[0].read(), np.arange(8, dtype=np.float32).reshape(2, 4))


def _kv(key: bytes, vtype: int, payload: bytes) -> bytes:
    return _s(key) + struct.pack("<I", vtype) + payload


BAD = {
    "truncated header": (GOOD[:30], CorruptCheckpointError, "more than a 30-byte file"),
    "truncated tensor info": (GOOD[:50], CorruptCheckpointError, "past the end"),
    "too small": (GOOD[:20], CorruptCheckpointError, "too small"),
    "truncated data": (GOOD[:-4], CorruptCheckpointError, "run past the end"),
    "version 1": (build([], b"", version=1), UnsupportedFormatError, "version 1"),
    "big-endian": (b"GGUF" + struct.pack(">IQQ", 3, 0, 0), UnsupportedFormatError, "big-endian"),
    "version 99": (build([], b"", version=99), CorruptCheckpointError, "version 99"),
    "huge tensor count": (build([], b"", n_tensors=1 << 60), CorruptCheckpointError, "more than"),
    "huge kv count": (build([], b"", n_kv=1 << 40), CorruptCheckpointError, "more than"),
    "huge string": (build([], b"", n_kv=1, kvs=struct.pack("<Q", 1 << 62) + bytes(16)), CorruptCheckpointError,
                    "too long|past the end"),
    "huge array": (build([], b"", n_kv=1, kvs=_kv(b"k", 9, struct.pack("<IQ", 6, 1 << 61))), CorruptCheckpointError,
                   "past the end"),
    "huge string array": (build([], b"", n_kv=1, kvs=_kv(b"k", 9, struct.pack("<IQ", 8, 1 << 61))),
                          CorruptCheckpointError, "past the end"),
    "nested array": (build([], b"", n_kv=1, kvs=_kv(b"k", 9, struct.pack("<IQ", 9, 1) + bytes(12))),
                     CorruptCheckpointError, "not supported"),
    "bad value type": (build([], b"", n_kv=1, kvs=_kv(b"k", 77, b"")), CorruptCheckpointError, "unknown value type"),
    "bad utf8 key": (build([], b"", n_kv=1, kvs=_s(b"\xff\xfe") + struct.pack("<I", 4) + bytes(4)),
                     CorruptCheckpointError, "UTF-8"),
    "alignment not power of two": (build([(b"a", [4], 0, 0)], bytes(64), n_kv=1,
                                         kvs=_kv(b"general.alignment", 4, struct.pack("<I", 48))),
                                   CorruptCheckpointError, "power of two"),
    "alignment zero": (build([], b"", n_kv=1, kvs=_kv(b"general.alignment", 4, struct.pack("<I", 0))),
                       CorruptCheckpointError, "power of two"),
    "five dims": (build([(b"a", [1, 1, 1, 1, 1], 0, 0)], bytes(4)), CorruptCheckpointError, "5 dims"),
    "zero dims": (build([(b"a", [], 0, 0)], bytes(4)), CorruptCheckpointError, "0 dims"),
    "dims claim terabytes": (build([(b"a", [1 << 20, 1 << 20, 1 << 10], 0, 0)], bytes(64)), CorruptCheckpointError,
                             "run past the end"),
    "offset past end": (build([(b"a", [4], 0, 1 << 40)], bytes(16)), CorruptCheckpointError, "run past the end"),
    "misaligned offset": (build([(b"a", [4], 0, 4)], bytes(64)), CorruptCheckpointError, "alignment"),
    "unknown type": (build([(b"a", [4], 999, 0)], bytes(16)), CorruptCheckpointError, "unknown ggml type 999"),
    "row not whole blocks": (build([(b"a", [33], 2, 0)], bytes(64)), CorruptCheckpointError, "whole number"),
    "overlapping tensors": (build([(b"a", [8], 0, 0), (b"b", [8], 0, 0)], bytes(32)), CorruptCheckpointError,
                            "overlaps"),
    "duplicate names": (build([(b"a", [8], 0, 0), (b"a", [8], 0, 32)], bytes(64)), CorruptCheckpointError,
                        "appears twice"),
    "quantised past end": (build([(b"a", [256, 4], 12, 0)], bytes(144)), CorruptCheckpointError,
                           "run past the end"),
}


@pytest.mark.parametrize("what", sorted(BAD))
def test_malformed_files_are_one_typed_error(tmp_path, what):
    data, exc, match = BAD[what]
    p = tmp_path / "bad.gguf"
    p.write_bytes(data)
    with pytest.raises(exc, match=match) as ei:
        open_checkpoint(str(p))
    assert ei.value.path == str(p)
    code, out = _cli("ls", str(p))
    assert code == 2 and out.startswith("wdist: error:") and out.count("\n") == 1, out


def test_sniffed_without_extension(tmp_path, f32_file):
    p = tmp_path / "model.bin"
    p.write_bytes(f32_file.read_bytes())
    with open_checkpoint(str(p)) as ck:
        assert ck.format == "gguf"
    assert PLUGIN.sniff is not None and PLUGIN.sniff(b"GGUF\x03\x00\x00\x00", "x")
    assert not PLUGIN.sniff(b"PK\x03\x04", "x.gguf")


# ---- fuzz: mutated header bytes of a valid file with plain and quantised tensors --------------------

def _fuzz_seed() -> tuple[bytes, int]:
    import tempfile

    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 64)).astype(np.float32)
    raw, _ = k_blocks("Q4_K", 2, 256)
    with tempfile.TemporaryDirectory() as d:
        p = write(Path(d) / "seed.gguf", {"token_embd.weight": (x, None), "blk.0.q.weight": (quants.quantize(x, T.Q8_0), "Q8_0"),
                                          "blk.0.k.weight": (raw, "Q4_K")}, meta={"tokenizer.ggml.tokens": ["a", "bc"]})
        data = p.read_bytes()
    # header end: the first tensor's data starts at the (aligned) data section, after the tensor infos
    return data, data.find(b"blk.0.k.weight") + 64


SEED, HEADER_END = _fuzz_seed()
edits = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=8)


@settings(deadline=10_000, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(edits, st.integers(0, 3))
def test_fuzz_header_bytes(tmp_path, e, cut):
    b = bytearray(SEED)
    for pos, val in e:
        b[pos % HEADER_END] = val
    data = bytes(b) if cut else bytes(b[: len(b) // 2])
    p = tmp_path / "f.gguf"
    p.write_bytes(data)
    mutated_file_outcome(PLUGIN, str(p))


def test_formats_lists_gguf_and_onnx():
    code, out = _cli("formats")
    assert code == 0, out
    rows = {line.split()[0]: line for line in out.splitlines() if line and not line.startswith(" ")}
    assert "GGUF (llama.cpp)" in rows["gguf"] and "(.gguf)" in rows["gguf"]
    assert "(.onnx)" in rows["onnx"]


def test_cli_trend_over_quantisations(tmp_path, weights):
    x = weights["blk.0.attn_q.weight"]
    paths = [write(tmp_path / "a-f32.gguf", {"blk.0.attn_q.weight": (x, None)}),
             write(tmp_path / "b-q8.gguf", {"blk.0.attn_q.weight": (quants.quantize(x, T.Q8_0), "Q8_0")}),
             write(tmp_path / "c-q4.gguf", {"blk.0.attn_q.weight": (quants.quantize(x, T.Q4_0), "Q4_0")})]
    code, out = _cli("trend", *map(str, paths), "--format", "json", "-j", "1", "-q")
    assert code == 0, out
    d = json.loads(out)
    assert [c["format"] for c in d["checkpoints"]] == ["gguf"] * 3
    assert all(c["error"] is None for c in d["checkpoints"])
    assert [t["name"] for t in d["tensors"]] == ["blk.0.attn_q.weight"]


# ---- metadata that decides where the data is: review findings ---------------------------------------------

def test_alignment_after_thousands_of_entries_still_places_the_data(tmp_path, weights):
    """general.alignment written after more entries than are kept for display: it must still decide where
    the tensor data starts (it used to be looked up in the display copy and silently fall back to 32)."""
    w = gguf.GGUFWriter(str(tmp_path / "late.gguf"), "llama")
    for i in range(5000):
        w.add_uint32(f"filler.{i}", i)
    w.add_custom_alignment(256)
    arr = weights["output.weight"]
    w.add_tensor("output.weight", arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    p = tmp_path / "late.gguf"
    ref = gguf.GGUFReader(str(p))  # the reference reader agrees on the alignment and the values
    assert ref.alignment == 256
    with open_checkpoint(str(p)) as ck:
        assert "general.alignment" not in ck.metadata  # past the display cap ...
        assert ck.tensors[0].reader.offset % 256 == 0  # ... yet it placed the data
        np.testing.assert_array_equal(ck.tensors[0].read(), arr)
        np.testing.assert_array_equal(ck.tensors[0].read(), np.asarray(ref.tensors[0].data))


ALIGN_U32 = struct.pack("<I", 64)
META_BAD = {
    # gguf-py raises KeyError("Duplicate ...") and llama.cpp "duplicate key": which copy counts is up to the reader
    "duplicate key": (_kv(b"general.name", 8, _s(b"a")) + _kv(b"general.name", 8, _s(b"b")), 2, "appears twice"),
    "duplicate alignment": (_kv(b"general.alignment", 4, ALIGN_U32) + _kv(b"general.alignment", 4, ALIGN_U32), 2,
                            "appears twice"),
    "duplicate long key": (_kv(b"k" * 200, 4, ALIGN_U32) + _kv(b"k" * 200, 4, ALIGN_U32), 2, "appears twice"),
    # both reference readers insist on uint32 for the alignment
    "alignment as uint64": (_kv(b"general.alignment", 10, struct.pack("<Q", 64)), 1, "not uint32"),
    "alignment as string": (_kv(b"general.alignment", 8, _s(b"64")), 1, "not uint32"),
    "alignment as float": (_kv(b"general.alignment", 6, struct.pack("<f", 64.0)), 1, "not uint32"),
}


@pytest.mark.parametrize("what", sorted(META_BAD))
def test_ambiguous_metadata_is_refused_like_the_reference(tmp_path, what):
    kvs, n_kv, match = META_BAD[what]
    p = tmp_path / "m.gguf"
    p.write_bytes(build([(b"a.weight", [4, 2], 0, 0)], np.arange(8, dtype=np.float32).tobytes(), kvs=kvs,
                        n_kv=n_kv, align=64))
    with pytest.raises((ValueError, KeyError)):  # the reference refuses it too
        gguf.GGUFReader(str(p))
    with pytest.raises(CorruptCheckpointError, match=match):
        open_checkpoint(str(p))
    code, out = _cli("ls", str(p))
    assert code == 2 and out.startswith("wdist: error:") and out.count("\n") == 1, out


def test_many_keys_and_strings_are_bounded(tmp_path):
    from wdist.loaders import fmt_gguf

    p = tmp_path / "kv.gguf"
    p.write_bytes(build([], b"", n_kv=fmt_gguf.MAX_KV + 1, kvs=bytes(13 * (fmt_gguf.MAX_KV + 1))))
    with pytest.raises(CorruptCheckpointError, match="over the limit"):
        open_checkpoint(str(p))
    # the string budget is shared by all arrays: two arrays of 3/4 of it each are refused at the second
    n = fmt_gguf.MAX_ARRAY_STRINGS * 3 // 4
    arr = struct.pack("<IQ", 8, n) + bytes(8 * n)
    p.write_bytes(build([], b"", n_kv=2, kvs=_kv(b"a", 9, arr) + _kv(b"b", 9, arr)))
    with pytest.raises(CorruptCheckpointError, match="strings in all"):
        open_checkpoint(str(p))
    # a real-sized vocabulary of empty strings is fine
    p.write_bytes(build([(b"a.weight", [4, 2], 0, 0)], np.arange(8, dtype=np.float32).tobytes(), n_kv=1,
                        kvs=_kv(b"tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, 300_000) + bytes(8 * 300_000))))
    with open_checkpoint(str(p)) as ck:
        assert ck.metadata["tokenizer.ggml.tokens"] == "<array of 300000 string>"
