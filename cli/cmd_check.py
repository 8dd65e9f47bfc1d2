"""`wdist check CKPT... --rule ...`: CI gate. Exit 0 all pass, 1 a rule fails, 2 usage/config/unreadable."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from wdist.cli.options import (
    complete_rule,
    input_format,
    jobs_option,
    near_zero_abs_option,
    near_zero_rel_option,
    output_format,
    role_option,
    scale_options,
    spectral_options,
)


@click.command()
@click.argument("paths", nargs=-1, required=True, shell_complete=click.Path().shell_complete)  # file names
@click.option("--rule", "rule_texts", multiple=True, metavar="'GLOB: METRIC OP VALUE'", shell_complete=complete_rule,
              help="Rule (repeatable), e.g. '*.weight: zero_fraction >= 0.5' or 'model: nan_count == 0'.")
@click.option("--config", "config_path", type=click.Path(), default=None,
              help="Config file (default: wdist.toml or [tool.wdist] in pyproject.toml, from here upward).")
@click.option("--no-config", is_flag=True, help="Ignore config files.")
@click.option("--baseline", default=None, shell_complete=click.Path().shell_complete,
              help="Checkpoint to compare with (diff metrics).")
@click.option("--allow-empty", is_flag=True, help="A rule whose glob matches nothing passes instead of erroring.")
@role_option
@near_zero_rel_option
@near_zero_abs_option
@click.option("--junit", "junit_path", type=click.Path(), default=None, help="Write a JUnit XML report here.")
@jobs_option
@output_format(["table", "json"])
@input_format
@scale_options
@spectral_options
def check(paths: tuple[str, ...], rule_texts: tuple[str, ...], config_path: str | None, no_config: bool,
          baseline: str | None, allow_empty: bool, roles: tuple[str, ...], near_zero_rel: float | None,
          near_zero_abs: float | None, junit_path: str | None, jobs: int, fmt: str, input_format: str | None,
          scheduler: str | None, cluster: str | None, no_cache: bool, spectral: bool, spectral_max_side: int,
          spectral_conv: str) -> None:
    """Assert sparsity and health rules on one or more checkpoints.

    Exit codes: 0 every rule passes on every checkpoint; 1 at least one rule fails; 2 usage error, bad
    config, a rule glob that matches nothing, or a checkpoint that cannot be read.
    """
    import os

    import wdist
    from wdist.cli.main import _error_line, echo_err, reading, set_exit
    from wdist.cli.options import runtime
    from wdist.cli.render import check_render
    from wdist.cli.render.common import output_may_end
    from wdist.loaders.errors import WdistError

    holder = build_holder()
    with runtime(holder, scheduler, cluster, no_cache):
        cfg = config_path if config_path else (False if no_config else None)
        try:
            report = wdist.check(list(paths), list(rule_texts), config=cfg,
                                 baseline=baseline, allow_empty=allow_empty, roles=roles or None,
                                 near_zero_rel=near_zero_rel, near_zero_abs=near_zero_abs, jobs=jobs,
                                 format=input_format, cache=holder.cache, engine=holder.engine,
                                 spectral=True if spectral else None, spectral_max_side=spectral_max_side,
                                 spectral_conv=spectral_conv, on_file=reading)
        except WdistError as e:
            # nothing was checked (bad rule, config or baseline): a CI job still gets its JUnit report,
            # one error test case saying why, before the usual error line
            if junit_path:
                where, why = e.path, e.reason
                _written(junit_path, lambda: check_render.write_junit_error(where, why, junit_path))
            raise
    reading(None)
    set_exit(report.exit_code)
    with output_may_end():
        check_render.render(report, fmt)
    code = report.exit_code
    if junit_path:
        code = max(code, _written(junit_path, lambda: check_render.write_junit(report.checkpoints, junit_path)))
    if os.environ.get("GITHUB_ACTIONS") == "true":
        # annotations go to stderr when stdout is JSON, which they would make unparsable (the runner reads
        # workflow commands from both streams)
        with output_may_end():
            check_render.github(report.checkpoints, err=fmt == "json")
        summary = os.environ.get("GITHUB_STEP_SUMMARY")
        if summary:
            code = max(code, _written(summary, lambda: check_render.step_summary(report.checkpoints, summary)))
    for r in report.checkpoints:
        if r.error:
            echo_err(_error_line(r.path, r.error))
        for rr in r.rules:
            if rr.verdict == "error":
                echo_err(_error_line(r.path, f"rule {rr.rule!r}: {rr.message}"))
    set_exit(code)
    raise SystemExit(code)


def _written(path: str, write: Callable[[], None]) -> int:
    """Run a report writer; a path it cannot write is one error line (exit 2), not a traceback."""
    from wdist.cli.main import _error_line, echo_err

    try:
        write()
    except OSError as e:
        echo_err(_error_line(path, e.strerror or str(e)))
        return 2
    return 0


def build_holder() -> Any:
    """A plain holder for the engine and cache that `runtime` attaches (check builds its own options)."""
    from types import SimpleNamespace

    return SimpleNamespace(cache=None, engine=None)
