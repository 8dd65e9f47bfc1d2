"""Dead output units: rows / output channels that are entirely zero, tracked chunk by chunk."""

from __future__ import annotations

import math

import numpy as np


class UnitTracker:
    """Which output units have a nonzero value, for a C-order tensor read as flat chunks (or as the chunks
    of one element range: trackers of a tensor's ranges merge by OR-ing `alive`)."""

    def __init__(self, shape: tuple[int, ...], axis: int) -> None:
        axis = axis % len(shape)
        self.units = shape[axis]
        self.inner = math.prod(shape[axis + 1:])  # stride of the unit axis
        self.alive = np.zeros(self.units, dtype=bool)
        self.outer_first = axis == 0

    @property
    def align(self) -> int:
        """Chunk length multiple that keeps the reshape below cheap."""
        return self.inner if self.outer_first else self.units * self.inner

    def update(self, start: int, chunk: np.ndarray) -> None:
        """Mark the units of chunk (elements start, start+1, ... of the tensor) that hold a nonzero value.
        Pieces that cut through units (the head and tail of a chunk that starts or ends mid-unit, as at an
        element-range boundary) take the general path; the aligned middle is one reshape."""
        n = chunk.size
        a = self.align
        head = min(n, (-start) % a)
        body = (n - head) // a * a
        if head:
            self._general(start, chunk[:head])
        if body:
            self._aligned(start + head, chunk[head:head + body])
        if head + body < n:
            self._general(start + head + body, chunk[head + body:])

    def _aligned(self, start: int, chunk: np.ndarray) -> None:
        nz = chunk != 0
        if self.outer_first:
            u0 = start // self.inner
            self.alive[u0:u0 + chunk.size // self.inner] |= nz.reshape(-1, self.inner).any(axis=1)
        else:
            self.alive |= nz.reshape(-1, self.units, self.inner).any(axis=(0, 2))

    def _general(self, start: int, chunk: np.ndarray) -> None:
        idx = np.flatnonzero(chunk) + start
        self.alive[np.unique((idx // self.inner) % self.units)] = True

    @property
    def dead(self) -> int:
        return int(self.units - np.count_nonzero(self.alive))
