"""The core install without torch: `make DIR` (in an environment with torch) writes real checkpoints of every
built-in format; `check DIR` (in a core-only environment) runs ls/inspect/diff/trend/check on them through
the CLI and asserts that torch is neither installed nor imported. Run by .ci/run; not collected by pytest."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path


def make(out: Path) -> None:
    import numpy as np
    import torch
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 6 * 6, 4))
    for step in (1, 2):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1.1)
        sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
        torch.save({"epoch": step, "state_dict": sd}, out / f"epoch{step}.pt")
        save_file({k: v.contiguous() for k, v in sd.items()}, str(out / f"epoch{step}.safetensors"))
    torch.save(sd, out / "legacy.pt", _use_new_zipfile_serialization=False)
    np.savez(out / "arrays.npz", **{k: v.numpy() for k, v in sd.items()})
    keras = Path(__file__).parent / "data" / "keras"
    for f in ("keras2_mlp_epoch10.h5", "keras3_conv.keras"):
        shutil.copy(keras / f, out / f)


def check(d: Path) -> None:
    assert importlib.util.find_spec("torch") is None, "torch is installed in the core-only environment"
    from click.testing import CliRunner

    from wdist.cli.main import cli

    runner = CliRunner()
    files = sorted(p for p in d.iterdir() if p.is_file())
    for f in files:
        for cmd in (["ls", str(f), "--format", "json"], ["inspect", str(f), "--format", "json"]):
            r = runner.invoke(cli, cmd)
            assert r.exit_code == 0, (cmd, r.output)
            assert json.loads(r.output)["checkpoint"]["tensors"] > 0
    r = runner.invoke(cli, ["diff", str(d / "epoch1.pt"), str(d / "epoch2.safetensors"), "--format", "json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["summary"]["statuses"].get("matched", 0) > 0
    r = runner.invoke(cli, ["trend", str(d / "epoch1.pt"), str(d / "epoch2.pt"), "--format", "json"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["check", str(d / "epoch2.safetensors"), "--no-config", "--rule", "model: nan_count == 0"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["demo", str(d / "demo")])
    assert r.exit_code == 2 and "wdist[torch]" in r.output, r.output
    assert "torch" not in sys.modules, "a read path imported torch"
    print(f"core install: ls/inspect on {len(files)} files, diff, trend, check: 5 passed, 0 failed")


if __name__ == "__main__":
    what, where = sys.argv[1], Path(sys.argv[2])
    {"make": make, "check": check}[what](where)
    os._exit(0)
