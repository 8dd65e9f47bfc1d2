"""The verdict: a machine-readable reading of every tensor, layer and the model, from the one streaming pass.

Shapes are judged on standardised values (each tensor's own moments; pooled readings pool per-tensor
standardised moment sums), and only for weights and embeddings; biases, norm scales (gamma) and norm
shifts (beta) are judged for what they are. Every rule is written down in the README ("The reading")."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from wdist.analyzers import inits, metrics
from wdist.analyzers.summary import Summary
from wdist.loaders import roles

Stats = Mapping[str, Any]

SHAPES = ("uniform", "gaussian", "laplace", "heavy_tailed", "sparse", "constant", "all_zero", "too_small", "other")
FLAGS = ("heavy_tailed", "sparse", "mostly_small", "outliers", "dead_units", "non_finite", "at_init")
STATES = ("initialised", "trained", "unknown")
GROUPS = ("weight", "embedding", "bias", "norm_scale", "norm_shift", "running_stat", "optimizer_moment",
          "optimizer_scalar", "other")
WEIGHTY = ("weight", "embedding")  # shape and sparsity verdicts are for these groups only
SHAPE_MIN = 64  # below this many values the shape is `too_small`
SPARSE = 0.5  # zero_fraction for the `sparse` shape and flag
PARTLY_SPARSE = 0.1
MOSTLY_SMALL = 0.5
OUTLIER_RATIO = 10.0  # max|w| >= 10 x abs_p999 ...
OUTLIER_MIN = 1000  # ... on tensors of at least this many values
GAP_RATIO = 0.25  # magnitude pruning: smallest nonzero |w| >= 0.25 x median nonzero |w|
PRUNED_SE = 4.0  # pruned normal: the non-zeros' kurtosis within this many standard errors ...
PRUNED_MARGIN = 0.005  # ... plus this ...
PRUNED_SMALL_K = 50.0  # ... plus this / k of the centre-truncated normal's (see _pruned_normal)
BIAS_MIN = 16  # a PyTorch default bias is judged on at least this many values (fewer: init_undecided)
INIT_SHARE = 0.5  # `initialised`: at least this share of weight parameters at an init signature
TRAINED_SHARE = 0.1  # `trained` (with no record): below this share

_NORM_SHIFT = {"bias", "beta"}
_OPT_SCALAR = {"step", "iterations", "iteration", "epoch", "global_step", "lr", "learning_rate", "count"}
_LABEL = {"uniform": "uniform-like", "gaussian": "Gaussian-like", "laplace": "Laplace-like",
          "heavy_tailed": "heavy-tailed", "other": "not close to a reference shape"}


@dataclass
class Reading:
    """A tensor's or a layer's verdict."""

    shape: str
    flags: list[str]
    group: str = "weight"
    kurtosis: float | None = None  # the (standardised) excess kurtosis the shape was judged on
    nonzero_shape: str | None = None  # sparse tensors: the shape of the non-zero values
    nonzero_kurtosis: float | None = None
    pruning_gap: float | None = None  # magnitude pruning: no nonzero |w| below this
    init: str | None = None  # the matched initialiser, e.g. "Kaiming normal, fan_out"
    init_detail: str | None = None  # "std 0.0589 = √(2/576): Kaiming normal, fan_out"
    # sparse tensors whose non-zeros are a normal with |w| < pruning_gap removed: the kurtosis such a
    # centre-truncated normal has (the non-zeros' own kurtosis is compared with it, not with 0)
    nonzero_expected_kurtosis: float | None = None
    # pooled readings whose members do not all show a pruning gap: [members with one, members holding
    # non-zeros that were judged]; pruning_gap is then None (a gap of only some members is no gap of the pool)
    pruning_gap_members: list[int] | None = None
    # too few values to test an init signature, and none contradicts one (a PyTorch bias of < 16 values all
    # within ±1/√fan_in): neither `at_init` nor evidence against it, so it does not veto its layer's `at_init`
    init_undecided: bool = False


@dataclass
class ModelReading:
    state: str
    shape: str
    flags: list[str]
    evidence: list[str]
    kurtosis: float | None = None
    at_init_share: float | None = None  # share of judged weight parameters at an init signature
    init_schemes: dict[str, int] = field(default_factory=dict)  # scheme -> tensors matching it


def param_name(name: str) -> str:
    """Last component of a tensor name: 'bn1.weight' -> 'weight', 'dense/kernel:0' -> 'kernel'."""
    base = name.split(":")[0]
    for sep in ("/", "."):
        base = base.rsplit(sep, 1)[-1]
    return base.lower()


def group_of(name: str, role: str, numel: int) -> str:
    """The judgement group: roles, with norm split into scale (gamma) and shift (beta), and optimizer state
    split into moments and scalar entries (step counters, learning rates)."""
    p = param_name(name)
    if role == "norm":
        return "norm_shift" if p in _NORM_SHIFT or p.endswith("bias") else "norm_scale"
    if role == "optimizer_state":
        return "optimizer_scalar" if numel <= 1 or p in _OPT_SCALAR else "optimizer_moment"
    if role in GROUPS:
        return role
    return "optimizer_scalar" if numel <= 1 else "other"


def classify(k: float | None, g: float | None, top: float | None) -> str:
    """Reference shapes (excess kurtosis, Gini of |w|): uniform -1.2 / 0.333, normal 0 / 0.414,
    Laplace 3 / 0.5; a normal's top 1% holds ~8.5% of sum w^2."""
    if k is None or g is None:
        return "other"
    if k > 5 or (top is not None and top > 0.25):
        return "heavy_tailed"
    if -1.35 <= k <= -1.0 and 0.30 <= g <= 0.36:
        return "uniform"
    if abs(k) <= 0.5 and 0.38 <= g <= 0.44:
        return "gaussian"
    if 1.5 < k <= 5 and 0.45 <= g <= 0.56:
        return "laplace"
    return "other"


