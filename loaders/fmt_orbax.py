"""Orbax checkpoint folders (`ocp.StandardCheckpointer` / `PyTreeCheckpointer`, JAX / Flax).

The folder holds `_METADATA` (JSON: one entry per pytree leaf with its key path and write shape), and the
arrays as zarr (v2 `.zarray` or zarr3 `zarr.json`, per `use_zarr3`) either inside an OCDBT key-value store
(`manifest.ocdbt`, `d/`, `ocdbt.process_N/`; the default) or as one folder per array (`use_ocdbt: false`).
The arrays are opened with tensorstore (the `orbax` extra) for their metadata only; values are read on
demand, one exact hyperslab per piece of a flat element range, so a read never materialises more than the
requested chunk. The key-value store is always the checkpoint folder itself, never a path from the metadata.
Names join the key path with "/" (`params/Dense_0/kernel`), as the flax msgpack reader does."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wdist.loaders.dtypes import storage_dtype
from wdist.loaders.errors import CorruptCheckpointError, UnsupportedFormatError
from wdist.loaders.fileio import range_boxes as _boxes
from wdist.loaders.fileio import view_work_limit
from wdist.loaders.fmt_flax import FLAX_DTYPES, tree_tensor
from wdist.loaders.model import Checkpoint, Role, TensorRef, dtype_itemsize
from wdist.loaders.plugin import FormatPlugin
from wdist.loaders.roles import fix_norm_biases

NAME = "orbax"
META_FILE = "_METADATA"
CHECKPOINT_META = "_CHECKPOINT_METADATA"
MAX_METADATA = 64 << 20
MAX_LEAVES = 1_000_000
MAX_DIMS = 64
MAX_WALK = 1_000_000  # folder entries checked for symlinks leaving the folder
ARRAY_TYPES = {"jax.Array", "np.ndarray", "scalar"}


def _spec(folder: str, param: str, zarr3: bool, ocdbt: bool) -> dict[str, Any]:
    driver = "zarr3" if zarr3 else "zarr"
    base = "file://" + folder  # the checkpoint folder itself; nothing in the metadata can change it
    if ocdbt:
        return {"driver": driver, "kvstore": {"driver": "ocdbt", "base": base}, "path": param}
    return {"driver": driver, "kvstore": base + "/" + param}


@dataclass
class OrbaxReader:
    """One array of the checkpoint. The tensorstore handle is opened on first use and never pickled, so
    worker processes reopen it."""

    path: str  # the checkpoint folder
    param: str
    zarr3: bool
    ocdbt: bool
    shape: tuple[int, ...]
    dtype: str
    chunk_bytes: int = 0  # decoded bytes of one read chunk (0: unknown)
    _handle: Any = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        st = dict(self.__dict__)
        st["_handle"] = None
        return st

    def close(self) -> None:
        self._handle = None

    def _open(self) -> Any:
        if self._handle is None:
            import tensorstore as ts

            # orbax stores one compressed chunk per array shard unless told otherwise, and every slice read
            # decodes whole stored chunks: without a cache, reading a tensor in pieces decodes it once per
            # piece. Reads run front to back, so the cache holds two chunks (never more than this array),
            # and is dropped after its last element is read.
            nbytes = dtype_itemsize(self.dtype)
            for d in self.shape:
                nbytes *= d
            if self.chunk_bytes:
                nbytes = min(nbytes, 2 * self.chunk_bytes)
            ctx = ts.Context({"cache_pool": {"total_bytes_limit": nbytes + (1 << 20)}})
            self._handle = ts.open(_spec(self.path, self.param, self.zarr3, self.ocdbt), open=True, read=True,
                                   context=ctx).result()
        return self._handle

    def read_raw(self, start: int, count: int) -> np.ndarray:
        arr = self._open()
        want = storage_dtype(self.dtype)
        out = np.empty(count, dtype=want)
        filled = 0
        for box in _boxes(self.shape, start, start + count):
            got = np.asarray(arr[box].read().result()).reshape(-1)
            if got.dtype != want:
                got = got.view(want) if got.dtype.itemsize == want.itemsize else got.astype(want)
            out[filled:filled + got.size] = got
            filled += got.size
        if filled != count:
            raise ValueError(f"read {filled} of {count} values")
        numel = math.prod(self.shape)
        if start + count >= numel:
            self._handle = None  # reads run front to back: the decoded chunks are not needed again
        return out


def _has_arrays(path: str) -> bool:
    if os.path.isfile(os.path.join(path, "manifest.ocdbt")) or os.path.isdir(os.path.join(path, "d")):
        return True
    with os.scandir(path) as it:
        for i, e in enumerate(it):
            if i > 10_000:
                break
            if e.is_dir(follow_symlinks=False) and (os.path.isfile(os.path.join(e.path, ".zarray"))
                                                    or os.path.isfile(os.path.join(e.path, "zarr.json"))):
                return True
    return False


def _is_item(path: str) -> bool:
    return os.path.isfile(os.path.join(path, META_FILE)) and _has_arrays(path)


def _items(path: str) -> list[str]:
    """Item folders of a CheckpointManager step folder (`STEP/_CHECKPOINT_METADATA`, `STEP/default/`)."""
    if os.path.isfile(os.path.join(path, META_FILE)) or not os.path.isfile(os.path.join(path, CHECKPOINT_META)):
        return []
    out = []
    with os.scandir(path) as it:
        for i, e in enumerate(it):
            if i > 10_000:
                break
            if e.is_dir(follow_symlinks=False) and _is_item(e.path):
                out.append(e.name)
    return sorted(out)


def sniff_dir(path: str) -> bool:
    """`_METADATA` next to the array store (`manifest.ocdbt`, `d/`, or per-array zarr folders), or a
    CheckpointManager step folder holding such item folders."""
    try:
        return _is_item(path) or bool(_items(path))
    except OSError:
        return False


def _check_symlinks(root: str) -> int:
    """tensorstore follows symlinks; one that leaves the folder would make it read files outside. Returns
    the bytes the folder's files hold."""
    n = total = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            n += 1
            if n > MAX_WALK:
                raise CorruptCheckpointError(root, f"checkpoint folder holds more than {MAX_WALK} entries")
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                real = os.path.realpath(p)
                if real != root and not real.startswith(root + os.sep):
                    raise CorruptCheckpointError(root, f"{os.path.relpath(p, root)!r} is a symlink to outside "
                                                 "the checkpoint folder")
            elif name in filenames:
                total += os.lstat(p).st_size
    return total


