"""Hostile and odd PyTorch zip archives and views: duplicate members, decompression bombs, stride-0 and
overlapping views, work bombs and out-of-range offsets. Each test builds its file with torch.save and/or
by writing the zip records itself, and asserts a bounded outcome (time and memory measured where cheap, in
a subprocess under an address-space limit)."""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import subprocess
import sys
import threading
import time
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from wdist.loaders import open_checkpoint  # noqa: E402
from wdist.loaders.errors import CorruptCheckpointError, UnsupportedFormatError, WdistError  # noqa: E402
from wdist.loaders.fileio import StridedReader, Window, read_zip_member, zip_member_offset, zip_members  # noqa: E402
from wdist.loaders.torch_loader import load_torch_zip  # noqa: E402

# --- building archives -------------------------------------------------------------------------------


def members_of(data: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return [(i.filename, z.read(i)) for i in z.infolist()]


def saved(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def write_zip(path: Path, entries: list[tuple], prefix: bytes = b"") -> None:
    """Zip records written by hand so that names, sizes and methods can lie. Each entry is (name, payload)
    (stored, true sizes) or (name, raw, method, claimed_size, crc)."""
    out = bytearray(prefix)
    central = bytearray()
    for e in entries:
        if len(e) == 2:
            name, raw = e
            method, usize, crc = zipfile.ZIP_STORED, len(raw), zlib.crc32(raw)
        else:
            name, raw, method, usize, crc = e
        nb = name.encode()
        offset = len(out) - len(prefix)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, crc, len(raw), usize, len(nb), 0)
        out += nb + raw
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0, crc, len(raw), usize,
                               len(nb), 0, 0, 0, 0, 0, offset) + nb
    cd_offset = len(out) - len(prefix)
    out += central
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central), cd_offset, 0)
    path.write_bytes(bytes(out))


# --- measuring in a subprocess -----------------------------------------------------------------------

CHILD = r"""
import os, resource, sys, time
from wdist.loaders import open_checkpoint
from wdist.loaders.errors import WdistError
import numpy as np
mode, path, headroom = sys.argv[1], sys.argv[2], int(sys.argv[3])
vm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize:")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + headroom, vm + headroom))
t0 = time.perf_counter()
try:
    with open_checkpoint(path) as ck:
        total, n = 0.0, 0
        if mode == "stream":
            for ref in ck.tensors:
                for _, chunk in ref.chunks():
                    total += float(chunk.sum(dtype=np.float64))
                    n += chunk.size
        elif mode == "step":  # all tensors chunk by chunk in step, as diff reads a pair
            for chunks in zip(*[ref.chunks() for ref in ck.tensors]):
                for _, chunk in chunks:
                    total += float(chunk.sum(dtype=np.float64))
                    n += chunk.size
        print("OK", len(ck.tensors), n, total)
except WdistError as e:
    print("ERR", type(e).__name__, e)
print("TIME", time.perf_counter() - t0)
"""