def kurtosis_band(k: float | None) -> str:
    """Shape from the excess kurtosis alone (pooled readings)."""
    if k is None:
        return "other"
    if k > 5:
        return "heavy_tailed"
    if -1.35 <= k <= -1.0:
        return "uniform"
    if abs(k) <= 0.5:
        return "gaussian"
    if 1.5 < k <= 5:
        return "laplace"
    return "other"


def _max_abs(m: Stats) -> float:
    return max(abs(m.get("max") or 0.0), abs(m.get("min") or 0.0))


def _base_shape(s: Summary, m: Stats) -> str | None:
    n = s.n
    if n == 0:
        return "too_small"
    if s.zeros == n:
        return "all_zero"
    if n > 1 and s.m2 <= 0:
        return "constant"
    if n < SHAPE_MIN:
        return "too_small"
    if (m.get("zero_fraction") or 0.0) >= SPARSE:
        return "sparse"
    return None


def _nonzero(s: Summary, r: Reading) -> None:
    """Shape of the non-zero values and the magnitude-pruning gap, for tensors with >= 10% zeros."""
    k, _, _, kz = metrics.nonzero_moments(s)
    if k <= 0:
        return
    counts = metrics.nonzero_bins(s)
    if r.shape == "sparse":
        r.nonzero_kurtosis = kz
        if k < SHAPE_MIN:
            r.nonzero_shape = "too_small"
        else:
            r.nonzero_shape = classify(kz, metrics.gini(counts, k, s.exact_bins),
                                       metrics.top_mass(counts, k, s.exact_bins))
    t = metrics.smallest_nonzero(s)
    # read on bins shifted down by one, as the dense form `nonzero_counts(s)[1:]` always was
    med = metrics.abs_quantile((counts[0] - 1, counts[1]), k, 0.5, s.exact_bins) if k >= SHAPE_MIN else None
    if t is not None and med and t >= GAP_RATIO * med:
        r.pruning_gap = t
        if r.shape == "sparse" and r.nonzero_shape not in (None, "too_small", "heavy_tailed") and kz is not None:
            _pruned_normal(s, r, k, kz, t)


def truncated_normal_moments(a: float) -> tuple[float, float, float, float]:
    """E[z^2], E[z^4], E[z^6], E[z^8] of a normal N(0, 1) with |z| < a removed (symmetric centre truncation),
    from I_n = a^(n-1) phi(a) + (n - 1) I_(n-2), I_n = integral of z^n phi over z > a, divided by I_0 = Q(a)."""
    r = _mills(a)  # phi(a) / Q(a)
    e = {0: 1.0}
    for j in (2, 4, 6, 8):
        e[j] = a ** (j - 1) * r + (j - 1) * e[j - 2]
    return e[2], e[4], e[6], e[8]


def truncated_normal_kurtosis(a: float) -> float:
    """Excess kurtosis of a normal N(0, 1) with |z| < a removed (symmetric centre truncation):
    E[z^2] = 1 + a r, E[z^4] = 3 + (a^3 + 3a) r with r = phi(a) / Q(a)."""
    e2, e4, _, _ = truncated_normal_moments(a)
    return e4 / (e2 * e2) - 3.0


def truncated_normal_kurtosis_sd(a: float) -> float:
    """sqrt(k) x the standard error of the sample kurtosis of k draws of that centre-truncated normal (delta
    method on m4 / m2^2 of a symmetric law: the estimated mean adds nothing at first order). A normal's is
    sqrt(24); a deeply pruned normal's is far smaller (0.40 at 90% pruning), as its non-zeros are a narrow band."""
    m2, m4, m6, m8 = truncated_normal_moments(a)
    v = (m8 - m4 * m4) / m2 ** 4 - 4 * m4 * (m6 - m2 * m4) / m2 ** 5 + 4 * m4 * m4 * (m4 - m2 * m2) / m2 ** 6
    return math.sqrt(max(v, 0.0))


