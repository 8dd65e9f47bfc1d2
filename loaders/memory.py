"""In-memory inputs: a torch.nn.Module, a state dict of tensors, a dict of NumPy arrays or a Keras model,
analysed by the same engine as files, chunk by chunk (a GPU tensor is copied to the host one chunk at a
time). Nothing here imports torch or keras unless the object given is one of theirs."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from wdist.loaders.errors import UsageError
from wdist.loaders.model import Checkpoint, Role, TensorRef, some_names
from wdist.loaders.roles import (
    META_KEYS,
    MODEL_KEYS,
    default_unit_axis,
    fix_norm_biases,
    infer_role,
    is_optimizer_key,
    split_name,
)

# torch dtype name -> (wdist dtype, numpy dtype the raw values are viewed as)
_TORCH = {
    "float32": ("float32", None), "float64": ("float64", None), "float16": ("float16", None),
    "bfloat16": ("bfloat16", "int16"), "float8_e4m3fn": ("float8_e4m3fn", "uint8"),
    "float8_e5m2": ("float8_e5m2", "uint8"), "float8_e4m3fnuz": ("float8_e4m3fnuz", "uint8"),
    "float8_e5m2fnuz": ("float8_e5m2fnuz", "uint8"), "int64": ("int64", None), "int32": ("int32", None),
    "int16": ("int16", None), "int8": ("int8", None), "uint8": ("uint8", None), "bool": ("bool", None),
    "float8_e8m0fnu": ("float8_e8m0fnu", "uint8"),
}
_NUMPY = {"float64": "float64", "float32": "float32", "float16": "float16", "int64": "int64", "int32": "int32",
          "int16": "int16", "int8": "int8", "uint64": "uint64", "uint32": "uint32", "uint16": "uint16",
          "uint8": "uint8", "bool": "bool"}
MAX_DEPTH = 1000  # nesting of dicts/lists in memory, as for a pickle (safe_pickle.MAX_DEPTH)
# module classes whose parameters are normalisation scales/shifts or embeddings, whatever they are called
_NORM_MODULES = ("BatchNorm", "LayerNorm", "GroupNorm", "InstanceNorm", "RMSNorm", "LocalResponseNorm")


@dataclass
class TorchTensorReader:
    """Chunks of a live torch tensor. Runs in the caller's process only (`in_memory`): the engine never
    ships it to a worker process."""

    tensor: Any
    view_as: str | None
    in_memory = True

    def read_raw(self, start: int, count: int) -> np.ndarray:
        import torch

        t = self.tensor.detach()
        if t.is_contiguous():
            flat = t.reshape(-1)[start:start + count]
        else:  # copy only the rows of this range: reshape(-1) of a transposed/expanded tensor copies it all
            from wdist.loaders.fileio import range_boxes

            parts = [t[box].reshape(-1) for box in range_boxes(tuple(t.shape), start, start + count)]
            flat = torch.cat(parts) if len(parts) != 1 else parts[0]
        flat = flat.resolve_neg().resolve_conj()  # lazy negative / conjugate views hold other values
        if self.view_as is not None:
            flat = flat.contiguous().view(getattr(torch, self.view_as))
        arr = flat.cpu().numpy()
        return arr.view(np.uint16) if self.view_as == "int16" else arr


@dataclass
class ArrayReader:
    array: np.ndarray
    in_memory = True

    def read_raw(self, start: int, count: int) -> np.ndarray:
        return self.array.reshape(-1)[start:start + count]


def _ref(name: str, shape: tuple[int, ...], dtype: str, reader: Any, module_kind: str | None, keras: bool,
         forced: Role | None = None) -> TensorRef:
    sep = "/" if keras else "."
    layer, param = split_name(name, sep)
    role = forced or infer_role(name, layer, param, shape, dtype)
    if module_kind == "norm" and role in (Role.WEIGHT, Role.BIAS, Role.OTHER) and dtype.startswith(("float", "bfloat")):
        role = Role.NORM
    elif module_kind == "embedding" and role is Role.WEIGHT:
        role = Role.EMBEDDING
    elif module_kind == "conv1d_gpt2" and role is Role.WEIGHT:
        keras = True  # [in, out] like a Keras kernel: units along the last axis
    axis = default_unit_axis(role, len(shape), keras=keras)
    if module_kind == "conv_transpose" and role is Role.WEIGHT and axis is not None:
        axis = 1
    return TensorRef(name=name, layer=layer, role=role, shape=shape, dtype=dtype, reader=reader,
                     unit_axis=axis, source="<memory>")


def _module_kinds(module: Any) -> dict[str, str]:
    """Parameter-name prefix -> 'norm' / 'embedding' / 'conv1d_gpt2' from the module classes."""
    out: dict[str, str] = {}
    for name, m in module.named_modules():
        cls = type(m).__name__
        if any(k in cls for k in _NORM_MODULES):
            out[name] = "norm"
        elif cls in ("Embedding", "EmbeddingBag"):
            out[name] = "embedding"
        elif cls == "Conv1D" and hasattr(m, "nf"):  # Hugging Face GPT-2 Conv1D
            out[name] = "conv1d_gpt2"
        elif cls.startswith("ConvTranspose") or cls.startswith("LazyConvTranspose"):  # [in, out/groups, *k]
            out[name] = "conv_transpose"
    return out


def _unread(name: str, shape: tuple[int, ...], dtype: str, nbytes: int, module_kind: str | None,
            keras: bool, forced: Role | None = None) -> TensorRef:
    """A tensor listed (name, shape, dtype, bytes) but not analysed: no reader."""
    ref = _ref(name, shape, dtype, None, module_kind, keras, forced)
    ref.stored_nbytes = nbytes
    return ref


def _unread_warning(names: list[str]) -> list[str]:
    if not names:
        return []
    return [f"{len(names)} tensor(s) of a dtype or layout wdist does not analyse (complex, quantized, unsigned "
            f"16-64 bit, sparse, object ...) are listed but not analysed: " + some_names(names)]


def _torch_tensors(sd: Mapping[str, Any], kinds: dict[str, str], unread: list[str],
                   forced: Mapping[str, Role] | None = None) -> list[TensorRef]:
    """TensorRefs of the torch tensors and NumPy arrays of a flat name -> value mapping, in its order."""
    import torch

    refs = []
    by_ptr: dict[tuple, TensorRef] = {}
    for name, t in sd.items():
        role = forced.get(name) if forced else None
        layer = name.rsplit(".", 1)[0] if "." in name else ""
        if isinstance(t, np.ndarray):
            refs.append(_array_ref(name, t, unread, role))
            continue
        key = str(t.dtype).replace("torch.", "")
        shape = tuple(int(d) for d in t.shape)
        if key not in _TORCH or t.layout != torch.strided or t.is_quantized:
            # listed, never dropped: a complex, quantized or sparse tensor left out made a gate pass unseen
            refs.append(_unread(name, shape, key if t.layout == torch.strided else f"{key} ({t.layout})",
                                t.numel() * t.element_size(), kinds.get(layer), False, role))
            unread.append(name)
            continue
        dtype, view = _TORCH[key]
        # ties as torch.save records them: one storage. A zero-size tensor's data_ptr is 0 whatever its
        # storage, so its storage object identifies it (torch.save of {"a": z, "b": z} keeps one storage)
        ident: tuple | None = None
        if t.device.type != "meta":
            where = t.data_ptr() if t.numel() else ("empty", t.untyped_storage()._cdata, t.storage_offset())
            ident = (where, tuple(t.shape), tuple(t.stride()), key)
        if ident is not None and ident in by_ptr:  # tied weights are listed once, with their aliases
            by_ptr[ident].aliases += (name,)
            continue
        ref = _ref(name, shape, dtype, TorchTensorReader(t, view), kinds.get(layer), False, role)
        if ident is not None:
            by_ptr[ident] = ref
        refs.append(ref)
    return refs


def _array_ref(name: str, a: np.ndarray, unread: list[str], forced: Role | None = None) -> TensorRef:
    dt = _NUMPY.get(a.dtype.newbyteorder("=").name if a.dtype.byteorder == ">" else a.dtype.name)
    if dt is None:
        unread.append(name)
        return _unread(name, tuple(a.shape), a.dtype.name, a.nbytes, None, False, forced)
    a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
    return _ref(name, tuple(a.shape), dt, ArrayReader(a), None, False, forced)


def _is_leaf(v: Any) -> bool:
    if isinstance(v, np.ndarray):
        return True
    torch = sys.modules.get("torch")  # a torch tensor exists only once torch is imported: never import it here
    return torch is not None and isinstance(v, torch.Tensor)


def _is_module(v: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(v, torch.nn.Module)


def _walk(obj: Any, prefix: str, out: dict[str, Any], seen: set[int], kinds: dict[str, str]) -> None:
    """Every tensor or array reachable from obj through dicts, lists, tuples and nn.Modules (by their
    state_dict, their norm/embedding layers noted in `kinds`), named by the dotted path of keys and indices,
    as wdist names the same object saved with torch.save; other values are skipped. Iterative, each
    container once, nesting bounded."""
    todo: list[tuple[Any, str, int]] = [(obj, prefix, 0)]
    while todo:
        node, at, depth = todo.pop()
        if _is_leaf(node):
            if at in out:
                raise UsageError(None, f"two tensors would both be named {at!r}")
            out[at] = node
            continue
        if id(node) in seen:
            continue
        if depth >= MAX_DEPTH:
            raise UsageError(None, f"the mapping nests deeper than {MAX_DEPTH} levels")
        if _is_module(node):
            seen.add(id(node))
            kinds.update((f"{at}.{k}" if at and k else at or k, v) for k, v in _module_kinds(node).items())
            node = node.state_dict()
        elif not isinstance(node, (Mapping, list, tuple)):
            continue
        seen.add(id(node))
        kids = list(node.items()) if isinstance(node, Mapping) else list(enumerate(node))
        for k, v in reversed(kids):
            # only what can hold a tensor becomes a to-do entry: a loss history of 10^6 floats costs a scan
            if _is_leaf(v) or isinstance(v, (Mapping, list, tuple)) or _is_module(v):
                todo.append((v, f"{at}.{k}" if at else str(k), depth + 1))


def _flatten(obj: Mapping[Any, Any]) -> tuple[dict[str, Any], dict[str, Role], dict[str, Any], dict[str, str]]:
    """(name -> tensor, name -> forced role, metadata, layer -> module kind) of a state dict or a training
    checkpoint dict, named as torch_loader names the same dict saved with torch.save: the model's entry
    (MODEL_KEYS; a mapping or an nn.Module) without its key, optimizer entries with theirs (as optimizer
    state), anything else with its key."""
    meta = {k: obj[k] for k in META_KEYS if type(obj.get(k)) in (int, float, str)}  # a NumPy scalar is not pickled as one
    flat: dict[str, Any] = {}
    forced: dict[str, Role] = {}
    kinds: dict[str, str] = {}
    seen: set[int] = set()
    model_key = next((k for k in MODEL_KEYS if isinstance(obj.get(k), Mapping) or _is_module(obj.get(k))), None)
    if model_key is None:
        _walk(obj, "", flat, seen, kinds)
        return flat, forced, meta, kinds
    for key, value in obj.items():
        before = len(flat)
        _walk(value, "" if key == model_key else str(key), flat, seen, kinds)
        if key != model_key and is_optimizer_key(key):
            forced.update((n, Role.OPTIMIZER_STATE) for n in list(flat)[before:])
    return flat, forced, meta, kinds


def from_object(obj: Any, name: str | None = None) -> Checkpoint:
    """A Checkpoint over an in-memory model or mapping of arrays (see the module docstring)."""
    label = name or f"<{type(obj).__name__}>"
    tensors: list[TensorRef]
    unread: list[str] = []
    meta: dict[str, Any] = {}
    if hasattr(obj, "state_dict") and hasattr(obj, "named_modules") and _is_torch_module(obj):
        tensors = _torch_tensors(obj.state_dict(), _module_kinds(obj), unread)
        variant = "nn.Module"
    elif _is_keras_model(obj):
        tensors = []
        for v in obj.weights:
            path = getattr(v, "path", None) or getattr(v, "name", "var")
            arr = np.asarray(v.numpy())
            dt = _NUMPY.get(arr.dtype.name)
            vname = str(path).replace(":0", "")
            if dt is None:
                tensors.append(_unread(vname, tuple(arr.shape), arr.dtype.name, arr.nbytes, None, True))
                unread.append(vname)
                continue
            tensors.append(_ref(vname, tuple(arr.shape), dt, ArrayReader(arr), None, True))
        variant = "keras-model"
    elif isinstance(obj, Mapping):
        flat, forced, meta, kinds = _flatten(obj)
        if all(isinstance(v, np.ndarray) for v in flat.values()):  # no torch import for NumPy arrays
            tensors, variant = [_array_ref(k, a, unread, forced.get(k)) for k, a in flat.items()], "arrays"
        else:
            tensors, variant = _torch_tensors(flat, kinds, unread, forced), "state-dict"
        if not flat and obj:
            raise UsageError(None, f"{label}: the mapping holds no torch tensor or NumPy array")
    else:
        raise UsageError(None, f"cannot analyse a {type(obj).__name__}: give a path, a torch.nn.Module, a state "
                         "dict, a dict of NumPy arrays or a Keras model")
    fix_norm_biases(tensors)
    return Checkpoint(path=label, format="memory", variant=variant, tensors=tensors, metadata=meta,
                      warnings=_unread_warning(unread))


def _is_torch_module(obj: Any) -> bool:
    try:
        import torch
    except ImportError:
        return False
    return isinstance(obj, torch.nn.Module)


def _is_keras_model(obj: Any) -> bool:
    mod = type(obj).__module__
    return (mod.startswith(("keras", "tf_keras", "tensorflow")) and hasattr(obj, "weights")
            and not isinstance(obj, Mapping))