def bounded(mode: str, path: Path, headroom_mb: int = 200, timeout: float = 60) -> tuple[str, float]:
    """Open (and for mode 'stream' read every chunk of) a checkpoint in a child process whose address space
    may grow by at most headroom_mb beyond what the imports took; returns (result line, seconds)."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", CHILD, mode, str(path), str(headroom_mb << 20)],
                       capture_output=True, text=True, timeout=timeout, env=env)
    lines = r.stdout.strip().splitlines()
    assert r.returncode == 0 and len(lines) == 2, (r.returncode, r.stdout, r.stderr[-2000:])
    return lines[0], float(lines[1].split()[1])


# --- 1. duplicate members ----------------------------------------------------------------------------


def nan_and_clean() -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    clean = members_of(saved({"w": torch.ones(4, 4)}))
    nan = members_of(saved({"w": torch.full((4, 4), float("nan"))}))
    return clean, nan


def test_duplicate_storage_member_is_refused(tmp_path: Path) -> None:
    clean, nan = nan_and_clean()
    data_name = next(n for n, _ in clean if n.endswith("/data/0"))
    bad = dict(nan)[data_name]
    # the NaN copy first, the clean copy last: which one a reader takes depends on its zip library
    entries = [(n, b) for n, b in clean if n != data_name] + [(data_name, bad), (data_name, dict(clean)[data_name])]
    p = tmp_path / "dup.pt"
    write_zip(p, entries)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert len(zipfile.ZipFile(p).infolist()) == len(clean) + 1
    with pytest.raises(CorruptCheckpointError, match="two members named"):
        open_checkpoint(str(p))


@pytest.mark.parametrize("variant", ["case", "nul"])
def test_names_that_collide_for_torch_are_refused(tmp_path: Path, variant: str) -> None:
    clean, _ = nan_and_clean()
    data_name = next(n for n, _ in clean if n.endswith("/data/0"))
    other = data_name.replace("data/0", "DATA/0") if variant == "case" else data_name + "\x00x"
    p = tmp_path / f"{variant}.pt"
    write_zip(p, [*clean, (other, dict(clean)[data_name])])
    with pytest.raises(CorruptCheckpointError, match="two members named|NUL byte"):
        open_checkpoint(str(p))


def test_members_outside_the_first_members_folder_are_refused_as_by_torch(tmp_path: Path) -> None:
    clean, nan = nan_and_clean()

    def moved(members: list[tuple[str, bytes]], folder: str) -> list[tuple[str, bytes]]:
        return [(folder + n[n.index("/"):], b) for n, b in members]

    # torch takes the record folder from the first member (nan/); another folder's data.pkl comes first
    nan_m, clean_m = moved(nan, "nan"), moved(clean, "clean")
    first = next(e for e in nan_m if not e[0].endswith("data.pkl"))
    p = tmp_path / "two_folders.pt"
    write_zip(p, [first, *clean_m, *[e for e in nan_m if e is not first]])
    with pytest.raises(RuntimeError, match="not in a subdirectory nan/"):
        torch.load(p, weights_only=True)
    with pytest.raises(CorruptCheckpointError, match="outside the archive's folder 'nan/'"):
        open_checkpoint(str(p))


def test_prepended_data_and_big_endian_are_refused(tmp_path: Path) -> None:
    clean, _ = nan_and_clean()
    p = tmp_path / "prefixed.pt"
    write_zip(p, clean, prefix=b"\0" * 64)
    with pytest.raises(WdistError):
        open_checkpoint(str(p))
    with pytest.raises(CorruptCheckpointError, match="data before its first member"):
        load_torch_zip(str(p))  # even when the format is forced
    q = tmp_path / "big.pt"
    write_zip(q, [(n, b"big" if n.endswith("/byteorder") else b) for n, b in clean])
    assert any(n.endswith("/byteorder") for n, _ in clean)
    with pytest.raises(UnsupportedFormatError, match="little-endian"):
        open_checkpoint(str(q))


def test_zip_members_helper(tmp_path: Path) -> None:
    clean, _ = nan_and_clean()
    p = tmp_path / "ok.pt"
    write_zip(p, clean)
    with zipfile.ZipFile(p) as z:
        assert list(zip_members(z, str(p))) == [n for n, _ in clean]


# --- 2. decompression bombs --------------------------------------------------------------------------


def deflate_bomb(gib: float) -> bytes:
    """Raw deflate of gib GiB of zeros, built from one flushed 16 MiB block repeated (about 1000:1)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(b"\0" * (16 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    return block * int(gib * 64) + c.flush(zlib.Z_FINISH)


def test_deflate_bomb_pickle_is_cut_at_its_claimed_size(tmp_path: Path) -> None:
    clean, _ = nan_and_clean()
    bomb = deflate_bomb(3)  # 3 GiB of zeros from ~3 MB
    entries = [e if not e[0].endswith("data.pkl") else (e[0], bomb, zipfile.ZIP_DEFLATED, 1000, 0) for e in clean]
    p = tmp_path / "bomb.pt"
    write_zip(p, entries)
    line, sec = bounded("open", p, headroom_mb=64)
    assert line.startswith("ERR CorruptCheckpointError") and "expands past its claimed size" in line, line
    assert sec < 3


def test_bzip2_bomb_pickle_is_cut_at_its_claimed_size(tmp_path: Path) -> None:
    import bz2

    clean, _ = nan_and_clean()
    bomb = bz2.compress(b"\0" * (96 << 20))  # 96 MiB from ~100 bytes; the child may grow by 48 MiB only
    entries = [e if not e[0].endswith("data.pkl") else (e[0], bomb, zipfile.ZIP_BZIP2, 1000, 0) for e in clean]
    p = tmp_path / "bz.pt"
    write_zip(p, entries)
    line, sec = bounded("open", p, headroom_mb=48)
    assert line.startswith("ERR CorruptCheckpointError") and "expands past its claimed size" in line, line
    assert sec < 3


def test_compressed_pickle_that_tells_the_truth_is_read(tmp_path: Path) -> None:
    src = saved({"w": torch.arange(6.0)})
    p = tmp_path / "deflated.pt"
    with zipfile.ZipFile(io.BytesIO(src)) as z, zipfile.ZipFile(p, "w") as out:
        for i in z.infolist():
            method = zipfile.ZIP_DEFLATED if i.filename.endswith("data.pkl") else zipfile.ZIP_STORED
            out.writestr(i.filename, z.read(i), compress_type=method)
    with open_checkpoint(str(p)) as ck:
        assert ck.tensors[0].read().tolist() == [0, 1, 2, 3, 4, 5]


def test_claimed_sizes_past_the_real_data(tmp_path: Path) -> None:
    clean, _ = nan_and_clean()
    pkl_name, pkl = next(e for e in clean if e[0].endswith("data.pkl"))
    short = zlib.compressobj(9, zlib.DEFLATED, -15)
    raw = short.compress(pkl) + short.flush()
    # deflated data.pkl claiming 4x its real length: decompression ends early, nothing past the member is read
    p = tmp_path / "short.pt"
    write_zip(p, [e if e[0] != pkl_name else (pkl_name, raw, zipfile.ZIP_DEFLATED, 4 * len(pkl), zlib.crc32(pkl))
                  for e in clean])
    with pytest.raises(CorruptCheckpointError, match="truncated"):
        open_checkpoint(str(p))
    # a wrong CRC on an otherwise sound data.pkl
    q = tmp_path / "crc.pt"
    write_zip(q, [e if e[0] != pkl_name else (pkl_name, pkl, zipfile.ZIP_STORED, len(pkl), 1) for e in clean])
    with pytest.raises(CorruptCheckpointError, match="CRC"):
        open_checkpoint(str(q))
    # a storage whose claimed sizes reach past the end of the file
    data_name = next(n for n, _ in clean if n.endswith("/data/0"))
    write_zip(p, clean)
    blob = bytearray(p.read_bytes())
    with zipfile.ZipFile(p) as z:
        info = z.getinfo(data_name)
    cd = blob.find(b"PK\x01\x02")
    while blob[cd + 46: cd + 46 + len(data_name)] != data_name.encode():
        cd = blob.find(b"PK\x01\x02", cd + 4)
    struct.pack_into("<II", blob, cd + 20, info.compress_size + (1 << 20), info.file_size + (1 << 20))
    p.write_bytes(bytes(blob))
    with pytest.raises(CorruptCheckpointError, match="outside the file"):
        open_checkpoint(str(p))


def test_read_zip_member_limit(tmp_path: Path) -> None:
    p = tmp_path / "m.zip"
    write_zip(p, [("a/x", b"hello world")])
    with zipfile.ZipFile(p) as z:
        info = z.getinfo("a/x")
    assert read_zip_member(str(p), info, 100, "x") == b"hello world"
    with pytest.raises(CorruptCheckpointError, match="over the limit"):
        read_zip_member(str(p), info, 5, "x")


# --- 3. strided views --------------------------------------------------------------------------------


def view_zoo() -> dict:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 7, 8, 9, generator=g)
    return {
        "transposed": torch.randn(37, 53, generator=g).t(),
        "permuted": base.permute(2, 0, 3, 1),
        "channels_last": torch.randn(3, 4, 5, 6, generator=g).to(memory_format=torch.channels_last),
        "sliced": base[1:5, ::2, 3:, ::3],
        "expanded": torch.randn(1, 5, generator=g).expand(7, 5),
        "expanded_mid": torch.randn(4, 1, 3, generator=g).expand(4, 6, 3),
        "overlapping": torch.randn(100, generator=g).as_strided((20, 10), (3, 1), 5),
        "sparse": torch.randn(5000, generator=g).as_strided((4, 6), (1000, 7), 11),
        "scalar_expanded": torch.tensor(3.0).expand(3, 4),
        "column": torch.randn(50, 20, generator=g)[:, 3],
        "half_t": torch.randn(30, 40, generator=g).half().t(),
        "bf16_sliced": torch.randn(30, 40, generator=g).bfloat16()[::2, 1::3],
    }


def test_strided_views_read_exactly_in_any_chunking(tmp_path: Path) -> None:
    from wdist.loaders.dtypes import to_float32

    zoo = view_zoo()
    p = tmp_path / "views.pt"
    torch.save(zoo, p)
    rng = np.random.default_rng(1)
    with open_checkpoint(str(p)) as ck:
        assert {t.name for t in ck.tensors} == set(zoo)
        for t in ck.tensors:
            ref = zoo[t.name].float().numpy()
            assert isinstance(t.reader, StridedReader), t.name
            assert np.array_equal(t.read(), ref), t.name
            flat = ref.ravel()
            for _ in range(25):
                a = int(rng.integers(0, t.numel))
                b = int(rng.integers(a, t.numel + 1))
                buf = np.empty((b - a) * t.itemsize + 16, dtype=np.uint8)
                for raw in (t.reader.read_raw(a, b - a), t.reader.read_raw(a, b - a, out=buf)):
                    assert np.array_equal(to_float32(raw, t.dtype), flat[a:b]), (t.name, a, b)
            chunks = [c.copy() for _, c in t.chunks(max_elems=7)]
            assert np.array_equal(np.concatenate(chunks), flat), t.name


def test_strided_reads_from_threads_agree(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(2)
    ts = {f"t{i}": torch.randn(300, 200 + i, generator=g).t() for i in range(4)}
    p = tmp_path / "threads.pt"
    torch.save(ts, p)
    errors: list[str] = []
    with open_checkpoint(str(p)) as ck:
        def work(ref) -> None:  # type: ignore[no-untyped-def]
            want = ts[ref.name].numpy().ravel()
            for _ in range(5):
                got = np.concatenate([c.copy() for _, c in ref.chunks(max_elems=4096)])
                if not np.array_equal(got, want):
                    errors.append(ref.name)
        threads = [threading.Thread(target=work, args=(r,)) for r in ck.tensors for _ in range(2)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    assert errors == []


def test_expanded_view_streams_in_bounded_memory(tmp_path: Path) -> None:
    p = tmp_path / "expand.pt"
    torch.save({"w": torch.ones(1, 1).expand(25000, 10000)}, p)
    assert p.stat().st_size < 4096
    line, sec = bounded("stream", p, headroom_mb=200)
    assert line == f"OK 1 {25000 * 10000} {float(25000 * 10000)}", line
    assert sec < 10


def test_transposed_pair_read_in_step_in_bounded_memory(tmp_path: Path) -> None:
    """diff reads two transposed tensors chunk by chunk in step. The old reader materialised the whole
    tensor (64 MiB each here) and, with one cache entry, rebuilt it for every chunk; now each chunk reads
    only the ranges that cover it, through a few MiB of scratch."""
    g = torch.Generator().manual_seed(3)
    ts = {"a": torch.randn(4096, 4096, generator=g), "b": torch.randn(4096, 4096, generator=g)}
    p = tmp_path / "t.pt"
    torch.save({k: v.t() for k, v in ts.items()}, p)
    want = sum(float(v.sum(dtype=torch.float64)) for v in ts.values())
    line, sec = bounded("step", p, headroom_mb=48)
    ok, n_tensors, n, total = line.split()
    assert (ok, n_tensors, n) == ("OK", "2", str(2 * 4096 * 4096)), line
    assert abs(float(total) - want) < 1e-6 * 4096 * 4096, (total, want)
    assert sec < 10


# --- 4. work bombs from views ------------------------------------------------------------------------


def test_thousands_of_overlapping_views_are_refused(tmp_path: Path) -> None:
    base = torch.randn((1 << 20) + 4000)
    p = tmp_path / "views.pt"
    torch.save({f"v{i}": base[i:i + (1 << 20)] for i in range(4000)}, p)  # 16 GB of work from ~4.5 MB
    t0 = time.perf_counter()
    with pytest.raises(CorruptCheckpointError, match=r"views reach 4,194,304,000 elements .* over the limit of"):
        open_checkpoint(str(p))
    assert time.perf_counter() - t0 < 10


def test_thousands_of_sparse_views_are_refused(tmp_path: Path) -> None:
    """Each view holds 256 elements (1 KiB) spread over the whole 4 MiB storage, so reading it means ~4 MiB
    of reads or 256 preads: 8,000 of them ask for 32 GiB of reads with only 8 MiB of logical data."""
    base = torch.randn((1 << 20) + 8192)
    p = tmp_path / "sparse.pt"
    torch.save({f"v{i}": base.as_strided((256,), (4096,), i) for i in range(8000)}, p)
    t0 = time.perf_counter()
    with pytest.raises(CorruptCheckpointError, match=r"strided views need about [\d,]+ bytes of reads .* over the limit"):
        open_checkpoint(str(p))
    assert time.perf_counter() - t0 < 10
    q = tmp_path / "sparse_few.pt"  # a handful of such views is read, and correctly
    torch.save({f"v{i}": base.as_strided((256,), (4096,), i) for i in range(3)}, q)
    with open_checkpoint(str(q)) as ck:
        assert np.array_equal(ck.tensors[2].read(), base.as_strided((256,), (4096,), 2).numpy())


def test_a_few_views_of_one_storage_are_fine(tmp_path: Path) -> None:
    w = torch.randn(64, 32)
    p = tmp_path / "few.pt"
    torch.save({"w": w, "w_t": w.t(), "half": w[:32], "row": w[5]}, p)
    with open_checkpoint(str(p)) as ck:
        got = {t.name: t.read() for t in ck.tensors}
    assert np.array_equal(got["w_t"], w.t().numpy()) and np.array_equal(got["row"], w[5].numpy())


# --- 5. offsets, strides and sizes out of range --------------------------------------------------------


class _Storage:
    """Pickled as torch's persistent storage id."""

    def __init__(self, numel: int, view: tuple | None = None) -> None:
        self.numel, self.view = numel, view


class _Tensor:
    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple) -> None:
        self.args: tuple = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self) -> tuple:
        return torch._utils._rebuild_tensor_v2, self.args


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: object) -> object:
        if isinstance(obj, _Storage):
            pid = ("storage", torch.FloatStorage, "0", "cpu", obj.numel)
            return pid + (obj.view,) if obj.view is not None else pid
        return None


