"""hf:// checkpoints through huggingface_hub's HfFileSystem, against a fake Hub started here on 127.0.0.1
(tests/fake_hub.py), through the CLI and the Python API; huggingface_hub finds it through $HF_ENDPOINT,
which wdist reads at each use."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

pytest.importorskip("fsspec")
pytest.importorskip("huggingface_hub")

from cli_helpers import run  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from fake_hub import FakeHub, env_for  # noqa: E402
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
from wdist.cli.main import cli  # noqa: E402
from wdist.loaders.errors import WdistError  # noqa: E402

TOKEN = "hf_S3CRETt0kenNeverPrinted"


@pytest.fixture(scope="module")
def hub(tmp_path_factory, torch_model_sd):
    root = tmp_path_factory.mktemp("hub")
    local = tmp_path_factory.mktemp("local")
    with FakeHub(root) as h:
        write_model(local / "files", torch_model_sd)
        shutil.copytree(local / "files", h.repo("org/model"), dirs_exist_ok=True)
        # a repository that is itself a sharded model (hf://org/sharded)
        shutil.copytree(local / "files" / "sharded", h.repo("org/sharded"), dirs_exist_ok=True)
        shutil.copytree(local / "files", h.repo("org/data", "dataset"), dirs_exist_ok=True)
        write_big(h.repo("org/big") / "model.safetensors")
        h.local = local / "files"  # type: ignore[attr-defined]
        yield h


@pytest.fixture
def hf_env(hub, monkeypatch, tmp_path):
    """$HF_ENDPOINT at the fake Hub, a token in $HF_TOKEN, and HOME / caches in an empty folder."""
    home = tmp_path / "home"
    home.mkdir()
    for k, v in {"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"),
                 "HF_HOME": str(home / ".cache" / "huggingface"), "HF_HUB_DISABLE_TELEMETRY": "1"}.items():
        monkeypatch.setenv(k, v)
    return home


@pytest.mark.parametrize("name", CASES)
def test_hf_cli_and_api_equal_the_local_files(hub, hf_env, name):
    url = f"hf://org/model/{name}"
    path = str(hub.local / name)
    for cmd in ("inspect", "ls"):
        assert_same(report(run(cmd, url, "--format", "json")), report(run(cmd, path, "--format", "json")), url, path)
    remote_api = wdist.inspect(url, jobs=1).to_dict()
    assert_same(remote_api, wdist.inspect(path, jobs=1).to_dict(), url, path)
    assert wdist.ls(url).to_dict()["checkpoint"]["path"] == url


def test_hf_a_repository_that_is_a_sharded_model_and_a_dataset(hub, hf_env):
    ck = wdist.open("hf://org/sharded")
    assert ck.variant == "sharded"
    ck.close()
    local = str(hub.local / "sharded")
    assert_same(report(run("inspect", "hf://org/sharded", "--format", "json")),
          report(run("inspect", local, "--format", "json")), "hf://org/sharded", local)
    url = "hf://datasets/org/data/model.safetensors"
    local = str(hub.local / "model.safetensors")
    assert_same(report(run("inspect", url, "--format", "json")), report(run("inspect", local, "--format", "json")), url, local)


def test_hf_ls_of_a_100_mb_file_fetches_only_the_header(hub, hf_env):
    url = "hf://org/big/model.safetensors"
    assert (Path(hub.root) / "models/org/big/model.safetensors").stat().st_size > 100_000_000
    before = len(hub.sent)
    r = run("ls", url, "--format", "json")
    assert report(r)["checkpoint"]["tensors"] == 24
    sent = sum(hub.sent[before:])
    assert sent < 1_000_000, f"ls transferred {sent} bytes"
    print(f"hf:// ls of a {(Path(hub.root) / 'models/org/big/model.safetensors').stat().st_size} byte file: "
          f"{sent} bytes sent")
    before = len(hub.sent)
    assert len(wdist.ls(url).tensors) == 24
    assert sum(hub.sent[before:]) < 1_000_000


@pytest.mark.parametrize("url", ["hf://org/model/nope.safetensors", "hf://org/missing-repo/model.safetensors"])
def test_hf_a_missing_file_names_the_url(hub, hf_env, url):
    for cmd in ("ls", "inspect"):
        r = run(cmd, url)
        assert r.exit_code == 2
        assert r.output.strip() == f"wdist: error: {url}: no such file or directory", r.output
    with pytest.raises(WdistError, match="nope|missing-repo"):
        wdist.ls(url)


@pytest.mark.parametrize("status, reason", [(403, "access denied (HTTP 403; check credentials)"),
                                            (500, "the server answered HTTP 500")])
def test_hf_an_error_status_names_the_url(hub, hf_env, monkeypatch, status, reason):
    monkeypatch.setitem(hub.fail, "org/model", status)
    url = "hf://org/model/model.safetensors"
    for cmd in ("ls", "inspect"):
        r = run(cmd, url)
        assert r.exit_code == 2
        assert r.output.strip() == f"wdist: error: {url}: {reason}", r.output
        assert TOKEN not in r.output


def test_hf_the_token_is_sent_and_never_printed(hub, hf_env):
    hub.auth.clear()
    outs = [run("inspect", "hf://org/model/m.pt").output, run("inspect", "hf://org/model/m.pt", "--format", "json").output,
            run("ls", "hf://org/model/nope.pt").output, run("ls", "hf://org/model", "--format", "json").output]
    # --debug lets the error through with its traceback: neither names the token
    r = CliRunner().invoke(cli, ["--debug", "ls", "hf://org/model/nope.pt"])
    assert r.exc_info is not None and r.exit_code != 0
    outs += [r.output, "".join(traceback.format_exception(*r.exc_info))]
    assert hub.auth and set(hub.auth) == {f"Bearer {TOKEN}"}  # credentials from the usual place ($HF_TOKEN)
    for out in outs:
        assert TOKEN not in out and "S3CRET" not in out


def test_hf_in_a_fresh_process_nothing_is_written_to_disk(hub, tmp_path):
    """huggingface_hub reads HF_HOME / HF_ENDPOINT at import: a child process with only the environment set
    reads through the fake Hub, sends the token, prints none of it, and leaves HOME, the caches and TMPDIR
    empty (no download cache, no token file, no temporary file)."""
    home = tmp_path / "home"
    tmp = tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HOME": str(home), "TMPDIR": str(tmp),
           "XDG_CACHE_HOME": str(home / ".cache"), "HF_HOME": str(home / ".cache" / "huggingface"),
           "HF_HUB_CACHE": str(home / "hub-cache")}
    hub.auth.clear()
    for args in (["inspect", "hf://org/model/model.safetensors", "--format", "json"], ["ls", "hf://org/model/sharded"],
                 ["inspect", "hf://org/model/m.pt"], ["ls", "hf://org/model/k.h5"], ["ls", "hf://org/model/nope.pt"]):
        r = subprocess.run([sys.executable, "-m", "wdist", *args], capture_output=True, text=True, env=env,
                           timeout=120)
        assert TOKEN not in r.stdout + r.stderr
        if "nope" in args[1]:
            assert r.returncode == 2 and r.stderr.strip() == f"wdist: error: {args[1]}: no such file or directory", r.stderr
        else:
            assert r.returncode == 0, r.stderr
    assert f"Bearer {TOKEN}" in hub.auth
    assert list(home.rglob("*")) == [] and list(tmp.rglob("*")) == []


def test_hf_a_missing_extra_names_it(monkeypatch):
    """With huggingface_hub not importable, hf:// says which extra to install."""
    import fsspec

    from wdist.loaders import fs as wfs

    real = fsspec.filesystem

    def no_hub(proto, **kw):  # type: ignore[no-untyped-def]
        if proto == "hf":
            raise ImportError("Install huggingface_hub to access HfFileSystem")
        return real(proto, **kw)

    monkeypatch.setattr(fsspec, "filesystem", no_hub)
    r = run("ls", "hf://org/model/model.safetensors")
    assert r.exit_code == 2
    assert r.output.startswith("wdist: error: hf://org/model/model.safetensors: reading hf:// URLs needs "
                               "huggingface_hub (pip install 'wdist[hf]')"), r.output
    assert wfs.EXTRAS["hf"] == ("hf", "huggingface_hub")


