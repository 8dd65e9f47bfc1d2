"""What every report object offers beyond its fields: `to_dict()` (exactly the documented JSON schema),
`to_json()`, `to_pandas()` (one row per tensor or layer; pandas is the optional `pandas` extra) and
`_repr_html_()` for Jupyter. The CLI's JSON output is `to_json()` of the same objects."""

from __future__ import annotations

import dataclasses
import functools
import html
import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii as _enc_str
from typing import Any

import numpy as np

from wdist.loaders import fs
from wdist.loaders.errors import MissingDependencyError
from wdist.loaders.model import Checkpoint, TensorRef


@functools.cache
def _json_fields(cls: type) -> tuple[str, ...] | None:
    """The fields of a dataclass that reach JSON (repr=True), in order; None for any other type."""
    if not dataclasses.is_dataclass(cls):
        return None
    return tuple(f.name for f in dataclasses.fields(cls) if f.repr)


def jsonable(obj: Any) -> Any:
    """Plain JSON data: dataclasses to dicts (fields with repr=False are internal and left out), numpy to
    Python, NaN/Inf to null (never bare tokens), enums to their values (the definition: `_generic`)."""
    # the exact built-in types first, by identity: a report of 10^4 tensors converts millions of numbers
    t = type(obj)
    if t is float:
        return obj if math.isfinite(obj) else None
    if t is str or t is int or t is bool or obj is None:
        return obj
    if t is list or t is tuple:
        return [jsonable(v) for v in obj]
    names = _json_fields(t)  # type: ignore[arg-type]  # a type is hashable; mypy sees type[Any]
    if names is not None:
        return {n: jsonable(getattr(obj, n)) for n in names}
    return _generic(obj, jsonable)


