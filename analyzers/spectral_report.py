"""`--spectral`: the spectral pass over a checkpoint's weight matrices, its reading and its trend notes.

`spectral_report` runs `spectral.analyze_tensor` on every weight and embedding tensor of rank ≥ 2 (in worker
processes through `engine.ordered_map`, results kept in tensor order, so the report does not depend on
--jobs), pools each layer's tensors with `combine_layer`, and writes per-layer notes that interpret the
metrics with their caveats. Everything in a SpectralReport is plain JSON data."""

from __future__ import annotations

import contextlib
import importlib.util
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from wdist.analyzers.engine import DaskEngine, one_blas_thread, one_blas_thread_unless_held, ordered_map
from wdist.analyzers.spectral import (
    SPECTRAL_METRICS,
    SpectralOptions,
    SpectralResult,
    analyze_tensor,
    combine_layer,
)
from wdist.loaders.model import Checkpoint, Role, TensorRef

# The usual alpha range of well-trained layers (Martin & Mahoney; WeightWatcher's reading).
ALPHA_LOW, ALPHA_HIGH = 2.0, 6.0
SPECTRAL_ROLES = (Role.WEIGHT, Role.EMBEDDING)
# Matrices with fewer singular values than this fit Marchenko–Pastur loosely whatever they hold.
SMALL_SIDE = 32

Progress = Callable[[int, int], None]


@dataclass
class SpectralReport:
    """Spectral metrics of one checkpoint. `tensors` and `layers` map names to `SpectralResult.to_dict()`
    (no raw eigenvalues), in checkpoint order; `notes` holds the reading per layer (every analysed layer,
    possibly an empty list); `skipped` says, as "NAME: reason", every tensor of the selection that has no
    full spectral analysis (not analysed at all, or alpha not computed)."""

    tensors: dict[str, dict[str, Any]] = field(default_factory=dict)
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)

    def tensor_stats(self, name: str) -> dict[str, Any]:
        """The scalar metrics (`SPECTRAL_METRICS`) of one analysed tensor."""
        d = self.tensors[name]
        return {k: d.get(k) for k in SPECTRAL_METRICS}

    def layer_stats(self, name: str) -> dict[str, Any]:
        d = self.layers[name]
        return {k: d.get(k) for k in SPECTRAL_METRICS}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SpectralReport:
        return cls(tensors=dict(d.get("tensors", {})), layers=dict(d.get("layers", {})),
                   notes={k: list(v) for k, v in d.get("notes", {}).items()}, skipped=list(d.get("skipped", [])),
                   options=dict(d.get("options", {})))


def _work(ref: TensorRef, opts: SpectralOptions, keras: bool, pin: bool) -> SpectralResult | None:
    """One tensor, in a worker process (module level, so it pickles) or in this one. BLAS runs on one thread
    everywhere: a multi-threaded Gram product is summed in another order, so results would depend on --jobs
    in their last bits. spectral_report pins this process, and so the workers forked from it, once for the
    whole pass (spawned workers start with one thread); `pin` asks for it per tensor (~1 ms a call), where
    the worker is not this process's child (Dask)."""
    if not pin:
        return analyze_tensor(ref, opts, keras=keras)
    with one_blas_thread_unless_held():
        return analyze_tensor(ref, opts, keras=keras)


def _why_not(ref: TensorRef) -> str | None:
    """Why a tensor of the selection gets no spectral analysis at all, or None when it is analysed."""
    if ref.role not in SPECTRAL_ROLES:
        return f"role {ref.role.value}: only weight and embedding tensors are analysed"
    if not ref.is_float:
        return f"dtype {ref.dtype} is not floating point"
    if len(ref.shape) < 2:
        return f"rank {len(ref.shape)}: not a matrix"
    if any(int(d) == 0 for d in ref.shape):
        return "empty tensor"
    return None


def spectral_report(ck: Checkpoint, refs: Sequence[TensorRef], opts: SpectralOptions | None = None, jobs: int = 0,
                    engine: DaskEngine | None = None, progress: Progress | None = None) -> SpectralReport:
    """Spectral metrics of every weight/embedding tensor of rank ≥ 2 among `refs` (normally the inspect
    selection), per tensor and per layer, with the reading. Tensors of rank < 2 of other roles (biases,
    norms) are not matrices and are left out quietly; every other tensor not analysed is listed in
    `skipped` with the reason. Read errors propagate as the loaders' WdistError."""
    opts = opts or SpectralOptions()
    keras = ck.format.startswith("keras")
    report = SpectralReport(options={**asdict(opts), "keras_layout": keras})
    todo: list[TensorRef] = []
    for ref in refs:
        why = _why_not(ref)
        if why is None:
            todo.append(ref)
        elif len(ref.shape) >= 2 or ref.role in SPECTRAL_ROLES:
            report.skipped.append(f"{ref.name}: {why}")
    total = sum(r.nbytes for r in todo)
    done = 0
    by_layer: dict[str, list[SpectralResult]] = {}
    pinned: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    # whether threadpoolctl is there, without importing it here (its import sets KMP_DUPLICATE_LIB_OK)
    if importlib.util.find_spec("threadpoolctl") is None:
        jobs, engine = 1, None  # BLAS threads could not be pinned in workers: keep results independent of jobs
    else:
        pinned = one_blas_thread()  # this process and its forks; restored at the end
    with pinned:
        results = ordered_map(_work, [(r, opts, keras, engine is not None) for r in todo], jobs, total, engine)
        for ref, res in zip(todo, results):
            done += ref.nbytes
            if progress is not None:
                progress(done, total)
            if res is None:  # analyze_tensor's own refusal; _why_not should have caught it
                report.skipped.append(f"{ref.name}: no matrix in shape {list(ref.shape)}")
                continue
            report.tensors[ref.name] = res.to_dict()
            if res.alpha_skipped:
                report.skipped.append(f"{ref.name}: alpha not computed: {res.alpha_skipped}")
            by_layer.setdefault(ref.layer or ref.name, []).append(res)
    for layer, members in by_layer.items():
        lr = combine_layer(layer, members, opts)
        if lr is None:
            continue
        report.layers[layer] = lr.to_dict()
        report.notes[layer] = layer_notes(lr, opts)
    return report


