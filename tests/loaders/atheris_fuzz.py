"""Long coverage-guided fuzzing with atheris (not part of the test suite):

    pip install atheris
    python tests/loaders/atheris_fuzz.py -max_total_time=3600 corpus/

Every input is written to a temporary file and opened and analysed as a checkpoint of any format; the only
allowed failure is a WdistError. A crash, another exception or a hang is a bug."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile

import atheris

with atheris.instrument_imports():
    from wdist.analyzers.inspect import Options, analyse
    from wdist.loaders import Role, open_checkpoint
    from wdist.loaders.errors import WdistError

MARKER = "/tmp/wdist-fuzz-marker"
PATH = os.path.join(tempfile.mkdtemp(prefix="wdist-atheris-"), "input")


def one(data: bytes) -> None:
    with open(PATH, "wb") as f:
        f.write(data)
    with contextlib.suppress(WdistError):
        analyse(open_checkpoint(PATH), Options(jobs=1, roles=tuple(Role)))
    if os.path.exists(MARKER):
        raise RuntimeError("a payload from the input ran")


if __name__ == "__main__":
    atheris.Setup(sys.argv, one)
    atheris.Fuzz()
