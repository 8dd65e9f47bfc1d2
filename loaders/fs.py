"""Where the bytes come from: local paths, or URLs through fsspec (`s3://`, `gs://`, `hf://`, `https://`,
`file://` ...). Every read is a bounded range: remote data is fetched with ranged requests into buffers of
at most one chunk, never downloaded whole to disk or held whole in memory.

Readers call `pread(path, offset, n)` and `open_binary(path)`; detection and folders call `stat`, `isdir`,
`listdir`. fsspec and the back-ends are optional extras; a URL whose back-end is missing gets an error
naming the extra to install. Credentials come from the back-ends' usual places (environment variables,
profiles) and never appear in messages."""

from __future__ import annotations

import functools
import io
import os
import posixpath
import re
import stat as stat_mod
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from wdist.loaders.errors import CorruptCheckpointError, MissingDependencyError, WdistError

_URL = re.compile(r"^(?P<proto>[A-Za-z][A-Za-z0-9+.-]*)://")
# protocol -> (extra, packages it needs)
EXTRAS = {
    "s3": ("s3", "s3fs"), "s3a": ("s3", "s3fs"), "gs": ("gcs", "gcsfs"), "gcs": ("gcs", "gcsfs"),
    "hf": ("hf", "huggingface_hub"), "http": ("remote", "fsspec aiohttp"), "https": ("remote", "fsspec aiohttp"),
}
REMOTE_BLOCK = 1 << 20  # read-ahead of remote file objects (headers, zip directories, HDF5 metadata)


def is_url(path: str) -> bool:
    m = _URL.match(path)
    return m is not None and m.group("proto").lower() != "file"


def local_path(path: str) -> str:
    """file:// URLs are local paths."""
    return path[len("file://"):] if path.lower().startswith("file://") else path


# query parameters that carry credentials: signed-URL signatures and keys (S3, GCS, Azure SAS), tokens
_SECRET_PARAM = re.compile(r"token|sig|secret|passw|pwd|key|credential|auth|session|^x-(?:amz|goog)-", re.I)
_QUERY = re.compile(r"\?([^\s#]*)")


def _redact_query(m: re.Match[str]) -> str:
    parts = []
    for item in m.group(1).split("&"):
        name, eq, _ = item.partition("=")
        parts.append(f"{name}=***" if eq and _SECRET_PARAM.search(name) else item)
    return "?" + "&".join(parts)


def redact(url: str) -> str:
    """A URL (or a message holding URLs) without its credentials, for display: user:password@ becomes ***@
    (up to the last @ of the authority), and the value of every query parameter that carries a secret
    becomes *** (X-Amz-Signature=***, access_token=***); the rest of the URL is left as it was."""
    if "://" not in url:  # a local path is shown as it is, `?` and `@` in file names included
        return url
    url = re.sub(r"(://)[^/\s?#]*@", r"\1***@", url)
    return _QUERY.sub(_redact_query, url)


DEFAULT_TIMEOUT_S = 60.0


def remote_timeout() -> float:
    """Seconds a remote connect or read may wait without progress: $WDIST_REMOTE_TIMEOUT, else 60. A server
    that stops answering must end the command with an error, never hang it."""
    try:
        t = float(os.environ.get("WDIST_REMOTE_TIMEOUT", DEFAULT_TIMEOUT_S))
    except ValueError:
        return DEFAULT_TIMEOUT_S
    return t if 0 < t < 1e6 else DEFAULT_TIMEOUT_S


def _timeouts(proto: str) -> dict[str, Any]:
    """The fsspec options that bound each request: botocore's connect/read timeouts (one retry) for S3,
    aiohttp's per-socket-operation timeouts for HTTP(S) and GCS. The Hub's calls are wdist's own and take
    remote_timeout() themselves (_hf_call, _hf_range)."""
    t = remote_timeout()
    if proto in ("s3", "s3a"):
        return {"config_kwargs": {"connect_timeout": t, "read_timeout": t,
                                  "retries": {"max_attempts": 1, "mode": "standard"}}}
    if proto in ("http", "https", "gs", "gcs"):
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=None, sock_connect=t, sock_read=t)
        return {"requests_timeout": timeout} if proto in ("gs", "gcs") else {"client_kwargs": {"timeout": timeout}}
    return {}


