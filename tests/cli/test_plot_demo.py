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
    from wdist import plots as plotting
    from wdist.analyzers.diff import compare
    from wdist.analyzers.inspect import Options, analyse
    from wdist.analyzers.trend import run as trend_run
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
    r = run("plot", *three_ckpts, "-o", out, "--image-format", "png", "--image-format", "svg")
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
    # the command prints every file it wrote
    assert sorted(r.output.split()) == sorted(str(tmp_path / f) for f in pngs + svgs + ["report.html"])


def test_png_files_are_the_embedded_bytes(three_ckpts, tmp_path):
    """Each figure is rendered once: the PNG file holds exactly the bytes the HTML embeds; no SVG unless asked."""
    import base64
    import re

    r = run("plot", *three_ckpts, "-o", tmp_path / "r")
    assert r.exit_code == 0, r.output
    html = (tmp_path / "r.html").read_text()
    embedded = [base64.b64decode(b) for b in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)]
    files = [(tmp_path / f"r-{i}.png").read_bytes() for i in range(1, 5)]
    assert embedded == files
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".svg")]


@pytest.fixture(scope="module")
def many_layers(tmp_path_factory):
    """9 layers (three pages of 4 in the tests below), one named with `$` signs, two checkpoints."""
    d = tmp_path_factory.mktemp("many")
    torch.manual_seed(0)
    names = [f"block{i}.fc" for i in range(8)] + ["cost$x$_{y}"]
    sd = {f"{n}.weight": torch.randn(8, 8) for n in names}
    paths = []
    for step in (1, 2):
        p = d / f"step{step}.pt"
        torch.save({k: v * step for k, v in sd.items()}, p)
        paths.append(p)
    return paths, names


def test_large_models_get_pages_and_the_report_holds_every_layer(many_layers, tmp_path, monkeypatch):
    from wdist import plots as plotting

    monkeypatch.setattr(plotting, "PER_PAGE", 4)  # the real 12 per page, scaled down to keep the test fast
    paths, names = many_layers
    r = run("plot", *paths, "-o", tmp_path / "big")
    assert r.exit_code == 0, r.output
    pngs = sorted(p for p in os.listdir(tmp_path) if p.endswith(".png"))
    # histograms, overlay, ridgeline and metric lines: 9 layers -> pages a, b, c of each
    assert pngs == [f"big-{k}{s}.png" for k in range(1, 5) for s in "abc"]
    html = (tmp_path / "big.html").read_text()
    assert html.count("data:image/png;base64,") == 12
    assert "<nav>" in html and "page 3 of 3" in html
    for n in names:  # every layer in the table and in a figure's layer list
        assert html.count(f"<td>{n}</td>") == 1 and html.count(n) >= 5, n


def test_dollar_names_are_not_mathtext(many_layers):
    from wdist import plots as plotting
    from wdist.analyzers.inspect import Options, analyse
    from wdist.loaders import open_checkpoint

    rep = analyse(open_checkpoint(str(many_layers[0][0])), Options(jobs=1))
    fig = plotting.layer_histograms(rep, [lr for lr in rep.layers if "$" in lr.name])
    title = fig.axes[0].get_title()
    assert title.startswith("cost\\$x\\$_{y}: w")  # escaped: matplotlib draws the dollars literally
    assert plotting._png(fig)[:4] == b"\x89PNG"
    # the renderer's own mathtext still works (log-scale tick labels), so nothing was turned off globally
    assert "$" not in fig.axes[1].get_title() or "\\$" in fig.axes[1].get_title()


def test_report_screenshot_shows_every_layer(many_layers, tmp_path):
    """The HTML report of a 60-layer model opened in headless Chromium: every layer name is on the page."""
    import shutil

    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome", "headless_shell")
                    if shutil.which(b)), None)
    if browser is None:
        pytest.skip("headless Chromium not installed (CI installs it for this check)")
    d = tmp_path / "sixty"
    d.mkdir()
    names = [f"encoder.layer{i}.dense" for i in range(60)]
    torch.save({f"{n}.weight": torch.randn(4, 4) for n in names}, d / "m.pt")
    r = run("plot", d / "m.pt", "-o", d / "r")
    assert r.exit_code == 0, r.output
    import subprocess

    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          f"file://{d / 'r.html'}"], capture_output=True, text=True, timeout=120).stdout
    for n in names:
        assert f"<td>{n}</td>" in dom, n
    # every page of the histograms (60 layers: 5 pages of 12) is an image Chromium parsed
    assert dom.count("data:image/png;base64,") == 5 and "page 5 of 5" in dom


def test_demo_runs_end_to_end(tmp_path):
    r = run("demo", tmp_path / "demo", "--epochs", "3")
    assert r.exit_code == 0, r.output
    ckpts = sorted(p for p in os.listdir(tmp_path / "demo") if p.startswith("epoch"))
    assert ckpts == ["epoch1.pt", "epoch1.safetensors", "epoch2.pt", "epoch2.safetensors", "epoch3.pt",
                     "epoch3.safetensors"]
    assert "3 checkpoints, ordered by epoch number" in r.output
    assert "epoch3.pt (the last checkpoint)" in r.output
    for i in range(1, 5):
        assert f"[{i}/4] " in r.output
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


