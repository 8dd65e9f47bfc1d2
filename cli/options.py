"""Options shared by several commands."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import click

FORMATS = ["table", "json", "csv", "markdown"]
ROLE_CHOICES = ["weight", "bias", "norm", "embedding", "running_stat", "optimizer_state", "other", "all"]


def output_format(choices: list[str] = FORMATS) -> Callable[[Any], Any]:
    return click.option("--format", "fmt", type=click.Choice(choices), default="table", show_default=True,
                        help="Output format.")


def input_format(f: Any) -> Any:
    from wdist.loaders.registry import format_names  # the choices are the registered format plug-ins

    return click.option("--input-format", type=click.Choice(format_names()), default=None,
                        help="Read the input as this format instead of detecting it (see `wdist formats`).")(f)


def _threshold(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise click.BadParameter(f"{value} is not a finite number >= 0", ctx=ctx, param=param)
    return value


near_zero_rel_option = click.option(
    "--near-zero-rel", type=float, default=None, metavar="R", callback=_threshold,
    help="near_zero_threshold = R x max|w| of each tensor (layers and the model sum their tensors' "
         "counts) [default: 0.01].")
near_zero_abs_option = click.option(
    "--near-zero-abs", type=float, default=None, metavar="T", callback=_threshold,
    help="Use one absolute near_zero_threshold T instead of --near-zero-rel.")
jobs_option = click.option("--jobs", "-j", type=click.IntRange(0, 256), default=0, show_default=True,
                           help="Worker processes (0 = all cores). Results do not depend on it.")
role_option = click.option(
    "--role", "roles", multiple=True, type=click.Choice(ROLE_CHOICES),
    help="Roles to analyse (repeatable). Default: weight, bias, embedding, norm; 'all' adds running stats, "
         "optimizer state and other.")

# --sort accepts the metric names and the table's column labels
SORT_LABELS = {"params": "parameters", "|w| p50": "abs_p50", "|w|p50": "abs_p50", "p50": "abs_p50",
               "max|w|": "max_abs", "zero": "zero_fraction", "near0": "near_zero_fraction", "kurt": "kurtosis",
               "top1%": "top1pct_l2_mass", "top1": "top1pct_l2_mass", "dead": "dead_units"}


def sort_metric(label: str | None) -> str | None:
    """The metric name behind a --sort value (a metric name or a column label); UsageError if unknown."""
    if label is None:
        return None
    from wdist.analyzers.metrics import METRICS
    from wdist.loaders.errors import UsageError

    m = SORT_LABELS.get(label, label)
    if m in METRICS or m in ("name", "parameters", "max_abs"):
        return m
    raise UsageError(None, f"unknown metric {label!r} for --sort; choose a column label "
                           f"({', '.join(k for k in SORT_LABELS if ' ' not in k)}), name, parameters, or a metric: "
                           f"{', '.join(METRICS)}")


def analysis_options(f: Any) -> Any:
    opts = [
        role_option,
        click.option("--layers", "layer_globs", multiple=True, metavar="GLOB",
                     help="Only layers or tensors matching this glob (repeatable)."),
        near_zero_rel_option,
        near_zero_abs_option,
        click.option("--bins", type=click.IntRange(4, 512), default=64, show_default=True,
                     help="Bins of the displayed/exported histograms."),
        jobs_option,
        click.option("--quiet", "-q", is_flag=True, help="No progress bar."),
        input_format,
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def build_options(roles: tuple[str, ...], layer_globs: tuple[str, ...], near_zero_rel: float | None,
                  near_zero_abs: float | None, bins: int, jobs: int) -> Any:
    from wdist.api import options

    if near_zero_rel is not None and near_zero_abs is not None:
        from wdist.loaders.errors import UsageError

        raise UsageError(None, "give --near-zero-rel or --near-zero-abs, not both")
    return options(roles, layer_globs, near_zero_rel, near_zero_abs, bins, jobs)


def scale_options(f: Any) -> Any:
    """Where the work runs and whether summaries are cached (inspect, diff, trend, check)."""
    opts = [
        click.option("--scheduler", default=None, envvar="WDIST_SCHEDULER", metavar="ADDRESS",
                     help="Run on an existing Dask cluster (tcp://HOST:8786; also $WDIST_SCHEDULER). Workers read "
                          "the files themselves: give URLs or paths on a shared file system."),
        click.option("--cluster", default=None, metavar="local:N",
                     help="Start a local Dask cluster of N worker processes for this run."),
        click.option("--no-cache", is_flag=True,
                     help="Do not use or update the summary cache ($WDIST_CACHE_DIR, else the user cache folder)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


@contextlib.contextmanager
def runtime(opts: Any, scheduler: str | None, cluster: str | None, no_cache: bool) -> Iterator[Any]:
    """Attach the Dask engine and the summary cache to `opts` for one command, and release them after it."""
    from wdist.api import dask_engine
    from wdist.loaders.errors import UsageError

    if scheduler and cluster:
        raise UsageError(None, "give --scheduler or --cluster, not both")
    address = cluster or scheduler
    if cluster and not cluster.startswith("local:"):
        raise UsageError(None, f"--cluster {cluster!r}: give local:N")
    engine = dask_engine(address) if address else None
    if engine is not None:
        # connect (or start the local cluster) now: a scheduler that cannot be reached is one error for the
        # command, not a 30 s wait and the same error blamed on each checkpoint in turn
        try:
            engine.client()
        except BaseException:
            engine.close()
            raise
    if not no_cache:
        from wdist.analyzers.cache import SummaryCache

        opts.cache = SummaryCache.default()
    opts.engine = engine
    try:
        yield opts
    finally:
        if engine is not None:
            engine.close()


def sort_rows(rows: list[Any], label: str | None, top: int | None) -> list[Any]:
    """Rows sorted by a --sort value (descending; by name ascending), then the first `top`."""
    from wdist.analyzers.inspect import sort_rows as by_metric

    metric = sort_metric(label)
    if metric != "max_abs":
        return list(by_metric(rows, metric, top))

    def key(r: Any) -> float:
        s = r.stats
        return -math.inf if s.get("max") is None else max(abs(s["max"]), abs(s["min"]))

    rows = sorted(rows, key=key, reverse=True)
    return rows[:top] if top else rows


# Shell completion (`wdist inspect --sort <TAB>`): metric names, and the column labels a shell takes unquoted.
_SHELL_SAFE_LABELS = tuple(k for k in SORT_LABELS if k.replace("_", "").isalnum())
_OPERATORS = ("<", "<=", ">", ">=", "==", "!=")


def _metric_names(with_changes: bool = False) -> list[str]:
    from wdist.analyzers.metrics import METRICS

    if not with_changes:
        return list(METRICS)
    from wdist.analyzers.diff import CHANGE_METRICS

    return [*METRICS, *CHANGE_METRICS]


def complete_metric(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    from click.shell_completion import CompletionItem

    return [CompletionItem(m) for m in _metric_names() if m.startswith(incomplete)]


def complete_sort(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    from click.shell_completion import CompletionItem

    values = dict.fromkeys([*_metric_names(), "name", "parameters", "max_abs", *_SHELL_SAFE_LABELS])
    return [CompletionItem(v) for v in values if v.startswith(incomplete)]


def complete_rule(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """--rule 'GLOB: METRIC OP VALUE', inside quotes: a scope, then a metric after 'GLOB: ', then an operator."""
    from click.shell_completion import CompletionItem

    if ":" not in incomplete:
        return [CompletionItem(s) for s in ("model: ", "*.weight: ", "*: ") if s.startswith(incomplete)]
    glob, _, rest = incomplete.partition(":")
    words = rest.split()
    if (len(words) <= 1 and not rest.endswith(" ")) or not words:
        stem = words[0] if words else ""
        return [CompletionItem(f"{glob}: {m}") for m in _metric_names(with_changes=True) if m.startswith(stem)]
    if len(words) == 1 or (len(words) == 2 and not rest.endswith(" ")):
        op = words[1] if len(words) == 2 else ""
        return [CompletionItem(f"{glob}: {words[0]} {o}") for o in _OPERATORS if o.startswith(op)]
    return []


def spectral_options(f: Any) -> Any:
    """--spectral and its settings (inspect, diff, trend, check)."""
    opts = [
        click.option("--spectral", is_flag=True,
                     help="Also compute singular-value metrics of every weight matrix (alpha, stable rank, spectral "
                          "norm, Marchenko-Pastur spikes) in a streamed Gram pass; costs more than the moments."),
        click.option("--spectral-max-side", type=click.IntRange(2), default=8192, show_default=True, metavar="N",
                     help="Matrices whose smaller side exceeds N get the randomized spectral norm and stable rank "
                          "only (alpha is then not computed, and says so)."),
        click.option("--spectral-conv", type=click.Choice(["per-kernel", "flatten"]), default="per-kernel",
                     show_default=True,
                     help="Conv kernels as kh*kw matrices of out x in (as WeightWatcher) or one out x in*kh*kw matrix."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def apply_spectral(opts: Any, spectral: bool, max_side: int, conv: str) -> Any:
    if spectral:
        from wdist.analyzers.spectral import SpectralOptions

        opts.spectral = SpectralOptions(max_side=max_side, conv_mode=conv)
    return opts
