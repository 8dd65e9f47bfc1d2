"""Pictures with matplotlib (the optional `wdist[plot]` extra): histograms, overlays, ridgelines, trends,
and a self-contained HTML report.

Nothing is capped: a model with more layers than fit on one figure gets several pages (OUT-1a.png,
OUT-1b.png, ...) and the HTML report holds every page and every layer. Each figure is rendered once: to PNG
bytes that are written to the file and embedded in the HTML (SVG is rendered only when asked for).

Figures are `matplotlib.figure.Figure` objects made without pyplot: drawing never switches the caller's
backend (a notebook's inline figures keep working) and registers nothing globally."""

from __future__ import annotations

import base64
import contextlib
import functools
import html
import io
import os
import string
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from wdist.loaders.errors import MissingDependencyError

PER_PAGE = 12  # layers on one figure page
DPI = 100


def _figure_class() -> Any:
    """matplotlib's Figure class. Figures are built without pyplot, so no backend is switched and nothing is
    registered globally (a notebook's inline backend stays as it was); they render through Agg with
    `fig.savefig`, and are freed like any object once dropped."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingDependencyError(None, "plots need matplotlib: pip install 'wdist[plot]'") from None
    return Figure


@contextlib.contextmanager
def _plain_text() -> Iterator[None]:
    """Nothing goes through LaTeX (layer names are data); `$` is escaped by _label, so mathtext stays on for
    matplotlib's own log-scale tick labels."""
    import matplotlib

    with matplotlib.rc_context({"text.usetex": False}):
        yield


def _label(s: str) -> str:
    """A name from a file as figure text: control characters visible, `$` literal (never mathtext)."""
    from wdist.analyzers.text import safe

    return safe(s).replace("$", "\\$")


def _html(s: str) -> str:
    from wdist.analyzers.text import safe

    return html.escape(safe(s))


def _bar(ax: Any, h: Any, label: str | None = None, alpha: float = 1.0, color: str | None = None) -> None:
    ax.stairs(h.counts, h.edges, fill=True, alpha=alpha, label=label, color=color)


def _grid(rows: int, cols: int, w: float, h: float, top: float = 0.3, bottom: float = 0.45) -> Any:
    """A figure of rows x cols axes with fixed margins in inches (tight_layout costs seconds per figure)."""
    height = rows * h + top + bottom
    fig = _figure_class()(figsize=(cols * w, height))
    axes = fig.subplots(rows, cols, squeeze=False)
    fig.subplots_adjust(left=0.7 / (cols * w), right=1 - 0.15 / (cols * w), top=1 - top / height,
                        bottom=bottom / height, hspace=0.55 * 1.9 / h, wspace=0.35)
    return fig, axes


def _ticks(ax: Any, y: bool = True) -> None:
    """Few ticks: text layout is most of a figure's rendering time, and 3-5 labels per axis are enough."""
    from matplotlib.ticker import LogLocator, MaxNLocator, NullLocator

    ax.tick_params(labelsize=7)
    ax.xaxis.set_major_locator(MaxNLocator(5))
    if not y:
        return
    if ax.get_yscale() == "log":
        ax.yaxis.set_major_locator(LogLocator(numticks=4))
        ax.yaxis.set_minor_locator(NullLocator())
    else:
        ax.yaxis.set_major_locator(MaxNLocator(3))


def layer_histograms(report: Any, layers: Sequence[Any] | None = None) -> Any:
    """One row per layer: linear histogram of w and histogram of log10|w|."""
    layers = list(layers) if layers is not None else [lr for lr in report.layers if lr.histogram is not None]
    with _plain_text():
        fig, axes = _grid(len(layers), 2, 5, 1.6)
        for (a1, a2), lr in zip(axes, layers):
            _bar(a1, lr.histogram, color="#3b75af")
            h = lr.histogram
            a1.set_title(f"{_label(lr.name)}: w  ({h.underflow + h.overflow} values beyond ±{h.edges[-1]:.3g}, "
                         "the 99.9th percentile of |w|)", fontsize=8)
            a1.set_ylabel("count", fontsize=7)
            if lr.log_histogram is not None:
                _bar(a2, lr.log_histogram, color="#c4703a")
                lh = lr.log_histogram
                # the tiny nonzero values below the panel's range are counted too, as inspect --hist counts them
                a2.set_title(f"{_label(lr.name)}: log10|w|  ({lh.zeros} exact zeros and {lh.underflow} values "
                             f"below 10^{lh.edges[0]:.2f} not shown)", fontsize=8)
            a2.set_yscale("log")
            a2.set_ylabel("count (log scale)", fontsize=7)
            for a in (a1, a2):
                _ticks(a)
        axes[-1][0].set_xlabel("w")
        axes[-1][1].set_xlabel("log10 |w|")
    return fig


