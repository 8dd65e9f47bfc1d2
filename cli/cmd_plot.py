"""`wdist plot CKPT... -o OUT`."""

from __future__ import annotations

import click


@click.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("-o", "--out", required=True, help="Output prefix: writes OUT-N.png/.svg and OUT.html.")
@click.option("--image-format", "formats", multiple=True, type=click.Choice(["png", "svg"]),
              help="Image formats (repeatable; default png and svg).")
def plot(paths: tuple[str, ...], out: str, formats: tuple[str, ...]) -> None:
    """Write per-layer histograms (linear and log|w|), an A/B overlay of the first and last checkpoint, a
    ridgeline of histograms across checkpoints, metric-over-step charts, and a self-contained HTML report.
    Needs the plot extra: pip install 'wdist[plot]'."""
    from wdist.analyzers.trend import expand_inputs, order_points
    from wdist.cli.plotting import write_report

    ordered, _ = order_points(expand_inputs(list(paths)), given=False)
    html = write_report([p.path for p in ordered], out, formats or ("png", "svg"))
    click.echo(html)
