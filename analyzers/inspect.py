"""`inspect`: per-tensor, per-layer and whole-model metrics from one streaming pass."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wdist.analyzers import histogram, metrics, reading
from wdist.analyzers.engine import ordered_map, pack, summarize_tensor, unpack
from wdist.analyzers.histogram import Histogram
from wdist.analyzers.metrics import NearZero
from wdist.analyzers.summary import Summary
from wdist.loaders.errors import UsageError
from wdist.loaders.model import DEFAULT_CHUNK, DEFAULT_ROLES, Checkpoint, Role, TensorRef

Progress = Callable[[int, int], None]  # (bytes done, tensors done)


@dataclass
class Options:
    roles: tuple[Role, ...] = DEFAULT_ROLES
    layers: tuple[str, ...] = ()  # globs over layer or tensor names; empty = all
    near_zero: NearZero = field(default_factory=NearZero)
    bins: int = 64
    jobs: int = 0  # 0 = all cores
    chunk: int = DEFAULT_CHUNK

    def as_dict(self) -> dict[str, Any]:
        return {"roles": [r.value for r in self.roles], "layers": list(self.layers),
                "near_zero_rel": None if self.near_zero.abs is not None else self.near_zero.rel,
                "near_zero_abs": self.near_zero.abs, "bins": self.bins}


@dataclass
class TensorReport:
    name: str
    layer: str
    role: str
    shape: list[int]
    dtype: str
    numel: int
    stats: dict[str, Any]
    histogram: Histogram | None
    log_histogram: Histogram | None
    notes: list[str]
    aliases: list[str] = field(default_factory=list)


@dataclass
class LayerReport:
    name: str
    parameters: int
    tensors: list[str]
    stats: dict[str, Any]
    histogram: Histogram | None
    log_histogram: Histogram | None
    notes: list[str]
    summary: Summary | None = field(default=None, repr=False)  # packed; for trend and plots


@dataclass
class ModelReport:
    stats: dict[str, Any]
    by_role: dict[str, dict[str, Any]]
    notes: list[str]
    summary: str


@dataclass
class CheckpointInfo:
    path: str
    format: str
    variant: str
    tensors: int
    parameters: int
    bytes: int
    parameters_by_role: dict[str, int]
    parameters_by_dtype: dict[str, int]
    metadata: dict[str, Any]
    step: int | None
    unsafe_globals: list[str]
    warnings: list[str]


@dataclass
class InspectReport:
    checkpoint: CheckpointInfo
    options: dict[str, Any]
    tensors: list[TensorReport]
    layers: list[LayerReport]
    model: ModelReport
    skipped: list[str]  # selected tensors not analysed (not floating point)


def checkpoint_info(ck: Checkpoint) -> CheckpointInfo:
    by_role: dict[str, int] = {}
    by_dtype: dict[str, int] = {}
    for t in ck.tensors:
        by_role[t.role.value] = by_role.get(t.role.value, 0) + t.numel
        by_dtype[t.dtype] = by_dtype.get(t.dtype, 0) + t.numel
    meta = {k: v for k, v in ck.metadata.items() if isinstance(v, (str, int, float))}
    return CheckpointInfo(ck.path, ck.format, ck.variant, len(ck.tensors), ck.parameters, ck.nbytes,
                          by_role, by_dtype, meta, ck.step(), list(ck.unsafe_globals), list(ck.warnings))


def select(ck: Checkpoint, roles: Sequence[Role], globs: Sequence[str]) -> list[TensorRef]:
    out = []
    for t in ck.tensors:
        if t.role not in roles:
            continue
        if globs and not any(fnmatch.fnmatchcase(t.layer, g) or fnmatch.fnmatchcase(t.name, g) for g in globs):
            continue
        out.append(t)
    if globs and not out:
        raise UsageError(ck.path, f"--layers {' '.join(globs)} matches no tensor of the selected roles")
    return out


def _hists(s: Summary, bins: int, stats: dict[str, Any]) -> tuple[Histogram | None, Histogram | None]:
    if not s.n:
        return None, None
    max_abs = max(abs(s.min), abs(s.max))
    r = histogram.symmetric_range(stats.get("abs_p999"), max_abs=max_abs)
    return histogram.linear(s.hist, s.exact_bins, r, bins), histogram.log_abs(s.hist, s.exact_bins)


def _work(ref: TensorRef, chunk: int) -> Summary:
    return pack(summarize_tensor(ref, chunk))


def summaries(refs: list[TensorRef], jobs: int, chunk: int, progress: Progress | None = None) -> Iterable[Summary]:
    """Each ref's Summary in order, computed in worker processes when that pays."""
    total = sum(t.nbytes for t in refs)
    done = 0
    for i, s in enumerate(ordered_map(_work, ((r, chunk) for r in refs), jobs, total)):
        done += refs[i].nbytes
        if progress:
            progress(done, i + 1)
        yield unpack(s)


