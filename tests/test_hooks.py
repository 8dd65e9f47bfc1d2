"""The pre-commit hook (.pre-commit-hooks.yaml) and the composite GitHub Action (action.yml), run for real:
pre-commit's own machinery on a temporary repository, the action's shell steps through bash."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

yaml = pytest.importorskip("yaml")
pytest.importorskip("pre_commit")

ROOT = Path(__file__).resolve().parents[1]
EXTENSIONS = ("safetensors", "pt", "pth", "bin", "ckpt", "h5", "hdf5", "keras", "npy", "npz", "gguf", "onnx",
              "msgpack")
PASSING = 'rules = ["*.weight: zero_fraction >= 0.5", "model: nan_count == 0"]\n'
FAILING = 'rules = ["*.weight: zero_fraction >= 0.9"]\n'
BIN = str(Path(sys.executable).parent)  # where this environment's `wdist` and `pre-commit` live


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main",
                    *args], cwd=cwd, check=True, capture_output=True)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "PRE_COMMIT", "GIT_"))}
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
    env.update(extra)
    return env


def _checkpoint(path: Path, zero_cols: int = 5) -> None:
    """A weight with 5 of its 8 columns exactly zero: zero_fraction 0.625."""
    w = np.random.default_rng(0).normal(size=(16, 8)).astype(np.float32)
    w[:, :zero_cols] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"fc.weight": w, "fc.bias": np.zeros(16, np.float32)}, str(path))


def _manifest() -> list[dict[str, Any]]:
    from pre_commit.clientlib import load_manifest

    return list(load_manifest(str(ROOT / ".pre-commit-hooks.yaml")))  # pre-commit's own schema check


def _source_repo(dest: Path) -> Path:
    """A git repository holding the working tree's package (committed, untracked-but-not-ignored files
    included) and the hook file, committed: try-repo and pip see what is here now, not the last commit."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.splitlines()
    for rel in listed:
        src = ROOT / rel
        if rel.split("/")[0] in ("tests", "benchmarks", "docs") or not src.is_file():
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)
    assert (dest / ".pre-commit-hooks.yaml").is_file() and (dest / "pyproject.toml").is_file()
    _git(dest, "init", "-q")
    _git(dest, "add", "-A")
    _git(dest, "commit", "-qm", "wdist working tree")
    return dest


def _user_repo(d: Path, config: str) -> Path:
    d.mkdir()
    _git(d, "init", "-q")
    _checkpoint(d / "models" / "model.safetensors")
    (d / "notes.txt").write_text("not a checkpoint\n")
    (d / "wdist.toml").write_text(config)
    _git(d, "add", "-A")
    return d


# ---------------------------------------------------------------------------------------------- pre-commit


def test_manifest() -> None:
    (hook,) = _manifest()
    assert hook["id"] == "wdist-check" and hook["entry"] == "wdist check" and hook["language"] == "python"
    assert hook["pass_filenames"] is True
    files = re.compile(hook["files"])
    for ext in EXTENSIONS:
        assert files.search(f"runs/a/model.{ext}"), ext
        assert files.search(f"MODEL.{ext.upper()}"), ext
    assert files.search("vit.weights.h5")
    for other in ("train.py", "model.pt.txt", "config.json", "weights.h5.md", "notes", "apt", "model.safetensors/x"):
        assert not files.search(other), other