def _options(proto: str) -> dict[str, Any]:
    """Options of the back-end for a protocol, read at each use (not when a library is imported): the
    timeouts, and for hf:// the Hub's address from $HF_ENDPOINT (huggingface_hub itself reads it once,
    at import). Credentials are left to the back-ends (None: their usual places)."""
    opts = _timeouts(proto)
    if proto in ("s3", "s3a", "gs", "gcs", "http", "https"):
        # no listings kept: fsspec keeps one file system instance per process, and its listings with it, so
        # an object added after a first listing was invisible to listdir and stat() ("no such object") for
        # the life of the process (trend --watch s3://run/ never saw a new step, nor a notebook's next call)
        opts["use_listings_cache"] = False
    if proto == "hf" and os.environ.get("HF_ENDPOINT"):
        opts["endpoint"] = os.environ["HF_ENDPOINT"].rstrip("/")
    return opts


@functools.cache  # one class, so that fsspec's instance cache (keyed by class and options) serves every call
def _gcs_class() -> type:
    """gcsfs's file system with one retry of a failed request instead of six: its retries with back-off
    (timeouts included) made a stalled server cost six timeouts, 6.5 min at the default 60 s, and a failing
    one about a minute, before the error line said "within 60 s"."""
    from gcsfs.core import GCSFileSystem
    from gcsfs.retry import retry_request

    request = GCSFileSystem._request.__wrapped__  # the undecorated coroutine (decorator keeps __wrapped__)

    class OneRetryGCS(GCSFileSystem):  # type: ignore[misc]
        @retry_request(retries=2)  # type: ignore[misc]
        async def _request(self, *args: Any, **kwargs: Any) -> Any:
            return await request(self, *args, **kwargs)

    return OneRetryGCS


def _filesystem(proto: str) -> Any:
    # fsspec keeps one instance per protocol and options itself; wdist holds none
    try:
        import fsspec
    except ImportError:
        extra = EXTRAS.get(proto, ("remote", "fsspec"))[0]
        raise MissingDependencyError(None, f"reading {proto}:// URLs needs fsspec (pip install 'wdist[{extra}]')") from None
    try:
        if proto in ("gs", "gcs"):
            # gcsfs's JSON-API file system, not the experimental zonal/HNS class fsspec registers by default:
            # that one asks the gRPC storage-control API for each bucket's layout before every read and, when
            # the API is not reachable (an emulator, a proxy, no permission), retries for 60 s each time.
            # fsspec's configuration (FSSPEC_GS_TOKEN=anon, ...) applies to it as to any file system.
            fs = _gcs_class()(**_options(proto))
        else:
            fs = fsspec.filesystem(proto, **_options(proto))
    except (ImportError, ValueError) as e:
        extra, pkgs = EXTRAS.get(proto, ("remote", "fsspec"))
        raise MissingDependencyError(None, f"reading {proto}:// URLs needs {pkgs} (pip install 'wdist[{extra}]'): "
                                     f"{str(e)[:80]}") from None
    if proto in ("s3", "s3a"):
        # s3fs retries a timed-out call itself (5 times by default) on top of botocore: once, so a silent
        # server costs a few timeouts, not twenty (the instance is the one these options alone create)
        fs.retries = 1
    return fs


def _proto(url: str) -> str:
    m = _URL.match(url)
    assert m
    return m.group("proto").lower()


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec file system, path inside it) for a URL."""
    proto = _proto(url)
    fs = _filesystem(proto)
    return fs, fs._strip_protocol(url) if proto not in ("http", "https") else url


def _causes(e: BaseException | None) -> Iterator[BaseException]:
    """An error and the errors behind it (its cause or context), at most 8: fsspec's HTTP file system turns
    every failed HEAD/GET of info() (a 403, a 500, a timeout) into a FileNotFoundError raised from the real
    error."""
    for _ in range(8):
        if e is None:
            return
        yield e
        e = e.__cause__ or e.__context__


def _http_status(e: BaseException) -> int | None:
    """The HTTP status behind an error: aiohttp's `status`, the `response.status_code` of
    huggingface_hub's errors, gcsfs's HttpError `code` (its 403 is a plain OSError "Forbidden: ...")."""
    for x in _causes(e):
        status = getattr(x, "status", None)
        if not isinstance(status, int):
            status = getattr(getattr(x, "response", None), "status_code", None)
        if not isinstance(status, int) and type(x).__name__ == "HttpError":
            status = getattr(x, "code", None)
            status = int(status) if isinstance(status, str) and status.isdigit() else status
        if not isinstance(status, int) and type(x) is OSError and str(x).startswith("Forbidden: "):
            status = 403
        if isinstance(status, int) and 100 <= status <= 599:
            return status
    return None


_TIMEOUT_ERRORS = ("ServerTimeoutError", "ConnectTimeoutError", "ReadTimeoutError", "TimeoutError",
                   "ConnectTimeout", "ReadTimeout", "PoolTimeout", "TimeoutException")  # botocore, aiohttp, httpx


def _timed_out(e: BaseException) -> bool:
    return any(isinstance(x, TimeoutError) or type(x).__name__ in _TIMEOUT_ERRORS for x in _causes(e))


class _StatusError(OSError):
    """A ranged read answered with an HTTP error status."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


