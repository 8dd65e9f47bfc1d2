"""A restricted pickle reader that imports nothing from the file and bounds its own work.

The stream is run by a small pure-Python pickle VM (one pass, no C unpickler, no pre-scan) that only ever
builds inert data: dict/list/tuple/str/bytes/int/float/bool/None, wdist's stand-ins for torch's rebuild
functions and storages and for numpy's array reconstruction, and recording Placeholders for every other
global (a payload such as `posix.system` is named, never run). As it goes it bounds the work a file can
cause: opcodes (absolute and relative to the file's size on disk), dict-key size and kind (tuple keys are
sized when built, so a tuple-DAG hash bomb is refused before anything hashes it), integer sizes, text-line
lengths and storage keys; the finished object graph is then measured once (element count with memo sharing
expanded, nesting depth). Any violation or malformation is one CorruptCheckpointError naming the file."""

from __future__ import annotations

import collections
import io
import struct
from dataclasses import dataclass, field
from types import FunctionType
from typing import Any

import numpy as np

from wdist.loaders.dtypes import storage_dtype
from wdist.loaders.errors import CorruptCheckpointError, WdistError

# torch storage class name -> wdist dtype
STORAGE_DTYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16",
    "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128", "Float8_e4m3fnStorage": "float8_e4m3fn",
    "Float8_e5m2Storage": "float8_e5m2", "Float8_e4m3fnuzStorage": "float8_e4m3fnuz",
    "Float8_e5m2fnuzStorage": "float8_e5m2fnuz", "UInt16Storage": "uint16", "UInt32Storage": "uint32",
    "UInt64Storage": "uint64", "Float8_e8m0fnuStorage": "float8_e8m0fnu",
    # quantized storages: their tensors are rebuilt by _rebuild_qtensor (scale, zero point), which wdist does
    # not run, so they are reported as objects not loaded; the storage itself must not make the file unreadable
    "QInt8Storage": "qint8", "QUInt8Storage": "quint8", "QInt32Storage": "qint32", "QUInt4x2Storage": "quint4x2",
    "QUInt2x4Storage": "quint2x4",
}
QUANTIZED_ITEMSIZE = {"qint8": 1, "quint8": 1, "qint32": 4, "quint4x2": 1, "quint2x4": 1}
TORCH_DTYPES = {
    "float32": "float32", "float": "float32", "float64": "float64", "double": "float64", "float16": "float16",
    "half": "float16", "bfloat16": "bfloat16", "int64": "int64", "long": "int64", "int32": "int32",
    "int": "int32", "int16": "int16", "int8": "int8", "uint8": "uint8", "bool": "bool",
    "float8_e4m3fn": "float8_e4m3fn", "float8_e5m2": "float8_e5m2", "float8_e4m3fnuz": "float8_e4m3fnuz",
    "float8_e5m2fnuz": "float8_e5m2fnuz", "uint16": "uint16", "uint32": "uint32", "uint64": "uint64",
    "complex64": "complex64", "cfloat": "complex64", "complex128": "complex128", "float8_e8m0fnu": "float8_e8m0fnu",
}
# numpy type strings (as numpy.dtype() receives them when unpickling) that are plain numbers
NUMPY_DTYPES = {
    "f2": "float16", "f4": "float32", "f8": "float64", "i1": "int8", "i2": "int16", "i4": "int32",
    "i8": "int64", "u1": "uint8", "u2": "uint16", "u4": "uint32", "u8": "uint64", "b1": "bool",
    "c8": "complex64", "c16": "complex128",
}
_RENAMED_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}
_STORAGE_MODULES = ("torch", "torch.storage", "torch.cuda")  # pre-1.6 GPU saves name torch.cuda.FloatStorage

# Limits. Measured on torch 2.13: torch.save of a 10^4-tensor state dict is 0.3 M opcodes (1 MB of
# data.pkl); 10^5 tensors plus their Adam state (4 * 10^5 tensors) is 11.9 M opcodes (34 MB) and an
# object graph of ~2 M elements at depth 5. Every opcode takes at least one byte, so a pickle stored
# uncompressed never has more opcodes than its file has bytes; the relative limit only bites on compressed
# or otherwise inflated streams (the 849 KB data.pkl that inflated to 50 M opcodes).
MAX_OPCODES = 100_000_000  # 8x the 10^5-tensor + Adam checkpoint
OPCODE_SLACK = 1_000_000  # allowed beyond the file's size on disk
MAX_GRAPH = 100_000_000  # container elements with memo sharing expanded (real: ~opcodes / 6)
MAX_DEPTH = 1000  # nesting (real: < 50 even for torch.save(model) of deep nets)
MAX_KEY_NODES = 64  # elements of a tuple used as a dict key (real tuple keys are 2-3 elements)
MAX_WEAK_KEYS = 2000  # dict keys whose hash a file could make collide (ints/floats inside tuples, floats)
MAX_INT_BYTES = 64  # 512-bit integers (torch's legacy magic number is 10 bytes)
MAX_LINE = 1 << 20  # protocol-0 text lines
MAX_STORAGE_KEY = 256  # characters of a storage key (torch writes '0', '1', ... or a decimal address)
# What the VM allocates, bounded in absolute terms (the opcode limit alone lets a 100 MB file of `]a` build
# 50 M lists, ~11 GB with the graph measurement). Measured on the 10^5-tensor + Adam torch.save above:
# 100,007 lists/dicts/sets (one state dict per parameter) and an estimate of ~1.0 GB for everything the
# VM builds (1.4 M tuples, 0.8 M rebuild results, 0.5 M strings, 2.8 M memo entries, 0.9 M marks, item
# slots; its peak RSS is ~0.95 GB). Estimates are CPython's object sizes, rounded up (a tuple includes its
# entry in _VM.tuples); bytes payloads are not counted: they are at most the stream itself, and large ones
# stay in the file.
MAX_CONTAINERS = 1_000_000  # lists, dicts, sets and placeholder instances (10x the real 100,007)
MAX_GLOBALS = 10_000  # distinct refused globals, each a class (real: < 200 even for torch.save(model))
MAX_VM_BYTES = 4 << 30  # estimated bytes of everything built (~4x the real ~1.0 GB)
_W_LIST, _W_DICT, _W_TUPLE, _W_CALL, _W_STR, _W_MEMO, _W_SLOT, _W_ENTRY = 64, 64, 200, 300, 64, 100, 8, 48
MAX_DIM = 1 << 62  # shape dims, strides, offsets and element counts
BIG_BYTES = 1 << 20  # bytes payloads at least this large, in a real file, are recorded by offset
_CHUNK = 1 << 20
_INT_HASH_SAFE = (1 << 61) - 1  # ints below this hash to themselves: a file cannot make them collide


