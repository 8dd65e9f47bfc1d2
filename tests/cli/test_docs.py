"""The README documents every command and option that --help lists (docs tested against --help)."""

import re
from pathlib import Path

import pytest
from cli_helpers import run

from wdist.cli.main import COMMANDS

README = (Path(__file__).parents[2] / "README.md").read_text()


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_option_is_documented(command):
    assert f"wdist {command}" in README
    out = run(command, "--help").output
    options = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", out)) - {"--help"}
    missing = sorted(o for o in options if o not in README)
    assert not missing, f"wdist {command}: {missing} not in README"


def test_readme_commands_exist():
    blocks = "\n".join(re.findall(r"```[a-z]*\n(.*?)```", README, flags=re.S))
    cmds = re.findall(r"^\s*(?:\$ )?wdist ([a-z]+)", blocks, flags=re.M)
    assert set(cmds) >= {"ls", "inspect", "diff", "check"}
    for cmd in cmds:
        assert cmd in COMMANDS, cmd


def test_schemas_documented():
    for schema in ("wdist/ls/1", "wdist/inspect/1", "wdist/diff/1", "wdist/trend/1", "wdist/check/1"):
        assert schema in README
