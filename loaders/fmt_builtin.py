"""Plug-in entries for the formats wdist has read from the start (PyTorch, safetensors, Keras). Their
readers live in torch_loader.py, safetensors_loader.py and keras_loader.py; this module only says how to
recognise each one, so that detection, `--input-format` and `wdist formats` come from one table."""

from __future__ import annotations

from wdist.loaders.model import Checkpoint, Format
from wdist.loaders.plugin import FormatPlugin

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def _zip_names(path: str) -> list[str]:
    from wdist.loaders.errors import WdistError
    from wdist.loaders.fileio import ZIP_ERRORS, open_zip

    try:
        with open_zip(path) as z:
            return z.namelist()
    except ZIP_ERRORS + (WdistError,):
        return []


def _is_zip(head: bytes) -> bool:
    return head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06")


def sniff_torch_zip(head: bytes, path: str) -> bool:
    return _is_zip(head) and any(n.endswith("data.pkl") for n in _zip_names(path))


def sniff_keras_zip(head: bytes, path: str) -> bool:
    return _is_zip(head) and "model.weights.h5" in _zip_names(path)


def sniff_torch_legacy(head: bytes, path: str) -> bool:
    return len(head) >= 2 and head[:1] == b"\x80" and 2 <= head[1] <= 5  # pickle protocol 2-5


def sniff_safetensors(head: bytes, path: str) -> bool:
    # u64 little-endian header length, then the JSON header; writers may pad the JSON with leading spaces
    return len(head) >= 9 and head[8:].lstrip(b" ")[:1] == b"{"


def sniff_hdf5(head: bytes, path: str) -> bool:
    if head.startswith(HDF5_MAGIC):
        return True
    # HDF5 allows a user block: the superblock may then start at 512, 1024, 2048, ... bytes
    off = 512
    while off + 8 <= len(head):
        if head[off:off + 8] == HDF5_MAGIC:
            return True
        off *= 2
    from wdist.loaders import fs
    from wdist.loaders.errors import WdistError

    try:
        size = fs.size(path)
        while off + 8 <= size and off <= 1 << 20:
            if fs.pread(path, off, 8) == HDF5_MAGIC:
                return True
            off *= 2
    except (OSError, WdistError):
        return False
    return False


def _load_torch_zip(path: str) -> Checkpoint:
    from wdist.loaders.torch_loader import load_torch_zip

    return load_torch_zip(path)


def _load_torch_legacy(path: str) -> Checkpoint:
    from wdist.loaders.torch_loader import load_torch_legacy

    return load_torch_legacy(path)


def _load_safetensors(path: str) -> Checkpoint:
    from wdist.loaders.safetensors_loader import load_safetensors_files

    return load_safetensors_files(path, [path], "single")


def _load_keras_h5(path: str) -> Checkpoint:
    from wdist.loaders.keras_loader import load_keras_h5

    return load_keras_h5(path)


def _load_keras_zip(path: str) -> Checkpoint:
    from wdist.loaders.keras_loader import load_keras_zip

    return load_keras_zip(path)


TORCH_ZIP = FormatPlugin(
    name=Format.TORCH_ZIP, title="PyTorch (torch.save, zip)", extensions=(".pt", ".pth", ".bin", ".ckpt"),
    load=_load_torch_zip, sniff=sniff_torch_zip, order=10,
    variants="torch >= 1.6 zip archives: plain state dicts, wrapper dicts, Lightning checkpoints, "
             "torch.save(model), TorchScript archives")
TORCH_LEGACY = FormatPlugin(
    name=Format.TORCH_LEGACY, title="PyTorch (legacy pickle)", extensions=(".pt", ".pth", ".bin", ".pkl"),
    load=_load_torch_legacy, sniff=sniff_torch_legacy, order=40,
    variants="pre-1.6 torch.save files; pickles of NumPy arrays (Detectron-style .pkl)")
SAFETENSORS = FormatPlugin(
    name=Format.SAFETENSORS, title="safetensors", extensions=(".safetensors",), load=_load_safetensors,
    sniff=sniff_safetensors, order=30, fallback_by_extension=True, variants="single file; sharded via model.safetensors.index.json")
KERAS_H5 = FormatPlugin(
    name=Format.KERAS_H5, title="Keras HDF5", extensions=(".h5", ".hdf5", ".weights.h5"), load=_load_keras_h5,
    sniff=sniff_hdf5, requires=("h5py",), order=20,
    variants="Keras 2 model.save and save_weights; Keras 3 .weights.h5")
KERAS_ZIP = FormatPlugin(
    name=Format.KERAS_ZIP, title="Keras archive", extensions=(".keras",), load=_load_keras_zip,
    sniff=sniff_keras_zip, requires=("h5py",), order=11, variants="Keras 3 .keras zip with model.weights.h5")

PLUGINS = (TORCH_ZIP, KERAS_ZIP, KERAS_H5, SAFETENSORS, TORCH_LEGACY)
