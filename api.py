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
Errors are typed (wdist.loaders.errors.WdistError and subclasses): an argument of the wrong type or out of
range is a UsageError naming the keyword, never a bare TypeError. A str where a list of strings is taken
(`layers="fc*"`, `metrics="std"`, `rules="model: nan_count == 0"`) is one item, not its letters. Nothing
here prints, exits or changes the caller's environment (`plot` never switches matplotlib's backend)."""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import math
import numbers
import os
import re
import reprlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from wdist.analyzers.report import CheckReport, Listing
from wdist.loaders import fs
from wdist.loaders.errors import UsageError, WdistError
from wdist.loaders.model import DEFAULT_ROLES, Checkpoint, Role
from wdist.loaders.registry import open_checkpoint

if TYPE_CHECKING:  # the analyzers are imported when a verb runs, so `wdist ls` stays quick
    from wdist.analyzers.cache import SummaryCache
    from wdist.analyzers.diff import DiffReport
    from wdist.analyzers.engine import DaskEngine
    from wdist.analyzers.inspect import InspectReport, Options
    from wdist.analyzers.trend import TrendReport

# the default of trend's `metrics` (analyzers.trend.DEFAULT_METRICS, kept equal by a test)
DEFAULT_METRICS = ("l2_norm", "std", "kurtosis", "near_zero_fraction", "zero_fraction", "top1pct_l2_mass")

Source = Any  # a path (str or os.PathLike), a Checkpoint, or an in-memory model / mapping of arrays
Progress = Callable[[int, int], None]

__all__ = ["open", "ls", "inspect", "diff", "trend", "check", "plot", "options", "dask_engine"]

_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 80


def _show(value: Any) -> str:
    """A bad argument as an error message shows it: its repr, shortened."""
    return _repr.repr(value)


def _int_arg(value: Any, name: str, lo: int, hi: int | None = None) -> int:
    """An int keyword (not a bool, a float or a numeric string), in [lo, hi]."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        n = int(value)
        if lo <= n and (hi is None or n <= hi):
            return n
    where = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
    raise UsageError(None, f"{name} must be an int {where}, not {_show(value)}")


def _real_arg(value: Any, name: str, what: str = "") -> float:
    """A finite number >= 0 (an int or float, not a bool or a numeric string)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        x = float(value)
        if math.isfinite(x) and x >= 0:
            return x
    raise UsageError(None, f"{name} must be a finite number >= 0{what}, not {_show(value)}")


def _strings(value: Any, name: str, allowed: tuple[type, ...] = (str,),
             what: str = "a string or a list of strings") -> tuple[Any, ...]:
    """A sequence-of-strings keyword: a single str is one item (not its characters), None is none."""
    if value is None:
        return ()
    if isinstance(value, allowed):
        return (value,)
    if isinstance(value, Iterable) and not isinstance(value, (bytes, bytearray)):
        items = tuple(value)
        if all(isinstance(v, allowed) for v in items):
            return items
    raise UsageError(None, f"{name} must be {what}, not {_show(value)}")


def _path_arg(value: Any, name: str) -> str:
    if isinstance(value, (str, os.PathLike)):
        p = os.fspath(value)
        if isinstance(p, str):
            return p
    raise UsageError(None, f"{name} must be a path (a str or os.PathLike), not {_show(value)}")


def _paths(value: Any, name: str) -> list[str]:
    """One path, or an iterable of paths (files, folders, globs, URLs)."""
    if isinstance(value, (str, os.PathLike)):
        return [_path_arg(value, name)]
    if isinstance(value, Iterable) and not isinstance(value, (bytes, bytearray)):
        items = list(value)
        if all(isinstance(v, (str, os.PathLike)) and isinstance(os.fspath(v), str) for v in items):
            return [os.fspath(v) for v in items]
    raise UsageError(None, f"{name} must be a path (a str or os.PathLike) or a list of paths, not {_show(value)}")


def _callable_arg(value: Any, name: str) -> None:
    if value is not None and not callable(value):
        raise UsageError(None, f"{name} must be a callable or None, not {_show(value)}")


def _format_arg(value: Any, check: bool = False) -> str | None:
    """`format=`: None (detect) or an input format's name; with `check`, an unknown name is refused now
    (as open() refuses it), not recorded against every checkpoint of a run."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise UsageError(None, f"format must be an input format name (a str) or None, not {_show(value)}")
    if check:
        from wdist.loaders.registry import get_format

        get_format(value)
    return value