def _mills(a: float) -> float:
    """phi(a) / Q(a), the inverse Mills ratio of the upper tail (asymptotic form far out)."""
    q = 0.5 * math.erfc(a / math.sqrt(2))
    if q < 1e-300:
        return a + 1 / a
    return math.exp(-a * a / 2) / math.sqrt(2 * math.pi) / q


def _truncation_point(target: float) -> float:
    """a with (1 + a r(a)) / a^2 = target (> 1): the pruning threshold in units of the normal's sigma."""
    lo, hi = 1e-6, 40.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if (1 + mid * _mills(mid)) / (mid * mid) > target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _pruned_normal(s: Summary, r: Reading, k: int, kz: float, t: float) -> None:
    """Recognise magnitude pruning of normal weights: the non-zeros are then a normal of some sigma with
    |w| < t removed. sigma follows from their second moment E[w^2] = sigma^2 (1 + a r(a)), a = t / sigma
    (solved by bisection). The gap t is a bin's lower edge, the true smallest |w| up to 2^-7 above it, so the
    expected kurtosis is taken over that range [K(a(t (1 + 2^-7))), K(a(t))]; the non-zeros count as
    Gaussian-like when their kurtosis lies within PRUNED_SE standard errors of it (the truncated normal's own
    standard error, truncated_normal_kurtosis_sd(a) / sqrt(k)) plus PRUNED_MARGIN + PRUNED_SMALL_K / k (the
    sample kurtosis' O(1/k) bias and its skewed spread at small k). A magnitude-pruned Laplace (or any
    heavier-tailed law) sits tens of standard errors above it once it has a few thousand non-zeros."""
    n = float(s.n)
    p2 = s.m2 + n * s.mean * s.mean  # raw sum of squares: the zeros add nothing
    m2 = p2 / k
    target = m2 / (t * t)  # = (1 + a r(a)) / a^2, decreasing from +inf (a -> 0) to 1 (a -> inf)
    if not target > 1.0:
        return
    a = _truncation_point(target)
    expected = truncated_normal_kurtosis(a)
    t_hi = t * (1 + 2.0 ** -7)
    target_hi = m2 / (t_hi * t_hi)
    lowest = truncated_normal_kurtosis(_truncation_point(target_hi)) if target_hi > 1.0 else -2.0
    tol = PRUNED_SE * truncated_normal_kurtosis_sd(a) / math.sqrt(k) + PRUNED_MARGIN + PRUNED_SMALL_K / k
    if lowest - tol <= kz <= expected + tol and _reaches_normal_tail(s, k, t, t / a):
        r.nonzero_shape = "gaussian"
        r.nonzero_expected_kurtosis = expected


def _reaches_normal_tail(s: Summary, k: int, t: float, sigma: float) -> bool:
    """Deep pruning leaves a narrow band of non-zeros whose kurtosis is near -2 whatever the weights were
    (a pruned uniform: +-U(0.9b, b)). A normal's tail beyond t also reaches far out: the largest of k draws
    sits near x_k, where P(|w| > x_k) = P(|w| > t) / k. The band is taken as a pruned normal only when its
    max|w| gets at least halfway from t to x_k (the max of k draws falls short of that with negligible
    probability for k >= 100; below that the kurtosis test alone decides)."""
    if k < 100 or not sigma > 0:
        return True
    from statistics import NormalDist

    q = 0.5 * math.erfc(t / sigma / math.sqrt(2)) / k  # one-sided tail share of the k-th largest draw
    if not q > 0:
        return True
    x_k = -NormalDist(0.0, sigma).inv_cdf(q)
    return max(abs(s.min), abs(s.max)) >= t + 0.5 * (x_k - t)


def _small_without_outliers(s: Summary, m: Stats, p999: float) -> bool:
    """Does `mostly_small` survive without the outliers? A relative near-zero threshold follows max|w|, so one
    huge value puts every other value "near zero". Recount at the threshold scaled from max|w| down to the
    outlier bound OUTLIER_RATIO x abs_p999 (no non-outlier value exceeds it): the claim must hold there too."""
    t, big = m.get("near_zero_threshold"), _max_abs(m)
    if t is None or not big > 0:
        return True
    scaled = t * min(1.0, OUTLIER_RATIO * p999 / big)
    near = metrics.count_at_most(metrics.abs_bins(s), scaled, s.exact_bins)
    return near >= MOSTLY_SMALL * (m.get("numel") or s.numel)


