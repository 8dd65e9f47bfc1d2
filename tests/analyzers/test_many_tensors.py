"""Many tiny tensors: per-tensor cost stays small (time and memory), and the sparse histogram path gives
exactly what the dense 65,536-bin path gives."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from wdist.analyzers import bins, engine, histogram, metrics
from wdist.analyzers.inspect import Options, _Pool, _sparsify, analyse
from wdist.analyzers.metrics import NearZero
from wdist.analyzers.summary import SAMPLE_MAX, Summary, summarize_chunk
from wdist.loaders import open_checkpoint

N_TINY = 10_000


def _tensor(seed: int, shape: tuple[int, ...] = (4, 4)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _summary(x: np.ndarray, exact: bool = False) -> Summary:
    s = summarize_chunk(x.ravel(), exact)
    s.tensors = 1
    return s


def _packed(s: Summary) -> Summary:
    out = copy.copy(s)
    return _sparsify(out)


def _cases() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    sparse = rng.standard_normal(3000).astype(np.float32)
    sparse[rng.random(3000) < 0.8] = 0
    bad = rng.standard_normal(100).astype(np.float32)
    bad[[3, 7]] = [np.nan, np.inf]
    return [_tensor(1), _tensor(2, (300, 300)), sparse, bad, np.full(64, 0.5, np.float32),
            np.zeros(16, np.float32), np.array([1e-42, 0.0, -3.0, 2.0], np.float32),
            (rng.standard_t(2, 5000) * 0.1).astype(np.float32), -np.abs(_tensor(3, (50,)))]


@pytest.mark.parametrize("i", range(9))
def test_sparse_histogram_gives_the_dense_results_exactly(i: int) -> None:
    x = _cases()[i]
    dense = _summary(x)
    sparse = _packed(dense)
    assert sparse.hist.ndim == 2 and dense.hist.ndim == 1
    np.testing.assert_array_equal(engine.unpack(copy.copy(sparse)).hist, dense.hist)
    nz = NearZero()
    metrics.finalise(dense, nz)
    metrics.finalise(sparse, nz)
    assert sparse.near_zero == dense.near_zero
    a, b = metrics.compute(dense, nz), metrics.compute(sparse, nz)
    assert a == b
    assert metrics.smallest_nonzero(dense) == metrics.smallest_nonzero(sparse)
    np.testing.assert_array_equal(metrics.nonzero_counts(dense), metrics.nonzero_counts(sparse))
    if dense.n:
        half = histogram.symmetric_range(a["abs_p999"], max_abs=max(abs(dense.min), abs(dense.max)))
        assert histogram.linear(dense.hist, False, half, 64) == histogram.linear(sparse.hist, False, half, 64)
        assert histogram.log_abs(dense.hist, False) == histogram.log_abs(sparse.hist, False)


def test_sparse_counts_match_numpy_definitions() -> None:
    """Checked against numpy directly, not only against the dense path: bf16-exact values make every
    histogram-derived metric exact."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(1000).astype(np.float32).view(np.uint32) & 0xFFFF0000).view(np.float32)
    s = _packed(_summary(x, exact=True))
    m = metrics.compute(s, NearZero())
    a = np.sort(np.abs(x.astype(np.float64)))
    for name, q in metrics.QUANTILES.items():
        assert m[name] == pytest.approx(float(np.quantile(a, q)), rel=1e-12)
    n = a.size
    gini = float(((2 * np.arange(1, n + 1) - n - 1) * a).sum() / (n * a.sum()))
    assert m["gini"] == pytest.approx(gini, rel=1e-12)
    k = int(np.ceil(0.01 * n))
    assert m["top1pct_l2_mass"] == pytest.approx(float((a[-k:] ** 2).sum() / (a ** 2).sum()), rel=1e-12)


def test_pool_equals_sequential_merge() -> None:
    xs = [_tensor(i, (int(4 + 3 * i), 5)) for i in range(40)] + [_tensor(99, (300, 300))]
    ref = Summary()
    pool = _Pool()
    for x in xs:
        s = _summary(x)
        metrics.finalise(s, NearZero())
        ref.merge(s)
        pool.add(_packed(s))
    got = pool.summary()
    for f in ("n", "numel", "mean", "m2", "m3", "m4", "l1", "sumsq", "min", "max", "zeros", "near_zero", "zn", "z3",
              "z4", "tensors", "finalised", "exact_bins"):
        assert getattr(got, f) == getattr(ref, f), f
    np.testing.assert_array_equal(engine.unpack(got).hist, ref.hist)
    assert got.sample is None and ref.sample is None  # the big tensor ends the kept values