def dumps(obj: object) -> bytes:
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def zip_with_view(tmp_path: Path, offset: int, size: tuple, stride: tuple, numel: int = 12) -> Path:
    members = members_of(saved({"w": torch.arange(float(numel))}))
    pkl = dumps({"w": _Tensor(_Storage(numel), offset, size, stride)})
    p = tmp_path / "view.pt"
    write_zip(p, [(n, pkl if n.endswith("data.pkl") else b) for n, b in members])
    return p


def test_handwritten_view_agrees_with_torch(tmp_path: Path) -> None:
    p = zip_with_view(tmp_path, 1, (3, 2), (3, 2))
    want = torch.load(p, weights_only=True)["w"]
    assert want.tolist() == [[1, 3], [4, 6], [7, 9]]
    with open_checkpoint(str(p)) as ck:
        assert ck.tensors[0].read().tolist() == want.tolist()


@pytest.mark.parametrize(("offset", "size", "stride"), [
    (-1, (4,), (1,)),  # negative offset
    (0, (4,), (-1,)),  # negative stride
    (3, (4, 3), (3, 1)),  # reaches one row past the storage
    (0, (2, 7), (6, 1)),  # overlapping rows whose last one runs past the end
    (0, (1 << 62,), (0,)),  # a dimension of 2^62
    (0, (-2, 3), (3, 1)),  # a negative dimension
    (0, (1 << 40, 1 << 40), (0, 0)),  # 2^80 elements from stride 0
])
def test_views_out_of_range_are_refused(tmp_path: Path, offset: int, size: tuple, stride: tuple) -> None:
    p = zip_with_view(tmp_path, offset, size, stride)
    t0 = time.perf_counter()
    with pytest.raises(CorruptCheckpointError):
        open_checkpoint(str(p))
    assert time.perf_counter() - t0 < 2