def _shape_flags(flags: set[str], shp: str, r: Reading, m: Stats) -> None:
    """heavy_tailed, sparse and mostly_small, by the same rules for a tensor and a pooled layer/model."""
    zf = m.get("zero_fraction") or 0.0
    if shp == "heavy_tailed" or r.nonzero_shape == "heavy_tailed":
        flags.add("heavy_tailed")
    if zf >= SPARSE:
        flags.add("sparse")
    nzf = m.get("near_zero_fraction")
    if nzf is not None and nzf >= MOSTLY_SMALL and zf < PARTLY_SPARSE:
        flags.add("mostly_small")


def judge_tensor(name: str, role: str, shape: Sequence[int], s: Summary, m: Stats, keras: bool = False,
                 bias_fan_in: int | None = None) -> Reading:
    grp = group_of(name, role, int(m.get("numel") or 0))
    base = _base_shape(s, m)
    k = m.get("kurtosis")
    shp = base or classify(k, m.get("gini"), m.get("top1pct_l2_mass"))
    r = Reading(shp, [], grp, kurtosis=k)
    flags: set[str] = set()
    if (m.get("nan_count") or 0) + (m.get("inf_count") or 0):
        flags.add("non_finite")
    zf = m.get("zero_fraction") or 0.0
    if s.n >= SHAPE_MIN and zf >= PARTLY_SPARSE and shp != "all_zero":
        _nonzero(s, r)
    if grp == "embedding" and s.n and s.zeros == s.n and roles.is_token_table(param_name(name)):
        # a cls/mask/distillation token or a position table of zeros: how ViT, DeiT, BEiT and others create
        # them, not sparsity and not dead rows
        flags.add("at_init")
        r.init = r.init_detail = "all zero (the usual initial value of a learned token or position table)"
    elif grp in WEIGHTY:
        _shape_flags(flags, shp, r, m)
        p999 = m.get("abs_p999")
        if p999 and s.n >= OUTLIER_MIN and _max_abs(m) >= OUTLIER_RATIO * p999:
            flags.add("outliers")
            if "mostly_small" in flags and not _small_without_outliers(s, m, p999):
                flags.discard("mostly_small")
        hit = None
        if zf < PARTLY_SPARSE and m.get("std"):
            hit = inits.match(tuple(shape), keras, grp, s.n, m.get("mean") or 0.0, m["std"], k, _max_abs(m))
            if hit is not None:
                flags.add("at_init")
                r.init = hit.scheme
                r.init_detail = hit.describe(_max_abs(m) if hit.family == "uniform" else None)
        # one all-zero row of an embedding is its padding_idx row, zero by design (nn.Embedding); so is it in
        # a table read as a weight (its name says nothing of an embedding) that is at nn.Embedding's N(0, 1)
        padding = m.get("dead_units") == 1 and (grp == "embedding" or (hit is not None and hit.scheme == inits.EMBEDDING_DEFAULT))
        if m.get("dead_units") and not padding:
            flags.add("dead_units")
    elif s.n and not flags:
        at_init, what = _non_weight_at_init(grp, name, s, m, bias_fan_in)
        if at_init:
            flags.add("at_init")
            r.init, r.init_detail = what, what
        elif grp == "bias" and bias_fan_in and s.n < BIAS_MIN and _max_abs(m) <= _bias_bound(bias_fan_in):
            r.init_undecided = True
            r.init_detail = (f"{s.n} value{'s' if s.n != 1 else ''}, too few to test an initialisation; within "
                             f"PyTorch's default bias range ±1/√{bias_fan_in}")
    r.flags = [f for f in FLAGS if f in flags]
    return r


def _non_weight_at_init(grp: str, name: str, s: Summary, m: Stats, bias_fan_in: int | None) -> tuple[bool, str]:
    zero = s.zeros == s.n
    ones = s.min == 1.0 and s.max == 1.0
    p = param_name(name)
    if grp in ("bias", "norm_shift") and zero:
        return True, "all zero (the usual initial value)"
    if grp == "norm_scale" and ones:
        return True, "all one (the usual initial value of a norm scale)"
    if grp == "running_stat" and ((p.endswith("mean") and zero) or (p.endswith(("var", "variance")) and ones)):
        return True, "running statistics at their initial values"
    if grp == "bias" and bias_fan_in and s.n >= BIAS_MIN:
        bound = 1.0 / math.sqrt(bias_fan_in)
        mx, std = _max_abs(m), m.get("std") or 0.0
        if 0.5 * bound <= mx <= _bias_bound(bias_fan_in) and 0.7 <= std * math.sqrt(3) / bound <= 1.3:
            return True, f"within PyTorch's default bias range ±1/√{bias_fan_in}"
    return False, ""


