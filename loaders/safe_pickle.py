"""A restricted unpickler that imports nothing from the file.

Known torch/collections names are replaced by inert stand-ins that record what a tensor is (storage,
offset, shape, stride). Every other global becomes a recording placeholder class: calling it, building it
or filling it only stores the arguments, so a payload such as `posix.system` is named, never run."""

from __future__ import annotations

import collections
import io
import pickle
import pickletools
import warnings
from dataclasses import dataclass, field
from typing import Any

from wdist.loaders.errors import CorruptCheckpointError

# torch storage class name -> wdist dtype
STORAGE_DTYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16",
    "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128", "Float8_e4m3fnStorage": "float8_e4m3fn",
    "Float8_e5m2Storage": "float8_e5m2", "Float8_e4m3fnuzStorage": "float8_e4m3fnuz",
    "Float8_e5m2fnuzStorage": "float8_e5m2fnuz", "UInt16Storage": "uint16", "UInt32Storage": "uint32",
    "UInt64Storage": "uint64",
}
TORCH_DTYPES = {
    "float32": "float32", "float": "float32", "float64": "float64", "double": "float64", "float16": "float16",
    "half": "float16", "bfloat16": "bfloat16", "int64": "int64", "long": "int64", "int32": "int32",
    "int": "int32", "int16": "int16", "int8": "int8", "uint8": "uint8", "bool": "bool",
    "float8_e4m3fn": "float8_e4m3fn", "float8_e5m2": "float8_e5m2", "float8_e4m3fnuz": "float8_e4m3fnuz",
    "float8_e5m2fnuz": "float8_e5m2fnuz", "uint16": "uint16", "uint32": "uint32", "uint64": "uint64",
    "complex64": "complex64", "cfloat": "complex64", "complex128": "complex128",
}
_RENAMED_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


@dataclass(frozen=True)
class StorageType:
    dtype: str


@dataclass
class StorageRef:
    key: str
    dtype: str
    numel: int
    view_offset: int = 0  # legacy view storages: element offset into the root storage


@dataclass
class PickledTensor:
    storage: StorageRef
    offset: int  # in elements of `dtype`
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: str

    def is_contiguous(self) -> bool:
        expect = 1
        for d, s in zip(reversed(self.shape), reversed(self.stride)):
            if d != 1 and s != expect:
                return False
            expect *= d
        return True

    def span(self) -> int:
        """Elements of the storage this tensor reaches, from its offset."""
        if any(d == 0 for d in self.shape):
            return 0
        return 1 + sum((d - 1) * s for d, s in zip(self.shape, self.stride))


class Placeholder:
    """Instance of a global wdist refused to import. Records args and state; does nothing else."""

    wdist_global = "?"
    wdist_args: tuple
    wdist_state: Any
    wdist_items: dict
    wdist_list: list

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
        obj = object.__new__(cls)
        object.__setattr__(obj, "wdist_args", args)
        object.__setattr__(obj, "wdist_state", None)
        object.__setattr__(obj, "wdist_items", {})
        object.__setattr__(obj, "wdist_list", [])
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        object.__setattr__(self, "wdist_state", state)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.wdist_items[key] = value

    def append(self, value: Any) -> None:
        self.wdist_list.append(value)

    def extend(self, values: Any) -> None:
        self.wdist_list.extend(values)

    def __reduce__(self) -> Any:  # never re-pickled
        raise TypeError("placeholder")


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> Any:
    return _tensor(storage, offset, size, stride, None)


def _rebuild_tensor_v3(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = None,
                       hooks: Any = None, dtype: Any = None, *rest: Any) -> Any:
    """torch >= 2.1 writes UntypedStorage (counted in bytes) and passes the dtype here."""
    return _tensor(storage, offset, size, stride, dtype if isinstance(dtype, str) else None)


def _tensor(storage: Any, offset: Any, size: Any, stride: Any, dtype: str | None) -> Any:
    if not isinstance(storage, StorageRef) or (dtype is None and storage.dtype == "untyped"):
        return Placeholder()
    try:
        return PickledTensor(storage, int(offset), tuple(int(d) for d in size), tuple(int(s) for s in stride),
                             dtype or storage.dtype)
    except (TypeError, ValueError):
        return Placeholder()


def _rebuild_parameter(data: Any, *rest: Any) -> Any:
    return data


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    if func in (_rebuild_tensor, _rebuild_tensor_v3, _rebuild_parameter) and isinstance(args, tuple):
        return func(*args)
    return Placeholder()


def _codecs_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> Any:
    if isinstance(obj, str) and encoding in ("latin1", "latin-1"):
        return obj.encode("latin1", errors if errors in ("strict", "ignore", "replace") else "strict")
    return Placeholder()


def _size(*args: Any) -> tuple:
    return tuple(args[0]) if args and isinstance(args[0], (tuple, list)) else ()


def _ordered_dict(*args: Any) -> Any:
    return collections.OrderedDict()


_SAFE: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Size"): _size,
    ("_codecs", "encode"): _codecs_encode,
    ("builtins", "set"): lambda *a: set(),
    ("builtins", "frozenset"): lambda *a: frozenset(),
    ("torch.nn.parameter", "Parameter"): _rebuild_parameter,
}