def _remote_error(url: str, e: BaseException) -> WdistError:
    if isinstance(e, WdistError):
        return e
    status = _http_status(e)
    if status in (401, 403):
        return WdistError(redact(url), f"access denied (HTTP {status}; check credentials)")
    if status == 404:  # also when the back-end raised something else for it (a Hub 404 without its error code)
        return WdistError(redact(url), "no such object")
    if status is not None:
        return WdistError(redact(url), f"the server answered HTTP {status}")
    if _timed_out(e):
        return WdistError(redact(url), f"no answer within {remote_timeout():g} s (the server stopped "
                          "answering; $WDIST_REMOTE_TIMEOUT sets the limit)")
    if isinstance(e, FileNotFoundError):
        return WdistError(redact(url), "no such object")
    if isinstance(e, PermissionError):
        return WdistError(redact(url), "access denied (check credentials)")
    return WdistError(redact(url), f"cannot be read ({type(e).__name__}: {redact(str(e))[:100]})")


@dataclass(frozen=True)
class Stat:
    size: int
    is_dir: bool
    is_file: bool  # a regular file (local) or an object (remote)
    # what changes when the bytes change: locally mtime, ctime, device and inode (a file replaced by another
    # of the same size, mtime and recycled inode, as unzip or a reproducible archive leaves it, still gets a
    # new ctime, which no tool can set back); remotely the ETag / version id
    version: str


def stat(path: str) -> Stat:
    if not is_url(path):
        p = local_path(path)
        st = os.stat(p)
        return Stat(st.st_size, stat_mod.S_ISDIR(st.st_mode), stat_mod.S_ISREG(st.st_mode),
                    f"{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_dev}:{st.st_ino}")
    fs, p = filesystem(path)
    try:
        info = _hf_info(fs, path, p) if _proto(path) == "hf" else fs.info(p)
    except Exception as e:
        raise _remote_error(path, e) from None
    is_dir = info.get("type") == "directory"
    # fsspec's HTTP file system reports a Last-Modified header under that name (with the hyphen)
    # gcsfs: generation / etag; HfFileSystem: the git blob id (or the LFS / Xet hash)
    lfs = info.get("lfs")
    version = str(info.get("VersionId") or info.get("ETag") or info.get("etag") or info.get("generation")
                  or info.get("blob_id") or info.get("xet_hash") or getattr(lfs, "sha256", None) or info.get("mtime")
                  or info.get("LastModified") or info.get("Last-Modified") or info.get("last_modified") or "")
    size = info.get("size") or 0
    try:
        size = int(size)
    except (TypeError, ValueError):
        raise WdistError(redact(path), f"the server lists a size that is not a number ({ascii(str(size)[:40])})") from None
    return Stat(size, is_dir, not is_dir, version)


def exists(path: str) -> bool:
    if not is_url(path):
        return os.path.lexists(local_path(path))
    try:
        stat(path)
        return True
    except MissingDependencyError as e:
        raise MissingDependencyError(redact(path), e.reason) from None
    except WdistError as e:
        if e.reason == "no such object":
            return False
        raise  # access denied, a server that fails: said as such, never as a missing file


def isdir(path: str) -> bool:
    try:
        return stat(path).is_dir
    except (OSError, WdistError):
        return False


