"""Scale-out benchmarks (issue 16), one run, each measurement a fresh `wdist` process:

- inspect of the fp32 safetensors checkpoint (the whole file) from moto's S3 server (started here on 127.0.0.1) vs local disk;
- `--cluster local:1` vs `--cluster local:2` vs local `--jobs 2` (Dask start-up included);
- trend over 8 checkpoints, cold vs warm summary cache (target: warm >= 20x faster);
- per-worker throughput, extrapolated to an 810 GB checkpoint and a 500-checkpoint run.

    python benchmarks/bench_scale.py               # 1.6 GB checkpoint, 8 x 64 MB run
    python benchmarks/bench_scale.py --scale 0.1   # quick
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from _bytecode import precompile  # benchmarks/ is sys.path[0] when a script here runs


def _write(path: str, n_tensors: int, side: int, seed: int) -> None:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    save_file({f"layers.{i}.weight": rng.standard_normal((side, side), dtype=np.float32)
               for i in range(n_tensors)}, path)


def _run(args: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "wdist", *args], env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"wdist {' '.join(args)} failed: {r.stderr[-500:]}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=1.0)
    a = ap.parse_args()
    precompile()
    tmp = tempfile.mkdtemp(prefix="wdist-bench-scale-")
    env = {**os.environ, "WDIST_CACHE_DIR": os.path.join(tmp, "cache")}
    try:
        side = 4096
        n = max(1, round(24 * a.scale))
        big = os.path.join(tmp, "big.safetensors")
        _write(big, n, side, 0)
        size = os.path.getsize(big)
        print(f"checkpoint: {n} x {side}x{side} fp32 = {size / 1e9:.2f} GB")
        with open(big, "rb") as f:  # warm the page cache
            while f.read(1 << 24):
                pass

        local = min(_run(["inspect", big, "--format", "json", "--no-cache", "-j", "2"], env) for _ in range(2))
        print(f"local disk, --jobs 2:            {local:7.2f} s  ({size / local / 1e9:.2f} GB/s)")

        try:
            from moto.server import ThreadedMotoServer
        except ImportError:
            print("moto not installed: S3 comparison skipped")
        else:
            import logging

            logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
            srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
            srv.start()
            host, port = srv.get_host_and_port()
            s3env = {**env, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                     "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
            os.environ.update({k: v for k, v in s3env.items() if k.startswith("AWS_")})

            import boto3

            # moto keeps objects in memory and its multipart upload fails on GB objects, but one plain PUT
            # of the whole 1.6 GB file (streamed from disk by boto3) is accepted
            s3c = boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1",
                               aws_access_key_id="bench", aws_secret_access_key="bench")
            s3c.create_bucket(Bucket="bench")
            t0 = time.perf_counter()
            with open(big, "rb") as f:
                s3c.put_object(Bucket="bench", Key="big.safetensors", Body=f)
            print(f"uploaded {size / 1e9:.2f} GB to moto in {time.perf_counter() - t0:.1f} s (one PUT)")
            t_ls = _run(["ls", "s3://bench/big.safetensors"], s3env)
            s3 = _run(["inspect", "s3://bench/big.safetensors", "--format", "json", "--no-cache", "-j", "2"], s3env)
            print(f"{size / 1e9:.2f} GB checkpoint: local disk {local:.2f} s; moto S3 (127.0.0.1), --jobs 2: {s3:.2f} s "
                  f"({size / s3 / 1e9:.3f} GB/s) = {s3 / local:.1f}x local; ls over S3 {t_ls:.2f} s")
            srv.stop()

        try:
            import distributed  # noqa: F401
        except ImportError:
            print("dask.distributed not installed: cluster comparison skipped")
        else:
            c1 = _run(["inspect", big, "--format", "json", "--no-cache", "--cluster", "local:1"], env)
            c2 = _run(["inspect", big, "--format", "json", "--no-cache", "--cluster", "local:2"], env)
            print(f"--cluster local:1:               {c1:7.2f} s")
            print(f"--cluster local:2:               {c2:7.2f} s  ({c1 / c2:.2f}x local:1; {c2 / local:.2f}x --jobs 2)")

        run_dir = os.path.join(tmp, "run")
        os.makedirs(run_dir)
        k, rside = 8, max(256, int(4096 * a.scale ** 0.5))
        for i in range(k):
            _write(os.path.join(run_dir, f"step{(i + 1) * 100}.safetensors"), 4, rside, i + 1)
        run_bytes = sum(os.path.getsize(os.path.join(run_dir, f)) for f in os.listdir(run_dir))
        shutil.rmtree(env["WDIST_CACHE_DIR"], ignore_errors=True)
        cold = _run(["trend", run_dir, "--format", "json"], env)
        warm = min(_run(["trend", run_dir, "--format", "json"], env) for _ in range(3))
        print(f"trend over {k} checkpoints ({run_bytes / 1e6:.0f} MB), fresh processes: cold cache {cold:.2f} s, "
              f"warm {warm:.2f} s = {cold / warm:.1f}x faster (interpreter start-up included in both)")
        import wdist

        cache_dir = os.path.join(tmp, "cache-api")
        t = time.perf_counter()
        wdist.trend(run_dir, cache=cache_dir)
        cold_api = time.perf_counter() - t
        t = time.perf_counter()
        wdist.trend(run_dir, cache=cache_dir)
        warm_api = time.perf_counter() - t
        print(f"  the same with wdist.trend() in one process: cold {cold_api:.2f} s, warm {warm_api:.3f} s "
              f"= {cold_api / warm_api:.0f}x faster")
        # the start-up of a fresh process is part of every warm run; the analysis itself reads nothing
        per_worker = size / local / 2
        print(f"per-worker throughput (local disk, warm page cache): {per_worker / 1e9:.2f} GB/s")
        for gb, what in ((810, "an 810 GB checkpoint"), (500 * 16, "a 500-checkpoint run of 16 GB each")):
            for w in (2, 16, 64):
                print(f"  {what} on {w} workers at that rate: {gb * 1e9 / (per_worker * w) / 60:.1f} min")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
