"""Options shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

FORMATS = ["table", "json", "csv", "markdown"]
INPUT_FORMATS = ["torch-zip", "torch-legacy", "safetensors", "keras-h5", "keras-zip"]
ROLE_CHOICES = ["weight", "bias", "norm", "embedding", "running_stat", "optimizer_state", "other", "all"]


def output_format(choices: list[str] = FORMATS) -> Callable[[Any], Any]:
    return click.option("--format", "fmt", type=click.Choice(choices), default="table", show_default=True,
                        help="Output format.")


def input_format(f: Any) -> Any:
    return click.option("--input-format", type=click.Choice(INPUT_FORMATS), default=None,
                        help="Read the input as this format instead of detecting it.")(f)


def analysis_options(f: Any) -> Any:
    opts = [
        click.option("--role", "roles", multiple=True, type=click.Choice(ROLE_CHOICES),
                     help="Roles to analyse (repeatable). Default: weight, bias, embedding, norm; 'all' adds "
                          "running stats, optimizer state and other."),
        click.option("--layers", "layer_globs", multiple=True, metavar="GLOB",
                     help="Only layers or tensors matching this glob (repeatable)."),
        click.option("--near-zero-rel", type=float, default=None, metavar="R",
                     help="near_zero_threshold = R x max|w| of each tensor/layer/model [default: 0.01]."),
        click.option("--near-zero-abs", type=float, default=None, metavar="T",
                     help="Use one absolute near_zero_threshold T instead."),
        click.option("--bins", type=click.IntRange(4, 512), default=64, show_default=True,
                     help="Bins of the displayed/exported histograms."),
        click.option("--jobs", "-j", type=click.IntRange(0, 256), default=0,
                     help="Worker processes (0 = all cores). Results do not depend on it."),
        click.option("--quiet", "-q", is_flag=True, help="No progress bar."),
        input_format,
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def build_options(roles: tuple[str, ...], layer_globs: tuple[str, ...], near_zero_rel: float | None,
                  near_zero_abs: float | None, bins: int, jobs: int) -> Any:
    from wdist.analyzers.inspect import Options
    from wdist.analyzers.metrics import NearZero
    from wdist.loaders.errors import UsageError
    from wdist.loaders.model import DEFAULT_ROLES, Role

    if near_zero_rel is not None and near_zero_abs is not None:
        raise UsageError(None, "give --near-zero-rel or --near-zero-abs, not both")
    if (near_zero_rel is not None and near_zero_rel < 0) or (near_zero_abs is not None and near_zero_abs < 0):
        raise UsageError(None, "near-zero thresholds must be >= 0")
    role_set = tuple(Role) if "all" in roles else (tuple(Role(r) for r in roles) if roles else DEFAULT_ROLES)
    nz = NearZero(rel=0.01 if near_zero_rel is None else near_zero_rel, abs=near_zero_abs)
    return Options(roles=role_set, layers=tuple(layer_globs), near_zero=nz, bins=bins, jobs=jobs)
