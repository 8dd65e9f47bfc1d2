"""Malformed inputs shared by the loader and CLI tests: each with the error type and message expected."""

from __future__ import annotations

import io
import zipfile

import h5py
import numpy as np
import torch

from wdist.loaders.errors import CorruptCheckpointError, UnsupportedFormatError, WdistError


def bad_files(tmp_path, ckpts) -> dict[str, tuple[object, type, str]]:
    out = {}
    (tmp_path / "empty.pt").write_bytes(b"")
    out["empty"] = (tmp_path / "empty.pt", CorruptCheckpointError, "empty")
    (tmp_path / "random.bin").write_bytes(np.random.default_rng(0).bytes(4096))
    out["random"] = (tmp_path / "random.bin", UnsupportedFormatError, "not a supported checkpoint")
    (tmp_path / "notes.txt").write_text("these are not weights\n" * 10)
    out["text"] = (tmp_path / "notes.txt", UnsupportedFormatError, "text")
    data = ckpts["zip"].read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    out["truncated zip"] = (tmp_path / "trunc.pt", CorruptCheckpointError, "zip")
    data = ckpts["st"].read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) - 100])
    out["truncated safetensors"] = (tmp_path / "trunc.safetensors", CorruptCheckpointError, "past the end")
    data = ckpts["keras2_lstm.h5"].read_bytes()
    (tmp_path / "trunc.h5").write_bytes(data[: len(data) // 2])
    out["truncated hdf5"] = (tmp_path / "trunc.h5", CorruptCheckpointError, "HDF5")
    (tmp_path / "emptydir").mkdir()
    out["empty dir"] = (tmp_path / "emptydir", UnsupportedFormatError, "no checkpoint")
    out["missing"] = (tmp_path / "nope.pt", WdistError, "no such file")
    p = tmp_path / "noweights.h5"
    with h5py.File(p, "w") as h:
        h.create_dataset("x", data=np.arange(3))
    out["hdf5 without weights"] = (p, CorruptCheckpointError, "no Keras weights")
    # a zip whose storage member claims an offset past the end of the file
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(64)}, buf)
    raw = bytearray(buf.getvalue())
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("data/0"))
    pos = raw.find(b"PK\x01\x02")
    while pos != -1:
        n = int.from_bytes(raw[pos + 28: pos + 30], "little")
        name = raw[pos + 46: pos + 46 + n].decode()
        if name == info.filename:
            raw[pos + 42: pos + 46] = (len(raw) + 10_000).to_bytes(4, "little")
        pos = raw.find(b"PK\x01\x02", pos + 4)
    (tmp_path / "outside.pt").write_bytes(bytes(raw))
    out["zip member outside"] = (tmp_path / "outside.pt", CorruptCheckpointError, "outside the file|damaged|zip")
    return out




def mutated_file_outcome(plugin: object, path: str) -> None:
    """A mutated file through one plug-in and then the whole pipeline: only a valid result or a WdistError.

    The plug-in is called directly first, because the registry turns any stray exception into a WdistError
    and would hide a reader's bug; every tensor it returns must then read back exactly its element count."""
    from wdist.analyzers.inspect import Options, analyse
    from wdist.loaders import Role, open_checkpoint

    try:
        ck = plugin.load(path)  # type: ignore[attr-defined]
        for t in ck.tensors:
            if t.reader is not None and t.numel <= 1 << 22:
                assert t.reader.read_raw(0, t.numel).size == t.numel
    except WdistError:
        pass
    try:
        with open_checkpoint(path) as ck:
            analyse(ck, Options(jobs=1, roles=tuple(Role)))
    except WdistError:
        pass


def varint(v: int) -> bytes:
    """A protobuf / LevelDB base-128 varint, for hand-built files."""
    out = b""
    while True:
        b, v = v & 0x7F, v >> 7
        out += bytes([b | 0x80]) if v else bytes([b])
        if not v:
            return out