def _bias_bound(fan_in: int) -> float:
    """PyTorch's default bias init U(±1/√fan_in), with float rounding room."""
    return (1 + 2.0 ** -7) / math.sqrt(fan_in)


def _majority(members: Sequence[tuple[Reading, int]]) -> str | None:
    weight: dict[str, int] = {}
    total = 0
    for r, n in members:
        if r.shape == "too_small":
            continue
        weight[r.shape] = weight.get(r.shape, 0) + n
        total += n
    if not total:
        return None
    shape, w = max(weight.items(), key=lambda kv: kv[1])
    return shape if 2 * w >= total else None


def judge_pool(members: Sequence[tuple[Reading, int]], shape_members: Sequence[tuple[Reading, int]],
               s: Summary, m: Stats, group: str) -> Reading:
    """A layer's (or the model's) reading. `s`/`m` pool the shape group only (`shape_members`); flags for
    problems (non_finite, outliers, dead_units) are the union over all members; `at_init` needs every member
    at init or too small to judge (_pool_at_init)."""
    k, _ = metrics.standardised(s)
    base = _base_shape(s, m)
    if base is None and shape_members and all(r.shape == "constant" for r, _ in shape_members):
        base = "constant"
    maj = _majority(shape_members)
    if base is not None:
        shp = base
    elif k is not None and k > 5:
        shp = "heavy_tailed"
    elif maj in ("uniform", "gaussian", "laplace", "heavy_tailed"):
        shp = maj
    else:
        shp = kurtosis_band(k)
    r = Reading(shp, [], group, kurtosis=k)
    if shp == "sparse":
        nz = _majority([(Reading(x.nonzero_shape or "too_small", []), n) for x, n in shape_members])
        r.nonzero_shape = nz
        _pooled_gap(r, shape_members, s)
    flags: set[str] = set()
    for x, _ in members:
        flags.update(f for f in x.flags if f in ("non_finite", "outliers", "dead_units"))
    if group in WEIGHTY:
        _shape_flags(flags, shp, r, m)
        if "mostly_small" in flags and not _pool_small_without_outliers(shape_members, m):
            flags.discard("mostly_small")
    if _pool_at_init(members):
        flags.add("at_init")
        inits_seen = list(dict.fromkeys(x.init for x, _ in shape_members if x.init))
        r.init = "; ".join(inits_seen) if inits_seen else None
    r.flags = [f for f in FLAGS if f in flags]
    return r


def _pooled_gap(r: Reading, members: Sequence[tuple[Reading, int]], s: Summary) -> None:
    """A pool's pruning gap: only when every member holding non-zeros has one (members too small to judge,
    under SHAPE_MIN values, count through the pooled values: none of theirs may fall below it). The pool's
    smallest non-zero |w| is then the smallest member gap, a gap of the pooled values. When only some
    members have one, no gap is claimed and `pruning_gap_members` says how many do."""
    judged = [x for x, _ in members if x.shape not in ("all_zero", "too_small")]
    gaps = [x.pruning_gap for x in judged if x.pruning_gap is not None]
    if not gaps:
        return
    if len(gaps) < len(judged):
        r.pruning_gap_members = [len(gaps), len(judged)]
        return
    low = metrics.smallest_nonzero(s)
    if low is not None and low >= min(gaps):
        r.pruning_gap = min(gaps)
    else:  # a member too small to judge has non-zeros below the gap: it counts as one without a gap
        r.pruning_gap_members = [len(gaps), len(judged) + sum(1 for x, _ in members if x.shape == "too_small")]


def _pool_small_without_outliers(members: Sequence[tuple[Reading, int]], m: Stats) -> bool:
    """The pooled `mostly_small` sums each member's near-zero count; a member with `outliers` that is not
    mostly small itself may owe its count to them. The claim must survive with none of those members'
    values counted as near zero."""
    suspect = sum(n for x, n in members if "outliers" in x.flags and "mostly_small" not in x.flags)
    if not suspect:
        return True
    total = m.get("numel") or 0
    return (m.get("near_zero_fraction") or 0.0) * total - suspect >= MOSTLY_SMALL * total


def _pool_at_init(members: Sequence[tuple[Reading, int]]) -> bool:
    """A layer is `at_init` when every member is, except members too small to judge (`init_undecided`: a
    PyTorch bias of < 16 values within ±1/√fan_in), provided the members at init hold at least half of the
    layer's parameters (its weight). An undecided member never makes a layer at init on its own."""
    if not members or not all("at_init" in x.flags or x.init_undecided for x, _ in members):
        return False
    at = sum(n for x, n in members if "at_init" in x.flags)
    return at > 0 and at >= INIT_SHARE * sum(n for _, n in members)


