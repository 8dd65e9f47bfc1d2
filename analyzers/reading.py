"""The plain-language reading: notes that compare measured shapes with reference distributions.

Reference points (excess kurtosis, Gini of |w|): uniform -1.2 / 0.333 (PyTorch's default init),
normal 0 / 0.414, Laplace 3 / 0.5. A normal sample's top 1% of |w| holds about 8.5% of sum w^2."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Stats = Mapping[str, Any]
SHAPE_MIN = 64  # below this many values, shape metrics say little


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%" if x < 0.995 or x == 1 else f"{100 * x:.2f}%"


def _g(x: float) -> str:
    return f"{x:.3g}"


def shape_label(m: Stats) -> str | None:
    """One of: uniform-like, Gaussian-like, Laplace-like, heavy-tailed, or None."""
    k, g, top = m.get("kurtosis"), m.get("gini"), m.get("top1pct_l2_mass")
    if k is None or g is None or (m.get("finite_count") or 0) < SHAPE_MIN:
        return None
    if k > 5 or (top is not None and top > 0.25):
        return "heavy-tailed"
    if -1.35 <= k <= -1.0 and 0.30 <= g <= 0.36:
        return "uniform-like"
    if abs(k) <= 0.5 and 0.38 <= g <= 0.44:
        return "Gaussian-like"
    if 1.5 < k <= 5 and 0.45 <= g <= 0.56:
        return "Laplace-like"
    return None


def notes(m: Stats, role: str | None = None) -> list[str]:
    out: list[str] = []
    numel = m.get("numel") or 0
    if numel == 0:
        return ["empty tensor (0 elements)"]
    nan, inf = m.get("nan_count") or 0, m.get("inf_count") or 0
    if nan or inf:
        out.append(f"non-finite values: {nan} NaN and {inf} Inf; moments are over the {m.get('finite_count')} "
                   "finite values. NaN/Inf in weights usually means training diverged")
    zf = m.get("zero_fraction") or 0.0
    if zf == 1.0:
        return out + ["all zeros: never trained, pruned away entirely, or zero-initialised"]
    if m.get("std") == 0 and (m.get("finite_count") or 0) > 1:
        out.append(f"constant: every value is {_g(m['mean'])} (an initialisation that has not moved?)")
        return out
    dead, units = m.get("dead_units"), m.get("units")
    if dead:
        out.append(f"dead units: {dead} of {units} output units are entirely zero")
    if zf >= 0.5:
        out.append(f"genuinely sparse: {_pct(zf)} of values are exactly zero")
    elif zf >= 0.1:
        out.append(f"partly sparse: {_pct(zf)} of values are exactly zero")
    label = shape_label(m) if role in (None, "weight", "embedding") else None
    k, g, top = m.get("kurtosis"), m.get("gini"), m.get("top1pct_l2_mass")
    if label == "uniform-like":
        out.append(f"uniform-like (kurtosis {k:.2f}, Gini {g:.3f}; a uniform gives -1.2 and 0.333): still at its "
                   "initialisation shape; a layer that has trained for long rarely stays this flat")
    elif label == "Gaussian-like":
        out.append(f"Gaussian-like (kurtosis {k:.2f}, Gini {g:.3f}; a normal gives 0 and 0.414): a normal "
                   "initialisation or small, diffuse updates")
    elif label == "Laplace-like":
        out.append(f"Laplace-like (kurtosis {k:.2f}, Gini {g:.3f}; a Laplace gives 3 and 0.5): the usual "
                   "shape of trained weights")
    elif label == "heavy-tailed":
        out.append(f"heavy-tailed (kurtosis {k:.1f}; the top 1% of weights hold {_pct(top or 0)} of sum w^2, "
                   "a normal ~8.5%): a few large weights carry much of the layer")
    p999, mx, mn = m.get("abs_p999"), m.get("max"), m.get("min")
    if p999 and mx is not None and mn is not None and (m.get("finite_count") or 0) >= 1000:
        big = max(abs(mx), abs(mn))
        if big >= 10 * p999:
            out.append(f"outlier weights: max|w| {_g(big)} is {big / p999:.0f}x the 99.9th percentile of |w| "
                       f"({_g(p999)})")
    nzf = m.get("near_zero_fraction")
    if nzf is not None and nzf >= 0.5 and zf < 0.1 and role in (None, "weight", "embedding"):
        out.append(f"mostly small: {_pct(nzf)} of values have |w| <= {_g(m['near_zero_threshold'])} (near zero) "
                   "but few are exactly zero")
    return out


def summary_paragraph(model: Stats, layers: list[tuple[str, Stats, list[str]]]) -> str:
    """Answers: "most weights are near zero and a few are very large — is that expected?" """
    if not model.get("finite_count"):
        return "No finite floating-point weights were analysed."
    parts: list[str] = []
    p50, mx, mn = model.get("abs_p50") or 0.0, model.get("max") or 0.0, model.get("min") or 0.0
    big = max(abs(mx), abs(mn))
    ratio = big / p50 if p50 else float("inf")
    nz, th = model.get("near_zero_fraction") or 0.0, model.get("near_zero_threshold") or 0.0
    label = shape_label(model)
    k = model.get("kurtosis")
    top = model.get("top1pct_l2_mass") or 0.0
    parts.append(f"Median |w| is {_g(p50)} and the largest is {_g(big)} ({ratio:.0f}x the median); "
                 f"{_pct(nz)} of values are near zero (|w| <= {_g(th)}).")
    if label in ("heavy-tailed", "Laplace-like") or (k is not None and k > 1.5):
        parts.append(f"Most weights near zero with a few large ones is expected for trained weights: the pooled "
                     f"distribution is {label or 'peaked'} (kurtosis {k:.1f}, top 1% of weights hold {_pct(top)} of "
                     "sum w^2 against ~8.5% for a normal). Training grows a minority of important weights "
                     "while weight decay and normalisation keep the rest small.")
    elif label == "uniform-like":
        parts.append(f"The pooled weights are still uniform-like (kurtosis {k:.2f}): this looks like an "
                     "untrained or barely trained checkpoint.")
    elif label == "Gaussian-like":
        parts.append(f"The pooled weights are Gaussian-like (kurtosis {k:.2f}): no heavy tail yet; typical early "
                     "in training or with strong regularisation.")
    elif k is not None:
        g = model.get("gini") or 0.0
        where = ("flatter than a normal, closer to the uniform initialisation (-1.2, 0.333)" if k < -0.5
                 else "close to the normal reference (0, 0.414)")
        parts.append(f"The pooled weights have kurtosis {k:.2f} and Gini {g:.3f}, {where}: no heavy tail, so the "
                     "large weights are the ordinary edges of a bell-shaped spread, not a few dominant outliers.")
    concerns: list[str] = []
    bad = [n for n, m, _ in layers if (m.get("nan_count") or 0) + (m.get("inf_count") or 0)]
    if bad:
        concerns.append(f"non-finite values in {', '.join(bad[:5])}" + (" ..." if len(bad) > 5 else ""))
    dead = [(n, m) for n, m, _ in layers if m.get("dead_units")]
    if dead:
        concerns.append("dead units in " + ", ".join(f"{n} ({m['dead_units']}/{m['units']})" for n, m in dead[:5]))
    outl = [n for n, _, ns in layers if any(s.startswith("outlier") for s in ns)]
    if outl:
        concerns.append("outlier weights in " + ", ".join(outl[:5]))
    init = [n for n, m, _ in layers if shape_label(m) == "uniform-like"]
    if init and label != "uniform-like":
        concerns.append("layers still at their initialisation shape: " + ", ".join(init[:5]))
    if concerns:
        parts.append("Worth a look: " + "; ".join(concerns) + ".")
    elif label in ("heavy-tailed", "Laplace-like") or (k is not None and k > 1.5):
        parts.append("Nothing here suggests a problem: no NaN/Inf, no dead units, no extreme outliers.")
    return " ".join(parts)
