"""Renderings of `wdist trend` (JSON schema wdist/trend/1)."""

from __future__ import annotations

from rich.cells import cell_len

from wdist.analyzers.trend import SIGNED, TrendReport
from wdist.cli.render.common import (
    Col,
    console,
    csv_row,
    csv_writer,
    echo,
    fit_bins,
    fold,
    heading,
    num,
    out_width,
    plural,
    print_reading,
    print_table,
    prose,
    safe,
    warn,
    write_json,
)
from wdist.cli.render.hist import BLOCKS, sparkline

SCHEMA = "wdist/trend/1"
SHORT = {"l2_norm": "L2", "kurtosis": "kurt", "near_zero_fraction": "near0", "zero_fraction": "zero",
         "top1pct_l2_mass": "top1%", "abs_p50": "|w|p50", "abs_p999": "|w|p99.9"}


def _ridge_row(counts: list[int], top: int) -> str:
    return "".join(BLOCKS[min(8, round(8 * c / top))] if top else " " for c in counts)


def _change_text(metric: str, ch: float | None, first: float | None = None, last: float | None = None,
                 undefined: str | None = None) -> str:
    """The change against the first checkpoint: an absolute difference for signed shape metrics (kurtosis,
    mean, ...: a percent of a number near zero means nothing), a relative change for the rest: a percent,
    with as many decimals as it takes not to show a change as +0% (or a fall to 3.13 from 4.2e38 as -100%),
    or a ratio from x10 up and down to x0.1 and below. A change the JSON holds as null shows the reason the
    JSON gives for it (`undefined`: "from 0"), or nothing."""
    if ch is None:
        return f" {undefined}" if undefined else ""
    if metric in SIGNED:
        return f" {ch:+.3g}"
    if abs(ch) >= 10:
        return f" x{1 + ch:.3g}"
    if ch <= -0.9 and first and last:  # the ratio from the values: 1 + ch is 0 in float64 for 3.13 / 4.2e38
        return f" x{last / first:.3g}"
    return " " + signed_pct(ch)


def signed_pct(ch: float) -> str:
    p = 100 * ch
    if ch == 0:
        return "+0%"
    for d in range(10):
        t = f"{p:+.{d}f}"
        if float(t) not in (0.0, -100.0):
            return t + "%"
    return f"{p:+.3g}%"


def render(r: TrendReport, fmt: str, hist: bool) -> None:
    if fmt == "json":
        write_json(r)
        return
    if fmt == "csv":
        w = csv_writer()
        csv_row(w, ["layer", "checkpoint", "step", "error"] + r.metrics)
        for lt in r.layers:
            for i, p in enumerate(r.checkpoints):
                csv_row(w, [lt.name, p.label, "" if p.step is None else p.step, p.error or ""]
                        + ["" if lt.series[m][i] is None else lt.series[m][i] for m in r.metrics])
        return
    con = console()
    order = f"ordered {r.order}" if r.order.startswith(("by ", "as ")) else f"in {r.order}"
    prose(con, f"{plural(len(r.checkpoints), 'checkpoint')}, {order}:", style="bold")
    for i, p in enumerate(r.checkpoints):
        step = "" if p.step is None else f"  ({p.step_source} {p.step})"
        # folded at the spaces around the label (a file name: never inside it), as prose is
        prose(con, f"{i + 1}. {p.label}{step}", indent="  ", hang="   ", keep=[f"{i + 1}. {p.label}"])
        if p.error:
            prose(con, f"unreadable: {p.error}", indent="       ", style="red")
        warn(con, p.warnings, indent="       ")
    if not r.layers:
        echo(con, "no layer could be read" if r.errors else "no layers selected")
    else:
        rows = []
        # "last value": at the last checkpoint that could be read ("-" when the metric is undefined there,
        # e.g. a layer gone all Inf: an older value would read as the current one)
        readable = [i for i, p in enumerate(r.checkpoints) if not p.error]
        for lt in r.layers:
            first = lt.change_first
            why = lt.change_undefined.get("change_first", {})
            cells = []
            for m in r.metrics:
                s = lt.series[m]
                last = s[readable[-1]] if readable else None
                start = next((s[i] for i in readable if s[i] is not None), None)
                cells.append(f"{sparkline(s)} {num(last, 3)}{_change_text(m, first.get(m), start, last, why.get(m))}")
            rows.append((lt.name, cells))
        print_table(con, "layer", [Col(SHORT.get(m, m), False) for m in r.metrics], rows)
        names = ", ".join(f"{v} = {k}" for k, v in SHORT.items() if k in r.metrics)
        prose(con, "each cell: sparkline over the checkpoints (8 bar heights from 0 to the series' largest value: "
                   "equal bars are values within 1/8 of it, not equal values), last value, change against the first readable checkpoint "
                   "(relative; for kurtosis, skewness, mean, min and max the difference) (JSON also has the change "
                   "against the previous one)" + (f"; {names}" if names else ""),
              hang="", style="dim")
    if hist:
        width = out_width()
        labels = [safe(p.display) for p in r.checkpoints]
        # padded by terminal cells, not characters: a CJK label is two cells a character
        lw = max((cell_len(x) for x in labels), default=0)
        for lt in r.layers:
            hs = [h for h in lt.ridgeline if h is not None]
            if not hs:
                continue
            # values outside the shared range (it is set by the 99.9th percentile of |w|): counted at each
            # row's end, as inspect's histograms count them
            ends = [f" {h.underflow} below, {h.overflow} above" if h and (h.underflow or h.overflow) else ""
                    for h in lt.ridgeline]
            ew = max(len(e) for e in ends)
            inline = width is None or width - lw - 6 - ew >= 8  # else the counts get a line of their own
            # as many bins as fit (merged k:1): a bar line cannot be folded
            avail = None if width is None else max(1, width - lw - 6 - (ew if inline else 0))
            rows_c = [fit_bins(h.counts, avail) if h else ([], 1) for h in lt.ridgeline]
            k = max(kk for _, kk in rows_c)
            top = max(max(c) for c, _ in rows_c if c)
            merged = f", {k}:1 merged to fit" if k > 1 else ""
            beyond = "; values beyond it counted after each row that has any" if ew else ""
            heading(con, [safe(lt.name)],
                    f"w in [{hs[0].edges[0]:.3g}, {hs[0].edges[-1]:.3g}] on shared bins{merged}{beyond}")
            for label, (c, _), end in zip(labels, rows_c, ends):
                pad = " " * (lw - cell_len(label))
                echo(con, f"  {pad}{label} |{_ridge_row(c, top) if c else ''}|{end if inline else ''}")
                if end and not inline:
                    for line in fold(end.strip(), width, indent="    "):
                        echo(con, line)
    print_reading(con, [(lt.name, lt.notes) for lt in r.layers], r.notes)