@dataclass(frozen=True)
class StorageType:
    dtype: str


@dataclass(frozen=True)
class StorageRef:
    key: str
    dtype: str
    numel: int
    view_offset: int = 0  # legacy view storages: element offset into the root storage
    location: str = "cpu"


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class FileBytes:
    """A large bytes payload left in the file: [offset, offset+length) of the file being read."""

    offset: int
    length: int

    def __len__(self) -> int:
        return self.length


class Placeholder:
    """Instance of a global wdist refused to import. The VM records its args, state, items and list;
    nothing else happens to it."""

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

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("placeholders are read-only")

    def __reduce__(self) -> Any:  # never re-pickled
        raise TypeError("placeholder")


class NumpyDtype:
    """numpy.dtype(typestr, ...) as unpickled: only plain numeric type strings are accepted."""

    __slots__ = ("typestr", "byteorder", "built")

    def __init__(self, typestr: str) -> None:
        self.typestr = typestr
        self.byteorder = "|" if typestr in ("i1", "u1", "b1") else "="
        self.built = False


class NumpyArray:
    """numpy.ndarray as rebuilt by _reconstruct + BUILD, holding its bytes (or their place in the file)."""

    __slots__ = ("dtype", "shape", "fortran", "data", "built")

    def __init__(self) -> None:
        self.dtype = ""
        self.shape: tuple[int, ...] = ()
        self.fortran = False
        self.data: bytes | FileBytes = b""
        self.built = False


@dataclass
class MemoryReader:
    """A C-order array whose bytes were held inside the pickle stream (protocol-2 `_codecs.encode` form)."""

    data: bytes
    dtype: str

    def read_raw(self, start: int, count: int) -> np.ndarray:
        dt = storage_dtype(self.dtype)
        return np.frombuffer(self.data, dtype=dt, count=count, offset=start * dt.itemsize)


class _NdarrayClass:
    """numpy.ndarray as a global: only meaningful as _reconstruct's first argument."""


NDARRAY = _NdarrayClass()


class _Refused(Exception):
    pass


def _check_dim(v: Any, what: str) -> int:
    if type(v) is not int or not 0 <= v < MAX_DIM:  # bool is refused too
        raise _Refused(f"tensor {what} {str(v)[:40]!r} is not an integer in [0, 2^62)")
    return v


def _tensor(storage: Any, offset: Any, size: Any, stride: Any, dtype: str | None) -> Any:
    if not isinstance(storage, StorageRef) or (dtype is None and storage.dtype == "untyped"):
        return Placeholder()
    if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)) or len(size) != len(stride):
        raise _Refused("tensor shape and stride are not matching sequences")
    if len(size) > 64:
        raise _Refused(f"tensor has {len(size)} dimensions")
    return PickledTensor(storage, _check_dim(offset, "offset"), tuple(_check_dim(d, "dimension") for d in size),
                         tuple(_check_dim(s, "stride") for s in stride), dtype or storage.dtype)


def _rebuild_tensor(storage: Any = None, offset: Any = 0, size: Any = (), stride: Any = (), *rest: Any) -> Any:
    return _tensor(storage, offset, size, stride, None)


def _rebuild_tensor_v3(storage: Any = None, offset: Any = 0, size: Any = (), stride: Any = (),
                       requires_grad: Any = None, hooks: Any = None, dtype: Any = None, *rest: Any) -> Any:
    """torch >= 2.1 writes UntypedStorage (counted in bytes) and passes the dtype here."""
    return _tensor(storage, offset, size, stride, dtype if isinstance(dtype, str) else None)


def _rebuild_parameter(data: Any = None, *rest: Any) -> Any:
    return data


def _rebuild_from_type_v2(func: Any = None, new_type: Any = None, args: Any = (), state: Any = None) -> Any:
    if func in (_rebuild_tensor, _rebuild_tensor_v3, _rebuild_parameter) and isinstance(args, tuple):
        return func(*args)
    return Placeholder()


def _codecs_encode(obj: Any = None, encoding: str = "utf-8", errors: str = "strict") -> Any:
    if isinstance(obj, str) and encoding in ("latin1", "latin-1"):
        try:
            return obj.encode("latin1")
        except UnicodeEncodeError:
            raise _Refused("latin1 bytes hold a non-latin1 character") from None
    return Placeholder()


