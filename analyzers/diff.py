"""`diff`: align two checkpoints' tensors by name and measure how each moved, streaming both in step."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wdist.analyzers import distances, kernel, metrics
from wdist.analyzers.cache import tensor_key
from wdist.analyzers.engine import (
    TensorAccumulator,
    cached_map,
    join_parts,
    pack,
    pack_part,
    range_chunks,
    tensor_ranges,
    unpack,
)
from wdist.analyzers.inspect import CheckpointInfo, Options, Progress, checkpoint_info, select
from wdist.analyzers.report import ReportMixin, jsonable
from wdist.analyzers.summary import Part, Summary
from wdist.analyzers.verdict import group_of
from wdist.loaders.errors import UsageError
from wdist.loaders.model import Checkpoint, TensorRef

_WEIGHTY = ("weight", "embedding")  # groups whose histogram a layer shows first

CHANGE_METRICS = ("rel_l2_change", "cosine", "sign_flip_fraction", "changed_fraction", "max_abs_change",
                  "wasserstein", "ks")
PREFIXES = re.compile(r"^(?:module\.|model\.|_orig_mod\.|state_dict\.)+")


def canonical(name: str) -> str:
    """Name without wrapper prefixes (DataParallel `module.`, Lightning `model.`, torch.compile `_orig_mod.`)."""
    return PREFIXES.sub("", name)


@dataclass(frozen=True)
class Tolerance:
    """changed_fraction counts |b - a| > atol + rtol * |a| (numpy.isclose's defaults)."""

    rtol: float = 1e-5
    atol: float = 1e-8


@dataclass
class PairSums:
    """Exact running sums over elements finite in both tensors."""

    n: int = 0
    aa: float = 0.0
    bb: float = 0.0
    ab: float = 0.0
    dd: float = 0.0
    both_nonzero: int = 0
    flips: int = 0
    changed: int = 0
    max_abs: float = 0.0

    def plausible(self) -> bool:
        """Counts and sums that real pairs can give (what a cached entry must satisfy)."""
        counts = (self.n, self.both_nonzero, self.flips, self.changed)
        if any(c < 0 or c >= 1 << 62 for c in counts) or max(self.both_nonzero, self.changed) > self.n:
            return False
        sums = (self.aa, self.bb, self.ab, self.dd, self.max_abs)
        return (self.flips <= self.both_nonzero and all(math.isfinite(v) for v in sums) and self.aa >= 0
                and self.bb >= 0 and self.dd >= 0 and self.max_abs >= 0)

    def merge(self, o: PairSums) -> PairSums:
        self.n += o.n
        self.aa += o.aa
        self.bb += o.bb
        self.ab += o.ab
        self.dd += o.dd
        self.both_nonzero += o.both_nonzero
        self.flips += o.flips
        self.changed += o.changed
        self.max_abs = max(self.max_abs, o.max_abs)
        return self


def pair_chunk(a: np.ndarray, b: np.ndarray, tol: Tolerance) -> PairSums:
    """Exact float64 sums over the elements finite in both (the fused kernel, or its numpy reference), in
    fixed blocks reduced in a fixed tree: independent of threads and --jobs."""
    acc = kernel.PairAccumulator(tol.rtol, tol.atol)
    acc.add(a, b)
    return PairSums(*kernel.pair_fields(kernel.join_pairs([acc.subtrees()])))


def change_metrics(p: PairSums, sa: Summary, sb: Summary) -> dict[str, float | None]:
    """The change metrics of a pair (or a layer's pooled pairs), every one over the elements finite in
    both A and B (p.n of them), as the README defines them."""
    exact = sa.exact_bins and sb.exact_bins
    return {
        "rel_l2_change": math.sqrt(p.dd) / math.sqrt(p.aa) if p.aa > 0 else None,
        # clamped: rounding of the float64 sums can put an unchanged tensor's cosine at 1.0000000000000002
        "cosine": max(-1.0, min(1.0, p.ab / math.sqrt(p.aa * p.bb))) if p.aa > 0 and p.bb > 0 else None,
        "sign_flip_fraction": p.flips / p.both_nonzero if p.both_nonzero else None,
        "changed_fraction": p.changed / p.n if p.n else None,
        "max_abs_change": p.max_abs if p.n else None,
        "wasserstein": distances.wasserstein(sa.hist, sb.hist, exact, sa, sb),
        "ks": distances.ks(sa.hist, sb.hist, exact, sa, sb),
    }


def _pair_work(ra: TensorRef, rb: TensorRef, chunk: int, tol: Tolerance, lo: int = 0,
               hi: int | None = None) -> tuple[Part, Part, list[tuple[int, tuple[float, ...]]]]:
    """One task: elements [lo, hi) of a pair, each file read once, both sides and the pair sums fed from
    the same chunks."""
    hi = ra.numel if hi is None else hi
    acc_a, acc_b = TensorAccumulator(ra, lo), TensorAccumulator(rb, lo)
    pairs = kernel.PairAccumulator(tol.rtol, tol.atol)
    for (start, a), (_, b) in zip(range_chunks(ra, lo, hi, chunk, acc_a.align),
                                  range_chunks(rb, lo, hi, chunk, acc_a.align)):
        acc_a.add(start, a)
        acc_b.add(start, b)
        pairs.add(a, b)
    return pack_part(acc_a.part()), pack_part(acc_b.part()), pairs.subtrees()


@dataclass
class TensorDiff:
    name: str
    status: str  # matched | only_a | only_b | shape_changed | dtype_changed | not_float
    a_name: str | None
    b_name: str | None
    layer: str
    a: dict[str, Any] | None = None
    b: dict[str, Any] | None = None
    change: dict[str, Any] | None = None
    delta: dict[str, Any] | None = None
    shape_a: list[int] | None = None
    shape_b: list[int] | None = None
    dtype_a: str | None = None
    dtype_b: str | None = None


@dataclass
class LayerDiff:
    name: str
    parameters: int
    rel_l2_change: float | None
    cosine: float | None
    sign_flip_fraction: float | None
    changed_fraction: float | None
    max_abs_change: float | None
    notes: list[str] = field(default_factory=list)
    a_summary: Summary | None = field(default=None, repr=False)
    b_summary: Summary | None = field(default=None, repr=False)


@dataclass
class DiffReport(ReportMixin):
    a: CheckpointInfo
    b: CheckpointInfo
    options: dict[str, Any]
    tensors: list[TensorDiff]
    layers: list[LayerDiff]
    summary: dict[str, Any]
    notes: list[str]
    spectral: dict[str, Any] | None = None  # {"a": SpectralReport dict, "b": ..., "alpha_change": {layer: b - a}}

    SCHEMA = "wdist/diff/1"

    def to_dict(self) -> dict[str, Any]:
        return {"schema": self.SCHEMA, "a": jsonable(self.a), "b": jsonable(self.b), "options": jsonable(self.options),
                "tensors": [jsonable(t) for t in self.tensors], "layers": [jsonable(lr) for lr in self.layers],
                "summary": jsonable(self.summary), "notes": list(self.notes),
                **({"spectral": jsonable(self.spectral)} if self.spectral is not None else {})}

    def rows(self, level: str | None = None) -> list[dict[str, Any]]:
        """One row per layer (default) or per tensor (level="tensor") with the change metrics."""
        if level == "tensor":
            return [{"name": t.name, "status": t.status, "layer": t.layer, **jsonable(t.change or {})}
                    for t in self.tensors]
        return [{"name": lr.name, "parameters": lr.parameters, **{k: getattr(lr, k) for k in CHANGE_METRICS
                                                                  if hasattr(lr, k)}} for lr in self.layers]

    def _html_title(self) -> str:
        return f"{self.a.path} -> {self.b.path}: relative L2 change {self.summary.get('rel_l2_change')}"

    def _html_notes(self) -> list[str]:
        return list(self.notes)


def _delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in metrics.METRICS:
        va, vb = a.get(k), b.get(k)
        out[k] = None if va is None or vb is None else vb - va
    return out


def _align(ra: list[TensorRef], rb: list[TensorRef], notes: list[str] | None = None
           ) -> list[tuple[str, TensorRef | None, TensorRef | None]]:
    """(name, tensor of A, tensor of B) pairs by name without a wrapper prefix (module., model., ...). Where
    two tensors of one side read as one name without it (`fc.weight` and `module.fc.weight`), neither is
    dropped: they keep their full names (so only an exact name pairs with the other side), and `notes`
    says so."""
    def index(refs: list[TensorRef], side: str) -> dict[str, TensorRef]:
        by: dict[str, list[TensorRef]] = {}
        for t in refs:
            by.setdefault(canonical(t.name), []).append(t)
        out: dict[str, TensorRef] = {}
        for key, ts in by.items():
            if len(ts) == 1:
                out[key] = ts[0]
                continue
            for t in ts:
                if t.name != key and t.name in by:  # `module.module.x` next to `module.x`: no honest pairing
                    raise UsageError(None, f"{side}: tensor {t.name} and the tensors read as {t.name} without "
                                           "their prefix cannot be told apart")
                out[t.name] = t  # full names are distinct within a checkpoint
            if notes is not None:
                notes.append(f"{side}: {len(ts)} tensors read as {key} without their prefix "
                             f"({', '.join(t.name for t in ts)}): compared by their full names")
        return out

    ia, ib = index(ra, "A"), index(rb, "B")
    keys = list(ia) + [k for k in ib if k not in ia]
    return [(k, ia.get(k), ib.get(k)) for k in keys]


def compare(ck_a: Checkpoint, ck_b: Checkpoint, opts: Options | None = None, tol: Tolerance | None = None,
            progress: Progress | None = None) -> DiffReport:
    opts = opts or Options()
    tol = tol or Tolerance()
    clashes: list[str] = []
    pairs = _align(select(ck_a, opts.roles, opts.layers), select(ck_b, opts.roles, opts.layers), clashes)
    rows: list[TensorDiff] = []
    work: list[tuple[int, TensorRef, TensorRef]] = []
    for name, ta, tb in pairs:
        t0 = ta or tb
        assert t0 is not None
        layer = canonical(t0.layer) if name == canonical(t0.name) else t0.layer
        row = TensorDiff(name, "matched", ta.name if ta else None, tb.name if tb else None, layer,
                         shape_a=list(ta.shape) if ta else None, shape_b=list(tb.shape) if tb else None,
                         dtype_a=ta.dtype if ta else None, dtype_b=tb.dtype if tb else None)
        if ta is None:
            row.status = "only_b"
        elif tb is None:
            row.status = "only_a"
        elif ta.shape != tb.shape:
            row.status = "shape_changed"
        elif not (ta.is_float and tb.is_float):
            row.status = "not_float"
        else:
            if ta.dtype != tb.dtype:
                row.status = "dtype_changed"
            work.append((len(rows), ta, tb))
        rows.append(row)
    # layers listed in the order their first tensor is; sums pooled in name order, not file order (a merge's
    # last bits depend on its order: a .pt and the safetensors file of the same weights must diff alike)
    layer_order = list(dict.fromkeys(rows[i].layer for i, _, _ in work))
    work.sort(key=lambda w: rows[w[0]].name)
    layer_sums: dict[str, tuple[PairSums, Summary, Summary, int]] = {}
    hist_sums: dict[str, tuple[str, Summary, Summary]] = {}
    done = 0
    keys: list[dict[str, Any] | None] = []
    for _, a, b in work:
        ka = tensor_key(a, opts.chunk) if opts.cache is not None else None
        kb = tensor_key(b, opts.chunk) if ka is not None else None
        keys.append({"pair": [ka, kb], "rtol": tol.rtol, "atol": tol.atol} if ka and kb else None)

    def tasks(item: tuple[TensorRef, TensorRef, int, Tolerance]) -> list[tuple]:
        ra, rb, chunk, t = item
        return [(ra, rb, chunk, t, lo, hi) for lo, hi in tensor_ranges(ra, rb)]

    def join(parts: list[tuple[Part, Part, list]]) -> tuple[Summary, Summary, PairSums]:
        return (pack(join_parts([p[0] for p in parts])), pack(join_parts([p[1] for p in parts])),
                PairSums(*kernel.pair_fields(kernel.join_pairs([p[2] for p in parts]))))

    results = cached_map(_pair_work, [(a, b, opts.chunk, tol) for _, a, b in work], keys,
                         (Summary, Summary, PairSums), opts.jobs, [a.nbytes + b.nbytes for _, a, b in work],
                         opts.engine, opts.cache, split=tasks, join=join)
    for k, ((i, ta, tb), (sa, sb, p)) in enumerate(zip(work, results)):
        sa, sb = unpack(sa), unpack(sb)
        row = rows[i]
        metrics.finalise(sa, opts.near_zero)
        metrics.finalise(sb, opts.near_zero)
        row.a = metrics.compute(sa, opts.near_zero)
        row.b = metrics.compute(sb, opts.near_zero)
        row.change = change_metrics(p, sa, sb)
        row.delta = _delta(row.a, row.b)
        # the layer's histograms (--hist, plots) show one judgement group only, as inspect's do: its weights
        # if it has any, else its first tensor's group, so BatchNorm's gamma and beta are never one histogram
        grp = group_of(ta.name, ta.role.value, ta.numel)
        held = hist_sums.get(row.layer)
        if held is None or (grp in _WEIGHTY and held[0] not in _WEIGHTY):
            hist_sums[row.layer] = (grp, Summary().merge(sa), Summary().merge(sb))
        elif grp == held[0]:
            held[1].merge(sa)
            held[2].merge(sb)
        acc = layer_sums.get(row.layer)
        if acc is None:
            layer_sums[row.layer] = (p, sa, sb, ta.numel)
        else:
            layer_sums[row.layer] = (acc[0].merge(p), acc[1].merge(sa), acc[2].merge(sb), acc[3] + ta.numel)
        done += ta.nbytes + tb.nbytes
        if progress:
            progress(done, k + 1)
    layers = []
    for name in layer_order:
        p, sa, sb, numel = layer_sums[name]
        ch = change_metrics(p, sa, sb)
        layers.append(LayerDiff(name, numel, ch["rel_l2_change"], ch["cosine"], ch["sign_flip_fraction"],
                                ch["changed_fraction"], ch["max_abs_change"], a_summary=pack(hist_sums[name][1]),
                                b_summary=pack(hist_sums[name][2])))
    notes = _notes(rows, layers)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    tot = PairSums()
    for name in sorted(layer_sums):
        tot.merge(layer_sums[name][0])
    ranked = _ranked(layers)
    summary = {"statuses": counts,
               "rel_l2_change": math.sqrt(tot.dd / tot.aa) if tot.aa > 0 else None,
               "cosine": max(-1.0, min(1.0, tot.ab / math.sqrt(tot.aa * tot.bb))) if tot.aa > 0 and tot.bb > 0
               else None,
               "most_moved": [lr.name for lr in ranked[::-1][:3] if (lr.rel_l2_change or 0) > 0],
               "least_moved": [lr.name for lr in ranked[:3]]}
    return DiffReport(checkpoint_info(ck_a), checkpoint_info(ck_b),
                      {**opts.as_dict(), "rtol": tol.rtol, "atol": tol.atol}, rows, layers, summary,
                      clashes + notes)


def _distinct(a: float, b: float) -> tuple[str, str]:
    """a and b to 3 significant digits, more where two different values would read the same (0.00100008
    and 0.00100002 are not both "0.001")."""
    for d in range(3, 18):
        ta, tb = f"{a:.{d}g}", f"{b:.{d}g}"
        if a == b or ta != tb:
            return ta, tb
    return repr(a), repr(b)


def _nonfinite(nan: int, inf: int) -> str:
    return f"{nan} NaN and {inf} Inf" if nan and inf else f"{nan} NaN" if nan else f"{inf} Inf" if inf else "none"


def _ranked(layers: list[LayerDiff]) -> list[LayerDiff]:
    """Layers whose relative L2 change is defined, least moved first (ties in file order): the one order
    the summary's most/least moved lists and the reading's note both come from."""
    return sorted((lr for lr in layers if lr.rel_l2_change is not None), key=lambda x: x.rel_l2_change or 0.0)


def _notes(rows: list[TensorDiff], layers: list[LayerDiff]) -> list[str]:
    out: list[str] = []
    per: dict[str, list[tuple[str, float]]] = {}
    for r in rows:
        v = (r.change or {}).get("rel_l2_change")
        if v is not None:
            per.setdefault(r.layer, []).append((r.name, v))
    # a layer is identical only if every one of its tensors is matched (same shape and dtype) and every value
    # is finite in both and unchanged: max |B-A| == 0 alone is over the values finite in both, so a NaN that
    # appeared, an Inf that went away or a bias that grew from 4 to 8 values would read as "frozen"
    unmatched: set[str] = {r.layer for r in rows if r.status != "matched"}
    bad: dict[str, list[int]] = {}
    for r in rows:
        if r.status == "matched":
            c = bad.setdefault(r.layer, [0, 0, 0, 0])
            for j, (side, key) in enumerate(((r.a, "nan_count"), (r.a, "inf_count"), (r.b, "nan_count"),
                                              (r.b, "inf_count"))):
                c[j] += int((side or {}).get(key) or 0)
    identical = {lr.name for lr in layers
                 if lr.max_abs_change == 0 and lr.name not in unmatched and not any(bad.get(lr.name, [0]))}
    for lr in layers:
        own = per.get(lr.name, [])
        top = max(own, key=lambda nv: nv[1]) if own else None
        c = bad.get(lr.name, [0, 0, 0, 0])
        if c[:2] != c[2:]:
            lr.notes.append(f"non-finite values changed: {_nonfinite(c[0], c[1])} in A, {_nonfinite(c[2], c[3])} "
                            f"in B")
        if lr.name in identical:
            lr.notes.append("did not move at all between the checkpoints: frozen, or not trained?")
        elif lr.max_abs_change == 0 and lr.name in unmatched:
            lr.notes.append("its matched values did not move, but not all of its tensors are matched (see below)")
        elif lr.max_abs_change == 0:
            lr.notes.append("its values finite in both did not move; the non-finite ones are not compared")
        elif lr.changed_fraction == 0:
            lr.notes.append(f"no value changed beyond the tolerance (rtol/atol), though some moved: max |B-A| "
                            f"{lr.max_abs_change:.3g}")
        elif top is not None and top[1] > 0.5:
            who = f" ({top[0]}, the most of the layer's tensors)" if len(own) > 1 else ""
            lr.notes.append(f"moved a lot: |B-A| is {top[1]:.0%} of |A|{who}")
        if lr.sign_flip_fraction is not None and lr.sign_flip_fraction > 0.3:
            lr.notes.append(f"{lr.sign_flip_fraction:.0%} of its weights flipped sign")
    moved = _ranked(layers)
    if moved and (moved[-1].rel_l2_change or 0) > 0:  # "most moved" means nothing when nothing moved
        hi, lo = _distinct(moved[-1].rel_l2_change or 0.0, moved[0].rel_l2_change or 0.0)
        out.append(f"most moved: {moved[-1].name} (relative L2 change {hi}); least moved: {moved[0].name} ({lo})")
    frozen = [lr.name for lr in layers if lr.name in identical]
    if frozen:
        out.append(f"{len(frozen)} layer{'s' if len(frozen) != 1 else ''} identical in both checkpoints: "
                   f"{', '.join(frozen)}")
    for status, what in (("only_a", "only in A"), ("only_b", "only in B"), ("shape_changed", "changed shape"),
                         ("dtype_changed", "changed dtype")):
        names = [r.name for r in rows if r.status == status]
        if names:
            out.append(f"{len(names)} tensor{'s' if len(names) != 1 else ''} {what}: {', '.join(names)}")
    return out
