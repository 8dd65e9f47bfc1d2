"""JSON read from a checkpoint (safetensors header, sharded index, a .keras archive's config.json) is
bounded before json.loads: each case below took 1.6-2.5 GB and 5-16 s at full size (found by review) and
is now refused, or skipped with a warning, in a child process whose address space may grow by a fraction
of what parsing it would take."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from wdist.loaders import jsonbudget, open_checkpoint
from wdist.loaders.errors import CorruptCheckpointError
from wdist.loaders.keras_loader import MAX_CONFIG_BYTES, MAX_CONFIG_CONTAINERS
from wdist.loaders.registry import MAX_INDEX_CONTAINERS, MAX_INDEX_ITEMS
from wdist.loaders.safetensors_loader import MAX_CONTAINERS, MAX_ITEMS

KERAS = Path(__file__).parent.parent / "data" / "keras" / "keras3_conv.keras"

# `wdist ARGS...` in a child whose address space may grow by HEADROOM bytes past what the imports took
# (as tests/loaders/test_hostile_zip.py measures it): the child prints its exit code and seconds last.
CHILD = r"""
import os, resource, sys, time
import h5py, numpy  # imported before the limit: only the command's own work counts
import wdist.loaders.keras_loader, wdist.loaders.registry, wdist.loaders.safetensors_loader, wdist.cli.main
headroom, args = int(sys.argv[1]), sys.argv[2:]
vm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize:")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + headroom, vm + headroom))
sys.argv = ["wdist", *args]
t = time.perf_counter()
code = 0
try:
    wdist.cli.main.main()
except SystemExit as e:
    code = e.code
print("\nEXIT", code, time.perf_counter() - t)
"""


def _bounded(*args: str, headroom_mb: int = 256, timeout: float = 60) -> tuple[int, float, str, str]:
    """(exit code, seconds, stdout, stderr) of `wdist ARGS` run in a child limited as CHILD describes."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", CHILD, str(headroom_mb << 20), *args], capture_output=True,
                       text=True, timeout=timeout, env=env)
    last = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    assert r.returncode == 0 and last.startswith("EXIT "), (r.returncode, r.stdout[-1000:], r.stderr[-2000:])
    _, code, seconds = last.split()
    return int(code), float(seconds), r.stdout, r.stderr


def _one_error(stderr: str, path: Path, word: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"wdist: error: {path}: ") and word in lines[0], stderr
    assert "Traceback" not in stderr


def _st_raw(p: Path, header: bytes) -> Path:
    p.write_bytes(struct.pack("<Q", len(header)) + header)
    return p


# --- the shared bound -------------------------------------------------------------------------------------

def test_budget_counts_containers_and_items() -> None:
    jsonbudget.check("f", b"[" * 10, "x", 10, 0)  # short text is never over a limit it cannot hold
    with pytest.raises(CorruptCheckpointError, match="11 JSON arrays/objects, over the limit of 10"):
        jsonbudget.check("f", b"[]," * 10 + b"{}", "x", 10, 100)
    with pytest.raises(CorruptCheckpointError, match=r"5 JSON items \(commas and colons\)"):  # 2 + 3
        jsonbudget.check("f", b'{"a":1,"b":2,"c":3}', "x", 10, 4)
    jsonbudget.check("f", b'{"a":1,"b":2,"c":3}', "x", 1, 5)


def test_a_million_tensor_header_is_within_the_bounds() -> None:
    """The bounds leave room for 10^6 tensors of 4 dimensions (benchmarks/bench_many.py reads 10^6 of one):
    built as bytes, checked without parsing it (a 10^6-tensor `ls` takes a minute here)."""
    n = 1_000_000
    entry = b'"layers.%d.weight":{"dtype":"F32","shape":[1,1,1,1],"data_offsets":[%d,%d]}'
    header = b"{" + b",".join(entry % (i, 4 * i, 4 * i + 4) for i in range(n)) + b"}"
    assert len(header) < 100_000_000
    jsonbudget.check("f", header, "safetensors header", MAX_CONTAINERS, MAX_ITEMS)
    index = json.dumps({"metadata": {"total_size": 4 * n},
                        "weight_map": {f"layers.{i}.weight": "model-00001-of-00002.safetensors"
                                       for i in range(n)}}).encode()
    jsonbudget.check("f", index, "sharded index", MAX_INDEX_CONTAINERS, MAX_INDEX_ITEMS)


# --- C: safetensors header ----------------------------------------------------------------------------

def test_safetensors_header_of_empty_arrays_is_refused_before_parsing(tmp_path: Path) -> None:
    """The review's 100 MB header of 33M `[]` in one shape took 2.49 GB and 16.5 s before 'bad shape'; a
    30 MB one (~0.7 GB to parse) is refused in well under the 256 MB of headroom."""
    n = 10_000_000
    p = _st_raw(tmp_path / "x.safetensors",
                b'{"__metadata__":{},"x":{"dtype":"F32","shape":[' + b"[]," * (n - 1)
                + b'[]],"data_offsets":[0,0]}}')
    code, seconds, _, err = _bounded("ls", str(p))
    assert code == 2 and seconds < 5, (seconds, err)
    _one_error(err, p, "JSON arrays/objects, over the limit")