def _generic(obj: Any, inner: Callable[[Any], Any] | None = None) -> Any:
    """jsonable by isinstance checks alone, its values converted by `inner` (this function when None: the
    reference the fast paths are tested against)."""
    conv = inner or _generic
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: conv(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.repr}
    if isinstance(obj, dict):
        return {str(k): conv(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [conv(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return conv(obj.tolist())
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

    def _json_members(self) -> Iterable[tuple[str, Any]]:
        """The top-level members of to_dict(), in order; a report may give a long array as Items, written
        element by element by iter_json (see InspectReport)."""
        return self.to_dict().items()

    def iter_json(self, indent: int | None = 2) -> Iterator[str]:
        """The text of to_json(indent), in pieces: a report of 10^4 tensors is written without its whole
        JSON tree or text in memory at once."""
        if indent is None or indent <= 0:  # not json's indented layout: written in one piece
            yield json.dumps(self.to_dict(), indent=indent, allow_nan=False)
            return
        yield from iter_members(self._json_members(), indent)

    def to_json(self, indent: int | None = 2) -> str:
        """json.dumps(self.to_dict(), indent=indent, allow_nan=False); ensure_ascii (the default) writes
        control characters and lone surrogates as \\u escapes."""
        return "".join(self.iter_json(indent))

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


class Items:
    """A JSON array that iter_members writes element by element: `make()` gives its elements (plain data,
    as jsonable makes it) when the array is written, so a report's rows are never all plain data at once."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Iterable[Any]]) -> None:
        self.make = make


def iter_members(members: Iterable[tuple[str, Any]], indent: int = 2) -> Iterator[str]:
    """The text of json.dumps(dict(members), indent=indent, allow_nan=False) for plain-data values, in
    pieces (indent >= 1): an Items value is written one element per piece."""
    step = " " * indent
    pad = step + step
    first = True
    yield "{"
    for k, v in members:
        yield ("\n" if first else ",\n") + step + _enc_str(_key(k)) + ": "
        first = False
        if isinstance(v, Items):
            empty = True
            for x in v.make():
                yield ("[\n" if empty else ",\n") + pad + _encode(x, pad, step)
                empty = False
            yield "[]" if empty else "\n" + step + "]"
        else:
            yield _encode(v, step, step)
    yield "}" if first else "\n}"


def _encode(v: Any, pad: str, step: str) -> str:
    """What json.dumps(..., indent=len(step), allow_nan=False) writes for plain data `v` nested at
    indentation `pad` (its first line unindented); strings through json's own escaping (ensure_ascii)."""
    t = type(v)
    if t is float and math.isfinite(v):
        return float.__repr__(v)
    if (t is list or t is tuple) and v:  # histogram edges and counts: one join for a list of one kind
        kinds = set(map(type, v))
        if len(kinds) == 1:
            kind = kinds.pop()
            inner = pad + step
            sep = ",\n" + inner
            if kind is float and all(map(math.isfinite, v)):
                return "[\n" + inner + sep.join(map(float.__repr__, v)) + "\n" + pad + "]"
            if kind is int:
                return "[\n" + inner + sep.join(map(int.__repr__, v)) + "\n" + pad + "]"
            if kind is str:
                return "[\n" + inner + sep.join(map(_enc_str, v)) + "\n" + pad + "]"
    if isinstance(v, str):
        return _enc_str(v)
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        return int.__repr__(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"Out of range float values are not JSON compliant: {v!r}")
        return float.__repr__(v)
    inner = pad + step
    if isinstance(v, dict):
        if not v:
            return "{}"
        items = [f"{inner}{_enc_str(_key(k))}: {_encode(x, inner, step)}" for k, x in v.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(v, (list, tuple)):
        if not v:
            return "[]"
        return "[\n" + ",\n".join(inner + _encode(x, inner, step) for x in v) + "\n" + pad + "]"
    raise TypeError(f"Object of type {type(v).__name__} is not JSON serializable")


def _key(k: Any) -> str:
    """json's conversion of a dict key to its string."""
    if isinstance(k, str):
        return k
    if k is None or isinstance(k, (bool, int, float)):
        return _encode(k, "", "")
    raise TypeError(f"keys must be str, int, float, bool or None, not {type(k).__name__}")


def _ls_row(t: TensorRef) -> dict[str, Any]:
    # plain Python values only (int() of numpy dimensions too), so rows can be handed out as they are
    row = {"name": t.name, "layer": t.layer, "role": t.role.value, "shape": [int(d) for d in t.shape],
           "dtype": t.dtype, "numel": int(t.numel), "nbytes": int(t.nbytes), "aliases": [str(a) for a in t.aliases]}
    if t.stored_as is not None:
        row["stored_as"] = t.stored_as
    return row


class TensorRows(Sequence[dict[str, Any]]):
    """A listing's rows, each made when it is asked for from the checkpoint's tensor records: a listing of
    a million tensors holds no million dicts (about 600 bytes each), and every reader of the rows (table,
    JSON, pandas) sees the same plain data. Compares equal to the list of the same rows."""

    __slots__ = ("_refs",)

    def __init__(self, refs: Sequence[TensorRef]) -> None:
        self._refs = refs

    def __len__(self) -> int:
        return len(self._refs)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [_ls_row(t) for t in self._refs[i]]
        return _ls_row(self._refs[i])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return map(_ls_row, self._refs)

    def json_rows(self, lo: int, hi: int, pad: str, step: str) -> Iterator[str]:
        """pad + _encode(row, pad, step) of rows [lo, hi), each from one template straight from the tensor
        record (no dict, no call per value): a million-row `ls --format json` spent most of its time in
        _encode. Identical text (tested); rows of other kinds take the generic path."""
        i = pad + step
        j = i + step
        sep = ",\n" + j
        for t in self._refs[lo:hi]:
            if t.stored_as is not None:
                yield pad + _encode(_ls_row(t), pad, step)
                continue
            shape = f"[\n{j}{sep.join(map(str, map(int, t.shape)))}\n{i}]" if t.shape else "[]"
            aliases = f"[\n{j}{sep.join(_enc_str(str(a)) for a in t.aliases)}\n{i}]" if t.aliases else "[]"
            yield (f'{pad}{{\n{i}"name": {_enc_str(t.name)},\n{i}"layer": {_enc_str(t.layer)},\n'
                   f'{i}"role": {_enc_str(t.role.value)},\n{i}"shape": {shape},\n{i}"dtype": {_enc_str(t.dtype)},\n'
                   f'{i}"numel": {int(t.numel)},\n{i}"nbytes": {int(t.nbytes)},\n{i}"aliases": {aliases}\n{pad}}}')

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (TensorRows, list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"TensorRows({len(self)} rows)"


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
    tensors: Sequence[dict[str, Any]] = field(default_factory=list)  # a list, or TensorRows from `of`

    SCHEMA = "wdist/ls/1"

    @classmethod
    def of(cls, ck: Checkpoint) -> Listing:
        meta = {k: v for k, v in ck.metadata.items() if isinstance(v, (str, int, float))}
        return cls(fs.redact(ck.path), ck.format, ck.variant, ck.parameters, ck.nbytes, meta, list(ck.unsafe_globals),
                   list(ck.warnings), TensorRows(list(ck.tensors)))

    def _head(self, tensors: list[dict[str, Any]]) -> dict[str, Any]:
        return {"schema": self.SCHEMA,
                "checkpoint": {"path": self.path, "format": self.format, "variant": self.variant,
                               "tensors": len(self.tensors), "parameters": self.parameters, "bytes": self.bytes,
                               "metadata": jsonable(self.metadata)},
                "unsafe_globals": list(self.unsafe_globals), "warnings": list(self.warnings),
                "tensors": tensors}

    def to_dict(self) -> dict[str, Any]:
        """The documented JSON data. The tensor rows are this listing's own (plain data already)."""
        return self._head(list(self.tensors))

    def iter_json(self, indent: int | None = 2, batch: int = 1000) -> Iterator[str]:
        """The text of json.dumps(self.to_dict(), indent=indent, allow_nan=False), in pieces of `batch`
        rows: a listing of a million tensors is written without the whole text, or json's list of tens of
        millions of small strings, in memory at once."""
        head = json.dumps(self._head([]), indent=indent, allow_nan=False)
        if not self.tensors:
            yield head
            return
        tail = "[]\n}"
        if indent is None or not head.endswith(tail):  # not json's indented layout: no pieces to splice into
            yield json.dumps(self.to_dict(), indent=indent, allow_nan=False)
            return
        pad = " " * (2 * indent)
        yield head[:-len(tail)] + "[\n"
        rows = self.tensors
        for lo in range(0, len(rows), batch):
            if isinstance(rows, TensorRows):
                text = ",\n".join(rows.json_rows(lo, lo + batch, pad, " " * indent))
            else:
                text = ",\n".join(pad + _encode(r, pad, " " * indent) for r in rows[lo:lo + batch])
            yield (",\n" if lo else "") + text
        yield "\n" + " " * indent + "]\n}"

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
                                 "warnings": list(r.warnings),
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