def listdir(path: str) -> list[str]:
    """Full paths (or URLs) of a folder's entries, sorted."""
    if not is_url(path):
        p = local_path(path)
        return sorted(os.path.join(p, e) for e in os.listdir(p))
    fs, p = filesystem(path)
    proto = _URL.match(path).group("proto")  # type: ignore[union-attr]
    try:
        if proto == "hf":
            return _hf_ls(fs, path, p)
        names = fs.ls(p, detail=False)
    except Exception as e:
        raise _remote_error(path, e) from None
    return sorted(n if _URL.match(n) else f"{proto}://{n.lstrip('/')}" for n in names)


def join(base: str, name: str) -> str:
    if not is_url(base):
        return os.path.join(local_path(base), name)
    return base.rstrip("/") + "/" + name


def dirname(path: str) -> str:
    if not is_url(path):
        return os.path.dirname(local_path(path))
    return path.rstrip("/").rsplit("/", 1)[0]


def basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1] if is_url(path) else os.path.basename(os.path.normpath(path))


def canonical(path: str) -> str:
    return redact(path) if is_url(path) else os.path.realpath(local_path(path))


def pread(path: str, offset: int, n: int) -> bytes:
    """Bytes [offset, offset+n) of a file (fewer only at its end)."""
    if n <= 0:
        return b""
    if not is_url(path):
        fd = os.open(local_path(path), os.O_RDONLY)
        try:
            return os.pread(fd, n, offset)
        finally:
            os.close(fd)
    fs, p = filesystem(path)
    try:
        proto = _proto(path)
        if proto == "hf":
            return _hf_range(fs, path, p, offset, n)
        ranged = _ASYNC_RANGE.get(proto)
        if ranged is not None:
            from fsspec.asyn import sync

            return bytes(sync(fs.loop, ranged, fs, path, p, offset, n))
        return bytes(fs.cat_file(p, start=offset, end=offset + n))
    except Exception as e:  # _remote_error passes wdist's own errors through as they are
        raise _remote_error(path, e) from None


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)$")


def _check_range_answer(url: str, status: int, content_range: str | None, start: int, n: int) -> None:
    """What the answer to `Range: bytes=start-(start+n-1)` must be before its body is taken: a 206 whose
    Content-Range starts at `start` and ends within the range (a server that sent bytes from elsewhere
    gave wrong numbers, and put them in the summary cache), or a 200 for a read from 0 (a server that
    ignores Range: its body is the file from its start). Anything else is an error naming the status."""
    if status == 404:
        raise FileNotFoundError(redact(url))
    if status >= 400:
        raise _StatusError(status)
    if status == 200 and start == 0:
        return
    if status == 200:
        raise WdistError(redact(url), "the server ignores HTTP Range requests (a ranged read got status "
                         f"{status}): it cannot be read without downloading the whole file")
    if status != 206:
        raise WdistError(redact(url), f"the server answered HTTP {status} to a ranged read")
    m = _CONTENT_RANGE.match(content_range or "")
    if m is None or int(m.group(1)) != start or not start <= int(m.group(2)) <= start + n - 1:
        got = ascii((content_range or "none")[:80])
        raise WdistError(redact(url), f"the server sent another range than the one asked for (bytes {start}-"
                         f"{start + n - 1}; Content-Range {got})")


def _check_range_body(url: str, status: int, out: bytearray, n: int) -> bytes:
    if status == 206 and len(out) > n:
        raise WdistError(redact(url), f"the server sent more than the {n} bytes asked for")
    return bytes(out[:n])


_MIN_RATE = 16 << 10  # bytes/s a response body must keep up once $WDIST_REMOTE_TIMEOUT has passed


class _Deadline:
    """A whole response's time bound: the timeouts are per read without progress, so a server that sends a
    byte every few seconds kept one read going for good (an 8 MiB answer at 1 byte/s: 97 days). A body of
    n bytes has $WDIST_REMOTE_TIMEOUT seconds plus n / 16 KiB/s (a 4 MiB chunk: 60 + 256 s)."""

    def __init__(self, url: str, n: int) -> None:
        import time

        self.url, self.n, self.t0 = url, n, time.monotonic()
        self.budget = remote_timeout() + n / _MIN_RATE

    def check(self, got: int) -> None:
        import time

        took = time.monotonic() - self.t0
        if took > self.budget:
            raise WdistError(redact(self.url), f"the server sends too slowly ({got:,} of {self.n:,} bytes in "
                             f"{took:.1f} s; wdist waits $WDIST_REMOTE_TIMEOUT s plus 1 s per "
                             f"{_MIN_RATE >> 10} KiB)")


