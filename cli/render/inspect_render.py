"""Renderings of `wdist inspect`: rich table, JSON (wdist/inspect/1), CSV and Markdown."""

from __future__ import annotations

from typing import Any

import click

from wdist.analyzers.inspect import InspectReport, LayerReport, TensorReport
from wdist.analyzers.metrics import METRICS
from wdist.cli.render.common import (
    Cell,
    Col,
    console,
    csv_row,
    csv_writer,
    echo,
    fit_bins,
    fold,
    heading,
    human_bytes,
    md_cell,
    md_lead,
    md_table,
    num,
    out_width,
    pct,
    plural,
    print_reading,
    print_table,
    prose,
    safe,
    warn,
    write_json,
)
from wdist.cli.render.hist import bars

SCHEMA = "wdist/inspect/1"
COLUMNS = ["params", "mean", "std", "|w| p50", "max|w|", "zero", "near0", "kurt", "gini", "top1%", "dead"]


def _maxabs(s: dict[str, Any]) -> float | None:
    if s.get("max") is None:
        return None
    return max(abs(s["max"]), abs(s["min"]))


def cells(row: TensorReport | LayerReport) -> list[Cell]:
    """The table's cells of one row, with a rich style on the cells that flag a problem."""
    s = row.stats
    params = row.numel if isinstance(row, TensorReport) else row.parameters
    dead: Cell = "-" if s.get("units") is None else f"{s['dead_units']}/{s['units']}"
    zero: Cell = pct(s.get("zero_fraction"))
    if (s.get("nan_count") or 0) + (s.get("inf_count") or 0):
        zero = (f"{zero} NaN {s['nan_count']} Inf {s['inf_count']}", "bold red")
    if s.get("dead_units"):
        dead = (str(dead), "bold red")
    k: Cell = num(s.get("kurtosis"), 3)
    if s.get("kurtosis") is not None and s["kurtosis"] > 5:
        k = (str(k), "magenta")
    return [f"{params:,}", num(s.get("mean"), 3), num(s.get("std"), 3), num(s.get("abs_p50"), 3),
            num(_maxabs(s), 3), zero, pct(s.get("near_zero_fraction")), k, num(s.get("gini"), 3),
            pct(s.get("top1pct_l2_mass")), dead]


def plain(c: Cell) -> str:
    return c if isinstance(c, str) else c[0]


def hist_lines(row: TensorReport | LayerReport, log_counts: bool, width: int | None) -> list[str]:
    out = []
    avail = None if width is None else max(8, width - 4)
    h, lh = row.histogram, row.log_histogram
    if h:
        counts, k = fit_bins(h.counts, avail)
        merged = f"; shown {k}:1 merged to fit" if k > 1 else ""
        out += fold(f"w in [{h.edges[0]:.3g}, {h.edges[-1]:.3g}]  ({len(h.counts)} bins{merged}; beyond: "
                    f"{h.underflow} below, {h.overflow} above)", width, indent="  ")
        out += ["  |" + line + "|" for line in bars(counts, 5, log_counts)]
    if lh:
        counts, k = fit_bins(lh.counts, avail)
        merged = f"; shown {k}:1 merged" if k > 1 else ""
        out += fold(f"log10|w| in [{lh.edges[0]:.2f}, {lh.edges[-1]:.2f}]  (zeros {lh.zeros}, smaller "
                    f"{lh.underflow}{merged})", width, indent="  ")
        out += ["  |" + line + "|" for line in bars(counts, 4, log_counts)]
    return out


def render(r: InspectReport, fmt: str, rows: list[Any], per_tensor: bool, hist: bool, log_counts: bool) -> None:
    if fmt == "json":
        write_json(r)
    elif fmt == "csv":
        w = csv_writer()
        head = ["name", "layer", "role", "shape", "dtype"] if per_tensor else ["name", "parameters", "tensors"]
        csv_row(w, head + list(METRICS))
        for row in rows:
            lead = ([row.name, row.layer, row.role, "x".join(map(str, row.shape)), row.dtype] if per_tensor
                    else [row.name, row.parameters, len(row.tensors)])
            csv_row(w, lead + ["" if row.stats.get(m) is None else row.stats[m] for m in METRICS])
    elif fmt == "markdown":
        click.echo(_markdown(r, rows, per_tensor))
    else:
        _table(r, rows, per_tensor, hist, log_counts)


