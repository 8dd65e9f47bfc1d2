"""Renderings of `wdist inspect`: rich table, JSON (wdist/inspect/1), CSV and Markdown."""

from __future__ import annotations

import csv
import sys
from typing import Any

import click

from wdist.analyzers.inspect import InspectReport, LayerReport, TensorReport
from wdist.analyzers.metrics import METRICS
from wdist.cli.render.common import console, dumps, human_bytes, jsonable, md_escape, num, pct, print_reading
from wdist.cli.render.hist import bars

SCHEMA = "wdist/inspect/1"
COLUMNS = [("params", "right"), ("mean", "right"), ("std", "right"), ("|w| p50", "right"), ("max|w|", "right"),
           ("zero", "right"), ("near0", "right"), ("kurt", "right"), ("gini", "right"), ("top1%", "right"),
           ("dead", "right")]


def as_dict(r: InspectReport) -> dict[str, Any]:
    ck = r.checkpoint
    return {
        "schema": SCHEMA,
        "checkpoint": jsonable(ck),
        "options": r.options,
        "tensors": [jsonable(t) for t in r.tensors],
        "layers": [jsonable(lr) for lr in r.layers],
        "model": jsonable(r.model),
        "skipped": r.skipped,
    }


def _maxabs(s: dict[str, Any]) -> float | None:
    if s.get("max") is None:
        return None
    return max(abs(s["max"]), abs(s["min"]))


def _cells(row: TensorReport | LayerReport) -> list[str]:
    s = row.stats
    params = row.numel if isinstance(row, TensorReport) else row.parameters
    dead = "-" if s.get("units") is None else f"{s['dead_units']}/{s['units']}"
    zero = pct(s.get("zero_fraction"))
    if (s.get("nan_count") or 0) + (s.get("inf_count") or 0):
        zero += f" [bold red]NaN {s['nan_count']} Inf {s['inf_count']}[/]"
    if s.get("dead_units"):
        dead = f"[bold red]{dead}[/]"
    k = num(s.get("kurtosis"), 3)
    if s.get("kurtosis") is not None and s["kurtosis"] > 5:
        k = f"[magenta]{k}[/]"
    return [f"{params:,}", num(s.get("mean"), 3), num(s.get("std"), 3), num(s.get("abs_p50"), 3),
            num(_maxabs(s), 3), zero, pct(s.get("near_zero_fraction")), k, num(s.get("gini"), 3),
            pct(s.get("top1pct_l2_mass")), dead]


def _hist_lines(row: TensorReport | LayerReport, log_counts: bool) -> list[str]:
    out = []
    h, lh = row.histogram, row.log_histogram
    if h:
        out.append(f"  w in [{h.edges[0]:.3g}, {h.edges[-1]:.3g}]  ({len(h.counts)} bins; beyond: "
                   f"{h.underflow} below, {h.overflow} above)")
        out += ["  |" + line + "|" for line in bars(h.counts, 5, log_counts)]
    if lh:
        out.append(f"  log10|w| in [{lh.edges[0]:.2f}, {lh.edges[-1]:.2f}]  (zeros {lh.zeros}, smaller "
                   f"{lh.underflow})")
        out += ["  |" + line + "|" for line in bars(lh.counts, 4, log_counts)]
    return out


def render(r: InspectReport, fmt: str, rows: list[Any], per_tensor: bool, hist: bool, log_counts: bool) -> None:
    if fmt == "json":
        click.echo(dumps(as_dict(r)))
    elif fmt == "csv":
        w = csv.writer(sys.stdout, lineterminator="\n")
        head = ["name", "layer", "role", "shape", "dtype"] if per_tensor else ["name", "parameters", "tensors"]
        w.writerow(head + list(METRICS))
        for row in rows:
            lead = ([row.name, row.layer, row.role, "x".join(map(str, row.shape)), row.dtype] if per_tensor
                    else [row.name, row.parameters, len(row.tensors)])
            w.writerow(lead + ["" if row.stats.get(m) is None else row.stats[m] for m in METRICS])
    elif fmt == "markdown":
        click.echo(_markdown(r, rows))
    else:
        _table(r, rows, per_tensor, hist, log_counts)


def _header(r: InspectReport) -> list[str]:
    ck, m = r.checkpoint, r.model.stats
    roles = ", ".join(f"{k} {v:,}" for k, v in ck.parameters_by_role.items())
    dtypes = ", ".join(f"{k} {v:,}" for k, v in ck.parameters_by_dtype.items())
    lines = [f"{ck.path}  ({ck.format}, {ck.variant}; {ck.tensors} tensors, {ck.parameters:,} parameters, "
             f"{human_bytes(ck.bytes)})",
             f"by role: {roles}", f"by dtype: {dtypes}",
             f"analysed: {m.get('numel') or 0:,} values in {len(r.tensors)} tensors; global sparsity: "
             f"{pct(m.get('zero_fraction'))} exactly zero, {pct(m.get('near_zero_fraction'))} near zero "
             f"(|w| <= {num(m.get('near_zero_threshold'), 3)})"]
    if ck.step is not None:
        lines.append(f"step: {ck.step}")
    return lines


def _table(r: InspectReport, rows: list[Any], per_tensor: bool, hist: bool, log_counts: bool) -> None:
    from rich.table import Table

    con = console()
    head = _header(r)
    con.print(f"[bold]{head[0]}[/]", highlight=False, soft_wrap=True)
    for line in head[1:]:
        con.print(line, highlight=False)
    for w in r.checkpoint.warnings:
        con.print(f"[yellow]warning:[/] {w}", highlight=False)
    tab = Table(box=None, pad_edge=False, header_style="bold")
    tab.add_column("tensor" if per_tensor else "layer", overflow="fold",
                   min_width=min(24, max((len(row[0] if isinstance(row, tuple) else row.name) for row in rows), default=5)))
    if per_tensor:
        tab.add_column("role")
    for col, just in COLUMNS:
        tab.add_column(col, justify=just, no_wrap=True)  # type: ignore[arg-type]
    for row in rows:
        lead = [row.name, row.role] if per_tensor else [row.name]
        tab.add_row(*lead, *_cells(row))
    con.print(tab)
    if hist:
        for row in rows:
            con.print(f"[bold]{row.name}[/]", highlight=False)
            for line in _hist_lines(row, log_counts):
                con.print(line, highlight=False, markup=False)
    print_reading(con, [(row.name, row.notes) for row in rows] + [("model", r.model.notes)], [])
    con.print(r.model.summary, highlight=False, markup=False)
    if r.skipped:
        con.print(f"not analysed (not floating point): {', '.join(r.skipped[:10])}"
                  + (" ..." if len(r.skipped) > 10 else ""), highlight=False, markup=False)


def _markdown(r: InspectReport, rows: list[Any]) -> str:
    head = _header(r)
    out = [f"**{md_escape(head[0])}**", ""] + [f"- {md_escape(x)}" for x in head[1:]] + [""]
    out.append("| name | " + " | ".join(c for c, _ in COLUMNS) + " |")
    out.append("|---|" + "---:|" * len(COLUMNS))
    for row in rows:
        cells = [c.replace("[bold red]", "").replace("[magenta]", "").replace("[/]", "") for c in _cells(row)]
        out.append(f"| {md_escape(row.name)} | " + " | ".join(cells) + " |")
    out += ["", "**Reading**", ""]
    out += [f"- `{md_escape(row.name)}`: {md_escape(n)}" for row in rows for n in row.notes]
    out += [f"- model: {md_escape(n)}" for n in r.model.notes]
    out += ["", md_escape(r.model.summary)]
    return "\n".join(out)