def _opts_arg(opts: Any) -> Options | None:
    from wdist.analyzers.inspect import Options

    if opts is not None and not isinstance(opts, Options):
        raise UsageError(None, f"opts must be an Options from wdist.options(...) or None, not {_show(opts)}")
    return opts


def open(source: Source, format: str | None = None) -> Checkpoint:  # noqa: A001 - the verb users expect
    """A lazily read Checkpoint: a file or model folder (headers only), or an in-memory model. Use it as a
    context manager, or call close(), to release its file handles."""
    if isinstance(source, Checkpoint):
        return source
    format = _format_arg(format)
    if isinstance(source, (str, os.PathLike)):
        return open_checkpoint(_path_arg(source, "source"), format)
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
            near_zero_abs: float | None = None, bins: int = 64, jobs: int = 0, cache: Any = None,
            engine: Any = None, spectral: bool = False, spectral_max_side: int = 8192,
            spectral_conv: str = "per-kernel") -> Options:
    """Analysis options from the CLI's option names (`roles=["all"]` adds every role). `cache`: True for the
    user cache folder, a folder path, or an analyzers.cache.SummaryCache; `engine`: an
    analyzers.engine.DaskEngine (see `dask_engine`)."""
    from wdist.analyzers.inspect import Options
    from wdist.analyzers.metrics import NearZero

    if near_zero_rel is not None and near_zero_abs is not None:
        raise UsageError(None, "give near_zero_rel or near_zero_abs, not both")
    if near_zero_rel is not None:
        near_zero_rel = _real_arg(near_zero_rel, "near_zero_rel", " (a near-zero threshold)")
    if near_zero_abs is not None:
        near_zero_abs = _real_arg(near_zero_abs, "near_zero_abs", " (a near-zero threshold)")
    # roles="all" or layers="fc*": one item, not its letters
    role_items = _strings(roles, "roles", (str, Role), "a role name or a list of role names")
    globs = _strings(layers, "layers")
    role_names = [r.value if isinstance(r, Role) else r for r in role_items]
    valid = [r.value for r in Role]
    bad = [r for r in role_names if r not in valid and r != "all"]
    if bad:
        raise UsageError(None, f"unknown role(s) {', '.join(bad)}; choose from {', '.join(valid)}, all")
    if "all" in role_names:
        role_set = tuple(Role)
    else:
        role_set = tuple(Role(r) for r in role_names) if role_names else DEFAULT_ROLES
    bins = _int_arg(bins, "bins", 4, 512)
    jobs = _int_arg(jobs, "jobs", 0, 256)  # as the CLI's --jobs (0: all cores)
    nz = NearZero(rel=0.01 if near_zero_rel is None else near_zero_rel, abs=near_zero_abs)
    spec = None
    if spectral:
        from wdist.analyzers.spectral import SpectralOptions

        if spectral_conv not in ("per-kernel", "flatten"):
            raise UsageError(None, f"spectral_conv must be 'per-kernel' or 'flatten', not {spectral_conv!r}")
        spectral_max_side = _int_arg(spectral_max_side, "spectral_max_side", 2)
        spec = SpectralOptions(max_side=spectral_max_side, conv_mode=spectral_conv)
    return Options(roles=role_set, layers=globs, near_zero=nz, bins=bins, jobs=jobs,
                   cache=_cache(cache), engine=engine, spectral=spec)


def _cache(cache: Any) -> SummaryCache | None:
    from wdist.analyzers.cache import SummaryCache

    if cache is None or cache is False:
        return None
    if cache is True:
        return SummaryCache.default()
    if isinstance(cache, (str, os.PathLike)):
        return SummaryCache(os.fspath(cache))
    if isinstance(cache, SummaryCache):
        return cache
    raise UsageError(None, f"cache must be True, False, a folder or a SummaryCache, not {type(cache).__name__}")


