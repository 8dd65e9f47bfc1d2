"""Streaming a tensor through the summaries, and spreading tensors over processes (--jobs)."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

import numpy as np

from wdist.analyzers import kernel
from wdist.analyzers.summary import NBINS, SMALL, Part, RangeAccumulator, Summary, combine, small_part
from wdist.analyzers.units import UnitTracker
from wdist.loaders.dtypes import BF16_EXACT, to_float32
from wdist.loaders.model import DEFAULT_CHUNK, TensorRef

T = TypeVar("T")
R = TypeVar("R")

# Below this many bytes in total, starting worker processes costs more than it saves.
PARALLEL_MIN_BYTES = 32 << 20


# Element-range tasks of large tensors: a fixed size (never derived from --jobs, so results are not either),
# a power of two of kernel blocks so that the block tree gives bit-identical totals for any split.
TASK_ELEMS = 1 << 26


def task_ranges(numel: int, task: int | None = None) -> list[tuple[int, int]]:
    """[lo, hi) element ranges, in order, that a tensor of `numel` elements is analysed in (TASK_ELEMS each
    unless `task` is given)."""
    task = kernel.check_task_size(TASK_ELEMS if task is None else task)
    if numel <= task:
        return [(0, numel)]
    return [(lo, min(lo + task, numel)) for lo in range(0, numel, task)]


def tensor_ranges(*refs: TensorRef) -> list[tuple[int, int]]:
    """The element ranges tensors of the same size are analysed in: task_ranges, or one range when a reader
    verifies a checksum over one in-order pass of the whole tensor (`whole_pass`, e.g. TensorFlow's
    crc32c), which a split would leave unchecked. Results are the same either way (the block tree)."""
    if any(getattr(r.reader, "whole_pass", False) for r in refs):
        return [(0, refs[0].numel)]
    return task_ranges(refs[0].numel)


def range_chunks(ref: TensorRef, lo: int, hi: int, chunk: int, align: int = 1) -> Iterator[tuple[int, np.ndarray]]:
    """(start, float32 chunk) over elements [lo, hi) of a tensor; chunk boundaries fall on multiples of the
    aligned step counted from the tensor's start, so only a range's first and last chunk cut through units."""
    if lo == 0 and hi == ref.numel:
        yield from ref.chunks(chunk, align=align)
        return

    step = (chunk // align) * align if 1 < align <= chunk else chunk
    reuse = getattr(ref.reader, "reuses_buffer", False)
    buf = np.empty(min(step, hi - lo) * ref.itemsize, dtype=np.uint8) if reuse else None
    start = lo
    while start < hi:
        end = min(hi, (start // step + 1) * step)
        yield start, to_float32(ref._raw(start, end - start, buf), ref.dtype)
        start = end


class TensorAccumulator:
    """One tensor's (or one element range's) running summary and dead-unit tracker, fed chunk by chunk in
    order (inspect and diff). `lo` is the first element of the range (a multiple of kernel.BLOCK)."""

    def __init__(self, ref: TensorRef, lo: int = 0) -> None:
        self.acc = RangeAccumulator(lo, ref.dtype in BF16_EXACT, small=lo == 0 and ref.numel <= SMALL)
        self.tracker = UnitTracker(ref.shape, ref.unit_axis) if ref.unit_axis is not None and ref.numel else None
        self.align = self.tracker.align if self.tracker else 1  # chunk lengths that keep units whole

    def add(self, start: int, x: np.ndarray) -> None:
        self.acc.add(x)
        if self.tracker:
            self.tracker.update(start, x)

    def part(self) -> Part:
        p = self.acc.part()
        p.alive = self.tracker.alive if self.tracker else None
        return p

    def result(self) -> Summary:
        return join_parts([self.part()])


def join_parts(parts: list[Part]) -> Summary:
    """A tensor's Summary from the Parts of its ranges (task_ranges order); dead units from the union of
    the ranges' alive units."""
    s = combine(parts if len(parts) == 1 else [unpack_part(p) for p in parts])
    s.tensors = 1
    alive = [p.alive for p in parts if p.alive is not None]
    if alive:
        a = alive[0].copy()
        for x in alive[1:]:
            a |= x
        s.units, s.dead_units = int(a.size), int(a.size - np.count_nonzero(a))
    return s


