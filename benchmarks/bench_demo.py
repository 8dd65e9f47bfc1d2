"""Wall time of the whole `wdist demo` (training, trend, inspect and the HTML report), with each step's time.

    python benchmarks/bench_demo.py            # 3 runs into temporary folders
    python benchmarks/bench_demo.py --runs 1

Each run is its own process (`python -m wdist demo DIR -q`), so interpreter start-up and imports count, as
a user sees them. The step times come from the demo's own "[i/4] ... (t s)" progress lines. The target is
<= 20 s on a 2-core machine. The demo's work is single-threaded (training uses one torch thread), so its CPU
time is close to the wall time it takes on an idle machine; on a shared machine compare the two (the load
average is printed before and after). Nothing here is imported by wdist."""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from _bytecode import precompile  # benchmarks/ is sys.path[0] when a script here runs

STEP = re.compile(r"^\[(\d)/4\] (.*?)  \((\d+\.\d) s\)$")
DONE = re.compile(r"^done in (\d+\.\d) s$")


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def one_run() -> tuple[float, float, dict[str, float]]:
    with tempfile.TemporaryDirectory() as d:
        cpu0 = _child_cpu()
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "wdist", "demo", os.path.join(d, "demo"), "-q"],
                             capture_output=True, text=True, env={**os.environ, "COLUMNS": "120"})
        wall = time.perf_counter() - t0
        cpu = _child_cpu() - cpu0
        if out.returncode != 0:
            raise SystemExit(f"demo failed ({out.returncode}):\n{out.stderr}")
        marks: list[tuple[str, float]] = []
        for line in out.stdout.splitlines():
            if m := STEP.match(line):
                marks.append((["train", "trend", "inspect", "html report"][int(m.group(1)) - 1], float(m.group(3))))
            elif m := DONE.match(line):
                marks.append(("end", float(m.group(1))))
        steps = {name: marks[i + 1][1] - t for i, (name, t) in enumerate(marks[:-1])}
        steps["start-up (imports before step 1)"] = wall - marks[-1][1]
        return wall, cpu, steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    precompile()
    print(f"machine: {os.cpu_count()} cores; load average before: {os.getloadavg()[0]:.2f}")
    walls, cpus = [], []
    per_step: dict[str, list[float]] = {}
    for i in range(args.runs):
        wall, cpu, steps = one_run()
        walls.append(wall)
        cpus.append(cpu)
        for k, v in steps.items():
            per_step.setdefault(k, []).append(v)
        print(f"run {i + 1}: {wall:.1f} s wall, {cpu:.1f} s CPU  " + "  ".join(f"{k} {v:.1f} s" for k, v in steps.items()))
    print(f"wdist demo: median {statistics.median(walls):.1f} s, min {min(walls):.1f} s, max {max(walls):.1f} s "
          f"over {len(walls)} run(s); CPU time (user+sys) median {statistics.median(cpus):.1f} s")
    for k, vs in per_step.items():
        print(f"  {k:<34} median {statistics.median(vs):.1f} s")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