def dask_engine(address: str) -> DaskEngine:
    """A Dask engine for `options(engine=...)`: "tcp://HOST:8786" (an existing scheduler) or "local:N" (a local
    cluster of N worker processes started on first use). Close it (or use `with`) when done."""
    if not isinstance(address, str):
        raise UsageError(None, f"address must be a str (tcp://HOST:PORT or local:N), not {_show(address)}")
    if not (address.startswith(("tcp://", "tls://", "ws://", "wss://", "inproc://")) or re.fullmatch(r"local:\d+", address)):
        raise UsageError(None, f"scheduler {address!r}: give tcp://HOST:PORT or local:N")
    from wdist.analyzers.engine import DaskEngine

    return DaskEngine(address)


@contextlib.contextmanager
def _flushing(opts: Options) -> Iterator[Options]:
    """Write what the summary cache learned, also when the analysis fails part-way."""
    try:
        yield opts
    finally:
        if opts.cache is not None:
            opts.cache.flush()


def ls(source: Source, format: str | None = None) -> Listing:
    """Every tensor of a checkpoint, from headers only."""
    with _opened(source, format) as ck:
        return Listing.of(ck)


def inspect(source: Source, *, roles: Sequence[str] | None = None, layers: Sequence[str] = (),
            near_zero_rel: float | None = None, near_zero_abs: float | None = None, bins: int = 64,
            jobs: int = 0, format: str | None = None, progress: Progress | None = None, cache: Any = None,
            spectral: bool = False, spectral_max_side: int = 8192, spectral_conv: str = "per-kernel",
            opts: Options | None = None) -> InspectReport:
    """Per-tensor, per-layer and whole-model metrics and the reading (`report.reading`); with spectral=True
    also the singular-value metrics (`report.spectral`). `opts` (from `options(...)`) replaces the analysis
    keywords when given."""
    from wdist.analyzers.inspect import analyse

    _callable_arg(progress, "progress")
    opts = _opts_arg(opts) or options(roles, layers, near_zero_rel, near_zero_abs, bins, jobs, cache,
                                      spectral=spectral, spectral_max_side=spectral_max_side,
                                      spectral_conv=spectral_conv)
    with _opened(source, format) as ck, _flushing(opts):
        return analyse(ck, opts, progress)


def diff(a: Source, b: Source, *, roles: Sequence[str] | None = None, layers: Sequence[str] = (),
         near_zero_rel: float | None = None, near_zero_abs: float | None = None, bins: int = 64, jobs: int = 0,
         rtol: float = 1e-5, atol: float = 1e-8, format: str | None = None,
         progress: Progress | None = None, cache: Any = None, spectral: bool = False,
         spectral_max_side: int = 8192, spectral_conv: str = "per-kernel", opts: Options | None = None) -> DiffReport:
    """How the weights moved from A to B (tensors aligned by name, across formats); with spectral=True also
    both sides' singular-value metrics and each layer's change of alpha."""
    from wdist.analyzers.diff import Tolerance, compare

    for name, v in (("rtol", rtol), ("atol", atol)):  # a type check only: the CLI passes any float through
        if not isinstance(v, numbers.Real) or isinstance(v, bool):
            raise UsageError(None, f"{name} must be a number, not {_show(v)}")
    _callable_arg(progress, "progress")
    opts = _opts_arg(opts) or options(roles, layers, near_zero_rel, near_zero_abs, bins, jobs, cache,
                                      spectral=spectral, spectral_max_side=spectral_max_side,
                                      spectral_conv=spectral_conv)
    with _opened(a, format) as ck_a, _opened(b, format) as ck_b, _flushing(opts):
        report = compare(ck_a, ck_b, opts, Tolerance(rtol, atol), progress)
        if opts.spectral is not None:
            from wdist.analyzers.inspect import select
            from wdist.analyzers.spectral_report import spectral_report

            sa, sb = (spectral_report(ck, select(ck, opts.roles, opts.layers), opts.spectral, opts.jobs, opts.engine)
                      for ck in (ck_a, ck_b))
            change = {name: (sb.layers[name].get("alpha") - la["alpha"]
                             if la.get("alpha") is not None and sb.layers[name].get("alpha") is not None else None)
                      for name, la in sa.layers.items() if name in sb.layers}
            report.spectral = {"a": sa.to_dict(), "b": sb.to_dict(), "alpha_change": change}
        return report