def _read_metadata(root: str) -> dict[str, Any]:
    mp = os.path.join(root, META_FILE)
    try:
        size = os.path.getsize(mp)
        if size > MAX_METADATA:
            raise CorruptCheckpointError(root, f"{META_FILE} is {size} bytes, over the {MAX_METADATA}-byte limit")
        with open(mp, "rb") as f:
            meta = json.loads(f.read(MAX_METADATA + 1).decode("utf-8"))
    except FileNotFoundError:
        raise UnsupportedFormatError(root, f"not an orbax checkpoint folder (no {META_FILE})") from None
    except RecursionError:
        raise CorruptCheckpointError(root, f"{META_FILE} JSON is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptCheckpointError(root, f"{META_FILE} is not valid JSON ({str(e)[:80]})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("tree_metadata"), dict):
        raise CorruptCheckpointError(root, f"{META_FILE} has no tree_metadata object")
    return meta


def _leaf(root: str, key: str, entry: Any) -> tuple[tuple[str, ...], str, tuple[int, ...] | None] | None:
    """(key path, value type, write shape) of one tree_metadata entry; None for leaves with no array."""
    bad = CorruptCheckpointError(root, f"{META_FILE} entry {key[:80]!r} is malformed")
    if not isinstance(entry, dict):
        raise bad
    km, vm = entry.get("key_metadata"), entry.get("value_metadata")
    if not isinstance(km, list) or not km or not isinstance(vm, dict) or len(km) > 1000:
        raise bad
    keys: list[str] = []
    for k in km:
        if not isinstance(k, dict) or not isinstance(k.get("key"), (str, int)) or isinstance(k.get("key"), bool):
            raise bad
        keys.append(str(k["key"]))
    vtype = vm.get("value_type")
    if not isinstance(vtype, str):
        raise bad
    if vtype not in ARRAY_TYPES or vm.get("skip_deserialize") is True:
        return None
    ws = vm.get("write_shape")
    if ws is None:
        return tuple(keys), vtype, None
    if not isinstance(ws, list) or len(ws) > MAX_DIMS or \
            not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in ws):
        raise bad
    return tuple(keys), vtype, tuple(ws)


