"""Strings from files and paths never reach the terminal raw: control characters, bidi overrides and lone
surrogates are shown as visible escapes, rich markup is printed as is, and Markdown/CSV stay valid."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from wdist.cli.main import cli
from wdist.cli.render.common import md_cell, safe

ESC = "\x1b"
FAKE = "\x1b[2K\rverified: no unsafe content\n"
NAMES = {
    "evil": f"fc{FAKE}.weight",
    "markup": "[/x].weight",
    "bold": "[bold red]loud[/].weight",
    "bidi": "abc\u202edcba.weight",
    "pipe": "a|b\\c.weight",
    "surrogate": "bad\ud800name.weight",
    "emoji": ":warning:.weight",
}
INT_NAME = f"int{FAKE}.weight"


def _invoke(*args: object) -> tuple[int, str, str]:
    r = CliRunner().invoke(cli, [str(a) for a in args])
    return r.exit_code, r.stdout, r.stderr


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("hostile")
    torch.manual_seed(0)
    sd = {name: torch.randn(4, 3) for name in NAMES.values()}
    sd[INT_NAME] = torch.arange(12).reshape(4, 3)  # listed as not analysed: escaped there too
    a, b = d / "model[v2].pt", d / "model[v3].pt"
    torch.save(sd, a)
    torch.save({k: v * 1.1 for k, v in sd.items()}, b)
    return {"a": str(a), "b": str(b), "dir": str(d)}


def test_safe_escapes_controls_bidi_and_surrogates():
    assert safe(FAKE) == "\\x1b[2K\\rverified: no unsafe content\\n"
    assert safe("a\u202eb\x7f\x9b") == "a\\u202eb\\x7f\\x9b"
    assert safe("x\ud800y") == "x\\ud800y"
    assert safe("[/x] model[v2].pt") == "[/x] model[v2].pt"
    assert md_cell("max|w| a\\b") == "max\\|w\\| a\\\\b"


@pytest.mark.parametrize("args", [
    ["ls", "{a}"], ["ls", "{a}", "--format", "csv"], ["ls", "{a}", "--format", "markdown"],
    ["inspect", "{a}"], ["inspect", "{a}", "--tensors", "--hist"], ["inspect", "{a}", "--tensors", "--format", "csv"],
    ["inspect", "{a}", "--tensors", "--format", "markdown"], ["inspect", "{a}", "--format", "json"],
    ["diff", "{a}", "{b}", "--tensors"], ["diff", "{a}", "{b}", "--hist"], ["diff", "{a}", "{b}", "--format", "markdown"],
    ["trend", "{a}", "{b}", "--hist"], ["trend", "{a}", "{b}", "--format", "csv"],
    ["check", "{a}", "{b}", "--no-config", "--rule", "*: std < 0.1", "--format", "table"],
])
def test_no_escape_byte_reaches_the_terminal(hostile, args):
    code, out, err = _invoke(*[a.format(**hostile) for a in args])
    assert code in (0, 1), (code, out, err)
    assert ESC not in out and ESC not in err
    assert "\u202e" not in out and "\r" not in out
    assert not re.search("[\ud800-\udfff]", out + err)
    if args[0] != "trend" and "json" not in args:  # names are shown, escaped, wherever they are listed
        # escaped once: safe() is injective, so it is not idempotent (safe(safe(x)) != safe(x))
        shown = md_cell(NAMES["evil"]) if "markdown" in args else safe(NAMES["evil"])
        assert shown.rsplit(".", 1)[0] in out
    if "--format" not in args or "table" in args:
        assert "model[v2].pt" in out  # a path with brackets prints as is
    if args[0] in ("ls", "inspect") and "json" not in args:
        assert re.search(r"(?<!\S)\[/x\]", out) and "[bold red]loud[/]" in out and ":warning:" in out


def test_tensors_not_analysed_are_listed_escaped(hostile):
    code, out, err = _invoke("inspect", hostile["a"], "--role", "all")
    assert code == 0 and ESC not in out + err
    assert "not analysed (not floating point): 1 tensor: " + safe(INT_NAME) in out.replace("\n", " ")


def test_refused_global_names_are_escaped(tmp_path):
    # a pickle whose GLOBAL names a module with an erase-line sequence and a fake verdict
    p = tmp_path / "evil.pkl"
    p.write_bytes(b"\x80\x02}q\x00X\x01\x00\x00\x00xc\x1b[2K\rverified os\nsystem\nq\x01s.")
    for cmd in ("ls", "inspect"):
        code, out, err = _invoke(cmd, p)
        assert ESC not in out + err and "\r" not in out + err
        assert code == 2 or "\\x1b[2K" in out, (out, err)


def test_surrogate_names_print_through_a_real_utf8_stdout(hostile):
    """A lone surrogate must not crash the encoder of a real (strict UTF-8) stdout."""
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "COLUMNS": "100"}
    for args in (["ls", hostile["a"]], ["inspect", hostile["a"], "--tensors"], ["ls", hostile["a"], "--format", "csv"]):
        out = subprocess.run([sys.executable, "-m", "wdist", *args], capture_output=True, env=env)
        assert out.returncode == 0, out.stderr.decode(errors="replace")
        assert b"bad\\ud800name.weight" in out.stdout and b"\x1b" not in out.stdout + out.stderr


def _md_tables(text: str) -> list[list[list[str]]]:
    tables: list[list[list[str]]] = []
    cur: list[list[str]] = []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            cells = re.split(r"(?<!\\)\|", line.strip())
            assert cells[0] == "" and cells[-1] == "", line
            cur.append([c.strip() for c in cells[1:-1]])
        elif cur:
            tables.append(cur)
            cur = []
    return tables


@pytest.mark.parametrize("args", [["ls", "{a}"], ["inspect", "{a}"], ["inspect", "{a}", "--tensors"],
                                  ["diff", "{a}", "{b}"], ["diff", "{a}", "{b}", "--tensors"]])
def test_markdown_tables_are_valid(hostile, args):
    code, out, _ = _invoke(*[a.format(**hostile) for a in args], "--format", "markdown")
    assert code == 0
    tables = _md_tables(out)
    assert tables
    for t in tables:
        assert len({len(row) for row in t}) == 1, [len(r) for r in t]
        assert all(re.fullmatch(r"-{3,}:?", c) for c in t[1])
    if args[0] == "inspect":
        assert "\\|w\\| p50" in t[0] and "max\\|w\\|" in t[0]
    if "--tensors" in args or args[0] == "ls":
        assert md_cell(NAMES["pipe"]) in [row[0] for row in tables[0]]


@pytest.mark.parametrize("args", [["ls", "{a}"], ["inspect", "{a}", "--tensors"], ["diff", "{a}", "{b}", "--tensors"],
                                  ["trend", "{a}", "{b}"]])
def test_csv_parses_back(hostile, args):
    code, out, _ = _invoke(*[a.format(**hostile) for a in args], "--format", "csv")
    assert code == 0
    rows = list(csv.reader(io.StringIO(out)))
    assert len({len(r) for r in rows}) == 1
    col = 1 if args[0] == "trend" else 0
    names = {r[col] for r in rows[1:]}
    if args[0] == "trend":
        names = {r[0] for r in rows[1:]}
    # diff's CSV has a row for every tensor, the integer one too (status not_float); inspect analyses floats
    listed = list(NAMES.values()) + ([INT_NAME] if args[0] in ("ls", "trend", "diff") else [])
    expected = {safe(n) for n in listed}
    if args[0] == "trend":
        expected = {safe(n).rsplit(".", 1)[0] for n in listed}
    assert names == expected


def test_json_keeps_exact_names(hostile):
    code, out, _ = _invoke("ls", hostile["a"], "--format", "json")
    assert code == 0 and ESC not in out
    assert {t["name"] for t in json.loads(out)["tensors"]} == set(NAMES.values()) | {INT_NAME}


def test_junit_and_github_output_stay_valid(hostile, tmp_path):
    import xml.etree.ElementTree as ET

    junit = tmp_path / "j.xml"
    summary = tmp_path / "summary.md"
    r = CliRunner().invoke(cli, ["check", hostile["a"], "--no-config", "--rule", "*: std < 0.1", "--junit",
                                 str(junit)], env={"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)})
    assert r.exit_code == 1 and ESC not in r.stdout
    names = [c.get("name") for c in ET.parse(junit).getroot().iter("testcase")]
    assert "*: std < 0.1 :: " + safe(NAMES["evil"]) in names and len(names) == 1 + len(NAMES)
    annotations = [ln for ln in r.stdout.splitlines() if ln.startswith("::error")]
    assert annotations and all("\r" not in a for a in annotations)
    assert ESC not in summary.read_text()


class _Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("echo never",))


def test_refused_globals_are_warned_by_every_command(tmp_path):
    """inspect named the refused `posix.system`, but check, diff and trend printed nothing of it and check's
    JSON did not carry it (found by review): every command shows the checkpoint's warnings."""
    torch.manual_seed(0)
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save({"fc.weight": torch.randn(16, 8), "evil": _Evil()}, a)
    torch.save({"fc.weight": torch.randn(16, 8)}, b)
    for args in (["check", a, "--no-config", "--rule", "*: nan_count == 0"], ["diff", a, b], ["trend", a, b],
                 ["inspect", a]):
        code, out, err = _invoke(*args)
        assert code == 0, (args, out, err)
        assert "posix.system" in out and "warning:" in out, (args, out)
    code, out, _ = _invoke("check", a, "--no-config", "--rule", "*: nan_count == 0", "--format", "json")
    assert any("posix.system" in w for w in json.loads(out)["checkpoints"][0]["warnings"])
    code, out, _ = _invoke("trend", a, b, "--format", "json")
    assert any("posix.system" in w for w in json.loads(out)["checkpoints"][0]["warnings"])
