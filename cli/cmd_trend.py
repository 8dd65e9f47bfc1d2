"""`wdist trend CKPT... | DIR | GLOB`."""

from __future__ import annotations

import click

from wdist.cli.options import analysis_options, build_options, output_format


@click.command()
@click.argument("inputs", nargs=-1, required=True)
@output_format(["table", "json", "csv"])
@analysis_options
@click.option("--metric", "chosen", multiple=True, metavar="METRIC",
              help="Metric to follow (repeatable). Default: l2_norm, std, kurtosis, near_zero_fraction, "
                   "zero_fraction, top1pct_l2_mass.")
@click.option("--order", type=click.Choice(["step", "given"]), default="step", show_default=True,
              help="'step': by the step/epoch in names (or inside the files), else natural name order.")
@click.option("--hist", is_flag=True, help="Draw a ridgeline of each layer's histogram over the steps.")
def trend(inputs: tuple[str, ...], fmt: str, roles: tuple[str, ...], layer_globs: tuple[str, ...],
          near_zero_rel: float | None, near_zero_abs: float | None, bins: int, jobs: int, quiet: bool,
          input_format: str | None, chosen: tuple[str, ...], order: str, hist: bool) -> None:
    """Per-layer metrics across the checkpoints of a training run, ordered by step.

    A checkpoint that cannot be read is reported and skipped; the exit code is then 2.
    """
    import sys

    from wdist.analyzers.trend import DEFAULT_METRICS, expand_inputs, run
    from wdist.cli.render import trend_render

    opts = build_options(roles, layer_globs, near_zero_rel, near_zero_abs, bins, jobs)
    paths = expand_inputs(list(inputs))
    show = not quiet and sys.stderr.isatty() and len(paths) > 1
    if show:
        from rich.progress import Progress

        with Progress(transient=True) as p:
            task = p.add_task("checkpoints", total=len(paths))
            report = run(paths, opts, chosen or DEFAULT_METRICS, order == "given", input_format,
                         lambda i, n: p.update(task, completed=i))
    else:
        report = run(paths, opts, chosen or DEFAULT_METRICS, order == "given", input_format)
    trend_render.render(report, fmt, hist)
    for pt in report.checkpoints:
        if pt.error:
            click.echo(f"wdist: error: {pt.path}: {pt.error}", err=True)
    if report.errors:
        raise SystemExit(2)