def _size(*args: Any) -> tuple:
    return tuple(args[0]) if args and isinstance(args[0], (tuple, list)) else ()


def _empty_set(*args: Any) -> list:
    return []  # contents are not needed; a list needs no hashing


def _np_reconstruct(cls: Any = None, shape: Any = None, dtype: Any = None, *rest: Any) -> Any:
    if cls is not NDARRAY:  # an ndarray subclass: its class was refused and named already
        return Placeholder()
    return NumpyArray()


def _np_dtype(typestr: Any = None, align: Any = False, copy: Any = False, *rest: Any) -> Any:
    if isinstance(typestr, bytes):
        typestr = typestr.decode("latin1")
    if not isinstance(typestr, str) or typestr.lstrip("<>|=") not in NUMPY_DTYPES:
        return None  # refused below, when an array uses it
    order = typestr[0] if typestr[0] in "<>|=" else ""
    dt = NumpyDtype(typestr.lstrip("<>|="))
    if order:
        dt.byteorder = order
    return dt


def _ordered_dict(*args: Any) -> Any:
    return collections.OrderedDict()  # filled by the VM from args (see REDUCE), then by SETITEMS


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
    ("builtins", "set"): _empty_set,
    ("builtins", "frozenset"): _empty_set,
    ("torch.nn.parameter", "Parameter"): _rebuild_parameter,
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy", "dtype"): _np_dtype,
}
_CALLABLES = frozenset(id(f) for f in _SAFE.values())


@dataclass
class UnpickleResult:
    obj: Any
    storages: dict[str, StorageRef]
    unsafe_globals: list[str] = field(default_factory=list)
    arrays: int = 0  # numpy arrays rebuilt


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

    @property
    def raw_file(self) -> Any:
        return self._f

    @property
    def end(self) -> int:
        return self._end

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return int(self._f.tell())

    def seek(self, pos: int, whence: int = 0) -> int:
        return int(self._f.seek(pos, whence))

    def read(self, n: int | None = -1) -> bytes:
        left = max(0, self._end - self._f.tell())
        return bytes(self._f.read(left if n is None or n < 0 else min(n, left)))

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def readline(self, limit: int | None = -1) -> bytes:
        left = max(0, self._end - self._f.tell())
        return bytes(self._f.readline(left if limit is None or limit < 0 else min(limit, left)))


class _Source:
    """The pickle's bytes: all of a BytesIO at once, or a real file in 1 MiB windows."""

    def __init__(self, f: Any) -> None:
        raw = f.raw_file if isinstance(f, Bounded) else f
        self.f = f
        if isinstance(raw, io.BytesIO):
            self.file_backed = False
            start = raw.tell()
            self.data = raw.getvalue()
            self.base, self.pos, self.end = 0, start, len(self.data)
            self.eof = True
        else:
            self.file_backed = True
            self.base = f.tell()
            f.seek(0, io.SEEK_END)
            self.end = f.tell()
            self.data, self.pos, self.eof = b"", 0, False
            self._read_from(self.base)

    def _read_from(self, at: int, need: int = 0) -> None:
        self.f.seek(at)
        want = max(_CHUNK, need)
        self.data = bytes(self.f.read(min(want, self.end - at)))
        self.base, self.pos = at, 0
        self.eof = at + len(self.data) >= self.end

    def refill(self, need: int) -> None:
        """Make data[pos:pos+need] available if the file holds it."""
        if not self.eof:
            self._read_from(self.base + self.pos, need)

    def left(self) -> int:
        return self.end - self.base - self.pos


def _key_info(k: Any, tuples: dict[int, tuple]) -> tuple[bool, bool]:
    """(usable as a dict key without unbounded hashing, hash could be made to collide by the file)."""
    t = type(k)
    if t is str or t is bytes or k is None or t is bool:
        return True, False
    if t is int:
        return True, not -_INT_HASH_SAFE < k < _INT_HASH_SAFE
    if t is float:
        return True, True
    if t is tuple:
        info = tuples.get(id(k))
        if info is None:
            return False, True
        return info[1] and info[2] <= MAX_KEY_NODES, info[3]
    if isinstance(k, (str, bytes)):
        return True, False
    if isinstance(k, (Placeholder, StorageType, FunctionType, type, FileBytes)):
        return True, False  # identity or str-derived hash
    return False, False


