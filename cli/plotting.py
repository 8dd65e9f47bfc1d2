"""Pictures with matplotlib (the optional `wdist[plot]` extra): histograms, overlays, ridgelines, trends,
and a self-contained HTML report."""

from __future__ import annotations

import base64
import html
import io
import os
from typing import Any

from wdist.loaders.errors import MissingDependencyError


def _plt() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise MissingDependencyError(None, "plots need matplotlib: pip install 'wdist[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bar(ax: Any, h: Any, label: str | None = None, alpha: float = 1.0, color: str | None = None) -> None:
    edges = h.edges
    ax.stairs(h.counts, edges, fill=True, alpha=alpha, label=label, color=color)


def layer_histograms(report: Any, max_layers: int = 24) -> Any:
    """One row per layer: linear histogram of w and histogram of log10|w|."""
    plt = _plt()
    layers = [lr for lr in report.layers if lr.histogram is not None][:max_layers]
    fig, axes = plt.subplots(len(layers), 2, figsize=(10, 1.9 * len(layers) + 0.6), squeeze=False)
    for (a1, a2), lr in zip(axes, layers):
        _bar(a1, lr.histogram, color="#3b75af")
        h = lr.histogram
        a1.set_title(f"{lr.name}: w  ({h.underflow + h.overflow} values beyond ±{h.edges[-1]:.3g}, the 99.9th "
                     "percentile of |w|)", fontsize=8)
        a1.set_ylabel("count", fontsize=7)
        _bar(a2, lr.log_histogram, color="#c4703a")
        a2.set_yscale("log")
        a2.set_ylabel("count (log scale)", fontsize=7)
        a2.set_title(f"{lr.name}: log10|w|  ({lr.log_histogram.zeros} exact zeros not shown)", fontsize=8)
        for a in (a1, a2):
            a.tick_params(labelsize=7)
    axes[-1][0].set_xlabel("w")
    axes[-1][1].set_xlabel("log10 |w|")
    fig.tight_layout()
    return fig


def overlay(diff: Any, max_layers: int = 24) -> Any:
    """A and B histograms of each layer on the same bins."""
    from wdist.analyzers import histogram, metrics
    from wdist.analyzers.engine import unpack

    plt = _plt()
    layers = [lr for lr in diff.layers if lr.a_summary is not None][:max_layers]
    fig, axes = plt.subplots(len(layers), 1, figsize=(8, 1.8 * len(layers) + 0.6), squeeze=False)
    for ax, lr in zip(axes[:, 0], layers):
        a, b = unpack(lr.a_summary), unpack(lr.b_summary)
        nz = metrics.NearZero()
        half = histogram.symmetric_range(metrics.compute(a, nz)["abs_p999"], metrics.compute(b, nz)["abs_p999"],
                                         max_abs=max(abs(a.min), abs(a.max), 1e-30))
        _bar(ax, histogram.linear(a.hist, a.exact_bins, half, 80), "A", 0.5, "#3b75af")
        _bar(ax, histogram.linear(b.hist, b.exact_bins, half, 80), "B", 0.5, "#c4703a")
        ax.set_title(f"{lr.name}: relative L2 change {lr.rel_l2_change:.3g}" if lr.rel_l2_change is not None
                     else lr.name, fontsize=8)
        ax.set_ylabel("count", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    axes[-1, 0].set_xlabel("w (shared bins)")
    fig.tight_layout()
    return fig


def ridgeline(trend: Any, max_layers: int = 12) -> Any:
    """Per layer, each checkpoint's histogram offset vertically (TensorBoard's offset view)."""
    plt = _plt()
    layers = [lt for lt in trend.layers if any(h is not None for h in lt.ridgeline)][:max_layers]
    cols = min(3, len(layers))
    rows = -(-len(layers) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    cmap = plt.get_cmap("viridis")
    for ax, lt in zip(axes.flat, layers):
        hs = lt.ridgeline
        top = max(max(h.counts) for h in hs if h is not None) or 1
        n = len(hs)
        for i, h in enumerate(hs):
            if h is None:
                continue
            y0 = (n - 1 - i) * 0.6
            ys = [y0 + c / top for c in h.counts]
            ax.fill_between(h.edges[:-1], y0, ys, step="post", color=cmap(i / max(1, n - 1)), alpha=0.8, zorder=i)
        ax.set_yticks([(n - 1 - i) * 0.6 for i in range(n)])
        ax.set_yticklabels([p.display for p in trend.checkpoints],
                           fontsize=7)
        ax.set_title(lt.name, fontsize=9)
        ax.set_xlabel("w (shared bins)", fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(layers):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def metric_lines(trend: Any) -> Any:
    plt = _plt()
    ms = trend.metrics
    cols = min(3, len(ms))
    rows = -(-len(ms) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    xs = [p.step if p.step is not None else i + 1 for i, p in enumerate(trend.checkpoints)]
    for ax, m in zip(axes.flat, ms):
        for lt in trend.layers:
            ys = [float("nan") if v is None else v for v in lt.series[m]]
            ax.plot(xs, ys, marker="o", ms=3, label=lt.name)
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("step" if all(p.step is not None for p in trend.checkpoints) else "checkpoint", fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(ms):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


def save(fig: Any, base: str, formats: tuple[str, ...] = ("png", "svg")) -> list[str]:
    plt = _plt()
    out = []
    for f in formats:
        p = f"{base}.{f}"
        fig.savefig(p, dpi=110)
        out.append(p)
    plt.close(fig)
    return out


def _png64(fig: Any) -> str:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def write_report(paths: list[str], out: str, formats: tuple[str, ...] = ("png", "svg")) -> str:
    """Images next to `out` and a self-contained `out.html` (images embedded, tables of metrics)."""
    from wdist.analyzers.diff import compare
    from wdist.analyzers.inspect import Options, analyse
    from wdist.analyzers.trend import run
    from wdist.loaders import open_checkpoint

    _plt()
    os.makedirs(os.path.dirname(os.path.abspath(out)) or ".", exist_ok=True)
    opts = Options(jobs=1)
    last = analyse(open_checkpoint(paths[-1]), opts)
    figs: list[tuple[str, Any]] = [("Histograms per layer: " + os.path.basename(paths[-1]), layer_histograms(last))]
    if len(paths) >= 2:
        d = compare(open_checkpoint(paths[0]), open_checkpoint(paths[-1]), opts)
        figs.append((f"First vs last: {os.path.basename(paths[0])} / {os.path.basename(paths[-1])}", overlay(d)))
        tr = run(paths, opts)
        figs.append(("Ridgeline of histograms over the run", ridgeline(tr)))
        figs.append(("Metrics over the run", metric_lines(tr)))
    parts = ["<!doctype html><meta charset='utf-8'><title>wdist report</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse;"
             "font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}td:first-child{text-align:left}"
             "img{max-width:100%}</style>", "<h1>wdist report</h1>",
             f"<p>{html.escape(last.model.summary)}</p>", "<h2>Layers of the last checkpoint</h2><table><tr>"]
    cols = ["mean", "std", "abs_p50", "abs_p999", "zero_fraction", "near_zero_fraction", "kurtosis", "gini",
            "top1pct_l2_mass", "dead_units"]
    parts.append("<th>layer</th>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>")
    for lr in last.layers:
        cells = "".join(f"<td>{'' if lr.stats.get(c) is None else format(lr.stats[c], '.4g')}</td>" for c in cols)
        parts.append(f"<tr><td>{html.escape(lr.name)}</td>{cells}</tr>")
    parts.append("</table>")
    for i, (title, fig) in enumerate(figs):
        save(fig, f"{out}-{i + 1}", formats) if formats else None
        parts.append(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' "
                     f"src='data:image/png;base64,{_png64(fig)}'>")
    path = out + ".html"
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))
    return path
