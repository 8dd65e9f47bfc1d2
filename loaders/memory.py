"""In-memory inputs: a torch.nn.Module, a state dict of tensors, a dict of NumPy arrays or a Keras model,
analysed by the same engine as files, chunk by chunk (a GPU tensor is copied to the host one chunk at a
time). Nothing here imports torch or keras unless the object given is one of theirs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from wdist.loaders.errors import UsageError
from wdist.loaders.model import Checkpoint, Role, TensorRef, some_names
from wdist.loaders.roles import default_unit_axis, fix_norm_biases, infer_role, split_name

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
MODEL_KEYS = ("state_dict", "model_state_dict", "model", "module")
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


def _ref(name: str, shape: tuple[int, ...], dtype: str, reader: Any, module_kind: str | None, keras: bool) -> TensorRef:
    sep = "/" if keras else "."
    layer, param = split_name(name, sep)
    role = infer_role(name, layer, param, shape, dtype)
    if module_kind == "norm" and role in (Role.WEIGHT, Role.BIAS, Role.OTHER) and dtype.startswith(("float", "bfloat")):
        role = Role.NORM
    elif module_kind == "embedding" and role is Role.WEIGHT:
        role = Role.EMBEDDING
    elif module_kind == "conv1d_gpt2" and role is Role.WEIGHT:
        keras = True  # [in, out] like a Keras kernel: units along the last axis
    return TensorRef(name=name, layer=layer, role=role, shape=shape, dtype=dtype, reader=reader,
                     unit_axis=default_unit_axis(role, len(shape), keras=keras), source="<memory>")


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
    return out


def _unread(name: str, shape: tuple[int, ...], dtype: str, nbytes: int, module_kind: str | None,
            keras: bool) -> TensorRef:
    """A tensor listed (name, shape, dtype, bytes) but not analysed: no reader."""
    ref = _ref(name, shape, dtype, None, module_kind, keras)
    ref.stored_nbytes = nbytes
    return ref


def _unread_warning(names: list[str]) -> list[str]:
    if not names:
        return []
    return [f"{len(names)} tensor(s) of a dtype or layout wdist does not analyse (complex, quantized, unsigned "
            f"16-64 bit, sparse, object ...) are listed but not analysed: " + some_names(names)]


def _torch_tensors(sd: Mapping[str, Any], kinds: dict[str, str], unread: list[str]) -> list[TensorRef]:
    import torch

    refs = []
    by_ptr: dict[tuple, TensorRef] = {}
    for name, t in sd.items():
        key = str(t.dtype).replace("torch.", "")
        layer = name.rsplit(".", 1)[0] if "." in name else ""
        shape = tuple(int(d) for d in t.shape)
        if key not in _TORCH or t.layout != torch.strided or t.is_quantized:
            # listed, never dropped: a complex, quantized or sparse tensor left out made a gate pass unseen
            refs.append(_unread(name, shape, key if t.layout == torch.strided else f"{key} ({t.layout})",
                                t.numel() * t.element_size(), kinds.get(layer), False))
            unread.append(name)
            continue
        dtype, view = _TORCH[key]
        # a zero-size tensor has no storage to share (data_ptr 0 for all of them): never a tie
        ident = ((t.data_ptr(), tuple(t.shape), tuple(t.stride()), key)
                 if t.device.type != "meta" and t.numel() else None)
        if ident is not None and ident in by_ptr:  # tied weights are listed once, with their aliases
            by_ptr[ident].aliases += (name,)
            continue
        ref = _ref(name, shape, dtype, TorchTensorReader(t, view), kinds.get(layer), False)
        if ident is not None:
            by_ptr[ident] = ref
        refs.append(ref)
    return refs


def _is_torch(obj: Any) -> bool:
    return type(obj).__module__.startswith("torch")


def from_object(obj: Any, name: str | None = None) -> Checkpoint:
    """A Checkpoint over an in-memory model or mapping of arrays (see the module docstring)."""
    label = name or f"<{type(obj).__name__}>"
    tensors: list[TensorRef]
    unread: list[str] = []
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
        inner = next((obj[k] for k in MODEL_KEYS if isinstance(obj.get(k), Mapping)), None)
        sd = inner if inner is not None else obj
        if not all(isinstance(k, str) for k in sd):
            raise UsageError(None, f"{label}: a state dict needs string keys")
        values = list(sd.values())
        if values and all(_is_torch(v) and hasattr(v, "dtype") and hasattr(v, "data_ptr") for v in values):
            tensors, variant = _torch_tensors(sd, {}, unread), "state-dict"
        elif all(isinstance(v, np.ndarray) for v in values):
            tensors = []
            for k, a in sd.items():
                dt = _NUMPY.get(a.dtype.newbyteorder("=").name if a.dtype.byteorder == ">" else a.dtype.name)
                if dt is None:
                    tensors.append(_unread(k, tuple(a.shape), a.dtype.name, a.nbytes, None, False))
                    unread.append(k)
                    continue
                a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
                tensors.append(_ref(k, tuple(a.shape), dt, ArrayReader(a), None, False))
            variant = "arrays"
        else:
            raise UsageError(None, f"{label}: a mapping must hold only torch tensors or only NumPy arrays")
    else:
        raise UsageError(None, f"cannot analyse a {type(obj).__name__}: give a path, a torch.nn.Module, a state "
                         "dict, a dict of NumPy arrays or a Keras model")
    fix_norm_biases(tensors)
    return Checkpoint(path=label, format="memory", variant=variant, tensors=tensors, warnings=_unread_warning(unread))


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
