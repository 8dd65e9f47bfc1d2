"""The common checkpoint model every loader produces: a Checkpoint with an ordered list of TensorRefs."""

from __future__ import annotations

import enum
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

# Chunks handed to analyzers never exceed this many elements (4 MiB of float32).
DEFAULT_CHUNK = 1 << 20
# The longest tensor name any reader accepts, in bytes of UTF-8 (and characters): real names are under
# 300 bytes (the longest in the Hub's big models are ~120); a hostile 99 MB name would otherwise be matched,
# split into layer and parameter, pooled and printed, each a copy of it.
MAX_NAME = 1 << 16


def bad_names(tensors: Sequence[Any]) -> str | None:
    """The reason to refuse a checkpoint by its tensors' `name`s, or None: one longer than MAX_NAME, or two
    alike (bytes a reader decoded with replacement characters, say: a rule, a diff or a JSON consumer could
    not tell which tensor a name means)."""
    longest = max((len(t.name) for t in tensors), default=0)
    if longest > MAX_NAME:
        return f"a tensor name of {longest:,} characters (wdist reads names of up to {MAX_NAME:,})"
    seen: set[str] = set()
    for t in tensors:
        if t.name in seen:
            return f"two tensors are named {t.name!r}"
        seen.add(t.name)
    return None


class Format:
    """Names of the built-in formats. A checkpoint's `format` is a plain string: the name of the format
    plug-in that read it (see loaders/registry.py), so third-party formats need no edit here."""

    TORCH_ZIP = "torch-zip"
    TORCH_LEGACY = "torch-legacy"
    SAFETENSORS = "safetensors"
    KERAS_H5 = "keras-h5"
    KERAS_ZIP = "keras-zip"


class Role(str, enum.Enum):
    WEIGHT = "weight"
    BIAS = "bias"
    NORM = "norm"
    EMBEDDING = "embedding"
    RUNNING_STAT = "running_stat"
    OPTIMIZER_STATE = "optimizer_state"
    OTHER = "other"


DEFAULT_ROLES = (Role.WEIGHT, Role.BIAS, Role.EMBEDDING, Role.NORM)

FLOAT_DTYPES = frozenset(
    {"float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz",
     "float8_e8m0fnu"}
)


class TensorReader(Protocol):
    """How to fetch one tensor's raw values. Implementations are small picklable dataclasses."""

    def read_raw(self, start: int, count: int) -> np.ndarray:
        """Elements [start, start+count) of the tensor in C order, in the stored numpy dtype.
        Readers may also accept `out=`, a byte buffer to reuse."""
        ...