async def _bounded_body(url: str, read: Any, n: int) -> bytearray:
    """At most n + 1 bytes of a response body, whatever its length, within a _Deadline; `read(k)` is the
    body's coroutine that returns up to k bytes (aiohttp's content.read, aiobotocore's Body.read)."""
    out = bytearray()
    deadline = _Deadline(url, n)
    while len(out) <= n:
        chunk = await read(min(1 << 20, n + 1 - len(out)))
        if not chunk:
            break
        out += chunk
        deadline.check(len(out))
    return out


async def _http_range(fs: Any, url: str, path: str, start: int, n: int) -> bytes:
    """GET bytes [start, start+n) with a Range header, reading at most n + 1 bytes of the body whatever
    the server sends: fsspec's cat_file reads the whole body, so a server that ignores Range (200 and a
    2^40-byte body) grew memory without bound."""
    session = await fs.set_session()
    async with session.get(fs.encode_url(url), headers={"Range": f"bytes={start}-{start + n - 1}"},
                           **fs.kwargs) as r:
        fs._raise_not_found_for_status(r, url)
        _check_range_answer(url, r.status, r.headers.get("Content-Range"), start, n)
        return _check_range_body(url, r.status, await _bounded_body(url, r.content.read, n), n)


async def _gcs_range(fs: Any, url: str, path: str, start: int, n: int) -> bytes:
    """The same for a GCS object, on gcsfs's session and credentials (its media URL, its auth headers):
    gcsfs's cat_file reads the whole body (a server that ignored Range grew wdist to 10 GB in 30 s) and
    retries a stalled read six times."""
    await fs._set_session()
    headers = fs._get_headers({"Range": f"bytes={start}-{start + n - 1}"})
    async with fs.session.get(fs.url(path), headers=headers, timeout=fs.requests_timeout) as r:
        _check_range_answer(url, r.status, r.headers.get("Content-Range"), start, n)
        return _check_range_body(url, r.status, await _bounded_body(url, r.content.read, n), n)


async def _s3_range(fs: Any, url: str, path: str, start: int, n: int) -> bytes:
    """The same for an S3 object, through s3fs's client (its credentials, endpoint and error mapping):
    s3fs's cat_file reads the whole body, so an S3-compatible server that ignored Range grew memory
    without bound, as HTTP and GCS servers did."""
    bucket, key, version = fs.split_path(path)
    resp = await fs._call_s3("get_object", Bucket=bucket, Key=key, Range=f"bytes={start}-{start + n - 1}",
                             **({"VersionId": version} if version else {}))
    body = resp["Body"]
    try:
        status = int(resp.get("ResponseMetadata", {}).get("HTTPStatusCode") or 200)
        _check_range_answer(url, status, resp.get("ContentRange"), start, n)
        return _check_range_body(url, status, await _bounded_body(url, body.read, n), n)
    finally:
        body.close()


# pread's ranged GETs on fsspec's event loop, by protocol: (fs, url, path in fs, start, n) -> bytes
_ASYNC_RANGE = {"http": _http_range, "https": _http_range, "gs": _gcs_range, "gcs": _gcs_range,
                "s3": _s3_range, "s3a": _s3_range}


def _hf_range(fs: Any, url: str, path: str, start: int, n: int) -> bytes:
    """GET bytes [start, start+n) of a Hub file with a Range header on its resolve URL, reading at most
    n + 1 bytes of the body. HfFileSystem's own cat_file reads a 5 MiB block ahead (an `ls` of a 100 MB file
    fetched 5 MB) and keeps the whole response; nothing goes through huggingface_hub's download cache."""
    from huggingface_hub.utils import build_hf_headers, get_session

    resolve = fs.url(path)  # {endpoint}/{repo}/resolve/{revision}/{path}; the Hub may redirect to its CDN
    headers = {**build_hf_headers(token=fs.token), "Range": f"bytes={start}-{start + n - 1}"}
    with get_session().stream("GET", resolve, headers=headers, timeout=remote_timeout(), follow_redirects=True) as r:
        _check_range_answer(url, r.status_code, r.headers.get("Content-Range"), start, n)
        out = bytearray()
        deadline = _Deadline(url, n)
        for chunk in r.iter_bytes():  # each chunk as it arrives (a chunk size would wait for it to fill)
            out += chunk
            if len(out) > n:
                break
            deadline.check(len(out))
        return _check_range_body(url, r.status_code, out, n)


