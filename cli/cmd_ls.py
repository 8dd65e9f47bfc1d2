"""`wdist ls PATH`: every tensor from headers only."""

from __future__ import annotations

import click

from wdist.cli.options import input_format, output_format


@click.command()
@click.argument("path", shell_complete=click.Path().shell_complete)  # file names; URLs stay valid
@output_format(["table", "json", "csv", "markdown"])
@input_format
def ls(path: str, fmt: str, input_format: str | None) -> None:
    """List every tensor of PATH (a file, a model folder or a URL) with its layer, role, shape, dtype,
    parameters and bytes.

    Reads headers and metadata only, never tensor data.
    """
    import wdist
    from wdist.cli.main import reading
    from wdist.cli.render import ls_render

    reading(path)
    ls_render.render(wdist.ls(path, input_format), fmt)
