"""Renderings of `wdist trend` (JSON schema wdist/trend/1)."""

from __future__ import annotations

import csv
import sys
from typing import Any

import click

from wdist.analyzers.trend import TrendReport
from wdist.cli.render.common import console, dumps, jsonable, num, print_reading
from wdist.cli.render.hist import BLOCKS, sparkline

SCHEMA = "wdist/trend/1"
SHORT = {"l2_norm": "L2", "kurtosis": "kurt", "near_zero_fraction": "near0", "zero_fraction": "zero",
         "top1pct_l2_mass": "top1%", "abs_p50": "|w|p50", "abs_p999": "|w|p99.9"}


def as_dict(r: TrendReport) -> dict[str, Any]:
    return {"schema": SCHEMA, "order": r.order, "metrics": r.metrics,
            "checkpoints": [jsonable(p) for p in r.checkpoints],
            "layers": [{"name": lt.name, "series": jsonable(lt.series), "change_first": jsonable(lt.change_first),
                        "change_prev": jsonable(lt.change_prev), "notes": lt.notes} for lt in r.layers],
            "tensors": [{"name": n, "series": jsonable(s)} for n, s in r.tensors.items()],
            "model": {"series": jsonable(r.model)}, "notes": r.notes}


def _ridge_row(counts: list[int], top: int) -> str:
    return "".join(BLOCKS[min(8, round(8 * c / top))] if top else " " for c in counts)


def render(r: TrendReport, fmt: str, hist: bool) -> None:
    if fmt == "json":
        click.echo(dumps(as_dict(r)))
        return
    if fmt == "csv":
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(["layer", "checkpoint", "step"] + r.metrics)
        for lt in r.layers:
            for i, p in enumerate(r.checkpoints):
                w.writerow([lt.name, p.label, "" if p.step is None else p.step]
                           + ["" if lt.series[m][i] is None else lt.series[m][i] for m in r.metrics])
        return
    from rich.table import Table

    con = console()
    con.print(f"[bold]{len(r.checkpoints)} checkpoints[/], ordered {r.order}:", highlight=False)
    for i, p in enumerate(r.checkpoints):
        step = "" if p.step is None else f"  ({p.step_source} {p.step})"
        err = f"  [red]unreadable: {p.error}[/]" if p.error else ""
        con.print(f"  {i + 1}. {p.label}{step}{err}", highlight=False)
    tab = Table(box=None, pad_edge=False, header_style="bold")
    tab.add_column("layer", no_wrap=True, min_width=min(32, max((len(lt.name) for lt in r.layers), default=5)))
    for m in r.metrics:
        tab.add_column(SHORT.get(m, m), overflow="fold")
    for lt in r.layers:
        cells = []
        for m in r.metrics:
            s = lt.series[m]
            last = next((v for v in reversed(s) if v is not None), None)
            ch = lt.change_first.get(m)
            chs = "" if ch is None else f" {ch:+.0%}" if abs(ch) < 10 else " ++"
            cells.append(f"{sparkline(s)} {num(last, 3)}{chs}")
        tab.add_row(lt.name, *cells)
    con.print(tab)
    con.print("each cell: sparkline over the checkpoints, last value, change against the first checkpoint "
              "(JSON also has the change against the previous one); "
              + ", ".join(f"{v} = {k}" for k, v in SHORT.items() if k in r.metrics), style="dim")
    if hist:
        for lt in r.layers:
            hs = [h for h in lt.ridgeline if h is not None]
            if not hs:
                continue
            top = max(max(h.counts) for h in hs)
            con.print(f"[bold]{lt.name}[/]  w in [{hs[0].edges[0]:.3g}, {hs[0].edges[-1]:.3g}] on shared bins",
                      highlight=False)
            for p, h in zip(r.checkpoints, lt.ridgeline):
                label = p.display[:14]
                con.print(f"  {label:>14} |{_ridge_row(h.counts, top) if h else ''}|", markup=False, highlight=False)
    print_reading(con, [(lt.name, lt.notes) for lt in r.layers], r.notes)
