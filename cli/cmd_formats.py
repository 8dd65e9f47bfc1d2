"""`wdist formats`: every registered checkpoint format, and whether its optional dependency is installed."""

from __future__ import annotations

from typing import Any

import click

from wdist.cli.options import output_format

NAME_CELLS = 16  # the name column's width in terminal cells; a longer name pushes its title right
MIN_TEXT = 20  # the fewest cells beside the name column that keep it (at --width / $COLUMNS)


@click.command()
@output_format(["table", "json", "markdown"])
def formats(fmt: str) -> None:
    """List the checkpoint formats wdist reads (built-in and plug-ins), with the extra each one needs."""
    from wdist.cli.render.common import md_table, safe
    from wdist.loaders.registry import formats as registered
    from wdist.loaders.registry import plugin_errors

    rows: list[dict[str, Any]] = [{"name": p.name, "title": p.title, "extensions": list(p.extensions), "variants": p.variants,
             "requires": list(p.requires), "extra": p.extra, "available": p.available()} for p in registered()]
    if fmt == "json":
        import json

        click.echo(json.dumps({"schema": "wdist/formats/1", "formats": rows, "plugin_errors": plugin_errors()},
                              indent=2))
        return
    if fmt == "markdown":
        body = [[r["title"], r["name"], " ".join(r["extensions"]), r["variants"],
                 f"wdist[{r['extra']}]" if r["extra"] else ", ".join(r["requires"]) or "-"] for r in rows]
        click.echo("\n".join(md_table(["format", "name", "files", "variants", "extra"], body)))
        return
    from rich.cells import cell_len

    from wdist.cli.render.common import fold, out_width

    width = out_width()  # --width, $COLUMNS or the terminal's; None (one line each) when piped
    entries = []
    for r in rows:
        state = "ready" if r["available"] else f"needs pip install 'wdist[{r['extra']}]'" if r["extra"] else \
            f"needs {', '.join(r['requires'])}"
        # escaped once here (safe), then padded and wrapped in terminal cells (a wide character is two)
        entries.append((r["name"], safe(f"{r['title']}  ({' '.join(r['extensions'])})  {state}"),
                        safe(r["variants"]) if r["variants"] else ""))
    # the name column while every word beside it fits (and at least MIN_TEXT cells do); else each name
    # stands on a line of its own, its text indented below it, so no line is wider than it must be
    longest = max((cell_len(w) for _, text, variants in entries for w in f"{text} {variants}".split()), default=0)
    columns = width is None or width - NAME_CELLS - 1 >= max(MIN_TEXT, longest)
    hang = " " * (NAME_CELLS + 1) if columns else "  "
    for raw, text, variants in entries:
        name = safe(raw)
        if columns:
            lines = fold(f"{name}{' ' * max(0, NAME_CELLS - cell_len(name))} {text}", width, hang=hang,
                         keep=[raw], escaped=True)
        else:
            lines = [name] + fold(text, width, indent=hang, hang="", escaped=True)
        if variants:
            lines += fold(variants, width, indent=hang, hang="", escaped=True)
        for line in lines:
            click.echo(line)
    for err in plugin_errors():
        click.echo(f"wdist: warning: a format plug-in failed to load: {safe(err)}", err=True)
