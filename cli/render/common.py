"""Helpers shared by the renderers: terminal-safe text, the output width, a table layout that never drops a
name or cuts a number, number formatting and JSON-safe conversion."""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import re
import shutil
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import click
import numpy as np

from wdist.analyzers.report import jsonable
from wdist.analyzers.text import safe

# always escaped: backslash, code, emphasis, HTML/autolink, table pipe, strikethrough, entity; `_` only where
# it can open or close emphasis (not inside a word: lm_head stays as it is) and `(` only after `]` (that
# is what makes [a](b) a link; a lone [4, 288] is text, as wdist writes no link reference definitions)
_MD_SPECIAL = re.compile(r"[\\`*<>|~&]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])|(?<=\])\(")


def md_cell(s: Any) -> str:
    """One Markdown table cell (or inline text): terminal-safe, then every character CommonMark or GitHub
    could read as markup backslash-escaped, so that `a*b*c` is not rendered as a<em>b</em>c and
    `emb.<pad>` is not dropped as an HTML tag. Never put the result inside a code span: escapes are not
    processed there."""
    return _MD_SPECIAL.sub(lambda m: "\\" + m[0], safe(s))


_MD_BLOCK_START = re.compile(r"[#+\-=]|\d+[.)]")


def md_lead(s: Any) -> str:
    """md_cell for text that starts a line or a list item (`- NAME: note`): also what would open a block
    there — a heading (#), a nested list (- + or 1.), a setext underline (=), an indented code block
    (leading spaces, kept as &#32;)."""
    text = md_cell(s)
    body = text.lstrip(" ")
    lead = "&#32;" * (len(text) - len(body))
    m = _MD_BLOCK_START.match(body)
    if m:
        body = body[:m.end() - 1] + "\\" + body[m.end() - 1:]
    return lead + body


# kept for callers that escaped Markdown before; the same as md_cell
md_escape = md_cell


def _root_obj() -> dict[str, Any]:
    import click

    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return {}
    obj = ctx.find_root().obj
    return obj if isinstance(obj, dict) else {}


def out_width() -> int | None:
    """Columns to lay text out in: --width, else $COLUMNS, else the terminal's width when stdout is a
    terminal; None (natural width: nothing is folded) when stdout is a file or a pipe."""
    w = _root_obj().get("width")
    if w:
        return int(w)
    cols = os.environ.get("COLUMNS", "")
    if cols.isdigit() and int(cols) > 0:
        return int(cols)
    try:
        if sys.stdout.isatty():
            return shutil.get_terminal_size().columns
    except (AttributeError, ValueError, OSError):
        pass
    return None


def quiet() -> bool:
    return bool(_root_obj().get("quiet"))


@contextmanager
def output_may_end() -> Iterator[None]:
    """Standard output whose reader may leave (`wdist check x | head -1`): a broken pipe ends the output
    only. The command goes on (JUnit file, stderr error lines) and keeps its exit code, so a failing gate
    piped into `head` still fails."""
    from wdist.cli.main import pipe_may_close

    with pipe_may_close(sys.stdout):
        yield


NATURAL = 1 << 20  # "no limit" for rich, which needs a number


def console(file: Any = None, stderr: bool = False) -> Any:
    """A rich console with markup, emoji codes and highlighting off, so text from files prints as is."""
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            # the reader of a pipe left (`wdist ls x | head -1`): stop writing, and let the command decide
            # what follows (output_may_end), or exit 0 (LazyGroup.invoke), instead of rich's exit 1
            from wdist.cli.main import quiet_stdout

            self.quiet = True
            quiet_stdout()
            raise BrokenPipeError(errno.EPIPE, "standard output closed")

    w = out_width()
    return _Console(file=file, stderr=stderr, width=w or NATURAL, markup=False, emoji=False, highlight=False,
                   no_color=bool(os.environ.get("NO_COLOR")) or None, soft_wrap=False)


def echo(con: Any, text: Any, style: str | None = None) -> None:
    """One line exactly as given: rich neither wraps nor crops it (the terminal may wrap it visually)."""
    con.print(text, style=style, soft_wrap=True)


