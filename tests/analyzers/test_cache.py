"""The summary cache: exact round trip, keyed by file identity, damaged entries ignored, bounded size."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from safetensors.numpy import save_file

from wdist.analyzers.cache import SummaryCache, tensor_key
from wdist.analyzers.engine import summarize_tensor
from wdist.analyzers.summary import Summary
from wdist.loaders import open_checkpoint


def _same(a: Summary, b: Summary) -> None:
    for f in a.__dataclass_fields__:
        va, vb = getattr(a, f), getattr(b, f)
        if isinstance(va, np.ndarray) or isinstance(vb, np.ndarray):
            np.testing.assert_array_equal(va, vb)
        else:
            assert va == vb or (va != va and vb != vb), f


def _ckpt(tmp_path, rng, value=None):
    p = tmp_path / "m.safetensors"
    w = rng.normal(size=(64, 32)).astype(np.float32) if value is None else np.full((64, 32), value, np.float32)
    save_file({"fc.weight": w}, str(p))
    return open_checkpoint(str(p)).tensors[0]


def test_round_trip_is_exact(tmp_path, rng):
    ref = _ckpt(tmp_path, rng)
    s = summarize_tensor(ref)
    cache = SummaryCache(str(tmp_path / "cache"))
    key = tensor_key(ref, 1 << 20)
    assert cache.get(key, Summary) is None
    cache.put(key, s)
    _same(cache.get(key, Summary), s)
    assert cache.info()["entries"] == 1


def test_key_changes_with_the_file_and_the_chunking(tmp_path, rng):
    ref = _ckpt(tmp_path, rng)
    k1 = tensor_key(ref, 1 << 20)
    assert tensor_key(ref, 1 << 16) != k1
    st = os.stat(ref.reader.path)
    os.utime(ref.reader.path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert tensor_key(ref, 1 << 20) != k1


def test_damaged_entries_are_ignored_and_rewritten(tmp_path, rng):
    ref = _ckpt(tmp_path, rng)
    cache = SummaryCache(str(tmp_path / "cache"))
    key = tensor_key(ref, 1 << 20)
    cache.put(key, summarize_tensor(ref))
    (path, _, _), = cache.entries()
    with open(path, "r+b") as f:
        f.seek(30)
        f.write(b"\xff" * 40)
    assert cache.get(key, Summary) is None
    assert not os.path.exists(path)
    cache.put(key, summarize_tensor(ref))
    assert cache.get(key, Summary) is not None


def test_size_is_bounded_least_recently_used_first(tmp_path, rng):
    ref = _ckpt(tmp_path, rng)
    s = summarize_tensor(ref)
    cache = SummaryCache(str(tmp_path / "cache"), max_bytes=10**9)
    keys = [{"k": i} for i in range(6)]
    for i, k in enumerate(keys):
        cache.put(k, s)
        p = cache._path(k)
        os.utime(p, (1000 + i, 1000 + i))
    one = cache.entries()[0][1]
    cache.max_bytes = 3 * one
    assert cache.evict() == 3
    assert [cache.get(k, Summary) is not None for k in keys] == [False, False, False, True, True, True]


def test_concurrent_writers_never_leave_a_partial_entry(tmp_path, rng):
    ref = _ckpt(tmp_path, rng)
    s = summarize_tensor(ref)
    cache = SummaryCache(str(tmp_path / "cache"))
    key = tensor_key(ref, 1 << 20)
    errors = []

    def work():
        for _ in range(20):
            cache.put(key, s)
            got = cache.get(key, Summary)
            if got is None:
                errors.append("miss")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [e for e in os.listdir(os.path.dirname(cache._path(key))) if e.startswith(".tmp-")] == []


def test_in_memory_tensors_are_not_cached():
    from wdist.loaders.memory import from_object

    ref = from_object({"w": np.ones((4, 4), np.float32)}).tensors[0]
    assert tensor_key(ref, 1 << 20) is None


def test_inspect_and_diff_on_unchanged_files_read_nothing(tmp_path, rng, monkeypatch):
    from wdist.analyzers.diff import compare
    from wdist.analyzers.inspect import Options, analyse
    from wdist.loaders.fileio import RangeReader

    pa, pb = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    w = rng.normal(size=(64, 32)).astype(np.float32)
    save_file({"fc.weight": w, "fc.bias": w[0].copy()}, str(pa))
    save_file({"fc.weight": w * 1.1, "fc.bias": w[0] * 0.9}, str(pb))
    cache = SummaryCache(str(tmp_path / "cache"))
    opts = Options(jobs=1, cache=cache)
    first = analyse(open_checkpoint(str(pa)), opts)
    d1 = compare(open_checkpoint(str(pa)), open_checkpoint(str(pb)), opts)

    def no_reads(self, *a, **k):
        raise AssertionError("tensor data was read although the cache holds it")

    monkeypatch.setattr(RangeReader, "read_raw", no_reads)
    again = analyse(open_checkpoint(str(pa)), opts)
    assert [t.stats for t in again.tensors] == [t.stats for t in first.tensors]
    d2 = compare(open_checkpoint(str(pa)), open_checkpoint(str(pb)), opts)
    assert [t.change for t in d2.tensors] == [t.change for t in d1.tensors]
    with pytest.raises(Exception, match="cache holds it"):  # without the cache the file is read
        analyse(open_checkpoint(str(pa)), Options(jobs=1))
