"""The public Python API: one verb per command, keyword options with the CLI's names and defaults, and the
same report objects the CLI renders.

    import wdist
    with wdist.open("model.safetensors") as ck:      # or a torch.nn.Module, a state dict, a dict of arrays
        print(len(ck.tensors))
    rep = wdist.inspect("model.safetensors")          # InspectReport
    rep.reading.state, rep.to_dict(), rep.to_pandas()
    wdist.diff("epoch1.pt", "epoch50.pt")            # DiffReport
    wdist.trend("run/")                               # TrendReport
    wdist.check("model.pt", rules=["model: nan_count == 0"]).passed

Inputs that wdist opens itself are closed before the call returns; a Checkpoint passed in is left open.
Errors are typed (wdist.loaders.errors.WdistError and subclasses); nothing here prints or exits."""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from wdist.analyzers.check import CheckpointResult, Config, evaluate, find_config, load_config, parse_rule
from wdist.analyzers.diff import DiffReport, Tolerance, compare
from wdist.analyzers.inspect import InspectReport, Options, analyse
from wdist.analyzers.metrics import NearZero
from wdist.analyzers.report import CheckReport, Listing
from wdist.analyzers.trend import DEFAULT_METRICS, TrendReport, expand_inputs, run
from wdist.loaders.errors import UsageError, WdistError
from wdist.loaders.model import DEFAULT_ROLES, Checkpoint, Role
from wdist.loaders.registry import open_checkpoint

Source = Any  # a path (str or os.PathLike), a Checkpoint, or an in-memory model / mapping of arrays
Progress = Callable[[int, int], None]

__all__ = ["open", "ls", "inspect", "diff", "trend", "check", "plot", "options"]


def open(source: Source, format: str | None = None) -> Checkpoint:  # noqa: A001 - the verb users expect
    """A lazily read Checkpoint: a file or model folder (headers only), or an in-memory model. Use it as a
    context manager, or call close(), to release its file handles."""
    if isinstance(source, Checkpoint):
        return source
    if isinstance(source, (str, os.PathLike)):
        return open_checkpoint(os.fspath(source), format)
    from wdist.loaders.memory import from_object

    return from_object(source)


@contextlib.contextmanager
def _opened(source: Source, format: str | None) -> Iterator[Checkpoint]:
    """Open `source` unless it already is a Checkpoint; close only what was opened here."""
    if isinstance(source, Checkpoint):
        yield source
        return
    ck = open(source, format)
    try:
        yield ck
    finally:
        ck.close()


def options(roles: Sequence[str] | None = None, layers: Sequence[str] = (), near_zero_rel: float | None = None,
            near_zero_abs: float | None = None, bins: int = 64, jobs: int = 0) -> Options:
    """Analysis options from the CLI's option names (`roles=["all"]` adds every role)."""
    import math

    if near_zero_rel is not None and near_zero_abs is not None:
        raise UsageError(None, "give near_zero_rel or near_zero_abs, not both")
    for v in (near_zero_rel, near_zero_abs):
        if v is not None and not (math.isfinite(v) and v >= 0):
            raise UsageError(None, f"near-zero thresholds must be finite numbers >= 0, not {v}")
    role_names = [r.value if isinstance(r, Role) else str(r) for r in (roles or ())]
    valid = [r.value for r in Role]
    bad = [r for r in role_names if r not in valid and r != "all"]
    if bad:
        raise UsageError(None, f"unknown role(s) {', '.join(bad)}; choose from {', '.join(valid)}, all")
    if "all" in role_names:
        role_set = tuple(Role)
    else:
        role_set = tuple(Role(r) for r in role_names) if role_names else DEFAULT_ROLES
    if not 4 <= bins <= 512:
        raise UsageError(None, f"bins must be between 4 and 512, not {bins}")
    nz = NearZero(rel=0.01 if near_zero_rel is None else near_zero_rel, abs=near_zero_abs)
    return Options(roles=role_set, layers=tuple(layers), near_zero=nz, bins=bins, jobs=jobs)


def ls(source: Source, format: str | None = None) -> Listing:
    """Every tensor of a checkpoint, from headers only."""
    with _opened(source, format) as ck:
        return Listing.of(ck)


def inspect(source: Source, *, roles: Sequence[str] | None = None, layers: Sequence[str] = (),
            near_zero_rel: float | None = None, near_zero_abs: float | None = None, bins: int = 64,
            jobs: int = 0, format: str | None = None, progress: Progress | None = None) -> InspectReport:
    """Per-tensor, per-layer and whole-model metrics and the reading (`report.reading`)."""
    opts = options(roles, layers, near_zero_rel, near_zero_abs, bins, jobs)
    with _opened(source, format) as ck:
        return analyse(ck, opts, progress)


