"""`inspect`: per-tensor, per-layer and whole-model metrics from one streaming pass."""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wdist.analyzers import bins as bins_mod
from wdist.analyzers import histogram, inits, metrics, verdict
from wdist.analyzers.cache import tensor_key
from wdist.analyzers.engine import (
    cached_map,
    join_parts,
    pack,
    pack_part,
    summarize_range,
    tensor_ranges,
)
from wdist.analyzers.histogram import Histogram
from wdist.analyzers.metrics import NearZero
from wdist.analyzers.report import Items, ReportMixin, jsonable
from wdist.analyzers.summary import NBINS, SAMPLE_MAX, Part, Summary
from wdist.analyzers.verdict import ModelReading, Reading
from wdist.loaders import fs
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
    engine: Any = field(default=None, repr=False)  # analyzers.engine.DaskEngine: run on a Dask cluster
    cache: Any = field(default=None, repr=False)  # analyzers.cache.SummaryCache: skip unchanged tensors
    spectral: Any = field(default=None, repr=False)  # analyzers.spectral.SpectralOptions: add the ESD metrics

    def as_dict(self) -> dict[str, Any]:
        return {"roles": [r.value for r in self.roles], "layers": list(self.layers),
                "near_zero_rel": None if self.near_zero.abs is not None else self.near_zero.rel,
                "near_zero_abs": self.near_zero.abs, "bins": self.bins,
                **({"spectral": dataclasses.asdict(self.spectral)} if self.spectral is not None else {})}


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
    reading: Reading | None = None


@dataclass
class LayerReport:
    name: str
    parameters: int
    tensors: list[str]
    stats: dict[str, Any]
    histogram: Histogram | None
    log_histogram: Histogram | None
    notes: list[str]
    reading: Reading | None = None
    # packed; the layer's shape group only (its weights, or gamma apart from beta): for trend and plots
    summary: Summary | None = field(default=None, repr=False)


@dataclass
class ModelReport:
    stats: dict[str, Any]
    by_role: dict[str, dict[str, Any]]
    notes: list[str]
    summary: str
    reading: ModelReading | None = None
    by_group: dict[str, dict[str, Any]] = field(default_factory=dict)
    tensors: int = 0  # how many tensors `stats` pools (the parameter groups; see analyse)


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
class InspectReport(ReportMixin):
    checkpoint: CheckpointInfo
    options: dict[str, Any]
    tensors: list[TensorReport]
    layers: list[LayerReport]
    model: ModelReport
    skipped: list[str]  # selected tensors not analysed (not floating point)
    spectral: Any = None  # analyzers.spectral_report.SpectralReport with --spectral

    SCHEMA = "wdist/inspect/1"

    @property
    def reading(self) -> ModelReading | None:
        """The model's verdict (state, shape, flags, evidence)."""
        return self.model.reading

    def _json_members(self) -> Iterator[tuple[str, Any]]:
        """to_dict()'s members, the tensors and layers as Items: iter_json writes them one at a time."""
        yield "schema", self.SCHEMA
        yield "checkpoint", jsonable(self.checkpoint)
        yield "options", jsonable(self.options)
        yield "tensors", Items(lambda: map(jsonable, self.tensors))
        yield "layers", Items(lambda: map(jsonable, self.layers))
        yield "model", jsonable(self.model)
        yield "skipped", list(self.skipped)
        if self.spectral is not None:
            yield "spectral", self.spectral.to_dict()

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v.make()) if isinstance(v, Items) else v for k, v in self._json_members()}

    def rows(self, level: str | None = None) -> list[dict[str, Any]]:
        """One row per layer (default) or per tensor (level="tensor"): name, sizes, verdict, every metric."""
        if level not in (None, "layer", "tensor"):
            raise UsageError(None, f"level must be 'layer' or 'tensor', not {level!r}")
        out = []
        for r in self.tensors if level == "tensor" else self.layers:
            row: dict[str, Any] = {"name": r.name}
            if isinstance(r, TensorReport):
                row.update(layer=r.layer, role=r.role, shape=list(r.shape), dtype=r.dtype, numel=r.numel)
            else:
                row.update(parameters=r.parameters, tensors=len(r.tensors))
            rd = getattr(r, "reading", None)
            row["shape_verdict"] = getattr(rd, "shape", None)
            row["flags"] = list(getattr(rd, "flags", []) or [])
            row.update(jsonable(r.stats))
            out.append(row)
        return out

    def _html_title(self) -> str:
        ck = self.checkpoint
        rd = self.model.reading
        state = f"; reading: {rd.state}, {rd.shape}" if rd is not None else ""
        return f"{ck.path} ({ck.format}): {ck.parameters:,} parameters in {ck.tensors} tensors{state}"

    def _html_notes(self) -> list[str]:
        return [*self.model.notes, self.model.summary]