def summarize_range(ref: TensorRef, lo: int, hi: int, chunk: int = DEFAULT_CHUNK) -> Part:
    if lo == 0 and 0 < hi == ref.numel <= SMALL:  # a tiny tensor in one read: the same Part, less overhead
        ref._check_real()
        x = to_float32(ref._raw(0, hi), ref.dtype)
        p = small_part(x, ref.dtype in BF16_EXACT)
        if ref.unit_axis is not None:
            tracker = UnitTracker(ref.shape, ref.unit_axis)
            tracker.update(0, x)
            p.alive = tracker.alive
        return p
    acc = TensorAccumulator(ref, lo)
    for start, x in range_chunks(ref, lo, hi, chunk, acc.align):
        acc.add(start, x)
    return acc.part()


def summarize_tensor(ref: TensorRef, chunk: int = DEFAULT_CHUNK, task: int | None = None) -> Summary:
    return join_parts([summarize_range(ref, lo, hi, chunk) for lo, hi in task_ranges(ref.numel, task)])


def pack_part(p: Part) -> Part:
    pack(p.summary)
    return p


def unpack_part(p: Part) -> Part:
    unpack(p.summary)
    return p


def pack(s: Summary) -> Summary:
    """Make a summary cheap to send between processes: histogram stored sparse in `hist`."""
    if s.hist.ndim == 2:
        return s
    if s.sample is not None and s.sample.size == s.n and 0 < s.n <= 4096:
        # a small tensor keeps its finite values: their bins come from them, not from a scan of 65,536 bins
        from wdist.analyzers.bins import sample_bins

        s.hist = np.stack(sample_bins(s.sample))
        return s
    nz = np.flatnonzero(s.hist)
    s.hist = np.stack([nz.astype(np.int64), s.hist[nz]]) if nz.size < NBINS // 4 else s.hist
    return s


def unpack(s: Summary) -> Summary:
    if s.hist.ndim == 2:
        dense = np.zeros(NBINS, dtype=np.int64)
        dense[s.hist[0]] = s.hist[1]
        s.hist = dense
    return s


# Module level on purpose, the one such state of wdist: BLAS's thread pool is one setting of the whole
# process, and threadpoolctl lets one thread at a time change it (others "silently do nothing"), so calls
# from several threads take turns: each pins, computes and restores in full before the next starts.
# Without this, overlapping calls restored each other's saved values in the wrong order (leaving the
# caller's BLAS at one thread) and some ran multi-threaded (results differing in their last bits).
_BLAS_LOCK = threading.RLock()


def _threadpool_limits() -> Any:
    """threadpoolctl.threadpool_limits, imported without leaving KMP_DUPLICATE_LIB_OK=True (which its import
    sets) in the caller's environment, where child processes would inherit it."""
    had = "KMP_DUPLICATE_LIB_OK" in os.environ
    try:
        from threadpoolctl import threadpool_limits
    finally:
        if not had:
            os.environ.pop("KMP_DUPLICATE_LIB_OK", None)
    return threadpool_limits


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """BLAS on one thread in this process (and the workers forked from it) for the duration, then as it was:
    a multi-threaded Gram product is summed in another order, so results would depend on --jobs in their
    last bits. Calls from several threads run one after the other. Raises ImportError without
    threadpoolctl."""
    limits = _threadpool_limits()
    with _BLAS_LOCK, limits(limits=1, user_api="blas"):
        yield


@contextlib.contextmanager
def one_blas_thread_unless_held() -> Iterator[None]:
    """one_blas_thread for a task on a Dask worker: in a worker thread of this very process (an in-process
    cluster) the caller's spectral pass already holds the lock with the process's BLAS pinned, and waiting
    for it would deadlock; then the task runs as it is, on the pinned BLAS."""
    if not _BLAS_LOCK.acquire(blocking=False):
        yield
        return
    try:
        with one_blas_thread():
            yield
    finally:
        _BLAS_LOCK.release()


def default_jobs() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _call(args: tuple[Callable[..., Any], tuple]) -> Any:
    fn, a = args
    return fn(*a)


def _in_memory(item: tuple) -> bool:
    """Whether a work item holds a reader over live objects (a torch tensor, a NumPy array), which must not
    be copied into worker processes."""
    return any(getattr(getattr(x, "reader", None), "in_memory", False) for x in item)


def connect_timeout() -> float:
    """Seconds to reach a scheduler: Dask's own setting (distributed.comm.timeouts.connect, 30 s by default;
    also $DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT)."""
    import dask.config
    from dask.utils import parse_timedelta

    t = parse_timedelta(dask.config.get("distributed.comm.timeouts.connect", "30s"), default="seconds")
    return float(t) if t and t > 0 else 30.0


