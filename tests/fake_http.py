"""What the in-process fake services of the tests share (tests/fake_hub.py, tests/fake_gcs.py): a threaded HTTP
server on 127.0.0.1 (random port) started and stopped by a context manager, the logs a test asserts on
(`sent`: body bytes served, `requests`: (method, path), `auth`: Authorization headers, `fail`: a name whose
requests are all answered with a status), and a handler that serves a file with single-range requests —
or, as `media` says, misbehaves: "endless" ignores Range (a 200 with the file followed by 2^40 bytes of
zeros), "shifted" answers a range with the bytes 4 further on (and says so in its Content-Range),
"trickle" sends the file a byte every 0.2 s.

A client that closes a connection early (a ranged reader that has what it asked for) is not an error of the
server: its traceback would otherwise be printed to stderr, which CliRunner mixes into a command's output."""

from __future__ import annotations

import http.server
import re
import threading
from pathlib import Path
from typing import Any


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class LocalService:
    """A fake service: subclasses set `handler`, a RangeHandler subclass; the handler sees this object as
    `owner`."""

    handler: type[RangeHandler]

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.sent: list[int] = []
        self.requests: list[tuple[str, str]] = []
        self.auth: list[str] = []
        self.fail: dict[str, int] = {}
        self.media: str | None = None
        self.stall: str | None = None  # what kind of request never gets an answer (each service's own names)
        self.release = threading.Event()  # ends the stalled answers
        handler = type("Handler", (self.handler,), {"owner": self})
        self._srv = _QuietServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._srv.server_address[1]}"
        self._thread = threading.Thread(target=self._srv.serve_forever, daemon=True)

    def __enter__(self) -> Any:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self._srv.shutdown()
        self._srv.server_close()
        self._thread.join(5)


class RangeHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: Any

    def log_message(self, *args: object) -> None:
        pass

    def record(self) -> None:
        self.owner.requests.append((self.command, self.path))
        if self.headers.get("Authorization"):
            self.owner.auth.append(self.headers["Authorization"])

    def send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
             ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
            self.owner.sent.append(len(body))

    def serve_file(self, f: Path, headers: dict[str, str] | None = None) -> None:
        """The file's bytes: all of it (200) or one `Range: bytes=a-b` / `a-` / `-n` (206; 416 past the end)."""
        size = f.stat().st_size
        headers = dict(headers or {})
        if self.owner.media == "endless" and self.command == "GET":
            return self._endless(f)
        if self.owner.media == "trickle" and self.command == "GET":
            return self._trickle(f)
        rng = re.match(r"bytes=(\d*)-(\d*)$", self.headers.get("Range") or "")
        start, end, status = 0, size - 1, 200
        if rng and self.owner.media == "shifted" and rng.group(1) and int(rng.group(1)) + 4 < size:
            rng = re.match(r"bytes=(\d*)-(\d*)$", f"bytes={int(rng.group(1)) + 4}-{rng.group(2)}")
        if rng:
            if rng.group(1):
                start = int(rng.group(1))
                end = min(size - 1, int(rng.group(2))) if rng.group(2) else size - 1
            else:
                start = max(0, size - int(rng.group(2)))
            if start >= size:
                return self.send(416, b"", {"Content-Range": f"bytes */{size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD":
            return None
        with open(f, "rb") as fh:
            fh.seek(start)
            left = end - start + 1
            try:
                while left > 0:
                    buf = fh.read(min(1 << 16, left))
                    if not buf:
                        break
                    self.wfile.write(buf)
                    self.owner.sent.append(len(buf))
                    left -= len(buf)
            except (BrokenPipeError, ConnectionResetError):
                pass
        return None

    def _trickle(self, f: Path) -> None:
        """The file at one byte per 0.2 s: never a read that waits long. It stops after 100 bytes (20 s), so
        that a client without a bound fails its test instead of hanging it."""

        data = f.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            for i in range(min(len(data), 100)):
                if self.owner.release.wait(0.2) or self.owner.media != "trickle":
                    return
                self.wfile.write(data[i:i + 1])
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _endless(self, f: Path) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(1 << 40))
        self.end_headers()
        try:
            self.wfile.write(f.read_bytes())
            zeros = b"\0" * (1 << 20)
            while True:
                self.wfile.write(zeros)
        except (BrokenPipeError, ConnectionResetError):
            pass


__all__ = ["LocalService", "RangeHandler"]
