"""Remote checkpoints through fsspec, against real servers started here on 127.0.0.1: a range-capable HTTP
server that counts the bytes it sends, and moto's S3 server with s3fs."""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import run
from safetensors.torch import save_file

from wdist.analyzers.inspect import Options, analyse
from wdist.loaders import open_checkpoint

pytest.importorskip("fsspec")
pytest.importorskip("aiohttp")


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with single-range GETs (RFC 7233) and a byte counter."""

    sent: list[int]

    def log_message(self, *args: object) -> None:
        pass

    def send_head(self):  # type: ignore[no-untyped-def]
        path = self.translate_path(self.path)
        rng = self.headers.get("Range")
        if os.path.isdir(path) or not rng:
            return super().send_head()
        m = re.match(r"bytes=(\d*)-(\d*)$", rng)
        if not m or not os.path.isfile(path):
            return super().send_head()
        size = os.path.getsize(path)
        start = int(m.group(1)) if m.group(1) else size - int(m.group(2))
        end = min(size - 1, int(m.group(2))) if m.group(1) and m.group(2) else size - 1
        f = open(path, "rb")  # noqa: SIM115 - closed by copyfile's caller
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self._left = end - start + 1
        return f

    def copyfile(self, source, outputfile):  # type: ignore[no-untyped-def]
        left = getattr(self, "_left", None)
        while True:
            n = 1 << 16 if left is None else min(1 << 16, left)
            if n == 0:
                break
            buf = source.read(n)
            if not buf:
                break
            outputfile.write(buf)
            self.sent.append(len(buf))
            if left is not None:
                left -= len(buf)
        self._left = None


@pytest.fixture
def http_dir(tmp_path):
    sent: list[int] = []
    handler = type("H", (_RangeHandler,), {"sent": sent})
    root = tmp_path / "www"
    root.mkdir()

    def factory(*a, **k):
        return handler(*a, directory=str(root), **k)

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), factory)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield root, f"http://127.0.0.1:{srv.server_address[1]}", sent
    srv.shutdown()
    srv.server_close()


def _stats(ck):
    return {t.name: t.stats for t in analyse(ck, Options(jobs=1)).tensors}


def test_ls_of_a_100_mb_file_fetches_only_the_header(http_dir):
    root, url, sent = http_dir
    big = {f"layers.{i}.weight": torch.zeros(1024, 1024) for i in range(24)}  # 24 x 4 MiB
    save_file(big, str(root / "model.safetensors"))
    assert (root / "model.safetensors").stat().st_size > 100_000_000
    r = run("ls", f"{url}/model.safetensors", "--format", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["checkpoint"]["tensors"] == 24
    assert sum(sent) < 1_000_000, f"ls transferred {sum(sent)} bytes"


def test_http_results_equal_the_local_file(http_dir, torch_model_sd):
    root, url, _ = http_dir
    save_file({k: v.contiguous() for k, v in torch_model_sd.items()}, str(root / "m.safetensors"))
    torch.save(torch_model_sd, root / "m.pt")
    torch.save(torch_model_sd, root / "legacy.pt", _use_new_zipfile_serialization=False)
    for name in ("m.safetensors", "m.pt", "legacy.pt"):
        assert _stats(open_checkpoint(f"{url}/{name}")) == _stats(open_checkpoint(str(root / name))), name


def test_remote_errors_name_the_url(http_dir):
    _, url, _ = http_dir
    r = run("inspect", f"{url}/missing.safetensors")
    assert r.exit_code == 2 and f"{url}/missing.safetensors" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("url, module, extra", [("gs://bucket/model.safetensors", "gcsfs", "gcs")])
def test_a_missing_backend_names_its_extra(monkeypatch, url, module, extra):
    # the back-end made unimportable (None in sys.modules: ImportError), as in an install without the extra
    import sys

    import fsspec  # noqa: F401 - fsspec.registry (the module) is shadowed by its mapping of the same name

    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")] or [module]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules["fsspec.registry"]._registry, url.split(":")[0], raising=False)  # imported before
    from wdist.loaders import fs as wfs

    wfs._gcs_class.cache_clear()  # the class built from gcsfs by an earlier test
    r = run("ls", url)
    assert r.exit_code == 2, r.output
    assert r.output.strip().startswith(f"wdist: error: {url}: reading {url.split(':')[0]}:// URLs needs ")
    assert f"wdist[{extra}]" in r.output and "Traceback" not in r.output
    wfs._gcs_class.cache_clear()  # not the failed lookup's: built again from the real gcsfs by the next test


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    moto_server = pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    srv = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    srv.start()
    host, port = srv.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import fsspec  # noqa: F401 - fsspec.registry (the module) is shadowed by its mapping of the same name

    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir("ckpts")
    yield fs
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    fsspec.filesystem("s3").clear_instance_cache()
    srv.stop()


def test_s3_sharded_safetensors_pt_and_keras_equal_local(s3, tmp_path, torch_model_sd):
    local = tmp_path / "model"
    local.mkdir()
    items = list(torch_model_sd.items())
    half = len(items) // 2
    shards = {"model-00001-of-00002.safetensors": dict(items[:half]),
              "model-00002-of-00002.safetensors": dict(items[half:])}
    for name, sd in shards.items():
        save_file({k: v.contiguous() for k, v in sd.items()}, str(local / name))
    (local / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: name for name, sd in shards.items() for k in sd}}))
    torch.save(torch_model_sd, tmp_path / "m.pt")
    keras = Path(__file__).parent.parent / "data" / "keras" / "keras2_mlp_epoch10.h5"
    for f in local.iterdir():
        s3.put_file(str(f), f"ckpts/model/{f.name}")
    s3.put_file(str(tmp_path / "m.pt"), "ckpts/m.pt")
    s3.put_file(str(keras), "ckpts/k.h5")
    remote = open_checkpoint("s3://ckpts/model")
    assert remote.variant == "sharded"
    assert _stats(remote) == _stats(open_checkpoint(str(local)))
    assert _stats(open_checkpoint("s3://ckpts/m.pt")) == _stats(open_checkpoint(str(tmp_path / "m.pt")))
    assert _stats(open_checkpoint("s3://ckpts/k.h5")) == _stats(open_checkpoint(str(keras)))
    r = run("inspect", "s3://ckpts/m.pt", "--format", "json")
    assert r.exit_code == 0 and json.loads(r.output)["checkpoint"]["path"] == "s3://ckpts/m.pt"
    r = run("ls", "s3://ckpts/nope.pt")
    assert r.exit_code == 2 and "s3://ckpts/nope.pt" in r.output
    assert "testing" not in r.output  # credentials never printed


def test_remote_arrays_are_read_in_bounded_ranges(http_dir):
    root, url, sent = http_dir
    w = np.random.default_rng(0).normal(size=(2048, 1024)).astype(np.float32)
    save_file({"w.weight": torch.from_numpy(w)}, str(root / "w.safetensors"))
    sizes: list[int] = []
    import wdist.loaders.fs as fs

    orig = fs.pread

    def spy(path, offset, n):
        sizes.append(n)
        return orig(path, offset, n)

    fs.pread = spy  # type: ignore[assignment]
    try:
        st = _stats(open_checkpoint(f"{url}/w.safetensors"))
    finally:
        fs.pread = orig  # type: ignore[assignment]
    assert st["w.weight"]["numel"] == w.size
    assert max(sizes) <= 4 << 20  # never more than one chunk per request


def test_s3_trend_over_a_run_folder(s3, tmp_path, torch_model_sd):
    import wdist

    for step in (1, 2):
        p = tmp_path / f"step{step}.safetensors"
        save_file({k: (v * step).contiguous() for k, v in torch_model_sd.items() if v.is_floating_point()}, str(p))
        s3.put_file(str(p), f"ckpts/run/step{step}.safetensors")
    tr = wdist.trend("s3://ckpts/run")
    assert [p.step for p in tr.checkpoints] == [1, 2] and not tr.errors
    local = wdist.trend([tmp_path / "step1.safetensors", tmp_path / "step2.safetensors"])
    assert [lt.series for lt in tr.layers] == [lt.series for lt in local.layers]


def test_credentials_in_a_url_are_never_shown(http_dir, torch_model_sd):
    from wdist.loaders.fs import redact

    root, url, _ = http_dir
    save_file({k: v.contiguous() for k, v in torch_model_sd.items()}, str(root / "m.safetensors"))
    secret = url.replace("http://", "http://alice:p@ssS3CRET@") + "/m.safetensors?X-Goog-Signature=GSECRET&page=1"
    for args in (("inspect", secret, "--format", "json"), ("inspect", secret), ("ls", secret, "--format", "json"),
                 ("trend", secret, "--format", "json"), ("check", secret, "--no-config", "--rule", "model: std >= 0")):
        r = run(*args, "--no-cache") if args[0] != "ls" else run(*args)
        assert "S3CRET" not in r.output and "GSECRET" not in r.output and "alice" not in r.output, (args, r.output)
        assert "***@127.0.0.1" in r.output and "X-Goog-Signature=***&page=1" in r.output, (args, r.output)
    missing = url.replace("http://", "http://bob:PW@") + "/nope.safetensors?token=T1&access_token=T2&api_key=K3"
    r = run("inspect", missing)
    assert r.exit_code == 2 and not any(s in r.output for s in ("PW", "T1", "T2", "K3")), r.output
    # only URLs are rewritten: a local name with ? and @ is shown as it is
    assert redact("/data/a@b?key=1.pt") == "/data/a@b?key=1.pt"


def test_a_remote_file_without_a_validator_is_not_cached(http_dir, monkeypatch):
    from wdist.analyzers.cache import file_identity, tensor_key
    from wdist.loaders import fs

    root, url, _ = http_dir
    save_file({"w": torch.ones(4, 4)}, str(root / "m.safetensors"))
    assert fs.stat(f"{url}/m.safetensors").version  # the test server sends Last-Modified
    orig = http.server.BaseHTTPRequestHandler.send_header

    def no_dates(self, k, v):  # a server that says nothing about versions
        if k.lower() not in ("last-modified", "etag"):
            orig(self, k, v)

    monkeypatch.setattr(http.server.BaseHTTPRequestHandler, "send_header", no_dates)
    assert not fs.stat(f"{url}/m.safetensors").version
    with pytest.raises(ValueError, match="no version"):
        file_identity(f"{url}/m.safetensors")
    with open_checkpoint(f"{url}/m.safetensors") as ck:
        assert tensor_key(ck.tensors[0], 1 << 20) is None


def test_wrong_s3_credentials_are_said_as_such(s3, tmp_path, torch_model_sd, monkeypatch):
    """With moto checking credentials, s3fs raises PermissionError; wdist said "no such file or directory"."""
    from moto import settings

    torch.save(torch_model_sd, tmp_path / "m.pt")
    s3.put_file(str(tmp_path / "m.pt"), "ckpts/auth/m.pt")
    import fsspec  # noqa: F401 - fsspec.registry (the module) is shadowed by its mapping of the same name

    fsspec.filesystem("s3").clear_instance_cache()
    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # every request is now authorised
    try:
        r = run("ls", "s3://ckpts/auth/m.pt")
    finally:
        fsspec.filesystem("s3").clear_instance_cache()
    assert r.exit_code == 2
    line = r.output.strip().splitlines()[-1]
    assert line == "wdist: error: s3://ckpts/auth/m.pt: access denied (check credentials)", line


@pytest.fixture
def silent_server():
    """A server on 127.0.0.1 that accepts connections and never answers (a stopped or wedged server)."""
    import socket

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    conns: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conns.append(srv.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield srv.getsockname()[1]
    srv.close()
    for c in conns:
        c.close()


@pytest.mark.parametrize("scheme", ["http", "s3"])
def test_a_server_that_stops_answering_ends_the_command(silent_server, scheme):
    """No timeouts were set: an S3 server that stopped answering (SIGSTOP) hung wdist for good."""
    import time

    if scheme == "s3":
        pytest.importorskip("s3fs")
    port = silent_server
    url = f"http://127.0.0.1:{port}/m.safetensors" if scheme == "http" else "s3://bkt/m.safetensors"
    env = {"WDIST_REMOTE_TIMEOUT": "2", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "x",
           "AWS_SECRET_ACCESS_KEY": "y", "AWS_DEFAULT_REGION": "us-east-1"}
    t = time.perf_counter()
    # a child with a deadline: without timeouts the command never ends, and the test must fail, not hang
    r = subprocess.run([sys.executable, "-m", "wdist", "ls", url], capture_output=True, text=True,
                       env={**os.environ, **env}, timeout=90)
    took = time.perf_counter() - t
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith(f"wdist: error: {url}: ")
    assert took < 45, took  # a few 2 s timeouts (s3fs and botocore retry once each), never a hang


class _NoRangeHandler(http.server.BaseHTTPRequestHandler):
    """A server that ignores Range: every GET is a 200 with the real file followed by 2^40 bytes of zeros."""

    protocol_version = "HTTP/1.1"
    data = b""

    def log_message(self, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(1 << 40))
        self.send_header("ETag", '"x"')
        self.end_headers()

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(1 << 40))
        self.end_headers()
        try:
            self.wfile.write(self.data)
            zeros = b"\0" * (1 << 20)
            while True:
                self.wfile.write(zeros)
        except (BrokenPipeError, ConnectionResetError):
            pass


def test_a_server_that_ignores_range_is_refused_without_reading_its_body(tmp_path, torch_model_sd):
    """fsspec's cat_file read the whole body of a 200: memory grew without bound (7.4 GB in 20 s)."""
    save_file({k: v.contiguous() for k, v in torch_model_sd.items()}, str(tmp_path / "m.safetensors"))
    handler = type("N", (_NoRangeHandler,), {"data": (tmp_path / "m.safetensors").read_bytes()})
    srv = _serve(handler)
    url = f"http://127.0.0.1:{srv.server_address[1]}/m.safetensors"
    from remote_cases import run_limited  # the child under a 2 GiB address-space limit

    try:
        rc, rss_kb, err = run_limited(["inspect", url, "--no-cache"], dict(os.environ))
    finally:
        srv.shutdown()
        srv.server_close()
    assert rc == 2 and rss_kb < 400_000, (rc, rss_kb, err)  # bounded (a few hundred MB at most for Python + torch)
    assert f"wdist: error: {url}: the server ignores HTTP Range requests" in err


