import os
import xml.etree.ElementTree as ET

import pytest
import torch
from cli_helpers import run

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def three_ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("plots")
    torch.manual_seed(0)
    w1, w2 = torch.randn(32, 16), torch.randn(8, 32)
    for step in (100, 200, 300):
        torch.save({"step": step, "state_dict": {"a.weight": w1 * step / 100, "a.bias": torch.zeros(32),
                                                 "b.weight": w2 + step / 1000}}, d / f"checkpoint-{step}.pt")
    return [d / f"checkpoint-{s}.pt" for s in (100, 200, 300)]


def test_each_picture_kind(three_ckpts):
    from wdist.analyzers.diff import compare
    from wdist.analyzers.inspect import Options, analyse
    from wdist.analyzers.trend import run as trend_run
    from wdist.cli import plotting
    from wdist.loaders import open_checkpoint

    opts = Options(jobs=1)
    rep = analyse(open_checkpoint(str(three_ckpts[0])), opts)
    fig = plotting.layer_histograms(rep)
    assert len(fig.axes) == 2 * len(rep.layers)  # linear and log|w| per layer
    assert fig.axes[1].get_yscale() == "log" and fig.axes[-2].get_xlabel() == "w"
    d = compare(open_checkpoint(str(three_ckpts[0])), open_checkpoint(str(three_ckpts[-1])), opts)
    fig = plotting.overlay(d)
    assert len(fig.axes) == len(d.layers) and len(fig.axes[0].get_legend().get_texts()) == 2
    tr = trend_run([str(p) for p in three_ckpts], opts)
    fig = plotting.ridgeline(tr)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["step 100", "step 200", "step 300"]
    fig = plotting.metric_lines(tr)
    assert sum(1 for a in fig.axes if a.axison) == len(tr.metrics)


def test_plot_command_writes_valid_files(three_ckpts, tmp_path):
    out = tmp_path / "report"
    r = run("plot", *three_ckpts, "-o", out)
    assert r.exit_code == 0, r.output
    pngs = sorted(p for p in os.listdir(tmp_path) if p.endswith(".png"))
    svgs = sorted(p for p in os.listdir(tmp_path) if p.endswith(".svg"))
    assert len(pngs) == len(svgs) == 4
    for p in pngs:
        assert (tmp_path / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for s in svgs:
        assert ET.parse(tmp_path / s).getroot().tag.endswith("svg")
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "<table>" in html


def test_demo_runs_end_to_end(tmp_path):
    r = run("demo", tmp_path / "demo", "--epochs", "2")
    assert r.exit_code == 0, r.output
    assert sorted(os.listdir(tmp_path / "demo"))[:4] == ["epoch1.pt", "epoch1.safetensors", "epoch2.pt",
                                                          "epoch2.safetensors"]
    assert "Reading" in r.output and "ordered by epoch number" in r.output
    assert os.path.exists(tmp_path / "demo" / "report.html")


def test_missing_matplotlib_names_the_extra(monkeypatch, three_ckpts, tmp_path):
    import builtins

    real = builtins.__import__

    def fake(name, *a, **k):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    r = run("plot", three_ckpts[0], "-o", tmp_path / "x")
    assert r.exit_code == 2 and "wdist[plot]" in r.output
