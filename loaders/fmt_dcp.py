"""PyTorch Distributed Checkpoint (DCP): a folder with `.metadata` and `__R_N.distcp` files as written by
`torch.distributed.checkpoint.save` (FSDP, DTensor, plain state dicts).

`.metadata` is a pickle of `Metadata(state_dict_metadata, storage_data, ...)`; it is read with wdist's
restricted unpickler, so the DCP classes arrive as recording placeholders whose state is interpreted here
(torch.distributed is never imported). With the default `SerializationFormat.TORCH_SAVE` (torch 2.13) every
item in a `.distcp` file is a complete `torch.save` zip of one tensor chunk at `_StorageInfo.offset`, of
`_StorageInfo.length` bytes; its data.pkl is unpickled safely and the stored tensor bytes are then read in
place. A logical tensor is assembled from its chunks (ChunkStorageMetadata offsets/sizes) on every read."""

from __future__ import annotations

import bisect
import io
import math
import os
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from wdist.loaders.dtypes import storage_dtype
from wdist.loaders.errors import CorruptCheckpointError, UnsupportedFormatError, WdistError
from wdist.loaders.fileio import (
    ZIP_ERRORS,
    RangeReader,
    StridedReader,
    Window,
    check_zip_directory,
    file_size,
    shared_span,
    zip_members,
)
from wdist.loaders.fs import inside_model_folder
from wdist.loaders.model import Checkpoint, Role, TensorRef, dtype_itemsize
from wdist.loaders.plugin import FormatPlugin
from wdist.loaders.roles import default_unit_axis, fix_norm_biases, infer_role, split_name

NAME = "torch-dcp"
META_FILE = ".metadata"
MAX_METADATA = 1 << 30
MAX_ITEM_PICKLE = 1 << 20  # data.pkl of one tensor item is a few hundred bytes
MAX_BYTES_ITEM = 1 << 16  # non-tensor items (step counters, ...) read for metadata only up to this size
MAX_DIMS = 64
# Chunks are checked for overlap exactly on the grid their edges cut the tensor into (see overlap): a real
# layout makes about one cell per chunk; one cutting a tensor into more cells than this is refused.
MAX_GRID_CELLS = 1 << 24
_KNOWN = "torch.distributed.checkpoint."
OPTIMIZER_PREFIXES = ("optim", "optimizer", "optimizer_state", "optim_state", "opt")


def _state(obj: Any) -> dict:
    """Field dict of a placeholder built from a dataclass (plain, slotted or with __setstate__)."""
    from wdist.loaders.safe_pickle import Placeholder  # the pickle VM is imported only to read DCP
    if not isinstance(obj, Placeholder):
        return {}
    st = obj.wdist_state
    if isinstance(st, tuple) and len(st) == 2 and (st[0] is None or isinstance(st[0], dict)) and isinstance(st[1], dict):
        return {**(st[0] or {}), **st[1]}
    return st if isinstance(st, dict) else {}


def _ints(v: Any, what: str, path: str) -> tuple[int, ...]:
    if not isinstance(v, (tuple, list)) or len(v) > MAX_DIMS or \
            not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in v):
        raise CorruptCheckpointError(path, f"{what} is not a list of non-negative integers")
    return tuple(v)


@dataclass
class Chunk:
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    reader: RangeReader | StridedReader  # a permuted (transposed) stored tensor reads strided
    run_dim: int = 0
    run_len: int = 0
    nruns: int = 1