def test_empty_views_are_fine(tmp_path: Path) -> None:
    p = zip_with_view(tmp_path, 12, (0, 5), (5, 1))
    with open_checkpoint(str(p)) as ck:
        assert ck.tensors[0].shape == (0, 5) and ck.tensors[0].read().size == 0


def legacy_with_view(tmp_path: Path, view: tuple, numel: int = 12, size: tuple = (4,)) -> Path:
    """A pre-1.6 torch.save file whose tensor lives in a storage view (root key '0', offset, size)."""
    out = io.BytesIO()
    for obj in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(obj, out, protocol=2)
    out.write(dumps({"w": _Tensor(_Storage(numel, view), 0, size, (1,))}))
    pickle.dump(["0"], out, protocol=2)
    out.write(struct.pack("<q", numel) + np.arange(numel, dtype="<f4").tobytes())
    p = tmp_path / "legacy.pt"
    p.write_bytes(out.getvalue())
    return p


def test_legacy_view_inside_its_storage_is_read(tmp_path: Path) -> None:
    with open_checkpoint(str(legacy_with_view(tmp_path, ("0v", 3, 5)))) as ck:
        assert ck.tensors[0].read().tolist() == [3, 4, 5, 6]


@pytest.mark.parametrize(("view", "size"), [
    (("0v", -2, 5), (4,)),  # negative view offset
    (("0v", 10, 5), (4,)),  # view window past the root storage
    (("0v", 3, 3), (4,)),  # tensor longer than its view
])
def test_legacy_views_out_of_range_are_refused(tmp_path: Path, view: tuple, size: tuple) -> None:
    with pytest.raises(CorruptCheckpointError):
        open_checkpoint(str(legacy_with_view(tmp_path, view, size=size)))


