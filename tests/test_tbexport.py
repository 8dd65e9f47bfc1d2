"""TensorBoard export: the events written from real trend / inspect reports, read back with TensorBoard."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from wdist.analyzers.histogram import Histogram
from wdist.analyzers.inspect import Options, analyse
from wdist.analyzers.trend import run
from wdist.loaders.errors import MissingDependencyError
from wdist.loaders.registry import open_checkpoint
from wdist.tbexport import histogram_fields, require, write_inspect, write_trend

pytest.importorskip("tensorboardX")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def _model(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.LayerNorm(32), nn.Linear(32, 4))
    sd = {k: v.detach().clone() for k, v in m.state_dict().items()}
    # one weight far out on each side, beyond the histogram range (|w| p99.9): they land in
    # the under/overflow counts, which must still reach TensorBoard's buckets
    sd["0.weight"][0, 0] = -40.0 - seed
    sd["0.weight"][1, 1] = 50.0 + seed
    sd["2.bias"].uniform_(-0.1, 0.1)
    return sd


@pytest.fixture(scope="module")
def run_paths(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    d = tmp_path_factory.mktemp("tbrun")
    paths = []
    for i, step in enumerate((100, 200, 300)):
        sd = _model(i)
        if i == 2:  # a run may switch format midway; trend reads both
            p = d / f"step={step}.safetensors"
            save_file({k: v.contiguous() for k, v in sd.items()}, str(p))
        else:
            p = d / f"step={step}.pt"
            torch.save(sd, p)
        paths.append(str(p))
    return paths


def _acc(logdir: Path) -> Any:
    ea = event_accumulator.EventAccumulator(
        str(logdir), size_guidance={event_accumulator.HISTOGRAMS: 0, event_accumulator.SCALARS: 0})
    ea.Reload()
    return ea


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)  # scalars travel as float32


def test_trend_events(run_paths: list[str], tmp_path: Path) -> None:
    rep = run(run_paths, Options(jobs=1))
    assert [p.step for p in rep.checkpoints] == [100, 200, 300]
    out = write_trend(rep, str(tmp_path))
    ea = _acc(tmp_path)
    tags = ea.Tags()
    assert sorted(tags["histograms"]) == sorted(f"layer/{lt.name}" for lt in rep.layers) == \
        ["layer/0", "layer/2", "layer/3"]
    assert out.steps == [100, 200, 300] and out.histograms == 9
    sd = _model(0)
    # the ridgeline of a layer is its shape group: the Linear weights, the LayerNorm gamma
    population = {"0": sd["0.weight"].numel(), "2": sd["2.weight"].numel(), "3": sd["3.weight"].numel()}
    for lt in rep.layers:
        events = ea.Histograms(f"layer/{lt.name}")
        assert [e.step for e in events] == [100, 200, 300]
        for e, h in zip(events, lt.ridgeline):
            hv = e.histogram_value
            assert h is not None
            assert sum(hv.bucket) == hv.num == population[lt.name]
            assert sum(hv.bucket) == sum(h.counts) + h.underflow + h.overflow
            assert len(hv.bucket) == len(hv.bucket_limit)
            assert list(hv.bucket_limit) == sorted(hv.bucket_limit)
            assert hv.min <= hv.bucket_limit[0] and hv.max <= hv.bucket_limit[-1] + 1e-9
    # the outliers really went through the edge buckets
    first = rep.layers[0].ridgeline[0]
    assert first is not None and first.underflow >= 1 and first.overflow >= 1
    hv0 = ea.Histograms("layer/0")[0].histogram_value
    assert hv0.bucket[0] == first.underflow and hv0.bucket[-1] == first.overflow
    assert hv0.bucket_limit[-1] > first.edges[-1] and hv0.min < first.edges[0]
    # scalars: every chosen metric of every layer and of the model, equal to the report's series
    want = {f"layer/{lt.name}/{m}": s for lt in rep.layers for m, s in lt.series.items()}
    want.update({f"model/{m}": s for m, s in rep.model.items()})
    assert set(tags["scalars"]) == {t for t, s in want.items() if any(v is not None for v in s)}
    assert out.scalars == sum(v is not None for s in want.values() for v in s)
    for tag, series in want.items():
        if tag not in tags["scalars"]:
            continue
        got = {e.step: e.value for e in ea.Scalars(tag)}
        expect = {st: v for st, v in zip((100, 200, 300), series) if v is not None}
        assert got.keys() == expect.keys(), tag
        assert all(_close(got[k], expect[k]) for k in expect), tag
    assert "layer/0/l2_norm" in tags["scalars"] and "model/kurtosis" in tags["scalars"]


def test_trend_dashboard_view(run_paths: list[str], tmp_path: Path) -> None:
    """What the histogram dashboard draws: TensorBoard's migration of the events to [left, right, count]
    buckets, none of them backwards, counts summing to the element count."""
    from tensorboard.backend.event_processing import plugin_event_accumulator as pea
    from tensorboard.util import tensor_util

    rep = run(run_paths, Options(jobs=1))
    write_trend(rep, str(tmp_path))
    ea = pea.EventAccumulator(str(tmp_path), size_guidance={pea.TENSORS: 0})
    ea.Reload()
    assert sorted(ea.PluginTagToContent("histograms")) == ["layer/0", "layer/2", "layer/3"]
    for ev in ea.Tensors("layer/0"):
        b = tensor_util.make_ndarray(ev.tensor_proto)
        assert b.shape[1] == 3 and b.shape[0] >= 3
        assert np.all(b[:, 0] <= b[:, 1])
        assert int(b[:, 2].sum()) == 64 * 32


def test_trend_tensors_and_metric_choice(run_paths: list[str], tmp_path: Path) -> None:
    rep = run(run_paths, Options(jobs=1), chosen=("l2_norm", "zero_fraction"))
    write_trend(rep, str(tmp_path / "all"), tensors=True)
    tags = _acc(tmp_path / "all").Tags()["scalars"]
    assert {"tensor/0.weight/l2_norm", "tensor/2.bias/zero_fraction", "model/l2_norm"} <= set(tags)
    assert not any(t.endswith("/kurtosis") for t in tags)
    write_trend(rep, str(tmp_path / "one"), metrics=["l2_norm"])
    tags = _acc(tmp_path / "one").Tags()["scalars"]
    assert tags and all(t.endswith("/l2_norm") for t in tags) and not any(t.startswith("tensor/") for t in tags)


def test_trend_steps_default_to_index_and_skip_unreadable(tmp_path: Path) -> None:
    paths = []
    for i, name in enumerate(("alpha.pt", "beta.pt", "gamma.pt")):
        torch.save(_model(i), tmp_path / name)
        paths.append(str(tmp_path / name))
    (tmp_path / "broken.pt").write_bytes(b"PK\x03\x04 not really a zip")
    paths.insert(1, str(tmp_path / "broken.pt"))
    rep = run(paths, Options(jobs=1), given=True)
    assert [p.step for p in rep.checkpoints] == [None] * 4 and rep.checkpoints[1].error
    out = write_trend(rep, str(tmp_path / "tb"))
    assert out.steps == [1, 3, 4]  # positions in the run, 1-based as in the plots' charts
    ea = _acc(tmp_path / "tb")
    assert [e.step for e in ea.Histograms("layer/3")] == [1, 3, 4]
    assert [e.step for e in ea.Scalars("model/l2_norm")] == [1, 3, 4]


def test_trend_steps_of_a_mixed_run_keep_its_order(tmp_path: Path) -> None:
    """global_step 500, none, 1500: TensorBoard must not get [500, 1, 1500] (b first on its axis)."""
    paths = []
    for i, (name, step) in enumerate((("a.pt", 500), ("b.pt", None), ("c.pt", 1500))):
        sd: dict[str, Any] = {"model": _model(i)}
        if step is not None:
            sd["global_step"] = step
        torch.save(sd, tmp_path / name)
        paths.append(str(tmp_path / name))
    rep = run(paths, Options(jobs=1), given=True)
    assert [p.step for p in rep.checkpoints] == [500, None, 1500]
    assert rep.x_steps() == [1, 2, 3]
    write_trend(rep, str(tmp_path / "tb"))
    assert [e.step for e in _acc(tmp_path / "tb").Histograms("layer/0")] == [1, 2, 3]


def test_trend_histograms_carry_the_exact_extremes(tmp_path: Path) -> None:
    """An outlier far beyond the displayed range: the trend export's max is the real one, as inspect's."""
    paths = []
    for i in (1, 2):
        g = torch.Generator().manual_seed(i)
        w = torch.randn(100, 100, generator=g) * 0.02
        w[0, 0] = 50.0 * i
        torch.save({"fc.weight": w}, tmp_path / f"step-{i}.pt")
        paths.append(str(tmp_path / f"step-{i}.pt"))
    write_trend(run(paths, Options(jobs=1)), str(tmp_path / "tb"))
    for i, e in enumerate(_acc(tmp_path / "tb").Histograms("layer/fc"), 1):
        w = torch.load(paths[i - 1])["fc.weight"].double()
        hv = e.histogram_value
        assert (hv.min, hv.max) == (float(w.min()), float(w.max())) and hv.max == 50.0 * i
        assert math.isclose(hv.sum_squares, float((w ** 2).sum()), rel_tol=1e-6)


def test_tags_with_unencodable_names_are_escaped(tmp_path: Path) -> None:
    sd = {"a\ud800b.weight": torch.randn(4, 4), "ok.weight": torch.randn(4, 4)}
    paths = []
    for i in (1, 2):
        p = tmp_path / f"step-{i}.pt"
        torch.save({k: v * i for k, v in sd.items()}, p)  # torch.save keeps the lone surrogate
        paths.append(str(p))
    write_trend(run(paths, Options(jobs=1)), str(tmp_path / "tb"), tensors=True)
    tags = _acc(tmp_path / "tb").Tags()["histograms"]
    assert "layer/ok" in tags and "layer/a\\ud800b" in tags


def test_inspect_events(tmp_path: Path) -> None:
    sd = _model(1)
    sd["3.weight"][0, 0] = float("nan")  # not a value: left out of the histogram, as out of the metrics
    p = tmp_path / "ckpt.pt"
    torch.save({"state_dict": sd, "global_step": 42}, p)
    rep = analyse(open_checkpoint(str(p)), Options(jobs=1))
    out = write_inspect(rep, str(tmp_path / "tb"), tensors=True)
    assert out.steps == [42]
    ea = _acc(tmp_path / "tb")
    tags = ea.Tags()
    assert sorted(tags["histograms"]) == sorted([f"layer/{lr.name}" for lr in rep.layers] +
                                                [f"tensor/{t.name}" for t in rep.tensors])
    for t in rep.tensors:
        (e,) = ea.Histograms(f"tensor/{t.name}")
        hv = e.histogram_value
        assert e.step == 42
        finite = sd[t.name][torch.isfinite(sd[t.name])].double()
        assert sum(hv.bucket) == hv.num == t.stats["finite_count"] == finite.numel()
        assert hv.min == t.stats["min"] == float(finite.min()) and hv.max == t.stats["max"]
        assert math.isclose(hv.sum, float(finite.sum()), rel_tol=1e-6, abs_tol=1e-6)
        assert math.isclose(hv.sum_squares, float((finite ** 2).sum()), rel_tol=1e-6)
    assert ea.Histograms("tensor/3.weight")[0].histogram_value.num == 4 * 32 - 1
    # a layer's histogram is its weights (shape group) alone, with that group's exact min and sums
    w = sd["0.weight"].double()
    hv = ea.Histograms("layer/0")[0].histogram_value
    assert hv.num == sum(hv.bucket) == w.numel() and hv.min == float(w.min()) and hv.max == float(w.max())
    assert math.isclose(hv.sum_squares, float((w ** 2).sum()), rel_tol=1e-6)
    (ev,) = ea.Scalars("layer/0/l2_norm")
    assert ev.step == 42 and _close(ev.value, rep.layers[0].stats["l2_norm"])
    assert _close(ea.Scalars("model/std")[0].value, rep.model.stats["std"])
    write_inspect(rep, str(tmp_path / "tb7"), step=7)
    tags7 = _acc(tmp_path / "tb7").Tags()
    assert not any(t.startswith("tensor/") for t in tags7["histograms"] + tags7["scalars"])
    assert [e.step for e in _acc(tmp_path / "tb7").Histograms("layer/2")] == [7]


def test_histogram_fields_without_stats() -> None:
    h = Histogram([-1.0, -0.5, 0.0, 0.5, 1.0], [0, 3, 0, 2], underflow=1, overflow=4)
    f = histogram_fields(h)
    assert f is not None
    assert f.counts == [1, 0, 3, 0, 2, 4] and f.num == 10
    assert f.limits == [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5] and f.min == -1.5 and f.max == 1.5
    inner = histogram_fields(Histogram([-1.0, 0.0, 1.0], [0, 5], 0, 0), {"finite_count": 5, "min": 0.2,
                                                                       "max": 0.9, "mean": 0.5, "l2_norm": 2.0})
    assert inner is not None and inner.counts == [5] and inner.limits == [1.0]
    assert (inner.min, inner.max, inner.sum, inner.sum_squares) == (0.2, 0.9, 2.5, 4.0)
    # stats of another population (a different count) are not trusted
    other = histogram_fields(Histogram([-1.0, 0.0, 1.0], [0, 5], 0, 0), {"finite_count": 6, "min": -3.0})
    assert other is not None and other.min == 0.0
    assert histogram_fields(Histogram([-1.0, 1.0], [0], 0, 0)) is None


def test_missing_tensorboardx(run_paths: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rep = run(run_paths[:1], Options(jobs=1))
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails as when it is not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'wdist\[tensorboard\]'"):
        write_trend(rep, str(tmp_path / "tb"))
    with pytest.raises(MissingDependencyError, match="tensorboardX"):
        require()
    assert not (tmp_path / "tb").exists()


def test_trend_exact_fields_and_tensor_histograms_when_the_report_has_them(run_paths: list[str],
                                                                          tmp_path: Path) -> None:
    """The fields a trend report can carry (see the report to the lead): per-step stats of each ridgeline's
    population, and per-tensor histograms; with them the outer edges and sums are exact."""
    rep = run(run_paths, Options(jobs=1))  # the report's own ridge_stats: nothing is injected
    sds = [_model(i) for i in range(3)]
    reps = [analyse(open_checkpoint(p), Options(jobs=1)) for p in run_paths]
    rep.tensor_histograms = {t.name: [(next(u for u in r.tensors if u.name == t.name).histogram,  # type: ignore[attr-defined]
                                       next(u for u in r.tensors if u.name == t.name).stats) for r in reps]
                             for t in reps[0].tensors}
    write_trend(rep, str(tmp_path), tensors=True)
    ea = _acc(tmp_path)
    for i, e in enumerate(ea.Histograms("layer/0")):
        w = sds[i]["0.weight"].double()
        hv = e.histogram_value
        assert hv.min == float(w.min()) == -40.0 - i and hv.max == float(w.max()) == 50.0 + i
        assert hv.bucket_limit[-1] == hv.max  # the overflow bucket ends at the true max
        assert math.isclose(hv.sum_squares, float((w ** 2).sum()), rel_tol=1e-6)
        assert math.isclose(hv.sum, float(w.sum()), rel_tol=1e-6, abs_tol=1e-6)
    (e0, e1, e2) = ea.Histograms("tensor/2.bias")
    assert [e.step for e in (e0, e1, e2)] == [100, 200, 300] and sum(e2.histogram_value.bucket) == 32
    assert e2.histogram_value.min == float(sds[2]["2.bias"].min())
