"""gs:// checkpoints through gcsfs, against a fake GCS JSON API started here on 127.0.0.1 (tests/fake_gcs.py),
through the CLI and the Python API. gcsfs finds the server through $STORAGE_EMULATOR_HOST (read at each
request); the credential is an access token given through fsspec's configuration ($FSSPEC_GS_TOKEN, read
when fsspec is imported; in this process its `conf`), so gcsfs neither looks for Google credentials nor
asks the GCE metadata server, and nothing reaches Google."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fsspec")
pytest.importorskip("gcsfs")

from cli_helpers import run  # noqa: E402
from fake_gcs import FakeGCS  # noqa: E402
from remote_cases import (  # noqa: E402
    CASES,
    assert_same,
    assert_trickle_given_up,
    inspect_while,
    ranged_read_refusal,
    report,
    write_big,
    write_model,
)

import wdist  # noqa: E402
from wdist.loaders.errors import WdistError  # noqa: E402

TOKEN = "ya29.S3CRETaccessTokenNeverPrinted"


@pytest.fixture(scope="module")
def gcs(tmp_path_factory, torch_model_sd):
    root = tmp_path_factory.mktemp("gcs")
    local = tmp_path_factory.mktemp("local")
    with FakeGCS(root) as g:
        write_model(local / "files", torch_model_sd)
        shutil.copytree(local / "files", g.bucket("ckpts"), dirs_exist_ok=True)
        write_big(g.bucket("big") / "model.safetensors")
        g.local = local / "files"  # type: ignore[attr-defined]
        yield g


def _env(g: FakeGCS, home: Path) -> dict[str, str]:
    """$STORAGE_EMULATOR_HOST at the fake server, the token in $FSSPEC_GS_TOKEN, HOME (gcloud's configuration,
    gcsfs's token cache) an empty folder, and no probe of the GCE metadata server should anything look."""
    return {"STORAGE_EMULATOR_HOST": g.url, "FSSPEC_GS_TOKEN": TOKEN, "HOME": str(home),
            "CLOUDSDK_CONFIG": str(home / "gcloud"), "NO_GCE_CHECK": "true", "GCE_METADATA_HOST": "127.0.0.1:9",
            "GCE_METADATA_IP": "127.0.0.1:9",
            "FETCH_RAW_TOKEN_EXPIRY": "false"}


@pytest.fixture
def gs_env(gcs, monkeypatch, tmp_path):
    import fsspec.config

    home = tmp_path / "home"
    home.mkdir()
    for k, v in _env(gcs, home).items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setitem(fsspec.config.conf, "gs", {"token": TOKEN})  # what $FSSPEC_GS_TOKEN gives at import
    fsspec.filesystem("gs").clear_instance_cache()  # a fresh instance: credentials are looked up again
    yield home
    fsspec.filesystem("gs").clear_instance_cache()


@pytest.mark.parametrize("name", CASES)
def test_gs_cli_and_api_equal_the_local_files(gcs, gs_env, name):
    url = f"gs://ckpts/{name}"
    path = str(gcs.local / name)
    for cmd in ("inspect", "ls"):
        assert_same(report(run(cmd, url, "--format", "json")), report(run(cmd, path, "--format", "json")), url, path)
    assert_same(wdist.inspect(url, jobs=1).to_dict(), wdist.inspect(path, jobs=1).to_dict(), url, path)
    assert wdist.ls(url).to_dict()["checkpoint"]["path"] == url


def test_gs_a_sharded_folder_is_one_checkpoint(gcs, gs_env):
    with wdist.open("gs://ckpts/sharded") as ck:
        assert ck.variant == "sharded"


def test_gs_ls_of_a_100_mb_file_fetches_only_the_header(gcs, gs_env):
    url = "gs://big/model.safetensors"
    assert (Path(gcs.root) / "big/model.safetensors").stat().st_size > 100_000_000
    before = len(gcs.sent)
    assert report(run("ls", url, "--format", "json"))["checkpoint"]["tensors"] == 24
    sent = sum(gcs.sent[before:])
    assert sent < 1_000_000, f"ls transferred {sent} bytes"
    print(f"gs:// ls of a {(Path(gcs.root) / 'big/model.safetensors').stat().st_size} byte file: {sent} bytes sent")
    before = len(gcs.sent)
    assert len(wdist.ls(url).tensors) == 24
    assert sum(gcs.sent[before:]) < 1_000_000


@pytest.mark.parametrize("url", ["gs://ckpts/nope.safetensors", "gs://no-such-bucket/model.safetensors"])
def test_gs_a_missing_file_names_the_url(gcs, gs_env, url):
    for cmd in ("ls", "inspect"):
        r = run(cmd, url)
        assert r.exit_code == 2
        assert r.output.strip() == f"wdist: error: {url}: no such file or directory", r.output
        assert "Traceback" not in r.output
    with pytest.raises(WdistError, match="nope|no-such-bucket"):
        wdist.ls(url)


# 505, not 500: a 500-504 (and 408, 429) is retried once after a back-off of 1-2 s (gcsfs's own six retries
# took about a minute)
@pytest.mark.parametrize("status, reason", [(403, "access denied (HTTP 403; check credentials)"),
                                            (505, "the server answered HTTP 505")])
def test_gs_an_error_status_names_the_url(gcs, gs_env, monkeypatch, status, reason):
    monkeypatch.setitem(gcs.fail, "ckpts", status)
    url = "gs://ckpts/model.safetensors"
    for cmd in ("ls", "inspect"):
        r = run(cmd, url)
        assert r.exit_code == 2
        assert r.output.strip() == f"wdist: error: {url}: {reason}", r.output


def test_gs_credentials_are_used_and_never_printed(gcs, gs_env):
    gcs.auth.clear()
    outs = [run("inspect", "gs://ckpts/m.pt").output, run("inspect", "gs://ckpts/m.pt", "--format", "json").output,
            run("ls", "gs://ckpts/nope.pt").output, run("ls", "gs://ckpts/sharded", "--format", "json").output]
    gcs.fail["ckpts"] = 403
    try:
        outs.append(run("ls", "gs://ckpts/m.pt").output)
    finally:
        del gcs.fail["ckpts"]
    assert gcs.auth and set(gcs.auth) == {f"Bearer {TOKEN}"}  # the configured credential is sent
    for out in outs:
        assert TOKEN not in out and "S3CRET" not in out, out


def test_gs_in_a_fresh_process(gcs, tmp_path):
    """A child process with only the environment set reads through the fake server and prints no secret."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "GOOGLE_APPLICATION_CREDENTIALS"}
    env.update(_env(gcs, home), TMPDIR=str(tmp_path))
    gcs.auth.clear()
    r = subprocess.run([sys.executable, "-m", "wdist", "ls", "gs://ckpts/sharded", "--format", "json"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["checkpoint"]["path"] == "gs://ckpts/sharded"
    r = subprocess.run([sys.executable, "-m", "wdist", "ls", "gs://ckpts/nope.pt"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == "wdist: error: gs://ckpts/nope.pt: no such file or directory"
    assert TOKEN not in r.stdout + r.stderr
    assert set(gcs.auth) == {f"Bearer {TOKEN}"}  # $FSSPEC_GS_TOKEN reached gcsfs


def test_gs_a_server_that_ignores_range_is_refused_in_bounded_memory(gcs, tmp_path):
    """gcsfs's cat_file reads a whole body: a 200 with 2^40 bytes grew wdist to 10 GB in 30 s."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "GOOGLE_APPLICATION_CREDENTIALS"}
    env.update(_env(gcs, home), TMPDIR=str(tmp_path))
    rc, err = inspect_while(gcs, "endless", "gs://ckpts/model.safetensors", env)
    assert rc == 2 and err.strip() == ranged_read_refusal("gs://ckpts/model.safetensors", shifted=False), err


def test_gs_bytes_from_another_range_are_refused(gcs, gs_env):
    """A 206 for bytes 4 further on than asked was taken as the tensor: a wrong mean, and the cache kept it."""
    rc, out = inspect_while(gcs, "shifted", "gs://ckpts/m.pt")
    assert rc == 2 and out.startswith(ranged_read_refusal("gs://ckpts/m.pt", shifted=True)), out
    assert len(out.strip().splitlines()) == 1


def test_gs_a_401_is_one_line_without_gcsfs_traceback(gcs, tmp_path):
    """gcsfs logs a failed request with logger.exception: Python's last-resort handler printed 20 lines of
    traceback before wdist's line. In a child process: pytest's own log capture would hide it here."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "GOOGLE_APPLICATION_CREDENTIALS"}
    env.update(_env(gcs, home), TMPDIR=str(tmp_path))
    gcs.fail["ckpts"] = 401
    try:
        r = subprocess.run([sys.executable, "-m", "wdist", "ls", "gs://ckpts/model.safetensors"], capture_output=True,
                           text=True, env=env, timeout=120)
    finally:
        del gcs.fail["ckpts"]
    assert r.returncode == 2
    assert r.stderr.strip() == ("wdist: error: gs://ckpts/model.safetensors: access denied (HTTP 401; check "
                                "credentials)"), r.stderr


def test_gs_a_stalled_server_costs_two_timeouts(gcs, tmp_path):
    """gcsfs retried a timed-out request six times with back-off: 52 s at 3 s timeouts (6.5 min at the default
    60 s) before the line said "within 3 s". Now one retry."""
    import time

    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "GOOGLE_APPLICATION_CREDENTIALS"}
    env.update(_env(gcs, home), TMPDIR=str(tmp_path), WDIST_REMOTE_TIMEOUT="2")
    gcs.stall = "metadata"
    t = time.monotonic()
    try:
        r = subprocess.run([sys.executable, "-m", "wdist", "ls", "gs://ckpts/model.safetensors"], capture_output=True,
                           text=True, env=env, timeout=120)
    finally:
        gcs.stall = None
    took = time.monotonic() - t
    assert r.returncode == 2
    assert r.stderr.strip() == ("wdist: error: gs://ckpts/model.safetensors: no answer within 2 s (the server "
                                "stopped answering; $WDIST_REMOTE_TIMEOUT sets the limit)"), r.stderr
    assert took < 15, took  # two 2 s timeouts, a 1-2 s back-off and the start-up
    print(f"gs:// stalled metadata: exit 2 in {took:.1f} s")


def test_gs_an_object_added_after_a_listing_is_seen(gcs, gs_env):
    """The same as on S3 (tests/loaders/test_remote.py): gcsfs's kept listings hid a new step for good."""
    import wdist

    run_dir = gcs.bucket("grow") / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(gcs.local / "model.safetensors", run_dir / "step_100.safetensors")
    assert wdist.trend("gs://grow/run").x_steps() == [100]
    shutil.copy(gcs.local / "model.safetensors", run_dir / "step_200.safetensors")
    assert wdist.trend("gs://grow/run").x_steps() == [100, 200]


def test_gs_a_server_that_trickles_is_given_up(gcs, gs_env, monkeypatch):
    """The timeouts are per read without progress: a byte every 0.2 s kept a read going for good."""
    assert_trickle_given_up(gcs, "gs://ckpts/model.safetensors", monkeypatch)
