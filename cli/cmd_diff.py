"""`wdist diff A B`."""

from __future__ import annotations

import click

from wdist.cli.options import analysis_options, build_options, output_format, scale_options, spectral_options


@click.command()
@click.argument("a", shell_complete=click.Path().shell_complete)  # file names; URLs stay valid
@click.argument("b", shell_complete=click.Path().shell_complete)
@output_format()
@analysis_options
@scale_options
@spectral_options
@click.option("--rtol", type=float, default=1e-5, show_default=True, help="changed_fraction: |B-A| > atol + rtol*|A|.")
@click.option("--atol", type=float, default=1e-8, show_default=True, help="See --rtol.")
@click.option("--tensors", "per_tensor", is_flag=True, help="One row per tensor instead of per layer.")
@click.option("--hist", is_flag=True, help="Draw A and B histograms of each layer on the same bins.")
@click.option("--top", type=click.IntRange(1), default=None, metavar="N", help="Show only the N most moved rows.")
def diff(a: str, b: str, fmt: str, roles: tuple[str, ...], layer_globs: tuple[str, ...],
         near_zero_rel: float | None, near_zero_abs: float | None, bins: int, jobs: int, quiet: bool,
         input_format: str | None, scheduler: str | None, cluster: str | None, no_cache: bool, spectral: bool,
            spectral_max_side: int, spectral_conv: str, rtol: float,
         atol: float, per_tensor: bool, hist: bool, top: int | None) -> None:
    """How the weights moved from checkpoint A to checkpoint B (any formats, aligned by tensor name)."""
    import wdist
    from wdist.cli.main import reading
    from wdist.cli.options import apply_spectral, runtime
    from wdist.cli.progress import progress_bar
    from wdist.cli.render import diff_render
    from wdist.cli.render.common import quiet as global_quiet

    opts = apply_spectral(build_options(roles, layer_globs, near_zero_rel, near_zero_abs, bins, jobs), spectral,
                          spectral_max_side, spectral_conv)
    with runtime(opts, scheduler, cluster, no_cache):
        reading(a)
        with wdist.open(a, input_format) as ck_a:
            reading(b)
            with wdist.open(b, input_format) as ck_b:
                reading(f"{a} / {b}")
                with progress_bar(ck_a.nbytes + ck_b.nbytes, len(ck_a.tensors), quiet or global_quiet()) as prog:
                    report = wdist.diff(ck_a, ck_b, rtol=rtol, atol=atol, opts=opts, progress=prog)
    diff_render.render(report, fmt, per_tensor=per_tensor, hist=hist, top=top, bins=bins)
