"""`check`: threshold rules over inspect and diff metrics, with a validated config file."""

from __future__ import annotations

import fnmatch
import math
import operator
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from wdist.analyzers.diff import CHANGE_METRICS, DiffReport
from wdist.analyzers.inspect import InspectReport
from wdist.analyzers.metrics import METRICS
from wdist.analyzers.spectral import SPECTRAL_METRICS
from wdist.analyzers.verdict import FLAGS, SHAPES, STATES
from wdist.loaders.errors import UsageError

if TYPE_CHECKING:
    from wdist.analyzers.spectral_report import SpectralReport

OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<=": operator.le, ">=": operator.ge, "==": operator.eq, "!=": operator.ne, "<": operator.lt, ">": operator.gt,
}
# verdict rules: "model: state == trained", "*: shape != heavy_tailed", "model: flags lacks non_finite"
VERDICT: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "shape": (("==", "!="), SHAPES), "state": (("==", "!="), STATES), "flags": (("has", "lacks"), FLAGS),
}
_WORD_OPS = ("has", "lacks")
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.")  # . for delta.<m>
DELTA = "delta."  # delta.<metric>: B - A of an inspect metric, against the baseline
# a rule's number: plain ASCII decimal or exponent form, or inf (float() alone also takes "0_5" as 5,
# full-width digits and nan, with which "X != nan" always passes)
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?inf", re.ASCII)


class Word(str):
    """A verdict value in an Outcome: formats as itself under any numeric format spec."""

    def __format__(self, spec: str) -> str:
        return str(self)


def _split_rule(text: str) -> tuple[str, str, str, str] | None:
    """(scope, metric, op, value) of 'SCOPE: METRIC OP VALUE', in linear time: the scope ends at the last
    ':' (tensor names may hold ':'; the expression never does)."""
    i = text.rfind(":")
    if i < 0:
        return None
    scope, expr = text[:i].strip(), text[i + 1:].strip()
    j = 0
    while j < len(expr) and expr[j] in _NAME_CHARS:
        j += 1
    metric, rest = expr[:j], expr[j:].lstrip()
    if not scope or not metric:
        return None
    op = next((o for o in ("<=", ">=", "==", "!=", "<", ">") if rest.startswith(o)), None)
    if op is None:
        op = next((o for o in _WORD_OPS if rest.startswith(o) and rest[len(o):len(o) + 1].isspace()), None)
    if op is None:
        return None
    value = rest[len(op):].strip()
    if not value or any(c.isspace() for c in value):
        return None
    return scope, metric, op, value
CONFIG_KEYS = {"rules", "include", "exclude", "roles", "near_zero_rel", "near_zero_abs", "baseline"}
ROLES = ("weight", "bias", "norm", "embedding", "running_stat", "optimizer_state", "other", "all")


@dataclass(frozen=True)
class Rule:
    text: str
    scope: str  # "model" or a glob over tensor names
    metric: str
    op: str
    value: float | str  # a word for verdict rules (shape, state, flags)
    origin: str = "--rule"  # where it came from, for error messages

    @property
    def is_change(self) -> bool:
        return _is_change(self.metric)

    @property
    def is_verdict(self) -> bool:
        return self.metric in VERDICT

    @property
    def is_spectral(self) -> bool:
        return self.metric in SPECTRAL_METRICS


def _is_change(metric: str) -> bool:
    """A metric read off the diff against the baseline: a change metric or delta.<metric>."""
    return metric in CHANGE_METRICS or metric.startswith(DELTA)


def needs_spectral(rules: list[Rule]) -> bool:
    """Whether any rule uses a spectral metric (the caller then needs the --spectral pass)."""
    return any(r.is_spectral for r in rules)


def validate_glob(g: str, where: str) -> None:
    depth = 0
    for ch in g:
        if ch == "[":
            depth += 1
        elif ch == "]" and depth:
            depth -= 1
    if depth or not g.strip():
        raise UsageError(None, f"{where}: malformed glob {g!r} (unclosed '[' or empty)")


