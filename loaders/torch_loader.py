"""PyTorch checkpoints (zip and legacy), read with wdist's own restricted unpickler: nothing is imported
from the file. Tensor data is located in the file and read in bounded ranges, never via torch.load."""

from __future__ import annotations

import io
import math
import os
import zipfile
from dataclasses import dataclass
from typing import Any

from wdist.loaders import fs
from wdist.loaders.errors import CorruptCheckpointError, UnsafeContentError, UnsupportedFormatError
from wdist.loaders.fileio import (
    MAX_DIM,
    MAX_NDIM,
    ZIP_ERRORS,
    RangeReader,
    StridedReader,
    file_size,
    open_zip,
    raw_name,
    read_exact,
    read_work_limit,
    read_zip_member,
    simplify_view,
    strided_read_cost,
    view_work_limit,
    zip_member_offset,
    zip_members,
)
from wdist.loaders.model import DEFAULT_CHUNK, Checkpoint, Format, Role, TensorRef, dtype_itemsize
from wdist.loaders.roles import (
    META_KEYS,
    MODEL_KEYS,
    default_unit_axis,
    fix_norm_biases,
    infer_role,
    is_optimizer_key,
    split_name,
)
from wdist.loaders.safe_pickle import (
    MAX_DEPTH,
    Bounded,
    FileBytes,
    MemoryReader,
    NumpyArray,
    PickledTensor,
    Placeholder,
    StorageRef,
    UnpickleResult,
    safe_load,
)

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
MAX_PICKLE = 1 << 30


@dataclass
class Located:
    """A storage's bytes in the file: absolute offset and element count."""

    offset: int
    numel: int


# what a torch checkpoint's pickle yields as tensors: torch tensors, and NumPy arrays saved alongside them
_LEAVES = (PickledTensor, NumpyArray)


def _walk(obj: Any, path: str, out: list[tuple[str, Any]], seen: set[int], depth: int = 0,
          leaf: type | tuple[type, ...] = PickledTensor) -> None:
    """Collect every `leaf` (tensor, or numpy array) reachable from obj with a dotted path; nn.Module-like
    placeholders are flattened the way state_dict() names them (_parameters/_buffers/_modules dropped).
    Iterative (the pickle's nesting is bounded by safe_pickle.MAX_DEPTH, far beyond Python's recursion
    limit); each container is visited once, in the order a recursive walk would."""
    todo: list[tuple[Any, str, int]] = [(obj, path, depth)]
    while todo:
        node, at, d = todo.pop()
        if isinstance(node, leaf):
            if not isinstance(node, NumpyArray) or bool(node.dtype):  # a refused numpy dtype leaves the array empty
                out.append((at, node))
            continue
        if d > MAX_DEPTH or id(node) in seen:
            continue
        if not isinstance(node, (dict, list, tuple, Placeholder)):
            continue
        seen.add(id(node))
        kids: list[tuple[Any, Any]] = []
        if isinstance(node, dict):
            kids = list(node.items())
        elif isinstance(node, (list, tuple)):
            kids = list(enumerate(node))
        else:
            state = node.wdist_state
            if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
                state = {**state[0], **state[1]} if isinstance(state[0], dict) else state[1]
            if isinstance(state, dict):
                if any(k in state for k in ("_parameters", "_buffers", "_modules")):
                    for key in ("_parameters", "_buffers", "_modules"):
                        sub = state.get(key)
                        if isinstance(sub, dict):
                            kids += list(sub.items())
                else:
                    kids += list(state.items())
                rest: list[tuple[Any, Any]] = []
            else:
                rest = [(None, state)] if state is not None else []
            kids = rest + kids + list(node.wdist_items.items()) + list(enumerate(node.wdist_list))
            kids += [(i, v) for i, v in enumerate(node.wdist_args)
                     if isinstance(v, (dict, list, tuple, Placeholder, leaf))]
        for k, v in reversed(kids):
            if k is None:  # a placeholder's non-dict state keeps the placeholder's own path
                todo.append((v, at, d + 1))
            else:
                ks = str(k)
                todo.append((v, f"{at}.{ks}" if at else ks, d + 1))


