"""`wdist inspect PATH`."""

from __future__ import annotations

import click

from wdist.cli.options import (
    analysis_options,
    build_options,
    complete_sort,
    output_format,
    scale_options,
    spectral_options,
)


@click.command()
@click.argument("path", shell_complete=click.Path().shell_complete)  # file names; URLs stay valid
@output_format()
@analysis_options
@scale_options
@spectral_options
@click.option("--tensors", "per_tensor", is_flag=True, help="One row per tensor instead of per layer.")
@click.option("--hist", is_flag=True, help="Draw each layer's (or tensor's) histograms in the terminal.")
@click.option("--log-counts", is_flag=True, help="Histogram bar heights on a log scale.")
@click.option("--sort", "sort_metric", default=None, metavar="METRIC", shell_complete=complete_sort,
              help="Sort rows (descending) by a metric name (e.g. kurtosis, zero_fraction) or a column label "
                   "(params, mean, std, p50, max|w|, zero, near0, kurt, gini, top1%, dead); 'name' sorts by name.")
@click.option("--top", type=click.IntRange(1), default=None, metavar="N", help="Show only the first N rows.")
@click.option("--tensorboard", "tb_logdir", type=click.Path(file_okay=False), default=None, metavar="LOGDIR",
              help="Also write TensorBoard event files (a histogram per layer, the metrics as scalars) to LOGDIR; "
                   "needs wdist[tensorboard].")
@click.option("--step", "tb_step", type=click.IntRange(0), default=None,
              help="With --tensorboard: the step to log at (default: the checkpoint's stored step, else 0).")
def inspect(path: str, fmt: str, roles: tuple[str, ...], layer_globs: tuple[str, ...], near_zero_rel: float | None,
            near_zero_abs: float | None, bins: int, jobs: int, quiet: bool, input_format: str | None,
            scheduler: str | None, cluster: str | None, no_cache: bool, spectral: bool,
            spectral_max_side: int, spectral_conv: str, per_tensor: bool, hist: bool,
            log_counts: bool, sort_metric: str | None, top: int | None, tb_logdir: str | None,
            tb_step: int | None) -> None:
    """Distribution and sparsity metrics of PATH (a file, a model folder or a URL) per tensor, layer and
    model, with a reading of what they mean."""
    import wdist
    from wdist.cli.main import reading
    from wdist.cli.options import apply_spectral, runtime, sort_rows
    from wdist.cli.options import sort_metric as check_sort
    from wdist.cli.progress import progress_bar
    from wdist.cli.render import inspect_render
    from wdist.cli.render.common import quiet as global_quiet

    opts = apply_spectral(build_options(roles, layer_globs, near_zero_rel, near_zero_abs, bins, jobs), spectral,
                          spectral_max_side, spectral_conv)
    check_sort(sort_metric)  # a typo is a usage error before any work
    if tb_logdir:
        from wdist.tbexport import require

        require(tb_logdir)
    reading(path)
    with (runtime(opts, scheduler, cluster, no_cache), wdist.open(path, input_format) as ck,
          progress_bar(ck.nbytes, len(ck.tensors), quiet or global_quiet()) as prog):
        report = wdist.inspect(ck, opts=opts, progress=prog)
    rows = sort_rows(report.tensors if per_tensor else report.layers, sort_metric, top)
    inspect_render.render(report, fmt, rows, per_tensor=per_tensor, hist=hist, log_counts=log_counts)
    if tb_logdir:
        from wdist.tbexport import write_inspect

        w = write_inspect(report, tb_logdir, step=tb_step, tensors=per_tensor)
        click.echo(f"TensorBoard: {w.histograms} histograms, {w.scalars} scalars in {w.logdir} "
                   f"(tensorboard --logdir {w.logdir})", err=True)
