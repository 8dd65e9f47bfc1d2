"""The checkpoints and comparisons the remote back-end tests share (tests/loaders/test_remote_gcs.py,
tests/loaders/test_remote_hf.py): the same files are put behind each fake service and read locally."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

KERAS = Path(__file__).parent / "data" / "keras" / "keras2_mlp_epoch10.h5"
CASES = ["model.safetensors", "sharded", "sharded/model.safetensors.index.json", "m.pt", "k.h5"]


def write_model(d: Path, sd: dict[str, torch.Tensor]) -> None:
    """Every format in one folder: single safetensors, a sharded model in sharded/, a torch zip, Keras h5."""
    d.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(d / "model.safetensors"))
    torch.save(sd, d / "m.pt")
    shutil.copy(KERAS, d / "k.h5")
    sh = d / "sharded"
    sh.mkdir()
    items = list(sd.items())
    half = len(items) // 2
    shards = {"model-00001-of-00002.safetensors": dict(items[:half]),
              "model-00002-of-00002.safetensors": dict(items[half:])}
    for name, part in shards.items():
        save_file({k: v.contiguous() for k, v in part.items()}, str(sh / name))
    (sh / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: name for name, part in shards.items() for k in part}}))


def write_big(path: Path) -> None:
    """A 100 MB safetensors file (24 x 4 MiB), for counting what `ls` fetches."""
    save_file({f"layers.{i}.weight": torch.zeros(1024, 1024) for i in range(24)}, str(path))


def report(r: Any) -> dict[str, Any]:
    """The JSON a successful CliRunner result printed."""
    assert r.exit_code == 0, r.output
    out: dict[str, Any] = json.loads(r.output)
    return out


def assert_same(remote: dict[str, Any], local: dict[str, Any], url: str, path: str) -> None:
    """Equal reports, but for the checkpoint's own name."""
    assert json.loads(json.dumps(remote).replace(url, path)) == local
