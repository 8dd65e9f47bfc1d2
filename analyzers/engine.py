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


def ordered_map(fn: Callable[..., R], items: Iterable[tuple], jobs: int, total_bytes: int) -> Iterator[R]:
    """fn(*item) for each item, in order; in worker processes when jobs > 1 (0 = all cores) and the work
    is large. Order is kept so that merged results are identical to a single-process run."""
    jobs = jobs or default_jobs()
    if jobs <= 1 or total_bytes < PARALLEL_MIN_BYTES:
        for it in items:
            yield fn(*it)
        return
    import multiprocessing as mp
    import sys
    import threading

    # fork starts workers in milliseconds; it is safe here only while this process runs no other thread
    # (the progress bar refreshes without one). Workers drop inherited file handles (see loaders).
    method = "fork" if sys.platform == "linux" and threading.active_count() == 1 else "spawn"
    # one BLAS thread per worker: the workers already fill the cores, and spinning BLAS threads
    # competing with them slow everything down many times over (spawned children read this at import)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context(method)) as ex:
        yield from ex.map(_call, ((fn, it) for it in items), chunksize=1)