def fold(text: str, width: int | None, indent: str = "", hang: str = "    ", keep: Sequence[str] = (),
         escaped: bool = False) -> list[str]:
    """Terminal-safe text as lines wrapped at spaces to `width` terminal cells (wide characters count two;
    never inside a word, a number or a name in `keep`, whose own spaces do not break); one line when width
    is None (natural width). A word wider than the line stands alone on its line, whole; at a width too
    narrow for the indent and hang, a word that fits without them starts its line with less. The text is
    escaped here unless `escaped` says it was (safe() is injective, so it must run exactly once)."""
    if not escaped:
        text = safe(text)
    if width is None:
        return [indent + text]
    from rich.cells import cell_len

    # the spaces inside kept names become NUL while wrapping: safe() has escaped every NUL of the text
    for name in sorted({safe(k) for k in keep if " " in k}, key=len, reverse=True):
        text = text.replace(name, name.replace(" ", "\x00"))
    width = max(1, width)

    def cells(s: str) -> int:
        return int(cell_len(s)) + s.count("\x00")  # NUL (a kept space) has no width of its own to rich

    def start(word: str, *prefixes: str) -> str:
        # a line's first word after its indent (and hang); at a width too narrow for them, after less of
        # them if that is what lets the word fit (a word wider than the line keeps them: it is too wide anyway)
        return next((p + word for p in prefixes if cells(p + word) <= width), prefixes[0] + word)

    lines: list[str] = []
    line, started = indent, False
    for word in text.split(" "):
        if not started:
            if word:  # spaces at the start of a line are dropped
                line, started = start(word, indent, ""), True
            continue
        wider = line + " " + word
        if not word or cells(wider) <= width:  # empty word: a second space in a row
            line = wider
        else:
            lines.append(line.rstrip(" "))
            line = start(word, indent + hang, indent, "")
    lines.append(line)
    return [ln.replace("\x00", " ") for ln in lines]


def prose(con: Any, text: str, indent: str = "", hang: str = "    ", style: str | None = None,
          keep: Sequence[str] = (), escaped: bool = False) -> None:
    """A paragraph wrapped at spaces to the output width (`escaped`: the text went through safe() already)."""
    for line in fold(text, out_width(), indent, hang, keep, escaped):
        echo(con, line, style)


def warn(con: Any, warnings: Sequence[str], indent: str = "", who: str = "") -> None:
    """A checkpoint's warnings (refused globals, data not read), one wrapped paragraph each; `who` names
    the checkpoint when several are shown together (diff's A and B)."""
    for w in warnings:
        prose(con, f"warning: {who}{w}", indent=indent, style="yellow")


def heading(con: Any, parts: Sequence[str], detail: str | None = None, style: str | None = "bold") -> None:
    """A heading (parts and detail already escaped by the caller, with safe()): the parts (paths, each with
    what it is) and an optional detail joined by two spaces on one
    line when that fits the output width; else each part whole on a line of its own (a path is never split
    and its spaces never folded) and the detail wrapped below them."""
    line = "  ".join([*parts, detail] if detail else parts)
    w = out_width()
    if w is None or _len(line) <= w:
        echo(con, line, style)
        return
    for p in parts:
        echo(con, p, style)
    if detail:
        prose(con, detail, indent="  ", hang="  ", style=style, escaped=True)


# ---------------------------------------------------------------- tables

Cell = str | tuple[str, str | None]  # text, or (text, rich style)
GAP = 2
MIN_NAME = 12


@dataclasses.dataclass
class Col:
    head: str
    right: bool = True


def _text(c: Cell) -> tuple[str, str | None]:
    return (safe(c), None) if isinstance(c, str) else (safe(c[0]), c[1])


def _len(s: str) -> int:
    from rich.cells import cell_len

    return int(cell_len(s))


Segments = list[tuple[str, str]]  # one line of a table: (text, rich style or "")


def _line(pad: str, nw: int, name: str, gcols: list[tuple[int, bool]], vals: list[tuple[str, str | None]],
          style: str | None = None) -> Segments:
    seg: Segments = [(pad + name + " " * (nw - _len(name)), style or "")]
    for k, ((w, right), (txt, st)) in enumerate(zip(gcols, vals)):
        fill = " " * (w - _len(txt))
        if k or nw or name:  # no name column (nw 0): the values start the line
            seg.append((" " * GAP, ""))
        if right:
            seg.append((fill, ""))
        seg.append((txt, st or style or ""))
        if not right and k < len(gcols) - 1:
            seg.append((fill, ""))
    return seg


