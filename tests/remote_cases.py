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


def run_limited(args: list[str], env: dict[str, str], limit: int = 2 << 30) -> tuple[int, int, str]:
    """`python -m wdist ARGS` in a child under an address-space limit (a regression fails the test instead
    of filling the machine): its exit code, peak RSS in kB and stderr."""
    import subprocess
    import sys

    code = (f"import resource, subprocess, sys; resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit})); "
            "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); print(r.stderr)")
    out = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "wdist", *args], capture_output=True,
                         text=True, timeout=120, env=env).stdout
    head, _, err = out.partition("\n")
    rc, rss = head.split()
    return int(rc), int(rss), err


def inspect_while(service: Any, media: str, url: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """`wdist inspect URL --no-cache` while the fake service misbehaves as `media` says (tests/fake_http.py):
    in-process, or with `env` in a child under a 2 GiB address-space limit whose peak RSS must stay under
    400 MB. Its exit code and what it printed."""
    from cli_helpers import run

    service.media = media
    try:
        if env is None:
            r = run("inspect", url, "--no-cache")
            return r.exit_code, r.output
        rc, rss_kb, err = run_limited(["inspect", url, "--no-cache"], env)
    finally:
        service.media = None
    assert rss_kb < 400_000, (rc, rss_kb, err)
    return rc, err


def ranged_read_refusal(url: str, shifted: bool) -> str:
    """The error line of a server that sends bytes from another range (shifted) or ignores Range (endless)."""
    if shifted:
        return f"wdist: error: {url}: the server sent another range than the one asked for (bytes "
    return (f"wdist: error: {url}: the server ignores HTTP Range requests (a ranged read got status 200): it "
            "cannot be read without downloading the whole file")


def assert_trickle_given_up(service: Any, url: str, monkeypatch: Any) -> None:
    """`ls URL` while the service sends a byte every 0.2 s: the whole response's bound ends it (the bound's
    rate raised from 16 KiB/s to 1 MiB/s: the same rule, sooner)."""
    from cli_helpers import run

    from wdist.loaders import fs as wfs

    monkeypatch.setenv("WDIST_REMOTE_TIMEOUT", "1")
    monkeypatch.setattr(wfs, "_MIN_RATE", 1 << 20)
    monkeypatch.setattr(service, "media", "trickle")
    r = run("ls", url)
    assert r.exit_code == 2
    assert r.output.startswith(f"wdist: error: {url}: the server sends too slowly ("), r.output