def _param_name(root: str, keys: tuple[str, ...], ocdbt: bool) -> str:
    param = ".".join(keys)  # orbax's own naming of a leaf's array
    bad = any(c in param for c in "\x00\\") or param.startswith("/") or \
        any(seg in ("", ".", "..") for seg in param.split("/"))
    if not ocdbt:
        bad = bad or "/" in param  # a file path under the folder: one plain folder name only
    if bad:
        raise CorruptCheckpointError(root, f"array name {param[:80]!r} in {META_FILE} is not a plain name")
    return param


def _load_item(path: str, root: str, prefix: tuple[str, ...], tensors: list[TensorRef], metadata: dict[str, Any],
               readers: list[OrbaxReader], stored: int, logical: list[int]) -> str:
    """Appends one item folder's arrays; returns its layout for the variant. `stored`: the checkpoint
    folder's bytes; `logical`: the arrays' bytes so far (all items together)."""
    meta = _read_metadata(root)
    ocdbt = meta.get("use_ocdbt", True)
    zarr3 = meta.get("use_zarr3", False)
    if not isinstance(ocdbt, bool) or not isinstance(zarr3, bool):
        raise CorruptCheckpointError(path, f"{META_FILE} use_ocdbt/use_zarr3 are not booleans")
    tree = meta["tree_metadata"]
    if len(tree) > MAX_LEAVES:
        raise CorruptCheckpointError(path, f"{META_FILE} lists more than {MAX_LEAVES} leaves")
    leaves = [x for k, e in tree.items() if (x := _leaf(path, str(k), e)) is not None]
    import tensorstore as ts

    ctx = ts.Context()  # one shared OCDBT b-tree cache for all the opens
    params = [_param_name(path, keys, ocdbt) for keys, _, _ in leaves]
    futures = [ts.open(_spec(root, p, zarr3, ocdbt), open=True, read=True, context=ctx) for p in params]
    for (keys, vtype, ws), param, fut in zip(leaves, params, futures):
        name = "/".join(prefix + keys)
        try:
            arr = fut.result()
        except Exception as e:
            raise CorruptCheckpointError(path, f"array {param[:80]!r} cannot be opened ({type(e).__name__}: "
                                         f"{str(e)[:100]})") from None
        shape = tuple(int(d) for d in arr.shape)
        dtype = FLAX_DTYPES.get(arr.dtype.name)
        if dtype is None:
            raise CorruptCheckpointError(path, f"array {name!r} has unsupported dtype {arr.dtype.name!r}")
        if ws is not None and tuple(ws) != shape:
            raise CorruptCheckpointError(path, f"array {name!r} is stored as {list(shape)}, {META_FILE} says "
                                         f"{list(ws)}")
        # tensorstore decodes a stored chunk whole: a 1 MB zlib chunk of zeros claiming 1 GiB took 1.1 GB, and
        # nothing else bounded it. A read chunk may decode to at most the logical-size allowance of the
        # folder's bytes (as for strided views); an unstored chunk (fill value) is never decoded whole.
        dims: list[int] = [int(d) if d is not None else 1 for d in (arr.chunk_layout.read_chunk.shape or shape)]
        chunk = dtype_itemsize(dtype) * math.prod(dims)
        if chunk > view_work_limit(stored):
            raise CorruptCheckpointError(path, f"array {name!r} is stored in chunks of {chunk:,} bytes, more than "
                                         f"a {stored:,}-byte checkpoint can hold (limit {view_work_limit(stored):,})")
        logical[0] += dtype_itemsize(dtype) * math.prod(shape)
        if logical[0] > view_work_limit(stored):
            # what a small folder may claim in all (as for strided views elsewhere): 8 zlib chunks of 1 GiB
            # zeros in 8 MB took 26 s and 8.5 GB; zero-filled (unstored) arrays count too, and fit in real
            # checkpoints, whose stored parameters give the allowance
            raise CorruptCheckpointError(path, f"arrays claim {logical[0]:,} bytes in all, more than a "
                                         f"{stored:,}-byte checkpoint can hold (limit {view_work_limit(stored):,})")
        reader = OrbaxReader(root, param, zarr3, ocdbt, shape, dtype, chunk)
        if vtype == "scalar" and len(keys) == 1 and shape == ():
            try:  # a top-level python scalar (the step) is metadata, not a weight
                metadata["/".join(prefix + keys)] = reader.read_raw(0, 1)[0].item()
                continue
            except Exception as e:
                raise CorruptCheckpointError(path, f"scalar {name!r} cannot be read ({type(e).__name__})") from None
        readers.append(reader)
        tensors.append(tree_tensor(keys, name, shape, dtype, reader, os.path.basename(root)))
    return ("OCDBT" if ocdbt else "per-array folders") + (", zarr3" if zarr3 else ", zarr")