def trend(inputs: str | os.PathLike | Iterable[str | os.PathLike], *, metrics: Sequence[str] = DEFAULT_METRICS,
          order: str = "step", roles: Sequence[str] | None = None, layers: Sequence[str] = (),
          near_zero_rel: float | None = None, near_zero_abs: float | None = None, bins: int = 64, jobs: int = 0,
          format: str | None = None, ridgeline: bool = True, progress: Progress | None = None, cache: Any = None,
          spectral: bool = False, spectral_max_side: int = 8192, spectral_conv: str = "per-kernel",
          opts: Options | None = None) -> TrendReport:
    """Metrics per layer across the checkpoints of a run (files, folders or globs), ordered by step. A
    checkpoint that cannot be read is recorded with its reason (`report.checkpoints[i].error`)."""
    from wdist.analyzers.trend import expand_inputs, run

    if order not in ("step", "given"):
        raise UsageError(None, f"order must be 'step' or 'given', not {_show(order)}")
    items = _paths(inputs, "inputs")
    if not items:  # as the CLI, which needs at least one input
        raise UsageError(None, "trend needs at least one checkpoint, folder or glob")
    chosen = _strings(metrics, "metrics")
    format = _format_arg(format, check=True)
    _callable_arg(progress, "progress")
    opts = _opts_arg(opts) or options(roles, layers, near_zero_rel, near_zero_abs, bins, jobs, cache,
                                      spectral=spectral, spectral_max_side=spectral_max_side,
                                      spectral_conv=spectral_conv)
    refused: dict[str, str] = {}
    paths = expand_inputs(items, refused)
    with _flushing(opts):
        return run(paths, opts, chosen, order == "given", format, progress, ridgeline=ridgeline,
                   refused=refused)


