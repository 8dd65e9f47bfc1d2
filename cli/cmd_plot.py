"""`wdist plot CKPT... -o OUT`."""

from __future__ import annotations

import click


@click.command()
@click.argument("paths", nargs=-1, required=True, shell_complete=click.Path().shell_complete)  # file names
@click.option("-o", "--out", required=True, metavar="OUT", shell_complete=click.Path().shell_complete,
              help="Output prefix: writes OUT-1.png ... (OUT-1a.png, OUT-1b.png, ... when a figure needs several "
                   "pages) and OUT.html.")
@click.option("--image-format", "formats", multiple=True, type=click.Choice(["png", "svg"]),
              help="Image files to write (repeatable; default png). The HTML report always embeds PNG.")
@click.option("--spectral", is_flag=True, help="Add the eigenvalue spectrum (ESD) of every weight matrix, with its "
                                             "fitted power-law tail and Marchenko-Pastur edge.")
def plot(paths: tuple[str, ...], out: str, formats: tuple[str, ...], spectral: bool) -> None:
    """Write per-layer histograms (linear and log|w|), an A/B overlay of the first and last checkpoint, a
    ridgeline of histograms across checkpoints, metric-over-step charts, and a self-contained HTML report
    with every layer. Prints each file it writes. Needs the plot extra: pip install 'wdist[plot]'."""
    import os
    import sys

    from wdist.analyzers.trend import expand_inputs, order_points
    from wdist.cli.main import reading
    from wdist.cli.render.common import quiet, safe
    from wdist.loaders.errors import UsageError
    from wdist.plots import write_report

    if not os.path.basename(out):  # "-o ''" or "-o dir/" would write "-1.png" and a hidden ".html"
        raise UsageError(None, f"-o/--out {out!r} names no file prefix: give e.g. {os.path.join(out, 'report')!r}")
    refused: dict[str, str] = {}
    ordered, _ = order_points(expand_inputs(list(paths), refused), given=False)
    files = [p.path for p in ordered]
    reading(files[-1] if files else None)
    show = not quiet() and sys.stderr.isatty()

    def step(msg: str) -> None:
        if show:
            click.echo(f"  {safe(msg)}", err=True)

    def wrote(p: str) -> None:
        click.echo(safe(p))

    from wdist.cli.main import _error_line, echo_err

    unread: list[str] = []

    def failed(path: str, why: str) -> None:
        unread.append(path)
        echo_err(_error_line(path, why))

    try:
        write_report(files, out, formats or ("png",), on_file=wrote, on_step=step, spectral=spectral,
                     on_error=failed, refused=refused)
    except OSError as e:  # the output side (readers raise typed errors): name the output path, not an input
        reading(None)
        echo_err(_error_line(str(e.filename) if e.filename else out, e.strerror or str(e)))
        raise SystemExit(2) from None
    if unread:  # the report covers the others; as in trend, an unreadable checkpoint makes the exit code 2
        raise SystemExit(2)
