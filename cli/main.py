"""The `wdist` command: a thin click layer. Library errors become one line on stderr and exit code 2."""

from __future__ import annotations

from typing import Any

import click

from wdist import __version__

EXIT_OK, EXIT_FAIL, EXIT_ERROR = 0, 1, 2

# command name -> "module:function"; imported only when the command runs, so --help stays fast
COMMANDS = {
    "ls": "wdist.cli.cmd_ls:ls",
    "inspect": "wdist.cli.cmd_inspect:inspect",
    "diff": "wdist.cli.cmd_diff:diff",
    "trend": "wdist.cli.cmd_trend:trend",
    "check": "wdist.cli.cmd_check:check",
    "demo": "wdist.cli.cmd_demo:demo",
    "plot": "wdist.cli.cmd_plot:plot",
}
SHORT_HELP = {
    "ls": "List every tensor of a checkpoint (headers only).",
    "inspect": "Distribution and sparsity metrics per tensor, layer and model.",
    "diff": "How the weights moved between two checkpoints.",
    "trend": "Metrics across the checkpoints of a training run.",
    "check": "Assert sparsity and health rules (CI gate, exit codes).",
    "demo": "Train a small CNN, save checkpoints and read them.",
    "plot": "Write histogram, ridgeline and trend images and an HTML report.",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        import importlib

        mod, fn = target.split(":")
        cmd: click.Command = getattr(importlib.import_module(mod), fn)
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(n, SHORT_HELP[n]) for n in COMMANDS])

    def invoke(self, ctx: click.Context) -> Any:
        from wdist.loaders.errors import WdistError

        try:
            return super().invoke(ctx)
        except WdistError as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"wdist: error: {e}", err=True)
            ctx.exit(EXIT_ERROR)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("wdist: interrupted", err=True)
            ctx.exit(130)
        except Exception as e:  # an unexpected failure still gets one line, unless --debug
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"wdist: error: {type(e).__name__}: {e} (run with --debug for a traceback)", err=True)
            ctx.exit(EXIT_ERROR)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wdist")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """wdist: read weight distributions and sparsity straight from checkpoint files.

    Exit codes: 0 success; 1 a `check` rule failed; 2 usage error, bad configuration, or a checkpoint
    that cannot be read.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def main() -> None:
    cli(prog_name="wdist")
