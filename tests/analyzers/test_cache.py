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
    cache.flush()
    fresh = SummaryCache(str(tmp_path / "cache"))  # another process: reads the bundle file
    _same(fresh.get(key, Summary), s)
    assert fresh.info()["files"] == 1


def test_one_bundle_per_checkpoint_file(tmp_path, rng):
    p = tmp_path / "many.safetensors"
    save_file({f"l{i}.weight": rng.normal(size=(4, 4)).astype(np.float32) for i in range(300)}, str(p))
    cache = SummaryCache(str(tmp_path / "cache"))
    for ref in open_checkpoint(str(p)).tensors:
        cache.put(tensor_key(ref, 1 << 20), summarize_tensor(ref))
    cache.flush()
    assert cache.info()["files"] == 1


def test_key_changes_with_the_file_and_the_chunking(tmp_path, rng):
    ref = _ckpt(tmp_path, rng)
    k1 = tensor_key(ref, 1 << 20)
    assert tensor_key(ref, 1 << 16) != k1
    st = os.stat(ref.reader.path)
    os.utime(ref.reader.path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert tensor_key(ref, 1 << 20) != k1


def test_damaged_bundles_are_ignored_and_rewritten(tmp_path, rng):
    ref = _ckpt(tmp_path, rng)
    cache = SummaryCache(str(tmp_path / "cache"))
    key = tensor_key(ref, 1 << 20)
    cache.put(key, summarize_tensor(ref))
    cache.flush()
    (path, _, _), = cache.entries()
    with open(path, "r+b") as f:
        f.seek(30)
        f.write(b"\xff" * 40)
    fresh = SummaryCache(str(tmp_path / "cache"))
    assert fresh.get(key, Summary) is None
    assert not os.path.exists(path)
    fresh.put(key, summarize_tensor(ref))
    fresh.flush()
    assert SummaryCache(str(tmp_path / "cache")).get(key, Summary) is not None


def test_size_is_bounded_least_recently_used_first(tmp_path, rng):
    refs = []
    for i in range(6):
        p = tmp_path / f"m{i}.safetensors"
        save_file({"fc.weight": rng.normal(size=(64, 32)).astype(np.float32)}, str(p))
        refs.append(open_checkpoint(str(p)).tensors[0])
    cache = SummaryCache(str(tmp_path / "cache"), max_bytes=10**9)
    for i, ref in enumerate(refs):
        cache.put(tensor_key(ref, 1 << 20), summarize_tensor(ref))
        cache.flush()
        p = cache._path(cache._bundle_id(tensor_key(ref, 1 << 20)))
        os.utime(p, (1000 + i, 1000 + i))
    one = cache.entries()[0][1]
    cache.max_bytes = 3 * one + one // 2
    assert cache.evict() == 3
    fresh = SummaryCache(str(tmp_path / "cache"))
    assert [fresh.get(tensor_key(r, 1 << 20), Summary) is not None for r in refs] == [False] * 3 + [True] * 3


def test_concurrent_writers_never_leave_a_partial_bundle(tmp_path, rng):
    ref = _ckpt(tmp_path, rng)
    s = summarize_tensor(ref)
    key = tensor_key(ref, 1 << 20)
    errors = []

    def work():
        for _ in range(10):
            c = SummaryCache(str(tmp_path / "cache"))
            c.put(key, s)
            c.flush()
            if SummaryCache(str(tmp_path / "cache")).get(key, Summary) is None:
                errors.append("miss")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    cache = SummaryCache(str(tmp_path / "cache"))
    bundle_dir = os.path.dirname(cache._path(cache._bundle_id(key)))
    assert [e for e in os.listdir(bundle_dir) if e.startswith(".tmp-")] == []


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
    cache.flush()
    opts = Options(jobs=1, cache=SummaryCache(str(tmp_path / "cache")))  # a later run: from the files

    def no_reads(self, *a, **k):
        raise AssertionError("tensor data was read although the cache holds it")

    monkeypatch.setattr(RangeReader, "read_raw", no_reads)
    again = analyse(open_checkpoint(str(pa)), opts)
    assert [t.stats for t in again.tensors] == [t.stats for t in first.tensors]
    d2 = compare(open_checkpoint(str(pa)), open_checkpoint(str(pb)), opts)
    assert [t.change for t in d2.tensors] == [t.change for t in d1.tensors]
    with pytest.raises(Exception, match="cache holds it"):  # without the cache the file is read
        analyse(open_checkpoint(str(pa)), Options(jobs=1))


def test_a_file_rewritten_in_place_with_its_old_size_and_mtime_is_a_miss(tmp_path, rng):
    """Same path, size, mtime and inode (rewritten in place, mtime set back as unzip or a reproducible
    archive does): the old key matched and a stale summary let `check` pass a file holding a NaN (found by
    review). The key holds the ctime too, which no tool can set back."""
    from click.testing import CliRunner

    from wdist.cli.main import cli

    p = tmp_path / "m.safetensors"
    save_file({"fc.weight": np.ones((64, 32), np.float32)}, str(p))
    os.utime(p, ns=(315532800 * 10**9, 315532800 * 10**9))  # 1980-01-01, as in a zip
    env = {"WDIST_CACHE_DIR": str(tmp_path / "cache")}
    rule = ["check", str(p), "--no-config", "--rule", "model: nan_count == 0"]
    assert CliRunner().invoke(cli, rule, env=env).exit_code == 0
    inode = p.stat().st_ino
    w = np.full((64, 32), 7.0, np.float32)
    w[3, 3] = np.nan
    save_file({"fc.weight": w}, str(tmp_path / "new.safetensors"))
    data = (tmp_path / "new.safetensors").read_bytes()
    assert len(data) == p.stat().st_size
    with open(p, "r+b") as f:  # in place: the inode stays
        f.write(data)
    os.utime(p, ns=(315532800 * 10**9, 315532800 * 10**9))
    assert p.stat().st_ino == inode
    r = CliRunner().invoke(cli, rule, env=env)
    assert r.exit_code == 1, r.output  # the NaN is seen


@pytest.mark.parametrize("field, value", [("nans", "x"), ("mean", [1, 2]), ("numel", None), ("n", 1e30),
                                          ("n", 1 << 70), ("exact_bins", 3)])
def test_cached_fields_of_the_wrong_type_are_a_miss(tmp_path, rng, field, value):
    """A well-formed bundle whose values have the wrong types (written by something else, or damaged where
    the npz/JSON layer cannot tell) made every later run fail with a TypeError naming the checkpoint."""
    ref = _ckpt(tmp_path, rng)
    cache = SummaryCache(str(tmp_path / "cache"))
    key = tensor_key(ref, 1 << 20)
    cache.put(key, summarize_tensor(ref))
    bundle = next(iter(cache._bundles.values()))
    (_cls, values), = bundle.values()
    values[field] = value
    cache.flush()
    fresh = SummaryCache(str(tmp_path / "cache"))
    assert fresh.get(key, Summary) is None  # recomputed, and the put rewrites the entry
    fresh.put(key, summarize_tensor(ref))
    fresh.flush()
    _same(SummaryCache(str(tmp_path / "cache")).get(key, Summary), summarize_tensor(ref))


def test_cache_clear_and_eviction_touch_only_the_caches_own_files(tmp_path):
    import numpy as np

    from wdist.analyzers.cache import SummaryCache
    from wdist.analyzers.summary import Summary

    d = tmp_path / "shared"
    (d / "otherapp").mkdir(parents=True)
    np.savez(d / "otherapp" / "data.npz", x=np.ones(3))
    (d / "ab").mkdir()
    np.savez(d / "ab" / "mine-looking.npz", x=np.ones(3))  # in a hex folder, but not a bundle name
    c = SummaryCache(str(d), max_bytes=0)
    c.put({"file": {"path": "x", "size": 1, "version": "1"}, "name": "w"}, Summary())
    c.flush()  # max_bytes 0: eviction runs and removes only its own bundle
    assert (d / "otherapp" / "data.npz").exists() and (d / "ab" / "mine-looking.npz").exists()
    c.put({"file": {"path": "x", "size": 1, "version": "1"}, "name": "w"}, Summary())
    c.max_bytes = 1 << 30
    c.flush()
    assert c.info()["files"] == 1 and c.clear() == 1
    assert (d / "otherapp" / "data.npz").exists() and (d / "ab" / "mine-looking.npz").exists()


@pytest.mark.parametrize("tamper", ["neg", "big", "hist2d", "histsum", "nan_mean"])
def test_an_entry_with_impossible_values_is_a_miss(tmp_path, tamper):
    import numpy as np
    from safetensors.numpy import save_file

    from wdist.analyzers.cache import SummaryCache, tensor_key
    from wdist.analyzers.engine import pack, summarize_tensor
    from wdist.loaders import open_checkpoint

    p = tmp_path / "a.safetensors"
    save_file({"w": np.linspace(-1, 1, 4096, dtype=np.float32).reshape(64, 64)}, str(p))
    c = SummaryCache(str(tmp_path / "cache"))
    with open_checkpoint(str(p)) as ck:
        ref = ck.tensors[0]
        key = tensor_key(ref, 1 << 20)
        s = pack(summarize_tensor(ref))
        assert s.plausible()
        if tamper == "neg":
            s.n = -5
        elif tamper == "big":
            s.n = 2 ** 62
        elif tamper == "hist2d":
            s.hist = np.ones((3, 3), dtype=np.float64)
        elif tamper == "histsum":
            s.hist = s.hist.copy()
            s.hist[1, 0] += 7
        else:
            s.mean = float("nan")
        c.put(key, s)
        c.flush()
        assert SummaryCache(str(tmp_path / "cache")).get(key, type(s)) is None


@pytest.mark.parametrize("kind", ["fifo", "devzero", "huge"])
def test_special_files_in_a_bundles_place_are_never_read(tmp_path, rng, kind):
    """The cache folder may be shared: a FIFO there blocked every run, a link to /dev/zero read without end."""
    ref = _ckpt(tmp_path, rng)
    cache = SummaryCache(str(tmp_path / "cache"), max_bytes=1 << 20)
    key = tensor_key(ref, 1 << 20)
    cache.put(key, summarize_tensor(ref))
    cache.flush()
    (path, _, _), = cache.entries()
    os.unlink(path)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "devzero":
        os.symlink("/dev/zero", path)
    else:
        with open(path, "wb") as f:
            f.truncate(2 << 20)  # beyond the cache's own size bound
    fresh = SummaryCache(str(tmp_path / "cache"), max_bytes=1 << 20)
    assert fresh.get(key, Summary) is None  # a miss, at once
    fresh.put(key, summarize_tensor(ref))
    fresh.flush()
    _same(SummaryCache(str(tmp_path / "cache")).get(key, Summary), summarize_tensor(ref))


def test_clear_says_what_it_could_not_remove(tmp_path, rng, monkeypatch):
    from wdist.loaders.errors import UsageError

    ref = _ckpt(tmp_path, rng)
    cache = SummaryCache(str(tmp_path / "cache"))
    cache.put(tensor_key(ref, 1 << 20), summarize_tensor(ref))
    cache.flush()

    def refuse(p, *a, **k):  # a read-only cache folder (root ignores chmod, so the refusal is simulated)
        raise PermissionError(30, "Read-only file system", p)

    monkeypatch.setattr(os, "unlink", refuse)
    with pytest.raises(UsageError, match=r"removed 0 files; 1 could not be removed \(Read-only file system\)"):
        cache.clear()
