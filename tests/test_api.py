"""The public API, used the way a notebook or a training script would: only `import wdist`."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import wdist


@pytest.fixture
def run_dir(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.LayerNorm(64), torch.nn.Linear(64, 8))
    paths = []
    for step in (10, 20, 30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        p = tmp_path / f"step{step}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(p))
        paths.append(p)
    return tmp_path, paths, model


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_open_inspect_diff_trend_check(run_dir):
    d, paths, model = run_dir
    with wdist.open(paths[0]) as ck:
        assert sorted(t.name for t in ck.tensors)[:2] == ["0.bias", "0.weight"]
    rep = wdist.inspect(paths[-1])
    js = rep.to_dict()
    assert js["schema"] == "wdist/inspect/1" and json.loads(rep.to_json()) == js
    assert {lr["name"] for lr in js["layers"]} == {"0", "1", "2"}
    df = rep.to_pandas()
    assert list(df["name"]) == [lr["name"] for lr in js["layers"]] and "kurtosis" in df.columns
    assert len(rep.to_pandas("tensor")) == len(js["tensors"])
    html = rep._repr_html_()
    assert "<table>" in html and "0.weight" not in html.split("<table>")[0]
    dif = wdist.diff(paths[0], paths[-1])
    assert dif.to_dict()["schema"] == "wdist/diff/1" and dif.summary["rel_l2_change"] > 0
    tr = wdist.trend(d)
    assert [p.step for p in tr.checkpoints] == [10, 20, 30] and tr.to_dict()["schema"] == "wdist/trend/1"
    assert len(tr.to_pandas()) == 3 * len(tr.layers)
    chk = wdist.check(paths, rules=["model: nan_count == 0", "*.weight: zero_fraction <= 0.5"], config=False)
    assert chk.passed and chk.exit_code == 0 and len(chk.checkpoints) == 3
    bad = wdist.check(paths[0], rules=["*.weight: zero_fraction >= 0.5"], config=False)
    assert bad.exit_code == 1 and bad.to_dict()["passed"] is False
    assert wdist.ls(paths[0]).to_dict()["checkpoint"]["tensors"] == 6


def test_in_memory_models_in_a_training_loop(run_dir):
    _, paths, model = run_dir
    from_file = wdist.inspect(paths[-1]).to_dict()
    live = wdist.inspect(model).to_dict()

    def by_name(js):
        return {t["name"]: t["stats"] for t in js["tensors"]}

    assert by_name(live) == by_name(from_file)
    arrays = {k: v.numpy() for k, v in model.state_dict().items()}
    assert by_name(wdist.inspect(arrays).to_dict()) == by_name(from_file)


def test_threads_give_the_serial_results_and_no_fd_leaks(run_dir, tmp_path):
    _, paths, _ = run_dir
    rng = np.random.default_rng(0)
    files = []
    for i in range(8):
        p = tmp_path / f"t{i}.safetensors"
        save_file({"w.weight": torch.from_numpy(rng.normal(scale=i + 1, size=(256, 128)).astype(np.float32))}, str(p))
        files.append(p)
    serial = [wdist.inspect(p, jobs=1).to_json() for p in files]
    before = _fds()
    out: dict[int, str] = {}

    def work(i: int) -> None:
        out[i] = wdist.inspect(files[i], jobs=1).to_json()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [out[i] for i in range(8)] == serial
    assert _fds() == before


def test_keras_file_handles_are_released(tmp_path):
    import shutil
    from pathlib import Path

    src = Path(__file__).parent / "data" / "keras" / "keras3_conv.weights.h5"
    p = tmp_path / "k.weights.h5"
    shutil.copy(src, p)
    before = _fds()
    with wdist.open(p) as ck:
        ck.tensors[0].read()
        assert _fds() > before
    assert _fds() == before
    wdist.inspect(p, jobs=1)
    assert _fds() == before


def test_options_are_validated():
    from wdist.loaders.errors import UsageError

    with pytest.raises(UsageError, match="unknown role"):
        wdist.inspect({"w": np.ones((4, 4), np.float32)}, roles=["bogus"])
    with pytest.raises(UsageError, match="near-zero"):
        wdist.inspect({"w": np.ones((4, 4), np.float32)}, near_zero_rel=float("nan"))


def test_plot(run_dir, tmp_path):
    pytest.importorskip("matplotlib")
    d, paths, _ = run_dir
    written = wdist.plot(d, tmp_path / "report")
    assert any(w.endswith(".html") for w in written) and all(os.path.exists(w) for w in written)


def test_api_defaults_match_the_analyzers():
    from wdist import api
    from wdist.analyzers.trend import DEFAULT_METRICS

    assert api.DEFAULT_METRICS == DEFAULT_METRICS


def test_ls_does_not_import_the_analysis():
    import subprocess
    import sys

    code = ("import sys, wdist; wdist.ls; "
            "print(sorted(m for m in sys.modules if m.startswith('wdist.analyzers.') and m != 'wdist.analyzers.report'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_every_analysis_call_takes_the_spectral_options(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    import wdist

    rng = np.random.default_rng(0)
    p = str(tmp_path / "m.safetensors")
    save_file({"conv.weight": rng.normal(size=(16, 8, 3, 3)).astype(np.float32),
               "fc.weight": rng.normal(size=(64, 48)).astype(np.float32)}, p)
    flat = wdist.inspect(p, spectral=True, spectral_conv="flatten").spectral.tensors["conv.weight"]
    assert flat["mode"] == "flatten" and flat["matrix_shape"] == [72, 16]
    small = wdist.inspect(p, spectral=True, spectral_max_side=16).spectral.tensors["fc.weight"]
    assert small["alpha"] is None and "max_side" in small["alpha_skipped"]
    d = wdist.diff(p, p, spectral=True, spectral_conv="flatten").spectral["a"]["tensors"]["conv.weight"]
    assert d["mode"] == "flatten"
    tr = wdist.trend([p], spectral=True, spectral_max_side=16)
    assert tr.spectral is not None and tr.spectral["alpha"]["fc"] == [None]
