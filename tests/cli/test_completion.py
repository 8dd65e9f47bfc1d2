"""Shell completion through click's mechanism (`_WDIST_COMPLETE=<shell>_source|_complete wdist`), run as the
shells run it: the installed `wdist` entry point in a subprocess with the completion variables set."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

WDIST = shutil.which("wdist", path=str(Path(sys.executable).parent)) or shutil.which("wdist")
pytestmark = pytest.mark.skipif(WDIST is None, reason="the wdist entry point is not installed")



def _run(env: dict[str, str]) -> str:
    assert WDIST is not None
    full = {k: v for k, v in os.environ.items() if not k.startswith(("COMP_", "_WDIST"))}
    full.update(env)
    p = subprocess.run([WDIST], env=full, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout


def _cword(words: str) -> str:
    """Index of the word under the cursor (at the end of `words`), counted as click splits the line."""
    from click.shell_completion import split_arg_string

    return str(len(split_arg_string(words)) - (0 if words.endswith(" ") else 1))


def bash(words: str) -> list[str]:
    """What bash's completion function receives for the command line `words` (cursor at its end)."""
    out = _run({"_WDIST_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": _cword(words)})
    items = [line.split(",", 1) for line in out.splitlines() if line]
    return [value for kind, value in items if kind == "plain"]


def zsh(words: str) -> list[str]:
    """zsh's protocol: (type, value, help) line triples. zsh hands over a quoted word whole; bash splits
    the line at ':' too (COMP_WORDBREAKS), so a rule is completed reliably in zsh and fish only."""
    lines = _run({"_WDIST_COMPLETE": "zsh_complete", "COMP_WORDS": words, "COMP_CWORD": _cword(words)}).splitlines()
    return [lines[i + 1] for i in range(0, len(lines) - 2, 3) if lines[i] == "plain"]


@pytest.mark.parametrize("shell, marks", [
    ("bash", ("_wdist_completion()", "complete -o nosort -F _wdist_completion wdist", "_WDIST_COMPLETE=bash_complete")),
    ("zsh", ("#compdef wdist", "_wdist_completion", "_WDIST_COMPLETE=zsh_complete")),
    ("fish", ("function _wdist_completion", "complete --no-files --command wdist", "_WDIST_COMPLETE=fish_complete")),
])
def test_source_scripts(shell: str, marks: tuple[str, ...]) -> None:
    script = _run({"_WDIST_COMPLETE": f"{shell}_source"})
    for m in marks:
        assert m in script, (shell, m)


def test_bash_script_is_valid_bash(tmp_path: Path) -> None:
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    f = tmp_path / "wdist.bash"
    f.write_text(_run({"_WDIST_COMPLETE": "bash_source"}))
    p = subprocess.run(["bash", "-c", f"source {f} && complete -p wdist"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and "_wdist_completion" in p.stdout, p.stderr


def test_commands_complete() -> None:
    assert bash("wdist ins") == ["inspect"]
    assert {"ls", "inspect", "diff", "trend", "check", "plot", "demo"} <= set(bash("wdist "))


def test_role_values() -> None:
    roles = bash("wdist inspect --role ")
    assert roles == ["weight", "bias", "norm", "embedding", "running_stat", "optimizer_state", "other", "all"]
    assert bash("wdist inspect --role run") == ["running_stat"]
    assert "optimizer_state" in bash("wdist check x.pt --role ")


def test_role_values_zsh_and_fish() -> None:
    assert zsh("wdist inspect --role ")[:2] == ["weight", "bias"]
    fish = _run({"_WDIST_COMPLETE": "fish_complete", "COMP_WORDS": "wdist inspect --role ", "COMP_CWORD": ""})
    assert "plain,running_stat" in fish.splitlines()


def test_format_values() -> None:
    assert bash("wdist inspect --format ") == ["table", "json", "csv", "markdown"]


def test_sort_values() -> None:
    values = bash("wdist inspect --sort ")
    assert {"kurtosis", "zero_fraction", "l2_norm", "name", "parameters", "kurt", "near0"} <= set(values)
    assert bash("wdist inspect --sort kur") == ["kurtosis", "kurt"]


def test_metric_values() -> None:
    values = bash("wdist trend run/ --metric ")
    assert {"l2_norm", "kurtosis", "gini", "top1pct_l2_mass"} <= set(values)
    assert bash("wdist trend run/ --metric zero") == ["zero_fraction"]


def test_rule_metric_after_the_glob() -> None:
    assert "model: zero_fraction" in zsh("wdist check x.pt --rule 'model: ze")
    assert "*.weight: rel_l2_change" in zsh("wdist check x.pt --rule '*.weight: rel")
    assert zsh("wdist check x.pt --rule 'model: zero_fraction >") == ["model: zero_fraction >", "model: zero_fraction >="]
    assert zsh("wdist check x.pt --rule mo") == ["model: "]


def bash_items(words: str) -> list[tuple[str, str]]:
    """(type, value) of every item bash's completion function receives: 'file' or 'dir' tells the script to
    fall back to the shell's own file or folder name completion (compopt -o default / -o dirnames)."""
    out = _run({"_WDIST_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": _cword(words)})
    return [(kind, value) for kind, value in (line.split(",", 1) for line in out.splitlines() if line)]


@pytest.mark.parametrize("words", [
    "wdist ls a", "wdist inspect a", "wdist inspect ", "wdist inspect --hist ep", "wdist diff ep",
    "wdist diff epoch1.pt ep", "wdist trend run/ ep", "wdist check ep", "wdist check x.pt --baseline ep",
    "wdist plot ep", "wdist plot a.pt b.pt -o rep",
])
def test_checkpoint_paths_complete_as_file_names(words: str) -> None:
    """Enabling completion must not take bash's file name completion away from the checkpoint arguments."""
    incomplete = "" if words.endswith(" ") else words.rsplit(" ", 1)[1]
    assert bash_items(words) == [("file", incomplete)]


def test_checkpoint_path_completion_in_zsh_and_fish() -> None:
    lines = _run({"_WDIST_COMPLETE": "zsh_complete", "COMP_WORDS": "wdist inspect a", "COMP_CWORD": "2"}).splitlines()
    assert lines[:2] == ["file", "a"]
    fish = _run({"_WDIST_COMPLETE": "fish_complete", "COMP_WORDS": "wdist diff a", "COMP_CWORD": "a"})
    assert fish.splitlines() == ["file,a"]
