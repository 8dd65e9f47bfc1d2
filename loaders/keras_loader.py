"""Keras HDF5 weights (Keras 2 full model and save_weights, Keras 3 .weights.h5) and .keras archives.
Only HDF5 datasets are read; config.json is parsed as data; no Keras code is imported or run."""

from __future__ import annotations

import json
import os
import re
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from wdist.loaders.dtypes import STORAGE
from wdist.loaders.errors import CorruptCheckpointError, MissingDependencyError
from wdist.loaders.fileio import ZIP_ERRORS, Window, zip_member_offset
from wdist.loaders.model import Checkpoint, Format, Role, TensorRef
from wdist.loaders.roles import default_unit_axis, fix_norm_biases, infer_role

# Keras 3 stores variables by position; these are the names the layer classes give them.
K3_VAR_NAMES = {
    "dense": ["kernel", "bias"], "einsum_dense": ["kernel", "bias"], "conv1d": ["kernel", "bias"],
    "conv2d": ["kernel", "bias"], "conv3d": ["kernel", "bias"], "conv2d_transpose": ["kernel", "bias"],
    "conv1d_transpose": ["kernel", "bias"], "conv3d_transpose": ["kernel", "bias"],
    "depthwise_conv2d": ["kernel", "bias"], "depthwise_conv1d": ["kernel", "bias"],
    "separable_conv2d": ["depthwise_kernel", "pointwise_kernel", "bias"],
    "batch_normalization": ["gamma", "beta", "moving_mean", "moving_variance"],
    "layer_normalization": ["gamma", "beta"], "group_normalization": ["gamma", "beta"],
    "embedding": ["embeddings"], "lstm_cell": ["kernel", "recurrent_kernel", "bias"],
    "gru_cell": ["kernel", "recurrent_kernel", "bias"], "simple_rnn_cell": ["kernel", "recurrent_kernel", "bias"],
    "prelu": ["alpha"],
}

_H5_CACHE: dict[tuple, Any] = {}
# a forked worker opens its own HDF5 handles instead of sharing the parent's
os.register_at_fork(after_in_child=_H5_CACHE.clear)


def _open_h5(path: str, window: tuple[int, int] | None) -> Any:
    import h5py

    key = (path, window)
    h = _H5_CACHE.get(key)
    if h is None or not h.id.valid:
        if len(_H5_CACHE) > 8:
            for old in _H5_CACHE.values():
                old.close()
            _H5_CACHE.clear()
        src: Any = Window(path, *window) if window else path
        h = h5py.File(src, "r")
        _H5_CACHE[key] = h
    return h


