"""Strided (transposed) tensors: `diff` of a transposed pair against one `inspect` of the same data.

    python benchmarks/bench_strided.py                  # 4096 x 2048 float32 (8.4M elements, 32 MiB)
    python benchmarks/bench_strided.py --rows 1024      # quicker

Writes torch.save(t.t()) files (the storage is t's, the saved view is its transpose) and contiguous copies
into a temporary folder, then times, in this process with one job and a warm page cache (best of --repeat),
inspect and diff of each, and counts the bytes read from the files. Needs torch to write the files."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable

from _bytecode import precompile  # benchmarks/ is sys.path[0] when a script here runs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    precompile()

    import torch

    from wdist.analyzers.diff import compare
    from wdist.analyzers.inspect import Options, analyse
    from wdist.loaders import open_checkpoint

    read = [0]
    real_preadv = os.preadv

    def counting_preadv(fd: int, buffers: list, offset: int) -> int:  # type: ignore[type-arg]
        n = real_preadv(fd, buffers, offset)
        read[0] += n
        return n

    os.preadv = counting_preadv  # type: ignore[assignment]
    g = torch.Generator().manual_seed(0)
    a = torch.randn(args.rows, args.cols, generator=g) * 0.02
    b = a + torch.randn(args.rows, args.cols, generator=g) * 0.001
    opts = Options(jobs=1)
    with tempfile.TemporaryDirectory() as d:
        files = {}
        for name, t in (("a", a), ("b", b)):
            files[name + "_t"] = os.path.join(d, f"{name}_t.pt")
            torch.save({"w.weight": t.t()}, files[name + "_t"])
            files[name + "_c"] = os.path.join(d, f"{name}_c.pt")
            torch.save({"w.weight": t.t().contiguous()}, files[name + "_c"])
        for p in files.values():  # warm the page cache
            with open(p, "rb") as f:
                while f.read(1 << 24):
                    pass

        def timed(fn: Callable[[], object]) -> tuple[float, int]:
            best, nbytes = float("inf"), 0
            for _ in range(args.repeat):
                read[0] = 0
                t0 = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t0)
                nbytes = read[0]
            return best, nbytes

        def inspect(p: str) -> None:
            with open_checkpoint(p) as ck:
                analyse(ck, opts)

        def diff(p: str, q: str) -> None:
            with open_checkpoint(p) as ca, open_checkpoint(q) as cb:
                compare(ca, cb, opts)

        n = args.rows * args.cols
        rows = [
            ("inspect contiguous", timed(lambda: inspect(files["a_c"]))),
            ("inspect transposed", timed(lambda: inspect(files["a_t"]))),
            ("diff contiguous pair", timed(lambda: diff(files["a_c"], files["b_c"]))),
            ("diff transposed pair", timed(lambda: diff(files["a_t"], files["b_t"]))),
        ]
    print(f"{args.rows} x {args.cols} float32 ({n:,} elements, {4 * n / 2**20:.0f} MiB per file), jobs=1, "
          f"best of {args.repeat}")
    for label, (sec, nbytes) in rows:
        print(f"  {label:22s} {sec:7.3f} s   read {nbytes / 2**20:8.1f} MiB ({nbytes / (4 * n):.2f}x the data)")
    secs = {label: sec for label, (sec, _) in rows}
    for num, den in (("diff transposed pair", "inspect transposed"), ("diff transposed pair", "inspect contiguous"),
                     ("inspect transposed", "inspect contiguous")):
        print(f"  {num} / {den}: {secs[num] / secs[den]:.2f}x")

if __name__ == "__main__":
    main()
