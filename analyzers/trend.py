"""`trend`: metrics per layer across the checkpoints of a run, ordered by training step."""

from __future__ import annotations

import copy
import glob
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from wdist.analyzers import histogram, metrics
from wdist.analyzers.histogram import Histogram
from wdist.analyzers.inspect import Options, analyse
from wdist.analyzers.report import ReportMixin, jsonable
from wdist.analyzers.summary import Summary
from wdist.analyzers.verdict import WEIGHTY
from wdist.loaders import fs, roles
from wdist.loaders.errors import UsageError, WdistError
from wdist.loaders.model import some_names
from wdist.loaders.registry import EXTENSIONS, find_in_dir, is_model_dir, open_checkpoint

DEFAULT_METRICS = ("l2_norm", "std", "kurtosis", "near_zero_fraction", "zero_fraction", "top1pct_l2_mass")
_STEP_PATTERNS = (
    ("step", re.compile(r"(?:^|[^a-z])(?:global_)?step[=_-]?(\d+)", re.I)),
    ("step", re.compile(r"checkpoint-(\d+)", re.I)),
    ("step", re.compile(r"iter(?:ation)?[=_-]?(\d+)", re.I)),
    ("epoch", re.compile(r"epoch[=_-]?(\d+)", re.I)),
)


def natural_key(s: str) -> str:
    """'epoch2' < 'epoch10', case-insensitively: the loaders' natural key of the lower-cased name (its own
    int() of each digit run raised ValueError on a file name with a 5,000-digit run)."""
    return roles.natural_key(s.lower())


def step_from_name(path: str) -> tuple[str, int] | None:
    """(kind, number) from a Lightning/Hugging Face/plain checkpoint name; the step wins over the epoch."""
    name = os.path.basename(os.path.normpath(path))
    for kind, pat in _STEP_PATTERNS:
        m = pat.search(name)
        if m:
            return kind, int(m.group(1))
    return None


OUTSIDE = "a symlink out of the run folder: not followed"


def expand_inputs(inputs: list[str], refused: dict[str, str] | None = None) -> list[str]:
    """CKPT... | DIR | GLOB -> checkpoint paths (files and model directories). A run folder's entry that is a
    symlink out of it is never read: with `refused`, it is kept in the list (so it is reported) and
    refused[path] says why; without, it is left out."""
    out: list[str] = []
    for item in inputs:
        if any(c in item for c in "*?[") and not fs.is_url(item) and not os.path.exists(item):
            hits = sorted(glob.glob(item))
            if not hits:
                raise UsageError(item, "glob matches no file")
            out += hits
        elif fs.isdir(item) and (not is_model_dir(item) or _also_holds_others(item)):
            found = []
            for e in fs.listdir(item):
                if not fs.inside_model_folder(e, item):
                    # as in a model folder, an entry that is a symlink out of the run folder is not followed
                    # (it would read another run's, or any, file under this run's step names)
                    if refused is not None and _is_ckpt_name(e):
                        refused[e] = OUTSIDE
                        found.append(e)
                elif (not fs.isdir(e) and _is_ckpt_name(e) and not _NOT_WEIGHTS.fullmatch(fs.basename(e))) or (
                        fs.isdir(e) and is_model_dir(e)):
                    found.append(e)
            if not found:
                raise UsageError(item, "directory holds no checkpoints")
            out += found
        elif fs.isdir(item):
            files = find_in_dir(item)
            # a run folder holding its first checkpoint so far: that file (its name has the step), not the folder
            single = len(files) == 1 and not files[0].endswith(".index.json")
            out.append(files[0] if single else item)
        else:
            out.append(item)
    return out


# Files a training run saves beside its weights that hold no model: a Hugging Face Trainer checkpoint-N
# folder's optimizer, scheduler, scaler, RNG state and arguments, Accelerate's save_state (optimizer.bin,
# scheduler.bin, sampler.bin, random_states_0.pkl). Never a step of a run.
_NOT_WEIGHTS = re.compile(r"(optimizer|scheduler|scaler|sampler)(_\d+)?\.(pt|pth|bin)|training_args\.bin|"
                          r"rng_state(_\d+)?\.pth|random_states(_\d+)?\.pkl", re.I)


