"""CLI glue of the scale-out features: the summary cache, --watch, --cluster, --tensorboard, formats."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from cli_helpers import run
from safetensors.numpy import save_file


def _ckpt(path, scale=1.0):
    rng = np.random.default_rng(0)
    save_file({"fc.weight": (scale * rng.normal(size=(64, 32))).astype(np.float32),
               "fc.bias": np.zeros(64, np.float32)}, str(path))
    return path


def test_cache_is_used_and_can_be_cleared(tmp_path, monkeypatch):
    monkeypatch.setenv("WDIST_CACHE_DIR", str(tmp_path / "cache"))
    p = _ckpt(tmp_path / "m.safetensors")
    first = run("inspect", p, "--format", "json").output
    info = json.loads(run("cache", "info", "--format", "json").output)
    assert info["files"] == 1 and info["directory"] == str(tmp_path / "cache")
    from wdist.loaders.fileio import RangeReader

    def no_reads(self, *a, **k):
        raise AssertionError("read although cached")

    monkeypatch.setattr(RangeReader, "read_raw", no_reads)
    assert run("inspect", p, "--format", "json").output == first
    r = run("inspect", p, "--format", "json", "--no-cache")
    assert r.exit_code == 2 and "read although cached" in r.output
    assert "removed 1 files" in run("cache", "clear").output
    assert json.loads(run("cache", "info", "--format", "json").output)["files"] == 0


def _watcher(tmp_path):
    """(run folder holding step1.safetensors, `trend --watch --format jsonl` on it in a child process)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _ckpt(run_dir / "step1.safetensors")
    env = {**os.environ, "WDIST_CACHE_DIR": str(tmp_path / "cache"), "COLUMNS": "120"}
    proc = subprocess.Popen([sys.executable, "-m", "wdist", "trend", str(run_dir), "--watch", "--interval", "0.2",
                             "--format", "jsonl"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return run_dir, proc


def _readline(proc: subprocess.Popen, timeout: float = 60.0) -> str:
    """The child's next stdout line, or a test failure after `timeout` s (never a hang)."""
    import select

    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no line from the watcher within {timeout} s"
    return proc.stdout.readline()  # type: ignore[union-attr]


def _interrupt(proc: subprocess.Popen) -> str:
    """Ctrl-C the watcher; its stderr."""
    proc.send_signal(2)
    return proc.communicate(timeout=30)[1]


def test_watch_prints_one_json_line_per_new_checkpoint(tmp_path):
    run_dir, proc = _watcher(tmp_path)
    try:
        line1 = _readline(proc)
        _ckpt(run_dir / "step2.safetensors", 2.0)
        line2 = _readline(proc)
    finally:
        err = _interrupt(proc)
    a, b = json.loads(line1), json.loads(line2)
    assert a["schema"] == "wdist/trend-point/1" and a["checkpoint"]["step"] == 1 and b["checkpoint"]["step"] == 2
    assert b["layers"]["fc"]["l2_norm"] > a["layers"]["fc"]["l2_norm"]
    assert proc.returncode == 0, err


def test_watch_prints_a_checkpoint_rewritten_in_place_again(tmp_path):
    """Its path, step and label stay; only the values change: the line must be printed again (review)."""
    run_dir, proc = _watcher(tmp_path)
    try:
        line1 = _readline(proc)
        tmp = run_dir / "tmp.part"  # the new contents, renamed over the old file once complete
        _ckpt(tmp, 5.0)
        os.replace(tmp, run_dir / "step1.safetensors")
        line2 = _readline(proc)
    finally:
        err = _interrupt(proc)
    a, b = json.loads(line1), json.loads(line2)
    assert a["checkpoint"]["path"] == b["checkpoint"]["path"] and b["checkpoint"]["step"] == 1
    assert b["layers"]["fc"]["l2_norm"] == pytest.approx(5 * a["layers"]["fc"]["l2_norm"], rel=1e-6)
    assert proc.returncode == 0, err


def test_watch_does_not_print_a_checkpoint_again_when_its_label_grows(tmp_path):
    """step1/model.safetensors was printed as "model.safetensors" and again as "step1/model.safetensors"
    once step2/model.safetensors arrived (labels grow to tell same-named files apart)."""
    run_dir = tmp_path / "run"
    (run_dir / "step1").mkdir(parents=True)
    _ckpt(run_dir / "step1" / "model.safetensors")
    env = {**os.environ, "WDIST_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "wdist", "trend", str(run_dir / "step*" / "model.safetensors"),
                             "--watch", "--interval", "0.2", "--format", "jsonl"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        line1 = _readline(proc)
        (run_dir / "step2").mkdir()
        _ckpt(run_dir / "step2" / "model.safetensors", 2.0)
        line2 = _readline(proc)
        _ckpt(run_dir / "step3.part", 3.0)  # a third event, so that a repeated line would have come by now
        (run_dir / "step3").mkdir()
        os.replace(run_dir / "step3.part", run_dir / "step3" / "model.safetensors")
        line3 = _readline(proc)
    finally:
        err = _interrupt(proc)
    paths = [json.loads(x)["checkpoint"]["path"] for x in (line1, line2, line3)]
    assert [os.path.basename(os.path.dirname(p)) for p in paths] == ["step1", "step2", "step3"], (paths, err)


def test_local_cluster_gives_the_local_json(tmp_path):
    pytest.importorskip("distributed")
    paths = [_ckpt(tmp_path / f"s{i}.safetensors", i + 1.0) for i in range(2)]
    local = run("trend", *paths, "--format", "json", "--no-cache").output
    t = time.perf_counter()
    r = run("trend", *paths, "--format", "json", "--no-cache", "--cluster", "local:2", "-j", "2")
    assert r.exit_code == 0, r.output
    assert r.output == local, f"after {time.perf_counter() - t:.1f} s"
    assert run("inspect", paths[0], "--cluster", "nope").exit_code == 2


def test_trend_and_inspect_write_tensorboard_events(tmp_path):
    pytest.importorskip("tensorboardX")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    paths = [_ckpt(tmp_path / f"step{i}.safetensors", i + 1.0) for i in (1, 2)]
    logdir = tmp_path / "tb"
    r = run("trend", *paths, "--tensorboard", logdir)
    assert r.exit_code == 0 and "TensorBoard:" in r.output
    acc = EventAccumulator(str(logdir), size_guidance={"histograms": 0, "scalars": 0})
    acc.Reload()
    assert "layer/fc" in acc.Tags()["histograms"]
    assert [e.step for e in acc.Histograms("layer/fc")] == [1, 2]
    r = run("inspect", paths[0], "--tensorboard", tmp_path / "tb2", "--step", "7")
    assert r.exit_code == 0


def test_formats_command_lists_every_plugin():
    r = run("formats", "--format", "json")
    names = {f["name"] for f in json.loads(r.output)["formats"]}
    assert {"torch-zip", "safetensors", "keras-h5", "numpy", "gguf", "onnx", "tf-checkpoint", "torch-dcp",
            "flax-msgpack"} <= names
    md = run("formats", "--format", "markdown").output.splitlines()
    assert len({line.count("|") - line.count("\\|") for line in md}) == 1


def test_scheduler_address_of_an_existing_cluster(tmp_path):
    distributed = pytest.importorskip("distributed")
    paths = [_ckpt(tmp_path / f"s{i}.safetensors", i + 1.0) for i in range(2)]
    local = run("diff", *paths, "--format", "json", "--no-cache").output
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        r = run("diff", *paths, "--format", "json", "--no-cache", "--scheduler", cluster.scheduler_address, "-j", "2")
        assert r.exit_code == 0, r.output
        assert r.output == local
        r = run("check", paths[0], "--no-config", "--rule", "model: nan_count == 0",
                env={"WDIST_SCHEDULER": cluster.scheduler_address})
        assert r.exit_code == 0, r.output


def test_an_unreachable_scheduler_is_one_error_for_the_command(tmp_path):
    """It was the connect timeout once per checkpoint, each file blamed in turn (`check` over 3 files: 90 s
    and three lines naming the files); now the address is tried once, before any file is read."""
    pytest.importorskip("distributed")
    import socket

    import dask

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    paths = [_ckpt(tmp_path / f"s{i}.safetensors") for i in range(3)]
    t = time.monotonic()
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):  # dask read its environment at import
        r = run("check", *paths, "--no-config", "--no-cache", "--rule", "model: nan_count == 0", "--scheduler",
                f"tcp://127.0.0.1:{port}")
    assert time.monotonic() - t < 15
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert lines == [f"wdist: error: tcp://127.0.0.1:{port}: cannot reach a Dask scheduler (OSError: Timed out "
                     f"trying to connect to tcp://127.0.0.1:{port} after 2 s)"], r.output
