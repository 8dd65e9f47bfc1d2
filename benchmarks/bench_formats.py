"""GGUF and ONNX: `wdist inspect --format json -j 2` against a bare read-and-dequantise floor, same run.

    python benchmarks/bench_formats.py               # ~1 GB GGUF (Q4_K + Q8_0) and ~1 GB ONNX (external data)
    python benchmarks/bench_formats.py --scale 0.1   # a quick run with the same shapes, smaller

Files are written by streaming writers here (bounded memory; gguf 0.19 cannot quantise to Q4_K, so K-quant
blocks are random bytes with realistic fp16 scales), the page cache is warmed, and each measurement runs
in its own process. The floor does not use wdist: it reads each tensor's bytes in 1 Mi-element chunks,
dequantises them (GGUF: once with gguf.quants, once with wdist's own dequantisers called directly; the
faster is the floor) or views them as float32 (ONNX), then does what benchmarks/bench.py's floor does per
chunk (a sum and a 65,536-bin bincount), in one process.
Nothing here is imported by wdist."""

from __future__ import annotations

import argparse
import json
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any

from _bytecode import precompile  # benchmarks/ is sys.path[0] when a script here runs

HERE = os.path.dirname(os.path.abspath(__file__))
CHILD = os.path.join(HERE, "bench_child.py")
WIDTH = 4096
CHUNK = 1 << 20  # elements, as wdist's DEFAULT_CHUNK
SIZES = {"Q4_K": (256, 144, 12), "Q8_0": (32, 34, 8), "F32": (1, 4, 0)}  # block, bytes, ggml type id


def _s(b: bytes) -> bytes:
    return struct.pack("<Q", len(b)) + b


