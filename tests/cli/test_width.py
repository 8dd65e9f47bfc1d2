"""Tables keep every name and every digit at any width, and print at natural width when piped.

Each renderer is run at 40, 60, 80, 100 and 120 columns and with stdout not a terminal and no $COLUMNS;
every name and every number string the table shows, derived from the command's own JSON, must appear
whole (delimited by whitespace) in the text."""

from __future__ import annotations

import re

import pytest
import torch
from cli_helpers import run
from torch import nn

from wdist.analyzers.diff import compare
from wdist.analyzers.inspect import Options, analyse
from wdist.analyzers.report import Listing
from wdist.analyzers.trend import run as trend_run
from wdist.cli.render import diff_render, inspect_render, ls_render, trend_render
from wdist.cli.render.common import human_bytes, num, pct
from wdist.loaders import open_checkpoint

WIDTHS = [40, 60, 80, 100, 120, None]  # None: piped, no $COLUMNS


def _block(cin: int, cout: int, stride: int) -> nn.Module:
    m = nn.Module()
    m.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    m.bn1 = nn.BatchNorm2d(cout)
    m.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    m.bn2 = nn.BatchNorm2d(cout)
    if stride != 1 or cin != cout:
        m.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
    return m


def resnet18(w: int = 64) -> nn.Module:
    """torchvision's ResNet-18 layout; w=64 gives its sizes (11.7M parameters, 122 state-dict entries)."""
    m = nn.Module()
    m.conv1 = nn.Conv2d(3, w, 7, 2, 3, bias=False)
    m.bn1 = nn.BatchNorm2d(w)
    c = w
    for i, (cout, s) in enumerate([(w, 1), (2 * w, 2), (4 * w, 2), (8 * w, 2)], 1):
        setattr(m, f"layer{i}", nn.Sequential(_block(c, cout, s), _block(cout, cout, 1)))
        c = cout
    m.fc = nn.Linear(c, 1000)
    return m


def deep60() -> nn.Module:
    """60 layers with long, transformer-style module paths."""
    m = nn.Module()
    m.encoder = nn.Module()
    m.encoder.layers = nn.ModuleList()
    for _ in range(60):
        blk = nn.Module()
        blk.attention = nn.Module()
        blk.attention.output = nn.Module()
        blk.attention.output.dense = nn.Linear(16, 16)
        m.encoder.layers.append(blk)
    return m


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    d = tmp_path_factory.mktemp("width")
    torch.manual_seed(0)
    out: dict[str, list[str]] = {}
    # full size for inspect and ls; the same names with narrow channels where two files are read
    for key, make, steps in (("resnet18", resnet18, (1,)), ("resnet18-narrow", lambda: resnet18(8), (1, 2)),
                             ("deep60", deep60, (1, 2))):
        sd = make().state_dict()
        paths = []
        for step in steps:
            p = d / f"{key}-step{step}.pt"
            torch.save({k: v * (1 + 0.1 * step) if v.is_floating_point() else v for k, v in sd.items()}, p)
            paths.append(str(p))
        out[key] = paths
    return out


@pytest.fixture(scope="module")
def reports(models: dict[str, list[str]], ckpts: dict) -> dict[str, object]:
    """Every report analysed once; the tests only render them at each width."""
    opts = Options(jobs=1)
    out: dict[str, object] = {}
    out["resnet18"] = analyse(open_checkpoint(models["resnet18"][0]), opts)
    for key in ("resnet18-narrow", "deep60"):
        a, b = models[key]
        out[key] = analyse(open_checkpoint(a), opts)
        out[key + "/diff"] = compare(open_checkpoint(a), open_checkpoint(b), opts)
        out[key + "/trend"] = trend_run([a, b], opts)
    out["keras"] = analyse(open_checkpoint(str(ckpts["keras2_lstm.h5"])), opts)
    return out


def _render(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, width: int | None,
            fn: object, *args: object, **kw: object) -> str:
    if width is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", str(width))
    capsys.readouterr()
    fn(*args, **kw)  # type: ignore[operator]
    return capsys.readouterr().out


def _missing(text: str, expected: list[str]) -> list[str]:
    return [s for s in expected if not re.search(r"(?<!\S)" + re.escape(s) + r"(?!\S)", text)]


def _stats_strings(stats: dict, params: int) -> list[str]:
    mx = None if stats["max"] is None else max(abs(stats["max"]), abs(stats["min"]))
    out = [f"{params:,}", num(stats["mean"], 3), num(stats["std"], 3), num(stats["abs_p50"], 3), num(mx, 3),
           pct(stats["zero_fraction"]), pct(stats["near_zero_fraction"]), num(stats["kurtosis"], 3),
           num(stats["gini"], 3), pct(stats["top1pct_l2_mass"])]
    if stats.get("units") is not None:
        out.append(f"{stats['dead_units']}/{stats['units']}")
    return out


@pytest.mark.parametrize("width", WIDTHS)
def test_inspect_layers_and_tensors_keep_everything(reports, capsys, monkeypatch, width):
    for path in ("resnet18", "deep60", "keras"):
        rep = reports[path]
        d = rep.to_dict()
        for per_tensor, rows, jrows in ((False, rep.layers, d["layers"]), (True, rep.tensors, d["tensors"])):
            text = _render(capsys, monkeypatch, width, inspect_render.render, rep, "table", rows,
                           per_tensor=per_tensor, hist=False, log_counts=False)
            expected = []
            for jr in jrows:
                expected.append(jr["name"])
                expected += _stats_strings(jr["stats"], jr["numel"] if per_tensor else jr["parameters"])
            assert not _missing(text, expected), (path, width, per_tensor, _missing(text, expected)[:5])
            assert "…" not in text
    assert len(d["layers"]) >= 2