# --- 6. Window and zip_member_offset for stored members of other archives -------------------------------


def test_window_reads_a_stored_member_in_place(tmp_path: Path) -> None:
    p = tmp_path / "a.keras"
    payload = bytes(range(256)) * 40
    with zipfile.ZipFile(p, "w", zipfile.ZIP_STORED) as z:
        z.writestr("config.json", "{}")
        z.writestr("model.weights.h5", payload)
    with zipfile.ZipFile(p) as z:
        info = zip_members(z, str(p))["model.weights.h5"]
    start = zip_member_offset(str(p), info.header_offset, info.compress_size)
    w = Window(str(p), start, info.compress_size)
    try:
        assert w.read() == payload
        w.seek(-10, 2)
        assert w.read(100) == payload[-10:]
    finally:
        w.close()
    with pytest.raises(CorruptCheckpointError):
        zip_member_offset(str(p), info.header_offset, p.stat().st_size)


def test_local_header_naming_another_member_is_refused(tmp_path: Path) -> None:
    """A storage whose local header carries another name than the central directory: a reader walking local
    headers and one using the directory would take different bytes for the same tensor."""
    p = tmp_path / "m.pt"
    torch.save({"w": torch.arange(16, dtype=torch.float32)}, p)
    data = bytearray(p.read_bytes())
    with zipfile.ZipFile(p) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("/data/0"))
    at = info.header_offset + 30 + len(info.filename) - 1
    assert data[at:at + 1] == b"0"
    data[at:at + 1] = b"7"
    q = tmp_path / "bad.pt"
    q.write_bytes(bytes(data))
    with zipfile.ZipFile(q) as z, pytest.raises(zipfile.BadZipFile, match="differ"):
        z.read(info.filename)  # Python's zipfile refuses it too
    with pytest.raises(CorruptCheckpointError, match="local header names another file"):
        open_checkpoint(str(q))
    assert open_checkpoint(str(p)).tensors[0].read().tolist() == list(range(16))


