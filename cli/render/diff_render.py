"""Renderings of `wdist diff` (JSON schema wdist/diff/1)."""

from __future__ import annotations

from typing import Any

import click
from rich.cells import cell_len

from wdist.analyzers import histogram
from wdist.analyzers.diff import CHANGE_METRICS, DiffReport
from wdist.analyzers.summary import Summary
from wdist.cli.render.common import (
    Col,
    console,
    csv_row,
    csv_writer,
    echo,
    fit_bins,
    fold,
    heading,
    md_cell,
    md_lead,
    md_table,
    num,
    out_width,
    pct,
    print_reading,
    print_table,
    prose,
    safe,
    warn,
    write_json,
)

SCHEMA = "wdist/diff/1"


def _rows(r: DiffReport, per_tensor: bool, top: int | None) -> list[tuple[str, dict[str, Any]]]:
    if per_tensor:
        rows = [(t.name, t.change or {}) for t in r.tensors if t.change]
    else:
        rows = [(lr.name, {k: getattr(lr, k) for k in CHANGE_METRICS if hasattr(lr, k)}) for lr in r.layers]
    rows.sort(key=lambda x: -(x[1].get("rel_l2_change") or 0))
    return rows[:top] if top else rows


def _overlay(a: Summary, b: Summary, bins: int, width: int | None = None) -> list[str]:
    """A and B on the same edges: one line per bin pair, upper half A, lower half B."""
    from wdist.analyzers import metrics
    from wdist.analyzers.metrics import NearZero
    from wdist.cli.render.hist import bars

    pa = metrics.compute(a, NearZero()).get("abs_p999")
    pb = metrics.compute(b, NearZero()).get("abs_p999")
    half = histogram.symmetric_range(pa, pb, max_abs=max(abs(a.max), abs(b.max), abs(a.min), abs(b.min)))
    ha = histogram.linear(a.hist, a.exact_bins, half, bins)
    hb = histogram.linear(b.hist, b.exact_bins, half, bins)
    # as many bins as fit beside "  A |" and "|" (merged k:1): a bar line cannot be folded
    avail = None if width is None else max(1, width - 6)
    ca, k = fit_bins(ha.counts, avail)
    cb, _ = fit_bins(hb.counts, avail)
    top = max(max(ca), max(cb), 1)
    # the shared top is drawn as an extra bin and cut off again, so A and B share one scale
    scale_a = bars([*ca, top], 3)
    scale_b = bars([*cb, top], 3)
    merged = f", {k}:1 merged to fit" if k > 1 else ""
    # the range is the 99.9th percentile of |w|, so the largest values may lie outside it: say how many
    beyond = (f"; beyond: A {ha.underflow} below, {ha.overflow} above, B {hb.underflow} below, "
              f"{hb.overflow} above")
    return (fold(f"w in [{-half:.3g}, {half:.3g}]  A (top) / B (bottom), same bins and scale{merged}{beyond}",
                 width, indent="  ")
            + ["  A |" + line[:-1] + "|" for line in scale_a] + ["  B |" + line[:-1] + "|" for line in scale_b])


def _heading(con: Any, r: DiffReport) -> None:
    """A and B on one line when that fits, else each on its own line (common.heading); a side's "(format)"
    goes on the next line only where that makes "A PATH" fit: a path wider than the line keeps its format
    beside it, and a path is never split (nor its spaces folded)."""
    parts = [(f"{side} {safe(ck.path)}", f"({safe(ck.format)})") for side, ck in (("A", r.a), ("B", r.b))]
    width = out_width()
    if width is None or not any(cell_len(p) <= width < cell_len(f"{p} {f}") for p, f in parts):
        heading(con, [f"{p} {f}" for p, f in parts])
        return
    for p, f in parts:
        for line in ([p, f"  {f}"] if cell_len(p) <= width < cell_len(f"{p} {f}") else [f"{p} {f}"]):
            echo(con, line, "bold")


def render(r: DiffReport, fmt: str, per_tensor: bool, hist: bool, top: int | None, bins: int) -> None:
    if fmt == "json":
        write_json(r)
        return
    rows = _rows(r, per_tensor, top)
    if fmt == "csv":
        w = csv_writer()
        csv_row(w, ["name", "status"] + list(CHANGE_METRICS))
        status = {t.name: t.status for t in r.tensors}
        if per_tensor and not top:  # every tensor has its row: those without a pair (only_a, only_b,
            rows += [(t.name, {}) for t in r.tensors if not t.change]  # shape_changed, ...) too, empty
        for name, ch in rows:
            csv_row(w, [name, status.get(name, "layer")] + ["" if ch.get(k) is None else ch[k] for k in CHANGE_METRICS])
        return
    head = ["rel L2", "cosine", "flipped", "changed", "max|dw|"]
    cells = [[num(ch.get("rel_l2_change"), 3), num(ch.get("cosine"), 4), pct(ch.get("sign_flip_fraction")),
              pct(ch.get("changed_fraction")), num(ch.get("max_abs_change"), 3)] for _, ch in rows]
    if fmt == "markdown":
        out = [f"**diff** {md_cell(r.a.path)} → {md_cell(r.b.path)}", ""]
        out += md_table(["name"] + head, [[n, *c] for (n, _), c in zip(rows, cells)], [False] + [True] * len(head))
        notes = [f"- {md_lead(lr.name)}: {md_cell(n)}" for lr in r.layers for n in lr.notes]
        notes += [f"- {md_lead(n)}" for n in r.notes]
        if notes:
            out += [""] + notes
        click.echo("\n".join(out))
        return
    con = console()
    _heading(con, r)
    warn(con, r.a.warnings, who="A: ")
    warn(con, r.b.warnings, who="B: ")
    s = r.summary
    prose(con, f"overall: relative L2 change {num(s.get('rel_l2_change'), 3)}, cosine {num(s.get('cosine'), 4)}; "
              + ", ".join(f"{safe(k)} {v}" for k, v in s["statuses"].items()))
    print_table(con, "tensor" if per_tensor else "layer", [Col(h) for h in head],
                [(n, c) for (n, _), c in zip(rows, cells)])
    if hist and not per_tensor:
        by_name = {lr.name: lr for lr in r.layers}
        from wdist.analyzers.engine import unpack

        width = out_width()
        for n, _ in rows:
            lr = by_name[n]
            if lr.a_summary is not None and lr.b_summary is not None:
                echo(con, safe(n), "bold")
                for line in _overlay(unpack(lr.a_summary), unpack(lr.b_summary), bins, width):
                    echo(con, line)
    if r.spectral is not None:
        from wdist.cli.render.spectral_render import print_alpha_change

        print_alpha_change(con, r.spectral)
    print_reading(con, [(lr.name, lr.notes) for lr in r.layers], r.notes)
