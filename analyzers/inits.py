"""Initialisation signatures: does a weight tensor's spread match a common initialiser at its fans?

Each scheme fixes the std (and, for uniform ones, the bound max|w|) from fan_in / fan_out:
PyTorch layouts are weight [out, in, *kernel]; Keras kernels are [*kernel, in, out]. A tensor matches a
scheme when (all of):
- |std / std0 - 1| <= min(5%, 4 standard errors of a sample std), SE = sqrt((kappa + 2) / (4 n)) with kappa
  the scheme's excess kurtosis (normal 0, uniform -1.2, normal truncated at 2 sigma -0.6366);
- |mean| <= 4 std0 / sqrt(n);
- the excess kurtosis is within 4 sqrt(24 / n) + 0.05 of kappa (the family: uniform vs normal vs truncated);
- uniform: max|w| <= bound (1 + 2^-7); truncated normal: max|w| <= 2 sigma_underlying (1 + 2^-7).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

TRUNC_STD = 0.8796256610342398  # std of a standard normal truncated to [-2, 2]
KURT = {"uniform": -1.2, "normal": 0.0, "truncnormal": -0.6366}  # excess kurtosis of each family
MAX_REL_TOL = 0.05
EMBEDDING_DEFAULT = "normal(0, 1) (PyTorch Embedding default)"


@dataclass(frozen=True)
class Scheme:
    name: str
    family: str  # uniform | normal | truncnormal
    std: Callable[[int, int], float]
    formula: Callable[[int, int], str]  # how std0 follows from the fans, for the note
    roles: tuple[str, ...] = ("weight",)


def _u(name: str, std: Callable[[int, int], float], formula: Callable[[int, int], str]) -> Scheme:
    return Scheme(name, "uniform", std, formula)


SCHEMES: tuple[Scheme, ...] = (
    _u("PyTorch default (kaiming_uniform, a=√5)", lambda fi, fo: 1 / math.sqrt(3 * fi),
       lambda fi, fo: f"1/√(3·{fi})"),
    # where two schemes give the same std (square fans), the earlier one is named: torchvision's convs use
    # Kaiming normal with fan_out, PyTorch's own kaiming_uniform_ fan_in
    Scheme("Kaiming normal, fan_out", "normal", lambda fi, fo: math.sqrt(2 / fo), lambda fi, fo: f"√(2/{fo})"),
    Scheme("Kaiming normal, fan_in", "normal", lambda fi, fo: math.sqrt(2 / fi), lambda fi, fo: f"√(2/{fi})"),
    _u("Kaiming uniform, fan_in", lambda fi, fo: math.sqrt(2 / fi), lambda fi, fo: f"√(2/{fi})"),
    _u("Kaiming uniform, fan_out", lambda fi, fo: math.sqrt(2 / fo), lambda fi, fo: f"√(2/{fo})"),
    Scheme("Xavier/Glorot normal", "normal", lambda fi, fo: math.sqrt(2 / (fi + fo)),
           lambda fi, fo: f"√(2/({fi}+{fo}))"),
    _u("Xavier/Glorot uniform", lambda fi, fo: math.sqrt(2 / (fi + fo)), lambda fi, fo: f"√(2/({fi}+{fo}))"),
    Scheme("LeCun normal", "normal", lambda fi, fo: math.sqrt(1 / fi), lambda fi, fo: f"√(1/{fi})"),
    _u("LeCun uniform", lambda fi, fo: math.sqrt(1 / fi), lambda fi, fo: f"√(1/{fi})"),
    # Keras's variance-scaling "normal" initialisers draw a truncated normal rescaled to the nominal std
    Scheme("Kaiming/He truncated normal, fan_in (Keras he_normal)", "truncnormal", lambda fi, fo: math.sqrt(2 / fi),
           lambda fi, fo: f"√(2/{fi})"),
    Scheme("Glorot truncated normal (Keras glorot_normal)", "truncnormal", lambda fi, fo: math.sqrt(2 / (fi + fo)),
           lambda fi, fo: f"√(2/({fi}+{fo}))"),
    Scheme("LeCun truncated normal (Keras lecun_normal)", "truncnormal", lambda fi, fo: math.sqrt(1 / fi),
           lambda fi, fo: f"√(1/{fi})"),
    # torch.nn.RNN / GRU / LSTM draw every weight from U(±1/√hidden); weight_hh ([gates·H, H]) matches the
    # PyTorch default above (fan_in = H), weight_ih ([gates·H, input]) only through its fan_out = gates·H
    _u("PyTorch LSTM default U(±1/√hidden), hidden = fan_out/4", lambda fi, fo: 1 / math.sqrt(3 * fo / 4),
       lambda fi, fo: f"1/√(3·{fo}/4)"),
    _u("PyTorch GRU default U(±1/√hidden), hidden = fan_out/3", lambda fi, fo: 1 / math.sqrt(fo),
       lambda fi, fo: f"1/√(3·{fo}/3)"),
    _u("PyTorch RNN default U(±1/√hidden), hidden = fan_out", lambda fi, fo: 1 / math.sqrt(3 * fo),
       lambda fi, fo: f"1/√(3·{fo})"),
    Scheme("normal(0, 0.02)", "normal", lambda fi, fo: 0.02, lambda fi, fo: "0.02", ("weight", "embedding")),
    Scheme("truncated normal(0, 0.02) at ±2σ", "truncnormal", lambda fi, fo: 0.02 * TRUNC_STD,
           lambda fi, fo: "0.02·0.880", ("weight", "embedding")),
    # also for weights: an nn.Embedding under a name that says nothing of one (`lookup.weight`, a bare
    # `weight`); no weight initialiser gives std 1 at real fans, and a trained layer does not land on it
    Scheme(EMBEDDING_DEFAULT, "normal", lambda fi, fo: 1.0, lambda fi, fo: "1", ("weight", "embedding")),
)


@dataclass(frozen=True)
class InitMatch:
    scheme: str
    family: str
    std: float  # measured
    expected: float  # std0 of the scheme
    formula: str
    fan_in: int
    fan_out: int
    also: tuple[str, ...] = ()  # other schemes giving the same std at these fans

    def describe(self, max_abs: float | None = None) -> str:
        """Note text, e.g. "std 0.0586 ≈ √(2/576) = 0.0589: Kaiming normal, fan_out"."""
        text = f"std {self.std:.3g} ≈ {self.formula} = {self.expected:.3g}"
        if self.family == "uniform" and max_abs is not None:
            text += f", max|w| {max_abs:.3g} ≤ bound {math.sqrt(3) * self.expected:.3g}"
        also = f" (same std as {', '.join(self.also)})" if self.also else ""
        return f"{text}: {self.scheme}{also}"


def fans(shape: tuple[int, ...] | list[int], keras: bool) -> tuple[int, int] | None:
    """(fan_in, fan_out) as torch.nn.init / Keras compute them; None below 2-D."""
    if len(shape) < 2 or any(d <= 0 for d in shape):
        return None
    if keras:
        rf = math.prod(shape[:-2])
        return shape[-2] * rf, shape[-1] * rf
    rf = math.prod(shape[2:])
    return shape[1] * rf, shape[0] * rf


def std_tolerance(n: int, family: str) -> float:
    """Relative tolerance on the std: 4 standard errors of a sample std, at most 5%."""
    se = math.sqrt(max(KURT[family] + 2.0, 0.1) / (4.0 * max(n, 1)))
    return min(MAX_REL_TOL, 4.0 * se)


def match(shape: tuple[int, ...] | list[int], keras: bool, role: str, n: int, mean: float, std: float,
          kurtosis: float | None, max_abs: float) -> InitMatch | None:
    """The closest scheme this tensor matches (see the module docstring), or None."""
    f = fans(shape, keras)
    if f is None or n < 64 or not std > 0 or kurtosis is None:
        return None
    fi, fo = f
    best: tuple[float, InitMatch] | None = None
    names: list[str] = []
    for sc in SCHEMES:
        if role not in sc.roles:
            continue
        s0 = sc.std(fi, fo)
        rel = abs(std / s0 - 1.0)
        if rel > std_tolerance(n, sc.family):
            continue
        if abs(mean) > 4.0 * s0 / math.sqrt(n):
            continue
        if abs(kurtosis - KURT[sc.family]) > 4.0 * math.sqrt(24.0 / n) + 0.05:
            continue
        slack = 1.0 + 2.0 ** -7
        if sc.family == "uniform" and max_abs > math.sqrt(3.0) * s0 * slack:
            continue
        if sc.family == "truncnormal" and max_abs > 2.0 * s0 / TRUNC_STD * slack:
            continue
        m = InitMatch(sc.name, sc.family, std, s0, sc.formula(fi, fo), fi, fo)
        if best is not None and math.isclose(s0, best[1].expected, rel_tol=1e-9) and sc.family == best[1].family:
            names.append(sc.name)  # the same number by two names (square fans): say both
            continue
        if best is None or rel < best[0]:
            best, names = (rel, m), [sc.name]
    if best is None:
        return None
    m = best[1]
    if len(names) > 1:
        m = InitMatch(m.scheme, m.family, m.std, m.expected, m.formula, m.fan_in, m.fan_out, tuple(names[1:]))
    return m
