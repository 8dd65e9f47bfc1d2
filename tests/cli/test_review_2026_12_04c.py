"""Review 2026-12-04 (c): `wdist formats` honours $COLUMNS; diff and trend never pass the width where a line can
wrap; a relative change from 0 is null in trend's JSON with its reason, which the text shows."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from cli_helpers import run
from rich.cells import cell_len
from safetensors.numpy import save_file

from wdist.analyzers.text import safe


def _words(text: str) -> list[str]:
    return text.split()


# ---------------------------------------------------------------- formats

@pytest.mark.parametrize("width", [20, 40, 80, 200])
def test_formats_follows_columns_and_keeps_every_word(width):
    piped = run("formats", env={"COLUMNS": None}).output
    r = run("formats", env={"COLUMNS": str(width)})
    assert r.exit_code == 0, r.output
    # the same words in the same order: nothing cut, nothing lost, only the line breaks differ
    assert _words(r.output) == _words(piped)
    lines = r.output.splitlines()
    # a line wider than the width is one word standing alone (a name or a path longer than the line)
    assert all(cell_len(ln) <= width or len(ln.split()) == 1 for ln in lines), \
        [ln for ln in lines if cell_len(ln) > width]
    if width < max(cell_len(ln) for ln in piped.splitlines()):
        assert len(lines) > len(piped.splitlines())  # it was laid out in the width, not printed as piped
    # every format's name starts a line (in the name column, or on a line of its own when narrow)
    names = [f["name"] for f in json.loads(run("formats", "--format", "json").output)["formats"]]
    starts = {ln.split()[0] for ln in lines if ln and not ln[0].isspace()}
    assert set(names) <= starts


def test_formats_text_is_escaped_at_any_width(monkeypatch):
    from wdist.loaders import registry
    from wdist.loaders.plugin import FormatPlugin

    evil = FormatPlugin(name="ev\x1b[31mil", title="Bad\u202e title\nsecond line", extensions=(".e\x07vl",),
                        load=lambda p: None,  # type: ignore[arg-type,return-value]
                        variants="v\x1b]8;;http://x\x07link\x1b]8;;\x07 words here")
    monkeypatch.setattr(registry, "formats", lambda: (evil,))
    piped = run("formats", env={"COLUMNS": None}).output
    for width in (20, 40, 80, None):
        out = run("formats", env={"COLUMNS": None if width is None else str(width)}).output
        assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
        # the title's newline is escaped, not printed: no line starts with the words after it
        assert not any(ln.lstrip().startswith("second") for ln in out.splitlines())
        assert width is not None or len(out.splitlines()) == 2
        assert _words(out) == _words(piped)
        assert safe(evil.name) in out


# ---------------------------------------------------------------- width of diff and trend

LONG = "encoder.layers.0.attention.output.dense"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("w04c")
    rng = np.random.default_rng(0)
    a = {f"{LONG}.weight": rng.normal(size=(16, 16)).astype(np.float32),
         "fc.weight": rng.normal(size=(8, 8)).astype(np.float32), "fc.bias": np.zeros(8, np.float32)}
    b = {k: v * 1.1 + 0.01 for k, v in a.items()}
    save_file(a, str(d / "a.safetensors"))
    save_file(b, str(d / "b.safetensors"))
    (d / "run").mkdir()
    save_file(a, str(d / "run" / "step_1.safetensors"))
    save_file(b, str(d / "run" / "step_2.safetensors"))
    return d


def _unbreakable(line: str, width: int, paths: list[str]) -> bool:
    """A line wider than the width is allowed only when nothing on it could go to another line: one word
    (a name, a path, a number), a side and its path ("A PATH"), a checkpoint's number and label, or a
    histogram row of a single bin beside its label."""
    body = line.strip()
    if len(body.split()) == 1:
        return True
    if any(body in (f"A {p}", f"B {p}", f"A {p} (safetensors)", f"B {p} (safetensors)") for p in paths):
        # the path alone is wider than the line: its format stays beside it (test_heading_keeps_a_long_path...)
        return cell_len(body.rsplit(" (", 1)[0]) > width or " (" not in body
    if re.fullmatch(r"\d+\. \S+", body):
        return True
    return bool(re.fullmatch(r"(step \d+ )?\|.\|", body) or re.fullmatch(r"[AB] \|.\|", body))


@pytest.mark.parametrize("width", range(10, 61))
def test_diff_and_trend_fit_every_width(files, width):
    a, b, rundir = str(files / "a.safetensors"), str(files / "b.safetensors"), str(files / "run")
    d = json.loads(run("diff", a, b, "--format", "json").output)
    t = json.loads(run("trend", rundir, "--format", "json").output)
    paths = [a, b]
    for args in (["diff", a, b], ["diff", a, b, "--hist"], ["diff", a, b, "--tensors"], ["trend", rundir],
                 ["trend", rundir, "--hist"]):
        r = run(*args, env={"COLUMNS": str(width)})
        assert r.exit_code == 0, r.output
        over = [ln for ln in r.output.splitlines() if cell_len(ln) > width and not _unbreakable(ln, width, paths)]
        assert not over, (width, args, over)
        # every name and every number of the table whole, as in test_width
        words = set(_words(r.output))
        if args[0] == "diff":
            from wdist.cli.render.common import num, pct

            rows = d["tensors"] if "--tensors" in args else d["layers"]
            for lr in rows:
                ch = lr.get("change", lr) if "--tensors" in args else lr
                if not ch:
                    continue
                assert lr["name"] in words
                assert {num(ch["rel_l2_change"], 3), num(ch["cosine"], 4), pct(ch["sign_flip_fraction"]),
                        pct(ch["changed_fraction"]), num(ch["max_abs_change"], 3)} <= words, (width, lr["name"])
        else:
            from wdist.cli.render.common import num

            for lt in t["layers"]:
                assert lt["name"] in words
                assert {num(lt["series"][m][-1], 3) for m in t["metrics"]} <= words, (width, lt["name"])


def test_diff_table_at_20_columns_fits(files):
    """The reported case: at COLUMNS=20 the stacked diff tables were 21 cells wide (the name column kept 12
    cells beside a 7-cell value); now the name column is what is left and longer names go on their own line."""
    r = run("diff", str(files / "a.safetensors"), str(files / "b.safetensors"), env={"COLUMNS": "20"})
    lines = r.output.splitlines()
    table = [ln for ln in lines if ln.startswith(("layer", "fc "))]
    assert table and all(cell_len(ln) <= 20 for ln in table), table
    assert any(ln.split() == ["fc", "0.99996"] for ln in lines)


# ---------------------------------------------------------------- trend: a change from 0

def test_trend_change_from_zero_is_null_with_its_reason(tmp_path):
    rng = np.random.default_rng(1)
    w = rng.normal(size=(8, 8)).astype(np.float32)
    w2 = w.copy()
    w2[:4] = 0
    (tmp_path / "run").mkdir()
    # gate: all zero at step 1 (L2 norm and std from 0); proj: no zeros at step 1, half at step 2
    save_file({"gate.weight": np.zeros((8, 8), np.float32), "proj.weight": w},
              str(tmp_path / "run" / "step_1.safetensors"))
    save_file({"gate.weight": rng.normal(size=(8, 8)).astype(np.float32), "proj.weight": w2},
              str(tmp_path / "run" / "step_2.safetensors"))
    d = json.loads(run("trend", tmp_path / "run", "--format", "json").output)
    layers = {lt["name"]: lt for lt in d["layers"]}
    gate, proj = layers["gate"], layers["proj"]
    assert gate["series"]["l2_norm"][0] == 0 and gate["series"]["l2_norm"][1] > 0
    assert gate["change_first"]["l2_norm"] is None and gate["change_prev"]["l2_norm"] is None
    assert gate["change_undefined"] == {"change_first": {"l2_norm": "from 0", "std": "from 0"},
                                        "change_prev": {"l2_norm": "from 0", "std": "from 0"}}
    assert proj["change_first"]["zero_fraction"] is None
    assert proj["change_undefined"]["change_first"] == {"zero_fraction": "from 0"}
    assert proj["change_first"]["l2_norm"] == pytest.approx(
        (proj["series"]["l2_norm"][1] - proj["series"]["l2_norm"][0]) / proj["series"]["l2_norm"][0])
    # the text says "from 0" exactly where the JSON gives that reason, and nowhere else
    text = run("trend", tmp_path / "run", env={"COLUMNS": None}).output
    table = text.split("\neach cell:")[0].splitlines()
    head = table[next(i for i, ln in enumerate(table) if ln.startswith("layer "))]
    cols = head.split()[1:]
    from wdist.cli.render.trend_render import SHORT

    metrics = {SHORT.get(m, m): m for m in d["metrics"]}
    for name, lt in layers.items():
        row = next(ln for ln in table if ln.split()[0] == name)
        # cells are separated by two spaces or more, a cell's own parts by one
        cells = re.split(r"\s{2,}", row.strip())[1:]
        assert len(cells) == len(cols), (row, cols)
        for col, cell in zip(cols, cells):
            m = metrics[col]
            assert cell.endswith(" from 0") == (lt["change_undefined"]["change_first"].get(m) == "from 0"), (name, m, cell)
    # the Python report holds the same as the JSON: None, not inf
    from wdist.analyzers.inspect import Options
    from wdist.analyzers.trend import expand_inputs
    from wdist.analyzers.trend import run as trend_run

    rep = trend_run(expand_inputs([str(tmp_path / "run")]), Options(jobs=1))
    g = next(lt for lt in rep.layers if lt.name == "gate")
    assert g.change_first["l2_norm"] is None and g.change_undefined["change_first"]["l2_norm"] == "from 0"
