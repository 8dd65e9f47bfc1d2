"""NumPy .npy / .npz through the format plug-in: files written by numpy itself."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
from cli_helpers import run
from reference import exact_metrics

from wdist.analyzers.inspect import Options, analyse
from wdist.loaders import open_checkpoint
from wdist.loaders.errors import CorruptCheckpointError, UnsupportedFormatError


def _stats(path, chunk=1 << 20):
    rep = analyse(open_checkpoint(str(path)), Options(jobs=1, chunk=chunk))
    return {t.name: t.stats for t in rep.tensors}


@pytest.mark.parametrize("order", ["C", "F"])
def test_npy_in_both_memory_orders(tmp_path, rng, order):
    a = np.asarray(rng.normal(size=(64, 48)).astype(np.float32), order=order)
    a[3] = 0  # a dead output row, which only the right element order finds
    p = tmp_path / "fc.weight.npy"
    np.save(p, a)
    ck = open_checkpoint(str(p))
    assert ck.format == "numpy" and ck.variant == "npy"
    t = ck.tensors[0]
    assert t.shape == (64, 48) and t.dtype == "float32"
    np.testing.assert_array_equal(t.read(), a)
    st = _stats(p, chunk=1000)["fc.weight"]
    ref = exact_metrics(a)
    assert st["dead_units"] == 1 and st["units"] == 64
    assert st["std"] == pytest.approx(ref["std"], rel=2e-6)


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_stored_and_deflated(tmp_path, rng, compressed):
    arrays = {"conv.weight": rng.normal(size=(16, 8, 3, 3)).astype(np.float32),
              "conv.bias": np.zeros(16, np.float32),
              "emb.weight": rng.laplace(size=(300, 40)).astype(np.float16),
              "steps": np.arange(5, dtype=np.int64)}
    p = tmp_path / "model.npz"
    (np.savez_compressed if compressed else np.savez)(p, **arrays)
    ck = open_checkpoint(str(p))
    assert ck.variant == "npz" and sorted(t.name for t in ck.tensors) == sorted(arrays)
    for t in ck.tensors:
        np.testing.assert_array_equal(t.read(), arrays[t.name].astype(np.float32))
    # small chunks walk the deflate stream in many steps
    st = _stats(p, chunk=512)
    for name in ("conv.weight", "emb.weight"):
        ref = exact_metrics(arrays[name])
        assert st[name]["mean"] == pytest.approx(ref["mean"], rel=2e-6, abs=1e-9)
        assert st[name]["kurtosis"] == pytest.approx(ref["kurtosis"], rel=2e-6)


def test_deflated_reads_in_any_order(tmp_path, rng):
    a = rng.normal(size=200_000).astype(np.float32)
    p = tmp_path / "m.npz"
    np.savez_compressed(p, w=a)
    t = open_checkpoint(str(p)).tensors[0]
    for start, count in ((150_000, 1000), (10, 5), (199_990, 10), (0, 200_000)):
        np.testing.assert_array_equal(t.reader.read_raw(start, count), a[start:start + count])


def test_object_and_big_endian_arrays_are_refused(tmp_path):
    p = tmp_path / "obj.npy"
    np.save(p, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(UnsupportedFormatError, match="pickle"):
        open_checkpoint(str(p))
    p = tmp_path / "be.npy"
    np.save(p, np.arange(4, dtype=">f4"))
    with pytest.raises(UnsupportedFormatError, match="big-endian"):
        open_checkpoint(str(p))


def test_truncated_and_lying_files(tmp_path, rng):
    p = tmp_path / "t.npy"
    np.save(p, rng.normal(size=1000).astype(np.float32))
    data = p.read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[:-100])
    with pytest.raises(CorruptCheckpointError, match="needs"):
        open_checkpoint(str(tmp_path / "cut.npy"))
    hdr = data.replace(b"(1000,)", b"(10**12,)".ljust(7)[:7]) if b"(1000,)" in data else data
    (tmp_path / "lie.npy").write_bytes(hdr)
    with pytest.raises(CorruptCheckpointError):
        open_checkpoint(str(tmp_path / "lie.npy"))
    big = data.replace(b"(1000,)", b"(99999999999,)") if b"(1000,)" in data else data
    (tmp_path / "big.npy").write_bytes(big)
    with pytest.raises(CorruptCheckpointError, match="needs"):
        open_checkpoint(str(tmp_path / "big.npy"))


def test_cli_reads_npz(tmp_path, rng):
    p = tmp_path / "m.npz"
    np.savez(p, **{"fc.weight": rng.normal(size=(32, 16)).astype(np.float32)})
    r = run("ls", p)
    assert r.exit_code == 0 and "fc.weight" in r.output
    r = run("inspect", p, "--format", "json")
    assert r.exit_code == 0 and '"format": "numpy"' in r.output
    r = run("ls", p, "--input-format", "numpy")
    assert r.exit_code == 0


# ---- archive integrity: what numpy.load refuses, wdist refuses (review findings) -------------------------

def _central(data: bytes, name: bytes) -> int:
    """Offset of the central directory entry of member `name`."""
    i = data.index(b"PK\x01\x02")
    while True:
        n = int.from_bytes(data[i + 28:i + 30], "little")
        if data[i + 46:i + 46 + n] == name:
            return i
        i = data.index(b"PK\x01\x02", i + 46)


def _patched(tmp_path, compressed: bool, edit) -> tuple:
    import zipfile

    a = np.arange(4096, dtype=np.float32).reshape(64, 64)
    p = tmp_path / "m.npz"
    (np.savez_compressed if compressed else np.savez)(p, **{"fc.weight": a})
    data = bytearray(p.read_bytes())
    with zipfile.ZipFile(p) as zf:
        local = zf.getinfo("fc.weight.npy").header_offset
    edit(data, local, _central(bytes(data), b"fc.weight.npy"))
    q = tmp_path / "bad.npz"
    q.write_bytes(bytes(data))
    return q, a


def _wrong_crc(data: bytearray, local: int, central: int) -> None:
    for at in (local + 14, central + 16):  # both headers, as a forger would
        data[at] ^= 0xFF


def _encrypted(data: bytearray, local: int, central: int) -> None:
    data[local + 6] |= 1
    data[central + 8] |= 1


def _other_local_name(data: bytearray, local: int, central: int) -> None:
    data[local + 30:local + 32] = b"gc"  # "gc.weight.npy" in the local header, "fc.weight.npy" in the directory


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("edit, exc, match, lists", [
    (_wrong_crc, CorruptCheckpointError, "CRC-32", True),
    (_encrypted, UnsupportedFormatError, "encrypted", False),
    (_other_local_name, CorruptCheckpointError, "local header names another file", False),
])
def test_npz_integrity_like_numpy(tmp_path, compressed, edit, exc, match, lists):
    q, a = _patched(tmp_path, compressed, edit)
    with pytest.raises((zipfile.BadZipFile, RuntimeError)):  # numpy.load refuses to give these values
        np.load(q)["fc.weight"]
    if lists:  # a CRC is only known once the data is read: listing works, reading values does not
        ck = open_checkpoint(str(q))
        assert [t.name for t in ck.tensors] == ["fc.weight"]
        with pytest.raises(exc, match=match):
            ck.tensors[0].read()
        with pytest.raises(exc, match=match):
            ck.tensors[0].reader.read_raw(4000, 96)  # any range, also the last one alone
    else:
        with pytest.raises(exc, match=match):
            open_checkpoint(str(q))
    r = run("inspect", q)
    assert r.exit_code == 2 and r.output.startswith("wdist: error:") and r.output.count("\n") == 1, r.output
    assert match.split()[0] in r.output
    r = run("check", q, "--rule", "model: nan_count == 0")  # a gate never passes on such a file
    assert r.exit_code == 2 and r.output.splitlines()[-1].startswith("wdist: error:"), r.output


def test_npz_crc_checked_once_and_values_right(tmp_path, monkeypatch, rng):
    from wdist.loaders import fileio

    a = rng.normal(size=(256, 64)).astype(np.float32)
    p = tmp_path / "m.npz"
    np.savez(p, w=a, W=a * 2)  # names equal but for case are two arrays for numpy, and for wdist
    calls = []
    real = fileio.crc32_of_range
    monkeypatch.setattr(fileio, "crc32_of_range", lambda *x: calls.append(x) or real(*x))
    ck = open_checkpoint(str(p))
    assert sorted(t.name for t in ck.tensors) == ["W", "w"]
    t = next(t for t in ck.tensors if t.name == "w")
    for start in range(0, a.size, 1000):
        np.testing.assert_array_equal(t.reader.read_raw(start, min(1000, a.size - start)),
                                      a.ravel()[start:start + 1000])
    assert len(calls) == 1


def test_npz_deflated_stream_longer_than_its_claim(tmp_path):
    """A deflate stream that goes on past its member's claimed size (and CRC) hides bytes that a reader
    trusting the stream would see: refused once the read reaches the claimed end."""
    import io
    import zipfile
    import zlib

    a = np.arange(1024, dtype=np.float32)
    buf = io.BytesIO()
    np.save(buf, a)
    npy = buf.getvalue()
    p = tmp_path / "long.npz"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("w.npy", npy + b"hidden payload" * 8)
    data = bytearray(p.read_bytes())
    with zipfile.ZipFile(p) as zf:
        local = zf.getinfo("w.npy").header_offset
    central = _central(bytes(data), b"w.npy")
    crc = zlib.crc32(npy).to_bytes(4, "little")
    size = len(npy).to_bytes(4, "little")
    data[local + 14:local + 18], data[central + 16:central + 20] = crc, crc
    data[local + 22:local + 26], data[central + 24:central + 28] = size, size
    q = tmp_path / "bad.npz"
    q.write_bytes(bytes(data))
    t = open_checkpoint(str(q)).tensors[0]
    with pytest.raises(CorruptCheckpointError, match="holds more than"):
        t.read()
    # the same member, honestly sized, is read
    with zipfile.ZipFile(tmp_path / "ok.npz", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("w.npy", npy)
    np.testing.assert_array_equal(open_checkpoint(str(tmp_path / "ok.npz")).tensors[0].read(), a)


def _npy(a: np.ndarray) -> bytes:
    import io

    b = io.BytesIO()
    np.save(b, a)
    return b.getvalue()


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_npz_members_are_named_and_read_as_numpy_does(tmp_path, compression):
    """numpy.load reads a member without the .npy suffix as an array when it starts with the .npy magic; a
    member "w" beside "w.npy" makes two members one name, of which numpy reads the first it finds."""
    p = tmp_path / "nosuffix.npz"
    with zipfile.ZipFile(p, "w", compression) as z:
        z.writestr("fc.weight.npy", _npy(np.ones((8, 8), np.float32)))
        z.writestr("fc.bias", _npy(np.full(8, np.nan, np.float32)))
        z.writestr("notes.txt", b"not an array")
    ref = np.load(p)
    with open_checkpoint(str(p)) as ck:
        assert sorted(t.name for t in ck.tensors) == ["fc.bias", "fc.weight"] == sorted(set(ref.files) - {"notes.txt"})
        np.testing.assert_array_equal(next(t for t in ck.tensors if t.name == "fc.bias").read(), ref["fc.bias"])
        assert "notes.txt" in ck.warnings[0]
    r = run("check", p, "--no-config", "--rule", "model: nan_count == 0")
    assert r.exit_code == 1  # the NaN bias is seen: the gate fails, as it must
    q = tmp_path / "shadow.npz"
    with zipfile.ZipFile(q, "w", compression) as z:
        z.writestr("fc.weight.npy", _npy(np.ones((8, 8), np.float32)))
        z.writestr("fc.weight", _npy(np.full((8, 8), np.nan, np.float32)))
    assert np.isnan(np.load(q)["fc.weight"]).all()  # numpy takes the suffix-less one
    with pytest.raises(CorruptCheckpointError, match="both"):
        open_checkpoint(str(q))


def test_npz_deflated_claim_longer_than_its_stream_is_still_checked(tmp_path):
    """A zip entry claiming 16 bytes more than its deflate stream holds (and a wrong CRC): the array's last
    value is read before the claimed end is ever reached, so the check must also run at the stream's end and
    at the array's end (found by review: inspect exit 0, `check` passed; numpy.load refuses it)."""
    import struct
    import zlib

    a = np.random.default_rng(0).standard_normal(100_000).astype(np.float32)
    payload = _npy(a)
    p = tmp_path / "short.npz"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("fc.weight.npy", payload)
    d = bytearray(p.read_bytes())
    crc = struct.pack("<I", zlib.crc32(payload))
    d = bytearray(bytes(d).replace(crc, struct.pack("<I", zlib.crc32(payload) ^ 0xDEADBEEF)))
    c = _central(bytes(d), b"fc.weight.npy")
    for at in (22, c + 24):  # uncompressed size in the local and the central header
        d[at:at + 4] = struct.pack("<I", len(payload) + 16)
    p.write_bytes(bytes(d))
    with pytest.raises(zipfile.BadZipFile):
        np.load(p)["fc.weight"]
    with pytest.raises(CorruptCheckpointError, match="fewer than"):
        open_checkpoint(str(p)).tensors[0].read()
    r = run("check", p, "--no-config", "--no-cache", "--rule", "model: nan_count == 0")
    assert r.exit_code == 2, r.output


