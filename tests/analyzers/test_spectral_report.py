"""The --spectral report: which tensors are analysed or skipped (with reasons), the reading's notes, worker
independence, check rules on spectral metrics, trend crossing notes and the ESD figures, on checkpoints
written here with safetensors and torch.save."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from wdist.analyzers import engine
from wdist.analyzers.check import evaluate, needs_spectral, parse_rule
from wdist.analyzers.inspect import Options, analyse
from wdist.analyzers.spectral import SPECTRAL_METRICS, SpectralOptions
from wdist.analyzers.spectral_report import (
    SpectralReport,
    layer_notes,
    spectral_report,
    spectral_series,
    spectral_trend_notes,
)
from wdist.loaders import open_checkpoint
from wdist.loaders.errors import UsageError


def _with_spectrum(rng: np.random.Generator, lam: np.ndarray, n: int) -> np.ndarray:
    m = lam.size
    u = np.linalg.qr(rng.standard_normal((n, m)))[0]
    v = np.linalg.qr(rng.standard_normal((m, m)))[0]
    return (u * np.sqrt(lam)) @ v.T


def _model() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    init = torch.nn.Linear(300, 600)                          # PyTorch's Kaiming-uniform initialisation
    u = np.linalg.qr(rng.standard_normal((500, 4)))[0]
    v = np.linalg.qr(rng.standard_normal((250, 4)))[0]
    planted = rng.standard_normal((500, 250)) * 0.05 + (u * [8.0, 6.0, 5.0, 4.0]) @ v.T  # rank-4 signal in noise
    heavy = rng.standard_t(1.5, size=(500, 250)) * 0.01      # heavy-tailed entries: ESD tail alpha ≈ 1 + 1.5/2
    q = (np.arange(300) + 0.5) / 300                          # a tail drawn from a Pareto of exponent 9
    steep = _with_spectrum(rng, np.concatenate([rng.uniform(0.01, 0.6, 150), q ** (-1 / 8.0)]), 600)
    f32 = torch.float32
    return {"init.weight": init.weight.detach().clone(), "init.bias": init.bias.detach().clone(),
            "planted.weight": torch.tensor(planted, dtype=f32), "heavy.weight": torch.tensor(heavy, dtype=f32),
            "steep.weight": torch.tensor(steep, dtype=f32), "ids.weight": torch.arange(12).reshape(3, 4),
            "conv.weight": torch.nn.Conv2d(16, 32, 3).weight.detach().clone(),
            "wide.weight": torch.tensor(rng.standard_normal((40, 260)), dtype=f32)}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("spectral") / "model.safetensors"
    save_file(_model(), str(path))
    return path


@pytest.fixture(scope="module")
def report(ckpt: Path) -> SpectralReport:
    ck = open_checkpoint(str(ckpt))
    return spectral_report(ck, ck.tensors, SpectralOptions(max_side=200), jobs=1)


def test_selection_and_skips_with_reasons(report: SpectralReport) -> None:
    assert set(report.tensors) == {"init.weight", "planted.weight", "heavy.weight", "steep.weight", "conv.weight",
                                   "wide.weight"}
    assert list(report.layers) == ["conv", "heavy", "init", "planted", "steep", "wide"]  # checkpoint order
    skipped = dict(s.split(": ", 1) for s in report.skipped)
    # A rank-1 bias is not a matrix and not listed; an integer tensor and the matrices over max_side are.
    assert set(skipped) == {"ids.weight", "init.weight", "planted.weight", "heavy.weight", "steep.weight"}
    assert skipped["ids.weight"].startswith("role other") or "not floating point" in skipped["ids.weight"]
    assert skipped["init.weight"].startswith("alpha not computed: smaller side 300 > max_side 200")
    assert report.tensors["init.weight"]["method"] == "randomized"
    assert report.tensors["init.weight"]["spectral_norm"] > 0 and report.tensors["init.weight"]["alpha"] is None
    assert report.notes["init"][0].startswith("alpha not computed: smaller side 300 > max_side 200")
    assert report.tensors["conv.weight"]["mode"] == "per-kernel" and report.tensors["conv.weight"]["n_evals"] == 144
    assert report.options["max_side"] == 200 and report.options["keras_layout"] is False
    text = json.dumps(report.to_dict(), allow_nan=False)
    assert "eigenvalues\"" not in text  # raw spectra stay out of the JSON
    assert SpectralReport.from_dict(json.loads(text)) == report


@pytest.fixture(scope="module")
def full(ckpt: Path) -> SpectralReport:
    ck = open_checkpoint(str(ckpt))
    return spectral_report(ck, ck.tensors, SpectralOptions(), jobs=1)


def test_random_init_recognised_and_alpha_not_interpreted(full: SpectralReport) -> None:
    for layer in ("init", "conv", "wide"):
        d = full.layers[layer]
        assert d["looks_random"] is True and d["mp_spikes"] == 0, layer
        assert len(full.notes[layer]) == 1 and full.notes[layer][0].startswith(
            "looks random: no spikes above the Marchenko–Pastur edge"), layer
        assert "is not interpreted" in full.notes[layer][0]
    assert full.layers["init"]["alpha"] > 6  # the MP bulk fitted as a power law: an alpha that means nothing here
    assert not any("> 6" in n for n in full.notes["init"])
    assert "weak evidence" not in full.notes["init"][0]


def test_planted_signal_gives_spikes_and_note(full: SpectralReport) -> None:
    d = full.layers["planted"]
    assert d["mp_spikes"] == 4 and d["looks_random"] is False
    assert any(n.startswith("4 eigenvalues above the Marchenko–Pastur bulk edge") for n in full.notes["planted"])


def test_out_of_range_alpha_notes(full: SpectralReport) -> None:
    heavy, steep = full.layers["heavy"], full.layers["steep"]
    assert heavy["alpha"] < 2 and heavy["tail_trusted"] and heavy["looks_random"] is False
    assert any(n.startswith(f"alpha {heavy['alpha']:.2f} < 2: very heavy spectral tail") for n in full.notes["heavy"])
    assert steep["alpha"] > 6 and steep["tail_trusted"] and steep["looks_random"] is False
    assert any(n.startswith(f"alpha {steep['alpha']:.2f} > 6: under-trained") for n in full.notes["steep"])
    assert not any("alpha" in n for n in full.notes["planted"])  # 2 <= alpha <= 6 and trusted: nothing to say
    assert 2 <= full.layers["planted"]["alpha"] <= 6


def test_notes_of_short_tails_and_missing_spectra() -> None:
    base = {"method": "gram", "alpha": 7.5, "tail_count": 12, "tail_trusted": False, "mp_spikes": 1,
            "looks_random": False, "mp_edge": 2.0, "spectral_norm": 9.0, "matrix_shape": [64, 16]}
    notes = layer_notes(base)
    assert notes[0] == "alpha 7.50: tail has only 12 eigenvalues (< 50): the fit is unreliable"
    assert notes[1].startswith("alpha 7.50 > 6 (unreliable fit, see above): under-trained")
    assert notes[2].startswith("1 eigenvalue above the Marchenko–Pastur bulk edge λ+ = 2")
    rnd = layer_notes({**base, "mp_spikes": 0, "looks_random": True, "mp_ks": 0.2})
    assert len(rnd) == 1 and "only 16 singular values per matrix, so this is weak evidence" in rnd[0]
    assert layer_notes({"method": "none", "alpha_skipped": "the tensor has NaN or Inf values"}) == [
        "no spectral metrics: the tensor has NaN or Inf values"]


def test_jobs_do_not_change_the_report(ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ck = open_checkpoint(str(ckpt))
    one = spectral_report(ck, ck.tensors, SpectralOptions(), jobs=1)
    monkeypatch.setattr(engine, "PARALLEL_MIN_BYTES", 0)  # so that jobs=2 really uses worker processes
    seen: list[tuple[int, int]] = []
    two = spectral_report(ck, ck.tensors, SpectralOptions(), jobs=2, progress=lambda d, t: seen.append((d, t)))
    assert json.dumps(one.to_dict()) == json.dumps(two.to_dict())
    assert seen[-1][0] == seen[-1][1] > 0 and len(seen) == len(one.tensors)


@pytest.mark.parametrize("jobs", [1, 2])
def test_blas_pinned_once_for_the_pass_and_restored(ckpt: Path, monkeypatch: pytest.MonkeyPatch, jobs: int) -> None:
    # The pass pins BLAS to one thread in this process for its whole length (workers forked from it inherit
    # that), instead of per tensor; every analysis must see one thread, and the caller's setting comes back.
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from wdist.analyzers import spectral_report as mod

    real = mod.analyze_tensor

    def probe(ref: Any, opts: Any, keras: bool = False) -> Any:
        threads = {i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"}
        assert threads <= {1}, f"BLAS ran with {threads} threads for {ref.name}"
        return real(ref, opts, keras=keras)

    monkeypatch.setattr(mod, "analyze_tensor", probe)  # inherited by the forked workers
    monkeypatch.setattr(engine, "PARALLEL_MIN_BYTES", 0)
    ck = open_checkpoint(str(ckpt))
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        before = [(i["internal_api"], i["num_threads"]) for i in threadpoolctl.threadpool_info()]
        rep = spectral_report(ck, ck.tensors, SpectralOptions(), jobs=jobs)
        assert [(i["internal_api"], i["num_threads"]) for i in threadpoolctl.threadpool_info()] == before
    assert rep.tensors


def test_torch_save_checkpoint_and_layer_pooling(tmp_path: Path) -> None:
    torch.manual_seed(1)
    lstm = torch.nn.LSTM(24, 40)
    path = tmp_path / "lstm.pt"
    torch.save({f"rnn.{k}": v for k, v in lstm.state_dict().items()}, str(path))
    ck = open_checkpoint(str(path))
    rep = spectral_report(ck, ck.tensors, SpectralOptions(), jobs=1)
    assert set(rep.tensors) == {"rnn.weight_ih_l0", "rnn.weight_hh_l0"}
    assert list(rep.layers) == ["rnn"]
    layer = rep.layers["rnn"]
    assert layer["mode"] == "layer" and layer["n_evals"] == 24 + 40 and layer["matrices"] == 2
    assert layer["looks_random"] is True and rep.skipped == []


def test_check_rules_on_spectral_metrics(ckpt: Path, full: SpectralReport) -> None:
    ck = open_checkpoint(str(ckpt))
    insp = analyse(ck, Options(jobs=1))
    rules = [parse_rule(t) for t in ("*.weight: alpha <= 6", "planted.*: mp_spikes >= 4", "heavy.*: alpha >= 2",
                                     "nothing*: stable_rank > 1", "*: alpha >= 0")]
    assert needs_spectral(rules) and not needs_spectral([parse_rule("*: std > 0")])
    res = {r.rule: r for r in evaluate(rules, insp, None, allow_empty=False, spectral=full)}
    fail = res["*.weight: alpha <= 6"]
    assert fail.verdict == "fail" and fail.matched == 6
    assert [o.name for o in fail.failures] == sorted((o.name for o in fail.failures),
                                                     key=lambda n: -full.tensors[n]["alpha"])
    assert {o.name for o in fail.failures} == {n for n, d in full.tensors.items() if d["alpha"] > 6}
    assert "steep.weight" in {o.name for o in fail.failures}
    assert res["planted.*: mp_spikes >= 4"].verdict == "pass"
    assert res["heavy.*: alpha >= 2"].verdict == "fail"
    assert res["nothing*: stable_rank > 1"].verdict == "error"
    assert "spectral metrics" in res["nothing*: stable_rank > 1"].message
    assert res["*: alpha >= 0"].matched == 6  # only analysed matrices, not the bias or the integer tensor
    with pytest.raises(UsageError, match="add --spectral"):
        evaluate(rules[:1], insp, None, allow_empty=False)
    # Non-spectral rules still work without a spectral report.
    assert evaluate([parse_rule("*.weight: nan_count == 0")], insp, None, False)[0].verdict == "pass"


@pytest.mark.parametrize("text, match", [
    ("model: alpha <= 6", "no model-wide value"), ("*: alpha_x <= 6", "unknown metric"),
    ("*: mp_spikes has 1", "flags only"), ("*: alpha <= six", "not a number"),
])
def test_invalid_spectral_rules(text: str, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        parse_rule(text)
    assert all(parse_rule(f"*.weight: {m} >= 0").is_spectral for m in SPECTRAL_METRICS)


def test_trend_notes_on_range_crossings() -> None:
    labels = ["epoch 1", "epoch 2", "epoch 5", "epoch 10"]
    notes = spectral_trend_notes({"fc": [4.0, 5.1, 6.4, 5.0], "conv": [1.5, None, 2.5, 2.6],
                                  "emb": [7.0, 1.9, 1.8, None], "attn": [3.0, 3.5, None, 4.0]}, labels)
    assert notes == ["fc: alpha left the usual range (above it) at epoch 5: 5.10 -> 6.40",
                     "fc: alpha entered the usual range at epoch 10: 6.40 -> 5.00",
                     "conv: alpha entered the usual range at epoch 5: 1.50 -> 2.50",
                     "emb: alpha jumped across the usual range (now below it) at epoch 2: 7.00 -> 1.90"]
    with pytest.raises(ValueError, match="labels"):
        spectral_trend_notes({"fc": [1.0]}, labels)


def test_series_from_reports(full: SpectralReport) -> None:
    shifted = SpectralReport.from_dict(full.to_dict())
    shifted.layers["planted"] = {**shifted.layers["planted"], "alpha": 6.5}
    del shifted.layers["heavy"]
    series = spectral_series([full, None, shifted])
    assert series["planted"] == [full.layers["planted"]["alpha"], None, 6.5]
    assert series["heavy"] == [full.layers["heavy"]["alpha"], None, None]
    notes = spectral_trend_notes(series, ["a", "b", "c"])
    assert any(n.startswith("planted: alpha left the usual range (above it) at c:") for n in notes)
    with pytest.raises(ValueError, match="unknown spectral metric"):
        spectral_series([full], "kurtosis")


def test_esd_figures_render_with_pages(full: SpectralReport) -> None:
    pytest.importorskip("matplotlib")
    from wdist.spectral_plots import PER_PAGE, esd_figure

    figs = esd_figure(full)
    assert len(figs) == 1 and len(figs[0].axes) == len(full.layers) == 6
    planted = next(ax for ax in figs[0].axes if ax.get_title().startswith("planted"))
    assert planted.get_xscale() == "log" and planted.get_yscale() == "log"
    labels = sorted(t.get_text() for t in planted.get_legend().get_texts())
    assert len(labels) == 3 and labels[0] == "ESD"
    assert labels[1].startswith("MP edge λ+=") and labels[1].endswith("(4 spikes)")
    assert labels[2] == f"power law α={full.layers['planted']['alpha']:.2f} ({full.layers['planted']['tail_count']} in tail)"
    # 13 layers, some with names that mathtext would choke on: two pages, 12 + 1 panels, all rendered.
    many = SpectralReport(layers={f"l$\\undefinedcmd{i}$": full.layers["planted"] for i in range(12)}
                          | {"no$esd": full.layers["planted"] | {"esd_histogram": None}})
    pages = esd_figure(many)
    assert [len(f.axes) for f in pages] == [PER_PAGE, 1]
    for f in pages:
        buf = io.BytesIO()
        f.savefig(buf, format="png", dpi=40)
        assert buf.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
    # figure text is escaped as the terminal is (analyzers/text.safe): a backslash that could start an
    # escape is doubled, `$` is literal
    assert pages[0].axes[0].get_title().startswith("l\\$\\\\undefinedcmd0\\$")
    assert pages[1].axes[0].get_title() == "no\\$esd"
    assert [len(f.axes) for f in esd_figure(many, ["no$esd"])] == [1]
    assert esd_figure(SpectralReport()) == []
    with pytest.raises(ValueError, match="no spectral metrics"):
        esd_figure(full, ["missing"])


def test_esd_titles_escape_names_as_every_other_figure_does(full: SpectralReport) -> None:
    """Titles come from plots._label (text.safe): distinct names give distinct titles (a newline and a
    backslash-n did not), invisible characters (a Hangul filler, a variation selector, a soft hyphen) are
    shown as escapes."""
    pytest.importorskip("matplotlib")
    from wdist.plots import _label
    from wdist.spectral_plots import esd_figure

    names = ["a\nb", "a\\nb", "h\u115f", "v\ufe0fs", "soft\xadhyphen", "l$x$"]
    rep = SpectralReport(layers={n: full.layers["planted"] for n in names})
    titles = [ax.get_title() for ax in esd_figure(rep)[0].axes]
    assert titles == [_label(n) for n in names]
    assert len(set(titles)) == len(names)
    for t in titles:
        assert not any(c in t for c in "\n\u115f\ufe0f\xad")