def test_hf_bytes_from_another_range_are_refused(hub, hf_env):
    """A 206 for bytes 4 further on than asked was taken as the tensor: a wrong mean, and the cache kept it."""
    rc, out = inspect_while(hub, "shifted", "hf://org/model/m.pt")
    assert rc == 2 and out.startswith(ranged_read_refusal("hf://org/model/m.pt", shifted=True)), out
    assert len(out.strip().splitlines()) == 1


def test_hf_a_server_that_ignores_range_is_refused_in_bounded_memory(hub, tmp_path):
    env = {**os.environ, **env_for(hub), "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf")}
    rc, err = inspect_while(hub, "endless", "hf://org/model/model.safetensors", env)
    assert rc == 2 and err.strip() == ranged_read_refusal("hf://org/model/model.safetensors", shifted=False), err


def test_hf_a_bare_404_is_a_missing_file(hub, hf_env, monkeypatch):
    """A 404 without the Hub's X-Error-Code (a proxy's or mirror's) read 'cannot be read (HfHubHTTPError ...)'."""
    from huggingface_hub import HfFileSystem

    HfFileSystem.clear_instance_cache()  # an instance of earlier tests has the repo's listing cached
    monkeypatch.setitem(hub.fail, "org/model", 404)
    r = run("ls", "hf://org/model/model.safetensors")
    assert r.exit_code == 2
    assert r.output.strip() == "wdist: error: hf://org/model/model.safetensors: no such file or directory", r.output