@dataclass
class H5Reader:
    path: str
    dataset: str
    dtype: str
    window: tuple[int, int] | None = None  # (offset, size) of the HDF5 file inside a .keras zip
    reuses_buffer = True  # read_raw accepts out=

    def read_raw(self, start: int, count: int, out: np.ndarray | None = None) -> np.ndarray:
        d = _open_h5(self.path, self.window)[self.dataset]
        if d.ndim and d.dtype.kind != "V" and out is not None and out.nbytes >= count * d.dtype.itemsize:
            row = int(np.prod(d.shape[1:], dtype=np.int64))
            if start % row == 0 and count % row == 0:  # whole rows: read straight into the reused buffer
                r0 = start // row
                arr = out[: count * d.dtype.itemsize].view(d.dtype).reshape((count // row, *d.shape[1:]))
                d.read_direct(arr, np.s_[r0:r0 + count // row])
                return arr.reshape(-1).astype(STORAGE[self.dtype], copy=False)
        if d.ndim == 0:
            arr = np.asarray(d[()]).reshape(1)
        else:
            row = int(np.prod(d.shape[1:], dtype=np.int64))
            r0, r1 = start // row, -(-(start + count) // row)
            arr = np.asarray(d[r0:r1]).reshape(-1)[start - r0 * row: start - r0 * row + count]
        if arr.dtype.kind == "V":  # Keras 3 bf16/fp8: opaque bytes with a dtype attribute
            return arr.view(STORAGE[self.dtype])
        return arr.astype(STORAGE[self.dtype], copy=False)


def _attr_list(obj: Any, name: str) -> list[str] | None:
    """A string-list attribute, also when HDF5's 64 KB header limit split it into name0, name1, ..."""
    if name in obj.attrs:
        vals = list(obj.attrs[name])
    elif f"{name}0" in obj.attrs:
        vals, i = [], 0
        while f"{name}{i}" in obj.attrs:
            vals += list(obj.attrs[f"{name}{i}"])
            i += 1
    else:
        return None
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in vals]


def _dtype_of(d: Any) -> str | None:
    if d.dtype.kind == "V":
        tag = d.attrs.get("dtype")
        tag = tag.decode() if isinstance(tag, bytes) else tag
        return tag if tag in STORAGE and d.dtype.itemsize == STORAGE[tag].itemsize else None
    name = d.dtype.name
    return name if name in STORAGE else None


class _Collector:
    def __init__(self, path: str, window: tuple[int, int] | None) -> None:
        self.path, self.window = path, window
        self.tensors: list[TensorRef] = []
        self.skipped: list[str] = []

    def add(self, d: Any, name: str, layer: str, param: str, forced: Role | None = None) -> None:
        import h5py

        if not isinstance(d, h5py.Dataset):
            self.skipped.append(name)
            return
        dtype = _dtype_of(d)
        if dtype is None:
            self.skipped.append(f"{name} (dtype {d.dtype})")
            return
        shape = tuple(int(s) for s in d.shape)
        role = forced or infer_role(name, layer, param, shape, dtype)
        if role is Role.WEIGHT and param in ("embeddings",):
            role = Role.EMBEDDING
        self.tensors.append(TensorRef(
            name=name, layer=layer, role=role, shape=shape, dtype=dtype,
            reader=H5Reader(self.path, d.name, dtype, self.window),
            unit_axis=None if role is Role.OPTIMIZER_STATE else default_unit_axis(role, len(shape), keras=True),
            source=os.path.basename(self.path)))


def _strip(wname: str) -> str:
    return re.sub(r":\d+$", "", wname)


def _keras2_layers(col: _Collector, root: Any, layer_names: list[str]) -> None:
    for lname in layer_names:
        g = root.get(lname)
        if g is None:
            raise CorruptCheckpointError(col.path, f"layer {lname!r} is listed but has no group")
        for w in _attr_list(g, "weight_names") or []:
            d = g.get(w)
            clean = _strip(w)
            # nested models store 'inner/kernel:0' under the outer layer's group
            layer = clean.rsplit("/", 1)[0] if "/" in clean else lname
            if not (layer == lname or layer.startswith(lname + "/")):
                layer = f"{lname}/{layer}"
            name = clean if clean.startswith(lname + "/") else f"{lname}/{clean}"
            if d is None:
                raise CorruptCheckpointError(col.path, f"weight {w!r} of layer {lname!r} is missing")
            col.add(d, name, layer, clean.rsplit("/", 1)[-1])


def _keras2_optimizer(col: _Collector, g: Any) -> None:
    for w in _attr_list(g, "weight_names") or []:
        d = g.get(w)
        if d is not None:
            clean = _strip(w)
            col.add(d, f"optimizer/{clean}", "optimizer/" + clean.rsplit("/", 1)[0] if "/" in clean else "optimizer",
                    clean.rsplit("/", 1)[-1], Role.OPTIMIZER_STATE)


def _keras3_group(col: _Collector, g: Any, prefix: str, forced: Role | None) -> None:
    import h5py

    vars_g = g.get("vars")
    own = g.name.rsplit("/", 1)[-1]
    if isinstance(vars_g, h5py.Group):
        lname = vars_g.attrs.get("name", own)
        lname = lname.decode() if isinstance(lname, bytes) else str(lname)
        layer = f"{prefix}/{lname}" if prefix else lname
        keys = sorted((k for k in vars_g if k.isdigit()), key=int)
        cls = re.sub(r"_\d+$", "", own)
        names = K3_VAR_NAMES.get(cls, [])
        if len(names) != len(keys):
            names = [f"var{k}" for k in keys] if cls not in K3_VAR_NAMES else names[: len(keys)]
        for k, param in zip(keys, names):
            col.add(vars_g[k], f"{layer}/{param}", layer, param, forced)
    else:
        layer = prefix
    for k in g:  # nested layers ("layers", an RNN's "cell", ...) keep this layer's name as prefix
        if k != "vars" and isinstance(g[k], h5py.Group):
            _keras3_group(col, g[k], layer, forced)


def _read_h5(path: str, window: tuple[int, int] | None, variant_hint: str, extra_meta: dict) -> Checkpoint:
    import h5py

    try:
        h = _open_h5(path, window)
    except (OSError, ValueError) as e:
        raise CorruptCheckpointError(path, f"not a readable HDF5 file ({str(e)[:80]})") from None
    col = _Collector(path, window)
    meta: dict = dict(extra_meta)
    for k in ("keras_version", "backend"):
        if k in h.attrs:
            v = h.attrs[k]
            meta[k] = v.decode() if isinstance(v, bytes) else str(v)
    try:
        if "model_weights" in h:
            variant = "keras2-model"
            mw = h["model_weights"]
            _keras2_layers(col, mw, _attr_list(mw, "layer_names") or [])
            if "optimizer_weights" in h:
                _keras2_optimizer(col, h["optimizer_weights"])
        elif _attr_list(h, "layer_names") is not None:
            variant = "keras2-weights"
            _keras2_layers(col, h, _attr_list(h, "layer_names") or [])
        elif isinstance(h.get("layers"), h5py.Group):
            variant = variant_hint or "keras3-weights"
            meta.setdefault("keras_version", "3")
            _keras3_group(col, h["layers"], "", None)
            if isinstance(h.get("optimizer"), h5py.Group):
                _keras3_group(col, h["optimizer"], "optimizer", Role.OPTIMIZER_STATE)
        else:
            raise CorruptCheckpointError(path, "HDF5 file holds no Keras weights (no model_weights, layer_names or layers)")
    except (KeyError, OSError, ValueError, TypeError) as e:
        raise CorruptCheckpointError(path, f"HDF5 structure is damaged ({str(e)[:80]})") from None
    if not col.tensors:
        raise CorruptCheckpointError(path, "HDF5 file holds no weight tensors")
    fix_norm_biases(col.tensors)
    ck = Checkpoint(path=path, format=Format.KERAS_H5, variant=variant, tensors=col.tensors, metadata=meta,
                    sources=[path])
    if col.skipped:
        ck.warnings.append("datasets with unsupported dtypes were not analysed: " + ", ".join(col.skipped[:10]))
    return ck


def load_keras_h5(path: str) -> Checkpoint:
    try:
        import h5py  # noqa: F401
    except ImportError:
        raise MissingDependencyError(path, "reading Keras HDF5 needs h5py (pip install h5py)") from None
    return _read_h5(path, None, "", {})


def load_keras_zip(path: str) -> Checkpoint:
    try:
        zf = zipfile.ZipFile(path)
    except ZIP_ERRORS as e:
        raise CorruptCheckpointError(path, f"not a readable zip archive ({e})") from None
    with zf:
        names = {i.filename: i for i in zf.infolist()}
        info = names.get("model.weights.h5")
        if info is None:
            raise CorruptCheckpointError(path, ".keras archive has no model.weights.h5")
        if info.compress_type != zipfile.ZIP_STORED:
            raise CorruptCheckpointError(path, "model.weights.h5 is compressed inside the archive; re-save with Keras")
        meta: dict = {}
        order: list[str] = []
        for member in ("metadata.json", "config.json"):
            if member in names and names[member].file_size < 64 << 20:
                try:
                    data = json.loads(zf.read(member))
                except ZIP_ERRORS:
                    raise CorruptCheckpointError(path, f"{member} in the archive is not valid JSON") from None
                if member == "metadata.json" and isinstance(data, dict):
                    meta.update({k: str(v) for k, v in data.items() if isinstance(v, (str, int))})
                elif isinstance(data, dict):
                    meta["model_class"] = str(data.get("class_name", ""))
                    order = _config_layer_order(data)
        offset = zip_member_offset(path, info.header_offset, info.compress_size)
    ck = _read_h5(path, (offset, info.file_size), "keras3-archive", meta)
    ck.format = Format.KERAS_ZIP
    if order:  # HDF5 lists groups alphabetically; config.json has the model's own layer order
        rank = {name: i for i, name in enumerate(order)}
        ck.tensors.sort(key=lambda t: rank.get(t.layer.split("/")[0], len(rank)))
    return ck


def _config_layer_order(config: dict) -> list[str]:
    layers = config.get("config", {}).get("layers", []) if isinstance(config.get("config"), dict) else []
    out = []
    for layer in layers if isinstance(layers, list) else []:
        cfg = layer.get("config") if isinstance(layer, dict) else None
        if isinstance(cfg, dict) and isinstance(cfg.get("name"), str):
            out.append(cfg["name"])
    return out