def probe_scheduler(address: str, timeout: float) -> None:
    """Ask the server at `address` who it is, within `timeout` seconds overall, before a dask Client is made.

    Why: Client(address, timeout=...) waits for good on a server that accepts and never answers, and on one
    that answers something else (an HTTP server, a typo'd port) it fails inside Dask's frame decoder (a
    "MemoryError: Unable to allocate 3 EiB" or "ValueError: Maximum allowed dimension exceeded"), and it does
    so lazily, once per checkpoint. This is one request on a fresh event loop in a short-lived thread (so
    that it works also where the caller runs a loop of its own, as in Jupyter), bounded by asyncio.wait_for."""
    import asyncio

    from distributed.comm import connect
    from distributed.security import Security

    from wdist.loaders.errors import WdistError

    # the connection arguments a Client would use (TLS certificates from Dask's config), or a tls://
    # scheduler could never be reached
    args = Security().get_connection_args("client")
    try:  # a malformed address is the user's, not the server's: said before anything is sent
        from distributed.comm.addressing import parse_address, parse_host_port

        scheme, loc = parse_address(address)
        if scheme in ("tcp", "tls"):
            parse_host_port(loc)
    except Exception as bad:  # noqa: BLE001 - Dask raises ValueError, TypeError, ...
        raise WdistError(address, f"cannot reach a Dask scheduler (bad address: {str(bad)[:200]})") from None

    async def ask() -> Any:
        # Dask retries a refused connect until the timeout
        comm = await connect(address, timeout=timeout, **args)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await asyncio.wait_for(comm.read(), timeout)
        finally:
            comm.abort()

    out: dict[str, Any] = {}

    def run() -> None:
        try:
            # the outer bound is a backstop: connect and the reply are each bounded by `timeout` above
            out["info"] = asyncio.run(asyncio.wait_for(ask(), 2 * timeout + 1))
        except BaseException as e:  # carried to the calling thread, which decides
            out["error"] = e

    t = threading.Thread(target=run, name="wdist-scheduler-probe", daemon=True)
    t.start()
    t.join(2 * timeout + 6)  # wait_for ends run() by then; the margin covers a slow cancellation
    e = out.get("error")
    if t.is_alive() or isinstance(e, (TimeoutError, asyncio.TimeoutError)):
        raise WdistError(address, f"no answer from a Dask scheduler within {timeout:g} s") from None
    if isinstance(e, OSError):
        raise WdistError(address, f"cannot reach a Dask scheduler ({type(e).__name__}: {str(e)[:200]})") from None
    if e is not None:
        raise WdistError(address, f"is not a Dask scheduler (its reply could not be read: {type(e).__name__})") from None
    info = out.get("info")
    if not isinstance(info, dict) or info.get("type") != "Scheduler":
        kind = info.get("type") if isinstance(info, dict) else None
        raise WdistError(address, "is not a Dask scheduler" + (f" (it is a {str(kind)[:40]})" if kind else ""))


