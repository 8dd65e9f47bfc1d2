"""The engine leaves the caller's process as it found it (the 2026-12-04 library review): no environment
variable set by threadpoolctl's import, BLAS's thread count restored also when several threads run spectral
analyses at once (with results identical to a serial run), the caller's script never run again by spawned
workers, multiprocessing's default start method left unset. Each in a fresh interpreter, the caller."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
from safetensors.numpy import save_file


def _script(tmp_path, body: str, name: str = "caller.py") -> subprocess.CompletedProcess:
    p = tmp_path / name
    p.write_text(textwrap.dedent(body))
    env = {k: v for k, v in os.environ.items() if k not in ("KMP_DUPLICATE_LIB_OK",)}
    return subprocess.run([sys.executable, str(p)], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=env)


def _matrices(path, n=6, side=300):
    rng = np.random.default_rng(0)
    save_file({f"w{i}.weight": rng.normal(size=(side, side)).astype(np.float32) for i in range(n)}, str(path))


def test_spectral_leaves_no_environment_variable(tmp_path):
    _matrices(tmp_path / "m.safetensors", n=2, side=64)
    r = _script(tmp_path, """
        import os, wdist
        before = dict(os.environ)
        wdist.inspect("m.safetensors", spectral=True, jobs=1)
        wdist.diff("m.safetensors", "m.safetensors", spectral=True, jobs=1)
        added = {k: v for k, v in os.environ.items() if before.get(k) != v}
        print("ADDED", sorted(added))
    """)
    assert r.returncode == 0, r.stderr
    assert "ADDED []" in r.stdout, r.stdout


def test_concurrent_spectral_calls_restore_blas_and_match_a_serial_run(tmp_path):
    _matrices(tmp_path / "spec.safetensors")
    r = _script(tmp_path, """
        import json, threading, numpy, wdist
        from threadpoolctl import threadpool_info
        def blas():
            return sorted((d["internal_api"], d["num_threads"]) for d in threadpool_info() if d["user_api"] == "blas")
        before = blas()
        ref = json.dumps(wdist.inspect("spec.safetensors", spectral=True, jobs=1).to_dict(), sort_keys=True)
        outs = []
        def one():
            outs.append(json.dumps(wdist.inspect("spec.safetensors", spectral=True, jobs=1).to_dict(),
                                   sort_keys=True))
        ts = [threading.Thread(target=one) for _ in range(4)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        print(json.dumps({"before": before, "after": blas(), "same": [o == ref for o in outs]}))
    """)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["after"] == out["before"]
    assert out["same"] == [True] * 4


def test_the_callers_script_is_never_run_again_by_workers(tmp_path):
    """No `if __name__ == "__main__"` guard, a live thread (so fork is not safe), the default jobs and a
    file large enough for worker processes: spawned workers imported the script again (its body ran 3 times)
    and the call died with BrokenProcessPool; it now runs in this process, and the start method stays unset."""
    rng = np.random.default_rng(1)
    save_file({"big.weight": rng.normal(size=(3000, 3000)).astype(np.float32)}, str(tmp_path / "big.safetensors"))
    r = _script(tmp_path, """
        import multiprocessing as mp, os, sys, threading
        import wdist
        print("BODY", os.getpid(), file=sys.stderr)
        threading.Thread(target=threading.Event().wait, daemon=True).start()
        rep = wdist.inspect("big.safetensors")
        print("N", rep.to_dict()["model"]["stats"]["numel"], "START", mp.get_start_method(allow_none=True))
    """)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("BODY") == 1, r.stderr
    assert "N 9000000 START None" in r.stdout
