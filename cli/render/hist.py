"""Terminal histograms drawn with unicode eighth blocks."""

from __future__ import annotations

import math
from collections.abc import Sequence

BLOCKS = " ▁▂▃▄▅▆▇█"


def _scale(counts: Sequence[int], log: bool) -> list[float]:
    vals = [math.log10(1 + c) if log else float(c) for c in counts]
    top = max(vals) if vals else 0.0
    return [v / top if top > 0 else 0.0 for v in vals]


def bars(counts: Sequence[int], height: int = 6, log: bool = False) -> list[str]:
    """Rows of a vertical bar chart, top row first, one column per bin."""
    levels = [round(v * height * 8) for v in _scale(counts, log)]
    rows = []
    for r in range(height - 1, -1, -1):
        rows.append("".join(BLOCKS[max(0, min(8, lv - r * 8))] for lv in levels))
    return rows


def sparkline(values: Sequence[float | None]) -> str:
    """One block per value on a zero-based scale: heights run from 0 (or the most negative value) to the
    largest value, so a 0.4% change draws as two equal bars instead of the full min-max swing."""
    nums = [v for v in values if v is not None and math.isfinite(v)]
    if not nums:
        return " " * len(values)
    lo, hi = min(0.0, min(nums)), max(0.0, max(nums))
    out = []
    for v in values:
        if v is None or not math.isfinite(v):
            out.append(" ")
        elif hi == lo:
            out.append(BLOCKS[1])
        else:
            out.append(BLOCKS[1 + round(7 * (v - lo) / (hi - lo))])
    return "".join(out)
