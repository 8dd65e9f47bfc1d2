"""Format detection (magic bytes first, extension second) and the registry of readers."""

from __future__ import annotations

import glob
import json
import os
import zipfile
from collections.abc import Callable

from wdist.loaders.errors import CorruptCheckpointError, UnsupportedFormatError, WdistError
from wdist.loaders.fileio import ZIP_ERRORS
from wdist.loaders.model import Checkpoint, Format

SUPPORTED = (
    "PyTorch torch.save (.pt .pth .bin .ckpt; zip and legacy), pytorch_model.bin.index.json; "
    "safetensors (.safetensors, model.safetensors.index.json, model directories); "
    "Keras HDF5 (.h5 .hdf5 .weights.h5, Keras 2 and 3) and .keras archives"
)
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
EXTENSIONS = {
    ".safetensors": Format.SAFETENSORS, ".h5": Format.KERAS_H5, ".hdf5": Format.KERAS_H5,
    ".keras": Format.KERAS_ZIP, ".pt": Format.TORCH_ZIP, ".pth": Format.TORCH_ZIP, ".bin": Format.TORCH_ZIP,
    ".ckpt": Format.TORCH_ZIP,
}


def sniff(path: str) -> str:
    """Detect a single file's format from its first bytes; the extension only breaks ties."""
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise CorruptCheckpointError(path, "file is empty")
    if head.startswith(HDF5_MAGIC):
        return Format.KERAS_H5
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except ZIP_ERRORS as e:
            raise CorruptCheckpointError(path, f"zip archive is damaged or truncated ({e})") from None
        if "model.weights.h5" in names:
            return Format.KERAS_ZIP
        if any(n.endswith("data.pkl") for n in names):
            return Format.TORCH_ZIP
        raise UnsupportedFormatError(path, "zip archive is neither a torch.save checkpoint nor a .keras model")
    if len(head) >= 9 and head[8:9] == b"{":  # u64 header length, then the JSON header
        return Format.SAFETENSORS
    if len(head) >= 2 and head[:1] == b"\x80" and 2 <= head[1] <= 5:  # pickle protocol 2-5: legacy torch.save
        return Format.TORCH_LEGACY
    ext = os.path.splitext(path)[1].lower()
    if ext == ".safetensors" and len(head) >= 8:
        return Format.SAFETENSORS  # let the header validation say what is wrong
    if _is_hdf5_offset(path):
        return Format.KERAS_H5
    kind = "text" if all(32 <= b < 127 or b in (9, 10, 13) for b in head) else "unrecognised binary data"
    raise UnsupportedFormatError(path, f"{kind}, not a supported checkpoint; wdist reads {SUPPORTED}")


def _is_hdf5_offset(path: str) -> bool:
    """HDF5 allows a user block: the superblock may start at 512, 1024, 2048, ... bytes."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        off = 512
        while off + 8 <= size and off <= 1 << 20:
            f.seek(off)
            if f.read(8) == HDF5_MAGIC:
                return True
            off *= 2
    return False


def _loaders() -> dict[str, Callable[[str], Checkpoint]]:
    # imported here so `wdist --help` stays light
    from wdist.loaders import keras_loader, torch_loader
    from wdist.loaders.safetensors_loader import load_safetensors_files

    return {
        Format.TORCH_ZIP: torch_loader.load_torch_zip,
        Format.TORCH_LEGACY: torch_loader.load_torch_legacy,
        Format.SAFETENSORS: lambda p: load_safetensors_files(p, [p], "single"),
        Format.KERAS_H5: keras_loader.load_keras_h5,
        Format.KERAS_ZIP: keras_loader.load_keras_zip,
    }


def _load_index(path: str) -> Checkpoint:
    """Hugging Face sharded index: {"weight_map": {tensor: shard file}}."""
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
        shards = list(dict.fromkeys(index["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CorruptCheckpointError(path, "sharded index is not JSON with a weight_map") from None
    base = os.path.dirname(os.path.abspath(path))
    files = []
    for s in shards:
        fp = os.path.normpath(os.path.join(base, str(s)))
        if os.path.dirname(fp) != base and not fp.startswith(base + os.sep):
            raise CorruptCheckpointError(path, f"shard {s!r} points outside the index's folder")
        if not os.path.isfile(fp):
            raise CorruptCheckpointError(path, f"shard {s!r} named in the index is missing")
        files.append(fp)
    if not files:
        raise CorruptCheckpointError(path, "sharded index names no shards")
    if all(f.endswith(".safetensors") for f in files):
        from wdist.loaders.safetensors_loader import load_safetensors_files

        return load_safetensors_files(path, files, "sharded")
    parts = [load_file(f) for f in files]
    first = parts[0]
    for p in parts[1:]:
        first.tensors += p.tensors
        first.unsafe_globals += [g for g in p.unsafe_globals if g not in first.unsafe_globals]
        first.warnings += p.warnings
    first.path, first.variant, first.sources = path, "sharded", files
    return first


def load_file(path: str, fmt: str | None = None) -> Checkpoint:
    if path.endswith(".index.json"):
        return _load_index(path)
    detected = sniff(path)
    use = fmt or detected
    try:
        return _loaders()[use](path)
    except WdistError:
        raise
    except (OSError, ValueError, KeyError, IndexError, TypeError, OverflowError, EOFError) as e:
        raise CorruptCheckpointError(path, f"cannot be read as {use} ({type(e).__name__}: {str(e)[:100]})") from None


def find_in_dir(path: str) -> list[str]:
    """The checkpoint a model directory holds: a sharded index, else its one weights file (or shard set)."""
    for idx in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if os.path.isfile(os.path.join(path, idx)):
            return [os.path.join(path, idx)]
    st = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if st:
        return st
    for name in ("pytorch_model.bin", "model.pt", "model.pth", "model.weights.h5", "model.keras", "tf_model.h5"):
        if os.path.isfile(os.path.join(path, name)):
            return [os.path.join(path, name)]
    return []


def open_checkpoint(path: str, fmt: str | None = None) -> Checkpoint:
    """Open a file or model directory as a lazy Checkpoint. Reads headers and metadata only."""
    force = fmt
    if not os.path.exists(path):
        raise WdistError(path, "no such file or directory")
    if os.path.isdir(path):
        files = find_in_dir(path)
        if not files:
            raise UnsupportedFormatError(path, f"directory holds no checkpoint; wdist reads {SUPPORTED}")
        if len(files) == 1:
            ck = load_file(files[0], force)
        else:
            from wdist.loaders.safetensors_loader import load_safetensors_files

            for f in files:
                sniff(f)
            ck = load_safetensors_files(path, files, "directory")
        ck.path = path
        return ck
    if not os.access(path, os.R_OK):
        raise WdistError(path, "permission denied")
    return load_file(path, force)
