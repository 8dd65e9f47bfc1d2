"""The spectral section of `inspect --spectral` and `diff --spectral` tables."""

from __future__ import annotations

from typing import Any

from wdist.cli.render.common import Col, echo, num, print_reading, print_table, prose

COLS = [("alpha", "alpha", 3), ("alpha_weighted", "alpha_w", 3), ("stable_rank", "stable rank", 4),
        ("spectral_norm", "lambda_max", 4), ("effective_rank", "eff. rank", 4), ("mp_spikes", "MP spikes", 0),
        ("tail_count", "tail", 0)]


def _cell(v: Any, digits: int) -> str:
    return "-" if v is None else (f"{int(v):,}" if digits == 0 else num(v, digits))


def print_spectral(con: Any, spectral: dict[str, Any]) -> None:
    layers = spectral.get("layers") or {}
    if not layers and not spectral.get("skipped"):
        return
    echo(con, "Spectral (eigenvalues of W^T W per layer)", "bold")
    if layers:
        print_table(con, "layer", [Col(h) for _, h, _ in COLS],
                    [(name, [_cell(d.get(k), dg) for k, _, dg in COLS]) for name, d in layers.items()])
    notes = spectral.get("notes") or {}
    rows = [(name, ns) for name, ns in notes.items() if ns]
    if rows:
        print_reading(con, rows, [])
    for s in spectral.get("skipped") or []:
        prose(con, f"not analysed: {s}")


def print_alpha_change(con: Any, spectral: dict[str, Any]) -> None:
    change = spectral.get("alpha_change") or {}
    if not change:
        return
    a, b = spectral["a"].get("layers", {}), spectral["b"].get("layers", {})
    echo(con, "Spectral: alpha per layer, A -> B", "bold")
    print_table(con, "layer", [Col("alpha A"), Col("alpha B"), Col("change")],
                [(n, [_cell(a.get(n, {}).get("alpha"), 3), _cell(b.get(n, {}).get("alpha"), 3),
                      "-" if c is None else f"{c:+.3g}"]) for n, c in change.items()])