def checkpoint_info(ck: Checkpoint) -> CheckpointInfo:
    by_role: dict[str, int] = {}
    by_dtype: dict[str, int] = {}
    for t in ck.tensors:
        by_role[t.role.value] = by_role.get(t.role.value, 0) + t.numel
        by_dtype[t.dtype] = by_dtype.get(t.dtype, 0) + t.numel
    meta = {k: v for k, v in ck.metadata.items() if isinstance(v, (str, int, float))}
    return CheckpointInfo(fs.redact(ck.path), ck.format, ck.variant, len(ck.tensors), ck.parameters, ck.nbytes,
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


# Up to this many finite values, a tensor's occupied bins come from its kept values (sorting a few values
# beats scanning 65,536 bins); both give the same counts, as the histogram is of exactly those values.
_FROM_SAMPLE = 4096
# A pool compacts its sparse pieces when they hold more entries than this (amortised: the limit doubles
# with the compacted size), and turns dense once a quarter of the bins are occupied.
_COMPACT = 4096


def _sparsify(s: Summary) -> Summary:
    """Hold a tensor's histogram packed (occupied bins only): every later step then costs per occupied
    bin, and nothing dense stays alive per tensor."""
    if s.hist.ndim == 2:
        return s
    if s.sample is not None and s.sample.size == s.n and s.n <= _FROM_SAMPLE:
        idx, cnt = bins_mod.sample_bins(s.sample)
    else:
        idx, cnt = bins_mod.occupied(s.hist)
    s.hist = np.array((idx.astype(np.int64, copy=False), cnt.astype(np.int64, copy=False)))
    return s


class _Pool:
    """A running merge of summaries: Summary.merge in the same order (identical moments, counts and
    sample rules), with the histogram held sparse while few bins are occupied, so that thousands of open
    layers cost a few KB each instead of a dense 512 KB histogram each."""

    __slots__ = ("acc", "_stand_in", "_idx", "_cnt", "_pending", "_limit", "_dense", "_samples", "_nsample")

    def __init__(self) -> None:
        self.acc = Summary(hist=np.zeros(0, dtype=np.int64))
        self._stand_in = np.zeros(0, dtype=np.int64)  # what Summary.merge adds while the real one is apart
        self._idx: list[np.ndarray] = []
        self._cnt: list[np.ndarray] = []
        self._pending = 0
        self._limit = _COMPACT
        self._dense: np.ndarray | None = None
        self._samples: list[np.ndarray] | None = []
        self._nsample = 0

    def add(self, o: Summary) -> None:
        hist, sample = o.hist, o.sample
        o.hist, o.sample = self._stand_in, None
        try:
            self.acc.merge(o)
        finally:
            o.hist, o.sample = hist, sample
        idx, cnt = bins_mod.occupied(hist)
        if self._dense is not None:
            self._dense[idx] += cnt  # indices are unique within one histogram
        elif idx.size:
            self._idx.append(idx)
            self._cnt.append(cnt)
            self._pending += idx.size
            if self._pending > self._limit:
                self._compact()
        # Summary.merge keeps the values while the total stays within SAMPLE_MAX, and never after
        if self._samples is not None:
            if sample is None or self._nsample + sample.size > SAMPLE_MAX:
                self._samples = None
            elif sample.size:
                self._samples.append(sample)
                self._nsample += sample.size

    def _compact(self) -> tuple[np.ndarray, np.ndarray]:
        if len(self._idx) == 1:
            return self._idx[0], self._cnt[0]
        if not self._idx:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        idx, cnt = bins_mod.merge_sparse(np.concatenate(self._idx), np.concatenate(self._cnt))
        if idx.size >= NBINS // 4:
            self._dense = np.zeros(NBINS, dtype=np.int64)
            self._dense[idx] = cnt
            self._idx, self._cnt = [], []
        else:
            self._idx, self._cnt = [idx], [cnt]
            self._limit = max(_COMPACT, 2 * idx.size)
        self._pending = idx.size
        return idx, cnt

    def summary(self) -> Summary:
        """The merged summary, its histogram in engine.pack's form (ends the pool)."""
        s = self.acc
        if self._dense is None:
            idx, cnt = self._compact()
        s.hist = self._dense if self._dense is not None else bins_mod.packed(idx, cnt)
        if self._samples is None:
            s.sample = None
        else:
            s.sample = np.concatenate(self._samples) if self._samples else np.zeros(0, dtype=np.float32)
        return s


def _pool(pools: dict[str, _Pool], key: str) -> _Pool:
    """pools[key], made when missing (not setdefault's: that would build a pool per call)."""
    p = pools.get(key)
    if p is None:
        p = pools[key] = _Pool()
    return p


def _work(ref: TensorRef, chunk: int, lo: int, hi: int) -> Part:
    """One task: elements [lo, hi) of a tensor (all of it unless it is large)."""
    return pack_part(summarize_range(ref, lo, hi, chunk))


def summaries(refs: list[TensorRef], opts: Options, progress: Progress | None = None) -> Iterable[Summary]:
    """Each ref's Summary in order: from the summary cache when the tensor is unchanged, else computed (in
    worker processes or on the Dask engine when that pays), large tensors as several element-range tasks."""
    def tasks(item: tuple[TensorRef, int]) -> list[tuple[TensorRef, int, int, int]]:
        ref, chunk = item
        return [(ref, chunk, lo, hi) for lo, hi in tensor_ranges(ref)]

    def join(parts: list[Part]) -> tuple[Summary]:
        return (pack(join_parts(parts)),)

    keys: list[dict[str, Any] | None] = ([tensor_key(r, opts.chunk) for r in refs] if opts.cache is not None
                                         else [None] * len(refs))
    done = 0
    items = [(r, opts.chunk) for r in refs]
    results = cached_map(_work, items, keys, (Summary,), opts.jobs, [r.nbytes for r in refs], opts.engine,
                         opts.cache, split=tasks, join=join)
    for i, (s,) in enumerate(results):
        done += refs[i].nbytes
        if progress:
            progress(done, i + 1)
        yield s  # histogram packed (engine.pack): the pools and metrics take it as it is


_PARAM_GROUPS = ("weight", "embedding", "bias", "norm_scale", "norm_shift")
# what an open layer keeps of each member until the layer completes: its ref, reading, stats, histograms
_Member = tuple[TensorRef, Reading, dict[str, Any], Histogram | None, Histogram | None]


def _merged(parts: Iterable[Summary]) -> Summary:
    pool = _Pool()
    for p in parts:
        pool.add(p)
    return pool.summary()


def _with_counts(shape_stats: dict[str, Any], all_stats: dict[str, Any]) -> dict[str, Any]:
    """Shape-group numbers, with problem counts (NaN/Inf, dead units) over every member."""
    out = dict(shape_stats)
    for k in ("nan_count", "inf_count", "finite_count", "dead_units", "units"):
        out[k] = all_stats.get(k)
    return out


def _shape_group(groups: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """Which members a pooled shape is judged on: weights/embeddings if any, else a norm's scale (gamma),
    else the first group. Never file order between gamma and beta: safetensors stores names sorted, so
    `bn.bias` comes before `bn.weight` there and after it in a torch file."""
    weighty = tuple(g for g in verdict.WEIGHTY if g in groups)
    if weighty:
        return weighty[0], weighty
    if "norm_scale" in groups:
        return "norm_scale", ("norm_scale",)
    return groups[0], (groups[0],)


def _bias_fans(refs: Sequence[TensorRef], keras: bool) -> dict[str, int]:
    """fan_in of each layer's weight, for judging its bias against PyTorch's default bias init; for a
    torch.nn.RNN/GRU/LSTM (or its cell) layer the hidden size, as its biases are U(±1/√hidden): the input
    dim of weight_hr (LSTM with proj_size) or else of weight_hh, not weight_ih's input size."""
    out: dict[str, int] = {}
    hidden: dict[str, int] = {}
    for t in refs:
        if t.role is not Role.WEIGHT or len(t.shape) < 2 or keras:
            continue
        p = t.name.rsplit(".", 1)[-1]
        if p.startswith("weight_hr") or (p.startswith("weight_hh") and t.layer not in hidden):
            hidden[t.layer] = t.shape[1]
    for t in refs:
        if t.role is Role.WEIGHT and len(t.shape) >= 2 and t.layer not in out:
            f = inits.fans(t.shape, keras)
            if f:
                out[t.layer] = f[0]
    out.update(hidden)
    return out


def _step(ck: Checkpoint) -> tuple[str, int] | None:
    for key in ("global_step", "step", "epoch"):
        v = ck.metadata.get(key)
        if isinstance(v, int) and not isinstance(v, bool):
            return key, v
    return None


def analyse(ck: Checkpoint, opts: Options | None = None, progress: Progress | None = None) -> InspectReport:
    opts = opts or Options()
    chosen = select(ck, opts.roles, opts.layers)
    refs = [t for t in chosen if t.is_float]
    skipped = [t.name for t in chosen if not t.is_float]
    keras = ck.format.startswith("keras")
    bias_fans = _bias_fans(refs, keras)
    remaining: dict[str, int] = {}
    for t in refs:
        remaining[t.layer] = remaining.get(t.layer, 0) + 1
    layer_groups: dict[str, dict[str, _Pool]] = {}  # per layer, one running summary per judgement group
    layer_members: dict[str, list[_Member]] = {}
    group_pool: dict[str, _Pool] = {}
    role_pool: dict[str, _Pool] = {}
    tensor_at: dict[int, TensorReport] = {}
    layers: dict[str, LayerReport] = {}
    judged_at: dict[int, tuple[Reading, int]] = {}
    # Summaries are pooled in name order, not file order: a merge's last bits depend on its order, and the
    # same weights saved by torch.save and by safetensors (which sorts by dtype, then name) must give the
    # same layer, group and model numbers to the last bit. The report keeps the file's order.
    order = sorted(range(len(refs)), key=lambda i: refs[i].name)
    at = {id(refs[i]): i for i in order}
    in_order = [refs[i] for i in order]
    for ref, s in zip(in_order, summaries(in_order, opts, progress)):
        _sparsify(s)
        ab = metrics.abs_bins(s)
        fresh = not s.finalised  # finalise counts the near-zero values with these options now
        metrics.finalise(s, opts.near_zero, ab)
        st = metrics.compute(s, opts.near_zero, ab, s.near_zero if fresh else None)
        h, lh = _hists(s, opts.bins, st)
        r = verdict.judge_tensor(ref.name, ref.role.value, ref.shape, s, st, keras, bias_fans.get(ref.layer))
        pos = at[id(ref)]
        tensor_at[pos] = TensorReport(ref.name, ref.layer, ref.role.value, list(ref.shape), ref.dtype, ref.numel,
                                      st, h, lh, verdict.notes(r, st), list(ref.aliases), r)
        judged_at[pos] = (r, ref.numel)
        # step counters and other scalars are never pooled with anything
        if r.group != "optimizer_scalar":
            _pool(role_pool, ref.role.value).add(s)
        _pool(group_pool, r.group).add(s)
        lg = layer_groups.get(ref.layer)
        if lg is None:
            lg = layer_groups[ref.layer] = {}
        _pool(lg, r.group).add(s)
        layer_members.setdefault(ref.layer, []).append((ref, r, st, h, lh))
        remaining[ref.layer] -= 1
        if remaining[ref.layer] == 0:  # finalise a layer as soon as its last tensor is in: bounded memory
            groups = {g: p.summary() for g, p in layer_groups.pop(ref.layer).items()}
            members = sorted(layer_members.pop(ref.layer), key=lambda m: at[id(m[0])])  # listed in file order
            layers[ref.layer] = _layer(ref.layer, groups, members, opts)
    tensors = [tensor_at[i] for i in range(len(refs))]
    judged = [judged_at[i] for i in range(len(refs))]
    role_acc = {k: p.summary() for k, p in role_pool.items()}
    group_acc = {k: p.summary() for k, p in group_pool.items()}
    params = [group_acc[g] for g in _PARAM_GROUPS if g in group_acc]
    model_sum = _merged(params or [v for g, v in group_acc.items() if g != "optimizer_scalar"]
                        or list(group_acc.values()))
    mst = metrics.compute(model_sum, opts.near_zero)
    by_role = {r: metrics.compute(s, opts.near_zero) for r, s in role_acc.items()}
    by_group = {g: metrics.compute(s, opts.near_zero) for g, s in group_acc.items()}
    ordered_layers = [layers[name] for name in dict.fromkeys(t.layer for t in refs)]
    # the question is about weights: norm scales (~1) and biases would blur the pooled shape
    wgroups = [g for g in verdict.WEIGHTY if g in group_acc]
    if wgroups:
        weights = _merged(group_acc[g] for g in wgroups)
        wmembers = [(r, n) for r, n in judged if r.group in verdict.WEIGHTY]
        wgroup = "weight"
    else:
        weights, wmembers, wgroup = model_sum, [(r, n) for r, n in judged if r.group != "optimizer_scalar"], "other"
    wst = metrics.compute(weights, opts.near_zero) if weights.n else mst
    shape_r = verdict.judge_pool(wmembers, wmembers, weights, wst, wgroup)
    n_opt = sum(1 for t in ck.tensors if t.role is Role.OPTIMIZER_STATE)
    mr = verdict.judge_model(judged, shape_r, _step(ck), n_opt)
    model_r = Reading(mr.shape, mr.flags, shape_r.group, shape_r.kurtosis, shape_r.nonzero_shape,
                      shape_r.nonzero_kurtosis, shape_r.pruning_gap, ", ".join(mr.init_schemes) or None,
                      pruning_gap_members=shape_r.pruning_gap_members)
    layer_view = [(lr.name, lr.reading, lr.stats) for lr in ordered_layers if lr.reading is not None]
    rel = None if opts.near_zero.abs is not None else opts.near_zero.rel
    para = verdict.summary_paragraph(mr, shape_r, wst, mst, rel, layer_view)
    mnotes = verdict.notes(model_r, _with_counts(wst, mst), pooled=True)
    model = ModelReport(mst, by_role, mnotes, para, mr, by_group, model_sum.tensors)
    report = InspectReport(checkpoint_info(ck), opts.as_dict(), tensors, ordered_layers, model, skipped)
    if opts.spectral is not None:  # opt-in: a Gram pass over every weight matrix, costlier than the moments
        from wdist.analyzers.spectral_report import spectral_report

        report.spectral = spectral_report(ck, chosen, opts.spectral, opts.jobs, opts.engine)
    return report


def _layer(name: str, groups: dict[str, Summary], members: list[_Member], opts: Options) -> LayerReport:
    if len(members) == 1:  # a one-tensor layer reads exactly as its tensor (the same histograms too)
        ref, r, st, h, lh = members[0]
        s = next(iter(groups.values()))
        return LayerReport(name, ref.numel, [ref.name], st, h, lh, verdict.notes(r, st), r, s)
    # merged in a fixed order of the group names, not file order: the pooled moments' last bits would
    # otherwise differ between a .pt and the same weights in safetensors (which stores bias before weight)
    pooled = sorted(g for g in groups if g != "optimizer_scalar") or sorted(groups)
    all_sum = groups[pooled[0]] if len(pooled) == 1 else _merged(groups[g] for g in pooled)
    lst = metrics.compute(all_sum, opts.near_zero)
    gname, chosen = _shape_group(pooled)
    in_shape = [m for m in members if m[1].group in chosen]
    hists: tuple[Histogram | None, Histogram | None] | None = None
    if len(chosen) == len(pooled):
        shape_sum, sst = all_sum, lst
    else:
        shape_sum = groups[chosen[0]] if len(chosen) == 1 else _merged(groups[g] for g in chosen)
        if len(in_shape) == 1:  # the pool of one tensor reads exactly as that tensor: reuse its numbers
            sst, hists = in_shape[0][2], (in_shape[0][3], in_shape[0][4])
        else:
            sst = metrics.compute(shape_sum, opts.near_zero)
    shape_members = [(r, ref.numel) for ref, r, *_ in in_shape]
    r = verdict.judge_pool([(r, ref.numel) for ref, r, *_ in members], shape_members, shape_sum, sst, gname)
    h, lh = hists if hists is not None else _hists(shape_sum, opts.bins, sst)
    return LayerReport(name, sum(m[0].numel for m in members), [m[0].name for m in members], lst, h,
                       lh, verdict.notes(r, _with_counts(sst, lst), pooled=True), r, shape_sum)


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
