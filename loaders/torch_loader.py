"""PyTorch checkpoints (zip and legacy), read with wdist's own restricted unpickler: nothing is imported
from the file. Tensor data is located in the file and read in bounded ranges, never via torch.load."""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass
from typing import Any

from wdist.loaders.errors import CorruptCheckpointError, UnsafeContentError
from wdist.loaders.fileio import (
    ZIP_ERRORS,
    RangeReader,
    StridedReader,
    file_size,
    read_exact,
    zip_member_offset,
)
from wdist.loaders.model import Checkpoint, Format, Role, TensorRef, dtype_itemsize
from wdist.loaders.roles import default_unit_axis, fix_norm_biases, infer_role, split_name
from wdist.loaders.safe_pickle import (
    Bounded,
    PickledTensor,
    Placeholder,
    StorageRef,
    UnpickleResult,
    safe_load,
)

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
MAX_PICKLE = 1 << 30
MODEL_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "model_state")
OPTIMIZER_KEYS = ("optimizer", "optimizer_states", "optimizer_state_dict", "optimizer_state", "optim", "opt")
META_KEYS = ("epoch", "global_step", "step", "iteration", "best_score", "pytorch-lightning_version", "lr")


@dataclass
class Located:
    """A storage's bytes in the file: absolute offset and element count."""

    offset: int
    numel: int


def _walk(obj: Any, path: str, out: list[tuple[str, PickledTensor]], seen: set[int], depth: int = 0) -> None:
    """Collect every tensor reachable from obj with a dotted path; nn.Module-like placeholders are
    flattened the way state_dict() names them (_parameters/_buffers/_modules dropped)."""
    if depth > 200 or id(obj) in seen:
        return
    if isinstance(obj, PickledTensor):
        out.append((path, obj))
        return
    seen.add(id(obj))

    def child(key: Any, value: Any) -> None:
        k = str(key)
        _walk(value, f"{path}.{k}" if path else k, out, seen, depth + 1)

    if isinstance(obj, dict):
        for k, v in obj.items():
            child(k, v)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            child(i, v)
    elif isinstance(obj, Placeholder):
        state = obj.wdist_state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]} if isinstance(state[0], dict) else state[1]
        if isinstance(state, dict):
            if any(k in state for k in ("_parameters", "_buffers", "_modules")):
                for key in ("_parameters", "_buffers", "_modules"):
                    sub = state.get(key)
                    if isinstance(sub, dict):
                        for k, v in sub.items():
                            child(k, v)
            else:
                for k, v in state.items():
                    child(k, v)
        elif state is not None:
            _walk(state, path, out, seen, depth + 1)
        for k, v in obj.wdist_items.items():
            child(k, v)
        for i, v in enumerate(obj.wdist_list):
            child(i, v)
        for i, v in enumerate(obj.wdist_args):
            if isinstance(v, (dict, list, tuple, Placeholder, PickledTensor)):
                child(i, v)


def _split_top(obj: Any) -> tuple[list[tuple[str, PickledTensor, Role | None]], dict]:
    """Tensors with names as the model's state_dict would give them, plus scalar metadata."""
    meta: dict = {}
    found: list[tuple[str, PickledTensor, Role | None]] = []
    if isinstance(obj, dict):
        for k in META_KEYS:
            v = obj.get(k)
            if isinstance(v, (int, float, str)) and not isinstance(v, bool):
                meta[k] = v
        model_key = next((k for k in MODEL_KEYS if isinstance(obj.get(k), (dict, Placeholder))), None)
        if model_key is not None:
            seen: set[int] = set()
            for key, value in obj.items():
                items: list[tuple[str, PickledTensor]] = []
                if key == model_key:
                    _walk(value, "", items, seen)
                    found += [(n, t, None) for n, t in items]
                elif key in OPTIMIZER_KEYS or "optimizer" in str(key):
                    _walk(value, str(key), items, seen)
                    found += [(n, t, Role.OPTIMIZER_STATE) for n, t in items]
                else:
                    _walk(value, str(key), items, seen)
                    found += [(n, t, None) for n, t in items]
            return found, meta
    items2: list[tuple[str, PickledTensor]] = []
    _walk(obj, "", items2, set())
    return [(n, t, None) for n, t in items2], meta


def _storage_itemsize(dtype: str) -> int:
    return 1 if dtype == "untyped" else dtype_itemsize(dtype)