@dataclass
class ChunkedReader:
    """A logical tensor tiled by chunks; each read gathers the requested C-order element range from the
    chunks it touches. A chunk is a set of equally long runs that are contiguous both in the chunk's own
    bytes and in the full tensor (the trailing dims it spans completely), so one pread per chunk and one
    vectorised scatter suffice."""

    path: str
    shape: tuple[int, ...]
    dtype: str
    chunks: list[Chunk]

    @property
    def whole_pass(self) -> bool:
        """A chunk whose reader checks a checksum over one in-order pass (TensorFlow slices) makes the whole
        tensor one task: split across workers, no worker would read the chunk from its start to its end."""
        return any(getattr(ch.reader, "whole_pass", False) for ch in self.chunks)

    def _run_start(self, ch: Chunk, r: int) -> int:
        """Full-tensor flat offset of run r of a chunk."""
        pos, rem = 0, r
        strides = _strides(self.shape)
        for d in range(ch.run_dim - 1, -1, -1):
            rem, m = divmod(rem, ch.sizes[d])
            pos += (ch.offsets[d] + m) * strides[d]
        return pos + ch.offsets[ch.run_dim] * strides[ch.run_dim]

    def read_raw(self, start: int, count: int) -> np.ndarray:
        dt = storage_dtype(self.dtype)
        out = np.empty(count, dtype=dt)  # the chunks tile the shape (checked at load): every value is written
        a, b = start, start + count
        strides = _strides(self.shape)
        for ch in self.chunks:
            if ch.nruns == 0 or ch.run_len == 0:
                continue
            starts = _Starts(self, ch)
            r_lo = bisect.bisect_right(starts, a - ch.run_len)  # first run ending after a
            r_hi = bisect.bisect_left(starts, b)  # first run starting at or after b
            if r_lo >= r_hi:
                continue
            fs_lo, fs_hi = self._run_start(ch, r_lo), self._run_start(ch, r_hi - 1)
            ls = r_lo * ch.run_len + max(0, a - fs_lo)
            le = (r_hi - 1) * ch.run_len + min(ch.run_len, b - fs_hi)
            data = ch.reader.read_raw(ls, le - ls)
            if r_hi - r_lo == 1:
                dst = fs_lo + (ls - r_lo * ch.run_len) - a
                out[dst:dst + data.size] = data
                continue
            lp = np.arange(ls, le, dtype=np.int64)
            r, within = np.divmod(lp, ch.run_len)
            full = np.full(r.shape, ch.offsets[ch.run_dim] * strides[ch.run_dim], dtype=np.int64)
            if ch.run_dim:
                idx = np.unravel_index(r, ch.sizes[:ch.run_dim])
                for d in range(ch.run_dim):
                    full += (idx[d] + ch.offsets[d]) * strides[d]
            out[full + within - a] = data
        return out


class _Starts:
    """Lazy sequence of a chunk's run start offsets, for bisect (they increase with the run index)."""

    def __init__(self, reader: ChunkedReader, ch: Chunk) -> None:
        self.reader, self.ch = reader, ch

    def __len__(self) -> int:
        return self.ch.nruns

    def __getitem__(self, r: int) -> int:
        return self.reader._run_start(self.ch, r)


def _strides(shape: tuple[int, ...]) -> list[int]:
    out, acc = [0] * len(shape), 1
    for d in range(len(shape) - 1, -1, -1):
        out[d] = acc
        acc *= shape[d]
    return out


def layout(ch: Chunk, shape: tuple[int, ...]) -> None:
    nd = len(shape)
    if nd == 0:
        ch.run_dim, ch.run_len, ch.nruns = 0, 1, 1
        return
    j = 0
    for d in range(nd - 1, -1, -1):
        if ch.sizes[d] != shape[d]:
            j = d
            break
    inner = 1
    for d in range(j + 1, nd):
        inner *= shape[d]
    n = 1
    for d in range(j):
        n *= ch.sizes[d]
    ch.run_dim, ch.run_len, ch.nruns = j, ch.sizes[j] * inner, n if ch.sizes[j] * inner else 0


def overlap(chunks: list[Chunk], shape: tuple[int, ...]) -> str | None:
    """Why chunks (each inside `shape`) are not pairwise disjoint, or None when they are: exact for any
    number of chunks. Every chunk edge cuts its axis; the cuts divide the tensor into a grid of cells, each
    chunk covers a box of whole cells, and two chunks overlap exactly when a cell is covered twice. Each
    box is marked once, so the work is the number of cells (at most MAX_GRID_CELLS, one byte each)."""
    if len(chunks) <= 1 or not shape or math.prod(shape) == 0:
        return None
    cuts = [sorted({0, d, *(c.offsets[a] for c in chunks), *(c.offsets[a] + c.sizes[a] for c in chunks)})
            for a, d in enumerate(shape)]
    cells = math.prod(len(p) - 1 for p in cuts)
    if cells > MAX_GRID_CELLS:
        return (f"its {len(chunks):,} chunks cut it into {cells:,} cells, more than the {MAX_GRID_CELLS:,} wdist "
                "checks for overlap")
    at = [{v: i for i, v in enumerate(p)} for p in cuts]
    grid = np.zeros([len(p) - 1 for p in cuts], dtype=np.bool_)
    for c in chunks:
        if 0 in c.sizes:
            continue
        box = grid[tuple(slice(at[a][o], at[a][o + n]) for a, (o, n) in enumerate(zip(c.offsets, c.sizes)))]
        if box.any():
            return f"chunks overlap (the chunk at {list(c.offsets)} among them)"
        box[...] = True
    return None


