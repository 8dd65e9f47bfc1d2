"""The Dask engine on a real distributed.LocalCluster (2 worker processes on 127.0.0.1): the same packed
summaries as a local run, also when a worker dies mid-run."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
from safetensors.numpy import save_file

from wdist.analyzers.engine import DaskEngine, ordered_map, summarize_tensor
from wdist.loaders import open_checkpoint

distributed = pytest.importorskip("distributed")


def _slow_summary(ref, chunk):
    import time

    time.sleep(0.3)  # long enough for the test to kill a worker while tasks are in flight
    return summarize_tensor(ref, chunk)


def _refs(tmp_path, n=6):
    rng = np.random.default_rng(0)
    p = tmp_path / "m.safetensors"
    save_file({f"l{i}.weight": rng.normal(scale=i + 1, size=(128, 64)).astype(np.float32) for i in range(n)}, str(p))
    return open_checkpoint(str(p)).tensors


def _same(a, b):
    assert a.n == b.n and a.mean == b.mean and a.m2 == b.m2 and a.m4 == b.m4 and a.min == b.min
    np.testing.assert_array_equal(a.hist, b.hist)


@pytest.fixture(scope="module")
def engine():
    with DaskEngine("local:2") as e:
        yield e


def test_dask_results_equal_the_local_run(tmp_path, engine):
    refs = _refs(tmp_path)
    local = list(ordered_map(summarize_tensor, [(r, 4096) for r in refs], 1, 0))
    remote = list(ordered_map(summarize_tensor, [(r, 4096) for r in refs], 1, 0, engine))
    assert len(remote) == len(local)
    for a, b in zip(local, remote):
        _same(a, b)


def test_a_worker_killed_mid_run_does_not_change_the_result(tmp_path, engine):
    refs = _refs(tmp_path, 8)
    local = [summarize_tensor(r, 4096) for r in refs]
    client = engine.client()
    pids = list(client.run(os.getpid).values())
    it = ordered_map(_slow_summary, [(r, 4096) for r in refs], 1, 0, engine)
    first = next(it)
    os.kill(pids[0], signal.SIGKILL)  # the nanny restarts it; its tasks are rescheduled
    got = [first, *it]
    for a, b in zip(local, got):
        _same(a, b)