def test_pool_keeps_values_like_merge_and_stays_small() -> None:
    xs = [_tensor(i) for i in range(SAMPLE_MAX // 16)]
    ref = Summary()
    pool = _Pool()
    for x in xs:
        s = _summary(x)
        ref.merge(s)
        pool.add(_packed(s))
    # while open, a pool holds sparse pieces, never a dense 65,536-bin histogram
    assert pool._dense is None and sum(i.nbytes for i in pool._idx) < 300_000
    got = pool.summary()
    assert ref.sample is not None and got.sample is not None
    np.testing.assert_array_equal(got.sample, ref.sample)
    np.testing.assert_array_equal(engine.unpack(got).hist, ref.hist)


def test_sample_bins_are_the_histogram() -> None:
    x = np.concatenate([_tensor(5, (200,)), np.array([0.0, -0.0, 1e-45, -1e-40, 3.4e38], np.float32)])
    s = _summary(x)
    idx, cnt = bins.sample_bins(x)
    dense = np.zeros_like(s.hist)
    dense[idx] = cnt
    np.testing.assert_array_equal(dense, s.hist)
    assert not bins.values(False).flags.writeable


def test_interleaved_layers_give_the_same_layers(tmp_path: Path) -> None:
    """Layers whose tensors interleave (every weight, then every bias) pool exactly as when they are
    adjacent; each open layer is held sparse."""
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    w = {f"m{i}.weight": torch.randn(4, 4, generator=g) for i in range(50)}
    b = {f"m{i}.bias": torch.randn(4, generator=g) for i in range(50)}
    torch.save({**w, **b}, tmp_path / "inter.pt")
    torch.save({k: v for i in range(50) for k, v in ((f"m{i}.weight", w[f"m{i}.weight"]),
                                                     (f"m{i}.bias", b[f"m{i}.bias"]))}, tmp_path / "adj.pt")
    inter = analyse(open_checkpoint(str(tmp_path / "inter.pt")), Options(jobs=1))
    adj = analyse(open_checkpoint(str(tmp_path / "adj.pt")), Options(jobs=1))
    assert [lr.name for lr in inter.layers] == [lr.name for lr in adj.layers] == [f"m{i}" for i in range(50)]
    for a, c in zip(inter.layers, adj.layers):
        assert a.stats == c.stats and a.histogram == c.histogram and a.notes == c.notes
    layer = inter.layers[7]
    both = np.concatenate([w["m7.weight"].numpy().ravel(), b["m7.bias"].numpy().ravel()]).astype(np.float64)
    assert layer.stats["std"] == pytest.approx(both.std(), rel=1e-6)
    assert layer.stats["l2_norm"] == pytest.approx(float(np.sqrt((both ** 2).sum())), rel=1e-6)


_CHILD = textwrap.dedent("""
    import json, resource, sys, time
    resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20))
    from wdist.analyzers.inspect import Options, analyse
    from wdist.loaders import open_checkpoint
    t = time.perf_counter()
    rep = analyse(open_checkpoint(sys.argv[1]), Options(jobs=1))
    took = time.perf_counter() - t
    picks = [int(i) for i in sys.argv[2].split(",")]
    # VmHWM, not ru_maxrss: that one is kept across exec, so it would include the parent's (pytest's) peak
    hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")]
    rss_mb = int(hwm[0].split()[1]) / 1024 if hwm else 0.0
    json.dump({"seconds": took, "tensors": len(rep.tensors), "layers": len(rep.layers), "rss_mb": rss_mb,
               "model": rep.model.stats, "picked": {rep.tensors[i].name: rep.tensors[i].stats for i in picks}},
              sys.stdout)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status; RLIMIT_AS")
def test_ten_thousand_tiny_tensors_are_fast_and_small(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    data = {f"m{i}.weight": rng.standard_normal((4, 4)).astype(np.float32) for i in range(N_TINY)}
    path = tmp_path / "tiny.safetensors"
    save_file(data, str(path))
    picks = [0, 1, 137, 5000, 9999]
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path), ",".join(map(str, picks))], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout)
    assert got["tensors"] == N_TINY and got["layers"] == N_TINY
    # generous bounds for a loaded 2-core machine (about 3 s and 130 MB when idle); the dense path took 93 s
    assert got["seconds"] < 30, got
    assert 0 < got["rss_mb"] < 300, got
    names = sorted(data, key=lambda k: int(k[1:].split(".")[0]))
    for i in picks:
        name = names[i]
        st = got["picked"][name]
        x = data[name].astype(np.float64).ravel()
        a = np.abs(x)
        assert st["numel"] == 16 and st["zero_fraction"] == 0
        assert st["mean"] == pytest.approx(x.mean(), rel=1e-9, abs=1e-12)
        assert st["std"] == pytest.approx(x.std(), rel=1e-9)
        assert st["min"] == x.min() and st["max"] == x.max()
        assert st["l2_norm"] == pytest.approx(float(np.sqrt((x ** 2).sum())), rel=1e-9)
        z = (x - x.mean()) / x.std()
        assert st["kurtosis"] == pytest.approx(float((z ** 4).mean() - 3), rel=1e-7, abs=1e-9)
        assert st["skewness"] == pytest.approx(float((z ** 3).mean()), rel=1e-7, abs=1e-9)
        # float32 values sit at their bin's midpoint: within 2^-8 relative (README)
        for q, key in ((0.5, "abs_p50"), (0.9, "abs_p90")):
            assert st[key] == pytest.approx(float(np.quantile(a, q)), rel=2 ** -8)
    allx = np.concatenate([data[k].astype(np.float64).ravel() for k in names])
    assert got["model"]["numel"] == allx.size
    assert got["model"]["std"] == pytest.approx(allx.std(), rel=1e-9)
    assert got["model"]["max"] == allx.max()


def test_listing_streams_the_same_json(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    import wdist
    from wdist.analyzers.report import Listing

    rng = np.random.default_rng(1)
    save_file({f"blocks.{i}.w\u00e9ight": rng.standard_normal((2, i % 3 + 1)).astype(np.float32) for i in range(3000)},
              str(tmp_path / "m.safetensors"), metadata={"format": "pt", "note": "a\x1b[31m\ud7ff"})
    ls = wdist.ls(str(tmp_path / "m.safetensors"))
    assert len(ls.tensors) == 3000
    want = json.dumps(ls.to_dict(), indent=2, allow_nan=False)
    pieces = list(ls.iter_json(batch=256))
    assert len(pieces) > 10 and "".join(pieces) == want
    # rows given as a list of dicts (the generic path), with odd values
    rows = ls.to_dict()["tensors"]
    rows[0]["aliases"] = ["x", "tab\there", "\ud800"]
    rows[1]["stored_as"] = "Q4_K"
    rows[2]["shape"] = []
    odd = Listing(ls.path, ls.format, ls.variant, ls.parameters, ls.bytes, ls.metadata, [], [], rows)
    want = json.dumps(odd.to_dict(), indent=2, allow_nan=False)
    assert "".join(odd.iter_json(batch=256)) == want
    assert json.loads(want)["tensors"][0]["aliases"][1] == "tab\there"
    empty = Listing("p", "safetensors", "single", 0, 0, {"step": 3}, [], ["w"], [])
    assert "".join(empty.iter_json()) == json.dumps(empty.to_dict(), indent=2, allow_nan=False)


def test_lazy_listing_rows_encode_as_json_does() -> None:
    """A listing made from a checkpoint writes its rows from one template per row: the same text as
    json.dumps of the same rows, for aliases, packed storage, scalars and names that need escaping."""
    from wdist.analyzers.report import Listing, TensorRows
    from wdist.loaders.model import Role, TensorRef

    refs = [TensorRef('a\x1b"\u00e9\ud800', "l", Role.WEIGHT, (2, 3), "float32", None, aliases=("x", "y\u2028")),
            TensorRef("s", "s", Role.OTHER, (), "int64", None),
            TensorRef("q", "q", Role.WEIGHT, (4, 4), "float32", None, stored_as="Q4_K", stored_nbytes=10)]
    ls = Listing("p", "gguf", "single", 34, 10, {}, [], [], TensorRows(refs))
    for indent in (1, 2, 4):
        assert "".join(ls.iter_json(indent=indent, batch=2)) == json.dumps(ls.to_dict(), indent=indent)
    assert ls.tensors == ls.to_dict()["tensors"] and ls.tensors[-1]["stored_as"] == "Q4_K"
    assert ls.tensors[1:] == [ls.tensors[1], ls.tensors[2]] and len(ls.tensors) == 3


def test_tensor_refs_have_no_instance_dict(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    save_file({"a.weight": np.ones((2, 2), np.float32), "b.weight": np.ones(3, np.float32)},
              str(tmp_path / "m.safetensors"))
    a, b = open_checkpoint(str(tmp_path / "m.safetensors")).tensors
    assert not hasattr(a, "__dict__")
    assert a.source == b.source == "m.safetensors"  # the file name
    assert a.source is b.source  # one string for every tensor of a file


def test_trend_ridge_reads_packed_summaries_as_dense_ones() -> None:
    from wdist.analyzers import trend

    packed = []
    for i in range(3):
        s = _summary(_tensor(i, (30, 30)) * (1 + i))
        metrics.finalise(s, NearZero())
        pool = _Pool()
        pool.add(_packed(s))
        packed.append(trend._for_ridge(pool.summary()))
    assert all(p is not None and p.sample is None and p.hist.ndim == 2 for p in packed)
    dense = [engine.unpack(copy.copy(p)) for p in packed]
    assert all(d.hist.ndim == 1 for d in dense)
    got = trend._ridge([*packed, None], 32)
    assert got == trend._ridge([*dense, None], 32)
    assert got[3] is None and sum(got[0].counts) + got[0].underflow + got[0].overflow == 900
    assert all(p.hist.ndim == 2 for p in packed)  # _ridge left them packed


def test_jsonable_fast_paths_give_the_generic_conversion() -> None:
    from dataclasses import dataclass, field

    from wdist.analyzers.report import _generic, jsonable
    from wdist.loaders.model import Role

    @dataclass
    class Row:
        a: float
        b: object
        hidden: int = field(default=0, repr=False)

    odd = [1.5, float("nan"), float("-inf"), np.float64(2.5), np.float32(np.inf), np.int64(7), True, False, None,
           7, -0.0, "s\x1b", Role.BIAS, (1, 2.0, (3,)), [], {1: 2, "k": [np.float16(1.0)]}, np.arange(3),
           Row(1.0, [Row(2.0, None, 5)], 9), 10 ** 30]
    assert json.dumps(jsonable(odd)) == json.dumps(_generic(odd))
    assert jsonable(odd) == _generic(odd)
    assert jsonable(Row) is Row  # a dataclass itself is not converted (neither was it before)
    assert type(jsonable(np.float64(2.5))) is float and type(jsonable(np.int64(7))) is int


def test_encode_writes_what_json_writes() -> None:
    """The list fast paths of _encode (one kind of element joined at once) against json.dumps, and the
    same refusal of NaN/Inf."""
    from wdist.analyzers.report import _encode

    cases = [[0.1, 1e-300, -2.5e300, 5e-324, -0.0], [1, -2, 10 ** 40], ["a", "é\x1b\ud800", ""], [True, False],
             [1, 2.5], [[1.0], [], [{"a": [1, "x"]}]], (1.0, 2.0), {"k": [0.5] * 3, "n": None}, [None, None], []]
    for v in cases:
        for indent in (1, 2, 4):
            assert _encode(v, "", " " * indent) == json.dumps(v, indent=indent, allow_nan=False), (v, indent)
    for bad in ([1.0, float("nan")], [float("inf")], {"x": [2.0, -float("inf")]}):
        with pytest.raises(ValueError, match="Out of range float"):
            _encode(bad, "", "  ")


def test_inspect_report_streams_the_same_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """InspectReport.iter_json writes json.dumps(to_dict(), indent) in pieces, a tensor or layer each, and
    the CLI's --format json writes those pieces (it never builds to_dict()): the same text, with NaN/Inf,
    an empty tensor, names that need escaping and a skipped integer tensor."""
    from click.testing import CliRunner
    from safetensors.numpy import save_file

    import wdist
    from wdist.analyzers.inspect import InspectReport
    from wdist.cli.main import cli

    rng = np.random.default_rng(3)
    data = {f"blocks.{i}.w\u00e9ight\x1b": rng.standard_normal((3, i % 4 + 1)).astype(np.float32) for i in range(300)}
    data["blocks.0.bias"] = np.array([np.nan, np.inf, 1.0], np.float32)
    data["empty.weight"] = np.zeros((0, 4), np.float32)
    data["q.weight"] = np.arange(4, dtype=np.int8)
    save_file(data, str(tmp_path / "m.safetensors"))
    from wdist.loaders.model import Role

    every = analyse(open_checkpoint(str(tmp_path / "m.safetensors")), Options(roles=tuple(Role), jobs=1))
    assert every.skipped == ["q.weight"]
    rep = wdist.inspect(str(tmp_path / "m.safetensors"), jobs=1)
    for r in (every, rep):
        for indent in (None, 0, 1, 2, 4):
            want = json.dumps(r.to_dict(), indent=indent, allow_nan=False)
            assert "".join(r.iter_json(indent)) == want == r.to_json(indent)
    pieces = list(rep.iter_json())
    assert len(pieces) > len(rep.tensors) + len(rep.layers)  # one piece per tensor and per layer at least
    want = rep.to_json() + "\n"

    def no_tree(self: InspectReport) -> None:
        raise AssertionError("the CLI built the whole JSON tree or text")

    monkeypatch.setattr(InspectReport, "to_dict", no_tree)
    monkeypatch.setattr(InspectReport, "to_json", no_tree)  # nor the whole text
    res = CliRunner().invoke(cli, ["inspect", str(tmp_path / "m.safetensors"), "--format", "json", "-j", "1", "-q",
                                   "--no-cache"])
    assert res.exit_code == 0, res.output
    assert res.output == want
