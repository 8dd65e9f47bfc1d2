import numpy as np
import pytest

from wdist.analyzers.units import UnitTracker


@pytest.mark.parametrize("shape, axis", [((8, 3, 3, 3), 0), ((12, 5), 0), ((3, 3, 4, 6), -1), ((5, 7), -1), ((4, 5, 6), 1)])
@pytest.mark.parametrize("chunk", [1, 5, 18, 10_000])
def test_dead_units_match_numpy(rng, shape, axis, chunk):
    x = rng.standard_normal(shape).astype(np.float32)
    dead = [0, 2] if shape[axis] > 2 else [0]
    idx = [slice(None)] * len(shape)
    for d in dead:
        idx[axis] = d
        x[tuple(idx)] = 0
    ref = int((np.moveaxis(x, axis, 0).reshape(shape[axis], -1) == 0).all(axis=1).sum())
    t = UnitTracker(shape, axis)
    flat = x.ravel()
    step = max(1, (chunk // t.align) * t.align) if t.align <= chunk else chunk
    for s in range(0, flat.size, step):
        t.update(s, flat[s:s + step])
    assert t.units == shape[axis] and t.dead == ref == len(dead)