def judge_model(tensors: Sequence[tuple[Reading, int]], shape_reading: Reading, step: tuple[str, int] | None,
                optimizer_tensors: int) -> ModelReading:
    """State: `trained` when a step/epoch > 0 or optimizer state is recorded, or fewer than 10% of the judged
    weight parameters sit at an init signature and fewer than half are uniform-shaped; `initialised` when at
    least half sit at a signature and nothing records training; else `unknown`. Uniform-shaped weights that
    match no known scheme (a custom U(-a, a), a scaled default) are what a fresh uniform init leaves and
    training does not: no evidence of training."""
    # all-zero and constant tensors are neither evidence of training nor a random-init signature (a constant
    # weight is what nn.init.constant_ leaves, or a collapse): they are left out of the share
    judged = [(r, n) for r, n in tensors
              if r.group in WEIGHTY and r.shape not in ("too_small", "all_zero", "constant")]
    total = sum(n for _, n in judged)
    at = sum(n for r, n in judged if "at_init" in r.flags)
    share = at / total if total else None
    uniform = sum(n for r, n in judged if r.shape == "uniform") / total if total else 0.0
    schemes: dict[str, int] = {}
    for r, _ in judged:
        if r.init:
            schemes[r.init] = schemes.get(r.init, 0) + 1
    # most tensors first, then by name: the same weights in another file order read alike
    schemes = dict(sorted(schemes.items(), key=lambda kv: (-kv[1], kv[0])))
    evidence: list[str] = []
    record = False
    if step is not None:
        key, val = step
        evidence.append(f"{key} {val} recorded in the checkpoint")
        record = val > 0
    if optimizer_tensors:
        evidence.append(f"optimizer state recorded ({optimizer_tensors} tensors)")
        record = True
    if share is not None:
        n_at = sum(1 for r, _ in judged if "at_init" in r.flags)
        evidence.append(f"{n_at} of {len(judged)} weight tensors ({100 * share:.0f}% of weight parameters) match an "
                        "initialisation signature" + (": " + ", ".join(schemes) if schemes else ""))
    else:
        evidence.append("no weight tensor large enough (and not constant) to compare with initialisation "
                        "signatures")
    if record:
        state = "trained"
    elif share is not None and share >= INIT_SHARE:
        state = "initialised"
    elif share is not None and share < TRAINED_SHARE and uniform < INIT_SHARE:
        state = "trained"
    else:
        if share is not None and share < TRAINED_SHARE:
            evidence.append(f"{100 * uniform:.0f}% of weight parameters are uniform-shaped, as a fresh uniform "
                            "initialisation leaves them, though no known scheme at their fans")
        state = "unknown"
    if state == "trained" and step is not None and step[1] <= 0:
        # a recorded step of 0 never decided "trained" (optimizer state or the weights did): the deciding
        # evidence comes first, as the summary gives evidence[0] as the reason
        evidence.append(evidence.pop(0))
    flags = set(shape_reading.flags) - {"at_init"}
    for r, _ in tensors:
        flags.update(f for f in r.flags if f in ("non_finite", "outliers", "dead_units"))
    if state == "initialised":
        flags.add("at_init")
    return ModelReading(state, shape_reading.shape, [f for f in FLAGS if f in flags], evidence,
                        shape_reading.kurtosis, share, schemes)


# ---- text, rendered from the verdict: one function per note kind ------------------------------------------

def _pct(x: float) -> str:
    return f"{100 * x:.1f}%" if x < 0.995 or x == 1 else f"{100 * x:.2f}%"


def _g(x: float) -> str:
    return f"{x:.3g}"


def _kurt(r: Reading, pooled: bool) -> str:
    if r.kurtosis is None:
        return ""
    return f"{'standardised ' if pooled else ''}kurtosis {r.kurtosis:.2f}"


def note_non_finite(r: Reading, m: Stats) -> str | None:
    if "non_finite" not in r.flags:
        return None
    return (f"non-finite values: {m.get('nan_count') or 0} NaN and {m.get('inf_count') or 0} Inf; moments are over the "
            f"{m.get('finite_count')} finite values. NaN/Inf in weights usually means training diverged")


def note_degenerate(r: Reading, m: Stats) -> str | None:
    if r.shape == "all_zero":
        if "at_init" in r.flags:
            return f"all zero: {r.group.replace('_', ' ')} at its usual initial value, not sparsity"
        return "all zeros: never trained, pruned away entirely, or zero-initialised"
    if r.shape == "constant":
        if m.get("min") != m.get("max"):  # a pool of constant members at different values
            return (f"constant members: each tensor holds one value ({_g(m['min'])} to {_g(m['max'])}; an "
                    "initialisation that has not moved?)")
        if "at_init" in r.flags:
            return f"every value is {_g(m['mean'])}: {r.group.replace('_', ' ')} at its usual initial value"
        return f"constant: every value is {_g(m['mean'])} (an initialisation that has not moved?)"
    return None