# the change metrics a diff pools over the whole model (DiffReport.summary); the others are per tensor
MODEL_CHANGE_METRICS = ("rel_l2_change", "cosine")


def parse_rule(text: str, origin: str = "--rule", baseline: bool = False) -> Rule:
    parts = _split_rule(text)
    if parts is None:
        raise UsageError(None, f"{origin}: cannot parse rule {text[:200]!r}; expected 'GLOB: METRIC OP VALUE' with OP one of "
                         + " ".join(OPS) + ", or 'GLOB: shape|state == WORD' / 'GLOB: flags has|lacks FLAG'")
    scope, metric, op, raw = parts
    if metric in VERDICT:
        ops, words = VERDICT[metric]
        if op not in ops:
            raise UsageError(None, f"{origin}: {metric} takes {' or '.join(ops)}, not {op!r}, in {text[:200]!r}")
        if raw not in words:
            raise UsageError(None, f"{origin}: unknown {metric} {raw!r} in {text[:200]!r}; valid: {', '.join(words)}")
        if metric == "state" and scope != "model":
            raise UsageError(None, f"{origin}: state is a model reading; write 'model: state {op} {raw}'")
        validate_glob(scope, origin)
        return Rule(text.strip(), scope, metric, op, raw, origin)
    if op in _WORD_OPS:
        raise UsageError(None, f"{origin}: {op!r} applies to flags only, in {text[:200]!r}")
    valid = METRICS + CHANGE_METRICS + SPECTRAL_METRICS
    if metric.startswith(DELTA) and metric[len(DELTA):] in METRICS:
        if scope == "model":
            raise UsageError(None, f"{origin}: {metric} is per tensor (B - A of each matched tensor), in "
                             f"{text[:200]!r}; write a tensor glob, e.g. '*.weight: {metric} {op} {raw}'")
    elif metric not in valid:
        raise UsageError(None, f"{origin}: unknown metric {metric!r} in {text[:200]!r}; valid metrics: "
                         f"{', '.join(valid + tuple(VERDICT))}")
    if scope == "model" and metric in CHANGE_METRICS and metric not in MODEL_CHANGE_METRICS:
        raise UsageError(None, f"{origin}: {metric} is a per-tensor change metric with no model-wide value, in "
                         f"{text[:200]!r}; model rules take {' or '.join(MODEL_CHANGE_METRICS)}, or write a "
                         f"tensor glob, e.g. '*.weight: {metric} {op} {raw}'")
    if metric in SPECTRAL_METRICS and scope == "model":
        raise UsageError(None, f"{origin}: {metric} is a per-matrix spectral metric with no model-wide value, in "
                         f"{text[:200]!r}; write a tensor glob instead, e.g. '*.weight: {metric} {op} {raw}'")
    if _is_change(metric) and not baseline:
        raise UsageError(None, f"{origin}: {metric} compares against a baseline; give --baseline (or baseline = in config)")
    if not _NUMBER.fullmatch(raw):
        raise UsageError(None, f"{origin}: value {raw!r} in {text[:200]!r} is not a number")
    value = float(raw)
    validate_glob(scope, origin)
    return Rule(text.strip(), scope, metric, op, value, origin)


@dataclass
class Config:
    rules: list[str] = field(default_factory=list)
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)
    near_zero_rel: float | None = None
    near_zero_abs: float | None = None
    baseline: str | None = None
    path: str | None = None
    lines: dict[str, int] = field(default_factory=dict)  # rule text -> line in the file

    def origin(self, rule: str) -> str:
        return f"{self.path}:{self.lines.get(rule, 0)}" if self.path else "--rule"


def find_config(start: str | None = None) -> str | None:
    """wdist.toml, or a pyproject.toml with [tool.wdist], from `start` (default cwd) upward."""
    d = os.path.abspath(start or os.getcwd())
    while True:
        for name in ("wdist.toml", "pyproject.toml"):
            p = os.path.join(d, name)
            if os.path.isfile(p) and (name == "wdist.toml" or "[tool.wdist]" in _read(p)):
                return p
        parent = os.path.dirname(d)
        if parent == d:
            return None
        d = parent


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return ""


