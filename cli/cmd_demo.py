"""`wdist demo [DIR]`: the question answered end to end on a built-in training run."""

from __future__ import annotations

import click


@click.command()
@click.argument("directory", required=False, type=click.Path(file_okay=False))
@click.option("--epochs", type=click.IntRange(1, 200), default=20, show_default=True,
              help="Epochs to train; the last one is always saved and read as the last checkpoint.")
@click.option("--quiet", "-q", is_flag=True, help="No per-epoch training lines.")
def demo(directory: str | None, epochs: int, quiet: bool) -> None:
    """Train a small CNN on the CPU (seeded), save checkpoints at epochs 1, 2, 5, 10 and the last (20 by
    default) as .pt and .safetensors into DIRECTORY (a temporary folder when omitted), then read the run
    with `trend`, the last checkpoint with `inspect`, and write an HTML report (with the plot extra)."""
    import importlib.util
    import tempfile
    import time

    import wdist
    from wdist.analyzers.inspect import Options
    from wdist.cli.demo_train import epochs_saved, train
    from wdist.cli.render import inspect_render, trend_render
    from wdist.cli.render.common import console, echo, prose, safe
    from wdist.cli.render.common import quiet as global_quiet
    from wdist.loaders.errors import MissingDependencyError

    if importlib.util.find_spec("torch") is None:  # the only command that trains, so the only one needing torch
        raise MissingDependencyError(None, "the demo trains a model with torch: pip install 'wdist[torch]'")
    quiet = quiet or global_quiet()
    out = directory or tempfile.mkdtemp(prefix="wdist-demo-")
    con = console()
    t0 = time.monotonic()
    n_steps = 4

    def step(i: int, text: str) -> None:
        echo(con, f"[{i}/{n_steps}] {text}  ({time.monotonic() - t0:.1f} s)", "bold")

    saved = ", ".join(map(str, epochs_saved(epochs)))
    step(1, f"Training a 4-conv CNN (BatchNorm before LeakyReLU(0.3), FC head) on sparse, nearly binary 16x16 "
            f"inputs for {epochs} epochs; saving epochs {saved} to {safe(out)}")

    def on_epoch(ep: int, loss: float, acc: float) -> None:
        if not quiet:
            echo(con, f"  epoch {ep:>3}  loss {loss:.3f}  accuracy {acc:.1%}")

    paths = train(out, epochs, on_epoch=on_epoch)
    con.print()
    opts = Options(jobs=1)
    step(2, f"wdist trend {safe(out)}/*.pt --hist")
    report = wdist.trend(paths, opts=opts)
    trend_render.render(report, "table", hist=True)
    con.print()
    step(3, f"wdist inspect {safe(paths[-1])} (the last checkpoint)")
    last = wdist.inspect(paths[-1], opts=opts)
    inspect_render.render(last, "table", last.layers, per_tensor=False, hist=False, log_counts=False)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        echo(con, "(install wdist[plot] to also get an HTML report with plots)")
    else:
        from wdist.plots import write_report

        con.print()
        step(4, "HTML report with plots")
        images: list[str] = []

        def on_step(msg: str) -> None:
            if not quiet:
                echo(con, f"  {safe(msg)}")

        html = write_report(paths, out + "/report", ("png",), last=last, trend=report,
                            on_file=images.append, on_step=on_step)
        prose(con, f"HTML report with plots: {html} ({len(images) - 1} images next to it)", hang="")
    echo(con, f"done in {time.monotonic() - t0:.1f} s", "bold")
    prose(con, f"Try: wdist diff {paths[0]} {paths[-1]}   |   wdist inspect {paths[-1]} --hist", hang="")
