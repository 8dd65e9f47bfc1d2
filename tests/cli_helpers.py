from __future__ import annotations

import os
from pathlib import Path

from click.testing import CliRunner, Result

from wdist.cli.main import cli

GOLDEN = Path(__file__).parent / "cli" / "golden"


def run(*args: str, env: dict | None = None) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)


def golden(name: str, text: str) -> None:
    """Compare with tests/cli/golden/NAME; UPDATE_GOLDEN=1 rewrites it."""
    p = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") or not p.exists() and os.environ.get("CI") != "true":
        p.write_text(text)
    assert text == p.read_text()