@pytest.mark.slow
def test_report_screenshot_is_drawn_to_the_last_layer(tmp_path):
    """A full-page screenshot of a 60-layer report: the bottom of the page (the last page of histograms)
    holds drawn pixels, so nothing was cut off. Slow (Chromium renders a ~20,000-pixel page)."""
    import shutil
    import subprocess

    import matplotlib.image

    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome", "headless_shell")
                    if shutil.which(b)), None)
    if browser is None:
        pytest.skip("headless Chromium not installed")
    torch.save({f"encoder.layer{i}.dense.weight": torch.randn(4, 4) for i in range(60)}, tmp_path / "m.pt")
    assert run("plot", tmp_path / "m.pt", "-o", tmp_path / "r").exit_code == 0
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1200,16000", f"file://{tmp_path / 'r.html'}"],
                   capture_output=True, timeout=180)
    img = matplotlib.image.imread(shot)
    rows_drawn = (img[:, :, :3].min(axis=(1, 2)) < 0.9).nonzero()[0]
    assert rows_drawn.size and rows_drawn[-1] > 0.6 * img.shape[0]


def test_an_unreadable_checkpoint_in_the_middle_is_said_not_dropped(three_ckpts, tmp_path):
    """A damaged checkpoint between the first and the last was left out of the report with exit 0 and no
    word (found by review): the others are plotted, the file is named in the HTML, one error line, exit 2."""
    import shutil

    d = tmp_path / "run"
    d.mkdir()
    for p in three_ckpts:
        shutil.copy(p, d / p.name)
    (d / "checkpoint-200.pt").write_bytes(three_ckpts[1].read_bytes()[:500])  # truncated zip
    out = tmp_path / "report"
    r = run("plot", d / "checkpoint-100.pt", d / "checkpoint-200.pt", d / "checkpoint-300.pt", "-o", out)
    assert r.exit_code == 2, r.output
    errors = [ln for ln in r.output.splitlines() if ln.startswith("wdist: error:")]
    assert len(errors) == 1 and "checkpoint-200.pt" in errors[0]
    html = (tmp_path / "report.html").read_text()
    assert "not read:" in html and "checkpoint-200.pt" in html and html.count("data:image/png;base64,") >= 3


@pytest.mark.parametrize("bad", ["checkpoint-100.pt", "checkpoint-300.pt"])
def test_an_unreadable_first_or_last_checkpoint_still_gives_the_report(three_ckpts, tmp_path, bad):
    """Only a damaged middle file was tolerated: a damaged first or last one wrote nothing (review)."""
    import shutil

    d = tmp_path / "run"
    d.mkdir()
    for p in three_ckpts:
        shutil.copy(p, d / p.name)
    (d / bad).write_bytes(b"junk")
    out = tmp_path / "r"
    r = run("plot", d, "-o", out)
    assert r.exit_code == 2, r.output
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("wdist: error:")]
    assert len(errors) == 1 and bad in errors[0]
    html = (tmp_path / "r.html").read_text()
    assert f"not read: {d / bad}" in html
    # the figures keep their numbers: histograms, overlay, ridgeline, metrics
    assert sorted(p.name for p in tmp_path.glob("r-*.png")) == ["r-1.png", "r-2.png", "r-3.png", "r-4.png"]


def test_an_entry_symlinked_out_of_the_run_is_named(three_ckpts, tmp_path):
    import shutil

    d = tmp_path / "run"
    d.mkdir()
    for p in three_ckpts[:2]:
        shutil.copy(p, d / p.name)
    os.symlink(three_ckpts[2], d / "checkpoint-300.pt")
    r = run("plot", d, "-o", tmp_path / "r")
    assert r.exit_code == 2
    assert "checkpoint-300.pt" in r.stderr and "symlink" in r.stderr
    assert "checkpoint-300.pt" in (tmp_path / "r.html").read_text()


def test_figure_numbers_do_not_shift(three_ckpts, tmp_path):
    """One checkpoint with --spectral: OUT-1 and OUT-5 (the ESD pages), the numbers the HTML anchors use."""
    pytest.importorskip("matplotlib")
    r = run("plot", three_ckpts[0], "-o", tmp_path / "r", "--spectral")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.glob("r-*.png")) == ["r-1.png", "r-5.png"]
    html = (tmp_path / "r.html").read_text()
    assert "id='fig-1'" in html and "id='fig-5'" in html


@pytest.mark.parametrize("kind", ["file-parent", "dir-html", "empty", "slash"])
def test_output_paths_that_cannot_be_written(three_ckpts, tmp_path, kind):
    if kind == "file-parent":
        (tmp_path / "afile").write_text("x")
        out, name = tmp_path / "afile" / "x", str(tmp_path / "afile")
    elif kind == "dir-html":
        (tmp_path / "o").mkdir()
        (tmp_path / "o" / "y.html").mkdir()
        out, name = tmp_path / "o" / "y", str(tmp_path / "o" / "y.html")
    else:
        out, name = ("" if kind == "empty" else f"{tmp_path}/"), None
    r = run("plot", *three_ckpts, "-o", out)
    assert r.exit_code == 2
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("wdist: error:")]
    assert len(errors) == 1, r.output
    if name:
        assert errors[0].startswith(f"wdist: error: {name}: ") and "checkpoint-300" not in errors[0]
    else:
        assert "names no file prefix" in errors[0] and not list(tmp_path.glob("-*.png"))


def test_the_log_panel_counts_the_values_below_its_range(tmp_path):
    """It said how many exact zeros it leaves out, not the tiny nonzero values below its range."""
    pytest.importorskip("matplotlib")
    import numpy as np

    import wdist
    from wdist import plots

    w = np.random.default_rng(0).normal(size=4096).astype(np.float32)
    w[:7] = 1e-30
    w[7:10] = 0.0
    rep = wdist.inspect({"fc.weight": w})
    lh = rep.layers[0].log_histogram
    assert lh.underflow >= 7
    titles = [ax.get_title() for ax in plots.layer_histograms(rep).axes]
    assert any(f"3 exact zeros and {lh.underflow} values below 10^{lh.edges[0]:.2f} not shown" in t
               for t in titles), titles