@dataclass(slots=True)  # no instance dict: a checkpoint may list millions of these
class TensorRef:
    name: str
    layer: str
    role: Role
    shape: tuple[int, ...]
    dtype: str
    reader: TensorReader | None
    unit_axis: int | None = None  # output-unit axis: PyTorch conv/linear 0, Keras kernels -1
    aliases: tuple[str, ...] = ()  # other names of the same data (tied weights); a shared () when none
    source: str = ""
    # Block-quantised or otherwise packed storage (e.g. GGUF "Q4_K"): `dtype` is then the dtype the reader
    # decodes to, `stored_as` the storage type and `stored_nbytes` the bytes the tensor takes in the file.
    stored_as: str | None = None
    stored_nbytes: int | None = None

    def __post_init__(self) -> None:
        # loaders build the file path once per tensor; one shared string instead of a million copies
        if type(self.source) is str:
            self.source = sys.intern(self.source)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def itemsize(self) -> int:
        return dtype_itemsize(self.dtype)

    @property
    def nbytes(self) -> int:
        """Bytes the tensor occupies in the file."""
        return self.stored_nbytes if self.stored_nbytes is not None else self.numel * self.itemsize

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    def chunks(self, max_elems: int = DEFAULT_CHUNK, align: int = 1) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (start, float32 chunk) pairs covering the tensor; chunk lengths are multiples of `align`
        when `align` <= max_elems, so callers can keep whole rows together. A chunk is only valid until the
        next one is requested (its buffer is reused)."""
        from wdist.loaders.dtypes import to_float32

        self._check_real()
        n = self.numel
        step = max_elems
        if 1 < align <= max_elems:
            step = (max_elems // align) * align
        start = 0
        reuse = getattr(self.reader, "reuses_buffer", False)
        buf = np.empty(min(step, n) * self.itemsize, dtype=np.uint8) if reuse else None
        while start < n:
            count = min(step, n - start)
            yield start, to_float32(self._raw(start, count, buf), self.dtype)
            start += count

    def _raw(self, start: int, count: int, buf: np.ndarray | None = None) -> np.ndarray:
        """Raw values; any failure of the underlying file becomes a CorruptCheckpointError naming it."""
        from wdist.loaders.errors import CorruptCheckpointError, WdistError

        assert self.reader is not None
        try:
            raw = self.reader.read_raw(start, count, out=buf) if buf is not None else self.reader.read_raw(start, count)  # type: ignore[call-arg]
        except WdistError:
            raise
        except (OSError, ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:
            path = getattr(self.reader, "path", None) or getattr(getattr(self.reader, "base", None), "path", None)
            raise CorruptCheckpointError(path, f"tensor {self.name!r} cannot be read ({type(e).__name__}: "
                                         f"{str(e)[:80]})") from None
        if raw.size != count:
            raise CorruptCheckpointError(None, f"tensor {self.name!r}: expected {count} values, read {raw.size}")
        return raw

    def read(self) -> np.ndarray:
        """The whole tensor as float32 with its shape (one tensor only; use chunks() for big ones)."""
        from wdist.loaders.dtypes import to_float32

        self._check_real()
        return to_float32(self._raw(0, self.numel), self.dtype).reshape(self.shape)

    def _check_real(self) -> None:
        from wdist.loaders.errors import UnsupportedFormatError

        if self.reader is None:
            raise ValueError(f"{self.name}: tensor has no data reader")
        if self.dtype.startswith("complex"):  # a float32 cast would drop the imaginary part without a word
            raise UnsupportedFormatError(getattr(self.reader, "path", None),
                                         f"tensor {self.name!r} is {self.dtype}: complex values have no float32 "
                                         "form (reader.read_raw gives the stored values)")



@dataclass
class Checkpoint:
    """A lazily read checkpoint. Use it as a context manager (or call close()) to release every file
    handle its readers opened; readers reopen what they need when used again."""

    path: str
    format: str
    variant: str
    tensors: list[TensorRef]
    metadata: dict[str, Any] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    unsafe_globals: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    closers: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def close(self) -> None:
        """Release every handle held by this checkpoint's readers (idempotent)."""
        closers, self.closers = self.closers, []
        for c in closers:
            c()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def parameters(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def step(self) -> int | None:
        """Training step recorded inside the checkpoint, if any (global_step, step, then epoch)."""
        for key in ("global_step", "step", "epoch"):
            v = self.metadata.get(key)
            if isinstance(v, int) and not isinstance(v, bool):
                return v
        return None


_ITEMSIZE = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1,
    "float8_e4m3fnuz": 1, "float8_e5m2fnuz": 1, "float8_e8m0fnu": 1, "int64": 8, "int32": 4, "int16": 2, "int8": 1,
    "uint64": 8, "uint32": 4, "uint16": 2, "uint8": 1, "bool": 1, "complex64": 8, "complex128": 16,
}


def some_names(names: Sequence[str], shown: int = 5, sep: str = ", ") -> str:
    """The first `shown` names for a warning, and how many more (a warning line, not a listing)."""
    more = len(names) - shown
    return sep.join(names[:shown]) + (f" and {more} more" if more > 0 else "")


def dtype_itemsize(dtype: str) -> int:
    try:
        return _ITEMSIZE[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype}") from None