def load_config(path: str) -> Config:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    text = _read(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(path, f"not valid TOML ({e})") from None
    if os.path.basename(path) == "pyproject.toml":
        data = data.get("tool", {}).get("wdist", {})
    unknown = set(data) - CONFIG_KEYS
    if unknown:
        raise UsageError(path, f"unknown key(s) {', '.join(sorted(unknown))}; valid keys: {', '.join(sorted(CONFIG_KEYS))}")
    cfg = Config(path=path)
    for key in ("rules", "include", "exclude", "roles"):
        v = data.get(key, [])
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise UsageError(path, f"{key} must be a list of strings")
        setattr(cfg, key, v)
    for key in ("near_zero_rel", "near_zero_abs"):
        v = data.get(key)
        # a TOML boolean is an int to Python: `near_zero_rel = true` is not the number 1
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0):
            raise UsageError(path, f"{key} must be a number >= 0")
        setattr(cfg, key, None if v is None else float(v))
    b = data.get("baseline")
    if b is not None:
        if not isinstance(b, str):
            raise UsageError(path, "baseline must be a path string")
        cfg.baseline = os.path.join(os.path.dirname(path), b)
    bad_roles = [r for r in cfg.roles if r not in ROLES]
    if bad_roles:
        raise UsageError(path, f"unknown role(s) {', '.join(bad_roles)}; valid roles: {', '.join(ROLES)}")
    # the line a rule is on, for messages: a quoted match first ("*: std > 1e" is inside "*: std > 1e5"),
    # then any line holding it (a TOML escape changes the quoted text)
    lines = text.splitlines()
    for quoted in (True, False):
        for i, line in enumerate(lines, 1):
            for r in cfg.rules:
                if r not in cfg.lines and ((f'"{r}"' in line or f"'{r}'" in line) if quoted else r in line):
                    cfg.lines[r] = i
    for g in cfg.include + cfg.exclude:
        validate_glob(g, path)
    return cfg


@dataclass
class Outcome:
    name: str
    value: float | str | None
    passed: bool | None  # None: metric undefined for this tensor (e.g. kurtosis of a constant)


@dataclass
class RuleResult:
    rule: str
    scope: str
    metric: str
    op: str
    value: float | str
    verdict: str  # pass | fail | error
    matched: int
    failures: list[Outcome]
    results: list[Outcome]
    message: str = ""


@dataclass
class CheckpointResult:
    path: str
    error: str | None
    rules: list[RuleResult]
    warnings: list[str] = field(default_factory=list)  # the checkpoint's own (refused globals, skipped data)

    @property
    def passed(self) -> bool:
        return self.error is None and all(r.verdict == "pass" for r in self.rules)


def _verdict_outcome(name: str, reading: Any, rule: Rule) -> Outcome:
    if reading is None:
        return Outcome(name, None, None)
    if rule.metric == "flags":
        flags = list(reading.flags)
        ok = (rule.value in flags) == (rule.op == "has")
        return Outcome(name, Word(",".join(flags) or "none"), ok)
    v = getattr(reading, rule.metric)
    return Outcome(name, Word(v), (v == rule.value) == (rule.op == "=="))


# diff statuses with no pair of values to compare, as a change rule's failing value
_UNPAIRED = {"only_a": "only in the baseline", "only_b": "not in the baseline", "shape_changed": "shape changed"}


def _worst_first(outcomes: list[Outcome], op: str, target: float | str) -> list[Outcome]:
    """Failures ordered by how far they miss: smallest first for lower bounds (> >=), largest first for
    upper bounds (< <=), farthest from the value for == and !=."""
    if isinstance(target, str):
        return outcomes

    def badness(o: Outcome) -> float:
        v = o.value if isinstance(o.value, (int, float)) else target
        if op in (">", ">="):
            return target - v
        if op in ("<", "<="):
            return v - target
        return abs(v - target)

    return sorted(outcomes, key=badness, reverse=True)


