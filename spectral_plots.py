"""ESD pictures of a SpectralReport (the optional `wdist[plot]` extra): per layer, the density of the
eigenvalues λ of WᵀW on log-log axes, the fitted power-law tail and the Marchenko–Pastur bulk edge.

matplotlib is imported only when a figure is made. Figures are built as `matplotlib.figure.Figure` objects
without pyplot, so no backend is switched and nothing is registered globally (they render through Agg with
`fig.savefig`). Nothing is capped: more layers than fit on one page give more pages."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

# one place imports matplotlib's Figure (and says how to install it), and one escapes names for figure text
from wdist.plots import _figure_class, _label

if TYPE_CHECKING:
    from wdist.analyzers.spectral_report import SpectralReport

PER_PAGE = 12  # layers on one figure page
COLS = 4


def _panel(ax: Any, name: str, d: dict[str, Any]) -> None:
    """One layer: histogram of log10 λ drawn as a density in λ (so a power law is a straight line of slope
    −alpha on log-log axes), the fitted tail from xmin, and the MP bulk edge."""
    import numpy as np

    title = _label(name)
    h = d.get("esd_histogram")
    if not h or not h.get("counts"):
        why = d.get("alpha_skipped") or "no eigenvalues"
        ax.set_title(title, fontsize=8)
        ax.text(0.5, 0.5, _label(f"no ESD: {why}"), ha="center", va="center", fontsize=7, wrap=True,
                transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
        return
    edges = 10.0 ** np.asarray(h["edges"], dtype=np.float64)
    counts = np.asarray(h["counts"], dtype=np.float64)
    npos = counts.sum()
    widths = np.diff(edges)
    dens = counts / (npos * widths)
    keep = counts > 0
    ax.bar(edges[:-1][keep], dens[keep], width=widths[keep], align="edge", color="#3b75af", alpha=0.7,
           label="ESD")
    ax.set_xscale("log")
    ax.set_yscale("log")
    alpha, xmin, tail = d.get("alpha"), d.get("xmin"), d.get("tail_count")
    if alpha is not None and xmin is not None and tail and npos > 0:
        # p(λ) = (tail/n)·(alpha−1)/xmin·(λ/xmin)^(−alpha) for λ ≥ xmin: the fitted law scaled to the tail's share.
        x = np.geomspace(xmin, max(edges[-1], xmin * 1.0001), 50)
        p = (tail / npos) * (alpha - 1.0) / xmin * (x / xmin) ** (-alpha)
        trusted = d.get("tail_trusted")
        ax.plot(x, p, color="#c4703a", lw=1.5, ls="-" if trusted else "--",
                label=f"power law α={alpha:.2f} ({tail} in tail{'' if trusted else ', unreliable'})")
        ax.axvline(xmin, color="#c4703a", lw=0.8, ls=":")
    edge = d.get("mp_edge")
    if edge is not None and math.isfinite(edge) and edge > 0:
        ax.axvline(edge, color="#2a9d4b", lw=1.2, label=f"MP edge λ+={edge:.3g} ({d.get('mp_spikes', 0)} spikes)")
    extra = []
    if d.get("looks_random"):
        extra.append("looks random")
    if h.get("zeros"):
        extra.append(f"{h['zeros']} zero λ not shown")
    ax.set_title(title + (f"  ({', '.join(extra)})" if extra else ""), fontsize=8)
    _log_ticks(ax)
    ax.legend(fontsize=5.5, loc="lower left")


def _log_ticks(ax: Any) -> None:
    """Few plain-text ticks at 1, 2 and 5 times powers of ten: matplotlib's default minor labels overlap on
    spans under a decade, and mathtext tick labels are most of a figure's rendering time."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        decades = math.log10(hi / lo) if lo > 0 and hi > lo else 0.0
        subs = (1.0, 2.0, 5.0) if decades <= 2 else (1.0,)
        axis.set_major_locator(LogLocator(base=10, subs=subs, numticks=6))
        axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:.3g}"))
        axis.set_minor_locator(NullLocator())
    ax.tick_params(labelsize=6)


def esd_page(report: SpectralReport, layers: Sequence[str]) -> Any:
    """One Figure with a panel per layer (at most PER_PAGE; use esd_figure for any number)."""
    if len(layers) > PER_PAGE:
        raise ValueError(f"{len(layers)} layers on one page; at most {PER_PAGE} (esd_figure pages them)")
    figure = _figure_class()
    import matplotlib

    n = max(1, len(layers))
    cols = min(COLS, n)
    rows = math.ceil(n / cols)
    with matplotlib.rc_context({"text.usetex": False}):
        # Fixed margins in inches (constrained or tight layout costs seconds per page).
        w, h, top, bottom, left = 3.6 * cols, 2.6 * rows + 0.75, 0.3, 0.45, 0.55
        fig = figure(figsize=(w, h))
        fig.subplots_adjust(left=left / w, right=1 - 0.15 / w, top=1 - top / h, bottom=bottom / h,
                            hspace=0.6 / 2.6 * 2, wspace=0.3)
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        for ax, name in zip(axes, layers):
            _panel(ax, name, report.layers[name])
        for ax in axes[len(layers):]:
            fig.delaxes(ax)
        fig.supxlabel("λ (eigenvalue of WᵀW)", fontsize=8, y=0.02)
        fig.supylabel("density", fontsize=8, x=0.01)
    return fig


def esd_figure(report: SpectralReport, layers: list[str] | None = None) -> list[Any]:
    """ESD figures of the report's layers (default: all of them, in report order), one Figure per page of at
    most PER_PAGE layers. An unknown layer name is a ValueError."""
    names = list(report.layers) if layers is None else list(layers)
    unknown = [n for n in names if n not in report.layers]
    if unknown:
        raise ValueError(f"no spectral metrics for layer(s) {', '.join(map(repr, unknown[:5]))}")
    if not names:
        return []
    return [esd_page(report, names[i:i + PER_PAGE]) for i in range(0, len(names), PER_PAGE)]