def test_hook_files_filter_with_pre_commit_run(tmp_path: Path) -> None:
    """pre-commit's own file classification with the manifest's files/types: only the checkpoint reaches
    `wdist check` (a text file would make it exit 2), and the hook's exit code follows the rules."""
    (hook,) = _manifest()
    local = {"repos": [{"repo": "local", "hooks": [{
        "id": hook["id"], "name": hook["name"], "entry": hook["entry"], "language": "system",
        "files": hook["files"], "types": hook["types"]}]}]}
    repo = _user_repo(tmp_path / "user", PASSING)
    (repo / ".pre-commit-config.yaml").write_text(yaml.safe_dump(local))
    _git(repo, "add", "-A")
    cmd = [sys.executable, "-m", "pre_commit", "run", "wdist-check", "--verbose", "--files",
           "models/model.safetensors", "notes.txt", "wdist.toml"]
    env = _env(PRE_COMMIT_HOME=str(tmp_path / "home"))
    ok = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "Passed" in ok.stdout and "PASS *.weight: zero_fraction >= 0.5" in ok.stdout
    assert "notes.txt" not in ok.stdout and "models/model.safetensors" in ok.stdout
    (repo / "wdist.toml").write_text(FAILING)
    bad = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "Failed" in bad.stdout and "FAIL *.weight: zero_fraction >= 0.9" in bad.stdout
    nothing = subprocess.run(cmd[:-3] + ["notes.txt"], cwd=repo, env=env, capture_output=True, text=True,
                             timeout=120)
    assert nothing.returncode == 0 and "(no files to check)Skipped" in nothing.stdout


@pytest.mark.slow  # pre-commit builds a venv and pip-installs wdist and its deps: ~50 s, needs a package index
def test_try_repo(tmp_path: Path) -> None:
    src = _source_repo(tmp_path / "src")
    repo = _user_repo(tmp_path / "user", PASSING)
    env = _env(PRE_COMMIT_HOME=str(tmp_path / "home"))  # the hook's venv, built once, reused by the 2nd run
    cmd = [sys.executable, "-m", "pre_commit", "try-repo", str(src), "wdist-check", "--verbose", "--files",
           "models/model.safetensors", "notes.txt"]
    ok = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "Passed" in ok.stdout and "PASS model: nan_count == 0" in ok.stdout
    (repo / "wdist.toml").write_text(FAILING)
    bad = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "Failed" in bad.stdout and "fc.weight: zero_fraction = 0.625" in bad.stdout


# ------------------------------------------------------------------------------------------ GitHub Action


def _action() -> dict[str, Any]:
    with open(ROOT / "action.yml", encoding="utf-8") as f:
        return dict(yaml.safe_load(f))


_EXPR = re.compile(r"\$\{\{\s*inputs\.([A-Za-z0-9_-]+)\s*\}\}")


def _sub(text: str, inputs: dict[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        return inputs[m.group(1)]  # a KeyError is an expression naming an input the action lacks

    return _EXPR.sub(one, text)


def _run_action(workspace: Path, given: dict[str, str], extra_env: dict[str, str] | None = None) -> tuple[int, str]:
    """Every `run:` step of the action, in order, as the runner would (bash -eo pipefail, inputs
    substituted, step env, working-directory); setup-python is the test's own interpreter. Stops at the
    first failing step like the runner. Returns (exit code, output)."""
    action = _action()
    inputs = {k: str(v.get("default", "")) for k, v in action["inputs"].items()}
    assert set(given) <= set(inputs), set(given) - set(inputs)
    inputs.update(given)
    output = workspace / "github_output"
    out = ""
    for step in action["runs"]["steps"]:
        if "run" not in step:
            continue
        assert step["shell"] == "bash"
        env = _env(GITHUB_OUTPUT=str(output), **(extra_env or {}))
        env.update({k: _sub(str(v), inputs) for k, v in step.get("env", {}).items()})
        cwd = workspace / _sub(step.get("working-directory", "."), inputs)
        script = workspace / "step.sh"
        script.write_text(_sub(step["run"], inputs))
        p = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)], cwd=cwd, env=env,
                           capture_output=True, text=True, timeout=600)
        out += p.stdout + p.stderr
        if p.returncode:
            return p.returncode, out
    return 0, out


def test_action_shape() -> None:
    a = _action()
    assert a["runs"]["using"] == "composite"
    steps = a["runs"]["steps"]
    assert steps[0]["uses"].startswith("actions/setup-python@")
    assert steps[0]["with"]["python-version"] == "${{ inputs.python-version }}"
    assert {"paths", "rules", "config", "junit", "python-version", "install"} <= set(a["inputs"])
    assert a["inputs"]["install"]["default"] == "wdist" and a["inputs"]["paths"]["required"] is True
    # nothing is uploaded by the action itself
    assert not any("upload" in str(s.get("uses", "")) for s in steps)
    # inputs reach the scripts through env only: no expression inside a script body
    assert not any("${{" in s.get("run", "") for s in steps)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    _checkpoint(tmp_path / "ckpts" / "a.safetensors")
    _checkpoint(tmp_path / "ckpts" / "deep" / "b.safetensors", zero_cols=6)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "wdist.toml").write_text('rules = ["model: nan_count == 0"]\n')
    return tmp_path


