"""Global options anywhere, help on every option, clean usage errors, broken pipes, units, trend wording,
and one hostile file among good ones never hiding the others."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import click
import pytest
import torch
from cli_helpers import run
from click.testing import CliRunner

from wdist.cli.main import COMMANDS, LazyGroup, cli


def _invoke(*args: object) -> click.testing.Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    d = tmp_path_factory.mktemp("small")
    torch.manual_seed(0)
    w = torch.randn(16, 8)
    paths = []
    for step in (1, 2, 3):
        p = d / f"step{step}.pt"
        torch.save({"fc.weight": w * (1 + step / 10), "fc.bias": torch.zeros(16) + step,
                    "head.weight": torch.randn(4, 16)}, p)
        paths.append(str(p))
    return paths


def test_global_options_before_or_after_the_command(small_run, tmp_path):
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"garbage garbage")
    for args in (["--debug", "ls", str(bad)], ["ls", str(bad), "--debug"]):
        out = subprocess.run([sys.executable, "-m", "wdist", *args], capture_output=True, text=True)
        assert out.returncode != 0 and "Traceback" in out.stderr, args
    for args in (["-q", "inspect", small_run[0]], ["inspect", small_run[0], "--quiet"], ["ls", small_run[0], "-q"],
                 ["check", small_run[0], "--no-config", "--rule", "model: std > 0", "--quiet"]):
        assert _invoke(*args).exit_code == 0, args


def test_every_option_has_help_and_enums_are_choices():
    ctx = click.Context(cli)
    for name in COMMANDS:
        cmd = LazyGroup.get_command(cli, ctx, name)  # type: ignore[arg-type]
        assert cmd is not None
        for p in cmd.params:
            if isinstance(p, click.Option):
                assert p.help, f"wdist {name} {p.opts} has no help"
        for opt in ("--format", "--role", "--order", "--input-format", "--image-format"):
            for p in cmd.params:
                if opt in getattr(p, "opts", []):
                    assert isinstance(p.type, click.Choice), (name, opt)


def test_usage_errors_are_clean(small_run):
    r = _invoke("check", small_run[0], "--no-config", "--rule", "model: std > 0", "--role", "bogus")
    assert r.exit_code == 2 and "Invalid value for '--role'" in r.output and "ValueError" not in r.output
    for cmd in (["inspect", small_run[0]], ["check", small_run[0], "--no-config", "--rule", "model: std > 0"]):
        r = _invoke(*cmd, "--near-zero-rel", "nan")
        assert r.exit_code == 2 and "Invalid value for '--near-zero-rel'" in r.output, r.output
        assert "Traceback" not in r.output


def test_sort_takes_labels_and_metric_names(small_run):
    r = _invoke("inspect", small_run[0], "--tensors", "--sort", "params", "--format", "csv")
    names = [ln.split(",")[0] for ln in r.output.splitlines()[1:]]
    assert names == ["fc.weight", "head.weight", "fc.bias"]
    for label, metric in (("kurt", "kurtosis"), ("near0", "near_zero_fraction"), ("top1%", "top1pct_l2_mass")):
        r1 = _invoke("inspect", small_run[0], "--tensors", "--sort", label, "--format", "csv").output
        r2 = _invoke("inspect", small_run[0], "--tensors", "--sort", metric, "--format", "csv").output
        assert r1 == r2 and r1.count("\n") == 4
    d = json.loads(_invoke("inspect", small_run[0], "--tensors", "--format", "json").output)
    by_max = sorted(d["tensors"], key=lambda t: -max(abs(t["stats"]["max"]), abs(t["stats"]["min"])))
    r = _invoke("inspect", small_run[0], "--tensors", "--sort", "max|w|", "--format", "csv")
    assert [ln.split(",")[0] for ln in r.output.splitlines()[1:]] == [t["name"] for t in by_max]
    assert [t["name"] for t in by_max][-1] == "fc.bias"  # all 1.0, below the random weights
    r = _invoke("inspect", small_run[0], "--sort", "bogus")
    assert r.exit_code == 2 and "kurt" in r.output and "params" in r.output and "kurtosis" in r.output


def test_check_says_which_config_it_used(small_run, tmp_path, monkeypatch):
    (tmp_path / "wdist.toml").write_text('rules = ["model: std > 0"]\n')
    monkeypatch.chdir(tmp_path)
    r = _invoke("check", small_run[0])
    assert r.exit_code == 0 and "config: " in r.output and "wdist.toml" in r.output
    d = json.loads(_invoke("check", small_run[0], "--format", "json").output)
    assert d["config"].endswith("wdist.toml")
    r = _invoke("check", small_run[0], "--no-config", "--rule", "model: std > 0")
    assert "config: none" in r.output


def _many_tensors(tmp_path) -> str:
    p = tmp_path / "many.pt"
    torch.save({f"layer{i}.weight": torch.ones(2) for i in range(3000)}, p)
    return str(p)


@pytest.mark.parametrize("fmt", ["table", "csv"])
def test_broken_pipe_exits_0_quietly(tmp_path, fmt):
    p = _many_tensors(tmp_path)
    cmd = f"set -o pipefail; {sys.executable} -m wdist ls {p} --format {fmt} | head -1"
    out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stderr == "" and len(out.stdout.splitlines()) == 1


def test_one_unit_system():
    from wdist.cli.render.common import human_bytes

    assert human_bytes(1_073_741_824) == "1.0 GiB" and human_bytes(1_100_000_000) == "1.0 GiB"
    assert human_bytes(1536) == "1.5 KiB"
    import inspect

    from wdist.cli import progress

    assert "binary_units=True" in inspect.getsource(progress)


def test_trend_wording_and_no_empty_sections(small_run):
    r = _invoke("trend", small_run[0])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("1 checkpoint, ") and "1 checkpoints" not in r.output
    lines = r.output.splitlines()
    for i, ln in enumerate(lines):
        if ln == "Reading":
            assert i + 1 < len(lines) and lines[i + 1].startswith("  "), r.output
    r = _invoke("trend", *small_run)
    assert r.output.startswith("3 checkpoints, ordered by step number in the names")


def test_trend_with_unreadable_last_checkpoint_keeps_changes(small_run, tmp_path):
    bad = tmp_path / "step9.pt"
    bad.write_bytes(b"not a checkpoint at all")
    r = _invoke("trend", *small_run, bad, "--format", "json")
    assert r.exit_code == 2
    d = json.loads(r.stdout)
    fc = next(lr for lr in d["layers"] if lr["name"] == "fc")
    assert fc["series"]["l2_norm"][-1] is None
    first, last = fc["series"]["l2_norm"][0], fc["series"]["l2_norm"][-2]
    assert fc["change_first"]["l2_norm"] == pytest.approx((last - first) / first)
    assert fc["change_prev"]["l2_norm"] == pytest.approx((last - fc["series"]["l2_norm"][1]) / fc["series"]["l2_norm"][1])
    assert d["checkpoints"][-1]["error"]
    r = _invoke("trend", *small_run, bad)
    assert r.exit_code == 2 and "unreadable:" in r.stdout and "%" in r.stdout.split("layer", 1)[1]
    assert f"wdist: error: {bad}: " in r.stderr


def test_one_hostile_file_does_not_abort_check_or_trend(small_run, tmp_path, monkeypatch):
    from wdist.analyzers import inspect as inspect_mod
    from wdist.analyzers import trend as trend_mod

    real = inspect_mod.analyse
    hostile = small_run[1]

    def analyse(ck, *a, **k):
        if ck.path == hostile:
            raise RecursionError("maximum recursion depth exceeded")
        return real(ck, *a, **k)

    monkeypatch.setattr(inspect_mod, "analyse", analyse)
    monkeypatch.setattr(trend_mod, "analyse", analyse)
    junit = tmp_path / "j.xml"
    r = _invoke("check", *small_run, "--no-config", "--rule", "model: std > 0", "--junit", junit)
    assert r.exit_code == 2
    assert r.stdout.count("PASS") == 2
    assert f"wdist: error: {hostile}: RecursionError: maximum recursion depth exceeded" in r.stderr
    suites = ET.parse(junit).getroot().findall("testsuite")
    assert [s.get("name") for s in suites] == small_run and suites[1].get("errors") == "1"
    r = _invoke("trend", *small_run)
    assert r.exit_code == 2 and "fc" in r.stdout and "RecursionError" in r.stdout
    assert f"wdist: error: {hostile}: RecursionError" in r.stderr
    r = _invoke("inspect", hostile)
    assert r.exit_code == 2 and r.output.strip().splitlines() == [
        f"wdist: error: {hostile}: RecursionError: maximum recursion depth exceeded "
        "(run with --debug for a traceback)"]


def test_error_line_escapes_the_path(tmp_path):
    p = tmp_path / "x\x1b[2Kverified\udcff.pt"  # a non-UTF-8 byte in the name (surrogateescape)
    try:
        p.write_bytes(b"junk junk junk")
    except (UnicodeEncodeError, OSError):
        pytest.skip("file system refuses the name")
    out = subprocess.run([sys.executable, "-m", "wdist", "ls", str(p)], capture_output=True)
    assert out.returncode == 2 and b"\x1b" not in out.stderr and b"\\x1b[2Kverified\\udcff.pt" in out.stderr
    assert len(out.stderr.splitlines()) == 1


def test_epochs_n_saves_epoch_n():
    from wdist.cli.demo_train import epochs_saved

    assert epochs_saved(3) == [1, 2, 3]
    assert epochs_saved(20) == [1, 2, 5, 10, 20]
    assert epochs_saved(7) == [1, 2, 5, 7]
    assert epochs_saved(1) == [1]


def test_run_helper_still_raises(small_run):
    assert run("ls", small_run[0]).exit_code == 0


def test_identical_notes_are_grouped_without_losing_a_name_or_a_number():
    from wdist.cli.render.common import group_notes

    rows = [("conv2", ["Gaussian-like (kurtosis -0.46; a normal gives 0)"]),
            ("conv3", ["Gaussian-like (kurtosis -0.23; a normal gives 0)"]),
            ("h.10", ["moved +7.2% (h.10.weight)"]), ("h.11", ["moved +7.2% (h.11.weight)"])]
    out = group_notes(rows)
    assert out[0] == "conv2, conv3 (2): Gaussian-like (kurtosis -0.46 / -0.23; a normal gives 0)"
    # digits inside names are part of the text, not numbers to merge: those notes stay apart
    assert out[1:] == ["h.10: moved +7.2% (h.10.weight)", "h.11: moved +7.2% (h.11.weight)"]


def test_version_is_the_installed_one_and_costs_nothing_elsewhere():
    from importlib.metadata import version

    from wdist.cli.main import cli

    r = CliRunner().invoke(cli, ["--version"])
    assert r.exit_code == 0 and r.output == f"wdist, version {version('wdist')}\n"
    # `wdist --help` (and every command) starts without importlib.metadata: the version is looked up lazily
    code = "import sys; from wdist.cli.main import cli; print('importlib.metadata' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
