"""safetensors header parse: peak memory and time of `wdist ls --format json` per header shape, each in a
fresh process, the valid 10^6-tensor file first as the baseline of the same run.

    python benchmarks/bench_header.py            # every case (about a minute)
    python benchmarks/bench_header.py valid1e6 list0   # some cases
    git worktree add /tmp/old/wdist <commit>              # a baseline: the reader of another commit,
    python benchmarks/bench_header.py --baseline /tmp/old # measured in the same run (PYTHONPATH=/tmp/old)

Each hostile header stays within MAX_HEADER (100 MB), MAX_CONTAINERS and MAX_ITEMS, so it reaches the
parser. Printed per case: exit code, wall seconds, peak RSS of the process (ru_maxrss) and the first line
of stderr (the refusal)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tempfile
import textwrap

_WRAP = textwrap.dedent("""
    import json, resource, subprocess, sys, time
    t = time.perf_counter()
    r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t
    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"rc": r.returncode, "wall": wall, "rss_mb": u.ru_maxrss / 1024, "err": r.stderr}))
""")

PAD_TO = 100_000_000 - 64  # under MAX_HEADER


def _entry(name: str, i: int, shape: str = "1") -> bytes:
    return b'"%s":{"dtype":"F32","shape":[%s],"data_offsets":[%d,%d]}' % (name.encode(), shape.encode(), 4 * i,
                                                                           4 * i + 4)


def _valid(n: int) -> tuple[bytes, int]:
    return b"{" + b",".join(_entry(f"layers.{i}.weight", i) for i in range(n)) + b"}", 4 * n


def _pad(h: bytes) -> bytes:
    return h + b" " * max(0, PAD_TO - len(h))


def build(name: str) -> tuple[bytes, int]:
    """(header, data bytes) of one case, built when it is measured (some are 100 MB)."""
    one = _entry("w", 0)
    if name == "valid1e6":
        return _valid(1_000_000)
    if name == "list0":  # 4M (less 1,000) distinct keys with [] values, 2M more with 0, padded to 100 MB (the review's)
        body = b",".join(b'"k%d":[]' % i for i in range(3_999_000))
        body += b"," + b",".join(b'"n%d":0' % i for i in range(2_000_000))
        return _pad(b"{" + body + b"}"), 0
    if name == "objects":  # 3.99M distinct keys with {} values
        return _pad(b"{" + b",".join(b'"k%d":{}' % i for i in range(3_990_000)) + b"}"), 0
    if name == "strings":  # 6M distinct keys with short string values
        return _pad(b"{" + b",".join(b'"k%d":"ab"' % i for i in range(5_900_000)) + b"}"), 0
    if name == "longkey":  # one valid tensor whose name is ~99 MB
        return b'{"' + b"a" * 99_000_000 + b'":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', 4
    if name == "nested":  # 3.99M [] inside one shape
        return _pad(b'{"w":{"dtype":"F32","shape":[' + b"[]," * 3_990_000 + b'[]],"data_offsets":[0,4]}}'), 4
    if name == "numbers":  # 11.9M distinct numbers in one shape
        return _pad(b'{"w":{"dtype":"F32","shape":[' + b",".join(b"%d" % (1000 + i) for i in range(11_900_000))
                    + b'],"data_offsets":[0,4]}}'), 4
    if name == "extra":  # a valid entry plus an unknown key holding 3.99M [] (today's code accepts the entry)
        return _pad(b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":[' + b"[]," * 3_990_000
                    + b'[]]}}'), 4
    if name == "metadata":  # 5.9M metadata string pairs
        return _pad(b'{"__metadata__":{' + b",".join(b'"k%d":"v%d"' % (i, i) for i in range(3_000_000))
                    + b"}," + one + b"}"), 4
    if name == "dupkey":  # 10^6 valid entries, then the first name again
        h, n = _valid(1_000_000)
        return h[:-1] + b"," + _entry("layers.0.weight", 0) + b"}", n
    if name == "late":  # 10^6 valid entries, then one [] value
        h, n = _valid(1_000_000)
        return h[:-1] + b',"z":[]}', n
    raise KeyError(name)


NAMES = ["valid1e6", "list0", "objects", "strings", "longkey", "nested", "numbers", "extra", "metadata", "dupkey",
         "late"]


def _measure(argv: list[str], pythonpath: str | None = None) -> dict:
    env = dict(os.environ, PYTHONPATH=pythonpath) if pythonpath else None
    r = subprocess.run([sys.executable, "-c", _WRAP, *argv], capture_output=True, text=True, check=True, env=env)
    return json.loads(r.stdout)


def main() -> None:
    args = sys.argv[1:]
    baseline = None
    if "--baseline" in args:
        i = args.index("--baseline")
        baseline = args[i + 1]
        del args[i:i + 2]
    names = args or NAMES
    with tempfile.TemporaryDirectory(prefix="wdist-bench-header-") as d:
        os.environ["WDIST_CACHE_DIR"] = os.path.join(d, "cache")
        more = f" {'base s':>7} {'base MB':>8} {'MB ratio':>8}" if baseline else ""
        print(f"{'case':<10} {'rc':>3} {'wall s':>7} {'peak MB':>8}{more}  stderr", flush=True)
        for name in names:
            header, data = build(name)
            p = os.path.join(d, name + ".safetensors")
            with open(p, "wb") as f:
                f.write(struct.pack("<Q", len(header)))
                f.write(header)
                f.write(b"\0" * data)
            del header
            argv = [sys.executable, "-m", "wdist", "ls", p, "--format", "json"]
            m = _measure(argv)
            err = (m["err"].strip().splitlines() or [""])[0].replace(p, "FILE")
            if baseline:
                b = _measure(argv, baseline)
                more = f" {b['wall']:7.2f} {b['rss_mb']:8.0f} {m['rss_mb'] / b['rss_mb']:8.2f}"
            print(f"{name:<10} {m['rc']:>3} {m['wall']:7.2f} {m['rss_mb']:8.0f}{more}  {err[:110]}", flush=True)
            os.remove(p)


if __name__ == "__main__":
    main()