def note_dead_units(r: Reading, m: Stats) -> str | None:
    if "dead_units" not in r.flags:
        return None
    return f"dead units: {m.get('dead_units')} of {m.get('units')} output units are entirely zero"


def _nonzero_text(r: Reading) -> str:
    parts = []
    if r.nonzero_shape and r.nonzero_shape != "too_small":
        k = f" (kurtosis {r.nonzero_kurtosis:.2f})" if r.nonzero_kurtosis is not None else ""
        if r.nonzero_expected_kurtosis is not None:  # a normal with its centre pruned away
            k = (f" (kurtosis {r.nonzero_kurtosis:.2f}, as a normal with |w| < {_g(r.pruning_gap or 0)} removed "
                 f"gives {r.nonzero_expected_kurtosis:.2f})")
        parts.append(f"the non-zeros are {_LABEL[r.nonzero_shape]}{k}")
    if r.pruning_gap is not None:
        parts.append(f"{'with ' if parts else 'the non-zeros have '}nothing below |w| = {_g(r.pruning_gap)}: "
                     "magnitude pruning")
    elif r.pruning_gap_members:
        have, of = r.pruning_gap_members
        if parts:
            parts[-1] += ";"
        parts.append(f"only {have} of {of} tensors show a magnitude-pruning gap (nothing below a |w| of their "
                     "own), so the pool as a whole has none")
    return " ".join(parts)


def note_sparse(r: Reading, m: Stats) -> str | None:
    zf = m.get("zero_fraction") or 0.0
    if r.shape == "sparse" and r.group in WEIGHTY:
        rest = _nonzero_text(r)
        return f"{_pct(zf)} zeros" + (f"; {rest}" if rest else ": genuinely sparse")
    if r.group in WEIGHTY and PARTLY_SPARSE <= zf < SPARSE and r.shape not in ("all_zero", "constant"):
        rest = "" if r.pruning_gap is None else f"; the non-zeros have nothing below |w| = {_g(r.pruning_gap)}: " \
                                                  "magnitude pruning"
        return f"partly sparse: {_pct(zf)} of values are exactly zero{rest}"
    return None


def note_shape(r: Reading, m: Stats, pooled: bool = False) -> str | None:
    if r.group not in WEIGHTY or r.shape not in ("uniform", "gaussian", "laplace", "heavy_tailed"):
        return None
    k = _kurt(r, pooled)
    g = m.get("gini")
    gtxt = f", Gini {g:.3f}" if g is not None and not pooled else ""
    if r.shape == "uniform":
        tail = ("at its initialisation" if "at_init" in r.flags else
                "still at its initialisation shape; a layer that has trained for long rarely stays this flat")
        return f"uniform-like ({k}{gtxt}; a uniform gives -1.2 and 0.333): {tail}"
    if r.shape == "gaussian":
        tail = ("at its initialisation" if "at_init" in r.flags else
                "a normal initialisation or small, diffuse updates")
        return f"Gaussian-like ({k}{gtxt}; a normal gives 0 and 0.414): {tail}"
    if r.shape == "laplace":
        return f"Laplace-like ({k}{gtxt}; a Laplace gives 3 and 0.5): the usual shape of trained weights"
    top = m.get("top1pct_l2_mass")
    toptxt = f"; the top 1% of weights hold {_pct(top)} of sum w^2, a normal ~8.5%" if top is not None and not pooled else ""
    return f"heavy-tailed ({k}{toptxt}): a few large weights carry much of the {'layer' if pooled else 'tensor'}"


def note_init(r: Reading, m: Stats, pooled: bool = False) -> str | None:
    if "at_init" not in r.flags or r.shape in ("all_zero", "constant"):
        return None
    if pooled:
        return f"at initialisation: {r.init}" if r.init else "at initialisation"
    return f"at initialisation: {r.init_detail}" if r.init_detail else None


def note_outliers(r: Reading, m: Stats) -> str | None:
    if "outliers" not in r.flags or not m.get("abs_p999"):
        return None
    big, p999 = _max_abs(m), m["abs_p999"]
    return f"outlier weights: max|w| {_g(big)} is {big / p999:.0f}x the 99.9th percentile of |w| ({_g(p999)})"


def note_mostly_small(r: Reading, m: Stats) -> str | None:
    if "mostly_small" not in r.flags:
        return None
    t = m.get("near_zero_threshold")
    where = f"|w| <= {_g(t)}" if t is not None else "|w| <= the near-zero threshold of each tensor"
    return f"mostly small: {_pct(m.get('near_zero_fraction') or 0.0)} of values have {where} (near zero) but few " \
           "are exactly zero"