def _what(r: InspectReport) -> str:
    ck = r.checkpoint
    return (f"{ck.format}, {ck.variant}; {plural(ck.tensors, 'tensor')}, "
            f"{plural(ck.parameters, 'parameter')}, {human_bytes(ck.bytes)}")


def _header(r: InspectReport) -> list[str]:
    """The header lines as plain text, not escaped: the text rendering escapes them (prose), the Markdown
    one with md_cell; safe() is injective and so must run exactly once."""
    ck, m = r.checkpoint, r.model.stats
    roles = ", ".join(f"{k} {v:,}" for k, v in ck.parameters_by_role.items())
    dtypes = ", ".join(f"{k} {v:,}" for k, v in ck.parameters_by_dtype.items())
    lines = [f"{ck.path}  ({_what(r)})"]
    if roles:
        lines.append(f"by role: {roles}")
    if dtypes:
        lines.append(f"by dtype: {dtypes}")
    t = m.get("near_zero_threshold")
    rel = r.options.get("near_zero_rel")
    # in relative mode each tensor has its own threshold: say the rule, not one number
    rule = num(t, 3) if t is not None or rel is None else f"{num(rel, 3)} x each tensor's max|w|"
    values = plural(m.get('numel') or 0, 'value')
    pooled = r.model.tensors
    # the model statistics pool the parameter groups only: say so when other tensors (optimizer state,
    # running stats) were analysed too, so the value count is not read as all of them
    what = (f"{values} in {plural(len(r.tensors), 'tensor')}" if pooled in (0, len(r.tensors)) else
            f"{plural(len(r.tensors), 'tensor')}; model statistics: {values} in {pooled:,} of them")
    lines.append(f"analysed: {what}; "
                 f"global sparsity: {pct(m.get('zero_fraction'))} exactly zero, {pct(m.get('near_zero_fraction'))} "
                 f"near zero (|w| <= {rule})")
    if r.skipped:  # selected but not floating point: said (every name), never silently left out
        lines.append(f"not analysed (not floating point): {plural(len(r.skipped), 'tensor')}: "
                     + ", ".join(r.skipped))
    if ck.step is not None:
        lines.append(f"step: {ck.step}")
    return lines


def _table(r: InspectReport, rows: list[Any], per_tensor: bool, hist: bool, log_counts: bool) -> None:
    con = console()
    head = _header(r)
    heading(con, [safe(r.checkpoint.path)], safe(f"({_what(r)})"))
    for line in head[1:]:
        prose(con, line)
    warn(con, r.checkpoint.warnings)
    cols = ([Col("role", False)] if per_tensor else []) + [Col(c) for c in COLUMNS]
    print_table(con, "tensor" if per_tensor else "layer", cols,
                [(row.name, ([row.role] if per_tensor else []) + cells(row)) for row in rows])
    if hist:
        width = out_width()
        for row in rows:
            echo(con, safe(row.name), "bold")
            for line in hist_lines(row, log_counts, width):
                echo(con, line)
    print_reading(con, [(row.name, row.notes) for row in rows] + [("model", r.model.notes)], [])
    if r.model.summary:
        prose(con, r.model.summary, hang="")
    if r.spectral is not None:
        from wdist.cli.render.spectral_render import print_spectral

        print_spectral(con, r.spectral.to_dict())


def _markdown(r: InspectReport, rows: list[Any], per_tensor: bool) -> str:
    head = _header(r)
    out = [f"**{md_cell(head[0])}**", ""] + [f"- {md_lead(x)}" for x in head[1:]] + [""]
    lead = ["name", "role"] if per_tensor else ["name"]
    out += md_table(lead + COLUMNS,
                    [([row.name, row.role] if per_tensor else [row.name]) + [plain(c) for c in cells(row)]
                     for row in rows], [False] * len(lead) + [True] * len(COLUMNS))
    notes = [f"- {md_lead(row.name)}: {md_cell(n)}" for row in rows for n in row.notes]
    notes += [f"- model: {md_cell(n)}" for n in r.model.notes]
    if notes:
        out += ["", "**Reading**", ""] + notes
    if r.model.summary:
        out += ["", md_cell(r.model.summary)]
    return "\n".join(out)
