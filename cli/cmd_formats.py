"""`wdist formats`: every registered checkpoint format, and whether its optional dependency is installed."""

from __future__ import annotations

from typing import Any

import click

from wdist.cli.options import output_format

NAME_CELLS = 16  # the name column's width in terminal cells; a longer name pushes its title right


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

    for r in rows:
        state = "ready" if r["available"] else f"needs pip install 'wdist[{r['extra']}]'" if r["extra"] else \
            f"needs {', '.join(r['requires'])}"
        # padded after escaping, in terminal cells (a wide character is two), so the titles line up
        name = safe(r["name"])
        click.echo(f"{name}{' ' * max(0, NAME_CELLS - cell_len(name))} "
                   + safe(f"{r['title']}  ({' '.join(r['extensions'])})  {state}"))
        if r["variants"]:
            click.echo(" " * (NAME_CELLS + 1) + safe(r["variants"]))
    for err in plugin_errors():
        click.echo(f"wdist: warning: a format plug-in failed to load: {safe(err)}", err=True)