class _StatusHandler(http.server.BaseHTTPRequestHandler):
    """Every request answered with one status (403: a private bucket's URL; 500: a failing server)."""

    status = 403

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self) -> None:
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET = _answer


class _TruncatedHandler(_RangeHandler):
    """A file whose listed size (HEAD, Content-Range) is 5,000 bytes more than the bytes it holds."""

    def send_head(self):  # type: ignore[no-untyped-def]
        path = self.translate_path(self.path)
        size = os.path.getsize(path) + 5000
        rng = re.match(r"bytes=(\d+)-(\d*)$", self.headers.get("Range") or "")
        data = Path(path).read_bytes()
        if rng is None:
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            return None
        a = int(rng.group(1))
        b = int(rng.group(2)) if rng.group(2) else size - 1
        self._body = data[a:b + 1]
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {a}-{b}/{size}")
        self.send_header("Content-Length", str(len(self._body)))
        self.end_headers()
        return None

    def do_GET(self) -> None:
        self.send_head()
        self.wfile.write(getattr(self, "_body", b""))


def _serve(handler):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def _inspect_served(handler) -> tuple[str, object]:
    """(URL, CliRunner result) of `wdist inspect` on m.pt served by `handler`, the server stopped after."""
    srv = _serve(handler)
    url = f"http://127.0.0.1:{srv.server_address[1]}/m.pt"
    try:
        return url, run("inspect", url, "--no-cache")
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("status, reason", [(403, "access denied (HTTP 403; check credentials)"),
                                            (401, "access denied (HTTP 401; check credentials)"),
                                            (500, "the server answered HTTP 500")])
