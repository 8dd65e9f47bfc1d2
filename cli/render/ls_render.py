"""Renderings of `wdist ls`."""

from __future__ import annotations

from typing import Any

import click

from wdist.analyzers.report import Listing
from wdist.cli.render.common import (
    Col,
    console,
    csv_row,
    csv_writer,
    heading,
    human_bytes,
    md_cell,
    md_table,
    plural,
    print_table,
    safe,
    warn,
)


def _totals(ls: Listing, key: str) -> dict[str, tuple[int, int, int]]:
    out: dict[str, tuple[int, int, int]] = {}
    for t in ls.tensors:
        k = t[key]
        n, p, b = out.get(k, (0, 0, 0))
        out[k] = (n + 1, p + t["numel"], b + t["nbytes"])
    return out


def shape_text(shape: Any) -> str:
    return "x".join(map(str, shape)) or "scalar"


def _dtype(t: dict[str, Any]) -> str:
    """The decoded dtype, and the storage type of block-quantised tensors (GGUF's Q4_K...)."""
    return f"{t['dtype']} ({t['stored_as']})" if t.get("stored_as") else t["dtype"]


def _named(t: dict[str, Any]) -> str:
    """A tensor's name with the names tied to it: `emb.weight (= lm_head.weight)`."""
    return t["name"] + (f" (= {', '.join(t['aliases'])})" if t["aliases"] else "")


def render(ls: Listing, fmt: str) -> None:
    if fmt == "json":
        for piece in ls.iter_json():  # streamed: a listing of 10^6 tensors is never one string in memory
            click.echo(piece, nl=False)
        click.echo()
        return
    if fmt == "csv":
        w = csv_writer()
        csv_row(w, ["name", "layer", "role", "shape", "dtype", "stored_as", "numel", "nbytes", "aliases"])
        for t in ls.tensors:
            csv_row(w, [t["name"], t["layer"], t["role"], "x".join(map(str, t["shape"])), t["dtype"],
                        t.get("stored_as") or "", t["numel"], t["nbytes"], ", ".join(t["aliases"])])
        return
    n = len(ls.tensors)
    if fmt == "markdown":
        lines = [f"**{md_cell(ls.path)}** ({md_cell(ls.format)}, {md_cell(ls.variant)}): "
                 f"{plural(n, 'tensor')}, {plural(ls.parameters, 'parameter')}, {human_bytes(ls.bytes)}", ""]
        lines += md_table(["name", "layer", "role", "shape", "dtype", "parameters", "bytes"],
                          [[_named(t), t["layer"], t["role"], str(list(t["shape"])), _dtype(t), str(t["numel"]),
                            str(t["nbytes"])] for t in ls.tensors], [False] * 5 + [True, True])
        lines += [f"\nwarning: {md_cell(w)}" for w in ls.warnings]
        click.echo("\n".join(lines))
        return
    con = console()
    # the heading the other commands share: the path whole on its own line when the one-line form is too wide
    heading(con, [safe(ls.path)], f"{safe(ls.format)} ({safe(ls.variant)})  {plural(n, 'tensor')}  "
                                  f"{plural(ls.parameters, 'parameter')}  {human_bytes(ls.bytes)}")
    cols = [Col("layer", False), Col("role", False), Col("shape", False), Col("dtype", False), Col("parameters"),
            Col("bytes")]
    rows = [(_named(t),
             [t["layer"], t["role"], shape_text(t["shape"]), _dtype(t), f"{t['numel']:,}", human_bytes(t["nbytes"])])
            for t in ls.tensors]
    print_table(con, "name", cols, rows)
    for key in ("role", "dtype"):
        print_table(con, f"by {key}", [Col("tensors"), Col("parameters"), Col("bytes")],
                    [(k, [f"{c:,}", f"{p:,}", human_bytes(b)]) for k, (c, p, b) in _totals(ls, key).items()])
    warn(con, ls.warnings)