def analyse(ck: Checkpoint, opts: Options | None = None, progress: Progress | None = None) -> InspectReport:
    opts = opts or Options()
    chosen = select(ck, opts.roles, opts.layers)
    refs = [t for t in chosen if t.is_float]
    skipped = [t.name for t in chosen if not t.is_float]
    remaining: dict[str, int] = {}
    for t in refs:
        remaining[t.layer] = remaining.get(t.layer, 0) + 1
    layer_acc: dict[str, Summary] = {}
    layer_members: dict[str, list[TensorRef]] = {}
    role_acc: dict[str, Summary] = {}
    model_acc = Summary()
    tensors: list[TensorReport] = []
    layers: dict[str, LayerReport] = {}
    for ref, s in zip(refs, summaries(refs, opts.jobs, opts.chunk, progress)):
        st = metrics.compute(s, opts.near_zero)
        h, lh = _hists(s, opts.bins, st)
        tensors.append(TensorReport(ref.name, ref.layer, ref.role.value, list(ref.shape), ref.dtype, ref.numel, st,
                                    h, lh, reading.notes(st, ref.role.value), list(ref.aliases)))
        layer_acc.setdefault(ref.layer, Summary()).merge(s)
        layer_members.setdefault(ref.layer, []).append(ref)
        role_acc.setdefault(ref.role.value, Summary()).merge(s)
        model_acc.merge(s)
        remaining[ref.layer] -= 1
        if remaining[ref.layer] == 0:  # finalise a layer as soon as its last tensor is in: bounded memory
            acc = layer_acc.pop(ref.layer)
            members = layer_members.pop(ref.layer)
            lst = metrics.compute(acc, opts.near_zero)
            lh1, lh2 = _hists(acc, opts.bins, lst)
            role = members[0].role.value if len({m.role for m in members}) == 1 else None
            layers[ref.layer] = LayerReport(ref.layer, sum(m.numel for m in members), [m.name for m in members],
                                            lst, lh1, lh2, reading.notes(lst, role or "weight"), pack(acc))
    mst = metrics.compute(model_acc, opts.near_zero)
    by_role = {r: metrics.compute(s, opts.near_zero) for r, s in role_acc.items()}
    ordered_layers = [layers[name] for name in dict.fromkeys(t.layer for t in refs)]
    # the question is about weights: norm scales (~1) and biases would blur the pooled shape
    weights = Summary()
    for r in (Role.WEIGHT.value, Role.EMBEDDING.value):
        if r in role_acc:
            weights.merge(role_acc[r])
    wst = metrics.compute(weights, opts.near_zero) if weights.n else mst
    para = reading.summary_paragraph(wst, [(lr.name, lr.stats, lr.notes) for lr in ordered_layers])
    model = ModelReport(mst, by_role, reading.notes(wst, "weight"), para)
    return InspectReport(checkpoint_info(ck), opts.as_dict(), tensors, ordered_layers, model, skipped)


def sort_rows(rows: list[Any], metric: str | None, top: int | None) -> list[Any]:
    if metric:
        if metric not in metrics.METRICS and metric not in ("parameters", "name"):
            raise UsageError(None, f"unknown metric {metric!r} for --sort; choose from {', '.join(metrics.METRICS)}")

        def key(r: Any) -> Any:
            if metric == "name":
                return r.name
            if metric == "parameters":
                return getattr(r, "parameters", getattr(r, "numel", 0))
            v = r.stats.get(metric)
            return -np.inf if v is None else v

        rows = sorted(rows, key=key, reverse=metric != "name")
    return rows[:top] if top else rows
