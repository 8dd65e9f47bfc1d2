"""Many tiny tensors: time and peak memory per case, each case in a fresh process.

    python benchmarks/bench_many.py              # all cases, 10^6-tensor ls included (about 2 minutes)
    python benchmarks/bench_many.py --quick      # without the 10^6-tensor ls
    git worktree add /tmp/old/wdist <commit>     # a baseline: the same cases on another commit's code,
    python benchmarks/bench_many.py --quick --baseline /tmp/old   # each right before (PYTHONPATH=/tmp/old)

Cases (files written into a temporary folder):
  tiny      inspect of 10^4 tensors of 4x4 float32 (safetensors), one job
  inter     inspect of 8,000 layers whose tensors interleave: m0.weight ... m7999.weight, then m0.bias ...
            m7999.bias (torch.save of a dict in that order; needs torch)
  ls 1e5    ls --format json of 10^5 one-element tensors (safetensors), and the same with 10^6
  json      inspect --format json of the tiny file (100 MB of JSON: a histogram pair per tensor and per layer)
Each is run as the library call (`analyse`, or `ls` + `Listing.iter_json()` streamed to /dev/null) and as
the CLI command (`python -m wdist ... > /dev/null`, summary cache off). Printed: wall and CPU seconds and peak
RSS of the process (ru_maxrss)."""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import textwrap

from _bytecode import precompile  # benchmarks/ is sys.path[0] when a script here runs

# One measurement: run `code` (argv[1:] are its arguments) in a child, report its wall/CPU time and peak RSS.
_WRAP = textwrap.dedent("""
    import json, resource, subprocess, sys, time
    t = time.perf_counter()
    r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t
    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"rc": r.returncode, "wall": wall, "cpu": u.ru_utime + u.ru_stime,
                      "rss_mb": u.ru_maxrss / 1024, "err": r.stderr[-500:]}))
""")

_ANALYSE = textwrap.dedent("""
    import sys
    from wdist.analyzers.inspect import Options, analyse
    from wdist.loaders import open_checkpoint
    rep = analyse(open_checkpoint(sys.argv[1]), Options(jobs=1))
    assert rep.tensors
""")

_LS_STREAM = textwrap.dedent("""
    import sys
    import wdist
    out = sys.stdout
    for piece in wdist.ls(sys.argv[1]).iter_json():
        out.write(piece)
    out.write("\\n")
""")


def _measure(argv: list[str], env: dict[str, str] | None = None) -> dict[str, object]:
    r = subprocess.run([sys.executable, "-c", _WRAP, *argv], capture_output=True, text=True, check=True, env=env)
    return json.loads(r.stdout)


def _tiny(path: str, n: int) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    save_file({f"m{i}.weight": rng.standard_normal((4, 4)).astype(np.float32) for i in range(n)}, path)


def _interleaved(path: str, n: int) -> None:
    import torch

    g = torch.Generator().manual_seed(0)
    d = {f"m{i}.weight": torch.randn(4, 4, generator=g) for i in range(n)}
    d.update({f"m{i}.bias": torch.randn(4, generator=g) for i in range(n)})
    torch.save(d, path)


def _ls_file(path: str, n: int) -> None:
    """A valid safetensors file of n one-element float32 tensors, its header written directly (fast)."""
    hdr = {f"layers.{i}.weight": {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]} for i in range(n)}
    b = json.dumps(hdr, separators=(",", ":")).encode()
    b += b" " * (-len(b) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(b)))
        f.write(b)
        f.write(b"\0" * (4 * n))


def _line(label: str, m: dict[str, object]) -> None:
    status = "" if m["rc"] == 0 else f"  FAILED rc={m['rc']}: {m['err']}"
    print(f"{label:<44} {m['wall']:7.2f} s wall {m['cpu']:7.2f} s cpu {m['rss_mb']:8.0f} MB peak{status}", flush=True)


_BASELINE: list[str] = []  # the --baseline folder, when given (set once by main)


def _row(label: str, argv: list[str]) -> None:
    """One case measured, right after the same case on the baseline's code when there is one."""
    if _BASELINE:
        env = dict(os.environ, PYTHONPATH=_BASELINE[0])
        _line("  baseline: " + label, _measure(argv, env))
    _line(label, _measure(argv))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="leave out the 10^6-tensor ls")
    ap.add_argument("--tiny", type=int, default=10_000)
    ap.add_argument("--layers", type=int, default=8_000)
    ap.add_argument("--baseline", help="a folder holding another checkout as wdist/ (e.g. a git worktree)")
    args = ap.parse_args()
    if args.baseline:
        _BASELINE.append(os.path.abspath(args.baseline))
        import compileall  # the baseline's bytecode too, so neither side compiles while timed

        compileall.compile_dir(os.path.join(_BASELINE[0], "wdist"), quiet=1)
    precompile()
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="wdist-bench-many-") as d:
        env_cache = os.path.join(d, "cache")
        os.environ["WDIST_CACHE_DIR"] = env_cache  # never the user's cache
        tiny = os.path.join(d, "tiny.safetensors")
        _tiny(tiny, args.tiny)
        _row(f"inspect {args.tiny:,} tiny tensors (analyse)", [py, "-c", _ANALYSE, tiny])
        _row(f"inspect {args.tiny:,} tiny tensors (CLI -j1)", [py, "-m", "wdist", "inspect", tiny, "-j1", "-q", "--no-cache"])
        _row(f"inspect {args.tiny:,} tiny, --format json (CLI)",
             [py, "-m", "wdist", "inspect", tiny, "-j1", "-q", "--no-cache", "--format", "json"])
        try:
            import torch  # noqa: F401
        except ImportError:
            print("inter: skipped (needs torch)")
        else:
            inter = os.path.join(d, "inter.pt")
            _interleaved(inter, args.layers)
            _row(f"inspect {args.layers:,} interleaved layers (analyse)", [py, "-c", _ANALYSE, inter])
            _row(f"inspect {args.layers:,} interleaved layers (CLI -j1)",
                 [py, "-m", "wdist", "inspect", inter, "-j1", "-q", "--no-cache"])
        for n in (10 ** 5,) if args.quick else (10 ** 5, 10 ** 6):
            p = os.path.join(d, f"ls{n}.safetensors")
            _ls_file(p, n)
            _row(f"ls --format json, {n:,} tensors (CLI)", [py, "-m", "wdist", "ls", p, "--format", "json"])
            _row(f"ls + Listing.iter_json, {n:,} tensors", [py, "-c", _LS_STREAM, p])
            os.remove(p)


if __name__ == "__main__":
    main()
