"""`wdist demo [DIR]`: the question answered end to end on a built-in training run."""

from __future__ import annotations

import click


@click.command()
@click.argument("directory", required=False, type=click.Path(file_okay=False))
@click.option("--epochs", type=click.IntRange(1, 200), default=20, show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="No training progress.")
def demo(directory: str | None, epochs: int, quiet: bool) -> None:
    """Train a small CNN on the CPU (seeded), save checkpoints at epochs 1, 2, 5, 10, 20 as .pt and
    .safetensors into DIRECTORY (a temporary folder when omitted), then read the run with `trend` and the
    last checkpoint with `inspect`."""
    import tempfile

    from wdist.analyzers.inspect import Options, analyse
    from wdist.analyzers.trend import run
    from wdist.cli.demo_train import train
    from wdist.cli.render import inspect_render, trend_render
    from wdist.cli.render.common import console
    from wdist.loaders import open_checkpoint

    out = directory or tempfile.mkdtemp(prefix="wdist-demo-")
    con = console()
    con.print(f"[bold]Training[/] a 4-conv CNN (BatchNorm before LeakyReLU(0.3), FC head) on sparse, nearly "
              f"binary 16x16 inputs for {epochs} epochs; checkpoints go to {out}", highlight=False)

    def on_epoch(ep: int, loss: float, acc: float) -> None:
        if not quiet:
            con.print(f"  epoch {ep:>3}  loss {loss:.3f}  accuracy {acc:.1%}", highlight=False)

    paths = train(out, epochs, on_epoch=on_epoch)
    con.print()
    report = run(paths, Options(jobs=1))
    trend_render.render(report, "table", hist=True)
    con.print()
    con.print(f"[bold]The last checkpoint[/] ({paths[-1]}):", highlight=False)
    last = analyse(open_checkpoint(paths[-1]), Options(jobs=1))
    inspect_render.render(last, "table", last.layers, per_tensor=False, hist=False, log_counts=False)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        con.print("(install wdist[plot] to also get an HTML report with plots)")
    else:
        from wdist.cli.plotting import write_report

        html = write_report(paths, out + "/report")
        con.print(f"HTML report with plots: {html}", highlight=False)
    con.print(f"Try: wdist diff {paths[0]} {paths[-1]}   |   wdist inspect {paths[-1]} --hist", highlight=False)