def _named(t: Any, scope: str) -> bool:
    """Whether a tensor glob matches a tensor: its name or a name tied to it (lm_head.weight = emb.weight)."""
    return fnmatch.fnmatchcase(t.name, scope) or any(fnmatch.fnmatchcase(a, scope) for a in t.aliases)


def _test(v: Any, rule: Rule) -> bool | None:
    """Whether a value passes a rule (None: undefined). A plain bool whatever v's type: a NumPy scalar's
    comparison gives np.bool_, which `passed is False` never matches, and which JSON cannot write."""
    return None if v is None else bool(OPS[rule.op](v, rule.value))


# float64 values beyond float32's range are analysed at its limits (loaders.dtypes): past +-3.4e38 as
# +-3.4e38, a nonzero below 1.4e-45 as +-1.4e-45. A min, max or percentile at exactly such a limit stands
# for "this far or farther" (or "this small or smaller"). Such a value can still decide a rule (max <= 100
# fails whatever lies beyond), but not one whose threshold lies out there too (max <= 1e39 would pass a
# value of 1e300): that rule fails, saying why, rather than pass on a number that is not the file's.
_F32_MAX = 3.4028234663852886e38
_F32_TINY = 1.401298464324817e-45  # the smallest float32 subnormal
_SAT_SAFE = frozenset({"zero_fraction", "nan_count", "inf_count", "numel", "finite_count", "units", "dead_units"})
_SAT_ORDER = frozenset({"max", "min", "abs_p50", "abs_p90", "abs_p99", "abs_p999"})  # order statistics
_SAT_GROWS = frozenset({"abs_mean", "rms", "l2_norm"})  # |w| sums: saturation only moves them one way
_SATURATED = Word("beyond float32's range (float64 values past +-3.4e38, or nonzero below 1.4e-45, are analysed "
                  "at those limits): the rule cannot be decided")


def _saturation(stats: dict[str, Any] | None, dtype: str | None) -> tuple[bool, bool]:
    """(some value past +-3.4e38, every nonzero value below 1.4e-45) for a float64 tensor's stats."""
    if dtype != "float64" or not stats:
        return False, False
    hi = stats.get("max") == _F32_MAX or stats.get("min") == -_F32_MAX
    ends = [abs(v) for v in (stats.get("max"), stats.get("min")) if isinstance(v, (int, float))]
    return hi, bool(ends) and max(ends) == _F32_TINY


def _decided(v: Any, rule: Rule, sat: tuple[bool, bool]) -> bool:
    """Whether a rule's outcome on a value is the same for every true value the analysed one stands for."""
    hi, tiny = sat
    metric = rule.metric
    if not (hi or tiny) or metric in _SAT_SAFE or not isinstance(v, (int, float)):
        return True
    if rule.is_change:
        # a difference or change of saturated values is not bounded by them: counts and sign flips survive
        base = metric[len(DELTA):] if metric.startswith(DELTA) else metric
        return base in _SAT_SAFE or base == "sign_flip_fraction"
    if metric in _SAT_ORDER or metric in _SAT_GROWS:
        if abs(v) == _F32_MAX:
            far = math.copysign(math.inf, v)
        elif abs(v) == _F32_TINY or (metric in _SAT_GROWS and tiny):
            far = 0.0  # the true value lies between 0 and it
        elif metric in _SAT_GROWS and hi:
            far = math.inf
        else:
            return True  # an order statistic short of the limits is the file's own value
        return _test(v, rule) == _test(far, rule)
    return False  # mean, std, shape metrics: not bounded by the analysed value


def _value_outcome(name: str, v: Any, rule: Rule, sat: tuple[bool, bool]) -> Outcome:
    if not _decided(v, rule, sat):
        return Outcome(name, _SATURATED, False)
    return Outcome(name, v, _test(v, rule))


def _any_sat(pairs: list[tuple[dict[str, Any] | None, str | None]]) -> tuple[bool, bool]:
    sats = [_saturation(st, dt) for st, dt in pairs]
    return any(h for h, _ in sats), any(t for _, t in sats)