def _item(path: str, fp: str, fsize: int, offset: int, length: int, what: str,
          parsed: dict[bytes, Any] | None = None) -> tuple[Any, zipfile.ZipFile, Window]:
    """Open the torch.save zip stored at [offset, offset+length) of a .distcp file and unpickle data.pkl.
    `parsed` (one load's own dict) maps data.pkl bytes already run to their result: every chunk of the
    same dtype, shape and layout pickles to the same bytes, so a checkpoint of 10^4 such chunks runs the
    pickle VM once per distinct layout instead of 10^4 times."""
    from wdist.loaders.safe_pickle import safe_load  # the pickle VM is imported only to read DCP
    if offset < 0 or length <= 0 or offset + length > fsize:
        raise CorruptCheckpointError(path, f"{what}: byte range {offset}+{length} lies outside {os.path.basename(fp)}")
    win = Window(fp, offset, length)
    try:
        check_zip_directory(win, path)
        zf = zipfile.ZipFile(win)  # type: ignore[arg-type]
        # the checks of every torch zip: two members named data/0, say, would be read by wdist and by
        # torch.load from different bytes
        infos = list(zip_members(zf, path).values())
        pkl = [i for i in infos if i.filename.endswith("data.pkl") and i.filename.count("/") <= 1]
        if not pkl:
            raise CorruptCheckpointError(path, f"{what}: stored item is not a torch.save archive (no data.pkl)")
        info = min(pkl, key=lambda i: i.filename.count("/"))
        if info.file_size > MAX_ITEM_PICKLE:
            raise CorruptCheckpointError(path, f"{what}: data.pkl is implausibly large")
        blob = zf.read(info)
    except WdistError:
        win.close()
        raise
    except ZIP_ERRORS as e:
        win.close()
        raise CorruptCheckpointError(path, f"{what}: stored torch.save archive is damaged ({str(e)[:80]})") from None
    res = parsed.get(blob) if parsed is not None else None
    if res is None:
        try:
            res = safe_load(io.BytesIO(blob), path, what=f"{what} data.pkl")
        except BaseException:
            zf.close()
            win.close()
            raise
        if parsed is not None:
            parsed[blob] = res
    return (res, info.filename[: -len("data.pkl")]), zf, win


