"""Helpers shared by the renderers: number formatting, JSON-safe conversion, the console."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

import numpy as np


def console(file: Any = None) -> Any:
    from rich.console import Console

    width = int(os.environ["COLUMNS"]) if os.environ.get("COLUMNS", "").isdigit() else None
    return Console(file=file, width=width, no_color=bool(os.environ.get("NO_COLOR")) or None, soft_wrap=False)


def num(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return f"{v:.{digits}g}"


def pct(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def human_bytes(n: int) -> str:
    x = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if x < 1024 or unit == "TB":
            return f"{x:.0f} {unit}" if unit == "B" else f"{x:.1f} {unit}"
        x /= 1024
    return f"{n} B"


def jsonable(obj: Any) -> Any:
    """Plain JSON data: dataclasses to dicts, numpy to Python, NaN/Inf to null (never bare tokens)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.repr}
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if hasattr(obj, "value") and isinstance(obj.value, str):
        return obj.value
    return obj


def dumps(obj: Any) -> str:
    return json.dumps(jsonable(obj), indent=2, allow_nan=False)


def md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def print_reading(con: Any, rows: list[tuple[str, list[str]]], notes: list[str]) -> None:
    """The "Reading" section shared by inspect, diff and trend: notes per row, then general notes."""
    con.print("[bold]Reading[/]")
    for name, row_notes in rows:
        for note in row_notes:
            con.print(f"  {name}: {note}", markup=False, highlight=False)
    for note in notes:
        con.print(f"  {note}", markup=False, highlight=False)