def _split_top(obj: Any) -> tuple[list[tuple[str, PickledTensor | NumpyArray, Role | None]], dict]:
    """Tensors with names as the model's state_dict would give them, plus scalar metadata."""
    meta: dict = {}
    found: list[tuple[str, PickledTensor | NumpyArray, Role | None]] = []
    if isinstance(obj, dict):
        for k in META_KEYS:
            v = obj.get(k)
            if isinstance(v, (int, float, str)) and not isinstance(v, bool):
                meta[k] = v
        model_key = next((k for k in MODEL_KEYS if isinstance(obj.get(k), (dict, Placeholder))), None)
        if model_key is not None:
            seen: set[int] = set()
            for key, value in obj.items():
                items: list[tuple[str, Any]] = []
                _walk(value, "" if key == model_key else str(key), items, seen, leaf=_LEAVES)
                role = Role.OPTIMIZER_STATE if key != model_key and is_optimizer_key(key) else None
                found += [(n, t, role) for n, t in items]
            return found, meta
    items2: list[tuple[str, Any]] = []
    _walk(obj, "", items2, set(), leaf=_LEAVES)
    return [(n, t, None) for n, t in items2], meta


def _array_ref(path: str, name: str, arr: NumpyArray, forced: Role | None) -> TensorRef:
    """A NumPy array rebuilt inertly from the pickle: its bytes in the file (FileBytes: an offset of the file
    the pickle was read from) or held from the stream."""
    reader: Any
    if isinstance(arr.data, FileBytes):
        reader = RangeReader(path, arr.data.offset, arr.dtype)
        if arr.fortran and len(arr.shape) > 1:
            fstride, acc = [], 1
            for d in arr.shape:
                fstride.append(acc)
                acc *= d
            reader = StridedReader(path, arr.data.offset, arr.dtype, arr.shape, tuple(fstride))
    else:
        held = bytes(arr.data)
        if arr.fortran and len(arr.shape) > 1:
            from wdist.loaders.dtypes import storage_dtype

            held = (__import__("numpy").frombuffer(held, storage_dtype(arr.dtype))
                    .reshape(arr.shape, order="F").tobytes(order="C"))
        reader = MemoryReader(held, arr.dtype)
    layer, param = split_name(name)
    role = forced or infer_role(name, layer, param, arr.shape, arr.dtype)
    return TensorRef(name=name, layer=layer, role=role, shape=arr.shape, dtype=arr.dtype, reader=reader,
                     unit_axis=default_unit_axis(role, len(arr.shape), keras=False), source=os.path.basename(path))


def _storage_itemsize(dtype: str) -> int:
    from wdist.loaders.safe_pickle import QUANTIZED_ITEMSIZE

    return 1 if dtype == "untyped" else QUANTIZED_ITEMSIZE.get(dtype) or dtype_itemsize(dtype)


