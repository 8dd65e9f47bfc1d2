"""The Dask engine on a real distributed.LocalCluster (2 worker processes on 127.0.0.1): the same packed
summaries as a local run, also when a worker dies mid-run."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
from safetensors.numpy import save_file

from wdist.analyzers.engine import DaskEngine, ordered_map, summarize_tensor
from wdist.loaders import open_checkpoint

distributed = pytest.importorskip("distributed")


def _slow_summary(ref, chunk):
    import time

    time.sleep(0.3)  # long enough for the test to kill a worker while tasks are in flight
    return summarize_tensor(ref, chunk)


def _refs(tmp_path, n=6):
    rng = np.random.default_rng(0)
    p = tmp_path / "m.safetensors"
    save_file({f"l{i}.weight": rng.normal(scale=i + 1, size=(128, 64)).astype(np.float32) for i in range(n)}, str(p))
    return open_checkpoint(str(p)).tensors


def _same(a, b):
    assert a.n == b.n and a.mean == b.mean and a.m2 == b.m2 and a.m4 == b.m4 and a.min == b.min
    np.testing.assert_array_equal(a.hist, b.hist)


@pytest.fixture(scope="module")
def engine():
    with DaskEngine("local:2") as e:
        yield e


def test_dask_results_equal_the_local_run(tmp_path, engine):
    refs = _refs(tmp_path)
    local = list(ordered_map(summarize_tensor, [(r, 4096) for r in refs], 1, 0))
    remote = list(ordered_map(summarize_tensor, [(r, 4096) for r in refs], 1, 0, engine))
    assert len(remote) == len(local)
    for a, b in zip(local, remote):
        _same(a, b)


def test_a_worker_killed_mid_run_does_not_change_the_result(tmp_path, engine):
    refs = _refs(tmp_path, 8)
    local = [summarize_tensor(r, 4096) for r in refs]
    client = engine.client()
    pids = list(client.run(os.getpid).values())
    it = ordered_map(_slow_summary, [(r, 4096) for r in refs], 1, 0, engine)
    first = next(it)
    os.kill(pids[0], signal.SIGKILL)  # the nanny restarts it; its tasks are rescheduled
    got = [first, *it]
    for a, b in zip(local, got):
        _same(a, b)


class _FakeServer:
    """A TCP server on 127.0.0.1 that is not a Dask scheduler: `silent` accepts and never answers, `garbage`
    sends bytes that are not Dask frames, `http` answers as a web server would."""

    def __init__(self, mode):
        import socket
        import threading

        self.mode, self.sock = mode, socket.create_server(("127.0.0.1", 0))
        self.address = f"tcp://127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns, self.stop = [], threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self.stop.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            if self.mode == "garbage":
                c.sendall(b"\xff" * 64 + bytes(range(256)) * 16)
            elif self.mode == "http":
                c.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.mark.parametrize("mode", ["silent", "garbage", "http"])
def test_a_server_that_is_not_a_scheduler_is_one_bounded_error(mode):
    """Dask's own Client waits for good on the silent server, and fails with a MemoryError ("Unable to
    allocate 3 EiB") or a ValueError on the others; wdist asks the server who it is, bounded in time."""
    import time

    import dask

    from wdist.loaders.errors import WdistError

    with _FakeServer(mode) as srv, dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        t = time.monotonic()
        with pytest.raises(WdistError) as e, DaskEngine(srv.address) as eng:
            eng.client()
        assert time.monotonic() - t < 10
    assert e.value.path == srv.address
    assert ("no answer from a Dask scheduler within 2 s" if mode == "silent" else "is not a Dask scheduler") \
        in e.value.reason


def test_the_probe_accepts_a_real_scheduler(engine):
    from wdist.analyzers.engine import probe_scheduler

    probe_scheduler(engine.client().scheduler.address, 10)  # no error


def _self_signed(tmp_path):
    """A certificate for 127.0.0.1 and its key, written by `cryptography` (a dependency of moto)."""
    import datetime
    import ipaddress

    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wdist-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    c, k = tmp_path / "cert.pem", tmp_path / "key.pem"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return str(c), str(k)


def test_a_tls_scheduler_is_reached_with_dasks_tls_settings(tmp_path):
    """The probe connected without the client's TLS settings, so every tls:// scheduler was 'not a Dask
    scheduler (TypeError)'."""
    import dask
    from distributed import LocalCluster
    from distributed.security import Security

    cert, key = _self_signed(tmp_path)
    sec = Security(tls_ca_file=cert, tls_client_cert=cert, tls_client_key=key, tls_scheduler_cert=cert,
                   tls_scheduler_key=key, tls_worker_cert=cert, tls_worker_key=key, require_encryption=True)
    conf = {"distributed.comm.tls.ca-file": cert, "distributed.comm.tls.client.cert": cert,
            "distributed.comm.tls.client.key": key}
    refs = _refs(tmp_path, 2)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tls://", host="127.0.0.1",
                      security=sec, dashboard_address=None) as cluster, dask.config.set(conf):
        assert cluster.scheduler_address.startswith("tls://")
        with DaskEngine(cluster.scheduler_address) as eng:
            got = list(ordered_map(summarize_tensor, [(r, 4096) for r in refs], 1, 0, eng))
    for a, b in zip([summarize_tensor(r, 4096) for r in refs], got):
        _same(a, b)


def test_a_bad_address_is_said_as_such():
    from wdist.loaders.errors import WdistError

    with pytest.raises(WdistError) as e, DaskEngine("tcp://127.0.0.1") as eng:
        eng.client()
    assert e.value.reason.startswith("cannot reach a Dask scheduler (bad address: missing port number")


def test_spectral_on_an_in_process_cluster_does_not_deadlock(tmp_path):
    """The spectral pass holds the BLAS lock; worker threads of an in-process cluster waited for it."""
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    save_file({"w.weight": rng.normal(size=(64, 48)).astype(np.float32)}, str(tmp_path / "s.safetensors"))
    code = ("import wdist\nfrom distributed import LocalCluster\nif __name__ == '__main__':\n"
            "    c = LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None)\n"
            "    e = wdist.dask_engine(c.scheduler_address)\n"
            f"    r = wdist.inspect({str(tmp_path / 's.safetensors')!r}, opts=wdist.options(engine=e, spectral=True))\n"
            "    print('ALPHA', r.to_dict()['spectral']['tensors']['w.weight']['spectral_norm'] > 0)\n"
            "    e.close(); c.close()\n")
    (tmp_path / "go.py").write_text(code)
    r = subprocess.run([sys.executable, str(tmp_path / "go.py")], capture_output=True, text=True, timeout=120)
    assert "ALPHA True" in r.stdout, r.stderr[-2000:]