def load(path: str) -> Checkpoint:
    from wdist.loaders import fs

    if fs.is_url(path):
        raise UnsupportedFormatError(path, "orbax checkpoints are read from local folders only")
    if not os.path.isdir(path):
        raise UnsupportedFormatError(path, "an orbax checkpoint is a folder (with _METADATA)")
    root = os.path.realpath(path)
    items = [] if os.path.isfile(os.path.join(root, META_FILE)) else _items(root)
    stored = _check_symlinks(root)
    logical = [0]
    tensors: list[TensorRef] = []
    metadata: dict[str, Any] = {}
    readers: list[OrbaxReader] = []
    if not items:
        layouts = [_load_item(path, root, (), tensors, metadata, readers, stored, logical)]
    else:  # a CheckpointManager step: one item keeps plain names, several are told apart by item name
        layouts = [_load_item(path, os.path.join(root, it), (it,) if len(items) > 1 else (), tensors, metadata,
                              readers, stored, logical) for it in items]
        if os.path.basename(root).isdigit() and "step" not in metadata:
            metadata["step"] = int(os.path.basename(root))  # the manager names step folders by the step
    fix_norm_biases(tensors)
    variant = ", ".join(dict.fromkeys(layouts))
    if items:
        variant = f"CheckpointManager step ({', '.join(items)}), " + variant
    if any(t.role is Role.OPTIMIZER_STATE for t in tensors):
        variant = "train-state, " + variant
    return Checkpoint(path=path, format=NAME, variant=variant, tensors=tensors, metadata=metadata, sources=[path],
                      closers=[r.close for r in readers])


PLUGIN = FormatPlugin(
    name=NAME, title="Orbax checkpoint folder (JAX)", extensions=(), load=load, sniff_dir=sniff_dir,
    requires=("tensorstore",), extra="orbax",
    variants="ocp.StandardCheckpointer / PyTreeCheckpointer folders (_METADATA + OCDBT or per-array zarr, "
             "zarr2 and zarr3), CheckpointManager step folders: params, batch_stats, optax opt_state; read "
             "lazily with tensorstore",
    order=40,
)