def _build(path: str, fmt: str, variant: str, result: UnpickleResult,
           located: dict[str, Located], sources: list[str]) -> Checkpoint:
    named, meta = _split_top(result.obj)
    tensors: list[TensorRef] = []
    by_identity: dict[tuple, TensorRef] = {}
    logical = elements = reads = 0
    arrays_by_id: dict[int, TensorRef] = {}
    names: set[str] = set()
    for name, pt, forced in named:
        # {"a.b": x, "a": {"b": y}} joins to "a.b" twice: a report keyed by name would show one of them as
        # both (in memory the same dict is a UsageError, so the saved file and the object agree)
        if name in names:
            raise CorruptCheckpointError(path, f"two tensors are both named {name!r} (keys that join to the same "
                                         "dotted name)")
        names.add(name)
        if isinstance(pt, NumpyArray):  # a NumPy array saved inside the checkpoint (torch.save pickles it)
            if id(pt) in arrays_by_id:
                arrays_by_id[id(pt)].aliases += (name,)
                continue
            arrays_by_id[id(pt)] = ref = _array_ref(sources[0], name, pt, forced)
            tensors.append(ref)
            continue
        loc = located.get(pt.storage.key)
        if loc is None:
            raise CorruptCheckpointError(path, f"tensor {name!r} refers to storage {pt.storage.key!r}, which is missing")
        dtype = pt.dtype
        item = dtype_itemsize(dtype)
        sitem = _storage_itemsize(pt.storage.dtype)
        shape, stride, offset = pt.shape, pt.stride, pt.offset
        vo, vn = pt.storage.view_offset, pt.storage.numel
        if len(shape) > MAX_NDIM or len(stride) != len(shape):
            raise CorruptCheckpointError(path, f"tensor {name!r} has {len(shape)} dimensions and {len(stride)} strides")
        # torch never writes negative strides or offsets; sizes past 2^62 would overflow the int64 offsets
        if not all(0 <= v < MAX_DIM for v in (*shape, *stride, offset, vo, vn)):
            raise CorruptCheckpointError(path, f"tensor {name!r} has a size, stride or offset out of range "
                                         f"(shape {list(shape)[:8]}, stride {list(stride)[:8]}, offset {offset})")
        numel = math.prod(shape)
        if numel >= MAX_DIM:
            raise CorruptCheckpointError(path, f"tensor {name!r} claims {numel:,} elements")
        # a legacy view storage is a window [vo, vo + vn) of its root storage, in storage elements
        if vo + vn > loc.numel:
            raise CorruptCheckpointError(path, f"tensor {name!r}: its storage view reaches past storage {pt.storage.key!r}")
        capacity = vn * sitem // item
        span = 0 if numel == 0 else 1 + sum((d - 1) * s for d, s in zip(shape, stride))
        if numel and offset + span > capacity:
            raise CorruptCheckpointError(path, f"tensor {name!r} shape {list(shape)[:8]} reaches past its storage")
        byte_offset = loc.offset + vo * sitem + offset * item
        key = (pt.storage.key, byte_offset, shape, stride, dtype)
        if key in by_identity:  # tied weights: same storage, offset and view
            by_identity[key].aliases += (name,)
            continue
        logical += numel * item
        elements += numel
        dims = simplify_view(shape, stride)
        reader: Any
        if numel == 0 or not dims or (len(dims) == 1 and dims[0][1] == 1):
            reader = RangeReader(sources[0], byte_offset, dtype)
            reads += numel * item
        else:
            reader = StridedReader(sources[0], byte_offset, dtype, shape, stride)
            reads += strided_read_cost(shape, stride, item, DEFAULT_CHUNK)
        layer, param = split_name(name)
        role = forced or infer_role(name, layer, param, pt.shape, dtype)
        ref = TensorRef(name=name, layer=layer, role=role, shape=pt.shape, dtype=dtype, reader=reader,
                        unit_axis=default_unit_axis(role, len(pt.shape), keras=False),
                        source=os.path.basename(sources[0]))
        by_identity[key] = ref
        tensors.append(ref)
    stored = sum(file_size(src) for src in sources)
    if logical > view_work_limit(stored):
        raise CorruptCheckpointError(path, f"views reach {elements:,} elements ({logical:,} bytes) from {stored:,} "
                                     f"stored bytes; over the limit of {view_work_limit(stored):,} bytes "
                                     "(2 GiB plus 4x the file size): overlapping or broadcast views, not real weights")
    if reads > read_work_limit(stored):
        raise CorruptCheckpointError(path, f"strided views need about {reads:,} bytes of reads from {stored:,} "
                                     f"stored bytes; over the limit of {read_work_limit(stored):,} "
                                     "(16 GiB plus 256x the file size)")
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
        zf = open_zip(path)
        infos = zf.infolist()
    except ZIP_ERRORS as e:
        raise CorruptCheckpointError(path, f"not a readable zip archive ({e})") from None
    with zf:
        members = zip_members(zf, path)
        if not infos:
            raise CorruptCheckpointError(path, "zip archive is empty: not a torch.save checkpoint")
        # torch reads every record from the folder of the archive's first member: use the same data.pkl
        first = infos[0].filename
        prefix = first[: first.index("/") + 1] if "/" in first else ""
        stray = next((n for n in members if not n.startswith(prefix)), None)
        if stray is not None:  # torch refuses these too; a second folder could hold a different data.pkl
            raise CorruptCheckpointError(path, f"zip member {stray[:80]!r} is outside the archive's folder {prefix!r}")
        info = members.get(prefix + "data.pkl")
        if info is None:
            raise CorruptCheckpointError(path, f"zip archive has no {prefix}data.pkl: not a torch.save checkpoint")
        limit = min(MAX_PICKLE, 64 * max(1, file_size(path)))
        if info.file_size > limit:
            raise CorruptCheckpointError(path, "data.pkl is implausibly large")
        torchscript = any(i.filename.startswith(prefix + "code/") for i in infos)
        order = members.get(prefix + "byteorder")
        if order is not None and read_zip_member(path, order, 64, "byteorder record").strip() != b"little":
            # torch.load would byte-swap every storage; reading them as little-endian would analyse other values
            raise UnsupportedFormatError(path, "storages are not little-endian (byteorder record); only "
                                         "little-endian archives are read")
        blob = read_zip_member(path, info, limit, "data.pkl")
        result = safe_load(io.BytesIO(blob), path, what="data.pkl")
        located: dict[str, Located] = {}
        for key, ref in result.storages.items():
            m = members.get(f"{prefix}data/{key}")
            if m is None:
                raise CorruptCheckpointError(path, f"storage {key!r} is missing from the archive")
            if m.compress_type != zipfile.ZIP_STORED or m.flag_bits & 0x1:
                raise CorruptCheckpointError(path, f"storage {key!r} is compressed; torch.save stores data uncompressed")
            if m.compress_size != m.file_size:
                raise CorruptCheckpointError(path, f"storage {key!r} is stored but its zip sizes disagree")
            need = ref.numel * _storage_itemsize(ref.dtype)
            if m.file_size < need:
                raise CorruptCheckpointError(path, f"storage {key!r} holds {m.file_size} bytes, fewer than the {need} its tensors need")
            located[key] = Located(zip_member_offset(path, m.header_offset, m.compress_size, raw_name(m)), ref.numel)
    ck = _build(path, Format.TORCH_ZIP, "torchscript" if torchscript else "zip", result, located, [path])
    if result.storages and not ck.tensors:  # never an empty result that a gate would pass
        raise CorruptCheckpointError(path, f"the pickle references {len(result.storages)} storage(s) but no tensor "
                                     "could be recovered from it")
    if torchscript:
        ck.warnings.append("TorchScript archive: its code was not loaded; only stored tensors are analysed")
    return ck