def _g(v: float) -> str:
    return f"{v:.3g}"


def layer_notes(res: SpectralResult | dict[str, Any], opts: SpectralOptions | None = None) -> list[str]:
    """The reading of one layer's (or tensor's) spectral metrics, caveats first: a layer that looks random
    is recognised and its alpha not interpreted; an alpha from a short tail is said to be unreliable."""
    opts = opts or SpectralOptions()
    d = res.to_dict() if isinstance(res, SpectralResult) else res
    notes: list[str] = []
    skipped = d.get("alpha_skipped")
    if d.get("method") == "none":
        return [f"no spectral metrics: {skipped or 'no spectrum'}"]
    alpha, tail = d.get("alpha"), d.get("tail_count")
    spikes, looks_random = d.get("mp_spikes"), d.get("looks_random")
    if alpha is None:
        notes.append(f"alpha not computed: {skipped or 'no power-law fit'}")
    if looks_random:
        ks = d.get("mp_ks")
        ks_txt = f", bulk-vs-MP KS {ks:.3f}" if ks is not None else ""
        a_txt = f"; alpha {alpha:.2f} is that of a random bulk and is not interpreted" if alpha is not None else ""
        shape = d.get("matrix_shape") or [0, 0]
        small = (f"; only {shape[1]} singular values per matrix, so this is weak evidence"
                 if 0 < shape[1] < SMALL_SIDE else "")
        notes.append(f"looks random: no spikes above the Marchenko–Pastur edge{ks_txt}: a randomly initialised "
                     f"or untrained layer{a_txt}{small}")
        return notes
    if alpha is not None and tail is not None and not d.get("tail_trusted"):
        notes.append(f"alpha {alpha:.2f}: tail has only {tail} eigenvalues (< {opts.min_tail}): the fit is "
                     "unreliable")
    if alpha is not None:
        caveat = " (unreliable fit, see above)" if not d.get("tail_trusted") else ""
        if alpha > ALPHA_HIGH:
            notes.append(f"alpha {alpha:.2f} > {ALPHA_HIGH:g}{caveat}: under-trained or random-like (a weakly "
                         "correlated, noise-dominated spectrum; well-trained layers usually give 2-6)")
        elif alpha < ALPHA_LOW:
            notes.append(f"alpha {alpha:.2f} < {ALPHA_LOW:g}{caveat}: very heavy spectral tail, often over-fit "
                         "or over-regularised (well-trained layers usually give 2-6)")
    if spikes:
        edge, lmax = d.get("mp_edge"), d.get("spectral_norm")
        where = f" λ+ = {_g(edge)}" if edge is not None else ""
        top = f" (largest {_g(lmax)})" if lmax is not None and edge else ""
        notes.append(f"{spikes} eigenvalue{'s' if spikes != 1 else ''} above the Marchenko–Pastur bulk "
                     f"edge{where}{top}: structure beyond a random bulk")
    return notes


def spectral_series(reports: Sequence[SpectralReport | None], metric: str = "alpha",
                    level: str = "layers") -> dict[str, list[float | None]]:
    """One series per layer (or tensor, level="tensors") of `metric` over the checkpoints; None where a
    checkpoint lacks the layer or the metric. Layers in order of first appearance."""
    if metric not in SPECTRAL_METRICS:
        raise ValueError(f"unknown spectral metric {metric!r}; valid: {', '.join(SPECTRAL_METRICS)}")
    names: dict[str, None] = {}
    for r in reports:
        if r is not None:
            names.update(dict.fromkeys(getattr(r, level)))
    out: dict[str, list[float | None]] = {}
    for n in names:
        row: list[float | None] = []
        for r in reports:
            v = getattr(r, level).get(n, {}).get(metric) if r is not None else None
            row.append(None if v is None or not math.isfinite(v) else float(v))
        out[n] = row
    return out


def _zone(a: float) -> str:
    return "below" if a < ALPHA_LOW else "above" if a > ALPHA_HIGH else "in"


def spectral_trend_notes(layer_series: dict[str, list[float | None]], labels: list[str]) -> list[str]:
    """Notes where a layer's alpha crossed into or out of the usual range [2, 6] between consecutive
    checkpoints that both have it: "fc: alpha left the usual range at epoch 5: 5.1 -> 6.4". A missing value
    (None) is stepped over, comparing with the last checkpoint that had one."""
    notes: list[str] = []
    for layer, series in layer_series.items():
        if len(series) != len(labels):
            raise ValueError(f"{layer}: {len(series)} values for {len(labels)} labels")
        prev: float | None = None
        for v, label in zip(series, labels):
            if v is None or not math.isfinite(v):
                continue
            if prev is not None:
                a, b = _zone(prev), _zone(v)
                if a != b:
                    if a == "in":
                        what = f"left the usual range ({b} it)"
                    elif b == "in":
                        what = "entered the usual range"
                    else:
                        what = f"jumped across the usual range (now {b} it)"
                    notes.append(f"{layer}: alpha {what} at {label}: {prev:.2f} -> {v:.2f}")
            prev = v
    return notes
