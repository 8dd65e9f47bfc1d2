"""Output and exit-code defects found by the 2026-12-03 reviews, each on files the test builds: merged notes
that split names, failing values rounded into passing ones, prose wrapped inside names or past the width,
a stale "last value", exit codes lost to a closed pipe, one-line usage errors, the analysed-values header."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from cli_helpers import run
from safetensors.numpy import save_file


def test_notes_of_numbered_layers_keep_their_tensor_names_whole():
    from wdist.cli.render.common import group_notes

    rows = [(str(i), [f"still moving: L2 norm changed +{10 + i}.0% ({i}.bias) over the last interval"])
            for i in range(3)]
    out = group_notes(rows)
    # "0.bias" is a name: never merged into "(0 / 1 / 2.bias)", which names no tensor at all
    assert out == [f"{i}: still moving: L2 norm changed +{10 + i}.0% ({i}.bias) over the last interval"
                   for i in range(3)]
    # a number at the end of a sentence is still a number
    merged = group_notes([("a", ["grew by 5."]), ("b", ["grew by 7."])])
    assert merged == ["a, b (2): grew by 5 / 7."]


@pytest.mark.parametrize("value, op, target, shown", [
    (1.0000100135803223, "<=", 1.0, "1.00001"),
    (0.99995, ">=", 1.0, "0.99995"),
    (0.10000001, "<=", 0.1, "0.10000001"),
    (0.123456789, "<", 0.1234567, "0.1235"),
    (2.5, "<=", 1.0, "2.5"),
    (float("inf"), "<=", 1.0, "inf"),
])
def test_a_failing_value_is_shown_with_the_digits_that_fail(value, op, target, shown):
    from wdist.analyzers.check import OPS
    from wdist.cli.render.check_render import failing_value

    assert failing_value(value, op, target) == shown
    if shown != "inf":
        assert not OPS[op](float(shown), target)


def test_check_prints_a_failing_max_that_explains_the_fail(tmp_path):
    p = tmp_path / "z.safetensors"
    save_file({"ones.weight": np.array([1.0, 1.00001], dtype=np.float32)}, str(p))
    r = run("check", str(p), "--no-config", "--rule", "ones.weight: max <= 1")
    assert r.exit_code == 1
    assert "ones.weight: max = 1.00001" in r.output, r.output


def test_prose_never_breaks_a_name_with_spaces_and_counts_wide_characters():
    from rich.cells import cell_len

    from wdist.cli.render.common import fold

    names = [f"l{i}" for i in range(28)] + ["my block", "宽字符层"]
    text = ", ".join(names) + " (30): still moving: L2 norm changed +5.0% over the last interval"
    for width in range(20, 120):
        lines = fold(text, width, "  ", keep=["my block"])
        joined = " ".join(ln.strip() for ln in lines)
        assert "my block" in joined, (width, lines)
        assert not any(ln.rstrip().endswith(" my") for ln in lines)
        # every unbreakable piece here is narrower than 20 cells: no line is wider than the width
        assert all(cell_len(ln) <= width for ln in lines), (width, lines)
    # the words are the text's, in order
    assert " ".join(" ".join(ln.split()) for ln in fold(text, 40, keep=["my block"])) == " ".join(text.split())


def test_trend_last_value_is_the_last_readable_checkpoints_own(tmp_path):
    d = tmp_path / "inf"
    d.mkdir()
    save_file({"a.weight": np.full((4, 4), 2.0, dtype=np.float32)}, str(d / "epoch1.safetensors"))
    save_file({"a.weight": np.full((4, 4), np.inf, dtype=np.float32)}, str(d / "epoch2.safetensors"))
    r = run("trend", str(d), "--metric", "l2_norm")
    assert r.exit_code == 0, r.output
    row = next(ln for ln in r.output.splitlines() if ln.startswith("a "))
    assert " 8" not in row and "-" in row, row  # 8 is epoch 1's L2; epoch 2 has none
    assert "a: non-finite values: 16 NaN/Inf at epoch 2" in r.output, r.output


def _run_with_norm(tmp_path, ext: str) -> str:
    """A Linear + LayerNorm run whose beta starts at exactly zero and moves."""
    d = tmp_path / f"run_{ext}"
    d.mkdir()
    g = torch.Generator().manual_seed(0)
    w = torch.randn(32, 16, generator=g) * 0.1
    for step, beta in ((100, 0.0), (200, 0.05), (300, 0.10)):
        sd = {"0.weight": w * (1 + step / 1000), "0.bias": torch.full((32,), 0.01 * step / 100),
              "1.weight": torch.ones(32), "1.bias": torch.randn(32, generator=g) * beta}
        if ext == "pt":
            torch.save(sd, d / f"step{step}.pt")
        else:
            save_file({k: v.numpy() for k, v in sd.items()}, str(d / f"step{step}.safetensors"))
    return str(d)


@pytest.mark.parametrize("ext", ["pt", "safetensors"])
def test_trend_reads_a_norm_layers_zero_beta_as_init_and_its_move_as_moving(tmp_path, ext):
    d = _run_with_norm(tmp_path, ext)
    r = run("trend", d, "--format", "json")
    rep = json.loads(r.output)
    notes = {lt["name"]: lt["notes"] for lt in rep["layers"]}
    assert not any("sparse" in n for n in notes["1"]), notes["1"]
    assert any(n.startswith("still moving") and "1.bias" in n for n in notes["1"]), notes["1"]
    # an unreadable last checkpoint keeps the movement of the last readable interval
    (tmp_path / f"run_{ext}" / f"step400.{ext}").write_bytes(b"not a checkpoint")
    r2 = run("trend", d, "--format", "json")
    assert r2.exit_code == 2
    rep2 = json.loads(r2.stdout)
    notes2 = {lt["name"]: lt["notes"] for lt in rep2["layers"]}
    assert [n for n in notes2["0"] if n.startswith("still moving")] == \
           [n for n in notes["0"] if n.startswith("still moving")] != []
    assert any(n.startswith("still moving at the last checkpoint") for n in rep2["notes"])


def test_a_norm_layer_reads_as_its_gamma_in_every_format(tmp_path):
    readings = {}
    for ext in ("pt", "safetensors"):
        d = _run_with_norm(tmp_path, ext)
        rep = json.loads(run("inspect", f"{d}/step100.{ext}", "--format", "json").output)
        layer = next(lr for lr in rep["layers"] if lr["name"] == "1")
        readings[ext] = (layer["reading"]["group"], layer["reading"]["shape"])
    assert readings["pt"] == readings["safetensors"] and readings["pt"][0] == "norm_scale", readings


def _sh(cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", "set -o pipefail; " + cmd], capture_output=True, text=True)


def test_a_failing_check_piped_into_head_still_fails_and_writes_its_junit(tmp_path):
    p = tmp_path / "many.safetensors"
    save_file({f"layer{i}.weight": np.zeros(4, dtype=np.float32) for i in range(3000)}, str(p))
    junit = tmp_path / "out.xml"
    out = _sh(f"{sys.executable} -m wdist check {p} --no-config --rule '*.weight: zero_fraction < 0.5' "
              f"--rule '*.weight: max <= 0' --junit {junit} | head -1")
    assert out.returncode == 1, out.stderr
    assert len(ET.parse(junit).getroot().findall(".//testcase")) > 3000
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"nope")
    out = _sh(f"{sys.executable} -m wdist check {p} {bad} --no-config --rule 'model: std >= 0' | head -1")
    assert out.returncode == 2 and "bad.pt" in out.stderr, (out.returncode, out.stderr)


def test_trend_with_an_unreadable_checkpoint_piped_into_head_exits_2(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    for i in range(1, 4):
        save_file({f"layer{j}.weight": np.full(4, float(i + j), dtype=np.float32) for j in range(400)},
                  str(d / f"epoch{i}.safetensors"))
    (d / "epoch4.safetensors").write_bytes(b"\x00" * 16)
    out = _sh(f"{sys.executable} -m wdist trend {d} | head -2")
    assert out.returncode == 2 and "epoch4" in out.stderr, (out.returncode, out.stderr)


@pytest.mark.parametrize("args", [("inspect", "x.pt", "--role", "wieght"), ("--width", "5", "ls", "x"),
                                  ("nosuchcommand",), ("inspect",)])
def test_usage_errors_are_one_line(args):
    out = subprocess.run([sys.executable, "-m", "wdist", *args], capture_output=True, text=True)
    assert out.returncode == 2
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("wdist: error: ") and "--help" in lines[0], out.stderr


def test_the_analysed_header_says_what_the_value_count_covers(tmp_path):
    m = torch.nn.Linear(8, 4)
    opt = torch.optim.Adam(m.parameters())
    m(torch.randn(2, 8)).sum().backward()
    opt.step()
    p = tmp_path / "train.pt"
    torch.save({"model": m.state_dict(), "optimizer": opt.state_dict()}, p)
    r = run("inspect", str(p), "--role", "all")
    rep = json.loads(run("inspect", str(p), "--role", "all", "--format", "json").output)
    n_t, pooled = len(rep["tensors"]), rep["model"]["tensors"]
    assert pooled == 2 and n_t > pooled
    line = next(ln for ln in r.output.splitlines() if ln.startswith("analysed:"))
    assert f"{n_t} tensors; model statistics: 36 values in 2 of them" in line, line
    plain = run("inspect", str(p))
    line = next(ln for ln in plain.output.splitlines() if ln.startswith("analysed:"))
    assert "analysed: 36 values in 2 tensors;" in line, line


def test_trend_says_a_tensor_left_zero_as_still_moving(tmp_path):
    d = tmp_path / "two"
    d.mkdir()
    w = np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8)
    save_file({"ln.weight": np.ones(8, dtype=np.float32), "ln.bias": np.zeros(8, dtype=np.float32), "fc.weight": w},
              str(d / "step1.safetensors"))
    save_file({"ln.weight": np.ones(8, dtype=np.float32), "ln.bias": np.full(8, 0.5, dtype=np.float32),
               "fc.weight": w}, str(d / "step2.safetensors"))
    rep = json.loads(run("trend", str(d), "--format", "json").stdout)
    notes = {lt["name"]: lt["notes"] for lt in rep["layers"]}
    assert "still moving: L2 norm went from 0 to 1.41 (ln.bias) over the last interval" in notes["ln"], notes
    assert notes["fc"] == ["settled: every tensor's L2 norm changed <0.5% over the last interval"], notes
    assert rep["notes"][0] == "still moving at the last checkpoint: 1 layer: ln", rep["notes"]


@pytest.mark.parametrize("share, shown", [(0, "0.0%"), (1, "100.0%"), (0.5, "50.0%"), (0.99995, "99.995%"),
                                          (1e-5, "0.001%"), (0.0004, "0.04%"), (1e-12, "1e-10%")])
def test_a_percent_never_rounds_to_none_or_all(share, shown):
    from wdist.cli.render.common import pct

    assert pct(share) == shown
    if share not in (0, 1):
        assert float(pct(share)[:-1]) not in (0.0, 100.0)
    assert float(pct(1 - 1e-15)[:-1]) != 100.0


def test_stderr_into_the_same_closed_pipe_keeps_the_exit_code(tmp_path):
    p = tmp_path / "n.safetensors"
    save_file({"a.weight": np.ones(4, dtype=np.float32)}, str(p))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"nope")
    d = tmp_path / "run"
    d.mkdir()
    for i in range(1, 3):
        save_file({"a.weight": np.full(4, float(i), dtype=np.float32)}, str(d / f"epoch{i}.safetensors"))
    (d / "epoch3.safetensors").write_bytes(b"\x00" * 16)
    # `head -c0` leaves at once: every write, the stderr error line included, meets a closed pipe
    for _ in range(3):
        out = _sh(f"{sys.executable} -m wdist check {p} {bad} --no-config --rule '*.weight: zero_fraction >= 0.5' "
                  "2>&1 | head -c0")
        assert out.returncode == 2, out
        out = _sh(f"{sys.executable} -m wdist trend {d} 2>&1 | head -c0")
        assert out.returncode == 2, out
        out = _sh(f"{sys.executable} -m wdist inspect {bad} 2>&1 | head -c0")
        assert out.returncode == 2, out


@pytest.mark.parametrize("args", [("cache", "info", "--debug"), ("cache", "clear", "--quiet"),
                                  ("cache", "info", "--width", "40")])
def test_global_options_work_after_a_subcommand(tmp_path, args):
    r = run(*args, env={"WDIST_CACHE_DIR": str(tmp_path / "c")})
    assert r.exit_code == 0, r.output