def _build(path: str, fmt: str, variant: str, result: UnpickleResult,
           located: dict[str, Located], sources: list[str]) -> Checkpoint:
    named, meta = _split_top(result.obj)
    tensors: list[TensorRef] = []
    by_identity: dict[tuple, TensorRef] = {}
    for name, pt, forced in named:
        key = (pt.storage.key, pt.storage.view_offset + pt.offset, pt.shape, pt.stride)
        if key in by_identity:  # tied weights: same storage, offset and view
            by_identity[key].aliases.append(name)
            continue
        loc = located.get(pt.storage.key)
        if loc is None:
            raise CorruptCheckpointError(path, f"tensor {name!r} refers to storage {pt.storage.key!r}, which is missing")
        dtype = pt.dtype
        item = dtype_itemsize(dtype)
        start = pt.storage.view_offset + pt.offset
        span = pt.span()
        capacity = loc.numel * _storage_itemsize(pt.storage.dtype) // item
        if pt.offset < 0 or any(d < 0 for d in pt.shape) or any(s < 0 for s in pt.stride) or start + span > capacity:
            raise CorruptCheckpointError(path, f"tensor {name!r} shape {list(pt.shape)} reaches past its storage")
        base = RangeReader(sources[0], loc.offset + start * item, dtype)
        reader: Any = base if pt.is_contiguous() else StridedReader(base, span, pt.shape, pt.stride)
        layer, param = split_name(name)
        role = forced or infer_role(name, layer, param, pt.shape, dtype)
        ref = TensorRef(name=name, layer=layer, role=role, shape=pt.shape, dtype=dtype, reader=reader,
                        unit_axis=default_unit_axis(role, len(pt.shape), keras=False),
                        source=os.path.basename(sources[0]))
        by_identity[key] = ref
        tensors.append(ref)
    fix_norm_biases(tensors)
    ck = Checkpoint(path=path, format=fmt, variant=variant, tensors=tensors, metadata=meta, sources=sources,
                    unsafe_globals=list(result.unsafe_globals))
    if result.unsafe_globals:
        ck.warnings.append("objects not loaded (they would need code from the file): "
                           + ", ".join(result.unsafe_globals[:20]))
    if not tensors and result.unsafe_globals:
        raise UnsafeContentError(path, "no tensors can be recovered without importing "
                                 + ", ".join(result.unsafe_globals[:8]))
    return ck


def load_torch_zip(path: str) -> Checkpoint:
    try:
        zf = zipfile.ZipFile(path)
        infos = zf.infolist()
    except ZIP_ERRORS as e:
        raise CorruptCheckpointError(path, f"not a readable zip archive ({e})") from None
    with zf:
        pkl = [i for i in infos if i.filename.endswith("data.pkl") and i.filename.count("/") <= 1]
        if not pkl:
            raise CorruptCheckpointError(path, "zip archive has no data.pkl: not a torch.save checkpoint")
        info = min(pkl, key=lambda i: i.filename.count("/"))
        prefix = info.filename[: -len("data.pkl")]
        if info.file_size > MAX_PICKLE or info.file_size > 64 * max(1, file_size(path)):
            raise CorruptCheckpointError(path, "data.pkl is implausibly large")
        torchscript = any(i.filename.startswith(prefix + "code/") for i in infos)
        try:
            blob = zf.read(info)
        except ZIP_ERRORS as e:
            raise CorruptCheckpointError(path, f"data.pkl cannot be read ({e})") from None
        result = safe_load(io.BytesIO(blob), path, what="data.pkl")
        members = {i.filename: i for i in infos}
        located: dict[str, Located] = {}
        for key, ref in result.storages.items():
            m = members.get(f"{prefix}data/{key}")
            if m is None:
                raise CorruptCheckpointError(path, f"storage {key!r} is missing from the archive")
            if m.compress_type != zipfile.ZIP_STORED:
                raise CorruptCheckpointError(path, f"storage {key!r} is compressed; torch.save stores data uncompressed")
            need = ref.numel * _storage_itemsize(ref.dtype)
            if m.file_size < need:
                raise CorruptCheckpointError(path, f"storage {key!r} holds {m.file_size} bytes, fewer than the {need} its tensors need")
            located[key] = Located(zip_member_offset(path, m.header_offset, m.compress_size), ref.numel)
    ck = _build(path, Format.TORCH_ZIP, "torchscript" if torchscript else "zip", result, located, [path])
    if torchscript:
        ck.warnings.append("TorchScript archive: its code was not loaded; only stored tensors are analysed")
    return ck


def load_torch_legacy(path: str) -> Checkpoint:
    size = file_size(path)
    with open(path, "rb") as raw:
        f = Bounded(raw)
        first = safe_load(f, path, what="pickle")
        if first.obj != LEGACY_MAGIC:
            if first.unsafe_globals:
                raise UnsafeContentError(path, "plain pickle, not a torch checkpoint; refused to import "
                                         + ", ".join(first.unsafe_globals[:8]))
            raise CorruptCheckpointError(path, "pickle file is not a torch.save checkpoint (no torch magic number)")
        safe_load(f, path, what="legacy header")  # protocol version
        safe_load(f, path, what="legacy header")  # sys_info
        storages: dict[str, StorageRef] = {}
        result = safe_load(f, path, storages, legacy=True, what="legacy pickle")
        keys = safe_load(f, path, what="legacy storage list").obj
        if not isinstance(keys, list):
            raise CorruptCheckpointError(path, "legacy storage list is damaged")
        located: dict[str, Located] = {}
        pos = f.tell()
        for key in keys:
            key = str(key)
            ref = storages.get(key)
            if ref is None:
                raise CorruptCheckpointError(path, f"storage {key!r} is listed but never used")
            f.seek(pos)
            numel = int.from_bytes(read_exact(f, 8, path, "storage size"), "little", signed=True)
            nbytes = numel * _storage_itemsize(ref.dtype)
            if numel < 0 or pos + 8 + nbytes > size:
                raise CorruptCheckpointError(path, f"storage {key!r} claims {numel} elements, past the end of the file")
            located[key] = Located(pos + 8, numel)
            pos += 8 + nbytes
    missing = set(storages) - set(located)
    if missing:
        raise CorruptCheckpointError(path, f"storage {sorted(missing)[0]!r} has no data in the file")
    return _build(path, Format.TORCH_LEGACY, "legacy", result, located, [path])