def load_torch_legacy(path: str) -> Checkpoint:
    size = file_size(path)
    with fs.open_binary(path) as raw:
        f = Bounded(raw)
        first = safe_load(f, path, what="pickle")
        if first.obj != LEGACY_MAGIC and first.arrays:
            # a plain pickle of numpy arrays (Detectron/Caffe2 model zoo): the arrays, read in place
            top = first.obj
            if isinstance(top, dict) and isinstance(top.get("blobs"), dict):
                top = top["blobs"]  # Detectron: {"blobs": {name: array}, ...}
            arrays: list[tuple[str, Any]] = []
            _walk(top, "", arrays, set(), leaf=NumpyArray)
            tensors: list[TensorRef] = []
            by_id: dict[int, TensorRef] = {}
            for name, arr in arrays:
                if id(arr) in by_id:
                    by_id[id(arr)].aliases += (name,)
                    continue
                by_id[id(arr)] = ref = _array_ref(path, name, arr, None)
                tensors.append(ref)
            if tensors:
                fix_norm_biases(tensors)
                ck = Checkpoint(path=path, format=Format.TORCH_LEGACY, variant="numpy-pickle", tensors=tensors,
                                sources=[path], unsafe_globals=list(first.unsafe_globals))
                if first.unsafe_globals:
                    ck.warnings.append("objects not loaded (they would need code from the file): "
                                       + ", ".join(first.unsafe_globals[:20]))
                return ck
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
            sref = storages.get(key)
            if sref is None:
                raise CorruptCheckpointError(path, f"storage {key!r} is listed but never used")
            f.seek(pos)
            numel = int.from_bytes(read_exact(f, 8, path, "storage size"), "little", signed=True)
            nbytes = numel * _storage_itemsize(sref.dtype)
            if numel < 0 or pos + 8 + nbytes > size:
                raise CorruptCheckpointError(path, f"storage {key!r} claims {numel} elements, past the end of the file")
            located[key] = Located(pos + 8, numel)
            pos += 8 + nbytes
    missing = set(storages) - set(located)
    if missing:
        raise CorruptCheckpointError(path, f"storage {sorted(missing)[0]!r} has no data in the file")
    ck = _build(path, Format.TORCH_LEGACY, "legacy", result, located, [path])
    if storages and not ck.tensors:  # never an empty checkpoint (exit 0) from a file that holds tensor data
        raise CorruptCheckpointError(path, f"the pickle references {len(storages)} storage(s) but no tensor "
                                     "could be recovered from it")
    return ck
