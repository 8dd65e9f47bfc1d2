"""diff and trend rendering defects found by the second 2026-12-04 review, each on files the test builds:
numbers rounded onto 1, 0 or -100%, most and least moved that read the same, histograms that dropped the
values beyond their range, a legend that claimed equal bars are equal values, two checkpoints of one name,
CJK labels that shifted the ridgeline, Markdown that rendered names as markup."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from cli_helpers import run

from wdist.cli.render.common import md_cell, num
from wdist.cli.render.trend_render import _change_text


@pytest.mark.parametrize("v, text", [(0.99997, "0.99997"), (1.0, "1"), (0.0, "0"), (-0.999999, "-0.999999"),
                                     (1e-300, "1e-300"), (0.9999999999999999, "0.9999999999999999"),
                                     (0.5, "0.5"), (123456.0, "1.235e+05")])
def test_a_number_that_is_not_1_or_0_never_prints_as_one(v, text):
    assert num(v) == text


@pytest.mark.parametrize("ch, first, last, text", [
    (0.00041, 1.0, 1.00041, " +0.04%"), (-0.0053, 1.0, 0.9947, " -1%"), (-0.004, 1.0, 0.996, " -0.4%"), (0.0, 1.0, 1.0, " +0%"),
    (0.4, 1.0, 1.4, " +40%"), (1e-12, 1.0, 1.0, " +1e-10%"),
    (-1.0, 4.2e38, 3.13, " x7.45e-39"),  # 1 + ch is 0 in float64: the ratio comes from the values
    (-1.0, 5.0, 0.0, " -100%"), (-0.95, 2.0, 0.1, " x0.05"), (20.0, 1.0, 21.0, " x21")])
def test_trend_changes_never_round_to_0_or_minus_100_percent(ch, first, last, text):
    assert _change_text("l2_norm", ch, first, last) == text


def _two(tmp_path, wa, wb, name="fc.weight"):
    torch.save({name: torch.as_tensor(wa)}, tmp_path / "a.pt")
    torch.save({name: torch.as_tensor(wb)}, tmp_path / "b.pt")
    return tmp_path / "a.pt", tmp_path / "b.pt"


def test_a_layer_that_moved_is_not_shown_with_the_cosine_of_an_unchanged_one(tmp_path):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(10000, generator=g)
    a, b = _two(tmp_path, w, w + 0.01 * torch.randn(10000, generator=g))
    cos = json.loads(run("diff", a, b, "--format", "json", "--no-cache").output)["layers"][0]["cosine"]
    assert 0.9999 < cos < 1
    row = next(line for line in run("diff", a, b, "--no-cache").output.splitlines() if line.startswith("fc "))
    assert row.split()[2] == num(cos, 4) != "1"


def test_cosine_is_never_above_1(tmp_path):
    rng = np.random.default_rng(1)
    ws = {f"l{i}.weight": torch.as_tensor(rng.normal(size=(37, 53)).astype(np.float32)) for i in range(30)}
    torch.save(ws, tmp_path / "a.pt")
    torch.save(ws, tmp_path / "b.pt")
    rep = json.loads(run("diff", tmp_path / "a.pt", tmp_path / "b.pt", "--format", "json", "--tensors",
                         "--no-cache").output)
    cosines = [t["change"]["cosine"] for t in rep["tensors"]] + [lr["cosine"] for lr in rep["layers"]]
    assert all(-1 <= c <= 1 for c in cosines) and rep["summary"]["cosine"] <= 1


def test_most_and_least_moved_never_read_the_same_when_they_differ(tmp_path):
    g = torch.Generator().manual_seed(2)
    wa = {f"l{i}.weight": torch.randn(200, generator=g, dtype=torch.float64) for i in range(2)}
    wb = {"l0.weight": wa["l0.weight"] * (1 + 1.00008e-3), "l1.weight": wa["l1.weight"] * (1 + 1.00002e-3)}
    torch.save(wa, tmp_path / "a.pt")
    torch.save(wb, tmp_path / "b.pt")
    notes = json.loads(run("diff", tmp_path / "a.pt", tmp_path / "b.pt", "--format", "json",
                           "--no-cache").output)["notes"]
    moved = next(n for n in notes if n.startswith("most moved"))
    m = re.fullmatch(r"most moved: (\S+) \(relative L2 change (\S+)\); least moved: (\S+) \((\S+)\)", moved)
    assert m and m[1] == "l0" and m[3] == "l1", moved
    assert float(m[2]) != float(m[4])


def _outliers():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(10000, generator=g)
    w[:6] = 100.0
    w[6:10] = -100.0
    return w


def test_diff_hist_counts_the_values_beyond_its_range(tmp_path):
    w = _outliers()
    a, b = _two(tmp_path, w, w * 1.01)
    out = run("diff", a, b, "--hist", "--no-cache").output
    assert "beyond: A 4 below, 6 above, B 4 below, 6 above" in " ".join(out.split())


@pytest.mark.parametrize("width", ["200", "40"])
def test_trend_ridgeline_counts_the_values_beyond_its_range(tmp_path, width):
    w = _outliers()
    (tmp_path / "run").mkdir()
    for i, s in enumerate((1.0, 1.01)):
        torch.save({"fc.weight": w * s}, tmp_path / "run" / f"step{i + 1}.pt")
    out = run("trend", tmp_path / "run", "--hist", "--no-cache", env={"COLUMNS": width}).output
    assert out.count("4 below, 6 above") == 2, out


def test_the_sparkline_legend_does_not_claim_equal_bars_are_equal_values(tmp_path):
    (tmp_path / "run").mkdir()
    w = torch.randn(1000, generator=torch.Generator().manual_seed(4))
    for i, s in enumerate((1.0, 1.03, 1.0)):
        torch.save({"fc.weight": w * s}, tmp_path / "run" / f"step{i + 1}.pt")
    out = " ".join(run("trend", tmp_path / "run", "--metric", "l2_norm", "--no-cache").output.split())
    assert "equal bars mean equal values" not in out
    assert "equal bars are values within 1/8 of it, not equal values" in out


def test_two_checkpoints_of_one_name_are_told_apart(tmp_path):
    for d, s in (("r1", 1.0), ("r2", 2.0)):
        (tmp_path / d).mkdir()
        torch.save({"fc.weight": torch.ones(4) * s}, tmp_path / d / "ckpt.pt")
    paths = [tmp_path / "r1" / "ckpt.pt", tmp_path / "r2" / "ckpt.pt"]
    out = run("trend", *paths, "--no-cache").output
    assert "1. r1/ckpt.pt" in out and "2. r2/ckpt.pt" in out
    rows = run("trend", *paths, "--no-cache", "--format", "csv").output.splitlines()[1:]
    assert [r.split(",")[1] for r in rows] == ["r1/ckpt.pt", "r2/ckpt.pt"]


def test_ridgeline_rows_line_up_with_wide_labels(tmp_path):
    from rich.cells import cell_len

    (tmp_path / "run").mkdir()
    w = torch.randn(1000, generator=torch.Generator().manual_seed(5))
    for name, s in (("最初の重みファイル.pt", 1.0), ("二番目の重みファイル.pt", 1.1)):
        torch.save({"fc.weight": w * s}, tmp_path / "run" / name)
    out = run("trend", tmp_path / "run", "--hist", "--no-cache", "--metric", "l2_norm",
              env={"COLUMNS": "60"}).output
    rows = [line for line in out.splitlines() if ".pt |" in line]
    assert len(rows) == 2
    assert len({cell_len(r[:r.index(" |")]) for r in rows}) == 1, rows  # the bars start in one column


def test_markdown_renders_names_as_they_are(tmp_path):
    """Rendered with markdown-it (CommonMark plus GitHub tables, the parser rich ships with): every name's
    text survives, none becomes emphasis or an HTML tag."""
    from markdown_it import MarkdownIt

    names = ["a*b*c.weight", "emb.<pad>.weight", "x_y_z.weight", "[link](x).weight", "t~~s~~.weight", "amp&lt;.weight",
             "p|q.weight", "back\\slash.weight", "tick`s.weight"]
    rng = np.random.default_rng(6)
    wa = {n: torch.as_tensor(rng.normal(size=16).astype(np.float32)) for n in names}
    torch.save(wa, tmp_path / "a*b.pt")
    torch.save({n: t * 2 for n, t in wa.items()}, tmp_path / "b.pt")
    md = run("diff", tmp_path / "a*b.pt", tmp_path / "b.pt", "--tensors", "--format", "markdown",
             "--no-cache").output
    tokens = MarkdownIt("commonmark").enable("table").parse(md)
    text = []
    for t in tokens:
        for c in t.children or []:
            assert c.type in ("text", "softbreak", "strong_open", "strong_close"), (c.type, c.content)
            text.append(c.content)
    joined = "".join(text)
    for n in names:
        assert n in joined, n
    assert "a*b.pt" in joined


@pytest.mark.parametrize("s", ["a*b", "<x>", "[a](b)", "~~s~~", "&amp;", "`c`", "\\", "_u_"])
def test_md_cell_escapes_markup(s):
    from markdown_it import MarkdownIt

    from wdist.analyzers.text import safe

    html = MarkdownIt("commonmark").render(md_cell(s))
    import html as h

    assert h.unescape(re.sub(r"</?p>\n?", "", html)) == safe(s)  # the terminal-safe text, as it is


@pytest.mark.parametrize("name", ["# h", "1. x", "12) y", "- x", "+ y", "    code", "= z", "fc.weight"])
def test_a_name_starting_a_list_item_opens_no_block(name):
    """`- NAME: note` lines: a name like '# h' became a heading inside the item, '1. x' a nested list."""
    from markdown_it import MarkdownIt

    from wdist.cli.render.common import md_lead

    tokens = MarkdownIt("commonmark").parse(f"- {md_lead(name)}: a note\n")
    kinds = [t.type for t in tokens]
    assert kinds == ["bullet_list_open", "list_item_open", "paragraph_open", "inline", "paragraph_close",
                     "list_item_close", "bullet_list_close"], kinds
    inline = next(t for t in tokens if t.type == "inline")
    assert "".join(c.content for c in inline.children) == f"{name}: a note"
