"""`wdist cache info|clear`: the summary cache that lets growing runs cost only their new checkpoints."""

from __future__ import annotations

import click


@click.group()
def cache() -> None:
    """The summary cache ($WDIST_CACHE_DIR, else the user cache folder). inspect, diff, trend and check
    reuse per-tensor summaries of unchanged files from it (--no-cache to bypass)."""


@cache.command()
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="Output format.")
def info(fmt: str) -> None:
    """Where the cache is, how many files and bytes it holds, and its size bound."""
    import json

    from wdist.analyzers.cache import SummaryCache
    from wdist.cli.render.common import human_bytes, safe

    i = SummaryCache.default().info()
    if fmt == "json":
        click.echo(json.dumps({"schema": "wdist/cache/1", **i}, indent=2))
        return
    click.echo(f"{safe(i['directory'])}: {i['files']:,} files, {human_bytes(i['bytes'])} "
               f"(bounded to {human_bytes(i['max_bytes'])}, least recently used first)")


@cache.command()
def clear() -> None:
    """Remove every cached summary."""
    from wdist.analyzers.cache import SummaryCache
    from wdist.cli.render.common import safe

    c = SummaryCache.default()
    n = c.clear()
    click.echo(f"removed {n:,} files from {safe(c.directory)}")
