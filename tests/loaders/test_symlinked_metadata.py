"""A DCP folder's `.metadata` and a TensorFlow folder's `checkpoint` file that are symlinks out of the folder
(found by review: both were followed) are not read; symlinks that stay inside the folder are."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run

from wdist.loaders import open_checkpoint
from wdist.loaders.errors import CorruptCheckpointError
from wdist.loaders.fmt_tf import sniff_dir

torch = pytest.importorskip("torch")
dcp = pytest.importorskip("torch.distributed.checkpoint")


def _save(state: dict, path: Path) -> Path:  # as tests/loaders/test_dcp.py writes DCP folders
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is disabled ... assuming a single process"
        dcp.save(state, checkpoint_id=str(path), no_dist=True)
    return path


def _bundle(d: Path, values: np.ndarray) -> Path:  # as tests/loaders/test_tf.py writes TF bundles
    import tf_bundle as tb

    d.mkdir(parents=True, exist_ok=True)
    data = values.astype(np.float32).tobytes()
    kvs = [(b"", tb.header()), (b"dense/kernel", tb.entry(1, list(values.shape), 0, len(data), tb.tensor_crc(data)))]
    (d / "ckpt.index").write_bytes(tb.table(kvs, 1))
    (d / "ckpt.data-00000-of-00001").write_bytes(data)
    return d / "ckpt.index"


def test_metadata_symlinked_out_of_the_folder_is_refused(tmp_path):
    """A folder whose .metadata is a symlink to another run's (found by review: its copies of the shards
    were then read under the other run's metadata, exit 0) is refused like a shard symlinked out; a
    .metadata named on the command line is the user's choice, and a symlink inside the folder is fine."""
    other = _save({"w": torch.full((4, 4), 7777.0)}, tmp_path / "A")
    d = tmp_path / "C"
    d.mkdir()
    for f in other.iterdir():
        if f.name.endswith(".distcp"):
            shutil.copy(f, d / f.name)
    os.symlink(os.path.join("..", "A", ".metadata"), d / ".metadata")
    shard = next(d.glob("*.distcp"))
    for target in (d, shard):
        with pytest.raises(CorruptCheckpointError, match="'.metadata' resolves outside the checkpoint's folder"):
            open_checkpoint(str(target))
        r = run("ls", str(target))
        assert r.exit_code == 2 and "7777" not in r.output and r.output.count("\n") == 1, r.output
        assert r.output.startswith(f"wdist: error: {target}: "), r.output
    with open_checkpoint(str(d / ".metadata")) as ck:  # named explicitly: read against this folder's shards
        assert ck.tensors[0].read().max() == 7777.0
    (d / ".metadata").unlink()
    shutil.copy(other / ".metadata", d / "metadata.real")
    os.symlink("metadata.real", d / ".metadata")
    with open_checkpoint(str(d)) as ck:
        assert [t.name for t in ck.tensors] == ["w"]


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