def test_zip_directories_are_bounded_before_they_are_listed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """zipfile builds a ZipInfo per directory record before anything can count them (1M records of one
    51 MB directory: 554 MB and 14 s before the .npz member limit refused them): an archive claiming more
    members than MAX_ZIP_MEMBERS, or a directory far larger than its claimed count needs, is refused from
    its end record, for every zip format (.npz and .pt here) and the zip sniffing of unknown archives."""
    import torch

    from wdist.loaders import fileio

    np.savez(tmp_path / "a.npz", **{f"a{i}": np.ones(2, np.float32) for i in range(12)})
    torch.save({f"w{i}": torch.ones(2) for i in range(12)}, tmp_path / "a.pt")
    for f in ("a.npz", "a.pt"):
        open_checkpoint(str(tmp_path / f)).close()  # within the bound
    monkeypatch.setattr(fileio, "MAX_ZIP_MEMBERS", 10)
    for f in ("a.npz", "a.pt"):
        with pytest.raises(CorruptCheckpointError, match="claims 1[2-9] members, more than the 10"):
            open_checkpoint(str(tmp_path / f))
    monkeypatch.setattr(fileio, "MAX_ZIP_MEMBERS", 1 << 19)
    monkeypatch.setattr(fileio, "_CD_SLACK", 0)
    raw = bytearray((tmp_path / "a.npz").read_bytes())
    end = raw.rfind(b"PK\x05\x06")
    raw[end + 8:end + 12] = struct.pack("<HH", 0, 0)  # claims no member: its directory is far too big for that
    (tmp_path / "lie.npz").write_bytes(bytes(raw))
    with pytest.raises(CorruptCheckpointError, match="zip directory of [0-9,]+ bytes for 0 members"):
        open_checkpoint(str(tmp_path / "lie.npz"))
