"""`wdist diff A B`."""

from __future__ import annotations

import click

from wdist.cli.options import analysis_options, build_options, output_format


@click.command()
@click.argument("a", type=click.Path())
@click.argument("b", type=click.Path())
@output_format()
@analysis_options
@click.option("--rtol", type=float, default=1e-5, show_default=True, help="changed_fraction: |B-A| > atol + rtol*|A|.")
@click.option("--atol", type=float, default=1e-8, show_default=True, help="See --rtol.")
@click.option("--tensors", "per_tensor", is_flag=True, help="One row per tensor instead of per layer.")
@click.option("--hist", is_flag=True, help="Draw A and B histograms of each layer on the same bins.")
@click.option("--top", type=click.IntRange(1), default=None, metavar="N", help="Show only the N most moved rows.")
def diff(a: str, b: str, fmt: str, roles: tuple[str, ...], layer_globs: tuple[str, ...],
         near_zero_rel: float | None, near_zero_abs: float | None, bins: int, jobs: int, quiet: bool,
         input_format: str | None, rtol: float, atol: float, per_tensor: bool, hist: bool, top: int | None) -> None:
    """How the weights moved from checkpoint A to checkpoint B (any formats, aligned by tensor name)."""
    from wdist.analyzers.diff import Tolerance, compare
    from wdist.cli.progress import progress_bar
    from wdist.cli.render import diff_render
    from wdist.loaders import open_checkpoint

    opts = build_options(roles, layer_globs, near_zero_rel, near_zero_abs, bins, jobs)
    ck_a = open_checkpoint(a, input_format)
    ck_b = open_checkpoint(b, input_format)
    with progress_bar(ck_a.nbytes + ck_b.nbytes, len(ck_a.tensors), quiet) as prog:
        report = compare(ck_a, ck_b, opts, Tolerance(rtol, atol), prog)
    diff_render.render(report, fmt, per_tensor=per_tensor, hist=hist, top=top, bins=bins)
