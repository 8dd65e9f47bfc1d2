"""Renderings of `wdist ls`."""

from __future__ import annotations

import csv
import sys

import click

from wdist.cli.render.common import console, dumps, human_bytes, md_escape
from wdist.loaders.model import Checkpoint

SCHEMA = "wdist/ls/1"


def as_dict(ck: Checkpoint) -> dict:
    return {
        "schema": SCHEMA,
        "checkpoint": {"path": ck.path, "format": ck.format, "variant": ck.variant,
                       "tensors": len(ck.tensors), "parameters": ck.parameters, "bytes": ck.nbytes,
                       "metadata": {k: v for k, v in ck.metadata.items() if isinstance(v, (str, int, float))}},
        "unsafe_globals": list(ck.unsafe_globals),
        "warnings": list(ck.warnings),
        "tensors": [{"name": t.name, "layer": t.layer, "role": t.role.value, "shape": list(t.shape),
                     "dtype": t.dtype, "numel": t.numel, "nbytes": t.nbytes, "aliases": t.aliases}
                    for t in ck.tensors],
    }


def _totals(ck: Checkpoint, key: str) -> dict[str, tuple[int, int, int]]:
    out: dict[str, tuple[int, int, int]] = {}
    for t in ck.tensors:
        k = t.role.value if key == "role" else t.dtype
        n, p, b = out.get(k, (0, 0, 0))
        out[k] = (n + 1, p + t.numel, b + t.nbytes)
    return out


def render(ck: Checkpoint, fmt: str) -> None:
    if fmt == "json":
        click.echo(dumps(as_dict(ck)))
        return
    if fmt == "csv":
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(["name", "layer", "role", "shape", "dtype", "numel", "nbytes"])
        for t in ck.tensors:
            w.writerow([t.name, t.layer, t.role.value, "x".join(map(str, t.shape)), t.dtype, t.numel, t.nbytes])
        return
    if fmt == "markdown":
        lines = [f"**{md_escape(ck.path)}** ({ck.format}, {ck.variant}): {len(ck.tensors)} tensors, "
                 f"{ck.parameters:,} parameters, {human_bytes(ck.nbytes)}", "",
                 "| name | layer | role | shape | dtype | parameters | bytes |", "|---|---|---|---|---|---:|---:|"]
        lines += [f"| {md_escape(t.name)} | {md_escape(t.layer)} | {t.role.value} | {list(t.shape)} | {t.dtype} | "
                  f"{t.numel:,} | {t.nbytes:,} |" for t in ck.tensors]
        click.echo("\n".join(lines))
        return
    from rich.table import Table

    con = console()
    con.print(f"[bold]{ck.path}[/]  {ck.format} ({ck.variant})  {len(ck.tensors)} tensors  "
              f"{ck.parameters:,} parameters  {human_bytes(ck.nbytes)}", highlight=False, soft_wrap=True)
    tab = Table(box=None, pad_edge=False, header_style="bold")
    for col, just in (("name", "left"), ("layer", "left"), ("role", "left"), ("shape", "left"),
                      ("dtype", "left"), ("parameters", "right"), ("bytes", "right")):
        tab.add_column(col, justify=just)  # type: ignore[arg-type]
    for t in ck.tensors:
        name = t.name + (f" (= {', '.join(t.aliases)})" if t.aliases else "")
        tab.add_row(name, t.layer, t.role.value, "x".join(map(str, t.shape)) or "scalar", t.dtype,
                    f"{t.numel:,}", human_bytes(t.nbytes))
    con.print(tab)
    for key in ("role", "dtype"):
        tot = Table(box=None, pad_edge=False, header_style="bold", title=None)
        tot.add_column(f"by {key}")
        tot.add_column("tensors", justify="right")
        tot.add_column("parameters", justify="right")
        tot.add_column("bytes", justify="right")
        for k, (n, p, b) in _totals(ck, key).items():
            tot.add_row(k, f"{n:,}", f"{p:,}", human_bytes(b))
        con.print(tot)
    for w in ck.warnings:
        con.print(f"[yellow]warning:[/] {w}", highlight=False)