# Hub metadata is asked for by wdist too, not through HfFileSystem's info/ls: their calls have no read
# timeout (a stalled listing hung for good), follow every `Link: next` page with the token to wherever it
# points (endless pages: 955 MB in 25 s), sleep a 429's Retry-After up to five times, and the file system
# instance fsspec keeps caches every listing for the life of the process (a run folder on the Hub never
# showed a new step to `trend --watch`). Only resolving a path (repo type, id, revision) stays theirs.
# A listing answers the same listing and the stat() of its entries for a few seconds (finding a folder's
# checkpoint lists it up to 8 times and stats each entry: `trend` of a 10-step Hub run made 508 metadata
# calls, 12 through HfFileSystem); it is kept on the file system instance, as HfFileSystem's own listings
# were, but only for _HF_LISTED_FOR seconds, so a new file shows on the next call after that.
_HF_MAX_PAGES = 1000  # pages of one folder listing (the Hub sends 1,000 entries a page)
_HF_MAX_ENTRIES = 1_000_000  # entries of one folder listing (1,000 full pages)
_HF_MAX_ANSWER = 8 << 20  # bytes of one metadata answer (a page of 1,000 entries is ~0.3 MB)
_HF_LISTED_FOR = 5.0  # seconds a listing's entry answers stat()
_HF_MAX_LISTED = 100_000  # entries remembered; more and the memory starts afresh


def _hf_call(fs: Any, url: str, api: str, method: str = "GET", data: dict[str, Any] | None = None,
             params: dict[str, str] | None = None) -> tuple[Any, str | None]:
    """One Hub API call with wdist's timeout and size bound: the decoded JSON and the next page's URL."""
    import json
    from urllib.parse import urljoin, urlsplit

    from huggingface_hub.utils import build_hf_headers, get_session

    # redirects (a renamed repository) are followed; httpx drops the token when one leaves the origin
    with get_session().stream(method, api, headers=build_hf_headers(token=fs.token), data=data, params=params,
                              timeout=remote_timeout(), follow_redirects=True) as r:
        if r.status_code == 404:
            raise FileNotFoundError(redact(url))
        if r.status_code >= 400:
            raise _StatusError(r.status_code)
        if r.status_code != 200:
            raise WdistError(redact(url), f"the server answered HTTP {r.status_code}")
        body = bytearray()
        deadline = _Deadline(url, _HF_MAX_ANSWER)
        for chunk in r.iter_bytes():  # decoded bytes, as they arrive: a gzip bomb stops at the bound too
            body += chunk
            if len(body) > _HF_MAX_ANSWER:
                raise WdistError(redact(url), f"the Hub's answer is larger than {_HF_MAX_ANSWER >> 20} MiB")
            deadline.check(len(body))
        nxt = r.links.get("next", {}).get("url")
    if nxt is not None:
        nxt = urljoin(api, nxt)
        if urlsplit(nxt)[:2] != urlsplit(api)[:2]:  # the token goes to the endpoint only
            raise WdistError(redact(url), "the Hub's listing continues on another host")
    try:
        return json.loads(bytes(body)), nxt
    except (ValueError, RecursionError):
        raise WdistError(redact(url), "the Hub's answer is not JSON") from None


def _hf_repo(fs: Any, url: str, p: str) -> Any:
    """The path resolved by HfFileSystem, or None where it is not in a repository (a bucket: left to
    HfFileSystem)."""
    from huggingface_hub import constants
    from huggingface_hub.hf_file_system import HfFileSystemResolvedRepositoryPath

    try:
        res = fs.resolve_path(p)
    except Exception as e:
        if _timed_out(e):  # its repo-info call has huggingface_hub's limit, not wdist's: said as such
            raise WdistError(redact(url), f"no answer within {constants.HF_HUB_ETAG_TIMEOUT:g} s to the Hub's "
                             "repository lookup (huggingface_hub's limit; $HF_HUB_ETAG_TIMEOUT sets it)") from None
        raise
    return res if isinstance(res, HfFileSystemResolvedRepositoryPath) else None


