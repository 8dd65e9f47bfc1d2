"""A small in-process Hugging Face Hub for tests: a threaded HTTP server on 127.0.0.1 (random port) serving
repositories from a local folder (ROOT/<repo_type>s/<namespace>/<name>/...) with just the routes that
huggingface_hub's HfFileSystem calls:

  GET  /api/{type}s/{ns}/{name}[/revision/{rev}]         repo info (HfApi.repo_info)
  GET  /api/{type}s/{ns}/{name}/tree/{rev}[/{path}]       tree listing (HfApi.list_repo_tree)
  POST /api/{type}s/{ns}/{name}/paths-info/{rev}          paths info (HfApi.get_paths_info)
  GET|HEAD /[datasets/|spaces/]{ns}/{name}/resolve/{rev}/{path}   file bytes, single Range -> 206

Errors carry the Hub's X-Error-Code header (RepoNotFound, RevisionNotFound, EntryNotFound), which
huggingface_hub turns into its exceptions. `sent` counts the body bytes served, `requests` logs
(method, path), `auth` the Authorization headers seen; `fail` maps a repository id to a status that every
request about it is answered with (403: a gated or private repository, 500: a failing Hub, 404: a bare one
without the Hub's error code, 429: too many requests); a key may name a route under a repository (org/model/tree)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from fake_http import LocalService, RangeHandler

_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


class FakeHub(LocalService):
    handler: type[RangeHandler]

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.tree: str | None = None  # how folder listings misbehave (_HubHandler._tree)

    def repo(self, repo_id: str, repo_type: str = "model") -> Path:
        d = self.root / f"{repo_type}s" / repo_id
        d.mkdir(parents=True, exist_ok=True)
        return d


def _oid(p: Path) -> str:
    return hashlib.sha1(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}".encode()).hexdigest()


class _HubHandler(RangeHandler):
    owner: FakeHub

    def _json(self, obj: object) -> None:
        self.send(200, json.dumps(obj).encode())

    def _tree(self, entries: list[dict[str, object]]) -> None:
        """A folder listing, or as `owner.tree` says: "stall" (never answers), "loop" (every page names a
        next page by a relative link, with ever-new cursors), "other_host" (the next page is on localhost,
        not 127.0.0.1); "stall_info" stalls the repo-info call instead."""
        mode = self.owner.tree
        if mode == "stall":
            self.owner.release.wait(60)
            return None
        if mode in ("loop", "other_host"):
            host = self.headers.get("Host", "")
            if mode == "other_host":
                host = "localhost:" + host.rsplit(":", 1)[-1]
            n = int(parse_qs(urlsplit(self.path).query).get("cursor", ["0"])[0]) + 1
            nxt = f"http://{host}{urlsplit(self.path).path}?cursor={n}" if mode == "other_host" else f"?cursor={n}"
            return self.send(200, json.dumps(entries).encode(), {"Link": f'<{nxt}>; rel="next"'})
        return self._json(entries)

    def _error(self, status: int, code: str, msg: str) -> None:
        headers = {"X-Error-Code": code, "X-Error-Message": msg} if code else {}
        if status == 429:
            headers["Retry-After"] = "0"  # huggingface_hub retries it (after 1 s) and warns each time
        self.send(status, json.dumps({"error": msg}).encode(), headers)

    def _repo_dir(self, repo_type: str, repo_id: str) -> Path | None:
        d = self.owner.root / f"{repo_type}s" / repo_id
        return d if d.is_dir() else None

    def _entry(self, repo: Path, p: Path) -> dict[str, object]:
        rel = p.relative_to(repo).as_posix()
        if p.is_dir():
            return {"type": "directory", "path": rel, "oid": _oid(p)}
        return {"type": "file", "path": rel, "size": p.stat().st_size, "oid": _oid(p)}

    def _check_rev(self, rev: str) -> bool:
        if unquote(rev) not in ("main", "refs/pr/1"):  # a pull request's revision: the same files
            self._error(404, "RevisionNotFound", f"Invalid rev id: {unquote(rev)}")
            return False
        return True

    # --- routes
    def _route(self) -> None:
        self.record()
        url = urlsplit(self.path)
        path = unquote(url.path)
        for repo_id, status in self.owner.fail.items():
            if f"/{repo_id}/" in path + "/":
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                # a 404 here is a bare one, without the Hub's X-Error-Code (a proxy's, a mirror's)
                return self._error(status, {403: "GatedRepo", 404: ""}.get(status, "ServerError"), f"HTTP {status}")
        m = re.match(r"^/api/(model|dataset|space)s/([^/]+/[^/]+)(?:/(revision|tree|paths-info)/([^/]+)(/.*)?)?$",
                     url.path)
        if m:
            repo_type, repo_id, kind, rev, rest = m.groups()
            repo = self._repo_dir(repo_type, unquote(repo_id))
            if repo is None:
                return self._error(404, "RepoNotFound", "Repository not found")
            if rev is not None and not self._check_rev(rev):
                return None
            rest = unquote(rest or "").strip("/")
            if kind in (None, "revision") and self.owner.tree == "stall_info":
                self.owner.release.wait(60)
                return None
            if kind in (None, "revision"):
                return self._json({"id": unquote(repo_id), "sha": "0" * 40, "private": False,
                                   "siblings": [{"rfilename": p.relative_to(repo).as_posix()}
                                                for p in sorted(repo.rglob("*")) if p.is_file()]})
            if kind == "tree":
                d = repo / rest
                if not d.is_dir():
                    return self._error(404, "EntryNotFound", f"{rest} does not exist on main")
                recursive = parse_qs(url.query).get("recursive", ["False"])[0].lower() == "true"
                items = sorted(d.rglob("*") if recursive else d.iterdir())
                return self._tree([self._entry(repo, p) for p in items])
            # paths-info: form-encoded body, `paths` repeated
            n = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(n).decode()) if n else {}
            out = [self._entry(repo, repo / q) for q in form.get("paths", []) if (repo / q).exists()]
            return self._json(out)
        # matched before unquoting: the revision is quoted whole (refs%2Fpr%2F1)
        m = re.match(r"^/(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", url.path)
        if m and self.command in ("GET", "HEAD"):
            kind, repo_id, rev, rel = (unquote(g) if g else g for g in m.groups())
            repo_type = {"datasets": "dataset", "spaces": "space"}.get(kind or "", "model")
            repo = self._repo_dir(repo_type, repo_id)
            if repo is None:
                return self._error(404, "RepoNotFound", "Repository not found")
            if not self._check_rev(rev):
                return None
            f = repo / rel
            if not f.is_file():
                return self._error(404, "EntryNotFound", "Entry not found")
            return self._file(f)
        return self._error(404, "NotFound", f"no route for {self.command} {url.path}")

    def _file(self, f: Path) -> None:
        self.serve_file(f, {"ETag": f'"{_oid(f)}"', "X-Repo-Commit": "0" * 40, "Accept-Ranges": "bytes"})

    do_GET = do_HEAD = do_POST = _route


FakeHub.handler = _HubHandler


def env_for(hub: FakeHub) -> dict[str, str]:
    """The environment that points huggingface_hub (and so wdist) at the fake Hub."""
    return {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1"}


__all__ = ["FakeHub", "env_for"]