def test_safetensors_header_items_are_refused(tmp_path: Path) -> None:
    """Items are bounded as containers are: 12M+ numbers in one shape (floats, 32 bytes each once parsed,
    are items too; the checks after parsing refuse them as before) never reach json.loads."""
    for item in (b"0,", b"1e5,"):
        p = _st_raw(tmp_path / "items.safetensors",
                    b'{"x":{"dtype":"F32","shape":[' + item * MAX_ITEMS + b'0],"data_offsets":[0,0]}}')
        with pytest.raises(CorruptCheckpointError, match="JSON items"):
            open_checkpoint(str(p))


def test_valid_safetensors_still_read(tmp_path: Path) -> None:
    p = tmp_path / "ok.safetensors"
    save_file({f"m{i}.weight": np.full((2, 3), i, np.float32) for i in range(1000)}, str(p),
              metadata={"format": "np", "note": "1.5, [x], {y}: z"})  # separators inside strings count too
    with open_checkpoint(str(p)) as ck:
        assert len(ck.tensors) == 1000 and ck.metadata["note"] == "1.5, [x], {y}: z"
        assert ck.tensors[5].read().max() == 5.0


# --- B: sharded index ---------------------------------------------------------------------------------

def test_sharded_index_of_empty_arrays_is_refused_before_parsing(tmp_path: Path) -> None:
    """The review's 63 MB index with 21M `[]` under "metadata" took 1.58 GB (exit 0); a 24 MB one (~0.6 GB to
    parse) is refused within the headroom."""
    save_file({"w": np.ones(4, np.float32)}, str(tmp_path / "model.safetensors"))
    p = tmp_path / "model.safetensors.index.json"
    n = 8_000_000
    p.write_bytes(b'{"metadata":[' + b"[]," * n + b'[]],"weight_map":{"w":"model.safetensors"}}')
    code, seconds, _, err = _bounded("ls", str(p))
    assert code == 2 and seconds < 5, (seconds, err)
    _one_error(err, p, "sharded index holds")
    p.write_bytes(b'{"metadata":[' + b"0," * MAX_INDEX_ITEMS + b'0],"weight_map":{"w":"model.safetensors"}}')
    with pytest.raises(CorruptCheckpointError, match="JSON items"):
        open_checkpoint(str(p))
    p.write_text(json.dumps({"metadata": {"total_size": 16}, "weight_map": {"w": "model.safetensors"}}))
    assert [t.name for t in open_checkpoint(str(p)).tensors] == ["w"]


# --- A: .keras config.json ----------------------------------------------------------------------------