def _also_holds_others(folder: str) -> bool:
    """Whether a folder that reads as one checkpoint (one safetensors file, say) also holds other
    checkpoints named as steps (epoch1.pt, step_500.pt): then `trend` reads it as a run folder, each file a
    step, rather than the one model and nothing of the rest. Files without a step in their name (the same
    weights as adapter_model.bin or diffusion_pytorch_model.bin, an optimizer) keep it one checkpoint."""
    files = set(find_in_dir(folder))
    if not files or any(f.endswith(".index.json") for f in files):
        return False
    for e in fs.listdir(folder):
        if e in files or fs.isdir(e) or not _is_ckpt_name(e) or _NOT_WEIGHTS.fullmatch(fs.basename(e)):
            continue
        if step_from_name(e) is not None:
            return True
    return False


def _is_ckpt_name(path: str) -> bool:
    name = path.lower()
    return name.endswith(tuple(EXTENSIONS)) or name.endswith(".weights.h5")


@dataclass
class TrendPoint:
    path: str
    label: str
    step: int | None
    step_source: str | None
    format: str | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)  # the checkpoint's own (refused globals, skipped data)

    @property
    def display(self) -> str:
        return f"{self.step_source} {self.step}" if self.step is not None else self.label


@dataclass
class LayerTrend:
    name: str
    series: dict[str, list[float | None]]
    change_first: dict[str, float | None]
    change_prev: dict[str, float | None]
    ridgeline: list[Histogram | None] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # per checkpoint, the exact finite_count/min/max/mean/l2_norm of the values each ridgeline row bins
    # (TensorBoard's histogram min, max and sums); not in the JSON, which has the layer's series
    ridge_stats: list[dict[str, Any] | None] = field(default_factory=list, repr=False)
    # why a change is null although both its values are there: {"change_first": {metric: reason}, "change_prev":
    # {...}}; the reason is FROM_ZERO, a relative change from 0 (undefined; the text says "from 0")
    change_undefined: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass
class TrendReport(ReportMixin):
    checkpoints: list[TrendPoint]
    order: str
    metrics: list[str]
    layers: list[LayerTrend]
    tensors: dict[str, dict[str, list[float | None]]]
    model: dict[str, list[float | None]]
    notes: list[str]
    errors: int
    spectral: dict[str, dict[str, list[float | None]]] | None = None  # metric -> layer -> series (--spectral)

    SCHEMA = "wdist/trend/1"

    def x_steps(self) -> list[int]:
        """Where each checkpoint goes on a step axis (TensorBoard, charts): its step when every checkpoint
        has one, else every checkpoint at its position 1, 2, ... (a mix would put them out of run order)."""
        if all(p.step is not None for p in self.checkpoints):
            return [int(p.step) for p in self.checkpoints if p.step is not None]
        return list(range(1, len(self.checkpoints) + 1))

    def to_dict(self) -> dict[str, Any]:
        return {"schema": self.SCHEMA, "order": self.order, "metrics": list(self.metrics),
                "checkpoints": [{**jsonable(p), "path": fs.redact(p.path)} for p in self.checkpoints],
                "layers": [{"name": lt.name, "series": jsonable(lt.series), "change_first": jsonable(lt.change_first),
                            "change_prev": jsonable(lt.change_prev),
                            "change_undefined": {k: dict(lt.change_undefined.get(k, {}))
                                                 for k in ("change_first", "change_prev")},
                            "notes": list(lt.notes)} for lt in self.layers],
                "tensors": [{"name": n, "series": jsonable(s)} for n, s in self.tensors.items()],
                "model": {"series": jsonable(self.model)}, "notes": list(self.notes),
                **({"spectral": {"series": jsonable(self.spectral)}} if self.spectral is not None else {})}

    def rows(self, level: str | None = None) -> list[dict[str, Any]]:
        """Long format: one row per layer (or tensor, level="tensor") and checkpoint."""
        series = ({n: s for n, s in self.tensors.items()} if level == "tensor"
                  else {lt.name: lt.series for lt in self.layers})
        out = []
        for name, s in series.items():
            for i, p in enumerate(self.checkpoints):
                out.append({"name": name, "checkpoint": p.label, "step": p.step, "error": p.error,
                            **{m: jsonable(s[m][i]) for m in self.metrics}})
        return out

    def _html_title(self) -> str:
        n = len(self.checkpoints)
        return f"{n} checkpoint{'s' if n != 1 else ''}, ordered {self.order}"

    def _html_notes(self) -> list[str]:
        return list(self.notes)