def check(sources: Source | Sequence[Source], rules: Sequence[str] = (), *, config: str | os.PathLike | bool | None = None,
          baseline: Source | None = None, allow_empty: bool = False, roles: Sequence[str] | None = None,
          near_zero_rel: float | None = None, near_zero_abs: float | None = None, jobs: int = 0,
          format: str | None = None, cwd: str | None = None, cache: Any = None, engine: Any = None,
          spectral: bool | None = None, spectral_max_side: int = 8192, spectral_conv: str = "per-kernel",
          on_file: Callable[[str | None], None] | None = None) -> CheckReport:
    """Evaluate rules on each checkpoint. `config`: a path, False for none, or None to look for wdist.toml /
    [tool.wdist] from `cwd` (default: the current directory) upward. A checkpoint that cannot be read is
    recorded as an error in its result; the others are still checked."""
    from wdist.analyzers.check import CheckpointResult, Config, evaluate, find_config, load_config, parse_rule
    from wdist.analyzers.diff import compare
    from wdist.analyzers.inspect import analyse

    srcs: list[Source] = list(sources) if isinstance(sources, (list, tuple)) else [sources]
    rule_texts = _strings(rules, "rules")
    format = _format_arg(format, check=True)
    _callable_arg(on_file, "on_file")
    if cwd is not None:
        cwd = _path_arg(cwd, "cwd")
    cfg = Config()
    cpath: str | None
    if isinstance(config, (str, os.PathLike)):
        cpath = _path_arg(config, "config")
        if not os.path.isfile(cpath):
            raise UsageError(cpath, "config file not found")
    elif config is None or isinstance(config, bool):
        cpath = None if config is False else find_config(cwd)
    else:
        raise UsageError(None, f"config must be a path, False (no config) or None (look for one), not {_show(config)}")
    if cpath:
        cfg = load_config(cpath)
    base = baseline if baseline is not None else cfg.baseline
    parsed = [parse_rule(r, cfg.origin(r), base is not None) for r in cfg.rules]
    parsed += [parse_rule(r, "rules/--rule", base is not None) for r in rule_texts]
    if not parsed:
        raise UsageError(None, "no rules: give rules (--rule) or a config file with rules = [...]")
    if spectral is None:  # rules on alpha & co. switch the spectral pass on by themselves
        from wdist.analyzers.check import needs_spectral

        spectral = needs_spectral(parsed)
    opts = options(roles or tuple(cfg.roles), tuple(cfg.include),
                   near_zero_rel if near_zero_rel is not None else cfg.near_zero_rel,
                   near_zero_abs if near_zero_abs is not None else cfg.near_zero_abs, 64, jobs, cache, engine,
                   spectral=bool(spectral), spectral_max_side=spectral_max_side, spectral_conv=spectral_conv)
    results: list[CheckpointResult] = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(_flushing(opts))
        if base is not None and on_file:
            on_file(os.fspath(base) if isinstance(base, (str, os.PathLike)) else None)
        base_ck = stack.enter_context(_opened(base, format)) if base is not None else None

        def kept(ck: Checkpoint) -> Checkpoint:  # `exclude` applies to the baseline as to the checkpoints
            return ck if not cfg.exclude else dataclasses.replace(ck, tensors=[
                t for t in ck.tensors if not any(fnmatch.fnmatchcase(t.name, g) for g in cfg.exclude)])

        if base_ck is not None:
            base_ck = kept(base_ck)
        for src in srcs:
            # an in-memory input is named by its type, as inspect names it (its repr can be megabytes)
            label = fs.redact(os.fspath(src) if isinstance(src, (str, os.PathLike))
                              else str(getattr(src, "path", None) or f"<{type(src).__name__}>"))
            if on_file:
                on_file(label)
            try:
                with _opened(src, format) as ck:
                    mine = kept(ck)
                    report = analyse(mine, opts)
                    d = compare(base_ck, mine, opts) if base_ck is not None else None
                    results.append(CheckpointResult(label, None, evaluate(parsed, report, d, allow_empty,
                                                                          spectral=report.spectral),
                                                    list(ck.warnings)))
            except WdistError as e:
                if isinstance(e, UsageError) and e.path is None:
                    raise
                results.append(CheckpointResult(label, e.reason, []))
            except Exception as e:  # noqa: BLE001 - one hostile file must not hide the verdicts of the others
                results.append(CheckpointResult(label, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__, []))
    return CheckReport(results, cpath)


def plot(inputs: str | os.PathLike | Iterable[str | os.PathLike], out: str | os.PathLike,
         formats: Sequence[str] = ("png",), progress: Callable[[str], None] | None = None,
         spectral: bool = False, on_error: Callable[[str, str], None] | None = None) -> list[str]:
    """Write histogram, overlay, ridgeline and trend pictures (several pages when there are many layers,
    never a silent cap) and a self-contained OUT.html; returns every path written. A checkpoint of the run
    that cannot be read is left out of the pictures, listed in the HTML and passed to `on_error(path,
    reason)`. Needs matplotlib (the `plot` extra)."""
    from wdist.analyzers.trend import expand_inputs, order_points
    from wdist.plots import write_report

    items = _paths(inputs, "inputs")
    if not items:
        raise UsageError(None, "plot needs at least one checkpoint, folder or glob")
    prefix = _path_arg(out, "out")
    if not os.path.basename(prefix):  # "dir/" would write "dir/-1.png" and a hidden "dir/.html"
        raise UsageError(None, f"out/-o {prefix!r} names no file prefix: give e.g. {os.path.join(prefix, 'report')!r}")
    kinds = _strings(formats, "formats")
    if not set(kinds) <= {"png", "svg"}:
        raise UsageError(None, f"formats must be 'png' and/or 'svg', not {_show(formats)}")
    _callable_arg(progress, "progress")
    _callable_arg(on_error, "on_error")
    refused: dict[str, str] = {}  # entries symlinked out of a run folder: named through on_error, as the CLI does
    ordered, _ = order_points(expand_inputs(items, refused), given=False)
    written: list[str] = []
    write_report([p.path for p in ordered], prefix, kinds, on_file=written.append, on_step=progress,
                 spectral=spectral, on_error=on_error, refused=refused)
    return written