def overlay(diff: Any, layers: Sequence[Any] | None = None) -> Any:
    """A and B histograms of each layer on the same bins."""
    from wdist.analyzers import histogram, metrics
    from wdist.analyzers.engine import unpack

    layers = list(layers) if layers is not None else [lr for lr in diff.layers if lr.a_summary is not None]
    with _plain_text():
        fig, axes = _grid(len(layers), 1, 8, 1.5)
        for ax, lr in zip(axes[:, 0], layers):
            a, b = unpack(lr.a_summary), unpack(lr.b_summary)
            nz = metrics.NearZero()
            half = histogram.symmetric_range(metrics.compute(a, nz)["abs_p999"], metrics.compute(b, nz)["abs_p999"],
                                             max_abs=max(abs(a.min), abs(a.max), 1e-30))
            _bar(ax, histogram.linear(a.hist, a.exact_bins, half, 80), "A", 0.5, "#3b75af")
            _bar(ax, histogram.linear(b.hist, b.exact_bins, half, 80), "B", 0.5, "#c4703a")
            ax.set_title(f"{_label(lr.name)}: relative L2 change {lr.rel_l2_change:.3g}"
                         if lr.rel_l2_change is not None else _label(lr.name), fontsize=8)
            ax.set_ylabel("count", fontsize=7)
            _ticks(ax)
            ax.legend(fontsize=7)
        axes[-1, 0].set_xlabel("w (shared bins)")
    return fig