def _labels(paths: list[str]) -> list[str]:
    """Each checkpoint's label: its file or folder name, or as many trailing path parts as it takes to tell
    apart checkpoints of the same name (r1/ckpt.pt and r2/ckpt.pt, not ckpt.pt twice). The label of a URL
    is taken after its credentials are masked (a signed URL's query is in its last path segment)."""
    parts = [os.path.normpath(fs.redact(p)).split(os.sep) for p in paths]
    depth = [1] * len(paths)
    while True:
        labels = ["/".join(ps[-d:]) for ps, d in zip(parts, depth)]
        seen: dict[str, list[int]] = {}
        for i, lab in enumerate(labels):
            seen.setdefault(lab, []).append(i)
        grow = [i for ids in seen.values() if len(ids) > 1 for i in ids if depth[i] < len(parts[i])]
        if not grow:
            return labels
        for i in grow:
            depth[i] += 1


def order_points(paths: list[str], given: bool) -> tuple[list[TrendPoint], str]:
    pts = []
    labels = _labels(paths)
    for p, label in zip(paths, labels):
        s = step_from_name(p)
        pts.append(TrendPoint(p, label, s[1] if s else None, s[0] if s else None))
    if given:
        return pts, "as given on the command line"
    if pts and all(p.step is not None for p in pts) and len({p.step_source for p in pts}) == 1:
        pts.sort(key=lambda p: (p.step, natural_key(p.label)))
        return pts, f"by {pts[0].step_source} number in the names"
    pts.sort(key=lambda p: natural_key(p.label))
    return pts, "natural order of the names"


# signed shape metrics change by absolute difference: a percent of a number near zero means nothing
SIGNED = frozenset({"kurtosis", "skewness", "mean", "min", "max"})
SETTLED = 0.005  # every tensor's L2 norm moved less than 0.5% over the last interval
MOVING = 0.02  # some tensor's L2 norm moved more than 2%


def change(metric: str, a: float | None, b: float | None) -> float | None:
    """How `metric` changed from a to b: b - a for signed shape metrics, else (b - a) / |a|."""
    if metric in SIGNED:
        return None if a is None or b is None else b - a
    return _rel(a, b)