def diff(a: Source, b: Source, *, roles: Sequence[str] | None = None, layers: Sequence[str] = (),
         near_zero_rel: float | None = None, near_zero_abs: float | None = None, bins: int = 64, jobs: int = 0,
         rtol: float = 1e-5, atol: float = 1e-8, format: str | None = None,
         progress: Progress | None = None) -> DiffReport:
    """How the weights moved from A to B (tensors aligned by name, across formats)."""
    opts = options(roles, layers, near_zero_rel, near_zero_abs, bins, jobs)
    with _opened(a, format) as ck_a, _opened(b, format) as ck_b:
        return compare(ck_a, ck_b, opts, Tolerance(rtol, atol), progress)


def trend(inputs: str | os.PathLike | Iterable[str | os.PathLike], *, metrics: Sequence[str] = DEFAULT_METRICS,
          order: str = "step", roles: Sequence[str] | None = None, layers: Sequence[str] = (),
          near_zero_rel: float | None = None, near_zero_abs: float | None = None, bins: int = 64, jobs: int = 0,
          format: str | None = None, ridgeline: bool = True, progress: Progress | None = None) -> TrendReport:
    """Metrics per layer across the checkpoints of a run (files, folders or globs), ordered by step."""
    if order not in ("step", "given"):
        raise UsageError(None, f"order must be 'step' or 'given', not {order!r}")
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    paths = expand_inputs([os.fspath(p) for p in items])
    opts = options(roles, layers, near_zero_rel, near_zero_abs, bins, jobs)
    return run(paths, opts, tuple(metrics), order == "given", format, progress, ridgeline=ridgeline)


def check(sources: Source | Sequence[Source], rules: Sequence[str] = (), *, config: str | os.PathLike | bool | None = None,
          baseline: Source | None = None, allow_empty: bool = False, roles: Sequence[str] | None = None,
          near_zero_rel: float | None = None, near_zero_abs: float | None = None, jobs: int = 0,
          format: str | None = None, cwd: str | None = None) -> CheckReport:
    """Evaluate rules on each checkpoint. `config`: a path, False for none, or None to look for wdist.toml /
    [tool.wdist] from `cwd` (default: the current directory) upward. A checkpoint that cannot be read is
    recorded as an error in its result; the others are still checked."""
    srcs: list[Source] = list(sources) if isinstance(sources, (list, tuple)) else [sources]
    cfg = Config()
    if isinstance(config, (str, os.PathLike)):
        cpath: str | None = os.fspath(config)
        if not os.path.isfile(cpath):
            raise UsageError(cpath, "config file not found")
    else:
        cpath = None if config is False else find_config(cwd)
    if cpath:
        cfg = load_config(cpath)
    base = baseline if baseline is not None else cfg.baseline
    parsed = [parse_rule(r, cfg.origin(r), base is not None) for r in cfg.rules]
    parsed += [parse_rule(r, "rules", base is not None) for r in rules]
    if not parsed:
        raise UsageError(None, "no rules: give rules or a config file with rules = [...]")
    opts = options(roles or tuple(cfg.roles), tuple(cfg.include),
                   near_zero_rel if near_zero_rel is not None else cfg.near_zero_rel,
                   near_zero_abs if near_zero_abs is not None else cfg.near_zero_abs, 64, jobs)
    results: list[CheckpointResult] = []
    with contextlib.ExitStack() as stack:
        base_ck = stack.enter_context(_opened(base, format)) if base is not None else None
        for src in srcs:
            label = os.fspath(src) if isinstance(src, (str, os.PathLike)) else getattr(src, "path", repr(src))
            try:
                with _opened(src, format) as ck:
                    kept = ck if not cfg.exclude else dataclasses.replace(ck, tensors=[
                        t for t in ck.tensors if not any(fnmatch.fnmatchcase(t.name, g) for g in cfg.exclude)])
                    report = analyse(kept, opts)
                    d = compare(base_ck, kept, opts) if base_ck is not None else None
                    results.append(CheckpointResult(label, None, evaluate(parsed, report, d, allow_empty)))
            except WdistError as e:
                if isinstance(e, UsageError) and e.path is None:
                    raise
                results.append(CheckpointResult(label, e.reason, []))
    return CheckReport(results, cpath)


def plot(inputs: str | os.PathLike | Iterable[str | os.PathLike], out: str | os.PathLike,
         formats: Sequence[str] = ("png",), progress: Callable[[str], None] | None = None) -> list[str]:
    """Write histogram, overlay, ridgeline and trend pictures and a self-contained OUT.html; returns the
    paths written. Needs matplotlib (the `plot` extra)."""
    from wdist.plots import write_report

    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    paths = expand_inputs([os.fspath(p) for p in items])
    from wdist.analyzers.trend import order_points

    ordered, _ = order_points(paths, given=False)
    return write_report([p.path for p in ordered], os.fspath(out), tuple(formats), progress)

