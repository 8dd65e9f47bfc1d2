"""Fuzzing: mutated safetensors headers, zip directories and pickle streams may only give a valid result
or a WdistError — never another exception, a hang, or a payload that runs.

HYPOTHESIS_PROFILE=fuzz runs 20,000 examples per target (see tests/conftest.py)."""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wdist.analyzers.inspect import Options, analyse
from wdist.loaders import open_checkpoint
from wdist.loaders.errors import WdistError

MARKER = "/tmp/wdist-fuzz-marker"
FUZZ = settings(deadline=10_000, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def outcome(data: bytes, tmp_path, name: str) -> None:
    p = tmp_path / name
    p.write_bytes(data)
    try:
        ck = open_checkpoint(str(p))
        analyse(ck, Options(jobs=1, roles=tuple(__import__("wdist.loaders", fromlist=["Role"]).Role)))
    except WdistError:
        pass
    assert not os.path.exists(MARKER), "a payload ran"


def _st_file() -> bytes:
    from safetensors.numpy import save

    return save({"a.weight": np.arange(12, dtype=np.float32).reshape(3, 4), "a.bias": np.ones(3, np.float32)})


ST = _st_file()
HLEN = struct.unpack("<Q", ST[:8])[0]


def _torch_zip(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


TZIP = _torch_zip({"w.weight": torch.randn(4, 4), "evil": Payload(), "epoch": 3})
LEGACY = io.BytesIO()
torch.save({"w.weight": torch.randn(3, 3), "evil": Payload()}, LEGACY, _use_new_zipfile_serialization=False)
LEGACY_BYTES = LEGACY.getvalue()
with zipfile.ZipFile(io.BytesIO(TZIP)) as _z:
    PKL_NAME = next(n for n in _z.namelist() if n.endswith("data.pkl"))
    PKL = _z.read(PKL_NAME)
    MEMBERS = {n: _z.read(n) for n in _z.namelist()}


def mutate(data: bytes, edits: list[tuple[int, int]], lo: int = 0, hi: int | None = None) -> bytes:
    b = bytearray(data)
    hi = len(b) if hi is None else hi
    for pos, val in edits:
        b[lo + pos % max(1, hi - lo)] = val
    return bytes(b)


edits = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=8)


@FUZZ
@given(edits)
def test_safetensors_header_bytes(tmp_path, e):
    outcome(mutate(ST, e, 0, 8 + HLEN), tmp_path, "m.safetensors")


json_scalar = st.one_of(st.integers(-(1 << 70), 1 << 70), st.text(max_size=8), st.none(), st.booleans())
entry = st.fixed_dictionaries({
    "dtype": st.sampled_from(["F32", "F16", "BF16", "F8_E4M3", "I64", "U8", "X"]),
    "shape": st.lists(st.one_of(st.integers(0, 1 << 40), json_scalar), max_size=4),
    "data_offsets": st.lists(st.one_of(st.integers(-5, 1 << 40), json_scalar), max_size=3),
})


@FUZZ
@given(st.dictionaries(st.text(max_size=6), st.one_of(entry, json_scalar), max_size=4), st.integers(0, 256))
def test_safetensors_generated_headers(tmp_path, header, data_len):
    h = json.dumps(header).encode()
    outcome(struct.pack("<Q", len(h)) + h + bytes(data_len), tmp_path, "g.safetensors")


@FUZZ
@given(edits)
def test_zip_directory_entries(tmp_path, e):
    cd = TZIP.rfind(b"PK\x01\x02", 0, TZIP.find(b"PK\x05\x06"))
    start = TZIP.find(b"PK\x01\x02")
    outcome(mutate(TZIP, e, start if start >= 0 else cd, len(TZIP)), tmp_path, "z.pt")


@FUZZ
@given(edits)
def test_pickle_streams_in_zip(tmp_path, e):
    bad = mutate(PKL, e)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for n, data in MEMBERS.items():
            z.writestr(n, bad if n == PKL_NAME else data)
    outcome(buf.getvalue(), tmp_path, "p.pt")


@FUZZ
@given(edits, st.integers(0, len(LEGACY_BYTES)))
def test_legacy_pickle_streams(tmp_path, e, cut):
    data = mutate(LEGACY_BYTES, e)
    outcome(data[: max(1, cut)] if cut % 3 == 0 else data, tmp_path, "l.pt")


@pytest.fixture(autouse=True)
def _no_marker():
    if os.path.exists(MARKER):
        os.remove(MARKER)
    yield
    assert not os.path.exists(MARKER)


def _numpy_pickle() -> bytes:
    import pickle

    return pickle.dumps({"blobs": {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2)}}, protocol=2)


NUMPY_PKL = _numpy_pickle()


@FUZZ
@given(edits, st.integers(0, len(NUMPY_PKL)))
def test_numpy_pickle_streams(tmp_path, e, cut):
    """The pure-Python pickle VM on numpy reconstruction (_reconstruct, dtype BUILD, _codecs.encode)."""
    data = mutate(NUMPY_PKL, e)
    outcome(data[: max(1, cut)] if cut % 3 == 0 else data, tmp_path, "n.pkl")


opcode_soup = st.lists(st.sampled_from([b"(", b"t", b"\x85", b"\x86", b"\x87", b")", b"]", b"}", b"a", b"e", b"s",
                                        b"u", b"b", b"R", b"N", b"K\x01", b"h\x00", b"q\x00", b"\x94", b"0", b"1",
                                        b"2", b"l", b"d", b"\x88", b"X\x01\x00\x00\x00a",
                                        b"ctorch._utils\n_rebuild_tensor_v2\n", b"ctorch\nFloatStorage\n",
                                        b"cnumpy\ndtype\n", b"cposix\nsystem\n", b"Q"]), max_size=60)


@FUZZ
@given(opcode_soup)
def test_generated_opcode_sequences(tmp_path, ops):
    """Random opcode sequences over the VM's stand-ins (BUILD/SETITEM/APPEND/REDUCE on anything)."""
    outcome(b"\x80\x02" + b"".join(ops) + b".", tmp_path, "s.pkl")