def test_action_passing_and_failing_rules(workspace: Path) -> None:
    rules = "*.weight: zero_fraction >= 0.5\n  model: inf_count == 0\n\n"
    code, out = _run_action(workspace, {"paths": "ckpts/**/*.safetensors", "rules": rules, "install": "",
                                        "config": "cfg/wdist.toml", "junit": "report.xml"})
    assert code == 0, out
    assert "using the wdist on PATH" in out and "wdist, version" in out
    assert "ckpts/a.safetensors" in out and "ckpts/deep/b.safetensors" in out  # ** reached the subfolder
    assert "PASS model: nan_count == 0" in out and "PASS model: inf_count == 0" in out  # config + rules
    assert (workspace / "github_output").read_text().strip().endswith("exit-code=0")
    junit = (workspace / "report.xml").read_text()
    assert "<testsuite" in junit and 'failures="0"' in junit
    code, out = _run_action(workspace, {"paths": "ckpts/a.safetensors\nckpts/deep/b.safetensors",
                                        "rules": "*.weight: zero_fraction >= 0.7", "install": ""})
    assert code == 1, out
    assert "FAIL *.weight: zero_fraction >= 0.7" in out and "fc.weight: zero_fraction = 0.625" in out
    assert (workspace / "github_output").read_text().strip().endswith("exit-code=1")


def test_action_errors_exit_2(workspace: Path) -> None:
    code, out = _run_action(workspace, {"paths": "missing/*.pt", "rules": "model: nan_count == 0", "install": ""})
    assert code == 2 and "missing/*.pt" in out, out
    code, out = _run_action(workspace, {"paths": " \n ", "rules": "model: nan_count == 0", "install": ""})
    assert code == 2 and "names no checkpoint" in out, out


def test_action_annotations(workspace: Path) -> None:
    summary = workspace / "summary.md"
    code, out = _run_action(workspace, {"paths": "ckpts/a.safetensors", "rules": "*.weight: zero_fraction >= 0.7",
                                        "install": ""},
                            {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)})
    assert code == 1 and "::error " in out, out
    assert "zero_fraction" in summary.read_text()


@pytest.mark.slow  # a fresh venv and a real pip install of core wdist from a copy of the tree: ~1 min
def test_action_install_step_core_only(workspace: Path) -> None:
    src = _source_repo(workspace / "src")
    subprocess.run([sys.executable, "-m", "venv", str(workspace / "venv")], check=True, timeout=120)
    vbin = workspace / "venv" / "bin"
    path = f"{vbin}{os.pathsep}{os.environ.get('PATH', '')}"  # what setup-python puts first on PATH
    code, out = _run_action(workspace, {"paths": "ckpts/a.safetensors", "rules": "*.weight: zero_fraction >= 0.5",
                                        "install": str(src)}, {"PATH": path})
    assert code == 0, out
    assert (vbin / "wdist").is_file() and "PASS *.weight: zero_fraction >= 0.5" in out
    no_torch = subprocess.run([str(vbin / "python"), "-c", "import torch"], capture_output=True, timeout=120)
    assert no_torch.returncode != 0  # the core install pulls no torch


def test_readme_snippet_is_valid_yaml() -> None:
    """The workflow the README shows parses and points at this action's inputs."""
    snippet = textwrap.dedent("""\
        - uses: OWNER/wdist@v0.1.0
          with:
            paths: checkpoints/**/*.safetensors
            rules: |
              *.weight: zero_fraction >= 0.5
              model: nan_count == 0
            junit: wdist.xml
        """)
    (step,) = yaml.safe_load(snippet)
    assert set(step["with"]) <= set(_action()["inputs"])