def test_npz_name_that_numpy_resolves_to_another_member_is_refused(tmp_path):
    """Members "fc.weight.npy.npy" and "fc.weight.npy": numpy gives the second under both of its keys, so
    the first's values are never what numpy calls "fc.weight.npy"."""
    p = tmp_path / "dup.npz"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("fc.weight.npy.npy", _npy(np.full((8, 8), 7, np.float32)))
        z.writestr("fc.weight.npy", _npy(np.ones((8, 8), np.float32)))
    assert np.load(p)["fc.weight.npy"].max() == 1.0
    with pytest.raises(CorruptCheckpointError, match="both"):
        open_checkpoint(str(p))
    q = tmp_path / "ok.npz"  # a user's own "x.npy" key alone is fine
    np.savez(q, **{"x.npy": np.ones(3, np.float32)})
    with open_checkpoint(str(q)) as ck:
        assert [t.name for t in ck.tensors] == ["x.npy"] and ck.tensors[0].read().tolist() == [1, 1, 1]


@pytest.mark.parametrize("which", ["local", "central"])
def test_npz_name_flagged_utf8_in_one_header_only_is_refused(tmp_path, which):
    """The same name bytes, flagged UTF-8 in one header and not the other, are two names for Python's
    zipfile (numpy.load refuses: "File name in directory ... and header ... differ"); wdist compared the
    bytes only and read the member (found by review)."""
    p = tmp_path / "u.npz"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("é.npy", _npy(np.arange(16, dtype=np.float32)))
    d = bytearray(p.read_bytes())
    c = _central(bytes(d), "é.npy".encode())
    at = 6 if which == "local" else c + 8  # general purpose flags: bit 11 is "name is UTF-8"
    d[at] &= ~0x08 & 0xFF
    d[at + 1] &= ~0x08 & 0xFF
    p.write_bytes(bytes(d))
    with pytest.raises(zipfile.BadZipFile, match="differ"):
        np.load(p)[np.load(p).files[0]]
    with pytest.raises(CorruptCheckpointError, match="local header names another file"):
        open_checkpoint(str(p))
