"""trend --watch: new checkpoints are picked up once complete, never while being written."""

from __future__ import annotations

import numpy as np
from safetensors.numpy import save_file

from wdist.analyzers.trend import watch


def test_new_checkpoints_are_yielded_once_stable(tmp_path):
    t = [0.0]
    events: list[list[str]] = []
    writes = {
        1: lambda: save_file({"w": np.ones((4, 4), np.float32)}, str(tmp_path / "step1.safetensors")),
        # step 2 appears half-written first: it must not be yielded until it stops changing
        3: lambda: (tmp_path / "step2.safetensors").write_bytes(b"\0" * 10),
        4: lambda: save_file({"w": np.full((4, 4), 2.0, np.float32)}, str(tmp_path / "step2.safetensors")),
    }
    tick = [0]

    def sleep(dt):
        tick[0] += 1
        t[0] += dt
        if tick[0] in writes:
            writes[tick[0]]()

    it = watch(str(tmp_path), poll=1.0, settle=1.5, stop=lambda: tick[0] > 12, sleep=sleep, clock=lambda: t[0])
    for done in it:
        events.append([p.rsplit("/", 1)[-1] for p in done])
    assert events == [["step1.safetensors"], ["step1.safetensors", "step2.safetensors"]]


def test_an_empty_folder_is_waited_on(tmp_path):
    tick = [0]

    def sleep(dt):
        tick[0] += 1

    assert list(watch(str(tmp_path), poll=0.1, settle=0.1, stop=lambda: tick[0] > 3, sleep=sleep)) == []
