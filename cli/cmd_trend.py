"""`wdist trend CKPT... | DIR | GLOB | URL`."""

from __future__ import annotations

import click

from wdist.cli.options import (
    analysis_options,
    build_options,
    complete_metric,
    output_format,
    scale_options,
    spectral_options,
)


@click.command()
@click.argument("inputs", nargs=-1, required=True, shell_complete=click.Path().shell_complete)  # file names
@output_format(["table", "json", "csv", "jsonl"])
@analysis_options
@scale_options
@spectral_options
@click.option("--metric", "chosen", multiple=True, metavar="METRIC", shell_complete=complete_metric,
              help="Metric to follow (repeatable). Default: l2_norm, std, kurtosis, near_zero_fraction, "
                   "zero_fraction, top1pct_l2_mass.")
@click.option("--order", type=click.Choice(["step", "given"]), default="step", show_default=True,
              help="'step': by the step/epoch in names (or inside the files), else natural name order.")
@click.option("--hist", is_flag=True, help="Draw a ridgeline of each layer's histogram over the steps.")
@click.option("--watch", is_flag=True,
              help="Follow a run that is still training: poll DIR for new complete checkpoints and report each one "
                   "(with --format jsonl, one JSON line per new checkpoint). Ctrl-C stops (exit 0).")
@click.option("--interval", type=click.FloatRange(0.05), default=5.0, show_default=True, metavar="SECONDS",
              help="With --watch: seconds between polls; a checkpoint counts as complete once its size and mtime "
                   "stay unchanged for one interval.")
@click.option("--tensorboard", "tb_logdir", type=click.Path(file_okay=False), default=None, metavar="LOGDIR",
              help="Also write TensorBoard event files (a histogram per layer at each checkpoint's step, the metrics "
                   "as scalars) to LOGDIR; needs wdist[tensorboard].")
@click.option("--tensors", "tb_tensors", is_flag=True, help="With --tensorboard: also every tensor's metrics.")
def trend(inputs: tuple[str, ...], fmt: str, roles: tuple[str, ...], layer_globs: tuple[str, ...],
          near_zero_rel: float | None, near_zero_abs: float | None, bins: int, jobs: int, quiet: bool,
          input_format: str | None, scheduler: str | None, cluster: str | None, no_cache: bool, spectral: bool,
            spectral_max_side: int, spectral_conv: str,
          chosen: tuple[str, ...], order: str, hist: bool, watch: bool, interval: float, tb_logdir: str | None,
          tb_tensors: bool) -> None:
    """Per-layer metrics across the checkpoints of a training run (files, folders, globs or URLs), ordered by
    step.

    A checkpoint that cannot be read is reported and skipped; the exit code is then 2.
    """
    import sys

    import wdist
    from wdist.analyzers.trend import DEFAULT_METRICS
    from wdist.cli.main import _error_line, echo_err, set_exit
    from wdist.cli.options import apply_spectral, runtime
    from wdist.cli.render import trend_render
    from wdist.cli.render.common import output_may_end
    from wdist.cli.render.common import quiet as global_quiet
    from wdist.loaders.errors import UsageError

    opts = apply_spectral(build_options(roles, layer_globs, near_zero_rel, near_zero_abs, bins, jobs), spectral,
                          spectral_max_side, spectral_conv)
    metrics = chosen or DEFAULT_METRICS
    if tb_logdir:
        from wdist.tbexport import require

        require(tb_logdir)
    if fmt == "jsonl" and not watch:
        raise UsageError(None, "--format jsonl goes with --watch (one line per new checkpoint)")
    with runtime(opts, scheduler, cluster, no_cache):
        if watch:
            if len(inputs) != 1:
                raise UsageError(None, "--watch follows one folder (or glob)")
            _watch(inputs[0], opts, metrics, order, fmt, hist, interval, input_format, tb_logdir, tb_tensors)
            return
        show = not (quiet or global_quiet()) and sys.stderr.isatty() and len(inputs) >= 1
        if show:
            from rich.console import Console
            from rich.progress import Progress

            with Progress(transient=True, console=Console(stderr=True)) as p:
                task = p.add_task("checkpoints", total=None)
                report = wdist.trend(list(inputs), metrics=metrics, order=order, format=input_format, opts=opts,
                                     progress=lambda i, n: p.update(task, completed=i, total=n))
        else:
            report = wdist.trend(list(inputs), metrics=metrics, order=order, format=input_format, opts=opts)
    if report.errors:
        set_exit(2)
    with output_may_end():
        trend_render.render(report, fmt, hist)
    if tb_logdir:
        from wdist.tbexport import write_trend

        w = write_trend(report, tb_logdir, tensors=tb_tensors)
        click.echo(f"TensorBoard: {w.histograms} histograms, {w.scalars} scalars at {len(w.steps)} steps in "
                   f"{w.logdir} (tensorboard --logdir {w.logdir})", err=True)
    for pt in report.checkpoints:
        if pt.error:
            echo_err(_error_line(pt.path, pt.error))
    if report.errors:
        raise SystemExit(2)


def _watch(source: str, opts: object, metrics: tuple[str, ...], order: str, fmt: str, hist: bool, interval: float,
           input_format: str | None, tb_logdir: str | None, tb_tensors: bool) -> None:
    """Re-run trend over the complete checkpoints each time a new one appears. Unchanged checkpoints come
    from the summary cache, so each update reads only the new file."""
    import json

    import wdist
    from wdist.analyzers.trend import watch
    from wdist.cli.render import trend_render

    seen: dict[str, str] = {}  # path -> its line as last printed (values too): printed again when it changes
    try:
        for done in watch(source, poll=interval, settle=interval):
            report = wdist.trend(done, metrics=metrics, order=order, format=input_format, opts=opts)  # type: ignore[arg-type]
            if fmt == "jsonl":
                d = report.to_dict()
                for i, pt in enumerate(d["checkpoints"]):
                    line = {"schema": "wdist/trend-point/1", "checkpoint": pt,
                            "layers": {lt["name"]: {m: lt["series"][m][i] for m in d["metrics"]} for lt in d["layers"]},
                            "model": {m: d["model"]["series"][m][i] for m in d["metrics"]}}
                    # the values are compared too: a file rewritten in place keeps its path, step and label;
                    # the label is not: it grows (ckpt.pt -> r1/ckpt.pt) when a file of the same name arrives
                    same = {**line, "checkpoint": {k: v for k, v in pt.items() if k != "label"}}
                    text = json.dumps(same, sort_keys=True, allow_nan=False)
                    if seen.get(pt["path"]) == text:
                        continue
                    seen[pt["path"]] = text
                    click.echo(json.dumps(line, allow_nan=False))
            else:
                trend_render.render(report, fmt, hist)
            if tb_logdir:
                from wdist.tbexport import write_trend

                write_trend(report, tb_logdir, tensors=tb_tensors)
    except KeyboardInterrupt:
        return