class DaskEngine:
    """Runs the work items on a Dask cluster: an existing scheduler (`tcp://HOST:8786`) or a local cluster
    started here (`local:N`, N worker processes with one thread each, on 127.0.0.1). Workers read the data
    themselves (from URLs or a shared file system) and send back packed summaries; results are consumed in
    submission order, so merged reports are identical to a local run. A task whose worker dies is
    rescheduled by Dask; a task that raises is retried `retries` times and then fails its checkpoint.

    One engine serves a whole command (`trend` over many checkpoints starts one cluster); close() it, or
    use it as a context manager."""

    def __init__(self, address: str, retries: int = 2) -> None:
        self.address, self.retries = address, retries
        self._client: Any = None
        self._cluster: Any = None

    def client(self) -> Any:
        if self._client is None:
            try:
                from distributed import Client, LocalCluster
            except ImportError:
                from wdist.loaders.errors import MissingDependencyError

                raise MissingDependencyError(None, "Dask execution needs dask.distributed: "
                                             "pip install 'wdist[dask]'") from None
            if self.address.startswith("local:"):
                n = int(self.address.split(":", 1)[1] or 1)
                self._cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                                             dashboard_address=None, worker_dashboard_address=None)
                self._client = Client(self._cluster)
            else:
                timeout = connect_timeout()
                probe_scheduler(self.address, timeout)
                self._client = Client(self.address, timeout=timeout)
        return self._client

    def map(self, fn: Callable[..., R], items: list[tuple]) -> Iterator[R]:
        client = self.client()
        futures = client.map(_call, [(fn, it) for it in items], pure=False, retries=self.retries)
        try:
            for f in futures:
                yield f.result()
        finally:
            for f in futures:
                f.release()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()
        self._client = self._cluster = None

    def __enter__(self) -> DaskEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ordered_map(fn: Callable[..., R], items: Iterable[tuple], jobs: int, total_bytes: int,
                engine: DaskEngine | None = None) -> Iterator[R]:
    """fn(*item) for each item, in order; on the Dask engine when one is given, else in worker processes when
    jobs > 1 (0 = all cores) and the work is large. Order is kept so that merged results are identical to a
    single-process run."""
    jobs = jobs or default_jobs()
    items = list(items)
    local_only = any(_in_memory(it) for it in items)
    if engine is not None and not local_only and items:
        yield from engine.map(fn, items)
        return
    if jobs <= 1 or total_bytes < PARALLEL_MIN_BYTES or local_only:
        for it in items:
            yield fn(*it)
        return
    import multiprocessing as mp
    import sys

    from wdist._workerenv import one_blas_thread as worker_env

    # fork starts workers in milliseconds; it is safe here only while this process runs no other thread
    # (the progress bar refreshes without one). Readers reopen their files in the worker (see loaders).
    # tensorstore (Orbax) runs native threads that threading does not count, and aborts a forked child
    # that uses it ("fork() use detected"): once it is loaded, workers are spawned.
    forkable = threading.active_count() == 1 and "tensorstore" not in sys.modules
    method = "fork" if sys.platform == "linux" and forkable else "spawn"
    if method == "spawn" and not _spawn_is_safe():
        # a spawned worker imports the caller's main script again, which without an
        # `if __name__ == "__main__"` guard runs the whole script (training included) once per worker
        for it in items:
            yield fn(*it)
        return
    default_method = mp.get_start_method(allow_none=True)
    try:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context(method),
                                 initializer=worker_env) as ex:
            yield from ex.map(_call, ((fn, it) for it in items), chunksize=1)
    finally:
        if default_method is None:
            _unset_default_start_method()


def _spawn_is_safe() -> bool:
    """Whether spawned workers may be started: the main module is wdist's own command (the `wdist` script
    or `python -m wdist`), or there is no main script to run again (an interactive session, a notebook)."""
    import sys

    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__file__", None) is None:
        return True
    spec = getattr(main, "__spec__", None)
    if spec is not None and (spec.name or "").split(".")[0] == "wdist":
        return True
    entry = getattr(main, "main", None)  # pip's console script: `from wdist.cli.main import main`
    return (getattr(entry, "__module__", None) or "").startswith("wdist.")


def _unset_default_start_method() -> None:
    """Leave multiprocessing's default start method unset, as the caller had it: spawning workers fixes it
    (multiprocessing's spawn preparation asks for it), and the caller could no longer choose one."""
    import multiprocessing.context as ctx

    default = getattr(ctx, "_default_context", None)
    if default is not None and hasattr(default, "_actual_context"):
        default._actual_context = None


def cached_map(fn: Callable[..., Any], items: list[tuple], keys: list[dict[str, Any] | None],
               classes: tuple[type, ...], jobs: int, sizes: list[int], engine: DaskEngine | None = None,
               cache: Any = None, split: Callable[[tuple], list[tuple]] | None = None,
               join: Callable[[list[Any]], tuple] | None = None) -> Iterator[tuple]:
    """ordered_map for work whose results are tuples of dataclasses (packed summaries): items whose key is
    found in the summary cache are not computed (their files are not read at all); the others are
    computed, stored, and yielded in order with the hits.

    With `split`, each item to compute becomes the tasks split(item) (element ranges of a large tensor),
    all run through ordered_map like whole items, and join(results of its tasks, in order) is the item's
    result: the cache still holds whole items."""
    hits: list[tuple | None] = []
    for k in keys:
        got: tuple | None = None
        if cache is not None and k is not None:
            parts = [cache.get({**k, "part": j}, c) for j, c in enumerate(classes)]
            got = tuple(parts) if all(p is not None for p in parts) else None
        hits.append(got)
    todo = [i for i, h in enumerate(hits) if h is None]
    tasks = {i: split(items[i]) if split is not None else [items[i]] for i in todo}
    results = ordered_map(fn, [t for i in todo for t in tasks[i]], jobs, sum(sizes[i] for i in todo), engine)
    for i, hit in enumerate(hits):
        if hit is not None:
            yield hit
            continue
        done = [next(results) for _ in tasks[i]]
        r = join(done) if join is not None else done[0]
        key = keys[i]
        if cache is not None and key is not None:
            for j, part in enumerate(r):
                cache.put({**key, "part": j}, part)
        yield r