def _rel(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    if a == 0:
        return None if b == 0 else math.inf
    return (b - a) / abs(a)


def run(paths: list[str], opts: Options, chosen: tuple[str, ...] = DEFAULT_METRICS, given: bool = False,
        input_format: str | None = None, progress: Callable[[int, int], None] | None = None,
        ridgeline: bool = True, refused: dict[str, str] | None = None) -> TrendReport:
    """The run's report; `refused` (from expand_inputs) names paths recorded as unreadable unopened."""
    for m in chosen:
        if m not in metrics.METRICS:
            raise UsageError(None, f"unknown metric {m!r}; choose from {', '.join(metrics.METRICS)}")
    points, order = order_points(paths, given)
    layer_series: dict[str, dict[str, list[float | None]]] = {}
    tensor_series: dict[str, dict[str, list[float | None]]] = {}
    model_series: dict[str, list[float | None]] = {m: [] for m in chosen}
    layer_summ: dict[str, list[Summary | None]] = {}
    tensor_l2: dict[str, list[float | None]] = {}  # every tensor's own L2 norm, for moving / settled
    tensor_layer: dict[str, str] = {}
    # per layer, the exactly-zero share of its weights/embeddings at each checkpoint: sparsity is read on
    # these only (a norm layer's beta or a bias at zero is its initial value, not sparsity)
    weight_zero: dict[str, list[float | None]] = {}
    non_finite: dict[str, list[int | None]] = {}  # per layer, its NaN + Inf count at each checkpoint
    # per layer, {tensor: (shape, dtype)} at each checkpoint (None where the layer is absent or unreadable)
    layout: dict[str, list[dict[str, tuple[tuple[int, ...], str]] | None]] = {}
    spectral: list[Any] = []  # one SpectralReport (or None) per checkpoint, with --spectral
    errors = 0
    for i, pt in enumerate(points):
        try:
            if refused and pt.path in refused:
                raise WdistError(pt.path, refused[pt.path])
            with open_checkpoint(pt.path, input_format) as ck:
                rep = analyse(ck, opts)
                pt.warnings = list(ck.warnings)
        except Exception as e:  # noqa: BLE001 - one hostile file must not hide the rest of the run
            if isinstance(e, UsageError) and e.path is None:
                raise  # a bad option, not a bad file
            pt.error = e.reason if isinstance(e, WdistError) else (f"{type(e).__name__}: {e}" if str(e)
                                                                    else type(e).__name__)
            errors += 1
            rep = None
        if rep is not None:
            pt.format = rep.checkpoint.format
            if pt.step is None and rep.checkpoint.step is not None:
                pt.step, pt.step_source = rep.checkpoint.step, "metadata"
        seen_layers = {lr.name: lr for lr in rep.layers} if rep else {}
        zeros: dict[str, list[int]] = {}  # layer -> [zeros, values] over its weights/embeddings
        for tr in rep.tensors if rep else []:
            if tr.reading is not None and tr.reading.group in WEIGHTY and tr.numel:
                acc = zeros.setdefault(tr.layer, [0, 0])
                acc[0] += round(tr.stats["zero_fraction"] * tr.numel)  # zeros / numel: exact back to a count
                acc[1] += tr.numel
        for name in list(layer_series) + [n for n in seen_layers if n not in layer_series]:
            if name not in layer_series:
                layer_series[name] = {m: [None] * i for m in chosen}
                layer_summ[name] = [None] * i
            lr = seen_layers.get(name)
            for m in chosen:
                layer_series[name][m].append(lr.stats.get(m) if lr else None)
            layer_summ[name].append(_for_ridge(lr.summary) if lr else None)
            z = zeros.get(name)
            weight_zero.setdefault(name, [None] * i).append(z[0] / z[1] if z else None)
            non_finite.setdefault(name, [None] * i).append(
                (lr.stats.get("nan_count") or 0) + (lr.stats.get("inf_count") or 0) if lr else None)
        seen_t = {t.name: t for t in rep.tensors} if rep else {}
        here: dict[str, dict[str, tuple[tuple[int, ...], str]]] = {}
        for tr in seen_t.values():
            here.setdefault(tr.layer, {})[tr.name] = (tuple(tr.shape), tr.dtype)
        for name in list(layout) + [n for n in here if n not in layout]:
            layout.setdefault(name, [None] * i).append(here.get(name))
        for name in list(tensor_l2) + [n for n in seen_t if n not in tensor_l2]:
            tensor_l2.setdefault(name, [None] * i).append(seen_t[name].stats.get("l2_norm") if name in seen_t else None)
            if name in seen_t:
                tensor_layer.setdefault(name, seen_t[name].layer)
        for name in list(tensor_series) + [n for n in seen_t if n not in tensor_series]:
            if name not in tensor_series:
                tensor_series[name] = {m: [None] * i for m in chosen}
            t = seen_t.get(name)
            for m in chosen:
                tensor_series[name][m].append(t.stats.get(m) if t else None)
        for m in chosen:
            model_series[m].append(rep.model.stats.get(m) if rep else None)
        spectral.append(getattr(rep, "spectral", None))
        if progress:
            progress(i + 1, len(points))
    layers = []
    readable = [i for i, p in enumerate(points) if not p.error]
    by_layer: dict[str, list[str]] = {}  # tensors of each layer, grouped once (not a scan per layer)
    for tname in tensor_l2:
        if tname in tensor_layer:
            by_layer.setdefault(tensor_layer[tname], []).append(tname)
    for name, series in layer_series.items():
        first, prev = _changes(series, readable)
        lt = LayerTrend(name, series, first, prev, change_undefined={"change_first": _undefined(first),
                                                                     "change_prev": _undefined(prev)})
        if ridgeline:
            lt.ridgeline = _ridge(layer_summ[name], opts.bins)
            lt.ridge_stats = [exact_stats(x) for x in layer_summ[name]]
        # the last interval between readable checkpoints: an unreadable last one must not hide the movement
        moves = [(t, _last_move([tensor_l2[t][i] for i in readable if i < len(tensor_l2[t])]))
                 for t in by_layer.get(name, [])]
        lt.notes = (_layout_notes(layout.get(name, []), points, readable)
                    + _layer_notes(lt, points, moves, weight_zero.get(name, []), non_finite.get(name, [])))
        layers.append(lt)
    report = TrendReport(points, order, list(chosen), layers, tensor_series, model_series,
                         _run_notes(layers, points), errors)
    if any(sp is not None for sp in spectral):
        from wdist.analyzers.spectral import SPECTRAL_METRICS
        from wdist.analyzers.spectral_report import spectral_series, spectral_trend_notes

        report.spectral = {m: spectral_series(spectral, m) for m in SPECTRAL_METRICS}
        report.notes += spectral_trend_notes(report.spectral["alpha"], [p.display for p in points])
    return report


FROM_ZERO = "from 0"  # why a relative change is null: its first value is 0 (and its last one is not)


def _undefined(changes: dict[str, float | None]) -> dict[str, str]:
    """The metrics whose change is undefined although both values are there, with why: a relative change
    from 0 (change() gives inf). Left as inf in the report, the JSON would hold null (JSON has no inf) and
    the text "from 0": a null that said nothing of why. Its changes are set to None here, in place."""
    out = {}
    for m, v in changes.items():
        if v is not None and math.isinf(v):
            out[m] = FROM_ZERO
            changes[m] = None
    return out


def _changes(series: dict[str, list[float | None]], readable: list[int]
             ) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """Change of each metric against the first and the previous *readable* checkpoint, so one unreadable
    checkpoint (even the last) does not blank every change. A relative change from 0 is inf here (see
    _undefined)."""
    first: dict[str, float | None] = {}
    prev: dict[str, float | None] = {}
    for m, s in series.items():
        vals = [s[i] for i in readable if i < len(s)]
        last = vals[-1] if vals else None
        first[m] = change(m, next((v for v in vals if v is not None), None), last)
        prev[m] = change(m, vals[-2], last) if len(vals) > 1 else None
    return first, prev


def _for_ridge(s: Summary | None) -> Summary | None:
    """What the ridgeline needs of a layer's summary, kept for every checkpoint: its packed histogram and
    moments, without the kept values (up to 256 KB per layer and checkpoint)."""
    if s is None or s.sample is None:
        return s
    out = copy.copy(s)
    out.sample = None
    return out


def exact_stats(s: Summary | None) -> dict[str, Any] | None:
    """finite_count/min/max/mean/l2_norm of a summary's finite values, from its fields."""
    if s is None or not s.n:
        return None
    return {"finite_count": s.n, "min": s.min, "max": s.max, "mean": s.mean, "l2_norm": math.sqrt(s.sumsq)}


def _ridge(summ: list[Summary | None], bins: int) -> list[Histogram | None]:
    """Each step's histogram on edges shared by all steps, so the rows are comparable."""
    # packed summaries are read as they are: unpacking each in place would keep a dense 512 KB histogram
    # per layer and checkpoint alive
    full = summ
    p999 = [metrics.compute(s, metrics.NearZero()).get("abs_p999") for s in full if s is not None and s.n]
    mx = max((max(abs(s.min), abs(s.max)) for s in full if s is not None and s.n), default=1.0)
    half = histogram.symmetric_range(*p999, max_abs=mx)
    return [histogram.linear(s.hist, s.exact_bins, half, bins) if s is not None and s.n else None for s in full]


def _label(points: list[TrendPoint], i: int) -> str:
    return points[i].display


def _last_move(vals: list[float | None]) -> tuple[float, float] | None:
    """(relative L2 change over the last interval, last L2) of a tensor; the change is inf when the L2
    norm left exactly 0 (a beta or bias moving off its zero init)."""
    if len(vals) >= 2 and vals[-1] is not None and vals[-2] is not None:
        if vals[-2] == vals[-1] == 0:  # exactly zero throughout (a zero bias, beta): it did not move
            return (0.0, 0.0)
        r = _rel(vals[-2], vals[-1])
        return None if r is None else (r, vals[-1])
    return None


def _layout_notes(layout: list[dict[str, tuple[tuple[int, ...], str]] | None], points: list[TrendPoint],
                  readable: list[int]) -> list[str]:
    """What diff reports and a series of numbers hides: a layer absent from some readable checkpoints
    (appeared later, removed, renamed), and a tensor of it that changed shape or dtype between two."""
    out: list[str] = []
    at = [(i, layout[i] if i < len(layout) else None) for i in readable]
    missing = [i for i, x in at if x is None]
    if missing and len(missing) < len(at):
        out.append(f"not in every checkpoint: absent at {some_names([_label(points, i) for i in missing])}")
    changes: list[str] = []
    present = [(i, x) for i, x in at if x is not None]
    for (_, a), (j, b) in zip(present, present[1:]):
        for t in sorted(set(a) | set(b)):
            if t not in a:
                changes.append(f"{t} added at {_label(points, j)}")
            elif t not in b:
                changes.append(f"{t} gone at {_label(points, j)}")
            elif a[t] != b[t]:
                (sa, da), (sb, db) = a[t], b[t]
                what = (f"{list(sa)} -> {list(sb)}" if sa != sb else "") + \
                       (f"{' ' if sa != sb else ''}{da} -> {db}" if da != db else "")
                changes.append(f"{t} {what} at {_label(points, j)}")
    if changes:
        out.append(f"tensors changed: {some_names(changes, sep='; ')} (the series mix them)")
    return out


def _layer_notes(lt: LayerTrend, points: list[TrendPoint], moves: list[tuple[str, tuple[float, float] | None]],
                 weight_zero: list[float | None] | None = None, non_finite: list[int | None] | None = None
                 ) -> list[str]:
    """Moving / settled from each tensor's own L2 change (the largest over the layer's tensors), so a
    norm layer's gamma ~ 1 cannot hide its beta moving; sparsity from the layer's weights/embeddings;
    NaN/Inf from the first checkpoint that has any (its metrics are then undefined: the table shows -)."""
    out = []
    bad = next(((i, v) for i, v in enumerate(non_finite or []) if v), None)
    if bad is not None:
        out.append(f"non-finite values: {bad[1]:,} NaN/Inf at {_label(points, bad[0])}")
    s = lt.series
    known = [(t, m) for t, m in moves if m is not None]
    if known and len(known) == len(moves):
        t, (r, l2) = max(known, key=lambda tm: abs(tm[1][0]))
        who = f" ({t})" if len(known) > 1 else ""
        if abs(r) < SETTLED:
            out.append("settled: every tensor's L2 norm changed <0.5% over the last interval")
        elif math.isinf(r):
            out.append(f"still moving: L2 norm went from 0 to {l2:.3g}{who} over the last interval")
        elif abs(r) > MOVING:
            out.append(f"still moving: L2 norm changed {r:+.1%}{who} over the last interval")
    if "kurtosis" in s:
        ks = s["kurtosis"]
        start = next((v for v in ks if v is not None), None)
        last = next((v for v in reversed(ks) if v is not None), None)
        if start is not None and last is not None and start < -0.8 and -0.5 < last <= 5:
            out.append(f"left its uniform initialisation shape: kurtosis {start:.2f} -> {last:.2f} (a normal is 0, "
                       "a Laplace 3)")
        for i, v in enumerate(ks):
            if v is not None and v > 5 and (start is None or start <= 3):
                out.append(f"grew a heavy tail: kurtosis {start:.2f} -> {v:.1f} by {_label(points, i)}"
                           if start is not None else f"heavy-tailed by {_label(points, i)}")
                break
    if "zero_fraction" in s and weight_zero:
        i0, start = next(((i, v) for i, v in enumerate(weight_zero) if v is not None), (0, None))
        if start is not None and start >= 0.5:
            out.append(f"sparse from the first checkpoint: {start:.0%} of its weights exactly zero at "
                       f"{_label(points, i0)}")
        else:
            for i, v in enumerate(weight_zero):
                if v is not None and v >= 0.5:
                    out.append(f"became sparse ({v:.0%} of its weights exactly zero) by {_label(points, i)}")
                    break
    if "near_zero_fraction" in s:
        nz = [v for v in s["near_zero_fraction"] if v is not None]
        if len(nz) >= 2 and nz[-1] - nz[0] > 0.1:
            out.append(f"near-zero share grew from {nz[0]:.0%} to {nz[-1]:.0%}")
    return out


def _run_notes(layers: list[LayerTrend], points: list[TrendPoint]) -> list[str]:
    out = []
    moving = [lt.name for lt in layers if any(n.startswith("still moving") for n in lt.notes)]
    settled = [lt.name for lt in layers if any(n.startswith("settled") for n in lt.notes)]
    heavy = [lt.name for lt in layers if any(n.startswith("grew a heavy tail") for n in lt.notes)]
    if moving:
        out.append(f"still moving at the last checkpoint: {_names(moving)}")
    if settled:
        out.append(f"settled: {_names(settled)}")
    if heavy:
        out.append(f"grew heavy tails during training: {_names(heavy)} — expected as trained weights "
                   "specialise; a concern only with NaN/Inf, exploding norms or dead units")
    bad = [p for p in points if p.error]
    if bad:
        out.append(f"{len(bad)} checkpoint{'s' if len(bad) != 1 else ''} could not be read: "
                   + "; ".join(f"{p.label}: {p.error}" for p in bad))
    return out


def _names(names: list[str]) -> str:
    """Every name (a reading never drops one), with the count first."""
    return f"{len(names)} layer{'s' if len(names) != 1 else ''}: " + ", ".join(names)


def _fingerprint(path: str) -> tuple | None:
    """(size, mtime) of a checkpoint file, or of every file of a model folder; None while it is incomplete
    (a sharded index naming a shard that is not there yet)."""
    try:
        if os.path.isdir(path):
            files = find_in_dir(path)
            if not files:
                return None
            if files[0].endswith(".index.json"):
                import json

                with open(files[0], encoding="utf-8") as f:
                    names = set(json.load(f).get("weight_map", {}).values())
                files = files + [os.path.join(path, str(n)) for n in sorted(names)]
            return tuple((f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files)
        st = os.stat(path)
        return ((path, st.st_size, st.st_mtime_ns),)
    except (OSError, ValueError, AttributeError):
        return None


def watch(source: str, poll: float = 5.0, settle: float = 2.0, stop: Callable[[], bool] | None = None,
          sleep: Callable[[float], None] | None = None, clock: Callable[[], float] | None = None
          ) -> Iterator[list[str]]:
    """Follow a training run: yield the list of complete checkpoints of `source` (a folder or glob) each
    time a new one is complete. A checkpoint counts as complete when its size and mtime (every shard's, for a
    sharded index) have not changed for `settle` seconds, so a file still being written is never read.
    A reported checkpoint whose size or mtime changes afterwards (a write that paused longer than `settle`,
    a file rewritten in place) counts as new again once it is stable, and is yielded again.
    Stops when `stop()` is true (and on KeyboardInterrupt, which the caller handles)."""
    import time

    sleep = sleep or time.sleep
    clock = clock or time.monotonic
    stable: dict[str, tuple[tuple, float]] = {}  # path -> (fingerprint, since when unchanged)
    done: list[str] = []
    done_fp: dict[str, tuple] = {}  # the fingerprint each reported checkpoint had when it was reported
    while not (stop and stop()):
        try:
            paths = expand_inputs([source])
        except UsageError:
            paths = []  # nothing there yet
        now = clock()
        new = False
        for p in paths:
            fp = _fingerprint(p)
            if p in done_fp:
                if fp is None or fp == done_fp[p]:
                    continue
                del done_fp[p]  # changed since it was reported: settle again, then report it again
                done.remove(p)
            if fp is None:
                stable.pop(p, None)
                continue
            old = stable.get(p)
            if old is None or old[0] != fp:
                stable[p] = (fp, now)
            elif now - old[1] >= settle:
                done.append(p)
                done_fp[p] = fp
                new = True
        if new:
            # only what the folder still lists: a reported file replaced by a symlink out of the folder
            # must not be read again under its old name
            listed = set(paths)
            done = [p for p in done if p in listed]
            done_fp = {p: f for p, f in done_fp.items() if p in listed}
            yield list(done)
        sleep(poll)
