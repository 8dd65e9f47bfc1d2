"""Shared fixtures: checkpoints written by the real libraries into a temporary folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

# CI runs a fixed set of examples (a red CI must be reproducible); the fuzz profile explores at random
settings.register_profile("default", max_examples=60, deadline=None, derandomize=True)
settings.register_profile("explore", max_examples=1000, deadline=None)
settings.register_profile("fuzz", max_examples=20_000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

DATA = Path(__file__).parent / "data"
KERAS = DATA / "keras"


@pytest.fixture(autouse=True)
def _fixed_width(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    monkeypatch.setenv("COLUMNS", "120")
    # each test gets an empty summary cache: none is shared between tests or left in the user's cache folder
    monkeypatch.setenv("WDIST_CACHE_DIR", str(tmp_path_factory.mktemp("wdist-cache")))
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


@pytest.fixture(scope="session")
def torch_model_sd() -> dict:
    import torch
    from torch import nn

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
    with torch.no_grad():
        m[0].weight[2].zero_()  # one dead output channel
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory: pytest.TempPathFactory, torch_model_sd: dict) -> dict[str, Path]:
    """One checkpoint of each kind, written by torch / safetensors, plus copies of the Keras fixtures."""
    import torch
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("ckpts")
    sd = torch_model_sd
    out: dict[str, Path] = {}
    out["zip"] = d / "model.pt"
    torch.save(sd, out["zip"])
    out["legacy"] = d / "legacy.pt"
    torch.save(sd, out["legacy"], _use_new_zipfile_serialization=False)
    out["st"] = d / "model.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(out["st"]), metadata={"note": "test"})
    out["st_bf16"] = d / "bf16.safetensors"
    save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in sd.items()}, str(out["st_bf16"]))
    out["lightning"] = d / "epoch=3-step=120.ckpt"
    params = [torch.nn.Parameter(v.clone()) for v in sd.values() if v.is_floating_point()]
    opt = torch.optim.Adam(params)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    torch.save({"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.4.0",
                "state_dict": {f"model.{k}": v for k, v in sd.items()},
                "optimizer_states": [opt.state_dict()]}, out["lightning"])
    for f in os.listdir(KERAS):
        if not f.endswith(".md"):
            shutil.copy(KERAS / f, d / f)
            out[f] = d / f
    return out


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