def _permuted_contiguous(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """Whether a view is a contiguous buffer read in another dimension order (a saved `.t()` or
    `.permute()`: DCP writes such a tensor with its strides as they are): every element of the buffer once,
    no overlap, no broadcast."""
    expect = 1
    for s, d in sorted((s, d) for d, s in zip(shape, stride) if d != 1):
        if s != expect:
            return False
        expect *= d
    return True


def _tensor_item(path: str, fp: str, fsize: int, offset: int, length: int, dtype: str,
                 sizes: tuple[int, ...], what: str, parsed: dict[bytes, Any] | None = None
                 ) -> RangeReader | StridedReader:
    from wdist.loaders.safe_pickle import PickledTensor  # the pickle VM is imported only to read DCP
    (res, prefix), zf, win = _item(path, fp, fsize, offset, length, what, parsed)
    try:
        pt = res.obj
        if not isinstance(pt, PickledTensor):
            raise CorruptCheckpointError(path, f"{what}: stored item is not a tensor")
        if pt.dtype != dtype:
            raise CorruptCheckpointError(path, f"{what}: stored dtype {pt.dtype} differs from the metadata's {dtype}")
        if pt.shape != sizes:
            raise CorruptCheckpointError(path, f"{what}: stored shape {list(pt.shape)} differs from the chunk's {list(sizes)}")
        contiguous = pt.is_contiguous()
        if pt.offset < 0 or not (contiguous or _permuted_contiguous(pt.shape, pt.stride)):
            raise CorruptCheckpointError(path, f"{what}: stored tensor is not contiguous (nor a permuted "
                                               "contiguous buffer)")
        try:
            m = zf.getinfo(f"{prefix}data/{pt.storage.key}")
        except KeyError:
            raise CorruptCheckpointError(path, f"{what}: storage {pt.storage.key!r} is missing from the item") from None
        if m.compress_type != zipfile.ZIP_STORED:
            raise CorruptCheckpointError(path, f"{what}: storage is compressed")
        item = dtype_itemsize(dtype)
        need = (pt.offset + math.prod(sizes)) * item
        if m.file_size < need:
            raise CorruptCheckpointError(path, f"{what}: storage holds {m.file_size} bytes, fewer than {need}")
        hdr_at = offset + m.header_offset
        if m.header_offset < 0 or hdr_at + 30 > offset + length:
            raise CorruptCheckpointError(path, f"{what}: zip member points outside the item")
        with open(fp, "rb") as f:
            f.seek(hdr_at)
            hdr = f.read(30)
        if len(hdr) != 30 or hdr[:4] != b"PK\x03\x04":
            raise CorruptCheckpointError(path, f"{what}: zip local header is damaged")
        start = hdr_at + 30 + int.from_bytes(hdr[26:28], "little") + int.from_bytes(hdr[28:30], "little")
        if start + need > offset + length:
            raise CorruptCheckpointError(path, f"{what}: tensor data runs past the item's byte range")
        if contiguous:
            return RangeReader(fp, start + pt.offset * item, dtype)
        return StridedReader(fp, start + pt.offset * item, dtype, tuple(sizes), tuple(pt.stride))
    finally:
        zf.close()
        win.close()


def _scalar_item(path: str, fp: str, fsize: int, offset: int, length: int, what: str) -> Any:
    if length > MAX_BYTES_ITEM:
        return None
    try:
        (res, _prefix), zf, win = _item(path, fp, fsize, offset, length, what)
    except WdistError:
        return None  # metadata only: a damaged counter must not hide the tensors
    zf.close()
    win.close()
    v = res.obj
    return v if isinstance(v, (int, float, str)) and not isinstance(v, bool) else None


def _resolve_dir(path: str) -> str:
    if os.path.isdir(path):
        return path
    if os.path.basename(path) == META_FILE or path.endswith(".distcp"):
        return os.path.dirname(os.path.abspath(path))
    raise UnsupportedFormatError(path, "a distributed checkpoint is a folder holding .metadata and *.distcp files")


def _dtype_of(props: Any, path: str, fqn: str) -> str:
    from wdist.loaders.safe_pickle import Placeholder  # the pickle VM is imported only to read DCP
    if isinstance(props, Placeholder):
        st = props.wdist_state
        if isinstance(st, tuple) and st and isinstance(st[0], str):
            return st[0]  # TensorProperties.__setstate__ form: (dtype, layout, requires_grad, ...)
        d = _state(props).get("dtype")
        if isinstance(d, str):
            return d
    raise CorruptCheckpointError(path, f"tensor {fqn!r}: metadata has no readable dtype")


def load(path: str) -> Checkpoint:
    from wdist.loaders.safe_pickle import Placeholder, safe_load  # the pickle VM is imported only to read DCP
    folder = _resolve_dir(path)
    meta_path = os.path.join(folder, META_FILE)
    if not os.path.isfile(meta_path):
        raise UnsupportedFormatError(path, "folder has no .metadata file: not a distributed checkpoint")
    # found, not named: like the shards it must resolve inside the folder (a symlink to another run's
    # .metadata made this folder's report list that run's tensors); one named explicitly is the user's choice,
    # as for a TensorFlow .index
    if os.path.basename(path) != META_FILE and not inside_model_folder(meta_path, folder):
        raise CorruptCheckpointError(path, f"{META_FILE!r} resolves outside the checkpoint's folder (a symlink "
                                           "out of it is not followed)")
    if file_size(meta_path) > MAX_METADATA:
        raise CorruptCheckpointError(meta_path, ".metadata is implausibly large")
    with open(meta_path, "rb") as mf:
        res = safe_load(mf, meta_path, what=".metadata")
    md = res.obj
    if not (isinstance(md, Placeholder) and md.wdist_global.endswith("checkpoint.metadata.Metadata")):
        raise CorruptCheckpointError(meta_path, ".metadata does not hold a torch.distributed.checkpoint Metadata")
    parsed: dict[bytes, Any] = {}  # data.pkl bytes -> result, for this load only (see _item)
    fields = _state(md)
    sdm, storage = fields.get("state_dict_metadata"), fields.get("storage_data")
    if not isinstance(sdm, dict) or not isinstance(storage, dict):
        raise CorruptCheckpointError(meta_path, ".metadata lacks state_dict_metadata or storage_data")

    # storage_data: MetadataIndex(fqn, offset, index) -> _StorageInfo(relative_path, offset, length)
    where: dict[tuple[str, tuple[int, ...] | None], tuple[str, int, int]] = {}
    for k, v in storage.items():
        ks, vs = _state(k), _state(v)
        fqn, off = ks.get("fqn"), ks.get("offset")
        rel, o, ln = vs.get("relative_path"), vs.get("offset"), vs.get("length")
        if not isinstance(fqn, str) or not isinstance(rel, str) or not isinstance(o, int) or not isinstance(ln, int):
            raise CorruptCheckpointError(meta_path, "storage_data entry is damaged")
        if vs.get("transform_descriptors"):
            raise CorruptCheckpointError(meta_path, f"{fqn!r} is stored with transforms "
                                         f"{vs['transform_descriptors']!r} (e.g. compression), which wdist does not read")
        where[(fqn, None if off is None else _ints(off, f"{fqn!r} offset", meta_path))] = (rel, o, ln)

    sizes_cache: dict[str, int] = {}

    def shard(rel: str) -> tuple[str, int]:
        fp = os.path.normpath(os.path.join(folder, rel))
        if rel.endswith(".safetensors"):
            raise UnsupportedFormatError(meta_path, "DCP folder written with SerializationFormat.SAFETENSORS: "
                                         "not read here (its .safetensors files may be read one by one)")
        if os.path.dirname(fp) != os.path.normpath(folder) or not rel.endswith(".distcp"):
            raise CorruptCheckpointError(meta_path, f"storage file {rel!r} is not a .distcp file of this folder")
        if fp not in sizes_cache:
            if not inside_model_folder(fp, folder):
                raise CorruptCheckpointError(meta_path, f"storage file {rel!r} resolves outside the checkpoint's "
                                                        "folder (a symlink out of it is not followed)")
            if not os.path.isfile(fp):
                raise CorruptCheckpointError(meta_path, f"storage file {rel!r} is missing")
            sizes_cache[fp] = file_size(fp)
        return fp, sizes_cache[fp]

    tensors: list[TensorRef] = []
    meta: dict[str, Any] = {}
    spans: list[tuple[str, int, int, str]] = []  # (file, offset, length, what) of every chunk's stored item
    for fqn, tm in sdm.items():
        if not isinstance(fqn, str) or not isinstance(tm, Placeholder):
            raise CorruptCheckpointError(meta_path, "state_dict_metadata entry is damaged")
        kind = tm.wdist_global.rsplit(".", 1)[-1]
        if kind == "BytesStorageMetadata":
            loc = where.get((fqn, None))
            if loc is not None:
                fp, fs = shard(loc[0])
                v = _scalar_item(meta_path, fp, fs, loc[1], loc[2], f"item {fqn!r}")
                if v is not None:
                    meta[fqn] = v
            continue
        if kind != "TensorStorageMetadata":
            raise CorruptCheckpointError(meta_path, f"{fqn!r}: unknown storage metadata {tm.wdist_global}")
        f = _state(tm)
        dtype = _dtype_of(f.get("properties"), meta_path, fqn)
        try:
            dtype_itemsize(dtype)
        except ValueError:
            raise CorruptCheckpointError(meta_path, f"tensor {fqn!r}: unsupported dtype {dtype!r}") from None
        shape = _ints(f.get("size"), f"tensor {fqn!r} size", meta_path)
        raw_chunks = f.get("chunks")
        if not isinstance(raw_chunks, list) or not raw_chunks:
            raise CorruptCheckpointError(meta_path, f"tensor {fqn!r} has no chunks")
        chunks: list[Chunk] = []
        total = 0
        starts: set[tuple[int, ...]] = set()
        for i, c in enumerate(raw_chunks):
            cs = _state(c)
            offs = _ints(cs.get("offsets"), f"tensor {fqn!r} chunk offsets", meta_path)
            szs = _ints(cs.get("sizes"), f"tensor {fqn!r} chunk sizes", meta_path)
            if len(offs) != len(shape) or len(szs) != len(shape) or \
                    any(o + s > d for o, s, d in zip(offs, szs, shape)):
                raise CorruptCheckpointError(meta_path, f"tensor {fqn!r} chunk {i} lies outside its shape {list(shape)}")
            if offs in starts:  # refused before its item is opened: 10^6 copies of one chunk took 75 s
                raise CorruptCheckpointError(meta_path, f"tensor {fqn!r} has two chunks at {list(offs)}")
            starts.add(offs)
            loc = where.get((fqn, offs))
            if loc is None:
                raise CorruptCheckpointError(meta_path, f"tensor {fqn!r} chunk at {list(offs)} has no storage entry")
            fp, fs = shard(loc[0])
            spans.append((fp, loc[1], loc[2], f"tensor {fqn!r} chunk {list(offs)}"))
            rr = _tensor_item(meta_path, fp, fs, loc[1], loc[2], dtype, szs, f"tensor {fqn!r} chunk {list(offs)}",
                              parsed)
            ch = Chunk(offs, szs, rr)
            layout(ch, shape)
            chunks.append(ch)
            total += math.prod(szs)
        if total != math.prod(shape):
            raise CorruptCheckpointError(meta_path, f"tensor {fqn!r}: chunks hold {total} elements, the shape {math.prod(shape)}")
        why = overlap(chunks, shape)
        if why is not None:
            raise CorruptCheckpointError(meta_path, f"tensor {fqn!r}: {why}")
        reader: Any = chunks[0].reader if len(chunks) == 1 else ChunkedReader(meta_path, shape, dtype, chunks)
        layer, param = split_name(fqn)
        role = Role.OPTIMIZER_STATE if fqn.split(".", 1)[0] in OPTIMIZER_PREFIXES else \
            infer_role(fqn, layer, param, shape, dtype)
        tensors.append(TensorRef(name=fqn, layer=layer, role=role, shape=shape, dtype=dtype, reader=reader,
                                 unit_axis=default_unit_axis(role, len(shape), keras=False),
                                 source=",".join(sorted({os.path.basename(c.reader.path) for c in chunks}))))
    shared = shared_span(spans)
    if shared is not None:
        raise CorruptCheckpointError(meta_path, shared)
    fix_norm_biases(tensors)
    sharded = any(isinstance(t.reader, ChunkedReader) for t in tensors)
    unsafe = [g for g in res.unsafe_globals if not g.startswith(_KNOWN) and g not in _BENIGN]
    ck = Checkpoint(path=path, format=NAME, variant="sharded" if sharded else "single-chunk", tensors=tensors,
                    metadata=meta, sources=sorted(sizes_cache) + [meta_path], unsafe_globals=unsafe)
    if unsafe:
        ck.warnings.append("objects not loaded (they would need code from the file): " + ", ".join(unsafe[:20]))
    return ck


# globals every torch 2.x .metadata names besides the DCP classes; recorded, never imported
_BENIGN = frozenset({"torch.serialization._get_layout", "torch._MEM_FORMAT_ENCODING", "pathlib.PosixPath",
                     "pathlib.WindowsPath", "torch.distributed.checkpoint.metadata.StorageMeta"})


def sniff(head: bytes, path: str) -> bool:
    """`.metadata` names the DCP Metadata class in its first opcodes; a `.distcp` file (a run of torch.save
    zips) is claimed when its folder has the `.metadata` that describes it."""
    if path.endswith(".distcp"):
        return os.path.isfile(os.path.join(os.path.dirname(os.path.abspath(path)), META_FILE))
    return head[:1] == b"\x80" and b"torch.distributed.checkpoint.metadata" in head[:256]


def sniff_dir(path: str) -> bool:
    """A folder is a DCP checkpoint when it holds `.metadata` and at least one `.distcp` file."""
    try:
        if not os.path.isfile(os.path.join(path, META_FILE)):
            return False
        return any(n.endswith(".distcp") for n in os.listdir(path))
    except OSError:
        return False


PLUGIN = FormatPlugin(
    name=NAME, title="PyTorch Distributed Checkpoint (DCP)", extensions=(".distcp",), load=load, sniff_dir=sniff_dir, sniff=sniff,
    variants="torch.distributed.checkpoint.save folders (.metadata + __R_N.distcp, torch-save items): "
             "replicated and sharded tensors assembled from their chunks, FSDP/DTensor state dicts",
    order=35,  # before torch-legacy: .metadata is a pickle too
)