def evaluate(rules: list[Rule], report: InspectReport, diff: DiffReport | None, allow_empty: bool,
             spectral: SpectralReport | None = None) -> list[RuleResult]:
    """Each rule's verdict on one checkpoint. Spectral rules (metrics in SPECTRAL_METRICS) read the per-tensor
    metrics of `spectral`; without one they are a UsageError (the user must ask for --spectral)."""
    missing = [r.text for r in rules if r.is_spectral] if spectral is None else []
    if missing:
        raise UsageError(None, f"rule {missing[0]!r} uses a spectral metric: add --spectral to compute it")
    out = []
    for rule in rules:
        outcomes: list[Outcome] = []
        if rule.is_spectral:
            for name, d in (spectral.tensors if spectral is not None else {}).items():
                if fnmatch.fnmatchcase(name, rule.scope):
                    v = d.get(rule.metric)
                    outcomes.append(Outcome(name, v, _test(v, rule)))
        elif rule.is_verdict:
            if rule.scope == "model":
                outcomes.append(_verdict_outcome("model", report.model.reading, rule))
            else:
                for t in report.tensors:
                    if _named(t, rule.scope):
                        outcomes.append(_verdict_outcome(t.name, t.reading, rule))
        elif rule.scope == "model":
            if rule.is_change:
                v = diff.summary.get(rule.metric) if diff else None
                sat = _any_sat([(td.a, td.dtype_a) for td in diff.tensors] + [(td.b, td.dtype_b) for td in diff.tensors]
                               ) if diff else (False, False)
                outcomes.append(_value_outcome("model", v, rule, sat))
            else:
                sat = _any_sat([(t.stats, t.dtype) for t in report.tensors])
                outcomes.append(_value_outcome("model", report.model.stats.get(rule.metric), rule, sat))
        elif rule.is_change:
            for td in diff.tensors if diff else []:
                if fnmatch.fnmatchcase(td.name, rule.scope) or (td.b_name and fnmatch.fnmatchcase(td.b_name, rule.scope)):
                    if td.status in _UNPAIRED:  # nothing to compare: a drift gate must not pass on it
                        outcomes.append(Outcome(td.b_name or td.name, Word(_UNPAIRED[td.status]), False))
                        continue
                    sat = _any_sat([(td.a, td.dtype_a), (td.b, td.dtype_b)])
                    if rule.metric.startswith(DELTA):
                        v = (td.delta or {}).get(rule.metric[len(DELTA):])
                    else:
                        v = (td.change or {}).get(rule.metric)
                    outcomes.append(_value_outcome(td.b_name or td.name, v, rule, sat))
        else:
            for t in report.tensors:
                if _named(t, rule.scope):
                    outcomes.append(_value_outcome(t.name, t.stats.get(rule.metric), rule, _saturation(t.stats, t.dtype)))
        fails = _worst_first([o for o in outcomes if o.passed is False], rule.op, rule.value)
        if not outcomes and not allow_empty:
            what = "tensor with spectral metrics (weight/embedding, rank >= 2)" if rule.is_spectral else "analysed tensor"
            verdict, msg = "error", f"glob {rule.scope!r} matches no {what} (typo? --allow-empty to permit)"
        elif outcomes and all(o.passed is None for o in outcomes):
            # nothing was checked (an all-NaN model has no max): that must not read as a pass
            verdict, msg = "error", (f"{rule.metric} is undefined for every one of the {len(outcomes)} matched "
                                     "(non-finite values, or a metric not defined for them): nothing to check")
        else:
            verdict, msg = ("fail" if fails else "pass"), ""
        # an infinite threshold as the word (JSON has no infinity: it was null, as an undefined value is)
        value: float | str = rule.value
        if isinstance(value, float) and math.isinf(value):
            value = Word("inf" if value > 0 else "-inf")
        out.append(RuleResult(rule.text, rule.scope, rule.metric, rule.op, value, verdict, len(outcomes), fails,
                              outcomes, msg))
    return out