def table_lines(name_head: str, cols: Sequence[Col], rows: Sequence[tuple[str, Sequence[Cell]]],
                width: int | None = None, indent: int = 0) -> Iterator[Segments]:
    """A plain table as lines of styled segments, made as they are printed. Nothing is ever cut: when the
    table is wider than `width`, the value columns are split into stacked tables (each repeating the name
    column) and a name too long for its column is printed whole on its own line with its values on the next."""
    names = [safe(n) for n, _ in rows]
    cells = [[_text(c) for c in cs] for _, cs in rows]
    heads = [safe(c.head) for c in cols]
    colw = [max([_len(h)] + [_len(r[j][0]) for r in cells]) for j, h in enumerate(heads)]
    names_w = max([_len(name_head)] + [_len(n) for n in names])
    avail = (width or NATURAL) - indent
    # names up to a third of the width stay on their row; only longer ones get a line of their own
    min_name = min(names_w, max(MIN_NAME, avail // 3 if width else MIN_NAME))
    groups: list[list[int]] = []
    cur: list[int] = []
    cur_w = 0
    for j, w in enumerate(colw):
        add = w + (GAP if cur else 0)
        if cur and min_name + GAP + cur_w + add > avail:
            groups.append(cur)
            cur, cur_w = [j], w
        else:
            cur.append(j)
            cur_w += add
    groups.append(cur)
    pad = " " * indent
    head = safe(name_head)
    for g_i, g in enumerate(groups):
        gw = sum(colw[j] for j in g) + GAP * (len(g) - 1) if g else 0
        nw = min(names_w, max(avail - GAP - gw, min_name)) if g else names_w
        if g and width and nw + GAP + gw > avail:
            # too narrow for min_name beside the values: the name column is what is left (0: none, the
            # names all on lines of their own and the values below them, without the gap)
            nw = max(0, avail - GAP - gw)
        if g_i:
            yield []

        gcols = [(colw[j], cols[j].right) for j in g]
        heads_g: list[tuple[str, str | None]] = [(heads[j], None) for j in g]
        if width and len(g) == 1 and colw[g[0]] > avail:
            # one column wider than the line (trend's "sparkline last change" cells): each name on its own
            # line and its cell folded at its spaces below it, never inside a number
            j = g[0]
            entries = [(head, heads[j], "bold", "bold")] + [(n, cs[j][0], "", cs[j][1] or "")
                                                            for n, cs in zip(names, cells)]
            for n, txt, n_style, style in entries:
                yield [(pad + n, n_style)]
                yield from ([(pad + piece, style)] for piece in fold(txt, avail, hang="", escaped=True))
            continue
        if _len(head) <= nw or not g:
            yield _line(pad, nw, head, gcols, heads_g, "bold")
        else:
            yield [(pad + head, "bold")]
            yield _line(pad, nw, "", gcols, heads_g, "bold")
        for n, cs in zip(names, cells):
            vals = [cs[j] for j in g]
            if _len(n) <= nw:
                yield _line(pad, nw, n, gcols, vals)
            else:
                yield [(pad + n, "")]
                yield _line(pad, nw, "", gcols, vals)


def print_table(con: Any, name_head: str, cols: Sequence[Col], rows: Sequence[tuple[str, Sequence[Cell]]],
                indent: int = 0) -> None:
    lines = table_lines(name_head, cols, rows, out_width(), indent)
    if con.color_system is None:
        # no styles are emitted (a file, a pipe): the same characters written as plain lines; rich's print
        # of each line cost ~0.1 ms a row (10^4 rows: the CLI's time over the analysis 1.8 s -> 0.8 s)
        try:
            f = con.file
            for seg in lines:
                f.write("".join(t for t, _ in seg) + "\n")
            f.flush()
        except BrokenPipeError:
            con.on_broken_pipe()
        return
    from rich.text import Text

    for seg in lines:
        t = Text()
        for txt, st in seg:
            t.append(txt, style=st)
        echo(con, t)


def fit_bins(counts: Sequence[int], avail: int | None) -> tuple[list[int], int]:
    """Counts merged k:1 (k = 1, 2, 3, ...) until they fit in `avail` characters; returns (counts, k)."""
    c = [int(x) for x in counts]
    if avail is None or len(c) <= avail:
        return c, 1
    k = -(-len(c) // max(1, avail))
    return [sum(c[i:i + k]) for i in range(0, len(c), k)], k


def md_table(head: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[bool] | None = None) -> list[str]:
    """A GitHub Markdown table: every cell (headers too) escaped, one separator cell per header."""
    right = right or [False] * len(head)
    out = ["| " + " | ".join(md_cell(h) for h in head) + " |",
           "|" + "|".join("---:" if r else "---" for r in right) + "|"]
    out += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    return out


def csv_writer() -> Any:
    import csv

    return csv.writer(sys.stdout, lineterminator="\n")


def csv_row(w: Any, row: Sequence[Any]) -> None:
    w.writerow([safe(c) if isinstance(c, str) else c for c in row])


# ---------------------------------------------------------------- numbers

def num(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    t = f"{v:.{digits}g}"
    # a value that is not exactly 1, -1 or 0 never prints as one (a cosine of 0.99997 is not "1", the text
    # of an unchanged layer): more digits until it differs, at most all of them
    d = digits
    while isinstance(v, (float, np.floating)) and float(t) in (1.0, -1.0, 0.0) and float(t) != v and d < 17:
        d += 1
        t = f"{v:.{d}g}"
    return t


def pct(v: Any) -> str:
    """A share as a percent with one decimal, more where one would round a nonzero share to 0.0% or a
    share short of all to 100.0% (99.995% zeros is not "100.0%")."""
    if v is None:
        return "-"
    p = 100 * v
    if v in (0, 1) or not math.isfinite(p):
        return f"{p:.1f}%"
    # 1 to 9 decimals, then 3 significant digits (a share 1e-12 from 0 or from all), then every digit
    for spec in [f".{d}f" for d in range(1, 10)] + [".3g"]:
        s = f"{p:{spec}}"
        if float(s) not in (0.0, 100.0):
            return s + "%"
    return f"{p!r}%"


def human_bytes(n: int) -> str:
    """Binary units, labelled as such (KiB, MiB, GiB), the same as the progress bar's."""
    x = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        # compared after rounding: 1,048,575 B is "1.0 MiB", never "1024.0 KiB"
        if (round(x) if unit == "B" else round(x, 1)) < 1024 or unit == "TiB":
            return f"{x:.0f} {unit}" if unit == "B" else f"{x:.1f} {unit}"
        x /= 1024
    return f"{n} B"


def plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n:,} {word if n == 1 else (many or word + 's')}"


def dumps(obj: Any) -> str:
    """JSON text of a report (its to_dict(), the documented schema) or of plain data."""
    if hasattr(obj, "to_json"):
        return str(obj.to_json())
    # ensure_ascii (the default) writes control characters and lone surrogates as \u escapes
    return json.dumps(jsonable(obj), indent=2, allow_nan=False)


def write_json(obj: Any) -> None:
    """dumps(obj) and a newline on stdout, a report's in the pieces of its iter_json: the JSON of 10^4
    tensors is never one string (nor one tree of plain data) in memory."""
    for piece in obj.iter_json() if hasattr(obj, "iter_json") else (dumps(obj),):
        click.echo(piece, nl=False)
    click.echo()


# a number standing on its own in a note (not part of a name such as conv2.weight, h.10 or 0.bias: a dot
# followed by a letter continues a name, a dot at the end of a sentence does not)
_NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?%?(?!\w|\.\w)")


def group_notes(rows: Sequence[tuple[str, Sequence[str]]]) -> list[str]:
    """One line per distinct note, naming every row that has it: notes that differ only in their numbers are
    merged, each differing number listed in row order ("conv2, conv3: kurtosis -0.46 / -0.23 ..."), so no
    name and no digit is lost while 20 identical notes do not fill the screen."""
    groups: dict[tuple[str, ...], list[tuple[str, list[str]]]] = {}
    order: list[tuple[str, ...]] = []
    for name, row_notes in rows:
        for note in row_notes:
            parts = _NUMBER.split(note)
            key = tuple(parts)
            if key not in groups:
                groups[key] = []
                order.append(key)
            groups[key].append((name, _NUMBER.findall(note)))
    out = []
    for key in order:
        members = groups[key]
        names = [n for n, _ in members]
        text = key[0]
        for i, piece in enumerate(key[1:]):
            vals = list(dict.fromkeys(nums[i] for _, nums in members))
            text += (vals[0] if len(vals) == 1 else " / ".join(nums[i] for _, nums in members)) + piece
        head = names[0] if len(names) == 1 else f"{', '.join(names)} ({len(names)})"
        out.append(f"{head}: {text}")
    return out


def print_reading(con: Any, rows: Sequence[tuple[str, Sequence[str]]], notes: Sequence[str]) -> None:
    """The "Reading" section shared by inspect, diff and trend; nothing at all when there is nothing to say."""
    items = group_notes(rows) + list(notes)
    if not items:
        return
    echo(con, "Reading", "bold")
    keep = [name for name, _ in rows if " " in name]
    for item in items:
        prose(con, item, indent="  ", keep=keep)
