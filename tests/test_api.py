"""The public API, used the way a notebook or a training script would: only `import wdist`."""

from __future__ import annotations

import importlib.util
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


def _two_checkpoints(d) -> list[str]:
    from safetensors.numpy import save_file as save_np

    rng = np.random.default_rng(0)
    paths = []
    for step in (1, 2):
        p = str(d / f"step{step}.safetensors")
        save_np({"fc.weight": rng.normal(scale=step, size=(16, 8)).astype(np.float32),
                 "conv.weight": rng.normal(size=(8, 4, 3, 3)).astype(np.float32)}, p)
        paths.append(p)
    return paths


def test_plot_leaves_the_callers_matplotlib_backend_alone(tmp_path):
    """A notebook's backend (inline, widget) must survive wdist.plot: no matplotlib.use, no pyplot."""
    import subprocess
    import sys

    pytest.importorskip("matplotlib")
    paths = _two_checkpoints(tmp_path)
    code = ("import json, sys, matplotlib; matplotlib.use('svg'); import wdist; "
            "written = wdist.plot(sys.argv[1:3], sys.argv[3]); "
            "print(json.dumps({'pyplot': 'matplotlib.pyplot' in sys.modules, 'backend': matplotlib.get_backend(), "
            "'written': written}))")
    p = subprocess.run([sys.executable, "-c", code, *paths, str(tmp_path / "out" / "report")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["backend"] == "svg" and res["pyplot"] is False, res
    written = res["written"]
    pngs = [w for w in written if w.endswith(".png")]
    assert len(pngs) >= 3 and [w for w in written if w.endswith(".html")] == [str(tmp_path / "out" / "report.html")]
    for w in pngs:
        with open(w, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", w
    with open(tmp_path / "out" / "report.html", encoding="utf-8") as f:
        page = f.read()
    assert page.startswith("<!doctype html>") and page.count("data:image/png;base64,") == len(pngs)
    assert "fc" in page and "conv" in page


def test_a_string_is_one_item_not_its_letters(tmp_path):
    paths = _two_checkpoints(tmp_path)
    assert [lr.name for lr in wdist.inspect(paths[0], layers="fc*").layers] == ["fc"]
    assert [lr.name for lr in wdist.inspect(paths[0], layers=("fc*",)).layers] == ["fc"]
    assert wdist.inspect(paths[0], roles="weight").to_dict()["options"]["roles"] == ["weight"]
    assert [lr.name for lr in wdist.diff(*paths, layers="conv").layers] == ["conv"]
    tr = wdist.trend(paths, metrics="std", layers="fc*")
    assert list(tr.metrics) == ["std"] and [lt.name for lt in tr.layers] == ["fc"]
    chk = wdist.check(paths, rules="model: nan_count == 0", config=False)
    assert chk.passed and [len(r.rules) for r in chk.checkpoints] == [1, 1]
    if importlib.util.find_spec("matplotlib") is not None:
        written = wdist.plot(paths[0], tmp_path / "one", formats="svg")
        assert written and all(w.endswith((".svg", ".html")) for w in written) and any(w.endswith(".svg") for w in written)


@pytest.mark.parametrize("call, keyword", [
    (lambda p: wdist.inspect(p, bins="64"), "bins"),
    (lambda p: wdist.inspect(p, bins=8.5), "bins"),
    (lambda p: wdist.inspect(p, bins=None), "bins"),
    (lambda p: wdist.inspect(p, bins=True), "bins"),
    (lambda p: wdist.inspect(p, near_zero_rel="0.1"), "near_zero_rel"),
    (lambda p: wdist.inspect(p, near_zero_abs="0.1"), "near_zero_abs"),
    (lambda p: wdist.inspect(p, roles=5), "roles"),
    (lambda p: wdist.inspect(p, layers=5), "layers"),
    (lambda p: wdist.inspect(p, layers=[5]), "layers"),
    (lambda p: wdist.inspect(p, spectral=True, spectral_max_side="8"), "spectral_max_side"),
    (lambda p: wdist.inspect(p, progress=5), "progress"),
    (lambda p: wdist.inspect(p, opts=5), "opts"),
    (lambda p: wdist.inspect(p, format=5), "format"),
    (lambda p: wdist.options(bins=2.0), "bins"),
    (lambda p: wdist.diff(p, p, rtol="1e-5"), "rtol"),
    (lambda p: wdist.diff(p, p, layers=5), "layers"),
    (lambda p: wdist.trend(5), "inputs"),
    (lambda p: wdist.trend(b"run1.pt"), "inputs"),
    (lambda p: wdist.trend([p, 5]), "inputs"),
    (lambda p: wdist.trend(p, metrics=5), "metrics"),
    (lambda p: wdist.trend(p, bins="64"), "bins"),
    (lambda p: wdist.trend(p, format=5), "format"),
    (lambda p: wdist.check(p, rules=5, config=False), "rules"),
    (lambda p: wdist.check(p, rules=[5], config=False), "rules"),
    (lambda p: wdist.check(p, rules="model: nan_count == 0", config=5), "config"),
    (lambda p: wdist.check(p, rules="model: nan_count == 0", cwd=5), "cwd"),
    (lambda p: wdist.check(p, rules="model: nan_count == 0", config=False, roles=5), "roles"),
    (lambda p: wdist.plot(5, os.path.join(os.path.dirname(p), "out")), "inputs"),
    (lambda p: wdist.plot(p, 5), "out"),
    (lambda p: wdist.plot(p, os.path.join(os.path.dirname(p), "out"), formats=["jpg"]), "formats"),
    (lambda p: wdist.dask_engine(5), "address"),
])
def test_bad_argument_types_are_usage_errors_naming_the_keyword(tmp_path, monkeypatch, call, keyword):
    from wdist.loaders.errors import UsageError

    monkeypatch.chdir(tmp_path)  # nothing may be written outside tmp_path, also by a version without the checks

    p = _two_checkpoints(tmp_path)[0]
    with pytest.raises(UsageError) as e:
        call(p)
    assert e.value.reason.startswith(f"{keyword} must be "), e.value.reason


def test_rule_errors_name_the_keyword_and_the_flag(tmp_path):
    from wdist.loaders.errors import UsageError

    p = _two_checkpoints(tmp_path)[0]
    with pytest.raises(UsageError, match=r"^rules/--rule: cannot parse rule"):
        wdist.check(p, rules="bogus", config=False)
    with pytest.raises(UsageError, match=r"give rules \(--rule\) or a config file"):
        wdist.check(p, config=False)


def test_numpy_integers_are_taken_for_every_int_keyword(tmp_path):
    import numpy as np
    import torch

    p = tmp_path / "m.pt"
    torch.save({"fc.weight": torch.ones(4, 4)}, p)
    a = wdist.inspect(p, jobs=np.int64(1), bins=np.int64(64)).to_dict()
    assert a == wdist.inspect(p, jobs=1, bins=64).to_dict()
