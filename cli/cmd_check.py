"""`wdist check CKPT... --rule ...`: CI gate. Exit 0 all pass, 1 a rule fails, 2 usage/config/unreadable."""

from __future__ import annotations

import click

from wdist.cli.options import input_format, output_format


@click.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--rule", "rule_texts", multiple=True, metavar="'GLOB: METRIC OP VALUE'",
              help="Rule (repeatable), e.g. '*.weight: zero_fraction >= 0.5' or 'model: nan_count == 0'.")
@click.option("--config", "config_path", type=click.Path(), default=None,
              help="Config file (default: wdist.toml or [tool.wdist] in pyproject.toml, from here upward).")
@click.option("--no-config", is_flag=True, help="Ignore config files.")
@click.option("--baseline", type=click.Path(), default=None, help="Checkpoint to compare with (diff metrics).")
@click.option("--allow-empty", is_flag=True, help="A rule whose glob matches nothing passes instead of erroring.")
@click.option("--role", "roles", multiple=True, help="Roles to analyse (as inspect --role).")
@click.option("--near-zero-rel", type=float, default=None)
@click.option("--near-zero-abs", type=float, default=None)
@click.option("--junit", "junit_path", type=click.Path(), default=None, help="Write a JUnit XML report here.")
@click.option("--jobs", "-j", type=click.IntRange(0, 256), default=0)
@output_format(["table", "json"])
@input_format
def check(paths: tuple[str, ...], rule_texts: tuple[str, ...], config_path: str | None, no_config: bool,
          baseline: str | None, allow_empty: bool, roles: tuple[str, ...], near_zero_rel: float | None,
          near_zero_abs: float | None, junit_path: str | None, jobs: int, fmt: str, input_format: str | None) -> None:
    """Assert sparsity and health rules on one or more checkpoints.

    Exit codes: 0 every rule passes on every checkpoint; 1 at least one rule fails; 2 usage error, bad
    config, a rule glob that matches nothing, or a checkpoint that cannot be read.
    """
    import os

    from wdist.analyzers.check import CheckpointResult, Config, evaluate, find_config, load_config, parse_rule
    from wdist.analyzers.diff import compare
    from wdist.analyzers.inspect import analyse
    from wdist.cli.options import build_options
    from wdist.cli.render import check_render
    from wdist.loaders import open_checkpoint
    from wdist.loaders.errors import UsageError, WdistError

    cfg = Config()
    cpath = config_path or (None if no_config else find_config())
    if config_path and not os.path.isfile(config_path):
        raise UsageError(config_path, "config file not found")
    if cpath:
        cfg = load_config(cpath)
    base = baseline or cfg.baseline
    rules = [parse_rule(r, cfg.origin(r), base is not None) for r in cfg.rules]
    rules += [parse_rule(r, "--rule", base is not None) for r in rule_texts]
    if not rules:
        raise UsageError(None, "no rules: give --rule or a config file with rules = [...]")
    opts = build_options(roles or tuple(cfg.roles), tuple(cfg.include), near_zero_rel if near_zero_rel is not None
                         else cfg.near_zero_rel, near_zero_abs if near_zero_abs is not None else cfg.near_zero_abs,
                         64, jobs)
    base_ck = open_checkpoint(base, input_format) if base else None
    results: list[CheckpointResult] = []
    for p in paths:
        try:
            ck = open_checkpoint(p, input_format)
            if cfg.exclude:
                import fnmatch

                ck.tensors = [t for t in ck.tensors if not any(fnmatch.fnmatchcase(t.name, g) for g in cfg.exclude)]
            report = analyse(ck, opts)
            d = compare(base_ck, ck, opts) if base_ck is not None else None
            results.append(CheckpointResult(p, None, evaluate(rules, report, d, allow_empty)))
        except WdistError as e:
            if isinstance(e, UsageError) and e.path is None:
                raise
            results.append(CheckpointResult(p, e.reason, []))
    check_render.render(results, fmt)
    if junit_path:
        check_render.write_junit(results, junit_path)
    if os.environ.get("GITHUB_ACTIONS") == "true":
        check_render.github(results)
    code = check_render.exit_code(results)
    for r in results:
        if r.error:
            click.echo(f"wdist: error: {r.path}: {r.error}", err=True)
        for rr in r.rules:
            if rr.verdict == "error":
                click.echo(f"wdist: error: {r.path}: rule {rr.rule!r}: {rr.message}", err=True)
    raise SystemExit(code)
