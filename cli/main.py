"""The `wdist` command: a thin click layer. Library errors become one line on stderr and exit code 2."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

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
    "formats": "wdist.cli.cmd_formats:formats",
    "cache": "wdist.cli.cmd_cache:cache",
}
SHORT_HELP = {
    "ls": "List every tensor of a checkpoint (headers only).",
    "inspect": "Distribution and sparsity metrics per tensor, layer and model.",
    "diff": "How the weights moved between two checkpoints.",
    "trend": "Metrics across the checkpoints of a training run.",
    "check": "Assert sparsity and health rules (CI gate, exit codes).",
    "demo": "Train a small CNN, save checkpoints and read them.",
    "plot": "Write histogram, ridgeline and trend images and an HTML report.",
    "formats": "List the checkpoint formats wdist reads and what each needs.",
    "cache": "Show or clear the summary cache (cache info | cache clear).",
}

DEBUG_HELP = "Show tracebacks instead of one-line errors."
QUIET_HELP = "No progress output."
WIDTH_HELP = "Lay text out in N columns (default: the terminal's width, $COLUMNS, or natural width when piped)."


def state() -> dict[str, Any]:
    """The run's global settings (debug, quiet, width, the path being read), kept on click's root context."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return {}
    root = ctx.find_root()
    if not isinstance(root.obj, dict):
        root.obj = {}
    obj: dict[str, Any] = root.obj
    return obj


def reading(path: str | None) -> None:
    """Remember which file a command is reading, so an unexpected failure can still name it."""
    state()["path"] = path


def _set(key: str) -> Any:
    def cb(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value:  # an absent option must not undo the same option given before the command
            state()[key] = value
        return value

    return cb


def _global_params() -> list[click.Option]:
    return [
        click.Option(["--debug"], is_flag=True, expose_value=False, callback=_set("debug"), help=DEBUG_HELP),
        click.Option(["--quiet", "-q"], is_flag=True, expose_value=False, callback=_set("quiet"), help=QUIET_HELP),
        click.Option(["--width"], type=click.IntRange(20, 100_000), default=None, metavar="N", expose_value=False,
                     callback=_set("width"), help=WIDTH_HELP),
    ]


def _error_line(path: str | None, reason: str) -> str:
    from wdist.cli.render.common import safe
    from wdist.loaders.fs import redact  # a URL's credentials are never printed

    return (f"wdist: error: {safe(redact(path))}: {safe(redact(reason))}" if path
            else f"wdist: error: {safe(redact(reason))}")


def _to_devnull(stream: Any) -> None:
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, stream.fileno())
        os.close(fd)
    except (OSError, ValueError, AttributeError):
        pass