def test_an_http_error_status_is_said_as_such_not_as_a_missing_file(status, reason):
    """fsspec turns every failed HEAD/GET of info() into FileNotFoundError: a 403 read 'no such file or
    directory'."""
    url, r = _inspect_served(type("S", (_StatusHandler,), {"status": status}))
    assert r.exit_code == 2
    assert r.output.strip() == f"wdist: error: {url}: {reason}"


def test_a_remote_file_shorter_than_its_listed_size_is_said_so(tmp_path):
    """A truncated .pt was 'zip archive is damaged or truncated ([Errno 2] No such file or directory: URL)':
    the zip check opened the URL as a local path."""
    root = tmp_path / "www"
    root.mkdir()
    torch.save({"w": torch.randn(64, 64)}, root / "m.pt")

    def factory(*a, **k):
        return type("T", (_TruncatedHandler,), {"sent": []})(*a, directory=str(root), **k)

    url, r = _inspect_served(factory)
    assert r.exit_code == 2
    assert r.output.strip() == f"wdist: error: {url}: object is shorter than its listed size"


def test_an_http_timeout_is_said_as_such(silent_server):
    port = silent_server
    url = f"http://127.0.0.1:{port}/m.pt"
    r = subprocess.run([sys.executable, "-m", "wdist", "inspect", url, "--no-cache"], capture_output=True, text=True,
                       env={**os.environ, "WDIST_REMOTE_TIMEOUT": "2"}, timeout=90)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (f"wdist: error: {url}: no answer within 2 s (the server stopped "
                                                 "answering; $WDIST_REMOTE_TIMEOUT sets the limit)")


