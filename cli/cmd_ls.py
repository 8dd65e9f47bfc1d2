"""`wdist ls PATH`: every tensor from headers only."""

from __future__ import annotations

import click

from wdist.cli.options import input_format, output_format


@click.command()
@click.argument("path", type=click.Path())
@output_format(["table", "json", "csv", "markdown"])
@input_format
def ls(path: str, fmt: str, input_format: str | None) -> None:
    """List every tensor of PATH with its layer, role, shape, dtype, parameters and bytes.

    Reads headers and metadata only, never tensor data.
    """
    from wdist.cli.render import ls_render
    from wdist.loaders import open_checkpoint

    ck = open_checkpoint(path, input_format)
    ls_render.render(ck, fmt)