def _keras_with_config(p: Path, config: bytes) -> Path:
    with zipfile.ZipFile(KERAS) as z:
        members = [(i.filename, z.read(i.filename)) for i in z.infolist()]
    with zipfile.ZipFile(p, "w") as out:
        for name, raw in members:
            if name == "config.json":
                out.writestr(name, config, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
            else:
                out.writestr(name, raw)  # model.weights.h5 stays stored, as Keras writes it
    return p


def test_keras_config_bomb_is_skipped_with_a_warning(tmp_path: Path) -> None:
    """The review's 69 KB .keras whose deflated config.json is `[[],[],...]` cost 1.67 GB and 12 s (exit 0).
    Under the size bound (16 MiB, ~5.6M `[]`: ~0.4 GB to parse) it is now skipped with a warning naming it,
    and over it too: the weights are read, in HDF5 order, as without a config."""
    n = (MAX_CONFIG_BYTES - 4) // 3
    p = _keras_with_config(tmp_path / "bomb.keras", b"[" + b"[]," * n + b"[]]")
    assert p.stat().st_size < 100_000
    code, seconds, out, err = _bounded("ls", str(p), headroom_mb=200)
    assert code == 0 and seconds < 5 and "Traceback" not in err, (seconds, err)
    warning = f"config.json holds {n + 2:,} JSON arrays/objects, over the limit of {MAX_CONFIG_CONTAINERS:,}"
    assert warning in " ".join(out.split()) and "stem/kernel" in out, out  # the warning wraps at COLUMNS
    big = _keras_with_config(tmp_path / "big.keras", b" " * (MAX_CONFIG_BYTES + 1))
    with open_checkpoint(str(big)) as ck:
        assert len(ck.tensors) == 12 and any("config.json is 16,777,217 bytes" in w for w in ck.warnings)
    with open_checkpoint(str(KERAS)) as ck:  # the real file: no warning, metadata and model order kept
        assert not ck.warnings and ck.metadata["keras_version"] == "3.15.1"
        assert ck.tensors[0].name == "stem/kernel"


# --- C2: safetensors header members outside the format's schema ----------------------------------------

_ONE = b'"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}'


@pytest.mark.parametrize("kind, word", [
    ("lists", "'k0': entry lacks"), ("objects", "'k0': entry lacks"), ("numbers", "'k0': entry lacks"),
    ("strings", "'k0': entry lacks"), ("nested_shape", "'w': bad shape"), ("long_shape", "'w': bad shape"),
    ("metadata", "__metadata__ holds more than"), ("late_duplicate", "'layers.0.weight' twice"),
    ("long_name", "a tensor name of more than 65,536 characters"),
    ("long_name_reordered", "a tensor name of more than 65,536 characters"),
    ("unknown_key", "'w': its unknown key 'x' holds a JSON value of more than 65,536 bytes"),
])
def test_safetensors_header_outside_the_schema_is_refused_at_once(tmp_path: Path, kind: str, word: str) -> None:
    """Headers within MAX_CONTAINERS and MAX_ITEMS that json.loads turned into 0.4-1.9 GB at 100 MB
    (benchmarks/bench_header.py) are refused while read, at the member that breaks the schema: ~30 MB of
    each is refused in a child whose address space may grow by 96 MB (the header itself is a third of it)."""
    n = 2_000_000
    header = {
        "lists": lambda: b"{" + b",".join(b'"k%d":[]' % i for i in range(n)) + b"}",
        "objects": lambda: b"{" + b",".join(b'"k%d":{}' % i for i in range(n)) + b"}",
        "numbers": lambda: b"{" + b",".join(b'"k%d":%d' % (i, i) for i in range(n)) + b"}",
        "strings": lambda: b"{" + b",".join(b'"k%d":"ab"' % i for i in range(n)) + b"}",
        "nested_shape": lambda: b'{"w":{"dtype":"F32","shape":[' + b"[]," * (MAX_CONTAINERS - 10) + b'[]],"data_offsets":[0,4]}}',
        "long_shape": lambda: (b'{"w":{"dtype":"F32","shape":[' + b",".join(b"%d" % (1000 + i) for i in range(2 * n))
                               + b'],"data_offsets":[0,4]}}'),
        "metadata": lambda: (b'{"__metadata__":{' + b",".join(b'"k%d":"v%d"' % (i, i) for i in range(n))
                             + b"}," + _ONE + b"}"),
        "late_duplicate": lambda: b"{" + b",".join(
            b'"layers.%d.weight":{"dtype":"F32","shape":[1],"data_offsets":[%d,%d]}' % (i % 300_000, 4 * i, 4 * i + 4)
            for i in range(300_001)) + b"}",
        # a valid entry but for its 30 MB name (99 MB took 508 MB), in the reference's member order and not
        "long_name": lambda: b'{"' + b"a" * 30_000_000 + b'":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
        "long_name_reordered": lambda: b'{"' + b"a" * 30_000_000 + b'":{"shape":[1],"dtype":"F32","data_offsets":[0,4]}}',
        # an unknown key inside an entry, allowed by the format, holding 3.9M `[]` (12 MB; 100 MB took 501 MB)
        "unknown_key": lambda: b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":[' + b"[]," * 3_900_000
                               + b"[]]}}",
    }[kind]()
    assert 10_000_000 < len(header) < 45_000_000
    p = _st_raw(tmp_path / "x.safetensors", header)
    with open(p, "ab") as f:
        f.write(bytes(4 * 300_001 if kind == "late_duplicate" else 4))
    code, seconds, _, err = _bounded("ls", str(p), headroom_mb=96)
    assert code == 2 and seconds < 5, (seconds, err)
    _one_error(err, p, word)


def test_a_short_unknown_key_is_still_ignored(tmp_path: Path) -> None:
    """The format allows keys it does not know inside an entry; within the window they are read and ignored."""
    header = b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":[[1,2],{"a":"b"}]}}'
    p = _st_raw(tmp_path / "x.safetensors", header)
    with open(p, "ab") as f:
        f.write(np.float32(1.5).tobytes())
    with open_checkpoint(str(p)) as ck:
        assert [t.name for t in ck.tensors] == ["w"]
        assert float(next(ck.tensors[0].chunks())[1][0]) == 1.5


def test_a_name_at_the_limit_is_read_and_one_past_it_is_refused(tmp_path: Path) -> None:
    """MAX_NAME characters are read; one more is refused by the registry, for every format (a .pt here),
    also when its bytes are few enough that the safetensors tokenizer decodes it (2-byte characters)."""
    import torch

    from wdist.loaders.model import MAX_NAME

    ok, bad = "w" * MAX_NAME, "é" * (MAX_NAME + 1)
    save_file({ok: np.ones(1, np.float32)}, str(tmp_path / "ok.safetensors"))
    with open_checkpoint(str(tmp_path / "ok.safetensors")) as ck:
        assert ck.tensors[0].name == ok
    save_file({bad: np.ones(1, np.float32)}, str(tmp_path / "bad.safetensors"))
    torch.save({bad: torch.ones(1)}, tmp_path / "bad.pt")
    for f in ("bad.safetensors", "bad.pt"):
        with pytest.raises(CorruptCheckpointError, match="a tensor name of 65,537 characters"):
            open_checkpoint(str(tmp_path / f))
