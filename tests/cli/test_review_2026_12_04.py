"""check, ls and byte-size defects found by the 2026-12-04 review, each on files the test builds: a
near-zero gate that could never fail, annotations that broke JSON or hid failures, report paths that could
not be written, JUnit classes that merged two files, tied names missing from CSV/markdown and from gates,
config line numbers, "1024.0 KiB"."""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from cli_helpers import run


def _randn(path, n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    torch.save({"fc.weight": torch.randn(n, n, generator=g)}, path)
    return path


def _near_zero_fraction(w: np.ndarray, rel: float = 0.01) -> float:
    """The README's definition: share of |w| <= rel * max|w|."""
    return float(np.mean(np.abs(w) <= rel * np.abs(w).max()))


def test_near_zero_fraction_rules_fail_when_they_should(tmp_path):
    p = _randn(tmp_path / "nz.pt")
    w = torch.load(p)["fc.weight"].numpy()
    truth = _near_zero_fraction(w)
    assert 0 < truth < 0.5
    r = run("check", p, "--no-config", "--rule", "fc.weight: near_zero_fraction >= 0.5",
            "--rule", "model: near_zero_fraction >= 0.5", "--rule", "fc.weight: near_zero_fraction < 0.5")
    assert r.exit_code == 1, r.output
    assert r.output.count("FAIL") == 2
    r = run("check", p, "--no-config", "--rule", "fc.weight: near_zero_fraction >= 0.5", "--format", "json")
    assert r.exit_code == 1
    d = json.loads(r.stdout)
    rule = d["checkpoints"][0]["rules"][0]
    assert rule["verdict"] == "fail"
    assert rule["failures"][0]["value"] == pytest.approx(truth, abs=2e-3)
    # against a baseline too (delta of the metric)
    b = _randn(tmp_path / "b.pt", seed=1)
    r = run("check", b, "--no-config", "--baseline", p, "--rule", "fc.weight: delta.near_zero_fraction >= 1")
    assert r.exit_code == 1, r.output


def test_every_metric_is_a_plain_python_number():
    import wdist

    rng = np.random.default_rng(0)
    arrays = {"a.weight": rng.standard_normal((32, 32)).astype(np.float32),
              "a.bias": np.zeros(32, np.float32), "b.weight": rng.laplace(size=(8, 8)).astype(np.float16)}
    rep = wdist.inspect(arrays, jobs=1)
    pools = [t.stats for t in rep.tensors] + [lr.stats for lr in rep.layers] + [rep.model.stats]
    for st in pools:
        for k, v in st.items():
            assert v is None or type(v) in (int, float), (k, type(v))


def test_github_annotations_keep_json_parsable_and_count_the_rest(tmp_path):
    d = {f"m{i}.weight": torch.full((4, 4), 0.1 * (i + 1)) + torch.randn(4, 4) * 0.01 for i in range(7)}
    p = tmp_path / "seven.pt"
    torch.save(d, p)
    env = {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": ""}
    r = run("check", p, "--no-config", "--format", "json", "--rule", "*: std > 0.9", env=env)
    assert r.exit_code == 1
    json.loads(r.stdout)  # one JSON document: the annotations went to stderr
    ann = [ln for ln in r.stderr.splitlines() if ln.startswith("::error")]
    assert len(ann) == 6 and "2 more of 7 failing" in ann[-1]
    r = run("check", p, "--no-config", "--rule", "*: std > 0.9", env=env)
    ann = [ln for ln in r.stdout.splitlines() if ln.startswith("::error")]
    assert len(ann) == 6 and "2 more of 7 failing" in ann[-1]


@pytest.mark.parametrize("where", ["missing", "dir", "summary"])
def test_unwritable_report_paths_are_one_error_line(tmp_path, where):
    p = _randn(tmp_path / "a.pt")
    args = ["check", p, "--no-config", "--rule", "model: nan_count == 0"]
    env = None
    if where == "missing":
        target = tmp_path / "no" / "such" / "x.xml"
        args += ["--junit", target]
    elif where == "dir":
        target = tmp_path
        args += ["--junit", target]
    else:
        target = tmp_path / "no" / "s.md"
        env = {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(target)}
    r = run(*args, env=env)
    assert r.exit_code == 2
    errs = [ln for ln in r.stderr.splitlines() if ln.startswith("wdist: error:")]
    assert errs == [errs[0]] and errs[0].startswith(f"wdist: error: {target}: ")
    assert "Traceback" not in r.output and "Error:" not in errs[0].split(": ", 3)[-1][:20]


def test_junit_classes_tell_two_files_of_one_name_apart(tmp_path):
    (tmp_path / "run1").mkdir()
    (tmp_path / "run2").mkdir()
    torch.save({"head.weight": torch.randn(8, 8) * 0.01}, tmp_path / "run1" / "model.pt")
    torch.save({"head.weight": torch.randn(8, 8)}, tmp_path / "run2" / "model.pt")
    junit = tmp_path / "r.xml"
    r = run("check", tmp_path / "run1" / "model.pt", tmp_path / "run2" / "model.pt", "--no-config",
            "--rule", "head.weight: std < 0.2", "--junit", junit)
    assert r.exit_code == 1
    cases = ET.parse(junit).getroot().findall(".//testcase")
    keys = [(c.get("classname"), c.get("name")) for c in cases]
    assert len(keys) == len(set(keys)) == 3
    assert {k[0] for k in keys} == {f"wdist.check.{tmp_path / 'run1' / 'model.pt'}",
                                    f"wdist.check.{tmp_path / 'run2' / 'model.pt'}"}


def _tied(path):
    emb = torch.randn(10, 4)
    torch.save({"emb.weight": emb, "lm_head.weight": emb, "fc.weight": torch.randn(3000, 1000)}, path)
    return path


def test_tied_names_in_csv_markdown_and_rules(tmp_path):
    p = _tied(tmp_path / "tied.pt")
    rows = list(csv.DictReader(io.StringIO(run("ls", p, "--format", "csv").stdout)))
    assert {r["name"]: r["aliases"] for r in rows} == {"emb.weight": "lm_head.weight", "fc.weight": ""}
    assert {r["name"]: int(r["nbytes"]) for r in rows} == {"emb.weight": 160, "fc.weight": 12_000_000}
    md = run("ls", p, "--format", "markdown").stdout
    assert "| emb.weight (= lm_head.weight) |" in md
    assert "| 12000000 |" in md and "12,000,000" not in md.split("\n", 2)[2]  # cells: plain integers
    # a gate on the tied name checks the tensor it names
    r = run("check", p, "--no-config", "--rule", "lm_head.*: std >= 0")
    assert r.exit_code == 0, r.output
    r = run("check", p, "--no-config", "--rule", "lm_head.*: std > 100")
    assert r.exit_code == 1 and "emb.weight" in r.output


def test_config_errors_name_the_line_of_the_rule(tmp_path):
    cfg = tmp_path / "line.toml"
    cfg.write_text('rules = [\n  "*: std > 1e5",\n  "*: std > 1e",\n]\n')
    p = _randn(tmp_path / "a.pt")
    r = run("check", p, "--config", cfg)
    assert r.exit_code == 2
    assert f"{cfg}:3:" in r.output and f"{cfg}:2:" not in r.output


@pytest.mark.parametrize("n, text", [(1023, "1023 B"), (1024, "1.0 KiB"), (1048575, "1.0 MiB"),
                                     (1048576, "1.0 MiB"), (1073741823, "1.0 GiB"), (1048452, "1023.9 KiB"),
                                     (1024 ** 4 - 1, "1.0 TiB")])
def test_byte_sizes_never_read_1024_of_a_unit(n, text):
    from wdist.cli.render.common import human_bytes

    assert human_bytes(n) == text


@pytest.mark.parametrize("cmd", ["inspect", "trend"])
def test_a_tensorboard_folder_that_cannot_be_made_is_named(tmp_path, cmd):
    pytest.importorskip("tensorboardX")
    p = _randn(tmp_path / "a.pt")
    (tmp_path / "afile").write_text("x")
    target = tmp_path / "afile" / "sub"
    args = [cmd, p] + ([p] if cmd == "trend" else []) + ["--tensorboard", target]
    r = run(*args)
    assert r.exit_code == 2
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("wdist: error:")]
    assert errors == [f"wdist: error: {target}: cannot write TensorBoard events there: Not a directory"]


def test_json_keeps_every_layer_in_file_order_whatever_sort_and_top(tmp_path):
    g = torch.Generator().manual_seed(0)
    torch.save({f"l{i}.weight": torch.randn(16, 16, generator=g) * (i + 1) for i in range(5)}, tmp_path / "s.pt")
    d = json.loads(run("inspect", tmp_path / "s.pt", "--sort", "std", "--top", "2", "--format", "json").stdout)
    assert [lr["name"] for lr in d["layers"]] == [f"l{i}" for i in range(5)]
    rows = list(csv.DictReader(io.StringIO(run("inspect", tmp_path / "s.pt", "--sort", "std", "--top", "2",
                                               "--format", "csv").stdout)))
    assert [r["name"] for r in rows] == ["l4", "l3"]


def test_junit_is_written_when_the_baseline_cannot_be_read(tmp_path):
    p = _randn(tmp_path / "a.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    junit = tmp_path / "bj.xml"
    r = run("check", p, "--no-config", "--baseline", bad, "--rule", "*: rel_l2_change < 0.1", "--junit", junit)
    assert r.exit_code == 2
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("wdist: error:")][0].startswith(f"wdist: error: {bad}:")
    root = ET.parse(junit).getroot()
    suite = root.find("testsuite")
    assert suite is not None and suite.get("errors") == "1"
    err = root.find(".//testcase/error")
    assert err is not None and str(bad) in err.get("message", "")