def quiet_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so the final flush cannot raise again."""
    _to_devnull(sys.stdout)


@contextmanager
def pipe_may_close(stream: Any) -> Iterator[None]:
    """Writes to `stream` whose reader may leave (`| head -1`): a broken pipe points the stream at /dev/null
    and the command carries on to its own exit code: a closed pipe never turns a failure into success."""
    try:
        yield
    except OSError as e:
        if not _is_broken_pipe(e):
            raise
        _to_devnull(stream)


def echo_err(line: str) -> None:
    """A line on stderr, which may be the same closed pipe (`wdist check ... 2>&1 | head -1`)."""
    with pipe_may_close(sys.stderr):
        click.echo(line, err=True)


def _usage_line(e: click.UsageError) -> None:
    where = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
    echo_err(_error_line(None, e.format_message() + where))


def set_exit(code: int) -> None:
    """The exit code a command will end with, recorded before it writes its report: if the reader of its
    output leaves mid-way (a broken pipe), the command still exits with it, not with 0."""
    state()["exit"] = code


def _is_broken_pipe(e: BaseException) -> bool:
    return isinstance(e, BrokenPipeError) or (isinstance(e, OSError) and e.errno == errno.EPIPE)


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
        # the global options are accepted after the command too (and after a subcommand: `cache info
        # --debug`); a command's own --quiet stays its own
        for c in [cmd, *(cmd.commands.values() if isinstance(cmd, click.Group) else ())]:
            have = {o for p in c.params for o in getattr(p, "opts", [])}
            for p in _global_params():
                if not have & set(p.opts):
                    c.params.append(p)
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(n, SHORT_HELP[n]) for n in COMMANDS])

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        # a bad option before the command (`wdist --width 5 ls`): the same one line as after it
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as e:
            if "--debug" in args:
                raise
            _usage_line(e)
            raise click.exceptions.Exit(EXIT_ERROR) from None

    def invoke(self, ctx: click.Context) -> Any:
        from wdist.loaders.errors import WdistError

        try:
            return super().invoke(ctx)
        except WdistError as e:
            if state().get("debug"):
                raise
            echo_err(_error_line(e.path, e.reason))
            ctx.exit(EXIT_ERROR)
        except click.UsageError as e:  # a bad option or argument: one line too, naming where help is
            if state().get("debug"):
                raise
            _usage_line(e)
            ctx.exit(EXIT_ERROR)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            echo_err("wdist: interrupted")
            ctx.exit(130)
        except Exception as e:  # an unexpected failure still gets one line naming the file, unless --debug
            if _is_broken_pipe(e):  # `wdist ls x | head -1`: the reader left; that is not an error
                quiet_stdout()
                ctx.exit(state().get("exit", EXIT_OK))
            if state().get("debug"):
                raise
            reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            echo_err(_error_line(state().get("path"), reason + " (run with --debug for a traceback)"))
            ctx.exit(EXIT_ERROR)


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    # the version is looked up only when asked for: importlib.metadata costs every other command ~60 ms
    if not value or ctx.resilient_parsing:
        return
    from wdist import __version__

    click.echo(f"wdist, version {__version__}")
    ctx.exit()


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the version and exit.")
@click.option("--debug", is_flag=True, help=DEBUG_HELP)
@click.option("--quiet", "-q", is_flag=True, help=QUIET_HELP)
@click.option("--width", type=click.IntRange(20, 100_000), default=None, metavar="N", help=WIDTH_HELP)
@click.pass_context
def cli(ctx: click.Context, debug: bool, quiet: bool, width: int | None) -> None:
    """wdist: read weight distributions and sparsity straight from checkpoint files.

    Exit codes: 0 success; 1 a `check` rule failed; 2 usage error, bad configuration, or a checkpoint
    that cannot be read.
    """
    ctx.ensure_object(dict)
    ctx.obj.update(debug=debug, quiet=quiet, width=width)
    _quiet_back_ends(debug)


# The libraries wdist reads through log on their own: gcsfs's logger.exception printed a 20-line traceback
# before the error line, huggingface_hub's retry warnings printed the endpoint with the credentials in it.
# The command's one error line says what failed (redacted), so the command drops every log record unless
# --debug. Globally (logging.disable), because huggingface_hub resets its logger's level when it is
# imported, after this. Only the command does this: `import wdist` leaves the caller's logging alone.
def _quiet_back_ends(debug: bool) -> None:
    import logging

    logging.disable(logging.NOTSET if debug else logging.CRITICAL)


def _quiet_blas() -> None:
    """The command's own process runs numpy with one BLAS thread unless the user chose a count: OpenBLAS
    starts a thread per core when numpy is imported, which cost ~50 ms of every command on a 2-core machine
    (numpy's import went from 0.12 to 0.06 s), and wdist's parallelism is its worker processes (which also
    run one BLAS thread each). Set OPENBLAS_NUM_THREADS (or OMP_NUM_THREADS) to choose otherwise. Only the
    entry point does this: `import wdist` never changes the caller's environment."""
    if not any(v in os.environ for v in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")):
        os.environ["OPENBLAS_NUM_THREADS"] = "1"


def main() -> None:
    _quiet_blas()
    code: Any = 0
    try:
        cli.main(prog_name="wdist")
    except SystemExit as e:
        code = e.code
    try:
        sys.stdout.flush()
    except (BrokenPipeError, OSError) as e:
        if not _is_broken_pipe(e):
            raise
        quiet_stdout()  # the exit code stays the command's own: a failing check piped into head still fails
    sys.exit(code)
