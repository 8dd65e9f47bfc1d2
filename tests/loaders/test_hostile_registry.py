"""Model folders, sharded indexes and detection under hostile or odd layouts: no hang, no read outside the
model's folder, no silent merge of unrelated files."""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import numpy as np
import pytest
from safetensors.numpy import save_file

from wdist.loaders import open_checkpoint
from wdist.loaders.errors import CorruptCheckpointError, UnsupportedFormatError, WdistError
from wdist.loaders.registry import (
    EXTENSIONS,
    _entry_points,
    find_in_dir,
    format_names,
    formats,
    shard_set,
    sniff,
)
from wdist.loaders.roles import infer_role


def _st(path, tensors):
    save_file({k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}, str(path))
    return path


def _finishes(fn, seconds=5.0):
    """Run fn in a thread; fail (instead of hanging the suite) when it does not return in time."""
    out: dict = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            out["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "call did not finish: it blocks"
    return out


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    out = _finishes(lambda: open_checkpoint(str(fifo)))
    assert isinstance(out.get("error"), UnsupportedFormatError) and "regular file" in str(out["error"])
    # the same FIFO inside a model folder next to a real checkpoint is never opened
    _st(tmp_path / "real.safetensors", {"w": np.ones((4, 4))})
    out = _finishes(lambda: open_checkpoint(str(tmp_path)))
    assert out.get("value") is not None and [t.name for t in out["value"].tensors] == ["w"]
    out = _finishes(lambda: open_checkpoint(str(fifo), "safetensors"))
    assert isinstance(out.get("error"), WdistError)


def test_index_naming_an_index_is_refused(tmp_path):
    a, b = tmp_path / "a.index.json", tmp_path / "b.index.json"
    a.write_text(json.dumps({"weight_map": {"w": "b.index.json"}}))
    b.write_text(json.dumps({"weight_map": {"w": "a.index.json"}}))
    with pytest.raises(CorruptCheckpointError, match="index cannot name an index"):
        open_checkpoint(str(a))


def test_deeply_nested_index_json_is_one_error(tmp_path):
    p = tmp_path / "model.safetensors.index.json"
    p.write_text('{"weight_map": ' + "[" * 200_000 + "]" * 200_000 + "}")
    with pytest.raises(CorruptCheckpointError):
        open_checkpoint(str(p))


def test_shards_outside_the_folder_are_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    _st(outside / "secret.safetensors", {"w": np.full((2, 2), 7.0)})
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "../outside/secret.safetensors"}}))
    with pytest.raises(CorruptCheckpointError, match="outside"):
        open_checkpoint(str(model))
    # a symlink inside the folder that leads out of it is refused too
    os.symlink(outside / "secret.safetensors", model / "link.safetensors")
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "link.safetensors"}}))
    with pytest.raises(CorruptCheckpointError, match="outside"):
        open_checkpoint(str(model))
    # and a folder whose only weights file is such a symlink holds no checkpoint
    (model / "model.safetensors.index.json").unlink()
    with pytest.raises(UnsupportedFormatError):
        open_checkpoint(str(model))


def test_hugging_face_cache_symlinks_are_followed_within_the_repo(tmp_path):
    repo = tmp_path / "models--org--name"
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    _st(repo / "blobs" / "0123abcd", {"w": np.ones((3, 3))})
    os.symlink("../../blobs/0123abcd", snap / "model.safetensors")
    ck = open_checkpoint(str(snap))
    assert [t.name for t in ck.tensors] == ["w"]


def test_a_folder_of_epochs_is_not_one_sharded_model(tmp_path):
    for e in (1, 2, 5):
        _st(tmp_path / f"epoch{e}.safetensors", {"bn1.weight": np.full(4, float(e)), "conv.weight": np.ones((2, 2))})
    assert find_in_dir(str(tmp_path)) == []
    with pytest.raises(UnsupportedFormatError, match="3 separate checkpoints"):
        open_checkpoint(str(tmp_path))
    from wdist.analyzers.trend import expand_inputs

    assert [os.path.basename(p) for p in expand_inputs([str(tmp_path)])] == [
        "epoch1.safetensors", "epoch2.safetensors", "epoch5.safetensors"]


def test_numbered_shards_form_one_model(tmp_path):
    _st(tmp_path / "model-00001-of-00002.safetensors", {"a.weight": np.ones((2, 2))})
    _st(tmp_path / "model-00002-of-00002.safetensors", {"b.weight": np.ones((2, 2))})
    ck = open_checkpoint(str(tmp_path))
    assert ck.variant == "sharded" and sorted(t.name for t in ck.tensors) == ["a.weight", "b.weight"]
    assert shard_set(["m-00001-of-00003.safetensors", "m-00002-of-00003.safetensors"]) is None  # incomplete


