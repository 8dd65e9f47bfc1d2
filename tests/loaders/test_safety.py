"""No code execution from any checkpoint: a corpus of malicious files built here, by the real libraries."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from wdist.loaders import open_checkpoint
from wdist.loaders.errors import UnsafeContentError


class Payload:
    """Unpickling this runs os.system: it must never happen."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class HParams:
    def __init__(self) -> None:
        self.lr = 0.1


@pytest.fixture
def marker(tmp_path):
    m = tmp_path / "MARKER"
    yield m
    assert not m.exists(), "a payload ran"


def test_zip_pt_with_payload(tmp_path, marker):
    p = tmp_path / "evil.pt"
    w = torch.randn(3, 4)
    torch.save({"layer.weight": w, "evil": Payload(str(marker))}, p)
    ck = open_checkpoint(str(p))
    assert [t.name for t in ck.tensors] == ["layer.weight"]
    assert ck.unsafe_globals == ["posix.system"]
    assert "posix.system" in ck.warnings[0]
    assert (ck.tensors[0].read() == w.numpy()).all()


def test_legacy_pt_with_payload(tmp_path, marker):
    p = tmp_path / "evil_legacy.pt"
    torch.save({"layer.weight": torch.randn(2, 2), "evil": Payload(str(marker))}, p,
               _use_new_zipfile_serialization=False)
    ck = open_checkpoint(str(p))
    assert [t.name for t in ck.tensors] == ["layer.weight"] and ck.unsafe_globals == ["posix.system"]


def test_plain_pickle_is_refused(tmp_path, marker):
    p = tmp_path / "evil.pth"
    with open(p, "wb") as f:
        pickle.dump(Payload(str(marker)), f)
    with pytest.raises(UnsafeContentError, match="posix.system"):
        open_checkpoint(str(p))


def test_lightning_hparams_object(tmp_path, marker):
    p = tmp_path / "hp.ckpt"
    torch.save({"state_dict": {"model.fc.weight": torch.randn(2, 3)}, "hyper_parameters": {"h": HParams()},
                "epoch": 1}, p)
    ck = open_checkpoint(str(p))
    assert [t.name for t in ck.tensors] == ["model.fc.weight"]
    assert any(g.endswith("HParams") for g in ck.unsafe_globals)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torchscript_archive_code_not_run(tmp_path, marker):
    m = torch.nn.Sequential(torch.nn.Linear(4, 3))
    p = tmp_path / "ts.pt"
    torch.jit.script(m).save(str(p))
    ck = open_checkpoint(str(p))
    assert ck.variant == "torchscript"
    assert [t.name for t in ck.tensors] == ["0.weight", "0.bias"]
    assert any(g.startswith("__torch__") for g in ck.unsafe_globals)


def test_no_forbidden_loaders_in_source():
    """No input path reaches pickle.load, torch.load, torch.jit.load or keras model loading."""
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2]
    forbidden = ("pickle.load(", "pickle.loads(", "torch.load(", "torch.jit.load(", "load_model(")
    for sub in ("loaders", "analyzers", "cli"):
        for f in (root / sub).rglob("*.py"):
            text = f.read_text()
            for word in forbidden:
                assert word not in text, f"{f}: {word}"


def test_huge_memo_index_is_refused_without_allocating(tmp_path):
    """A LONG_BINPUT of ~2^32 would make the C unpickler size its memo table to tens of GB (found by fuzzing)."""
    import struct
    import time

    from wdist.loaders.errors import CorruptCheckpointError

    evil = b"\x80\x02}r" + struct.pack("<I", 0xFFFFFFF0) + b"."
    buf = __import__("io").BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    import zipfile

    src = zipfile.ZipFile(buf)
    p = tmp_path / "memo.pt"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_STORED) as z:
        for n in src.namelist():
            z.writestr(n, evil if n.endswith("data.pkl") else src.read(n))
    t = time.perf_counter()
    with pytest.raises(CorruptCheckpointError, match="memo index"):
        open_checkpoint(str(p))
    assert time.perf_counter() - t < 2
    legacy = tmp_path / "memo_legacy.pt"
    legacy.write_bytes(evil)
    with pytest.raises(CorruptCheckpointError, match="memo index"):
        open_checkpoint(str(legacy))
