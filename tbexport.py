"""TensorBoard export: wdist's own summaries as event files for the histogram, distribution and scalars
dashboards. Nothing here reads a checkpoint: everything comes from a finished trend or inspect report.

Tags: histograms `layer/<name>` (and `tensor/<name>`), scalars `layer/<name>/<metric>`,
`tensor/<name>/<metric>` and `model/<metric>`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from wdist.analyzers.histogram import Histogram
from wdist.analyzers.text import safe  # tags: names from files, escaped (a lone surrogate cannot be encoded)
from wdist.analyzers.trend import exact_stats
from wdist.loaders.errors import MissingDependencyError, UsageError

if TYPE_CHECKING:
    from wdist.analyzers.inspect import InspectReport
    from wdist.analyzers.trend import TrendReport

INSTALL_HINT = "pip install 'wdist[tensorboard]'"


@dataclass
class Written:
    """What an export wrote, for the CLI's one-line confirmation."""

    logdir: str
    histograms: int
    scalars: int
    steps: list[int]


@dataclass
class HistogramFields:
    """The fields of TensorBoard's HistogramProto. `counts[i]` covers (limits[i-1], limits[i]]; the first
    bucket starts at `min`. sum(counts) == num."""

    min: float
    max: float
    num: int
    sum: float
    sum_squares: float
    limits: list[float]
    counts: list[int]