def test_hf_library_logs_never_reach_the_terminal(hub, tmp_path):
    """huggingface_hub's retry warnings of a folder listing printed the endpoint with its credentials
    (http://user:pw@host; the listings are wdist's own now): the command prints its one redacted line and
    nothing else. In a child process: huggingface_hub's handler holds the real stderr."""
    host = hub.url.split("://", 1)[1]
    env = {**os.environ, **env_for(hub), "HF_ENDPOINT": f"http://alice:PW_s3cret@{host}", "HOME": str(tmp_path),
           "HF_HOME": str(tmp_path / "hf"), "HF_TOKEN": TOKEN}
    hub.fail["org/model"] = 429
    try:
        r = subprocess.run([sys.executable, "-m", "wdist", "ls", "hf://org/model/model.safetensors"],
                           capture_output=True, text=True, env=env, timeout=120)
    finally:
        del hub.fail["org/model"]
    assert r.returncode == 2
    assert r.stderr.strip() == "wdist: error: hf://org/model/model.safetensors: the server answered HTTP 429", r.stderr
    assert "PW_s3cret" not in r.stdout + r.stderr and TOKEN not in r.stdout + r.stderr


@pytest.mark.parametrize("mode, reason", [
    ("other_host", "the Hub's listing continues on another host"),
    ("loop", "the Hub's folder listing runs past 20 pages"),
    ("stall", "no answer within 2 s (the server stopped answering; $WDIST_REMOTE_TIMEOUT sets the limit)")])
def test_hf_a_folder_listing_is_bounded(hub, hf_env, monkeypatch, mode, reason):
    """HfFileSystem's listing followed every next page with the token, wherever it pointed (955 MB in 25 s,
    the token sent to another host name), and had no read timeout (a stalled listing hung for good)."""
    from wdist.loaders import fs as wfs

    monkeypatch.setenv("WDIST_REMOTE_TIMEOUT", "2")
    monkeypatch.setattr(wfs, "_HF_MAX_PAGES", 20)  # 1,000 in use; 20 pages show the bound as well
    monkeypatch.setattr(hub, "tree", mode)
    hub.auth.clear()
    r = run("ls", "hf://org/model")
    assert r.exit_code == 2
    assert r.output.strip() == f"wdist: error: hf://org/model: {reason}", r.output
    assert not any("localhost" in p for _, p in hub.requests[-3:])


