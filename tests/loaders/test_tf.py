"""TensorFlow checkpoints read without TensorFlow, on fixtures written once by real TensorFlow 2.21
(tests/data/formats/make_fixtures.py): a Keras 3 model + Adam through tf.train.Checkpoint, a tf.Module in
three data shards whose largest variable TF split into slices, a SavedModel and a TF1 partitioned variable."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wdist.analyzers.inspect import Options, analyse
from wdist.loaders import Role, open_checkpoint
from wdist.loaders.errors import CorruptCheckpointError, UnsupportedFormatError, WdistError
from wdist.loaders.fmt_tf import PLUGIN, crc32c, mask, read_table, slice_key, sniff, sniff_dir, unmask

TF = Path(__file__).parent.parent / "data" / "formats" / "tf"
KERAS = TF / "keras_adam" / "ckpt.index"
SHARDED = TF / "module_sharded" / "ckpt.index"
SAVED = TF / "saved_model"
TF1 = TF / "tf1_partitioned" / "model.ckpt.index"
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def values(ck) -> dict[str, np.ndarray]:
    return {t.name: t.read() for t in ck.tensors}


def test_crc32c_known_values_and_masking():
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert crc32c(b"") == 0
    data = np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8)
    # the blocked numpy path (>= 2 KB) agrees with a byte-at-a-time reference
    reg = 0xFFFFFFFF
    for b in data[:3000].tolist():
        reg ^= b
        for _ in range(8):
            reg = (reg >> 1) ^ (0x82F63B78 if reg & 1 else 0)
    assert crc32c(data[:3000]) == reg ^ 0xFFFFFFFF
    assert unmask(mask(0x12345678)) == 0x12345678 and mask(0x12345678) != 0x12345678


def test_keras_model_and_adam_names_roles_values():
    ck = PLUGIN.load(str(KERAS))
    assert ck.format == "tf-checkpoint" and ck.variant == "object-graph"
    assert ck.metadata == {"step": 1}
    by = {t.name: t for t in ck.tensors}
    expected = np.load(TF / "keras_adam_expected.npz")
    for name in expected:  # Keras's own variable paths, not the object-graph keys
        np.testing.assert_array_equal(by[name].read(), expected[name])
    assert by["sequential/hidden/kernel"].role is Role.WEIGHT and by["sequential/hidden/kernel"].unit_axis == 1
    assert by["sequential/hidden/bias"].role is Role.BIAS
    assert by["sequential/bn/gamma"].role is Role.NORM and by["sequential/bn/beta"].role is Role.NORM
    assert by["sequential/bn/moving_mean"].role is Role.RUNNING_STAT
    assert by["sequential/hidden/kernel"].layer == "sequential/hidden"
    opt = [t for t in ck.tensors if t.role is Role.OPTIMIZER_STATE]
    # 6 trainable variables x (momentum, velocity) + iteration + learning rate
    assert len(opt) == 14 and all(t.name.startswith("adam/") for t in opt)
    assert by["adam/sequential_hidden_kernel_momentum"].shape == (6, 8)
    assert len(ck.tensors) == 22 and not ck.warnings


def test_sharded_module_with_sliced_variable_all_dtypes():
    ck = PLUGIN.load(str(SHARDED))
    assert ck.variant == "object-graph, 3 shards" and not ck.warnings
    exp = np.load(TF / "module_expected.npz")
    got = values(ck)
    assert set(got) == {"embedding", "w16", "wbf", "w64", "count", "big"}
    dt = {t.name: t.dtype for t in ck.tensors}
    assert dt == {"embedding": "float32", "w16": "float16", "wbf": "bfloat16", "w64": "float64", "count": "int64",
                  "big": "float32"}
    for tf_name, ours in (("emb", "embedding"), ("w16", "w16"), ("wbf", "wbf"), ("big", "big"), ("count", "count")):
        np.testing.assert_array_equal(got[ours], exp[tf_name].astype(np.float32))
    np.testing.assert_array_equal(got["w64"], exp["w64"].astype(np.float32))
    big = next(t for t in ck.tensors if t.name == "big")
    assert big.source.count("ckpt.data-") == 3  # its seven slices span all three shards
    # streamed in small chunks, across slice boundaries, the values are the same
    chunks = np.concatenate([c.copy() for _, c in big.chunks(max_elems=100)])
    np.testing.assert_array_equal(chunks, exp["big"].ravel())
    assert next(t for t in ck.tensors if t.name == "embedding").role is Role.EMBEDDING


def test_saved_model_directory_and_same_values_as_checkpoint():
    ck = PLUGIN.load(str(SAVED))
    assert ck.variant == "saved-model"
    assert values(ck).keys() == values(PLUGIN.load(str(SHARDED))).keys()
    for name, v in values(ck).items():
        np.testing.assert_array_equal(v, values(PLUGIN.load(str(SHARDED)))[name])
    assert sniff_dir(str(SAVED)) and sniff_dir(str(KERAS.parent)) and not sniff_dir(str(TF))


def test_tf1_partitioned_variable_assembled():
    ck = PLUGIN.load(str(TF1))
    assert ck.variant == "tf1-saver"
    assert [(t.name, t.shape) for t in ck.tensors] == [("part", (6, 2))]
    np.testing.assert_array_equal(ck.tensors[0].read(), np.ones((6, 2), np.float32))
    keys = [k for k, _ in read_table(str(TF1))]
    assert slice_key(b"part", [(3, 3), (0, 2)]) in keys and slice_key(b"part", [(0, 3), (0, 2)]) in keys


def test_path_forms_and_detection(tmp_path):
    prefix = str(KERAS)[: -len(".index")]
    for p in (str(KERAS), prefix, prefix + ".data-00000-of-00001", str(KERAS.parent)):
        assert len(PLUGIN.load(p).tensors) == 22
    head = KERAS.read_bytes()[:4096]
    assert sniff(head, str(KERAS)) and sniff(b"", prefix + ".data-00000-of-00001")
    assert not sniff(head, str(tmp_path / "x.bin"))
    assert open_checkpoint(str(KERAS)).format == "tf-checkpoint"
    assert open_checkpoint(str(SAVED / "variables" / "variables.index")).variant == "saved-model"


def _copy(tmp_path: Path, src: Path) -> Path:
    dst = tmp_path / src.parent.name
    shutil.copytree(src.parent, dst)
    return dst / src.name


def test_crc_mismatch_is_caught_while_streaming(tmp_path):
    idx = _copy(tmp_path, KERAS)
    data = idx.parent / "ckpt.data-00000-of-00001"
    ck = PLUGIN.load(str(idx))
    t = next(t for t in ck.tensors if t.name == "sequential/hidden/kernel")
    raw = bytearray(data.read_bytes())
    raw[t.reader.offset + 5] ^= 0x01
    data.write_bytes(bytes(raw))
    ck = PLUGIN.load(str(idx))  # headers only: still fine
    t = next(t for t in ck.tensors if t.name == "sequential/hidden/kernel")
    with pytest.raises(CorruptCheckpointError, match="crc32c"):
        for _ in t.chunks(max_elems=7):
            pass
    other = next(t for t in ck.tensors if t.name == "sequential/logits/kernel")
    assert other.read().shape == (8, 3)
    r = run("inspect", str(idx))
    assert r.exit_code == 2 and "crc32c" in r.output


def test_malformed_indexes_are_one_typed_error(tmp_path):
    good = KERAS.read_bytes()
    cases = {
        "truncated": good[:-10],
        "tiny": b"abc",
        "bad_magic": good[:-8] + b"\x00" * 8,
        "flipped_block": bytes([good[0] ^ 0xFF]) + good[1:],
    }
    for what, data in cases.items():
        d = tmp_path / what
        shutil.copytree(KERAS.parent, d)
        (d / "ckpt.index").write_bytes(data)
        with pytest.raises(CorruptCheckpointError) as ei:
            PLUGIN.load(str(d / "ckpt.index"))
        assert ei.value.path == str(d / "ckpt.index"), what
    # a missing and a truncated data shard
    d = tmp_path / "missing"
    shutil.copytree(KERAS.parent, d)
    os.remove(d / "ckpt.data-00000-of-00001")
    with pytest.raises(CorruptCheckpointError, match="missing"):
        PLUGIN.load(str(d / "ckpt.index"))
    (d / "ckpt.data-00000-of-00001").write_bytes(b"\x00" * 100)
    with pytest.raises(CorruptCheckpointError, match="outside"):
        PLUGIN.load(str(d / "ckpt.index"))
    with pytest.raises(UnsupportedFormatError):
        PLUGIN.load(str(tmp_path))
    # through detection too: a damaged .index still gets the reader's own explanation
    with pytest.raises(CorruptCheckpointError, match="SSTable magic"):
        open_checkpoint(str(tmp_path / "bad_magic" / "ckpt.index"))


def test_snappy_block_refused_clearly(tmp_path):
    idx = _copy(tmp_path, KERAS)
    raw = bytearray(idx.read_bytes())
    footer = raw[-48:]
    from wdist.loaders.fmt_tf import _handle

    _mo, _ms, pos = _handle(bytes(footer), 0)
    off, size, _ = _handle(bytes(footer), pos)
    raw[off + size] = 1  # compression type of the index block: snappy, with a valid checksum
    raw[off + size + 1: off + size + 5] = mask(crc32c(bytes(raw[off:off + size + 1]))).to_bytes(4, "little")
    idx.write_bytes(bytes(raw))
    with pytest.raises(CorruptCheckpointError, match="snappy"):
        PLUGIN.load(str(idx))


def test_cli_ls_inspect_diff_check():
    r = run("ls", str(KERAS), "--format", "json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["checkpoint"]["format"] == "tf-checkpoint" and doc["checkpoint"]["tensors"] == 22
    names = {t["name"]: t for t in doc["tensors"]}
    assert names["sequential/logits/kernel"]["shape"] == [8, 3] and names["sequential/logits/kernel"]["role"] == "weight"
    r = run("inspect", str(KERAS), "--format", "json", "-j", "1")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    layers = {la["name"] for la in doc["layers"]}
    assert {"sequential/hidden", "sequential/logits", "sequential/bn"} <= layers
    kern = next(t for t in doc["tensors"] if t["name"] == "sequential/hidden/kernel")
    exp = np.load(TF / "keras_adam_expected.npz")["sequential/hidden/kernel"]
    assert kern["stats"]["max"] == pytest.approx(float(exp.max()), rel=1e-6)
    assert kern["stats"]["l2_norm"] == pytest.approx(float(np.linalg.norm(exp.astype(np.float64))), rel=1e-6)
    # the same tf.Module as a 3-shard checkpoint and as a SavedModel: every tensor matches, nothing moved
    r = run("diff", str(SHARDED), str(SAVED / "variables" / "variables.index"), "--format", "json", "-j", "1")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    matched = [t for t in d["tensors"] if t["status"] == "matched"]
    assert {t["name"] for t in matched} == {"big", "embedding", "w16", "wbf", "w64"}
    assert all(t["change"]["rel_l2_change"] == 0 and t["change"]["changed_fraction"] == 0 for t in matched)
    r = run("check", str(KERAS), "--rule", "model: nan_count == 0", "--no-config", "-j", "1")
    assert r.exit_code == 0, r.output
    r = run("check", str(KERAS), "--rule", "model: zero_fraction >= 0.5", "--no-config", "-j", "1")
    assert r.exit_code == 1, r.output


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=6),
       which=st.sampled_from(["index", "data"]))
def test_fuzz_index_and_data(tmp_path_factory, edits, which):
    d = tmp_path_factory.mktemp("tf")
    for f in SHARDED.parent.iterdir():
        shutil.copy(f, d / f.name)
    target = d / ("ckpt.index" if which == "index" else "ckpt.data-00001-of-00003")
    b = bytearray(target.read_bytes())
    for pos, val in edits:
        b[pos % len(b)] = val
    target.write_bytes(bytes(b))
    try:
        ck = open_checkpoint(str(d / "ckpt.index"))
        analyse(ck, Options(jobs=1, roles=tuple(Role)))
    except WdistError:
        pass


def _block_spans(data: bytes) -> list[tuple[int, int]]:
    from wdist.loaders.fmt_tf import _block_entries, _handle

    _mo, _ms, pos = _handle(data[-48:], 0)
    off, size, _ = _handle(data[-48:], pos)
    spans = [(off, size)]
    for _k, hv in _block_entries(data[off:off + size]):
        o, s, _ = _handle(hv, 0)
        spans.append((o, s))
    return spans


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=6),
       src=st.sampled_from([KERAS, SHARDED, TF1]), which=st.integers(0, 3))
def test_fuzz_block_contents_with_valid_checksums(tmp_path_factory, edits, src, which):
    """Mutations inside a block whose crc is then fixed reach the entry and protobuf decoders."""
    d = tmp_path_factory.mktemp("tfb")
    for f in src.parent.iterdir():
        shutil.copy(f, d / f.name)
    target = d / src.name
    raw = bytearray(target.read_bytes())
    spans = _block_spans(bytes(raw))
    off, size = spans[which % len(spans)]
    for pos, val in edits:
        raw[off + pos % size] = val
    raw[off + size + 1: off + size + 5] = mask(crc32c(bytes(raw[off:off + size + 1]))).to_bytes(4, "little")
    target.write_bytes(bytes(raw))
    try:
        ck = open_checkpoint(str(target))
        analyse(ck, Options(jobs=1, roles=tuple(Role)))
    except WdistError:
        pass


def test_cli_trend_over_two_checkpoints(tmp_path):
    for f in KERAS.parent.iterdir():
        shutil.copy(f, tmp_path / f.name)
        shutil.copy(f, tmp_path / f.name.replace("ckpt", "ckpt-2"))
    r = run("trend", str(tmp_path), "--format", "json", "-j", "1")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert [os.path.basename(c["path"]) for c in doc["checkpoints"]] == ["ckpt-2.index", "ckpt.index"]
    assert "sequential/hidden" in {la["name"] for la in doc["layers"]}


def test_numpy_crc_path_agrees_with_google_crc32c(monkeypatch):
    """The optional C implementation and the numpy fallback give the same checksums."""
    import functools

    from wdist.loaders import fmt_tf

    g = pytest.importorskip("google_crc32c")
    d = np.random.default_rng(3).integers(0, 256, 300_001, dtype=np.uint8)
    monkeypatch.setattr(fmt_tf, "_fast_crc", functools.cache(lambda: None))
    reg = 0xFFFFFFFF
    for i in range(0, d.size, 70_000):  # streamed in pieces, as CrcRangeReader does
        reg = fmt_tf._crc_update(reg, d[i:i + 70_000])
    assert reg ^ 0xFFFFFFFF == g.value(d.tobytes())


def test_numpy_crc_streamed_in_pieces_equals_one_shot(monkeypatch):
    import functools

    from wdist.loaders import fmt_tf

    monkeypatch.setattr(fmt_tf, "_fast_crc", functools.cache(lambda: None))
    d = np.random.default_rng(4).integers(0, 256, 123_457, dtype=np.uint8)
    reg = 0xFFFFFFFF
    for i in range(0, d.size, 10_001):
        reg = fmt_tf._crc_update(reg, d[i:i + 10_001])
    ref = 0xFFFFFFFF
    table = fmt_tf._crc_table_list()
    for b in d.tolist():
        ref = table[(ref ^ b) & 0xFF] ^ (ref >> 8)
    assert reg == ref


def test_keras2_save_weights_tf_format():
    """tf_keras model.save_weights('ckpt'): object-graph keys `layer_with_weights-0/kernel/...` become the
    layers' own names, Adam's m/v slots are optimizer state."""
    idx = TF / "keras2_weights" / "ckpt.index"
    keys = {k.decode() for k, _ in read_table(str(idx))}
    assert "layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE" in keys
    ck = PLUGIN.load(str(idx))
    by = {t.name: t for t in ck.tensors}
    exp = np.load(TF / "keras2_expected.npz")
    assert set(exp) == {n for n, t in by.items() if t.role is not Role.OPTIMIZER_STATE}
    for name in exp:
        np.testing.assert_array_equal(by[name].read(), exp[name])
    assert by["dense/kernel"].role is Role.WEIGHT and by["dense/kernel"].unit_axis == 1
    assert by["Adam/m/dense/kernel"].role is Role.OPTIMIZER_STATE and by["Adam/m/dense/kernel"].shape == (3, 4)
    assert ck.metadata == {"step": 1}


# ---- second adversarial review: crafted bundles (tests/tf_bundle.py writes what TF would not) -------------

def _bundle(d: Path, values: np.ndarray, crc: int | None | str = "right", repeats: int = 1) -> Path:
    import tf_bundle as tb

    d.mkdir(parents=True, exist_ok=True)
    data = values.astype(np.float32).tobytes()
    c = tb.tensor_crc(data) if crc == "right" else crc
    assert not isinstance(c, str)
    kvs = [(b"", tb.header()), (b"dense/kernel", tb.entry(1, list(values.shape), 0, len(data), c))]
    (d / "ckpt.index").write_bytes(tb.table(kvs, repeats))
    (d / "ckpt.data-00000-of-00001").write_bytes(data)
    return d / "ckpt.index"


def test_crafted_bundle_reads_like_tf(tmp_path):
    a = np.arange(16, dtype=np.float32).reshape(4, 4)
    with open_checkpoint(str(_bundle(tmp_path / "ok", a))) as ck:
        np.testing.assert_array_equal(ck.tensors[0].read(), a)


def test_entry_without_crc_is_checked_against_zero_as_tf_does(tmp_path):
    """TensorFlow's BundleReader compares every entry's data with Unmask(entry.crc32c()), 0 when absent: an
    entry without a CRC is refused (unless its data's masked CRC is 0), never read unchecked."""
    idx = _bundle(tmp_path / "none", np.full((32, 32), 7777.0), crc=None)
    ck = open_checkpoint(str(idx))  # listing reads no data
    with pytest.raises(CorruptCheckpointError, match="crc32c"):
        ck.tensors[0].read()
    r = run("check", str(idx), "--no-config", "--rule", "model: nan_count == 0")
    assert r.exit_code == 2 and r.output.splitlines()[-1].startswith("wdist: error:")


def test_data_shard_symlinked_out_of_the_folder_is_refused(tmp_path):
    outside = tmp_path / "outside"
    idx = _bundle(outside, np.full((4, 4), 7777.0))
    d = tmp_path / "ckpt"
    d.mkdir()
    shutil.copy(idx, d / "ckpt.index")
    os.symlink(outside / "ckpt.data-00000-of-00001", d / "ckpt.data-00000-of-00001")
    with pytest.raises(CorruptCheckpointError, match="outside"):
        open_checkpoint(str(d / "ckpt.index"))
    r = run("inspect", str(d))
    assert r.exit_code == 2 and "7777" not in r.output and r.output.count("\n") == 1
    # a symlink that stays inside the folder is fine
    os.remove(d / "ckpt.data-00000-of-00001")
    shutil.copy(outside / "ckpt.data-00000-of-00001", d / "real.data")
    os.symlink(d / "real.data", d / "ckpt.data-00000-of-00001")
    with open_checkpoint(str(d / "ckpt.index")) as ck:
        assert ck.tensors[0].read().max() == 7777.0


def test_index_naming_one_data_block_many_times_is_refused(tmp_path):
    """An index block whose entries all name the same data block multiplied 11 MB into 9M entries (39 s,
    3.7 GB): data blocks must lie in order and apart, and keys increase."""
    idx = _bundle(tmp_path / "rep", np.ones((4, 4)), repeats=9)
    with pytest.raises(CorruptCheckpointError, match="overlaps"):
        open_checkpoint(str(idx))


def test_entry_count_is_bounded(tmp_path, monkeypatch):
    import tf_bundle as tb

    from wdist.loaders import fmt_tf

    monkeypatch.setattr(fmt_tf, "MAX_ENTRIES", 100)
    d = tmp_path / "many"
    d.mkdir()
    kvs = [(b"", tb.header())] + [(f"v{i:04d}".encode(), tb.entry(1, [1], 0, 4, None)) for i in range(150)]
    (d / "ckpt.index").write_bytes(tb.table(kvs))
    (d / "ckpt.data-00000-of-00001").write_bytes(bytes(4))
    with pytest.raises(CorruptCheckpointError, match="more than"):
        open_checkpoint(str(d / "ckpt.index"))


def test_crc_is_checked_on_tensors_larger_than_one_task(tmp_path, monkeypatch):
    """Large tensors are analysed as several element-range tasks, and a range that does not start at the
    tensor's first byte cannot extend its crc32c: a TF tensor is one task (same results), so a damaged
    byte near its end is caught (it was served unchecked when the tensor was split)."""
    from wdist.analyzers import engine

    monkeypatch.setattr(engine, "TASK_ELEMS", 1 << 16)
    monkeypatch.setattr(engine, "PARALLEL_MIN_BYTES", 0)  # -j 2: the tasks run in two worker processes
    a = np.random.default_rng(0).standard_normal((400, 500)).astype(np.float32)
    idx = _bundle(tmp_path / "big", a)
    assert len(engine.task_ranges(a.size)) == 4  # a tensor of another format would be split in four
    r = run("inspect", str(idx), "--no-cache", "-j", "1", "--format", "json", "--role", "all")
    assert r.exit_code == 0 and json.loads(r.output)["tensors"][0]["stats"]["numel"] == a.size, r.output
    data = idx.parent / "ckpt.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[-3] ^= 0x40
    data.write_bytes(bytes(raw))
    for jobs in ("1", "2"):
        r = run("inspect", str(idx), "--no-cache", "-j", jobs, "--role", "all")
        assert r.exit_code == 2 and "crc32c" in r.output, r.output


def test_crc_is_checked_on_partitioned_variables_split_into_tasks(tmp_path, monkeypatch):
    """A partitioned variable is assembled from slices, each with its own crc32c: the assembled tensor must
    also stay one task, or no worker reads a slice from its start to its end (found by review: a NaN planted
    in slice 2 after its CRC was computed passed with --jobs 2)."""
    import tf_bundle as tb

    from wdist.analyzers import engine
    from wdist.loaders.fmt_tf import slice_key

    monkeypatch.setattr(engine, "TASK_ELEMS", 1 << 16)
    monkeypatch.setattr(engine, "PARALLEL_MIN_BYTES", 0)
    n, h = 300_000, 150_000
    a = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    s1, s2 = a[:h].tobytes(), a[h:].tobytes()
    c1, c2 = tb.tensor_crc(s1), tb.tensor_crc(s2)
    d = tmp_path / "part"
    d.mkdir()

    def ext(start: int, length: int) -> bytes:
        return tb.field(1, 2, tb.field(1, 0, start) + tb.field(2, 0, length))

    main = (tb.field(1, 0, 1) + tb.field(2, 2, tb.field(2, 2, tb.field(1, 0, n)))
            + tb.field(7, 2, ext(0, h)) + tb.field(7, 2, ext(h, n - h)))
    kvs = sorted([(b"", tb.header()), (slice_key(b"dense/kernel", [(0, h)]), tb.entry(1, [h], 0, len(s1), c1)),
                  (slice_key(b"dense/kernel", [(h, n - h)]), tb.entry(1, [n - h], len(s1), len(s2), c2)),
                  (b"dense/kernel", main)], key=lambda kv: kv[0])
    (d / "model.ckpt.index").write_bytes(tb.table(kvs))
    data = bytearray(s1 + s2)
    (d / "model.ckpt.data-00000-of-00001").write_bytes(bytes(data))
    idx = str(d / "model.ckpt.index")
    with open_checkpoint(idx) as ck:
        np.testing.assert_array_equal(ck.tensors[0].read(), a)
    data[-400:-396] = np.float32(np.nan).tobytes()
    (d / "model.ckpt.data-00000-of-00001").write_bytes(bytes(data))
    for jobs in ("1", "2"):
        r = run("inspect", idx, "--no-cache", "-j", jobs, "--role", "all")
        assert r.exit_code == 2 and "crc32c" in r.output, (jobs, r.output)


def test_index_symlinked_out_of_the_folder_is_not_followed(tmp_path):
    """Given a folder, its .index must resolve inside it (found by review: A/ckpt.index -> B/ckpt.index made
    A's report show a tensor only B's index names); the data shard is A's own, as TensorFlow would take."""
    a = np.ones((4, 4), np.float32)
    _bundle(tmp_path / "B", np.full((4, 4), 7777.0))
    d = tmp_path / "A"
    d.mkdir()
    os.symlink(tmp_path / "B" / "ckpt.index", d / "ckpt.index")
    (d / "ckpt.data-00000-of-00001").write_bytes(a.tobytes())
    r = run("inspect", str(d))
    assert r.exit_code == 2 and "7777" not in r.output and r.output.count("\n") == 1, r.output
    # the index passed explicitly is the user's choice, read against the shard beside the path given (A's
    # ones, which B's crc32c then refuses: never B's values)
    with open_checkpoint(str(d / "ckpt.index")) as ck, pytest.raises(CorruptCheckpointError, match="crc32c"):
        ck.tensors[0].read()


def test_checkpoint_file_symlinked_out_of_the_folder_is_not_read(tmp_path, monkeypatch):
    """The `checkpoint` file naming the folder's .index is not read when it is a symlink out of the folder
    (found by review: it was opened and read): it counts as absent. A symlink inside the folder is read."""
    import wdist.loaders.fmt_tf as tf

    _bundle(tmp_path / "A", np.ones((4, 4)))
    (tmp_path / "B").mkdir()
    outside = tmp_path / "B" / "checkpoint"
    outside.write_text('model_checkpoint_path: "other"\n')
    os.symlink(outside, tmp_path / "A" / "checkpoint")
    opened: list[str] = []
    real_open = open
    monkeypatch.setattr(tf, "open", lambda f, *a, **k: opened.append(os.path.realpath(f)) or real_open(f, *a, **k),
                        raising=False)
    with open_checkpoint(str(tmp_path / "A")) as ck:  # the single .index, as without a `checkpoint` file
        assert ck.tensors[0].read().max() == 1.0
    assert sniff_dir(str(tmp_path / "A")) and str(outside) not in opened
    # inside the folder: followed, and it picks one of two indexes
    d = tmp_path / "D"
    _bundle(d, np.full((4, 4), 3.0))
    shutil.copy(d / "ckpt.index", d / "zzz.index")
    (d / "state.txt").write_text('model_checkpoint_path: "ckpt"\n')
    os.symlink("state.txt", d / "checkpoint")
    with open_checkpoint(str(d)) as ck:
        assert ck.sources[0] == str(d / "ckpt.index") and ck.tensors[0].read().max() == 3.0


# ---- review of 2026-12-04 (fifth session): slices tiled exactly, entries in their own bytes, names unique ----

def _write_bundle(d: Path, kvs: list[tuple[bytes, bytes]], data: bytes) -> Path:
    import tf_bundle as tb

    d.mkdir(parents=True, exist_ok=True)
    (d / "ckpt.index").write_bytes(tb.table(sorted(kvs)))
    (d / "ckpt.data-00000-of-00001").write_bytes(data)
    return d / "ckpt.index"


def _partitioned(d: Path, rows: int, starts: list[int]) -> tuple[Path, np.ndarray]:
    """A [rows, 4] float32 variable as one-row slices starting at `starts` (each its own entry and bytes)."""
    import tf_bundle as tb

    vals = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
    shape = tb.field(2, 2, tb.field(1, 0, rows)) + tb.field(2, 2, tb.field(1, 0, 4))
    full = tb.field(1, 0, 1) + tb.field(2, 2, shape)
    kvs, data = [(b"", tb.header())], b""
    for r in starts:  # the variable's entry lists each start; a slice's own entry is written once
        full += tb.field(7, 2, tb.field(1, 2, tb.field(1, 0, r) + tb.field(2, 0, 1)) + tb.field(1, 2, tb.field(1, 0, 0)))
    for r in sorted(set(starts)):
        row = vals[r].tobytes()
        kvs.append((slice_key(b"fc/kernel", [(r, 1), (0, -1)]), tb.entry(1, [1, 4], len(data), 16, tb.tensor_crc(row))))
        data += row
    kvs.append((b"fc/kernel", full))
    return _write_bundle(d, kvs, data), vals


def test_three_hundred_slices_read_and_overlapping_ones_are_refused(tmp_path):
    """300 one-row slices read as the variable; the same slices all claiming row 0 (their sizes add up,
    299 rows were holes read as zeros: a nan_count gate passed on 16 bytes claiming 1,200 values) and
    one slice moved onto its neighbour are refused."""
    idx, vals = _partitioned(tmp_path / "ok", 300, list(range(300)))
    with open_checkpoint(str(idx)) as ck:
        np.testing.assert_array_equal(ck.tensors[0].read(), vals)
    for name, starts in (("first", [0] * 300), ("moved", [*range(150), 149, *range(151, 300)])):
        idx, _ = _partitioned(tmp_path / name, 300, starts)
        with pytest.raises(CorruptCheckpointError, match="slices do not tile"):
            open_checkpoint(str(idx))


def test_entries_sharing_bytes_are_refused(tmp_path):
    """2,000 entries naming one 4 MB range (a 96 KB index) were analysed as 8 GB; entries must lie in their
    own bytes. An empty tensor at the offset of another is fine (it takes no bytes)."""
    import tf_bundle as tb

    data = np.arange(64, dtype=np.float32).tobytes()
    crc = tb.tensor_crc(data)
    kvs = [(b"", tb.header())] + [(f"layer{i}/kernel".encode(), tb.entry(1, [8, 8], 0, len(data), crc))
                                  for i in range(50)]
    with pytest.raises(CorruptCheckpointError, match="overlapping bytes"):
        open_checkpoint(str(_write_bundle(tmp_path / "amp", kvs, data)))
    kvs = [(b"", tb.header()), (b"a/kernel", tb.entry(1, [8, 8], 0, len(data), crc)),
           (b"b/empty", tb.entry(1, [0, 8], 0, 0, tb.tensor_crc(b"")))]
    with open_checkpoint(str(_write_bundle(tmp_path / "empty", kvs, data))) as ck:
        assert sorted(t.name for t in ck.tensors) == ["a/kernel", "b/empty"]


def test_keys_that_decode_to_one_name_are_refused(tmp_path):
    """Keys b"fc/kernel\\xfe" (ones) and b"fc/kernel\\xff" (NaN) both decoded to 'fc/kernel\\ufffd': two rows
    of one name, which no rule, diff or JSON reader could tell apart. The registry refuses two tensors of
    one name for every format."""
    import tf_bundle as tb

    ones, nans = np.ones(4, np.float32).tobytes(), np.full(4, np.nan, np.float32).tobytes()
    kvs = [(b"", tb.header()), (b"fc/kernel\xfe", tb.entry(1, [4], 0, 16, tb.tensor_crc(ones))),
           (b"fc/kernel\xff", tb.entry(1, [4], 16, 16, tb.tensor_crc(nans)))]
    idx = _write_bundle(tmp_path / "dup", kvs, ones + nans)
    with pytest.raises(CorruptCheckpointError, match="two tensors are named 'fc/kernel\ufffd'"):
        open_checkpoint(str(idx))
    r = run("check", str(idx), "--no-config", "--rule", "model: nan_count == 0")
    assert r.exit_code == 2 and r.output.splitlines()[-1].startswith("wdist: error:")


def test_object_graph_and_entries_are_bounded(tmp_path):
    """An object graph of 5M empty nodes (10 MB) took 1.7 GB, an entry padded with 5M unknown fields 411 MB:
    the graph holds at most a few nodes per entry (beyond, it is passed over with a warning and the keys
    name the tensors) and an entry at most 1 MiB."""
    import tf_bundle as tb
    from corpus import varint

    w = np.ones(16, "<f4").tobytes()
    for n, warned in ((10_000, False), (20_000, True)):
        graph = b"\x0a\x00" * n
        blob = varint(len(graph)) + b"\0\0\0\0" + graph
        kvs = [(b"", tb.header()), (b"_CHECKPOINTABLE_OBJECT_GRAPH", tb.entry(7, [], len(w), len(blob), 0)),
               (b"fc/kernel", tb.entry(1, [4, 4], 0, len(w), tb.tensor_crc(w)))]
        with open_checkpoint(str(_write_bundle(tmp_path / f"g{n}", kvs, w + blob))) as ck:
            assert [t.name for t in ck.tensors] == ["fc/kernel"]
            assert any("more than 10,016 nodes" in x for x in ck.warnings) is warned, ck.warnings
    pad = b"\x78\x00" * 600_000  # field 15, varint 0: unknown to BundleEntryProto
    kvs = [(b"", tb.header()), (b"fc/kernel", tb.entry(1, [4, 4], 0, len(w), tb.tensor_crc(w)) + pad)]
    with pytest.raises(CorruptCheckpointError, match="an entry of 1,200,0"):
        open_checkpoint(str(_write_bundle(tmp_path / "pad", kvs, w)))
