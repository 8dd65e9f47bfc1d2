"""What every report object offers beyond its fields: `to_dict()` (exactly the documented JSON schema),
`to_json()`, `to_pandas()` (one row per tensor or layer; pandas is the optional `pandas` extra) and
`_repr_html_()` for Jupyter. The CLI's JSON output is `to_json()` of the same objects."""

from __future__ import annotations

import dataclasses
import html
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wdist.loaders.errors import MissingDependencyError
from wdist.loaders.model import Checkpoint


def jsonable(obj: Any) -> Any:
    """Plain JSON data: dataclasses to dicts (fields with repr=False are internal and left out), numpy to
    Python, NaN/Inf to null (never bare tokens), enums to their values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.repr}
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if hasattr(obj, "value") and isinstance(obj.value, str):
        return obj.value
    return obj


def _pandas() -> Any:
    try:
        import pandas as pd
    except ImportError:
        raise MissingDependencyError(None, "to_pandas() needs pandas: pip install 'wdist[pandas]'") from None
    return pd


class ReportMixin:
    """Shared behaviour of the report dataclasses. Subclasses implement `to_dict()` and `rows()`."""

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - every report overrides it
        raise NotImplementedError

    def rows(self, level: str | None = None) -> list[dict[str, Any]]:  # pragma: no cover
        raise NotImplementedError

    def to_json(self, indent: int | None = 2) -> str:
        # ensure_ascii (the default) writes control characters and lone surrogates as \u escapes
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def to_pandas(self, level: str | None = None) -> Any:
        """A DataFrame of `rows(level)`: one row per layer by default, per tensor with level="tensor"."""
        return _pandas().DataFrame(self.rows(level))

    def _repr_html_(self) -> str:
        rows = self.rows(None)
        title, notes = self._html_title(), self._html_notes()
        out = [f"<div><b>{html.escape(title)}</b>"]
        if rows:
            cols = list(rows[0])[:14]
            out.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>")
            for r in rows[:200]:
                out.append("<tr>" + "".join(f"<td>{html.escape(_cell(r.get(c)))}</td>" for c in cols) + "</tr>")
            out.append("</table>")
            if len(rows) > 200:
                out.append(f"<p>... {len(rows) - 200} more rows: use .to_pandas()</p>")
        if notes:
            out.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
        return "\n".join(out) + "</div>"

    def _html_title(self) -> str:
        return type(self).__name__

    def _html_notes(self) -> list[str]:
        return []


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "x".join(map(str, v)) if all(isinstance(x, int) for x in v) else ", ".join(map(str, v))
    return str(v)


@dataclass
class Listing(ReportMixin):
    """`wdist ls`: a checkpoint's tensors from headers only (JSON schema wdist/ls/1)."""

    path: str
    format: str
    variant: str
    parameters: int
    bytes: int
    metadata: dict[str, Any]
    unsafe_globals: list[str]
    warnings: list[str]
    tensors: list[dict[str, Any]] = field(default_factory=list)

    SCHEMA = "wdist/ls/1"

    @classmethod
    def of(cls, ck: Checkpoint) -> Listing:
        tensors = []
        for t in ck.tensors:
            row = {"name": t.name, "layer": t.layer, "role": t.role.value, "shape": list(t.shape), "dtype": t.dtype,
                   "numel": t.numel, "nbytes": t.nbytes, "aliases": list(t.aliases)}
            if t.stored_as is not None:
                row["stored_as"] = t.stored_as
            tensors.append(row)
        meta = {k: v for k, v in ck.metadata.items() if isinstance(v, (str, int, float))}
        return cls(ck.path, ck.format, ck.variant, ck.parameters, ck.nbytes, meta, list(ck.unsafe_globals),
                   list(ck.warnings), tensors)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": self.SCHEMA,
                "checkpoint": {"path": self.path, "format": self.format, "variant": self.variant,
                               "tensors": len(self.tensors), "parameters": self.parameters, "bytes": self.bytes,
                               "metadata": jsonable(self.metadata)},
                "unsafe_globals": list(self.unsafe_globals), "warnings": list(self.warnings),
                "tensors": jsonable(self.tensors)}

    def rows(self, level: str | None = None) -> list[dict[str, Any]]:
        return [dict(t) for t in self.tensors]

    def _html_title(self) -> str:
        return f"{self.path} ({self.format}, {self.variant}): {len(self.tensors)} tensors, {self.parameters:,} parameters"

    def _html_notes(self) -> list[str]:
        return list(self.warnings)


@dataclass
class CheckReport(ReportMixin):
    """`wdist check`: every checkpoint's rule results (JSON schema wdist/check/1)."""

    checkpoints: list[Any]  # analyzers.check.CheckpointResult
    config: str | None = None

    SCHEMA = "wdist/check/1"

    @property
    def exit_code(self) -> int:
        """0 every rule passes on every checkpoint; 1 a rule fails; 2 an unreadable checkpoint or a rule error."""
        if any(r.error or any(rr.verdict == "error" for rr in r.rules) for r in self.checkpoints):
            return 2
        return 0 if all(r.passed for r in self.checkpoints) else 1

    @property
    def passed(self) -> bool:
        return self.exit_code == 0

    def to_dict(self) -> dict[str, Any]:
        return {"schema": self.SCHEMA, "passed": self.passed, "exit_code": self.exit_code, "config": self.config,
                "checkpoints": [{"path": r.path, "error": r.error, "passed": r.passed,
                                 "rules": [jsonable(rr) for rr in r.rules]} for r in self.checkpoints]}

    def rows(self, level: str | None = None) -> list[dict[str, Any]]:
        out = []
        for r in self.checkpoints:
            if r.error:
                out.append({"checkpoint": r.path, "rule": None, "verdict": "error", "name": None, "value": None,
                            "message": r.error})
            for rr in r.rules:
                for o in rr.results or [None]:
                    out.append({"checkpoint": r.path, "rule": rr.rule, "verdict": rr.verdict,
                                "name": getattr(o, "name", None), "value": getattr(o, "value", None),
                                "passed": getattr(o, "passed", None), "message": rr.message})
        return out

    def _html_title(self) -> str:
        return "wdist check: " + ("all rules pass" if self.passed else f"exit code {self.exit_code}")