def test_hf_a_new_file_is_seen_by_the_next_call(hub, hf_env):
    """fsspec keeps one HfFileSystem, whose listings were cached for the life of the process: a run folder on
    the Hub never showed a new step."""
    before = wdist.ls("hf://org/model/sharded")
    extra = hub.repo("org/model") / "late.safetensors"
    shutil.copy(hub.local / "model.safetensors", extra)
    try:
        assert wdist.ls("hf://org/model/late.safetensors").to_dict()["checkpoint"]["tensors"] == len(before.tensors)
    finally:
        extra.unlink()


def test_hf_a_stalled_repository_lookup_names_its_own_limit(hub, tmp_path):
    """Resolving a path is huggingface_hub's repo-info call, bounded by its $HF_HUB_ETAG_TIMEOUT (read when it
    is imported: a child process): the line said "within 60 s" (wdist's limit) after 10 s."""
    env = {**os.environ, **env_for(hub), "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_ETAG_TIMEOUT": "2", "WDIST_REMOTE_TIMEOUT": "60"}
    hub.tree = "stall_info"
    try:
        r = subprocess.run([sys.executable, "-m", "wdist", "ls", "hf://org/model/model.safetensors"],
                           capture_output=True, text=True, env=env, timeout=120)
    finally:
        hub.tree = None
    assert r.returncode == 2
    assert r.stderr.strip() == ("wdist: error: hf://org/model/model.safetensors: no answer within 2 s to the Hub's "
                                "repository lookup (huggingface_hub's limit; $HF_HUB_ETAG_TIMEOUT sets it)"), r.stderr


def test_hf_a_revision_with_slashes(hub, hf_env):
    """hf://org/model@refs/pr/1/...: the revision is quoted whole (refs%2Fpr%2F1); building the API routes with
    %-formatting read its %2F as a format code (TypeError)."""
    for name in ("model.safetensors", "sharded"):
        url, path = f"hf://org/model@refs/pr/1/{name}", str(hub.local / name)
        assert_same(report(run("inspect", url, "--format", "json")), report(run("inspect", path, "--format", "json")),
                    url, path)
    assert wdist.ls("hf://org/model@refs%2Fpr%2F1/m.pt").to_dict()["checkpoint"]["tensors"] > 0


def test_hf_a_listing_answers_the_stats_that_follow_it(hub, hf_env):
    """Each entry of a folder was stat()ed with its own paths-info call (trend of a 10-step Hub run: 508
    metadata calls, 12 through HfFileSystem); a listing answers them now."""
    hub.requests.clear()
    assert report(run("inspect", "hf://org/model/sharded", "--format", "json"))["checkpoint"]["tensors"] > 0
    info = sum(1 for _, p in hub.requests if "/paths-info/" in p)
    trees = sum(1 for _, p in hub.requests if "/tree/" in p)
    assert info <= 2 and trees <= 8, (info, trees, hub.requests)


def test_hf_a_listing_has_a_bounded_number_of_entries(hub, hf_env, monkeypatch):
    """Pages of 300,000 entries each grew wdist to 3.2 GB in 118 pages: the entries are bounded too."""
    from wdist.loaders import fs as wfs

    monkeypatch.setattr(wfs, "_HF_MAX_ENTRIES", 10)  # 10^6 in use
    monkeypatch.setattr(hub, "tree", "loop")
    r = run("ls", "hf://org/model")
    assert r.exit_code == 2
    assert r.output.strip() == "wdist: error: hf://org/model: the Hub's folder listing has more than 10 entries"


def test_hf_a_server_that_trickles_is_given_up(hub, hf_env, monkeypatch):
    """The timeouts are per read without progress: a byte every 0.2 s kept a read going for good."""
    assert_trickle_given_up(hub, "hf://org/model/model.safetensors", monkeypatch)
