"""Write wdist's bytecode before a benchmark times the command line, as an installed wheel has it.

With PYTHONDONTWRITEBYTECODE set (as on this project's machines) or a fresh checkout, every timed `wdist`
process would otherwise compile ~50 modules from source (50-140 ms of each command here) and charge it to
wdist's fixed cost. compileall writes the caches whatever that variable says; Python reads them either way."""

from __future__ import annotations

import compileall
import os
import re


def precompile() -> None:
    import wdist

    ok = compileall.compile_dir(os.path.dirname(os.path.abspath(wdist.__file__)), quiet=1,
                                rx=re.compile(r"[\\/](\.venv|build|tests|benchmarks)[\\/]"))
    print(f"bytecode of wdist written before timing: {'ok' if ok else 'some modules failed to compile'}")