class _VM:
    def __init__(self, src: _Source, path: str, what: str, storages: dict[str, StorageRef], legacy: bool,
                 max_ops: int) -> None:
        self.src, self.path, self.what = src, path, what
        self.storages, self.legacy, self.max_ops = storages, legacy, max_ops
        self.unsafe: list[str] = []
        self.classes: dict[str, type] = {}
        # id(tuple) -> (tuple kept alive so ids stay unique, hashable, expanded size, weak hash)
        self.tuples: dict[int, tuple] = {}
        self.weak_keys = 0
        self.arrays = 0
        self.instances = 0  # placeholder instances (MAX_CONTAINERS)
        self.built = (0, 0)  # (lists/dicts/sets, estimated bytes) once run() has finished

    # -- helpers -----------------------------------------------------------------------------------
    def tup(self, items: Any) -> tuple:
        t = tuple(items)
        hashable, size, weak = True, 1 + len(t), False
        tuples = self.tuples
        for x in t:
            tx = type(x)
            if tx is str or x is None:
                continue
            if tx is int or tx is float or tx is bool:
                weak = True  # tuple hashes of numbers are deterministic: collisions can be crafted
            elif tx is tuple:
                info = tuples.get(id(x))
                if info is None:
                    hashable = weak = False
                else:
                    hashable = hashable and info[1]
                    size += info[2] - 1
                    weak = weak or info[3]
            else:
                ok, w = _key_info(x, tuples)
                hashable = hashable and ok
                weak = weak or w
        tuples[id(t)] = (t, hashable, size, weak)
        return t

    def setkey(self, d: dict, k: Any, v: Any) -> None:
        ok, weak = _key_info(k, self.tuples)
        if not ok:
            raise _Refused(f"dict key of type {type(k).__name__} is not usable (unhashable or too large)")
        if weak:
            self.weak_keys += 1
            if self.weak_keys > MAX_WEAK_KEYS:
                raise _Refused(f"more than {MAX_WEAK_KEYS} numeric or tuple dict keys")
        d[k] = v

    def find_class(self, module: Any, name: Any) -> Any:
        if not isinstance(module, str) or not isinstance(name, str) or len(module) + len(name) > 512:
            raise _Refused("global name is not a short string")
        module = _RENAMED_MODULES.get(module, module)
        if (module, name) in _SAFE:
            return _SAFE[(module, name)]
        if module in _STORAGE_MODULES and name in STORAGE_DTYPES:
            return StorageType(STORAGE_DTYPES[name])
        if module in ("torch", "torch.storage") and name == "UntypedStorage":
            return StorageType("untyped")
        if module == "torch" and name in TORCH_DTYPES:
            return TORCH_DTYPES[name]
        if module == "numpy" and name == "ndarray":
            return NDARRAY
        full = f"{module}.{name}"
        cls = self.classes.get(full)
        if cls is None:
            if len(self.classes) >= MAX_GLOBALS:
                raise _Refused(f"more than {MAX_GLOBALS} distinct globals")
            self.unsafe.append(full)
            cls = type(name if name.isidentifier() else "Global", (Placeholder,), {"wdist_global": full})
            self.classes[full] = cls
        return cls

    def call(self, func: Any, args: Any, kwargs: Any = None) -> Any:
        if not isinstance(args, tuple):
            raise _Refused("call arguments are not a tuple")
        if isinstance(func, (type, Placeholder)):
            self.instances += 1
            if self.instances > MAX_CONTAINERS:
                raise _Refused(f"more than {MAX_CONTAINERS} instances of refused globals")
        if isinstance(func, type) and issubclass(func, Placeholder):
            obj = Placeholder.__new__(func)
            object.__setattr__(obj, "wdist_args", args if not kwargs else (*args, kwargs))
            return obj
        if isinstance(func, Placeholder):  # calling the result of a refused global: still inert
            return Placeholder.__new__(type(func), *args)
        if id(func) not in _CALLABLES:
            raise _Refused(f"call of a {type(func).__name__}, which is not callable")
        if kwargs:
            raise _Refused("keyword arguments to a torch rebuild function")
        if func is _ordered_dict:
            d: dict = collections.OrderedDict()
            if args:  # py2-era OrderedDict.__reduce__: ([[k, v], ...],)
                pairs = args[0]
                if not isinstance(pairs, (list, tuple)):
                    raise _Refused("OrderedDict argument is not a list of pairs")
                for p in pairs:
                    if not isinstance(p, (list, tuple)) or len(p) != 2:
                        raise _Refused("OrderedDict argument is not a list of pairs")
                    self.setkey(d, p[0], p[1])
            return d
        try:
            out = func(*args)
        except TypeError:
            raise _Refused(f"bad arguments to {func.__name__}") from None
        if func is _np_dtype and out is None:  # object, string, structured... dtypes: named, not recovered
            return self.find_class("numpy", f"dtype({str(args[0] if args else '')[:20]})")()
        if type(out) is tuple:
            out = self.tup(out)
        elif isinstance(out, NumpyArray):
            self.arrays += 1
        return out

    def build(self, obj: Any, state: Any) -> None:
        if isinstance(obj, Placeholder):
            object.__setattr__(obj, "wdist_state", state)
        elif isinstance(obj, NumpyArray):
            self.build_array(obj, state)
        elif isinstance(obj, NumpyDtype):
            if obj.built or not isinstance(state, tuple) or len(state) < 2:
                raise _Refused("numpy dtype state is damaged")
            if len(state) >= 5 and (state[2] is not None or state[3] is not None or state[4] is not None):
                raise _Refused("structured numpy dtypes are not supported")
            if state[1] not in ("<", ">", "|", "="):
                raise _Refused("numpy dtype byte order is damaged")
            obj.byteorder, obj.built = state[1], True
        elif isinstance(obj, (dict, list, PickledTensor)):
            pass  # instance attributes (a state dict's _metadata, a tensor subclass's fields) are not needed
        else:
            raise _Refused(f"BUILD applied to a {type(obj).__name__}")

    def build_array(self, arr: NumpyArray, state: Any) -> None:
        if arr.built or not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _Refused("numpy array state is damaged")
        shape, dt, fortran, raw = state[-4:]
        if not isinstance(dt, NumpyDtype):  # refused (and named) when its dtype was unpickled
            arr.built = True  # left without a dtype: not recovered
            return
        if dt.byteorder == ">" and dt.typestr not in ("i1", "u1", "b1"):
            raise _Refused("big-endian numpy arrays are not supported")
        if not isinstance(shape, tuple) or len(shape) > 64:
            raise _Refused("numpy array shape is damaged")
        n = 1
        for d in shape:
            n *= _check_dim(d, "dimension")
        wdtype = NUMPY_DTYPES[dt.typestr]
        need = n * int(np.dtype(dt.typestr).itemsize)
        if isinstance(raw, str):
            try:
                raw = raw.encode("latin1")  # py2 str read as text
            except UnicodeEncodeError:
                raise _Refused("numpy array data is damaged") from None
        if not isinstance(raw, (bytes, FileBytes)):
            raise _Refused("numpy array data is not bytes")
        if len(raw) != need:
            raise _Refused(f"numpy array of shape {list(shape)} needs {need} bytes, holds {len(raw)}")
        arr.dtype, arr.shape, arr.fortran, arr.data, arr.built = wdtype, shape, bool(fortran), raw, True

    def persistent(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise _Refused("unsupported persistent id")
        stype, key, loc, numel = pid[1], pid[2], pid[3], pid[4]
        if not isinstance(stype, StorageType):
            raise _Refused("storage of an unknown type")
        if type(key) is int and 0 <= key < MAX_DIM:
            key = str(key)
        elif not isinstance(key, str) or len(key) > MAX_STORAGE_KEY:
            raise _Refused("storage key is not a short string or integer")
        if not isinstance(loc, str) or len(loc) > 64:
            raise _Refused("storage location is not a short string")
        if type(numel) is not int or not 0 <= numel < MAX_DIM:
            raise _Refused("storage with a bad element count")
        key = str(key)
        ref = self.storages.get(key)
        if ref is None:
            ref = StorageRef(key, stype.dtype, numel, 0, loc)
            self.storages[key] = ref
        view = pid[5] if len(pid) > 5 else None
        if self.legacy and view is not None:  # (view_key, offset, view_size)
            if not isinstance(view, tuple) or len(view) != 3:
                raise _Refused("bad storage view")
            off, vsize = _check_dim(view[1], "view offset"), _check_dim(view[2], "view size")
            return StorageRef(key, ref.dtype, vsize, off, loc)
        return ref

    # -- the loop ------------------------------------------------------------------------------------
    def run(self) -> Any:  # noqa: C901 - one dispatch loop is the fast way in pure Python
        src = self.src
        data, pos, n = src.data, src.pos, len(src.data)
        stack: list = []
        metastack: list = []
        memo: dict = {}
        ops = 0
        max_ops = self.max_ops
        made = 0  # lists, dicts and sets built (MAX_CONTAINERS)
        spent = 0  # estimated bytes built (MAX_VM_BYTES), checked with the opcode count
        max_spent = MAX_VM_BYTES
        tup = self.tup
        unpack = struct.unpack_from

        def need(k: int) -> tuple[bytes, int, int]:
            src.pos = pos
            src.refill(k)
            if src.pos + k > len(src.data):
                raise _Refused("pickle is truncated")
            return src.data, src.pos, len(src.data)

        def payload(k: int, as_file: bool) -> Any:
            nonlocal data, pos, n
            if k < 0 or k > src.end - src.base - pos:
                raise _Refused("pickle is truncated (a length field points past the end)")
            if as_file and src.file_backed and k >= BIG_BYTES:
                fb = FileBytes(src.base + pos, k)
                if pos + k <= n:
                    pos += k
                else:
                    src._read_from(src.base + pos + k)
                    data, pos, n = src.data, src.pos, len(src.data)
                return fb
            if pos + k > n:
                data, pos, n = need(k)
            s = data[pos:pos + k]
            pos += k
            return s

        def line() -> bytes:
            nonlocal data, pos, n
            end = data.find(b"\n", pos, pos + MAX_LINE)
            if end < 0 and not src.eof:
                src.pos = pos
                src.refill(MAX_LINE + 1)
                data, pos, n = src.data, src.pos, len(src.data)
                end = data.find(b"\n", pos, pos + MAX_LINE)
            if end < 0:
                raise _Refused("text opcode line is unterminated or too long")
            s = data[pos:end]
            pos = end + 1
            return s

        def pop_mark() -> list:
            nonlocal stack
            items = stack
            stack = metastack.pop()
            return items

        def memo_put(idx: int) -> None:
            if idx > ops:
                raise _Refused(f"memo index ({idx}) beyond its size")
            memo[idx] = stack[-1]

        def int_line(s: bytes) -> Any:
            s = s.rstrip(b"L")
            if len(s) > MAX_INT_BYTES * 3:
                raise _Refused("integer is too long")
            if s == b"00":
                return False
            if s == b"01":
                return True
            return int(s)

        def big_int(b: bytes) -> int:
            if len(b) > MAX_INT_BYTES:
                raise _Refused(f"integer of {len(b)} bytes")
            return int.from_bytes(b, "little", signed=True)

        while True:
            if pos + 9 > n and not src.eof:
                src.pos = pos
                src.refill(9)
                data, pos, n = src.data, src.pos, len(src.data)
            if pos >= n:
                raise _Refused("pickle is truncated (no STOP opcode)")
            op = data[pos]
            pos += 1
            ops += 1
            if ops > max_ops or spent > max_spent:
                if spent > max_spent:
                    raise _Refused(f"builds more than {MAX_VM_BYTES >> 20} MiB of objects (estimated)")
                raise _Refused(f"more than {max_ops} opcodes")
            if op == 0x68:  # BINGET
                stack.append(memo[data[pos]])
                pos += 1
            elif op == 0x71:  # BINPUT
                memo_put(data[pos])
                pos += 1
            elif op == 0x94:  # MEMOIZE
                memo[len(memo)] = stack[-1]
                spent += _W_MEMO
            elif op == 0x28:  # MARK
                metastack.append(stack)
                stack = []
                spent += _W_LIST
            elif op == 0x58:  # BINUNICODE
                if pos + 4 > n:
                    raise _Refused("pickle is truncated")
                k = unpack("<I", data, pos)[0]
                pos += 4
                stack.append(str(payload(k, False), "utf-8", "surrogatepass"))
                spent += _W_STR
            elif op == 0x8C:  # SHORT_BINUNICODE
                k = data[pos]
                pos += 1
                stack.append(str(payload(k, False), "utf-8", "surrogatepass"))
                spent += _W_STR
            elif op == 0x4B:  # BININT1
                stack.append(data[pos])
                pos += 1
            elif op == 0x4D:  # BININT2
                stack.append(data[pos] | data[pos + 1] << 8)
                pos += 2
            elif op == 0x4A:  # BININT
                stack.append(unpack("<i", data, pos)[0])
                pos += 4
            elif op == 0x74:  # TUPLE
                t = tup(stack)
                spent += _W_TUPLE + _W_SLOT * len(t)
                stack = metastack.pop()
                stack.append(t)
            elif op == 0x85:  # TUPLE1
                stack[-1] = tup((stack[-1],))
                spent += _W_TUPLE + 24
            elif op == 0x86:  # TUPLE2
                b2 = stack.pop()
                stack[-1] = tup((stack[-1], b2))
                spent += _W_TUPLE + 24
            elif op == 0x87:  # TUPLE3
                c3 = stack.pop()
                b3 = stack.pop()
                stack[-1] = tup((stack[-1], b3, c3))
                spent += _W_TUPLE + 24
            elif op == 0x29:  # EMPTY_TUPLE
                stack.append(tup(()))
            elif op == 0x52:  # REDUCE
                args = stack.pop()
                stack[-1] = self.call(stack[-1], args)
                spent += _W_CALL
            elif op == 0x51:  # BINPERSID
                stack[-1] = self.persistent(stack[-1])
            elif op == 0x7D:  # EMPTY_DICT
                stack.append({})
                spent += _W_DICT
                made += 1
                if made > MAX_CONTAINERS:
                    raise _Refused(f"more than {MAX_CONTAINERS} lists, dicts and sets")
            elif op == 0x5D:  # EMPTY_LIST
                stack.append([])
                spent += _W_LIST
                made += 1
                if made > MAX_CONTAINERS:
                    raise _Refused(f"more than {MAX_CONTAINERS} lists, dicts and sets")
            elif op == 0x75:  # SETITEMS
                items = pop_mark()
                target = stack[-1]
                spent += _W_ENTRY // 2 * len(items)
                if len(items) % 2:
                    raise _Refused("SETITEMS with an odd number of items")
                if isinstance(target, dict):
                    for i in range(0, len(items), 2):
                        self.setkey(target, items[i], items[i + 1])
                elif isinstance(target, Placeholder):
                    for i in range(0, len(items), 2):
                        self.setkey(target.wdist_items, items[i], items[i + 1])
                else:
                    raise _Refused(f"SETITEMS applied to a {type(target).__name__}")
            elif op == 0x73:  # SETITEM
                v = stack.pop()
                k2 = stack.pop()
                target = stack[-1]
                spent += _W_ENTRY
                if isinstance(target, dict):
                    self.setkey(target, k2, v)
                elif isinstance(target, Placeholder):
                    self.setkey(target.wdist_items, k2, v)
                else:
                    raise _Refused(f"SETITEM applied to a {type(target).__name__}")
            elif op == 0x89:  # NEWFALSE
                stack.append(False)
            elif op == 0x88:  # NEWTRUE
                stack.append(True)
            elif op == 0x4E:  # NONE
                stack.append(None)
            elif op == 0x72:  # LONG_BINPUT
                memo_put(unpack("<I", data, pos)[0])
                spent += _W_MEMO
                pos += 4
            elif op == 0x6A:  # LONG_BINGET
                stack.append(memo[unpack("<I", data, pos)[0]])
                pos += 4
            elif op == 0x63:  # GLOBAL
                module = line().decode("utf-8", "surrogatepass")
                name = line().decode("utf-8", "surrogatepass")
                stack.append(self.find_class(module, name))
            elif op == 0x93:  # STACK_GLOBAL
                name = stack.pop()
                stack[-1] = self.find_class(stack[-1], name)
            elif op == 0x61:  # APPEND
                v = stack.pop()
                target = stack[-1]
                spent += _W_SLOT
                if type(target) is list:
                    target.append(v)
                elif isinstance(target, Placeholder):
                    target.wdist_list.append(v)
                else:
                    raise _Refused(f"APPEND applied to a {type(target).__name__}")
            elif op == 0x65:  # APPENDS
                items = pop_mark()
                target = stack[-1]
                spent += _W_SLOT * len(items)
                if type(target) is list:
                    target.extend(items)
                elif isinstance(target, Placeholder):
                    target.wdist_list.extend(items)
                else:
                    raise _Refused(f"APPENDS applied to a {type(target).__name__}")
            elif op == 0x62:  # BUILD
                state = stack.pop()
                self.build(stack[-1], state)
            elif op == 0x47:  # BINFLOAT
                stack.append(unpack(">d", data, pos)[0])
                pos += 8
            elif op == 0x8A:  # LONG1
                k = data[pos]
                pos += 1
                stack.append(big_int(payload(k, False)))
            elif op == 0x8B:  # LONG4
                k = unpack("<i", data, pos)[0]
                pos += 4
                if k > MAX_INT_BYTES:
                    raise _Refused(f"integer of {k} bytes")
                stack.append(big_int(payload(k, False)))
            elif op == 0x43:  # SHORT_BINBYTES
                k = data[pos]
                pos += 1
                stack.append(payload(k, False))
                spent += _W_STR
            elif op == 0x42:  # BINBYTES
                k = unpack("<I", data, pos)[0]
                pos += 4
                stack.append(payload(k, True))
                spent += _W_STR
            elif op == 0x8E or op == 0x96:  # BINBYTES8, BYTEARRAY8
                k = unpack("<Q", data, pos)[0]
                pos += 8
                stack.append(payload(k, True))
                spent += _W_STR
            elif op == 0x8D:  # BINUNICODE8
                k = unpack("<Q", data, pos)[0]
                pos += 8
                stack.append(str(payload(k, False), "utf-8", "surrogatepass"))
                spent += _W_STR
            elif op == 0x55:  # SHORT_BINSTRING (py2 str)
                k = data[pos]
                pos += 1
                stack.append(_py2str(payload(k, False)))
                spent += _W_STR
            elif op == 0x54:  # BINSTRING (py2 str)
                k = unpack("<i", data, pos)[0]
                pos += 4
                s = payload(k, True)
                stack.append(s if isinstance(s, FileBytes) else _py2str(s))
                spent += _W_STR
            elif op == 0x95:  # FRAME: framing is only a hint to buffered readers
                pos += 8
            elif op == 0x80:  # PROTO
                if data[pos] > 5:
                    raise _Refused(f"unsupported pickle protocol {data[pos]}")
                pos += 1
            elif op == 0x2E:  # STOP
                if len(stack) != 1 or metastack:
                    raise _Refused("pickle stack is damaged at STOP")
                src.pos = pos
                self.built = (made, spent)
                return stack[0]
            elif op == 0x30:  # POP
                if stack:
                    stack.pop()
                else:
                    pop_mark()
            elif op == 0x31:  # POP_MARK
                pop_mark()
            elif op == 0x32:  # DUP
                stack.append(stack[-1])
            elif op == 0x64:  # DICT
                items = pop_mark()
                d2: dict = {}
                if len(items) % 2:
                    raise _Refused("DICT with an odd number of items")
                for i in range(0, len(items), 2):
                    self.setkey(d2, items[i], items[i + 1])
                stack.append(d2)
                spent += _W_DICT + _W_ENTRY // 2 * len(items)
                made += 1
                if made > MAX_CONTAINERS:
                    raise _Refused(f"more than {MAX_CONTAINERS} lists, dicts and sets")
            elif op == 0x6C:  # LIST
                items = pop_mark()  # before `stack` is read: pop_mark rebinds it
                stack.append(items)
                spent += _W_SLOT * len(stack[-1])
                made += 1
                if made > MAX_CONTAINERS:
                    raise _Refused(f"more than {MAX_CONTAINERS} lists, dicts and sets")
            elif op == 0x81:  # NEWOBJ
                args = stack.pop()
                stack[-1] = self.call(stack[-1], args)
                spent += _W_CALL
            elif op == 0x92:  # NEWOBJ_EX
                kw = stack.pop()
                args = stack.pop()
                stack[-1] = self.call(stack[-1], args, kw if isinstance(kw, dict) and kw else None)
                spent += _W_CALL
            elif op == 0x6F:  # OBJ
                items = pop_mark()
                if not items:
                    raise _Refused("OBJ without a class")
                stack.append(self.call(items[0], tup(items[1:])))
                spent += _W_CALL + _W_TUPLE + _W_SLOT * len(items)
            elif op == 0x69:  # INST
                module = line().decode("utf-8", "surrogatepass")
                name = line().decode("utf-8", "surrogatepass")
                cls = self.find_class(module, name)
                items = pop_mark()
                stack.append(self.call(cls, tup(items)))
                spent += _W_CALL + _W_TUPLE
            elif op == 0x8F:  # EMPTY_SET
                stack.append([])
                spent += _W_LIST
                made += 1
                if made > MAX_CONTAINERS:
                    raise _Refused(f"more than {MAX_CONTAINERS} lists, dicts and sets")
            elif op == 0x90:  # ADDITEMS
                items = pop_mark()
                target = stack[-1]
                if type(target) is not list:
                    raise _Refused(f"ADDITEMS applied to a {type(target).__name__}")
                target.extend(items)
                spent += _W_SLOT * len(items)
            elif op == 0x91:  # FROZENSET
                items = pop_mark()
                stack.append(tup(items))
                spent += _W_TUPLE + _W_SLOT * len(stack[-1])
            elif op == 0x4C or op == 0x49:  # LONG, INT (text)
                stack.append(int_line(line()))
            elif op == 0x46:  # FLOAT (text)
                stack.append(float(line()))
            elif op == 0x53:  # STRING (text, quoted py2 str)
                s = line()
                if len(s) < 2 or s[0] != s[-1] or s[0] not in b"'\"":
                    raise _Refused("STRING opcode is not quoted")
                stack.append(_py2str(__import__("codecs").escape_decode(s[1:-1])[0]))
                spent += _W_STR
            elif op == 0x56:  # UNICODE (text)
                stack.append(str(line(), "raw-unicode-escape"))
                spent += _W_STR
            elif op == 0x70:  # PUT
                memo_put(int(line()))
                spent += _W_MEMO
            elif op == 0x67:  # GET
                stack.append(memo[int(line())])
            elif op == 0x50:  # PERSID (text)
                raise _Refused("text persistent ids are not used by torch")
            elif op in (0x82, 0x83, 0x84):  # EXT1/2/4: the copyreg extension registry
                raise _Refused("pickle uses the extension registry (EXT opcodes)")
            elif op in (0x97, 0x98):  # NEXT_BUFFER / READONLY_BUFFER: out-of-band buffers
                raise _Refused("pickle uses out-of-band buffers")
            else:
                raise _Refused(f"unknown opcode 0x{op:02x}")


class _Py2Str(str):
    """A py2 `str` (bytes in py2): text for names, its raw bytes kept for numpy's array data."""

    raw: bytes


def _py2str(b: bytes) -> str:
    try:
        s = _Py2Str(b.decode("utf-8"))
    except UnicodeDecodeError:
        s = _Py2Str(b.decode("latin1"))
    s.raw = b
    return s


def _children(obj: Any) -> Any:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield v
    elif isinstance(obj, (list, tuple)):
        yield from obj
    elif isinstance(obj, Placeholder):
        yield obj.wdist_args
        yield obj.wdist_state
        yield obj.wdist_items
        yield obj.wdist_list


_CONTAINERS = (dict, list, tuple, Placeholder)


def measure(root: Any, max_nodes: int = MAX_GRAPH, max_depth: int = MAX_DEPTH) -> tuple[int, int]:
    """Element count with memo sharing expanded, and nesting depth, of an unpickled graph, in one
    iterative pass over its distinct containers (a cycle's back edge counts once). Raises _Refused."""
    if not isinstance(root, _CONTAINERS):
        return 1, 0
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    gray: set[int] = set()
    todo: list = [(root, None)]
    while todo:
        obj, kids = todo.pop()
        oid = id(obj)
        if kids is not None:
            s, d = 1, 0
            for c in kids:
                if isinstance(c, _CONTAINERS):
                    s += size.get(id(c), 1)
                    d = max(d, depth.get(id(c), 0))
                else:
                    s += 1
            gray.discard(oid)
            size[oid], depth[oid] = s, d + 1
            if s > max_nodes:
                raise _Refused(f"object graph has more than {max_nodes} elements (memo sharing expanded)")
            if d + 1 > max_depth:
                raise _Refused(f"object graph is nested more than {max_depth} deep")
            continue
        if oid in size or oid in gray:
            continue
        if len(gray) >= max_depth:
            raise _Refused(f"object graph is nested more than {max_depth} deep")
        gray.add(oid)
        ks = list(_children(obj))
        todo.append((obj, ks))
        for c in ks:
            if isinstance(c, _CONTAINERS) and id(c) not in size and id(c) not in gray:
                todo.append((c, None))
    return size[id(root)], depth[id(root)]


def _opcode_limit(path: str) -> int:
    from wdist.loaders import fs

    try:
        on_disk = fs.size(path)
    except (OSError, ValueError, TypeError, WdistError):
        on_disk = 0
    return min(MAX_OPCODES, on_disk + OPCODE_SLACK)


def safe_load(file: Any, path: str, storages: dict[str, StorageRef] | None = None,
              legacy: bool = False, what: str = "pickle") -> UnpickleResult:
    """Run one pickle from `file` (a BytesIO, or a seekable real file positioned at the pickle) and leave
    the file positioned just after it. Every failure is a CorruptCheckpointError naming `path`."""
    storages = {} if storages is None else storages
    file = file if isinstance(file, Bounded) else Bounded(file)
    # The garbage collector is left alone: it is process-wide, and pausing it here would race with other
    # threads doing the same (one could restore "disabled" for good). Costs ~1.6x on 10^5-tensor pickles.
    try:
        src = _Source(file)
        vm = _VM(src, path, what, storages, legacy, _opcode_limit(path))
        obj = vm.run()
        measure(obj)
    except WdistError:
        raise
    except _Refused as e:
        raise CorruptCheckpointError(path, f"{what}: {e}") from None
    except KeyError as e:
        raise CorruptCheckpointError(path, f"{what} is not a readable pickle (memo key {str(e)[:20]} "
                                     "was never stored)") from None
    except (IndexError, struct.error):
        raise CorruptCheckpointError(path, f"{what} is not a readable pickle (stack underflow or "
                                     "truncated opcode)") from None
    except RecursionError:
        raise CorruptCheckpointError(path, f"{what} is nested too deeply") from None
    except MemoryError:
        raise CorruptCheckpointError(path, f"{what} asks for more memory than it could hold") from None
    except Exception as e:  # a malformed stream reaching a conversion (int(), float(), decode)
        raise CorruptCheckpointError(path, f"{what} is not a readable pickle ({type(e).__name__}: "
                                     f"{str(e)[:80]})") from None
    file.seek(src.base + src.pos)
    return UnpickleResult(obj, storages, vm.unsafe, vm.arrays)
