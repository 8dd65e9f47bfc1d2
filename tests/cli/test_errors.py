"""Bad input: one line `wdist: error: <path>: <reason>`, exit 2, no traceback, nothing written."""

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from corpus import bad_files

from wdist.cli.main import cli


def _bad(tmp_path, ckpts):
    return bad_files(tmp_path, ckpts)


@pytest.mark.parametrize("command", ["ls", "inspect"])
def test_each_bad_file(tmp_path, ckpts, command):
    for what, (path, _exc, _m) in _bad(tmp_path, ckpts).items():
        before = sorted(os.listdir(path.parent))
        r = CliRunner().invoke(cli, [command, str(path)])
        assert r.exit_code == 2, (what, r.output)
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"wdist: error: {path}: "), (what, r.output)
        assert "Traceback" not in r.output
        assert sorted(os.listdir(path.parent)) == before, what


def test_debug_shows_traceback(tmp_path):
    p = tmp_path / "x.pt"
    p.write_bytes(b"garbage garbage")
    out = subprocess.run([sys.executable, "-m", "wdist", "--debug", "ls", str(p)], capture_output=True, text=True)
    assert out.returncode != 0 and "Traceback" in out.stderr
    out = subprocess.run([sys.executable, "-m", "wdist", "ls", str(p)], capture_output=True, text=True)
    expected = (f"wdist: error: {p}: text, not a supported checkpoint; "
                f"wdist reads {__import__('wdist.loaders', fromlist=['SUPPORTED']).SUPPORTED}")
    assert out.returncode == 2 and out.stderr.strip() == expected, out.stderr


def test_help_does_not_import_torch():
    code = "import sys; from wdist.cli.main import cli; import click\n" \
           "try:\n    cli(['--help'])\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip().endswith("False False"), out.stdout


def test_unsafe_pickle_exit_2(tmp_path):
    import pickle

    p = tmp_path / "evil.pth"
    with open(p, "wb") as f:
        pickle.dump(os.system, f)
    r = CliRunner().invoke(cli, ["inspect", str(p)])
    assert r.exit_code == 2 and "posix.system" in r.output


def test_the_command_runs_one_blas_thread_unless_told(tmp_path):
    """OpenBLAS starts a thread per core at numpy's import (~50 ms here): the command's own process asks for
    one unless the user set a count; the library (import wdist) leaves the environment alone."""
    code = ("import os, sys\nfrom wdist.cli.main import main\nsys.argv = ['wdist', '--version']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\nprint('BLAS', os.environ.get('OPENBLAS_NUM_THREADS'))")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env).stdout
    assert out.splitlines()[-1] == "BLAS 1"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**env, "OMP_NUM_THREADS": "3"}).stdout
    assert out.splitlines()[-1] == "BLAS None"
    lib = "import os, wdist\nwdist.options\nprint('BLAS', os.environ.get('OPENBLAS_NUM_THREADS'))"
    assert subprocess.run([sys.executable, "-c", lib], capture_output=True, text=True,
                          env=env).stdout.splitlines()[-1] == "BLAS None"