def _hf_route(fs: Any, res: Any, kind: str) -> str:
    """{endpoint}/api/{type}s/{id}/{kind}/{revision}, the revision quoted whole (refs/pr/1 -> refs%2Fpr%2F1)."""
    from urllib.parse import quote

    return f"{fs.endpoint}/api/{res.repo_type}s/{res.repo_id}/{kind}/{quote(res.revision, safe='')}"


def _hf_entry(url: str, e: Any) -> dict[str, Any]:
    """stat()'s view of one tree / paths-info entry; an entry that does not say what it is is an error."""
    if not isinstance(e, dict) or e.get("type") not in ("file", "directory"):
        raise WdistError(redact(url), "the Hub's answer has an entry that is neither a file nor a folder")
    if e["type"] == "directory":
        return {"type": "directory", "size": 0}
    size = e.get("size")
    if type(size) is not int or not 0 <= size < 1 << 62:
        raise WdistError(redact(url), f"the Hub lists a size that is not a byte count ({ascii(str(size)[:40])})")
    lfs: dict[str, Any] = e["lfs"] if isinstance(e.get("lfs"), dict) else {}
    # the version: the LFS / Xet content hash, else the git blob id
    return {"type": "file", "size": size, "etag": str(lfs.get("oid") or e.get("xetHash") or e.get("oid") or "")}


def _hf_info(fs: Any, url: str, p: str) -> dict[str, Any]:
    import time

    listed = getattr(fs, "_wdist_listed", {}).get(url)
    if listed is not None and time.monotonic() - listed[0] < _HF_LISTED_FOR:
        return dict(listed[1])
    res = _hf_repo(fs, url, p)
    if res is None:
        return dict(fs.info(p))
    if not res.path_in_repo:
        return {"type": "directory", "size": 0}
    entries, _ = _hf_call(fs, url, _hf_route(fs, res, "paths-info"), "POST",
                          data={"paths": [res.path_in_repo], "expand": "false"})
    if not isinstance(entries, list):
        raise WdistError(redact(url), "the Hub's paths-info answer is not a list")
    entry = next((e for e in entries if isinstance(e, dict) and e.get("path") == res.path_in_repo), None)
    if entry is None:
        raise FileNotFoundError(redact(url))
    return _hf_entry(url, entry)


def _hf_ls(fs: Any, url: str, p: str) -> list[str]:
    import time
    from urllib.parse import quote

    key = url.rstrip("/")
    cached = getattr(fs, "_wdist_dirs", {}).get(key)
    if cached is not None and time.monotonic() - cached[0] < _HF_LISTED_FOR:
        return list(cached[1])
    res = _hf_repo(fs, url, p)
    if res is None:
        names = fs.ls(p, detail=False)
        return sorted(n if _URL.match(n) else f"hf://{n.lstrip('/')}" for n in names)
    page: str | None = _hf_route(fs, res, "tree") + ("/" + quote(res.path_in_repo, safe="") if res.path_in_repo
                                                      else "")
    params: dict[str, str] | None = {"recursive": "false", "expand": "false"}
    found: dict[str, dict[str, Any]] = {}
    seen = 0
    for _ in range(_HF_MAX_PAGES):
        if page is None:
            break
        entries, page = _hf_call(fs, url, page, params=params)
        params = None  # the next page's URL carries its own query
        if not isinstance(entries, list):
            raise WdistError(redact(url), "the Hub's folder listing is not a list")
        seen += len(entries)
        if seen > _HF_MAX_ENTRIES:
            raise WdistError(redact(url), f"the Hub's folder listing has more than {_HF_MAX_ENTRIES:,} entries")
        for e in entries:
            name = e.get("path") if isinstance(e, dict) else None
            if not isinstance(name, str) or not name:
                raise WdistError(redact(url), "the Hub's folder listing has an entry without a path")
            child = key + "/" + name.rsplit("/", 1)[-1]
            found[child] = _hf_entry(child, e)
    if page is not None:
        raise WdistError(redact(url), f"the Hub's folder listing runs past {_HF_MAX_PAGES} pages")
    now = time.monotonic()
    listed = getattr(fs, "_wdist_listed", None)
    if listed is None or len(listed) + len(found) > _HF_MAX_LISTED:
        listed = fs._wdist_listed = {}
    listed.update((k, (now, v)) for k, v in found.items())
    dirs = getattr(fs, "_wdist_dirs", None)
    if dirs is None or len(dirs) >= _HF_MAX_LISTED:
        dirs = fs._wdist_dirs = {}
    names = sorted(found)
    dirs[key] = (now, tuple(names))
    return names