def test_duplicate_tensor_across_shards_names_both_files(tmp_path):
    _st(tmp_path / "model-00001-of-00002.safetensors", {"a.weight": np.ones((2, 2))})
    _st(tmp_path / "model-00002-of-00002.safetensors", {"a.weight": np.zeros((2, 2))})
    with pytest.raises(CorruptCheckpointError, match="model-00001-of-00002.safetensors and model-00002-of-00002"):
        open_checkpoint(str(tmp_path))


def _padded_safetensors(path):
    """A valid safetensors file whose JSON header starts with spaces (the format allows padding)."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    header = b"  " + header
    header += b" " * (-len(header) % 8)
    path.write_bytes(len(header).to_bytes(8, "little") + header + np.array([1.0, -2.0], np.float32).tobytes())
    return path


def test_padded_header_is_detected_and_a_forced_format_skips_sniffing(tmp_path):
    p = _padded_safetensors(tmp_path / "padded.bin")
    assert sniff(str(p)) == "safetensors"
    assert open_checkpoint(str(p), "safetensors").tensors[0].read().tolist() == [1.0, -2.0]
    with pytest.raises(WdistError):
        open_checkpoint(str(p), "keras-h5")
    with pytest.raises(UnsupportedFormatError, match="unknown input format"):
        open_checkpoint(str(p), "nope")


def test_role_inference_is_linear_in_the_name_length():
    name = "_" * 200_000 + ".bias"
    t = time.perf_counter()
    infer_role(name, name[:-5], "bias", (3,), "float32")
    assert time.perf_counter() - t < 0.5


def test_gpt2_conv1d_units_are_along_the_last_axis(tmp_path):
    w = np.random.default_rng(0).normal(size=(8, 24)).astype(np.float32)
    w[:, 5] = 0  # one dead output unit of c_attn (a column of the [in, out] weight)
    p = _st(tmp_path / "gpt2.safetensors", {"h.0.attn.c_attn.weight": w, "h.0.mlp.c_fc.weight": np.ones((8, 32))})
    from wdist.analyzers.inspect import analyse

    rep = analyse(open_checkpoint(str(p)))
    by = {t.name: t.stats for t in rep.tensors}
    assert by["h.0.attn.c_attn.weight"]["units"] == 24 and by["h.0.attn.c_attn.weight"]["dead_units"] == 1
    assert by["h.0.mlp.c_fc.weight"]["units"] == 32


def test_builtin_formats_are_registered_with_their_extensions():
    names = format_names()
    for n in ("torch-zip", "torch-legacy", "safetensors", "keras-h5", "keras-zip"):
        assert n in names
    assert EXTENSIONS[".safetensors"] == "safetensors" and ".keras" in set(EXTENSIONS)


def test_third_party_format_via_entry_point(tmp_path, monkeypatch):
    """A package that declares a `wdist.formats` entry point is picked up by detection, `--input-format`
    and the format list, with no edit to wdist."""
    pkg = tmp_path / "site"
    (pkg / "wdist_fake_fmt-0.1.dist-info").mkdir(parents=True)
    (pkg / "wdist_fake_fmt-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: wdist-fake-fmt\nVersion: 0.1\n")
    (pkg / "wdist_fake_fmt-0.1.dist-info" / "entry_points.txt").write_text("[wdist.formats]\nfake = wdist_fake_fmt\n")
    (pkg / "wdist_fake_fmt.py").write_text(
        "import numpy as np\n"
        "from wdist.loaders.model import Checkpoint, TensorRef, Role\n"
        "from wdist.loaders.plugin import FormatPlugin\n"
        "class R:\n"
        "    def read_raw(self, start, count):\n"
        "        return np.arange(start, start + count, dtype=np.float32)\n"
        "def load(path):\n"
        "    return Checkpoint(path, 'fake', 'v1', [TensorRef('x.weight', 'x', Role.WEIGHT, (4, 4), 'float32', R())])\n"
        "PLUGIN = FormatPlugin(name='fake', title='Fake', extensions=('.fake',), load=load,\n"
        "                      sniff=lambda head, path: head.startswith(b'FAKE'))\n")
    monkeypatch.syspath_prepend(str(pkg))
    formats.cache_clear()
    _entry_points.cache_clear()
    try:
        f = tmp_path / "m.fake"
        f.write_bytes(b"FAKE" + b"\0" * 10)
        assert "fake" in format_names()
        ck = open_checkpoint(str(f))
        assert ck.format == "fake" and ck.tensors[0].read().sum() == sum(range(16))
        assert open_checkpoint(str(f), "fake").format == "fake"
    finally:
        monkeypatch.undo()
        sys.modules.pop("wdist_fake_fmt", None)
        formats.cache_clear()
        _entry_points.cache_clear()
    assert "fake" not in format_names()


def test_shards_list_layers_in_model_order_not_file_order(tmp_path):
    _st(tmp_path / "model-00001-of-00002.safetensors", {"h.0.w": np.ones(2), "h.1.w": np.ones(2), "wte": np.ones(2)})
    _st(tmp_path / "model-00002-of-00002.safetensors", {"h.2.w": np.ones(2), "h.10.w": np.ones(2)})
    names = [t.name for t in open_checkpoint(str(tmp_path)).tensors]
    assert names == ["h.0.w", "h.1.w", "h.2.w", "h.10.w", "wte"]


def test_plugin_precheck_agrees_with_importlib_metadata(tmp_path, monkeypatch):
    """The quick scan that spares importlib.metadata says "no plug-in" only when importlib.metadata finds
    none: on this environment, on a folder of distributions without the group, with one declaring it, and
    it defers (True) to importlib.metadata for a zip on sys.path it cannot look into."""
    from importlib.metadata import entry_points

    from wdist.loaders.registry import ENTRY_POINT_GROUP, _may_declare_plugins

    if not _may_declare_plugins():
        assert not list(entry_points(group=ENTRY_POINT_GROUP))
    site = tmp_path / "site"
    (site / "other-1.0.dist-info").mkdir(parents=True)
    (site / "other-1.0.dist-info" / "entry_points.txt").write_text("[console_scripts]\nother = other:main\n")
    (site / "bare-1.0.dist-info").mkdir()  # no entry_points.txt
    (site / "old.egg-info").write_text("Name: old\n")  # a PKG-INFO-style file, not a folder
    monkeypatch.setattr(sys, "path", [str(site), str(tmp_path / "missing")])
    assert _may_declare_plugins() is False
    assert not list(entry_points(group=ENTRY_POINT_GROUP))
    (site / "Plug-0.1.DIST-INFO").mkdir()
    (site / "Plug-0.1.DIST-INFO" / "entry_points.txt").write_text("[wdist.formats]\nplug = plug\n")
    assert _may_declare_plugins() is True
    (site / "Plug-0.1.DIST-INFO" / "entry_points.txt").unlink()
    (tmp_path / "bundle.zip").write_bytes(b"PK\x05\x06" + b"\0" * 18)
    monkeypatch.setattr(sys, "path", [str(site), str(tmp_path / "bundle.zip")])
    assert _may_declare_plugins() is True
    monkeypatch.setattr(sys, "path", [str(site)])

    class OwnDistributions:  # a finder with distributions of its own (pex, zipapps): importlib.metadata decides
        def find_spec(self, *a):
            return None

        def find_distributions(self, *a, **k):
            return iter(())

    monkeypatch.setattr(sys, "meta_path", [*sys.meta_path, OwnDistributions()])
    assert _may_declare_plugins() is True


def test_plugin_precheck_treats_the_importlib_metadata_backport_as_the_standard_finder(tmp_path, monkeypatch):
    """keras, jax and others import the importlib_metadata back-port, whose MetadataPathFinder on
    sys.meta_path reads the same sys.path folders: it must not turn the quick scan off."""
    pytest.importorskip("importlib_metadata")
    from wdist.loaders.registry import _may_declare_plugins

    (tmp_path / "other-1.0.dist-info").mkdir()
    monkeypatch.setattr(sys, "path", [str(tmp_path)])
    assert any(type(f).__module__.startswith("importlib_metadata") for f in sys.meta_path)
    assert _may_declare_plugins() is False


def test_plugin_precheck_takes_path_objects_on_sys_path(tmp_path, monkeypatch):
    """sys.path.insert(0, Path(...)) (common in notebooks) made every open fail with AttributeError."""
    from pathlib import Path

    from wdist.loaders.registry import _may_declare_plugins

    (tmp_path / "Plug-0.1.dist-info").mkdir()
    monkeypatch.setattr(sys, "path", [Path(tmp_path)])
    assert _may_declare_plugins() is False
    (tmp_path / "Plug-0.1.dist-info" / "entry_points.txt").write_text("[wdist.formats]\nplug = plug\n")
    assert _may_declare_plugins() is True
    monkeypatch.setattr(sys, "path", [b"/not/a/str"])
    assert _may_declare_plugins() is True  # bytes entries: left to importlib.metadata
