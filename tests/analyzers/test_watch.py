"""trend --watch: new checkpoints are picked up once complete, never while being written."""

from __future__ import annotations

import numpy as np
from safetensors.numpy import save_file

from wdist.analyzers.trend import watch


def _clock(writes: dict[int, object]) -> tuple[object, object, list[int]]:
    """A fake sleep and clock for watch(): each sleep advances time and runs the write due at that tick."""
    t, tick = [0.0], [0]

    def sleep(dt: float) -> None:
        tick[0] += 1
        t[0] += dt
        if tick[0] in writes:
            writes[tick[0]]()  # type: ignore[operator]

    return sleep, (lambda: t[0]), tick


def test_new_checkpoints_are_yielded_once_stable(tmp_path):
    events: list[list[str]] = []
    writes = {
        1: lambda: save_file({"w": np.ones((4, 4), np.float32)}, str(tmp_path / "step1.safetensors")),
        # step 2 appears half-written first: it must not be yielded until it stops changing
        3: lambda: (tmp_path / "step2.safetensors").write_bytes(b"\0" * 10),
        4: lambda: save_file({"w": np.full((4, 4), 2.0, np.float32)}, str(tmp_path / "step2.safetensors")),
    }
    sleep, clock, tick = _clock(writes)
    it = watch(str(tmp_path), poll=1.0, settle=1.5, stop=lambda: tick[0] > 12, sleep=sleep, clock=clock)
    for done in it:
        events.append([p.rsplit("/", 1)[-1] for p in done])
    assert events == [["step1.safetensors"], ["step1.safetensors", "step2.safetensors"]]


def test_an_empty_folder_is_waited_on(tmp_path):
    tick = [0]

    def sleep(dt):
        tick[0] += 1

    assert list(watch(str(tmp_path), poll=0.1, settle=0.1, stop=lambda: tick[0] > 3, sleep=sleep)) == []


def test_a_write_that_pauses_longer_than_settle_is_reported_again_when_complete(tmp_path):
    import os

    p = tmp_path / "step3.safetensors"
    full = tmp_path / "full.bin"
    save_file({"w": np.full((64, 64), 3.0, np.float32)}, str(full))
    data = full.read_bytes()
    full.unlink()

    def part() -> None:
        p.write_bytes(data[:5000])

    def rest() -> None:
        with open(p, "ab") as f:
            f.write(data[5000:])
        os.utime(p, ns=(int(1e18), int(1e18)))  # a new mtime, as a later write has

    sleep, clock, tick = _clock({1: part, 8: rest})
    events = [[os.path.basename(x) for x in done]
              for done in watch(str(tmp_path), poll=1.0, settle=1.5, stop=lambda: tick[0] > 16, sleep=sleep,
                                clock=clock)]
    # reported once while the writer paused (it is then unreadable), and again once complete
    assert events == [["step3.safetensors"], ["step3.safetensors"]]
    from wdist import trend

    assert trend([str(p)]).checkpoints[0].error is None