def pread_into(path: str, offset: int, view: memoryview) -> int:
    """Fill `view` from `offset`; returns the bytes read (fewer only at the end of the file)."""
    if not is_url(path):
        fd = os.open(local_path(path), os.O_RDONLY)
        try:
            got = 0
            while got < len(view):
                k = os.preadv(fd, [view[got:]], offset + got)
                if k <= 0:
                    break
                got += k
            return got
        finally:
            os.close(fd)
    data = pread(path, offset, len(view))
    view[: len(data)] = data
    return len(data)


class PositionedRaw(io.RawIOBase):
    """A read-only, seekable raw file over `_size` bytes whose subclasses implement readinto at `_pos`."""

    _pos = 0
    _size = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, base + pos)
        return self._pos


class RemoteFile(PositionedRaw):
    """A seekable read-only file over a URL: each read is one ranged request (with a small read-ahead
    buffer for the many tiny reads of zip directories, pickles and HDF5 metadata)."""

    def __init__(self, url: str, size: int | None = None) -> None:
        super().__init__()
        self.url = url
        self._size = stat(url).size if size is None else size
        self._pos = 0
        self._buf_start, self._buf = 0, b""
        self._lock = threading.Lock()

    def readinto(self, b: Any) -> int:
        with self._lock:
            n = max(0, min(len(b), self._size - self._pos))
            if n == 0:
                return 0
            lo, hi = self._buf_start, self._buf_start + len(self._buf)
            if not (lo <= self._pos and self._pos + n <= hi):
                want = max(n, REMOTE_BLOCK) if n < REMOTE_BLOCK else n
                self._buf_start, self._buf = self._pos, pread(self.url, self._pos, min(want, self._size - self._pos))
                if len(self._buf) < n:
                    raise CorruptCheckpointError(redact(self.url), "object is shorter than its listed size")
            a = self._pos - self._buf_start
            b[:n] = self._buf[a:a + n]
            self._pos += n
            return n


def open_binary(path: str) -> Any:
    """A seekable binary file object: the local file, or a RemoteFile for a URL."""
    if not is_url(path):
        return open(local_path(path), "rb")  # noqa: SIM115 - the caller closes it
    return io.BufferedReader(RemoteFile(path), buffer_size=64 << 10)


class LocalSource:
    """A local file opened once for a series of positioned reads (pread: no shared file offset, so safe
    under threads)."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(local_path(path), os.O_RDONLY)

    def readinto_at(self, view: memoryview, pos: int) -> int:
        return os.preadv(self.fd, [view], pos)

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> LocalSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RemoteSource:
    """Positioned reads of a URL, each one ranged request for exactly the bytes asked."""

    def __init__(self, url: str) -> None:
        self.url = url

    def readinto_at(self, view: memoryview, pos: int) -> int:
        data = pread(self.url, pos, len(view))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        pass

    def __enter__(self) -> RemoteSource:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def source(path: str) -> LocalSource | RemoteSource:
    return RemoteSource(path) if is_url(path) else LocalSource(path)


def size(path: str) -> int:
    return stat(path).size


def model_root(folder: str) -> str:
    """The folder a model's files may live in. In a Hugging Face cache (`models--X/snapshots/REV/`) files are
    symlinks into `models--X/blobs/`, so the repository folder is the root there."""
    if is_url(folder):
        return folder.rstrip("/")
    real = os.path.realpath(local_path(folder))
    parent = os.path.dirname(real)
    if os.path.basename(parent) == "snapshots" and os.path.basename(os.path.dirname(parent)).startswith(
            ("models--", "datasets--")):
        return os.path.dirname(parent)
    return real


def inside_model_folder(path: str, folder: str) -> bool:
    """Whether `path`, with every symlink resolved, stays inside the model folder."""
    root = model_root(folder)
    if is_url(path):
        norm = posixpath.normpath(path.split("://", 1)[1])
        top = posixpath.normpath(root.split("://", 1)[1]) if "://" in root else root
        return norm == top or norm.startswith(top + "/")
    real = os.path.realpath(local_path(path))
    return real == root or real.startswith(root + os.sep)