def require(logdir: str | None = None) -> Any:
    """tensorboardX's SummaryWriter class, or MissingDependencyError naming the extra. The CLI calls this
    before any analysis, so a missing extra fails at once rather than after a long run."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError as e:
        raise MissingDependencyError(logdir, f"TensorBoard export needs tensorboardX ({e}); {INSTALL_HINT}") from None
    return SummaryWriter


def _writer(logdir: str) -> Any:
    cls = require(logdir)
    try:
        return cls(logdir=logdir)
    except OSError as e:  # a log folder that cannot be made: named, not blamed on the checkpoint
        raise UsageError(logdir, f"cannot write TensorBoard events there: {e.strerror or e}") from None


def _finite(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def histogram_fields(h: Histogram, stats: Mapping[str, Any] | None = None) -> HistogramFields | None:
    """HistogramProto fields for a linear wdist histogram, None when it holds no value.

    Underflow and overflow become one bucket at each end, so the bucket counts add up to every finite
    value the histogram summarises. `stats` (finite_count, min, max, mean, l2_norm of the same values)
    gives the exact outer edges and sums; without it they are estimated from the bins (the outer edge
    bucket then spans one bin width beyond the range, and the sums use bin midpoints)."""
    if h.log:
        raise ValueError("TensorBoard histograms take the linear histogram, not log10|w|")
    edges = [float(e) for e in h.edges]
    width = (edges[-1] - edges[0]) / max(1, len(h.counts))
    num = int(h.underflow) + sum(int(c) for c in h.counts) + int(h.overflow)
    # stats describe these very values only when they count as many; else everything is estimated
    st = stats if stats is not None and stats.get("finite_count") == num else {}
    lo, hi = _finite(st.get("min")), _finite(st.get("max"))
    # bucket i is (limits[i-1], limits[i]]: the underflow bucket ends at the range's left edge, bin k at
    # its right edge (wdist's bins are [e_k, e_k+1), a difference only for values exactly on an edge)
    limits = list(edges)
    counts = [int(h.underflow)] + [int(c) for c in h.counts]
    if h.overflow:
        limits.append(hi if hi is not None and hi > edges[-1] else edges[-1] + width)
        counts.append(int(h.overflow))
    nonempty = [i for i, c in enumerate(counts) if c > 0]
    if not nonempty:
        return None
    a, b = nonempty[0], nonempty[-1]
    limits, counts = limits[a:b + 1], counts[a:b + 1]
    left = (edges[0] - width) if a == 0 else edges[a - 1]
    mn = lo if lo is not None else left
    mx = hi if hi is not None else limits[-1]
    mean, l2 = _finite(st.get("mean")), _finite(st.get("l2_norm"))
    if mean is not None and l2 is not None:
        total, sq = mean * num, l2 * l2
    else:
        lefts = [mn] + limits[:-1]
        mids = [(x + y) / 2 for x, y in zip(lefts, limits)]
        total = sum(m * c for m, c in zip(mids, counts))
        sq = sum(m * m * c for m, c in zip(mids, counts))
    return HistogramFields(float(mn), float(mx), num, float(total), float(sq), limits, counts)


def _add_hist(w: Any, tag: str, h: Histogram | None, stats: Mapping[str, Any] | None, step: int) -> int:
    f = histogram_fields(h, stats) if h is not None else None
    if f is None:
        return 0
    w.add_histogram_raw(safe(tag), f.min, f.max, f.num, f.sum, f.sum_squares, f.limits, f.counts, global_step=step)
    return 1


def _add_scalars(w: Any, prefix: str, values: Mapping[str, Any], chosen: Iterable[str], step: int) -> int:
    n = 0
    for m in chosen:
        v = _finite(values.get(m))
        if v is not None:  # undefined metrics (None) and NaN/Inf leave a gap, as in the JSON
            w.add_scalar(safe(f"{prefix}{m}"), v, global_step=step)
            n += 1
    return n


def write_trend(report: TrendReport, logdir: str, tensors: bool = False,
                metrics: Sequence[str] | None = None) -> Written:
    """One histogram per layer (and per tensor when `tensors` and the report holds tensor histograms) at
    each checkpoint's step (every checkpoint at its position 1, 2, ... when one has none: TrendReport.x_steps), and `metrics` (default: the report's) as
    scalars. Checkpoints that could not be read are left out."""
    chosen = list(metrics if metrics is not None else report.metrics)
    w = _writer(logdir)
    nh = ns = 0
    steps: list[int] = []
    try:
        tensor_hists: Mapping[str, Sequence[Any]] = getattr(report, "tensor_histograms", None) or {}
        xs = report.x_steps()
        for i, pt in enumerate(report.checkpoints):
            if pt.error:
                continue
            step = xs[i]
            steps.append(step)
            for lt in report.layers:
                st = lt.ridge_stats[i] if i < len(lt.ridge_stats) else None
                if i < len(lt.ridgeline):
                    nh += _add_hist(w, f"layer/{lt.name}", lt.ridgeline[i], st, step)
                ns += _add_scalars(w, f"layer/{lt.name}/", {m: s[i] for m, s in lt.series.items() if i < len(s)},
                                   chosen, step)
            if tensors:
                for name, series in report.tensors.items():
                    ns += _add_scalars(w, f"tensor/{name}/", {m: s[i] for m, s in series.items() if i < len(s)},
                                       chosen, step)
                    th = tensor_hists.get(name)
                    if th and i < len(th) and th[i] is not None:
                        h, tst = th[i]
                        nh += _add_hist(w, f"tensor/{name}", h, tst, step)
            ns += _add_scalars(w, "model/", {m: s[i] for m, s in report.model.items() if i < len(s)}, chosen, step)
        w.flush()
    finally:
        w.close()
    return Written(logdir, nh, ns, steps)


def write_inspect(report: InspectReport, logdir: str, step: int | None = None, tensors: bool = False,
                  metrics: Sequence[str] | None = None) -> Written:
    """One checkpoint at `step` (default: the step stored in the checkpoint, else 0): a histogram per
    layer (and per tensor with `tensors`) and `metrics` (default: trend's) as scalars."""
    from wdist.analyzers.trend import DEFAULT_METRICS

    chosen = list(metrics if metrics is not None else DEFAULT_METRICS)
    if step is None:
        step = report.checkpoint.step if report.checkpoint.step is not None else 0
    w = _writer(logdir)
    nh = ns = 0
    try:
        for lr in report.layers:
            nh += _add_hist(w, f"layer/{lr.name}", lr.histogram, exact_stats(lr.summary), step)
            ns += _add_scalars(w, f"layer/{lr.name}/", lr.stats, chosen, step)
        if tensors:
            for t in report.tensors:
                nh += _add_hist(w, f"tensor/{t.name}", t.histogram, t.stats, step)
                ns += _add_scalars(w, f"tensor/{t.name}/", t.stats, chosen, step)
        ns += _add_scalars(w, "model/", report.model.stats, chosen, step)
        w.flush()
    finally:
        w.close()
    return Written(logdir, nh, ns, [step])