def ridgeline(trend: Any, layers: Sequence[Any] | None = None) -> Any:
    """Per layer, each checkpoint's histogram offset vertically (TensorBoard's offset view)."""
    from matplotlib import colormaps

    layers = list(layers) if layers is not None else [lt for lt in trend.layers
                                                       if any(h is not None for h in lt.ridgeline)]
    cols = max(1, min(3, len(layers)))
    rows = max(1, -(-len(layers) // cols))
    with _plain_text():
        fig, axes = _grid(rows, cols, 4.2, 2.6, bottom=0.5)
        fig.subplots_adjust(left=0.9 / (cols * 4.2))
        cmap = colormaps["viridis"]
        for ax, lt in zip(axes.flat, layers):
            hs = lt.ridgeline
            top = max((max(h.counts) for h in hs if h is not None), default=0) or 1
            n = len(hs)
            for i, h in enumerate(hs):
                if h is None:
                    continue
                y0 = (n - 1 - i) * 0.6
                ys = [y0 + c / top for c in h.counts]
                ax.fill_between(h.edges[:-1], y0, ys, step="post", color=cmap(i / max(1, n - 1)), alpha=0.8,
                                zorder=i)
            ax.set_yticks([(n - 1 - i) * 0.6 for i in range(n)])
            ax.set_yticklabels([_label(p.display) for p in trend.checkpoints], fontsize=7)
            ax.set_title(_label(lt.name), fontsize=9)
            ax.set_xlabel("w (shared bins)", fontsize=7)
            _ticks(ax, y=False)
        for ax in list(axes.flat)[len(layers):]:
            ax.axis("off")
    return fig


def metric_lines(trend: Any, layers: Sequence[Any] | None = None) -> Any:
    layers = list(layers) if layers is not None else list(trend.layers)
    ms = trend.metrics
    cols = min(3, len(ms))
    rows = -(-len(ms) // cols)
    xs = trend.x_steps()
    with _plain_text():
        fig, axes = _grid(rows, cols, 4.2, 2.3, top=0.35, bottom=0.5)
        for ax, m in zip(axes.flat, ms):
            for lt in layers:
                ys = [float("nan") if v is None else v for v in lt.series[m]]
                ax.plot(xs, ys, marker="o", ms=3, label=_label(lt.name))
            ax.set_title(m, fontsize=9)
            ax.set_xlabel("step" if all(p.step is not None for p in trend.checkpoints) else "checkpoint", fontsize=7)
            _ticks(ax)
        for ax in list(axes.flat)[len(ms):]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=6, ncol=2)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    with _plain_text():
        fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def save(fig: Any, base: str, formats: Sequence[str] = ("png",)) -> list[str]:
    """Write the figure as BASE.png (and BASE.svg when asked); returns the paths written."""
    out = []
    if "png" in formats:
        with open(f"{base}.png", "wb") as f:
            f.write(_png(fig))
        out.append(f"{base}.png")
    if "svg" in formats:
        with _plain_text():
            fig.savefig(f"{base}.svg", format="svg")
        out.append(f"{base}.svg")
    return out


def _suffix(i: int, n: int) -> str:
    """Page letters: '' for a single page, else a, b, ..., z, aa, ab, ..."""
    if n == 1:
        return ""
    letters = string.ascii_lowercase
    s = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        s = letters[r] + s
    return s


def pages(items: Sequence[Any], per_page: int | None = None) -> list[list[Any]]:
    per_page = per_page or PER_PAGE
    return [list(items[i:i + per_page]) for i in range(0, len(items), per_page)] or [[]]


@dataclass
class Figure:
    anchor: str
    title: str
    names: list[str]  # the layers it shows
    make: Callable[[], Any]


def _figures(paths: Sequence[str], last: Any, trend: Any, diff: Any) -> list[tuple[str, list[Figure]]]:
    base_last = os.path.basename(paths[-1])
    groups: list[tuple[str, list[Figure]]] = []

    # each kind of figure has its own number (OUT-1 ... OUT-5) whichever others are drawn
    def add(k: int, title: str, items: list[Any], fn: Callable[[list[Any]], Any]) -> None:
        chunks = pages(items)
        figs = []
        for i, chunk in enumerate(chunks):
            sfx = _suffix(i, len(chunks))
            page = f" (page {i + 1} of {len(chunks)})" if len(chunks) > 1 else ""
            figs.append(Figure(f"fig-{k}{sfx}", title + page, [x.name for x in chunk],
                               functools.partial(fn, chunk)))
        groups.append((title, figs))

    add(1, f"Histograms per layer: {base_last}", [lr for lr in last.layers if lr.histogram is not None],
        lambda c: layer_histograms(last, c))
    if diff is not None:
        add(2, f"First vs last: {os.path.basename(paths[0])} / {base_last}",
            [lr for lr in diff.layers if lr.a_summary is not None and lr.b_summary is not None],
            lambda c: overlay(diff, c))
    if trend is not None:
        add(3, "Ridgeline of histograms over the run",
            [lt for lt in trend.layers if any(h is not None for h in lt.ridgeline)], lambda c: ridgeline(trend, c))
        add(4, "Metrics over the run", list(trend.layers), lambda c: metric_lines(trend, c))
    spectral = getattr(last, "spectral", None)
    if spectral is not None and spectral.layers:
        import types

        from wdist.spectral_plots import esd_page

        add(5, "Spectral density (ESD) per layer", [types.SimpleNamespace(name=n) for n in spectral.layers],
            lambda c: esd_page(spectral, [x.name for x in c]))
    return [(t, [f for f in figs if f.names]) for t, figs in groups if any(f.names for f in figs)]


_CSS = ("body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse;font-size:12px}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}td:first-child{text-align:left}"
        "img{max-width:100%}nav li{margin:2px 0}")


def write_report(paths: Sequence[str], out: str, formats: Sequence[str] = ("png",), last: Any = None,
                 trend: Any = None, on_file: Callable[[str], None] | None = None,
                 on_error: Callable[[str, str], None] | None = None,
                 on_step: Callable[[str], None] | None = None, spectral: bool = False,
                 refused: dict[str, str] | None = None) -> str:
    """Images next to `out` (OUT-1.png, or OUT-1a.png, OUT-1b.png, ... when a figure needs several pages)
    and a self-contained OUT.html with every page embedded, a table of contents and a table of every
    layer. `last`/`trend` reuse reports the caller already has. Of a run, the last and first *readable*
    checkpoints are analysed and compared (an unreadable one is said through `on_error` and in the HTML);
    `refused` (from expand_inputs) names paths recorded as unreadable unopened. Returns the HTML path."""
    from wdist.analyzers.diff import compare
    from wdist.analyzers.inspect import Options, analyse
    from wdist.analyzers.trend import run
    from wdist.loaders import open_checkpoint

    _figure_class()  # a missing matplotlib is said before any work
    step = on_step or (lambda s: None)
    os.makedirs(os.path.dirname(os.path.abspath(out)) or ".", exist_ok=True)
    opts = Options(jobs=1)
    if spectral:  # the ESD pages need the spectral pass on the last checkpoint
        from wdist.analyzers.spectral import SpectralOptions

        opts.spectral = SpectralOptions()
        if last is not None and getattr(last, "spectral", None) is None:
            last = None
    plain = Options(jobs=1)  # the run and the A/B diff never need the spectral pass (only the last's pages do)
    readable = list(paths)
    if len(paths) >= 2:
        if trend is None:
            step(f"reading the run ({len(paths)} checkpoints)")
            trend = run(list(paths), plain, refused=refused)
        readable = [p.path for p in trend.checkpoints if not p.error] or [paths[-1]]
    if last is None:
        step(f"analysing {readable[-1]}")
        last = analyse(open_checkpoint(readable[-1]), opts)
    diff = None
    if len(readable) >= 2:
        step(f"comparing {readable[0]} with {readable[-1]}")
        diff = compare(open_checkpoint(readable[0]), open_checkpoint(readable[-1]), plain)
    unread = [(p.path, p.error) for p in (trend.checkpoints if trend is not None else []) if p.error]
    for path, why in unread:  # the report is of the others; each unreadable file is said, never dropped
        if on_error:
            on_error(path, why)
    groups = _figures(paths, last, trend, diff)
    n_figs = sum(len(f) for _, f in groups)
    toc = ["<nav><h2>Contents</h2><ol>", "<li><a href='#summary'>Summary</a></li>",
           "<li><a href='#layers'>Layers of the last checkpoint</a></li>"]
    for title, figs in groups:
        toc.append(f"<li><a href='#{figs[0].anchor}'>{_html(title)}</a><ul>")
        toc += [f"<li><a href='#{f.anchor}'>{_html(f.title)}</a>: {_html(f.names[0])} … "
                f"{_html(f.names[-1])}</li>" if len(f.names) > 1 else
                f"<li><a href='#{f.anchor}'>{_html(f.title)}</a>: {_html(f.names[0])}</li>" for f in figs]
        toc.append("</ul></li>")
    toc.append("</ol></nav>")
    parts = ["<!doctype html><meta charset='utf-8'><title>wdist report</title>", f"<style>{_CSS}</style>",
             "<h1>wdist report</h1>", *toc, f"<h2 id='summary'>Summary</h2><p>{_html(last.model.summary)}</p>",
             *[f"<p class='error'>not read: {_html(path)}: {_html(why)}</p>" for path, why in unread],
             "<h2 id='layers'>Layers of the last checkpoint</h2><table><tr>"]
    cols = ["mean", "std", "abs_p50", "abs_p999", "zero_fraction", "near_zero_fraction", "kurtosis", "gini",
            "top1pct_l2_mass", "dead_units"]
    parts.append("<th>layer</th>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>")
    for lr in last.layers:
        cells = "".join(f"<td>{'' if lr.stats.get(c) is None else format(lr.stats[c], '.4g')}</td>" for c in cols)
        parts.append(f"<tr><td>{_html(lr.name)}</td>{cells}</tr>")
    parts.append("</table>")
    done = 0
    for title, figs in groups:
        parts.append(f"<h2>{_html(title)}</h2>")
        for f in figs:
            done += 1
            step(f"figure {done}/{n_figs}: {f.title}")
            fig = f.make()
            png = _png(fig)
            base = out + f.anchor[len("fig"):]  # OUT-3, OUT-3a: the figure's own number, as its anchor
            if "png" in formats:
                with open(base + ".png", "wb") as fh:
                    fh.write(png)
                if on_file:
                    on_file(base + ".png")
            if "svg" in formats:
                with _plain_text():
                    fig.savefig(base + ".svg", format="svg")
                if on_file:
                    on_file(base + ".svg")
            parts.append(f"<h3 id='{f.anchor}'>{_html(f.title)}</h3><p>layers: {_html(', '.join(f.names))}"
                         f"</p><img alt='{_html(f.title)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
    path = out + ".html"
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(parts))
    if on_file:
        on_file(path)
    return path