@pytest.mark.parametrize("width", WIDTHS)
def test_ls_keeps_everything(models, ckpts, capsys, monkeypatch, width):
    for path in (models["resnet18"][0], models["deep60"][0], str(ckpts["keras2_lstm.h5"])):
        ls = Listing.of(open_checkpoint(path))
        d = ls.to_dict()
        text = _render(capsys, monkeypatch, width, ls_render.render, ls, "table")
        expected = []
        for t in d["tensors"]:
            expected += [t["name"], t["layer"], t["role"], "x".join(map(str, t["shape"])) or "scalar", t["dtype"],
                         f"{t['numel']:,}", human_bytes(t["nbytes"])]
        assert not _missing(text, expected), (path, width, _missing(text, expected)[:5])


@pytest.mark.parametrize("width", WIDTHS)
def test_diff_and_trend_keep_everything(reports, capsys, monkeypatch, width):
    for key in ("resnet18-narrow", "deep60"):
        rep = reports[key + "/diff"]
        d = rep.to_dict()
        text = _render(capsys, monkeypatch, width, diff_render.render, rep, "table", per_tensor=False, hist=False,
                       top=None, bins=64)
        expected = []
        for lr in d["layers"]:
            expected += [lr["name"], num(lr["rel_l2_change"], 3), num(lr["cosine"], 4),
                         pct(lr["sign_flip_fraction"]), pct(lr["changed_fraction"]), num(lr["max_abs_change"], 3)]
        assert not _missing(text, expected), (key, width, _missing(text, expected)[:5])
        tr = reports[key + "/trend"]
        d = tr.to_dict()
        text = _render(capsys, monkeypatch, width, trend_render.render, tr, "table", hist=False)
        expected = []
        for lt in d["layers"]:
            expected.append(lt["name"])
            expected += [num(lt["series"][m][-1], 3) for m in d["metrics"]]
        assert not _missing(text, expected), (key, width, _missing(text, expected)[:5])


def test_wide_tables_are_stacked_not_cut(reports, capsys, monkeypatch):
    """At 40 columns the inspect table becomes several stacked tables, each repeating the names, and no
    header line is wider than 40."""
    rep = reports["resnet18"]
    text = _render(capsys, monkeypatch, 40, inspect_render.render, rep, "table", rep.layers, per_tensor=False,
                   hist=False, log_counts=False)
    heads = [ln for ln in text.splitlines() if ln.startswith("layer ")]
    assert len(heads) >= 3
    assert all(len(ln) <= 40 for ln in heads)
    assert sum(1 for ln in text.splitlines() if re.match(r"conv1\s", ln)) == len(heads)
    piped = _render(capsys, monkeypatch, None, inspect_render.render, rep, "table", rep.layers, per_tensor=False,
                    hist=False, log_counts=False)
    assert len([ln for ln in piped.splitlines() if ln.startswith("layer ")]) == 1
    assert max(len(ln) for ln in piped.splitlines()) > 80  # natural width, not forced to 80


def test_width_option_before_or_after_the_command(ckpts):
    path = ckpts["keras2_lstm.h5"]
    for args in (["--width", "40", "ls", path], ["ls", path, "--width", "40"]):
        r = run(*args)
        assert r.exit_code == 0, r.output
        assert [ln for ln in r.output.splitlines() if ln.startswith("name ")][0].rstrip() == \
            "name           layer           role"
    r = run("ls", path, env={"COLUMNS": None})
    assert len([ln for ln in r.output.splitlines() if ln.startswith("name ")]) == 1


def test_trend_ridgeline_fits_80_columns(models):
    r = run("--width", "80", "trend", *models["deep60"], "--hist", "--layers", "encoder.layers.1.*")
    assert r.exit_code == 0, r.output
    ridge = [ln for ln in r.output.splitlines() if "|" in ln and "step" in ln]
    assert ridge and all(len(ln) <= 80 for ln in ridge)


@pytest.mark.parametrize("width", [None, 40, 200])
def test_styled_and_plain_tables_print_the_same_characters(monkeypatch, width):
    """Tables go out as plain lines when no styles are emitted (a file, a pipe) and through rich on a
    terminal: with the escape codes removed the two are identical, at any width, wide names included."""
    import io

    from rich.console import Console

    from wdist.cli.render import common

    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr(common, "out_width", lambda: width)
    cols = [common.Col("mean"), common.Col("verdict", right=False), common.Col("zero")]
    rows = [("encoder.layer.0.attention.self.query", ["0.0012", ("heavy-tailed", "red"), "0.5%"]),
            ("x" * 70, ["-1.5e-05", ("gaussian", None), "100.0%"]), ("b", ["3", "ok", "0"])]
    outs = []
    for kw in ({"color_system": None}, {"force_terminal": True, "color_system": "standard"}):
        buf = io.StringIO()
        con = Console(file=buf, width=width or common.NATURAL, markup=False, highlight=False, soft_wrap=False, **kw)
        common.print_table(con, "layer", cols, rows)
        outs.append(buf.getvalue())
    plain, styled = outs
    assert "\x1b[" in styled and "\x1b[" not in plain
    assert re.sub(r"\x1b\[[0-9;]*m", "", styled) == plain
    assert all(n in plain for n, _ in rows)
