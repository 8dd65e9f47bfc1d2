"""`wdist inspect PATH`."""

from __future__ import annotations

import click

from wdist.cli.options import analysis_options, build_options, output_format


@click.command()
@click.argument("path", type=click.Path())
@output_format()
@analysis_options
@click.option("--tensors", "per_tensor", is_flag=True, help="One row per tensor instead of per layer.")
@click.option("--hist", is_flag=True, help="Draw each layer's (or tensor's) histograms in the terminal.")
@click.option("--log-counts", is_flag=True, help="Histogram bar heights on a log scale.")
@click.option("--sort", "sort_metric", default=None, metavar="METRIC", help="Sort rows by a metric (descending).")
@click.option("--top", type=click.IntRange(1), default=None, metavar="N", help="Show only the first N rows.")
def inspect(path: str, fmt: str, roles: tuple[str, ...], layer_globs: tuple[str, ...], near_zero_rel: float | None,
            near_zero_abs: float | None, bins: int, jobs: int, quiet: bool, input_format: str | None,
            per_tensor: bool, hist: bool, log_counts: bool, sort_metric: str | None, top: int | None) -> None:
    """Distribution and sparsity metrics of PATH per tensor, layer and model, with a reading of what they mean."""
    from wdist.analyzers.inspect import analyse, sort_rows
    from wdist.cli.progress import progress_bar
    from wdist.cli.render import inspect_render
    from wdist.loaders import open_checkpoint

    opts = build_options(roles, layer_globs, near_zero_rel, near_zero_abs, bins, jobs)
    ck = open_checkpoint(path, input_format)
    with progress_bar(ck.nbytes, len(ck.tensors), quiet) as prog:
        report = analyse(ck, opts, prog)
    rows = sort_rows(report.tensors if per_tensor else report.layers, sort_metric, top)
    inspect_render.render(report, fmt, rows, per_tensor=per_tensor, hist=hist, log_counts=log_counts)
