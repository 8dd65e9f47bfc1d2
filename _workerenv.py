"""Set up a worker process before numpy is imported in it (kept free of heavy imports on purpose)."""

from __future__ import annotations

import os

BLAS_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def one_blas_thread() -> None:
    """One BLAS thread per worker: the workers already fill the cores, and spinning BLAS threads competing
    with them slow everything down many times over. Runs inside the worker only, so the caller's
    environment is never changed; spawned workers read it when they import numpy, right after this."""
    for var in BLAS_VARS:
        os.environ[var] = "1"
    import sys

    if "numpy" in sys.modules:
        # numpy was loaded before this ran (a spawned worker imports the main module first, which may import
        # it): its BLAS read the variables already, so limit it directly (for this worker's whole life)
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            return
        threadpool_limits(limits=1, user_api="blas")
