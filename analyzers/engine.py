"""Streaming a tensor through the summaries, and spreading tensors over processes (--jobs)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

import numpy as np

from wdist.analyzers.summary import NBINS, Summary, summarize_chunk
from wdist.analyzers.units import UnitTracker
from wdist.loaders.dtypes import BF16_EXACT
from wdist.loaders.model import DEFAULT_CHUNK, TensorRef

T = TypeVar("T")
R = TypeVar("R")

# Below this many bytes in total, starting worker processes costs more than it saves.
PARALLEL_MIN_BYTES = 32 << 20


class TensorAccumulator:
    """One tensor's running Summary and dead-unit tracker, fed chunk by chunk (inspect and diff)."""

    def __init__(self, ref: TensorRef) -> None:
        self.summary = Summary(exact_bins=ref.dtype in BF16_EXACT, tensors=1)
        self.tracker = UnitTracker(ref.shape, ref.unit_axis) if ref.unit_axis is not None and ref.numel else None
        self.align = self.tracker.align if self.tracker else 1  # chunk lengths that keep units whole

    def add(self, start: int, x: np.ndarray) -> None:
        self.summary.merge(summarize_chunk(x, self.summary.exact_bins))
        if self.tracker:
            self.tracker.update(start, x)

    def result(self) -> Summary:
        if self.tracker:
            self.summary.units, self.summary.dead_units = self.tracker.units, self.tracker.dead
        return self.summary


def summarize_tensor(ref: TensorRef, chunk: int = DEFAULT_CHUNK) -> Summary:
    acc = TensorAccumulator(ref)
    for start, x in ref.chunks(chunk, align=acc.align):
        acc.add(start, x)
    return acc.result()


def pack(s: Summary) -> Summary:
    """Make a summary cheap to send between processes: histogram stored sparse in `hist`."""
    nz = np.flatnonzero(s.hist)
    s.hist = np.stack([nz.astype(np.int64), s.hist[nz]]) if nz.size < NBINS // 4 else s.hist
    return s


def unpack(s: Summary) -> Summary:
    if s.hist.ndim == 2:
        dense = np.zeros(NBINS, dtype=np.int64)
        dense[s.hist[0]] = s.hist[1]
        s.hist = dense
    return s


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
                self._client = Client(self.address)
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
    import threading

    from wdist._workerenv import one_blas_thread

    # fork starts workers in milliseconds; it is safe here only while this process runs no other thread
    # (the progress bar refreshes without one). Readers reopen their files in the worker (see loaders).
    method = "fork" if sys.platform == "linux" and threading.active_count() == 1 else "spawn"
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context(method),
                             initializer=one_blas_thread) as ex:
        yield from ex.map(_call, ((fn, it) for it in items), chunksize=1)


def cached_map(fn: Callable[..., tuple], items: list[tuple], keys: list[dict[str, Any] | None],
               classes: tuple[type, ...], jobs: int, sizes: list[int], engine: DaskEngine | None = None,
               cache: Any = None) -> Iterator[tuple]:
    """ordered_map for work whose results are tuples of dataclasses (packed summaries): items whose key is
    found in the summary cache are not computed (their files are not read at all); the others are
    computed, stored, and yielded in order with the hits."""
    hits: list[tuple | None] = []
    for k in keys:
        got: tuple | None = None
        if cache is not None and k is not None:
            parts = [cache.get({**k, "part": j}, c) for j, c in enumerate(classes)]
            got = tuple(parts) if all(p is not None for p in parts) else None
        hits.append(got)
    todo = [i for i, h in enumerate(hits) if h is None]
    results = ordered_map(fn, [items[i] for i in todo], jobs, sum(sizes[i] for i in todo), engine)
    for i, hit in enumerate(hits):
        if hit is not None:
            yield hit
            continue
        r = next(results)
        key = keys[i]
        if cache is not None and key is not None:
            for j, part in enumerate(r):
                cache.put({**key, "part": j}, part)
        yield r
