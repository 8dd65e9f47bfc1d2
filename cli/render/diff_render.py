"""Renderings of `wdist diff` (JSON schema wdist/diff/1)."""

from __future__ import annotations

import csv
import sys
from typing import Any

import click

from wdist.analyzers import histogram
from wdist.analyzers.diff import CHANGE_METRICS, DiffReport
from wdist.analyzers.summary import Summary
from wdist.cli.render.common import console, dumps, jsonable, md_escape, num, pct, print_reading

SCHEMA = "wdist/diff/1"


def as_dict(r: DiffReport) -> dict[str, Any]:
    return {"schema": SCHEMA, "a": jsonable(r.a), "b": jsonable(r.b), "options": r.options,
            "tensors": [jsonable(t) for t in r.tensors],
            "layers": [jsonable(lr) for lr in r.layers], "summary": jsonable(r.summary), "notes": r.notes}


def _rows(r: DiffReport, per_tensor: bool, top: int | None) -> list[tuple[str, dict[str, Any]]]:
    if per_tensor:
        rows = [(t.name, t.change or {}) for t in r.tensors if t.change]
    else:
        rows = [(lr.name, {k: getattr(lr, k) for k in CHANGE_METRICS if hasattr(lr, k)}) for lr in r.layers]
    rows.sort(key=lambda x: -(x[1].get("rel_l2_change") or 0))
    return rows[:top] if top else rows


def _overlay(a: Summary, b: Summary, bins: int) -> list[str]:
    """A and B on the same edges: one line per bin pair, upper half A, lower half B."""
    from wdist.analyzers import metrics
    from wdist.analyzers.metrics import NearZero
    from wdist.cli.render.hist import bars

    pa = metrics.compute(a, NearZero()).get("abs_p999")
    pb = metrics.compute(b, NearZero()).get("abs_p999")
    half = histogram.symmetric_range(pa, pb, max_abs=max(abs(a.max), abs(b.max), abs(a.min), abs(b.min)))
    ha = histogram.linear(a.hist, a.exact_bins, half, bins)
    hb = histogram.linear(b.hist, b.exact_bins, half, bins)
    top = max(max(ha.counts), max(hb.counts), 1)
    scale_a = bars([*ha.counts, top], 3)
    scale_b = bars([*hb.counts, top], 3)
    return ([f"  w in [{-half:.3g}, {half:.3g}]  A (top) / B (bottom), same bins and scale"]
            + ["  A |" + line[:-1] + "|" for line in scale_a] + ["  B |" + line[:-1] + "|" for line in scale_b])


def render(r: DiffReport, fmt: str, per_tensor: bool, hist: bool, top: int | None, bins: int) -> None:
    if fmt == "json":
        click.echo(dumps(as_dict(r)))
        return
    rows = _rows(r, per_tensor, top)
    if fmt == "csv":
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(["name", "status"] + list(CHANGE_METRICS))
        status = {t.name: t.status for t in r.tensors}
        for name, ch in rows:
            w.writerow([name, status.get(name, "layer")] + ["" if ch.get(k) is None else ch[k] for k in CHANGE_METRICS])
        return
    head = ["rel L2", "cosine", "flipped", "changed", "max|dw|"]
    cells = [[num(ch.get("rel_l2_change"), 3), num(ch.get("cosine"), 4), pct(ch.get("sign_flip_fraction")),
              pct(ch.get("changed_fraction")), num(ch.get("max_abs_change"), 3)] for _, ch in rows]
    if fmt == "markdown":
        out = [f"**diff** `{md_escape(r.a.path)}` → `{md_escape(r.b.path)}`", "",
               "| name | " + " | ".join(head) + " |", "|---|" + "---:|" * len(head)]
        out += [f"| {md_escape(n)} | " + " | ".join(c) + " |" for (n, _), c in zip(rows, cells)]
        out += [""] + [f"- {md_escape(n)}" for n in r.notes]
        click.echo("\n".join(out))
        return
    from rich.table import Table

    con = console()
    con.print(f"[bold]A[/] {r.a.path} ({r.a.format})  [bold]B[/] {r.b.path} ({r.b.format})", highlight=False,
              soft_wrap=True)
    s = r.summary
    con.print(f"overall: relative L2 change {num(s.get('rel_l2_change'), 3)}, cosine {num(s.get('cosine'), 4)}; "
              + ", ".join(f"{k} {v}" for k, v in s["statuses"].items()), highlight=False)
    tab = Table(box=None, pad_edge=False, header_style="bold")
    tab.add_column("tensor" if per_tensor else "layer", overflow="fold",
                   min_width=min(24, max((len(row[0] if isinstance(row, tuple) else row.name) for row in rows), default=5)))
    for h in head:
        tab.add_column(h, justify="right", no_wrap=True)
    for (n, _), c in zip(rows, cells):
        tab.add_row(n, *c)
    con.print(tab)
    if hist and not per_tensor:
        by_name = {lr.name: lr for lr in r.layers}
        from wdist.analyzers.engine import unpack

        for n, _ in rows:
            lr = by_name[n]
            if lr.a_summary is not None and lr.b_summary is not None:
                con.print(f"[bold]{n}[/]", highlight=False)
                for line in _overlay(unpack(lr.a_summary), unpack(lr.b_summary), bins):
                    con.print(line, markup=False, highlight=False)
    print_reading(con, [(lr.name, lr.notes) for lr in r.layers], r.notes)
