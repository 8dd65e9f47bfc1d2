"""Dead output units: rows / output channels that are entirely zero, tracked chunk by chunk."""

from __future__ import annotations

import numpy as np


class UnitTracker:
    """Which output units have a nonzero value, for a C-order tensor read as flat chunks."""

    def __init__(self, shape: tuple[int, ...], axis: int) -> None:
        axis = axis % len(shape)
        self.units = shape[axis]
        self.inner = int(np.prod(shape[axis + 1:], dtype=np.int64))  # stride of the unit axis
        self.alive = np.zeros(self.units, dtype=bool)
        self.outer_first = axis == 0

    @property
    def align(self) -> int:
        """Chunk length multiple that keeps the reshape below cheap."""
        return self.inner if self.outer_first else self.units * self.inner

    def update(self, start: int, chunk: np.ndarray) -> None:
        nz = chunk != 0
        n = chunk.size
        if self.outer_first and start % self.inner == 0 and n % self.inner == 0:
            u0 = start // self.inner
            self.alive[u0:u0 + n // self.inner] |= nz.reshape(-1, self.inner).any(axis=1)
            return
        block = self.units * self.inner
        if not self.outer_first and self.inner == 1 and start % block == 0 and n % block == 0:
            self.alive |= nz.reshape(-1, self.units).any(axis=0)
            return
        idx = np.flatnonzero(nz) + start  # general case: chunk boundaries cut through units
        self.alive[np.unique((idx // self.inner) % self.units)] = True

    @property
    def dead(self) -> int:
        return int(self.units - np.count_nonzero(self.alive))
