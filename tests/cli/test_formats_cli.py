"""diff, trend and check on each format family, and ls reporting refused globals."""

import json
import os

import torch
from cli_helpers import run


def test_keras_run_diff_and_trend(ckpts):
    a, b = ckpts["keras2_mlp_epoch1.h5"], ckpts["keras2_mlp_epoch10.h5"]
    d = json.loads(run("diff", a, b, "--format", "json").output)
    assert {t["name"] for t in d["tensors"]} == {"hidden/kernel", "hidden/bias", "logits/kernel", "logits/bias"}
    assert all(t["status"] == "matched" and t["change"]["rel_l2_change"] > 0 for t in d["tensors"])
    t = json.loads(run("trend", a, b, "--format", "json").output)
    assert [c["label"] for c in t["checkpoints"]] == ["keras2_mlp_epoch1.h5", "keras2_mlp_epoch10.h5"]
    assert [c["step"] for c in t["checkpoints"]] == [1, 10]


def test_check_on_keras_and_safetensors(ckpts):
    for key in ("keras2_lstm.h5", "keras3_conv.keras", "st", "st_bf16"):
        r = run("check", ckpts[key], "--no-config", "--rule", "*: nan_count == 0", "--rule", "model: std > 0")
        assert r.exit_code == 0, (key, r.output)
    r = run("check", ckpts["st"], "--no-config", "--rule", "0.weight: dead_units == 0")
    assert r.exit_code == 1


def test_ls_json_lists_unsafe_globals(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path}/MARKER",))

    p = tmp_path / "evil.pt"
    torch.save({"fc.weight": torch.ones(2, 2), "x": Evil()}, p)
    d = json.loads(run("ls", p, "--format", "json").output)
    assert d["unsafe_globals"] == ["posix.system"] and [t["name"] for t in d["tensors"]] == ["fc.weight"]
    r = run("inspect", p)
    assert r.exit_code == 0 and "objects not loaded" in r.output and "posix.system" in r.output
    assert not (tmp_path / "MARKER").exists()