def test_s3_an_object_added_after_a_listing_is_seen(s3, tmp_path):
    """fsspec keeps one file system per process and its listings with it: a step uploaded after the first
    listing was missing from listdir and trend, and its stat() said "no such object", for good."""
    import wdist
    from wdist.loaders import fs as wfs

    for step in (100, 200):
        save_file({"w": torch.full((4, 4), float(step))}, str(tmp_path / f"step_{step}.safetensors"))
    s3.put_file(str(tmp_path / "step_100.safetensors"), "ckpts/grow/step_100.safetensors")
    assert wdist.trend("s3://ckpts/grow").x_steps() == [100]
    s3.put_file(str(tmp_path / "step_200.safetensors"), "ckpts/grow/step_200.safetensors")
    assert wfs.listdir("s3://ckpts/grow")[-1] == "s3://ckpts/grow/step_200.safetensors"
    assert wfs.stat("s3://ckpts/grow/step_200.safetensors").is_file
    assert wdist.trend("s3://ckpts/grow").x_steps() == [100, 200]


def test_an_s3_server_that_ignores_range_is_refused_in_bounded_memory(tmp_path, torch_model_sd):
    """s3fs's cat_file reads a whole body: an S3-compatible endpoint answering every ranged GET with a 200
    and 2^40 bytes grew wdist without bound, as HTTP and GCS servers did."""
    pytest.importorskip("s3fs")
    from remote_cases import run_limited

    save_file({k: v.contiguous() for k, v in torch_model_sd.items()}, str(tmp_path / "m.safetensors"))
    handler = type("N", (_NoRangeHandler,), {"data": (tmp_path / "m.safetensors").read_bytes()})
    srv = _serve(handler)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{srv.server_address[1]}",
           "HOME": str(tmp_path)}
    try:
        rc, rss_kb, err = run_limited(["inspect", "s3://bkt/m.safetensors", "--no-cache"], env)
    finally:
        srv.shutdown()
        srv.server_close()
    assert rc == 2 and rss_kb < 400_000, (rc, rss_kb, err)
    assert err.strip() == ("wdist: error: s3://bkt/m.safetensors: the server ignores HTTP Range requests (a ranged "
                           "read got status 200): it cannot be read without downloading the whole file"), err
