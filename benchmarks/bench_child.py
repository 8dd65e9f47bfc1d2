"""One measured run, in its own process: prints {"seconds", "rss_mb", ...} as its last line."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time


def rss_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def baseline(path: str) -> None:
    """The script users write by hand: load everything, then numpy per tensor."""
    import numpy as np

    if os.path.isdir(path):
        from safetensors.torch import load_file

        tensors = {}
        for f in sorted(os.listdir(path)):
            if f.endswith(".safetensors"):
                tensors.update(load_file(os.path.join(path, f)))
        arrays = {k: v.float().numpy() for k, v in tensors.items()}
    elif path.endswith(".safetensors"):
        from safetensors.torch import load_file

        arrays = {k: v.float().numpy() for k, v in load_file(path).items()}
    elif path.endswith(".pt"):
        import torch

        arrays = {k: v.float().numpy() for k, v in torch.load(path, weights_only=True).items()}
    else:
        import h5py

        arrays = {}
        with h5py.File(path, "r") as h:
            h.visititems(lambda n, o: arrays.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
    out = {}
    for k, x in arrays.items():
        a = np.abs(x)
        m, s = x.mean(), x.std()
        srt = np.sort(a.ravel())
        n = srt.size
        gini = ((2 * np.arange(1, n + 1) - n - 1) * srt).sum() / (n * srt.sum())
        out[k] = (m, s, x.min(), x.max(), (x == 0).mean(), (a <= 0.01 * a.max()).mean(),
                  np.percentile(a, [50, 99, 99.9]), np.histogram(x, 64), gini, ((x - m) ** 4).mean() / s ** 4 - 3)


def floor(path: str) -> None:
    """One pass that only reads the tensors: a sum and a 65,536-bin bincount per chunk."""
    import numpy as np

    from wdist.loaders import open_checkpoint

    for t in open_checkpoint(path).tensors:
        if t.is_float:
            for _, x in t.chunks():
                x.sum()
                np.bincount(x.view(np.uint32) >> 16, minlength=65536)


def main() -> None:
    mode, args = sys.argv[1], sys.argv[2:]
    t0 = time.perf_counter()
    extra: dict = {}
    if mode == "baseline":
        baseline(args[0])
    elif mode == "floor":
        floor(args[0])
    elif mode == "wdist":
        cmd = [sys.executable, "-m", "wdist", *args, "--format", "json"]
        if args[0] in ("inspect", "diff", "trend"):
            cmd += ["-q", "--no-cache"]  # measure the analysis, not summary-cache hits of an earlier run
        # wdist runs as our child: its main process is one child, its workers are grandchildren
        wrapper = ("import resource,runpy,sys,json;sys.argv=['wdist']+sys.argv[1:];code=0"
                   "\ntry:\n runpy.run_module('wdist',run_name='__main__')\nexcept SystemExit as e: code=e.code or 0\n"
                   "sys.stderr.write(json.dumps({'self':resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,"
                   "'children':resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,'code':code}))")
        p = subprocess.run([sys.executable, "-c", wrapper, *cmd[3:]], capture_output=True, text=True)
        if p.returncode:
            raise SystemExit(p.stderr)
        usage = json.loads(p.stderr.strip().splitlines()[-1])
        if usage["code"]:
            raise SystemExit(f"wdist failed: {p.stderr}")
        t = time.perf_counter() - t0
        print(json.dumps({"seconds": t, "rss_mb": usage["self"] / 1024, "worker_rss_mb": usage["children"] / 1024}))
        return
    elif mode == "same":
        outs = [subprocess.run([sys.executable, "-m", "wdist", "inspect", args[0], "--format", "json", "-q", "--no-cache", "-j", j],
                               capture_output=True, text=True, check=True).stdout for j in ("1", "2")]
        extra["identical"] = outs[0] == outs[1]
    elif mode == "api":
        # the library call alone, in a process that has already imported what it uses (import wdist is
        # lazy: the first call would import numpy, the analyzers, the reader and the process pool, ~0.1 s
        # that a long-running caller pays once): what --jobs can split
        import concurrent.futures.process  # noqa: F401 - imported by the first parallel call
        import tempfile

        import numpy as np
        from safetensors.numpy import save_file

        import wdist

        with tempfile.TemporaryDirectory() as d:
            tiny = os.path.join(d, "tiny.safetensors")
            save_file({"w": np.ones((4, 4), dtype=np.float32)}, tiny)
            wdist.inspect(tiny, jobs=int(args[1]))  # too small to split: runs in-process, imports the rest
        t0 = time.perf_counter()
        wdist.inspect(args[0], jobs=int(args[1]))
    elif mode == "help":
        code = "import sys;from wdist.cli.main import cli\ntry: cli(['--help'])\nexcept SystemExit: pass\n" \
               "sys.stderr.write(str('torch' in sys.modules))"
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        extra["torch"] = p.stderr.strip().endswith("True")
    t = time.perf_counter() - t0
    print(json.dumps({"seconds": t, "rss_mb": rss_mb(resource.RUSAGE_SELF), **extra}))


if __name__ == "__main__":
    main()