@dataclass
class UnpickleResult:
    obj: Any
    storages: dict[str, StorageRef]
    unsafe_globals: list[str] = field(default_factory=list)


class SafeUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, storages: dict[str, StorageRef], legacy: bool = False) -> None:
        super().__init__(file)
        self.storages = storages
        self.legacy = legacy
        self.unsafe: list[str] = []
        self._classes: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        module = _RENAMED_MODULES.get(module, module)
        if (module, name) in _SAFE:
            return _SAFE[(module, name)]
        if module in ("torch", "torch.storage") and name in STORAGE_DTYPES:
            return StorageType(STORAGE_DTYPES[name])
        if module in ("torch", "torch.storage") and name in ("UntypedStorage", "ByteStorage"):
            return StorageType("untyped" if name == "UntypedStorage" else "uint8")
        if module == "torch" and name in TORCH_DTYPES:
            return TORCH_DTYPES[name]
        full = f"{module}.{name}"
        if full not in self.unsafe:
            self.unsafe.append(full)
        cls = self._classes.get(full)
        if cls is None:
            cls = type(name if name.isidentifier() else "Global", (Placeholder,), {"wdist_global": full})
            self._classes[full] = cls
        return cls

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise pickle.UnpicklingError(f"unsupported persistent id {str(pid)[:60]!r}")
        stype, key, _loc, numel = pid[1], str(pid[2]), pid[3], pid[4]
        if isinstance(stype, StorageType):
            dtype = stype.dtype
        else:
            raise pickle.UnpicklingError("storage of an unknown type")
        if not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError("storage with a bad element count")
        ref = self.storages.get(key)
        if ref is None:
            ref = StorageRef(key, dtype, numel)
            self.storages[key] = ref
        view = pid[5] if len(pid) > 5 else None
        if self.legacy and view is not None:  # (view_key, offset, view_size)
            try:
                _vk, off, vsize = view
                return StorageRef(key, dtype, int(vsize), view_offset=int(off))
            except (TypeError, ValueError):
                raise pickle.UnpicklingError("bad storage view") from None
        return ref


MAX_OPCODES = 50_000_000


class Bounded(io.RawIOBase):
    """A read-only view of a seekable file that never hands out more than the file holds, so a length
    field in a lying pickle cannot make a reader allocate beyond the file's size."""

    def __init__(self, f: Any) -> None:
        super().__init__()
        self._f = f
        pos = f.tell()
        f.seek(0, io.SEEK_END)
        self._end = f.tell()
        f.seek(pos)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return int(self._f.tell())

    def seek(self, pos: int, whence: int = 0) -> int:
        return int(self._f.seek(pos, whence))

    def read(self, n: int = -1) -> bytes:
        left = max(0, self._end - self._f.tell())
        return bytes(self._f.read(left if n is None or n < 0 else min(n, left)))

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def readline(self, limit: int | None = -1) -> bytes:
        left = max(0, self._end - self._f.tell())
        return bytes(self._f.readline(left if limit is None or limit < 0 else min(limit, left)))


def prescan(file: Any, path: str, what: str) -> None:
    """Walk the opcodes without building anything, then rewind. Rejects what would make the C unpickler
    allocate far beyond the data: a memo index larger than the number of opcodes (a LONG_BINPUT of 2^32
    would size its memo table to tens of GB)."""
    start = file.tell()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pickletools warns on odd escapes in text opcodes
        _scan(file, path, what)
    file.seek(start)


def _scan(file: Any, path: str, what: str) -> None:
    count = 0
    try:
        for op, arg, _pos in pickletools.genops(file):
            count += 1
            if op.name in ("PUT", "BINPUT", "LONG_BINPUT") and int(arg or 0) > count:
                raise CorruptCheckpointError(path, f"{what} has a memo index ({arg}) beyond its size")
            if count > MAX_OPCODES:
                raise CorruptCheckpointError(path, f"{what} has more than {MAX_OPCODES} opcodes")
    except CorruptCheckpointError:
        raise
    except Exception as e:  # genops raises ValueError and friends on malformed streams
        raise CorruptCheckpointError(path, f"{what} is not a readable pickle ({str(e)[:80]})") from None


def safe_load(file: Any, path: str, storages: dict[str, StorageRef] | None = None,
              legacy: bool = False, what: str = "pickle") -> UnpickleResult:
    storages = {} if storages is None else storages
    file = file if isinstance(file, Bounded) else Bounded(file)
    prescan(file, path, what)
    up = SafeUnpickler(file, storages, legacy)
    try:
        obj = up.load()
    except RecursionError:
        raise CorruptCheckpointError(path, f"{what} is nested too deeply") from None
    except MemoryError:
        raise CorruptCheckpointError(path, f"{what} asks for more memory than it could hold") from None
    except Exception as e:  # any malformed stream: pickle raises many kinds
        raise CorruptCheckpointError(path, f"{what} is not a readable pickle ({type(e).__name__}: {str(e)[:80]})") from None
    return UnpickleResult(obj, storages, up.unsafe)
