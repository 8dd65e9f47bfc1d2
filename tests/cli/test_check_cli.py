import json
import xml.etree.ElementTree as ET

import torch
from cli_helpers import run


def _pruned(tmp_path):
    torch.manual_seed(0)
    w = torch.randn(16, 16)
    w[w.abs() < 0.7] = 0
    p = tmp_path / "pruned.pt"
    torch.save({"fc.weight": w, "fc.bias": torch.zeros(16), "head.weight": torch.randn(4, 16)}, p)
    return p


def test_exit_codes(tmp_path):
    p = _pruned(tmp_path)
    assert run("check", p, "--no-config", "--rule", "fc.weight: zero_fraction >= 0.4").exit_code == 0
    r = run("check", p, "--no-config", "--rule", "*.weight: zero_fraction >= 0.4")
    assert r.exit_code == 1 and "head.weight" in r.output
    assert run("check", p, "--no-config", "--rule", "typo*: std > 0").exit_code == 2
    assert run("check", p, "--no-config", "--rule", "typo*: std > 0", "--allow-empty").exit_code == 0
    assert run("check", p, "--no-config", "--rule", "*: bogus > 0").exit_code == 2
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    r = run("check", p, bad, "--no-config", "--rule", "model: nan_count == 0")
    assert r.exit_code == 2 and "PASS" in r.output and "bad.pt" in r.output


def test_json_and_junit(tmp_path):
    p = _pruned(tmp_path)
    junit = tmp_path / "report.xml"
    r = run("check", p, "--no-config", "--rule", "*.weight: zero_fraction >= 0.4", "--rule", "model: nan_count == 0",
            "--format", "json", "--junit", junit)
    d = json.loads(r.output)
    assert d["schema"] == "wdist/check/1" and d["exit_code"] == 1 and d["passed"] is False
    rules = d["checkpoints"][0]["rules"]
    assert rules[0]["verdict"] == "fail" and rules[0]["failures"][0]["name"] == "head.weight"
    root = ET.parse(junit).getroot()
    cases = root.findall(".//testcase")
    assert len(cases) == 3  # two rules + one failing tensor
    assert sum(1 for c in cases if c.find("failure") is not None) == 2


def test_github_annotations_and_summary(tmp_path):
    p = _pruned(tmp_path)
    summary = tmp_path / "summary.md"
    r = run("check", p, "--no-config", "--rule", "*.weight: zero_fraction >= 0.4",
            env={"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)})
    lines = [ln for ln in r.output.splitlines() if ln.startswith("::error")]
    assert lines and lines[0].startswith(f"::error file={p},title=wdist *.weight%3A zero_fraction >= 0.4::head.weight")
    assert "| checkpoint | rule | verdict | failing |" in summary.read_text()


def test_config_file_and_baseline(tmp_path, monkeypatch):
    p = _pruned(tmp_path)
    base = tmp_path / "base.pt"
    torch.save({"fc.weight": torch.load(p)["fc.weight"] * 1.01, "head.weight": torch.load(p)["head.weight"],
                "fc.bias": torch.zeros(16)}, base)
    (tmp_path / "wdist.toml").write_text('rules = ["*: rel_l2_change <= 0.05", "model: nan_count == 0"]\n'
                                         'baseline = "base.pt"\nexclude = ["*.bias"]\n')
    monkeypatch.chdir(tmp_path)
    r = run("check", p)
    assert r.exit_code == 0, r.output
    (tmp_path / "wdist.toml").write_text('rules = ["*: rel_l2_change <= 0.001"]\nbaseline = "base.pt"\n')
    assert run("check", p).exit_code == 1
    (tmp_path / "wdist.toml").write_text('rules = ["*: kurtossis < 3"]\n')
    r = run("check", p)
    assert r.exit_code == 2 and "wdist.toml:1: unknown metric 'kurtossis'" in r.output
