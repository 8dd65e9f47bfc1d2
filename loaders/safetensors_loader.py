"""safetensors: header parsed and validated here (as the reference implementation does), data read in
bounded ranges. No torch, no safetensors package needed for reading; every dtype incl. BF16, F16, F8."""

from __future__ import annotations

import json
import re

from wdist.loaders import fs
from wdist.loaders.errors import CorruptCheckpointError
from wdist.loaders.fileio import RangeReader, file_size
from wdist.loaders.model import Checkpoint, Format, TensorRef, dtype_itemsize
from wdist.loaders.roles import default_unit_axis, fix_norm_biases, infer_role, split_name

MAX_HEADER = 100_000_000  # the reference implementation's limit

ST_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
    "C64": "complex64",
}


def read_header(path: str) -> tuple[dict, dict, int]:
    """(tensor entries, __metadata__, data start offset), validated against the file size."""
    size = file_size(path)
    if size < 8:
        raise CorruptCheckpointError(path, "file too small for a safetensors header")
    n = int.from_bytes(fs.pread(path, 0, 8), "little")
    if n > MAX_HEADER:
        raise CorruptCheckpointError(path, f"safetensors header length {n} exceeds the {MAX_HEADER}-byte limit")
    if 8 + n > size:
        raise CorruptCheckpointError(path, f"safetensors header length {n} runs past the end of the file")
    raw = fs.pread(path, 8, n)  # one ranged read: `ls` of a remote file fetches the header only
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise CorruptCheckpointError(path, "safetensors header is not valid JSON") from None
    except RecursionError:
        raise CorruptCheckpointError(path, "safetensors header JSON is nested too deeply") from None
    if not isinstance(header, dict):
        raise CorruptCheckpointError(path, "safetensors header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise CorruptCheckpointError(path, "safetensors __metadata__ is not an object")
    data_len = size - 8 - n
    spans = []
    for name, e in header.items():
        if not isinstance(e, dict) or not {"dtype", "shape", "data_offsets"} <= e.keys():
            raise CorruptCheckpointError(path, f"tensor {name!r}: entry lacks dtype/shape/data_offsets")
        if e["dtype"] not in ST_DTYPES:
            raise CorruptCheckpointError(path, f"tensor {name!r}: unknown dtype {e['dtype']!r}")
        shape, offs = e["shape"], e["data_offsets"]
        if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise CorruptCheckpointError(path, f"tensor {name!r}: bad shape {shape!r}")
        if not (isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) and o >= 0 for o in offs)):
            raise CorruptCheckpointError(path, f"tensor {name!r}: bad data_offsets {offs!r}")
        begin, end = offs
        numel = 1
        for d in shape:
            numel *= d
        need = numel * dtype_itemsize(ST_DTYPES[e["dtype"]])
        if end < begin or end - begin != need:
            raise CorruptCheckpointError(
                path, f"tensor {name!r}: shape {shape} x {e['dtype']} needs {need} bytes but offsets give {end - begin}")
        if end > data_len:
            raise CorruptCheckpointError(path, f"tensor {name!r}: data offsets {offs} run past the end of the file")
        spans.append((begin, end, name))
    pos = 0
    for begin, end, name in sorted(spans):
        if begin != pos:
            why = "overlaps another tensor" if begin < pos else "leaves a gap before it"
            raise CorruptCheckpointError(path, f"tensor {name!r}: data offsets {begin}..{end} {why}")
        pos = end
    return header, {str(k): v for k, v in meta.items()}, 8 + n


def _natural(s: str) -> list:
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", s)]


def load_safetensors_files(path: str, files: list[str], variant: str) -> Checkpoint:
    tensors: list[TensorRef] = []
    metadata: dict = {}
    owner: dict[str, str] = {}
    for fp in files:
        header, meta, data_start = read_header(fp)
        metadata.update(meta)
        for name in header:
            if name in owner:  # the same name in two shards: which one is the model's is undecidable
                raise CorruptCheckpointError(path, f"tensor {name!r} is in two shards: "
                                             f"{fs.basename(owner[name])} and {fs.basename(fp)}")
            owner[name] = fp
        # writers reorder tensors (by dtype, by name); natural name order puts layers.2 before layers.10
        for name, e in sorted(header.items(), key=lambda kv: _natural(kv[0])):
            dtype = ST_DTYPES[e["dtype"]]
            shape = tuple(e["shape"])
            layer, param = split_name(name)
            role = infer_role(name, layer, param, shape, dtype)
            tensors.append(TensorRef(
                name=name, layer=layer, role=role, shape=shape, dtype=dtype,
                reader=RangeReader(fp, data_start + e["data_offsets"][0], dtype),
                unit_axis=default_unit_axis(role, len(shape), keras=False), source=fs.basename(fp)))
    # across shards too: a model split over files lists its layers in model order, not file order
    tensors.sort(key=lambda t: _natural(t.name))
    fix_norm_biases(tensors)
    return Checkpoint(path=path, format=Format.SAFETENSORS, variant=variant, tensors=tensors,
                      metadata=metadata, sources=list(files))
