"""A small in-process Google Cloud Storage JSON API for tests: a threaded HTTP server on 127.0.0.1 (random
port) serving buckets from a local folder (ROOT/<bucket>/<object name>) with just what gcsfs calls to read:

  GET /storage/v1/b/{bucket}                              bucket metadata
  GET /storage/v1/b/{bucket}/o/{object}                   object metadata
  GET /storage/v1/b/{bucket}/o?prefix=&delimiter=/        listing (items + prefixes)
  GET /download/storage/v1/b/{bucket}/o/{object}?alt=media   object bytes, single Range -> 206

  POST /token                                             OAuth2 token endpoint (refresh_token grant)

gcsfs reaches it through STORAGE_EMULATOR_HOST (or endpoint_url); google-auth's authorized-user credentials
reach /token through the token_uri of their file. `sent` counts the body bytes served, `requests` logs
(method, path), `auth` the Authorization headers seen; `fail` maps a bucket to a status that every request
about it is answered with (403: no permission, 505: a failing server)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from fake_http import LocalService, RangeHandler


class FakeGCS(LocalService):
    handler: type[RangeHandler]

    def __init__(self, root: Path) -> None:
        self.access_token = "ya29.fake-access-token"
        super().__init__(root)

    def bucket(self, name: str) -> Path:
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True)
        return d


class _GCSHandler(RangeHandler):
    owner: FakeGCS

    def _error(self, status: int, msg: str) -> None:
        self.send(status, json.dumps({"error": {"code": status, "message": msg,
                                                 "errors": [{"message": msg, "reason": "notFound"}]}}).encode())

    def _meta(self, bucket: str, p: Path) -> dict[str, object]:
        st = p.stat()
        gen = str(st.st_mtime_ns)
        return {"kind": "storage#object", "bucket": bucket, "name": p.relative_to(self.owner.root / bucket).as_posix(),
                "size": str(st.st_size), "generation": gen, "metageneration": "1",
                "etag": hashlib.md5(f"{p}:{gen}:{st.st_size}".encode()).hexdigest(),
                "contentType": "application/octet-stream", "storageClass": "STANDARD",
                "updated": "2024-01-01T00:00:00.000Z", "timeCreated": "2024-01-01T00:00:00.000Z"}

    def do_GET(self) -> None:  # noqa: C901 - one small router
        self.record()
        url = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        m = re.match(r"^/(download/)?storage/v1/b/([^/]+)(?:/o(?:/(.+))?)?$", url.path)
        if not m:
            return self._error(404, f"no route for {url.path}")
        download, bucket, obj = m.group(1), unquote(m.group(2)), m.group(3)
        if bucket in self.owner.fail:
            status = self.owner.fail[bucket]
            return self.send(status, json.dumps({"error": {"code": status, "message": f"HTTP {status}"}}).encode())
        broot = self.owner.root / bucket
        if not broot.is_dir():
            return self._error(404, "The specified bucket does not exist.")
        if "/o" not in url.path:
            return self.send(200, json.dumps({"kind": "storage#bucket", "name": bucket, "id": bucket}).encode())
        if obj is None:  # listing
            prefix, delim = q.get("prefix", ""), q.get("delimiter")
            items, prefixes = [], set()
            for p in sorted(broot.rglob("*")):
                if not p.is_file():
                    continue
                name = p.relative_to(broot).as_posix()
                if not name.startswith(prefix):
                    continue
                rest = name[len(prefix):]
                if delim and delim in rest:
                    prefixes.add(prefix + rest.split(delim, 1)[0] + delim)
                else:
                    items.append(self._meta(bucket, p))
            limit = int(q.get("maxResults") or 0)
            if limit:
                items = items[:limit]
            return self.send(200, json.dumps({"kind": "storage#objects", "items": items,
                                               "prefixes": sorted(prefixes)}).encode())
        f = broot / unquote(obj)
        if not f.is_file():
            return self._error(404, "No such object: " + bucket + "/" + unquote(obj))
        if not download and q.get("alt") != "media":
            if self.owner.stall == "metadata":
                self.owner.release.wait(60)
                return None
            return self.send(200, json.dumps(self._meta(bucket, f)).encode())
        self.serve_file(f)

    def do_POST(self) -> None:  # the token endpoint; gRPC probes and anything else: not served
        self.owner.requests.append((self.command, self.path))
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        if urlsplit(self.path).path == "/token":
            form = parse_qs(body.decode())
            if form.get("grant_type") == ["refresh_token"] and form.get("refresh_token"):
                return self.send(200, json.dumps({"access_token": self.owner.access_token, "expires_in": 3600,
                                                   "token_type": "Bearer"}).encode())
            return self.send(400, json.dumps({"error": "invalid_grant"}).encode())
        self._error(404, f"no route for POST {self.path}")

    do_HEAD = do_GET


FakeGCS.handler = _GCSHandler