def write_gguf(path: str, scale: float) -> list[dict[str, Any]]:
    """A llama-shaped GGUF: per block an F32 norm, a Q4_K attention matrix and a Q8_0 FFN matrix."""
    import numpy as np

    n = max(1, round(37 * scale))  # 37 x (9.4 MB Q4_K + 17.8 MB Q8_0) = 1.0 GB
    plan = []
    for i in range(n):
        plan += [(f"blk.{i}.attn_norm.weight", "F32", 1, WIDTH), (f"blk.{i}.attn_q.weight", "Q4_K", WIDTH, WIDTH),
                 (f"blk.{i}.ffn_down.weight", "Q8_0", WIDTH, WIDTH)]
    kv = _s(b"general.architecture") + struct.pack("<I", 8) + _s(b"llama")
    kv += _s(b"general.name") + struct.pack("<I", 8) + _s(b"bench")
    kv += _s(b"general.alignment") + struct.pack("<I", 4) + struct.pack("<I", 32)
    infos, off = b"", 0
    layout: list[dict[str, Any]] = []
    for name, qt, rows, cols in plan:
        bs, ts, tid = SIZES[qt]
        nbytes = rows * cols // bs * ts
        dims = [cols] if rows == 1 else [cols, rows]  # ne[0] is the fastest axis
        infos += _s(name.encode()) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", tid, off)
        layout.append({"name": name, "type": qt, "offset": off, "nbytes": nbytes})
        off += -(-nbytes // 32) * 32
    head = b"GGUF" + struct.pack("<IQQ", 3, len(plan), 3) + kv + infos
    head += bytes(-len(head) % 32)
    rng = np.random.default_rng(0)
    with open(path, "wb") as f:
        f.write(head)
        for item, (_, qt, rows, cols) in zip(layout, plan):
            item["offset"] += len(head)
            bs, ts, _ = SIZES[qt]
            per_row = cols // bs
            for r0 in range(0, rows, 256):
                nr = min(256, rows - r0)
                if qt == "F32":
                    f.write((1 + 0.1 * rng.standard_normal(nr * cols)).astype(np.float32).tobytes())
                    continue
                b = rng.integers(0, 256, size=(nr * per_row, ts), dtype=np.uint8)
                d = (rng.uniform(0.5, 2.0, size=nr * per_row) * (0.02 / 127 if qt == "Q8_0" else 0.02 / 15))
                b[:, 0:2] = d.astype(np.float16).view(np.uint8).reshape(-1, 2)
                if qt == "Q4_K":
                    b[:, 2:4] = (d * 8).astype(np.float16).view(np.uint8).reshape(-1, 2)  # dmin
                f.write(b.tobytes())
            f.write(bytes(-int(item["nbytes"]) % 32))
    return layout


def write_onnx(folder: str, scale: float) -> list[dict[str, Any]]:
    """A MatMul + Add chain whose float32 weights live in one external data file."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    n = max(1, round(16 * scale))  # 16 x 64 MB = 1.07 GB
    data = os.path.join(folder, "model.onnx.data")
    rng = np.random.default_rng(1)
    inits, nodes, layout, off = [], [], [], 0
    x = "x"
    with open(data, "wb") as f:
        for i in range(n):
            for name, shape in ((f"layers.{i}.weight", (WIDTH, WIDTH)), (f"layers.{i}.bias", (WIDTH,))):
                t = TensorProto()
                t.name, t.data_type = name, TensorProto.FLOAT
                t.dims.extend(shape)
                t.data_location = TensorProto.EXTERNAL
                nbytes = int(np.prod(shape)) * 4
                for k, v in (("location", "model.onnx.data"), ("offset", str(off)), ("length", str(nbytes))):
                    e = t.external_data.add()
                    e.key, e.value = k, v
                inits.append(t)
                layout.append({"name": name, "offset": off, "nbytes": nbytes})
                for r0 in range(0, shape[0], 512):
                    rows = min(512, shape[0] - r0)
                    cols = shape[1] if len(shape) == 2 else 1
                    f.write((0.02 * rng.standard_normal(rows * cols)).astype(np.float32).tobytes())
                off += nbytes
            nodes.append(helper.make_node("MatMul", [x, f"layers.{i}.weight"], [f"m{i}"], name=f"/layers.{i}/MatMul"))
            nodes.append(helper.make_node("Add", [f"m{i}", f"layers.{i}.bias"], [f"h{i}"], name=f"/layers.{i}/Add"))
            x = f"h{i}"
    g = helper.make_graph(nodes, "bench", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, WIDTH])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, WIDTH])], initializer=inits)
    onnx.save_model(helper.make_model(g), os.path.join(folder, "model.onnx"))
    return layout


def _touch(x) -> float:  # type: ignore[no-untyped-def]
    import numpy as np

    np.bincount(x.view(np.uint32) >> 16, minlength=65536)
    return float(x.sum())


def floor(kind: str, path: str, layout_json: str) -> None:
    """The bare pass, in this process: read, dequantise, sum + bincount; prints seconds and peak RSS."""
    import numpy as np

    with open(layout_json) as fh:
        layout = json.load(fh)
    t0 = time.perf_counter()
    total = 0.0
    with open(path, "rb") as f:
        for item in layout:
            if kind != "onnx" and item["type"] != "F32":
                from gguf import quants
                from gguf.constants import GGMLQuantizationType

                from wdist.loaders.fmt_gguf import NATIVE

                bs, ts, tid = SIZES[item["type"]]
                step = CHUNK // bs * ts
                qt = GGMLQuantizationType(tid)
                native = NATIVE[item["type"]]
                for pos in range(0, item["nbytes"], step):
                    f.seek(item["offset"] + pos)
                    raw = np.frombuffer(f.read(min(step, item["nbytes"] - pos)), dtype=np.uint8)
                    total += _touch(native(raw) if kind == "gguf-native" else quants.dequantize(raw, qt))
            else:
                for pos in range(0, item["nbytes"], CHUNK * 4):
                    f.seek(item["offset"] + pos)
                    total += _touch(np.frombuffer(f.read(min(CHUNK * 4, item["nbytes"] - pos)), dtype=np.float32))
    t = time.perf_counter() - t0
    print(json.dumps({"seconds": t, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "checksum": total}))


def warm(paths: list[str]) -> None:
    for p in paths:
        with open(p, "rb") as f:
            while f.read(1 << 24):
                pass


def run(*args: str) -> dict:
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--dir", default=None, help="where to write the files (default: a temporary folder)")
    ap.add_argument("--jobs", default="2")
    ap.add_argument("--only", choices=("gguf", "onnx"), default=None)
    ap.add_argument("--generate", nargs=2, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--floor", nargs=3, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    precompile()
    if args.generate:
        kind, target = args.generate
        layout = write_gguf(target, args.scale) if kind == "gguf" else write_onnx(target, args.scale)
        print(json.dumps(layout))
        return
    if args.floor:
        floor(*args.floor)
        return
    d = args.dir or tempfile.mkdtemp(prefix="wdist-bench-formats-")
    print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}; files in {d}; scale {args.scale}")
    cases = {"gguf": os.path.join(d, "model.gguf"), "onnx": os.path.join(d, "onnx")}
    os.makedirs(cases["onnx"], exist_ok=True)
    for kind, target in cases.items():
        if args.only and kind != args.only:
            continue
        t0 = time.perf_counter()
        # generated in a child: a forked child would inherit the generator's peak RSS
        out = subprocess.run([sys.executable, __file__, "--generate", kind, target, "--scale", str(args.scale)],
                             check=True, capture_output=True, text=True).stdout
        layout_json = os.path.join(d, f"{kind}-layout.json")
        with open(layout_json, "w") as f:
            f.write(out.strip().splitlines()[-1])
        data = target if kind == "gguf" else os.path.join(target, "model.onnx.data")
        inspect_path = target if kind == "gguf" else os.path.join(target, "model.onnx")
        size = os.path.getsize(data)
        print(f"{kind}: {size / 1e9:.2f} GB written in {time.perf_counter() - t0:.0f} s")
        warm([data])
        floors = {"float32 view": run(__file__, "--floor", kind, data, layout_json)}
        if kind == "gguf":
            floors = {"gguf.quants": floors["float32 view"],
                      "wdist's dequantisers": run(__file__, "--floor", "gguf-native", data, layout_json)}
        w = run(CHILD, "wdist", "inspect", inspect_path, "-j", args.jobs)
        for how, r in floors.items():
            print(f"  floor: read + {how} + sum/bincount, 1 process  {r['seconds']:8.2f} s  peak RSS {r['rss_mb']:6.0f} MB")
        fl = min(floors.values(), key=lambda r: r["seconds"])
        print(f"  wdist inspect --format json -j {args.jobs:<2}        {w['seconds']:8.2f} s  peak RSS {w['rss_mb']:6.0f} MB"
              f" (+ workers {w.get('worker_rss_mb', 0):.0f} MB each)  wdist/fastest floor {w['seconds'] / fl['seconds']:.2f}x"
              f"  {size / 1e6 / w['seconds']:.0f} MB/s")


if __name__ == "__main__":
    main()
