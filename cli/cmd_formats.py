"""`wdist formats`: every registered checkpoint format, and whether its optional dependency is installed."""

from __future__ import annotations

import click

from wdist.cli.options import output_format


@click.command()
@output_format(["table", "json", "markdown"])
def formats(fmt: str) -> None:
    """List the checkpoint formats wdist reads (built-in and plug-ins), with the extra each one needs."""
    from wdist.loaders.registry import formats as registered
    from wdist.loaders.registry import plugin_errors

    rows = [{"name": p.name, "title": p.title, "extensions": list(p.extensions), "variants": p.variants,
             "requires": list(p.requires), "extra": p.extra, "available": p.available()} for p in registered()]
    if fmt == "json":
        import json

        click.echo(json.dumps({"schema": "wdist/formats/1", "formats": rows, "plugin_errors": plugin_errors()},
                              indent=2))
        return
    if fmt == "markdown":
        lines = ["| format | name | files | variants | needs |", "|---|---|---|---|---|"]
        for r in rows:
            needs = f"`pip install 'wdist[{r['extra']}]'`" if r["extra"] else ", ".join(r["requires"]) or "-"
            lines.append(f"| {r['title']} | `{r['name']}` | {' '.join(r['extensions'])} | {r['variants']} | {needs} |"
                         .replace("\n", " "))
        click.echo("\n".join(lines))
        return
    for r in rows:
        state = "ready" if r["available"] else f"needs pip install 'wdist[{r['extra']}]'" if r["extra"] else \
            f"needs {', '.join(r['requires'])}"
        click.echo(f"{r['name']:<14} {r['title']}  ({' '.join(r['extensions'])})  {state}")
        if r["variants"]:
            click.echo(f"{'':<14} {r['variants']}")
    for err in plugin_errors():
        click.echo(f"wdist: warning: a format plug-in failed to load: {err}", err=True)