def notes(r: Reading, m: Stats, pooled: bool = False) -> list[str]:
    """The text notes, each rendered from the verdict `r` (and the numbers in `m` that justify it)."""
    if (m.get("numel") or 0) == 0:
        # a pool of nothing is not an empty tensor: no selected tensor held floating-point values
        return ["no floating-point values analysed" if pooled else "empty tensor (0 elements)"]
    out = [note_non_finite(r, m), note_degenerate(r, m)]
    if r.shape not in ("all_zero", "constant"):
        out += [note_dead_units(r, m), note_sparse(r, m), note_shape(r, m, pooled), note_init(r, m, pooled),
                note_outliers(r, m), note_mostly_small(r, m)]
    return [n for n in out if n]


def summary_paragraph(v: ModelReading, r: Reading, w: Stats, model: Stats, nz_rel: float | None,
                      layers: Sequence[tuple[str, Reading, Stats]]) -> str:
    """Answers: "most weights are near zero and a few are very large — is that expected?" """
    if not w.get("finite_count"):
        return "No finite floating-point weights were analysed."
    parts: list[str] = []
    p50 = w.get("abs_p50") or 0.0
    big = _max_abs(w)
    nzf = model.get("near_zero_fraction") or 0.0
    th = model.get("near_zero_threshold")
    where = f"|w| <= {_g(th)}" if th is not None else (
        f"|w| <= {_g(nz_rel or 0.01)} x each tensor's own max|w|")
    if p50 > 0:
        parts.append(f"Median |w| of the weights is {_g(p50)} and the largest is {_g(big)} ({big / p50:.0f}x the "
                     f"median); {_pct(nzf)} of analysed values are near zero ({where}).")
    else:
        parts.append(f"At least half the weights are exactly zero; the largest |w| is {_g(big)}; {_pct(nzf)} of "
                     f"analysed values are near zero ({where}).")
    k = v.kurtosis
    ktxt = f"standardised kurtosis {k:.2f}" if k is not None else "kurtosis undefined"
    label = _LABEL.get(v.shape, v.shape.replace("_", " "))
    if v.state == "initialised":
        schemes = ", ".join(v.init_schemes) or "a common initialiser"
        parts.append(f"This checkpoint is at initialisation: {100 * (v.at_init_share or 0):.0f}% of the weight "
                     f"parameters match an initialiser's signature ({schemes}) and nothing records training. "
                     f"The few large weights are the spread of that initialisation (per tensor {label}, {ktxt}), "
                     "not learned structure; different init scales per layer are not a heavy tail.")
    elif v.shape == "sparse":
        zf = w.get("zero_fraction") or 0.0
        rest = _nonzero_text(r)
        parts.append(f"{_pct(zf)} of the weights are exactly zero" + (f"; {rest}." if rest else ".")
                     + " The near-zero mass is the sparsity itself, expected for a pruned or sparse model.")
    elif v.shape in ("heavy_tailed", "laplace"):
        parts.append(f"Most weights near zero with a few large ones is expected for trained weights: standardised per "
                     f"tensor, the weights are {label} ({ktxt}; a normal gives 0, a Laplace 3). Training grows a "
                     "minority of important weights while weight decay and normalisation keep the rest small.")
    elif v.shape == "gaussian":
        parts.append(f"Standardised per tensor the weights are Gaussian-like ({ktxt}): no heavy tail, so the large "
                     "weights are the ordinary edges of a bell-shaped spread, not a few dominant ones"
                     + ("; typical early in training or with strong regularisation." if v.state == "trained" else "."))
    elif v.shape == "uniform":
        parts.append(f"Standardised per tensor the weights are uniform-like ({ktxt}): shaped like a uniform "
                     "initialisation, with no heavy tail.")
    else:
        parts.append(f"Standardised per tensor the weights are {label} ({ktxt}).")
    if v.state == "trained":
        parts.append(f"State: trained ({v.evidence[0]}).")
    elif v.state == "unknown":
        parts.append("Whether it has trained is unclear: " + "; ".join(v.evidence) + ".")
    concerns: list[str] = []
    bad = [n for n, r, _ in layers if "non_finite" in r.flags]
    if bad:
        concerns.append(f"non-finite values in {', '.join(bad)}")
    dead = [(n, m) for n, r, m in layers if "dead_units" in r.flags]
    if dead:
        concerns.append("dead units in " + ", ".join(f"{n} ({m['dead_units']}/{m['units']})" for n, m in dead))
    outl = [n for n, r, _ in layers if "outliers" in r.flags]
    if outl:
        concerns.append("outlier weights in " + ", ".join(outl))
    if concerns:
        parts.append("Worth a look: " + "; ".join(concerns) + ".")
    elif v.state != "initialised":
        parts.append("Nothing here suggests a problem: no NaN/Inf, no dead units, no extreme outliers.")
    return " ".join(parts)
