import pytest

from wdist.analyzers.check import OPS, evaluate, find_config, load_config, parse_rule
from wdist.analyzers.inspect import Options, analyse
from wdist.loaders import open_checkpoint
from wdist.loaders.errors import UsageError


@pytest.mark.parametrize("op", list(OPS))
def test_every_operator(op):
    r = parse_rule(f"*.weight: zero_fraction {op} 0.5")
    assert (r.scope, r.metric, r.op, r.value) == ("*.weight", "zero_fraction", op, 0.5)
    assert OPS[op](0.5, 0.5) == (op in ("<=", ">=", "=="))


@pytest.mark.parametrize("text, match", [
    ("*.weight zero_fraction >= 0.5", "cannot parse"), ("*: zero_frac >= 0.5", "unknown metric"),
    ("*: zero_fraction => 0.5", "cannot parse"), ("*: kurtosis < ten", "not a number"),
    ("[abc: kurtosis < 1", "malformed glob"), ("*: rel_l2_change < 0.1", "baseline"),
    ("model: max_abs_change <= 0", "no model-wide value"), ("model: ks < 0.1", "no model-wide value"),
])
def test_invalid_rules(text, match):
    with pytest.raises(UsageError, match=match):
        parse_rule(text)


def test_scopes_and_empty_globs(ckpts):
    rep = analyse(open_checkpoint(str(ckpts["zip"])), Options(jobs=1))
    rules = [parse_rule(t) for t in ("model: nan_count == 0", "0.*: dead_units == 0", "nothing*: std > 0",
                                     "*.weight: zero_fraction < 0.5")]
    res = {r.rule: r for r in evaluate(rules, rep, None, allow_empty=False)}
    assert res["model: nan_count == 0"].verdict == "pass"
    assert res["0.*: dead_units == 0"].verdict == "fail"
    assert [o.name for o in res["0.*: dead_units == 0"].failures] == ["0.weight"]
    assert res["nothing*: std > 0"].verdict == "error"
    assert res["*.weight: zero_fraction < 0.5"].verdict == "pass"
    res2 = evaluate([rules[2]], rep, None, allow_empty=True)
    assert res2[0].verdict == "pass"


def test_config_discovery_and_validation(tmp_path, monkeypatch):
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    (tmp_path / "pyproject.toml").write_text('[tool.wdist]\nrules = [\n  "*: nan_count == 0",\n  "model: std > 0",\n]\n')
    assert find_config(str(sub)) == str(tmp_path / "pyproject.toml")
    cfg = load_config(find_config(str(sub)))
    assert cfg.rules == ["*: nan_count == 0", "model: std > 0"] and cfg.origin("model: std > 0").endswith(":4")
    (sub / "wdist.toml").write_text('rules = ["*: zero_fracton >= 0.1"]\n')
    cfg = load_config(find_config(str(sub)))
    with pytest.raises(UsageError, match=r"wdist.toml:1: unknown metric 'zero_fracton'.*valid metrics"):
        parse_rule(cfg.rules[0], cfg.origin(cfg.rules[0]))
    (sub / "wdist.toml").write_text('rulez = []\n')
    with pytest.raises(UsageError, match="unknown key"):
        load_config(str(sub / "wdist.toml"))
    (sub / "wdist.toml").write_text('roles = ["weights"]\n')
    with pytest.raises(UsageError, match="unknown role"):
        load_config(str(sub / "wdist.toml"))
    (sub / "wdist.toml").write_text('rules = [\n')
    with pytest.raises(UsageError, match="not valid TOML"):
        load_config(str(sub / "wdist.toml"))


def test_failures_are_ordered_worst_first(tmp_path):
    import torch

    torch.save({"a.weight": torch.zeros(4, 4), "b.weight": torch.ones(4, 4),
                "c.weight": torch.tensor([[0.0, 1.0], [1.0, 1.0]])}, tmp_path / "m.pt")
    from wdist.analyzers.check import evaluate
    from wdist.analyzers.inspect import Options, analyse

    rep = analyse(open_checkpoint(str(tmp_path / "m.pt")), Options(jobs=1))
    (lower,) = evaluate([parse_rule("*: zero_fraction >= 0.9")], rep, None, False)
    assert [o.name for o in lower.failures] == ["b.weight", "c.weight"]  # 0.0 misses by more than 0.25
    (upper,) = evaluate([parse_rule("*: zero_fraction <= 0.1")], rep, None, False)
    assert [o.name for o in upper.failures] == ["a.weight", "c.weight"]


# --- gate bypasses found by the 2026-12-03 review ----------------------------------------------------


def test_a_rule_with_nothing_defined_to_check_is_an_error_not_a_pass(tmp_path):
    import torch

    from wdist import check as run_check

    p = tmp_path / "allnan.pt"
    torch.save({"a.weight": torch.full((8, 8), float("nan")), "b.weight": torch.full((8, 8), float("inf"))}, p)
    for rule in ("model: max <= 1", "*.weight: std <= 0.1", "*.weight: kurtosis < 5", "model: std <= 0.1"):
        rep = run_check(str(p), [rule], config=False)
        rr = rep.checkpoints[0].rules[0]
        assert rr.verdict == "error" and "nothing to check" in rr.message, (rule, rr)
        assert rep.exit_code == 2
    # a rule on a defined metric of the same file still evaluates: nan_count is a number
    assert run_check(str(p), ["model: nan_count == 0"], config=False).exit_code == 1


def test_drift_gates_fail_on_tensors_without_a_baseline_pair(tmp_path):
    import torch

    from wdist import check as run_check

    torch.manual_seed(0)
    sd = {"0.weight": torch.randn(8, 4), "0.bias": torch.randn(8), "2.weight": torch.randn(2, 8)}
    torch.save(sd, tmp_path / "default.pt")
    torch.save({f"renamed.{k}": v for k, v in sd.items()}, tmp_path / "renamed.pt")
    torch.save({**sd, "2.weight": torch.randn(4, 8)}, tmp_path / "reshaped.pt")
    rule = ["*: rel_l2_change <= 0.05"]
    # the renamed baseline: no tensor pairs (canonical names differ): every one fails, none passes
    rep = run_check(str(tmp_path / "default.pt"), rule, config=False, baseline=str(tmp_path / "renamed.pt"))
    rr = rep.checkpoints[0].rules[0]
    assert rr.verdict == "fail" and {o.name for o in rr.failures} >= set(sd), rr
    rep = run_check(str(tmp_path / "reshaped.pt"), rule, config=False, baseline=str(tmp_path / "default.pt"))
    rr = rep.checkpoints[0].rules[0]
    assert rr.verdict == "fail" and [(o.name, o.value) for o in rr.failures] == [("2.weight", "shape changed")]
    # unchanged against itself: passes
    rep = run_check(str(tmp_path / "default.pt"), rule, config=False, baseline=str(tmp_path / "default.pt"))
    assert rep.exit_code == 0


def test_delta_rules_gate_on_b_minus_a(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    from wdist import check as run_check

    rng = np.random.default_rng(0)
    a = rng.normal(0, 0.1, (16, 16)).astype(np.float32)
    save_file({"fc.weight": a}, str(tmp_path / "a.safetensors"))
    save_file({"fc.weight": a * 3}, str(tmp_path / "b.safetensors"))
    std_a = float(a.std())
    kw = dict(config=False, baseline=str(tmp_path / "a.safetensors"))
    rep = run_check(str(tmp_path / "b.safetensors"), ["*: delta.std <= 0.05"], **kw)
    rr = rep.checkpoints[0].rules[0]
    assert rr.verdict == "fail" and rr.failures[0].value == pytest.approx(2 * std_a, rel=1e-5)
    assert run_check(str(tmp_path / "b.safetensors"), [f"*: delta.std <= {3 * std_a}"], **kw).exit_code == 0
    with pytest.raises(UsageError, match="per tensor"):
        run_check(str(tmp_path / "b.safetensors"), ["model: delta.std <= 1"], **kw)
    with pytest.raises(UsageError, match="baseline"):
        run_check(str(tmp_path / "b.safetensors"), ["*: delta.std <= 1"], config=False)
    with pytest.raises(UsageError, match="unknown metric"):
        run_check(str(tmp_path / "b.safetensors"), ["*: delta.stdd <= 1"], **kw)


@pytest.mark.parametrize("raw", ["0_5", "\uff10.5", "nan", "NaN", "1e", "0x10", "1.5.2"])
def test_a_rule_value_is_a_plain_number(raw):
    with pytest.raises(UsageError, match="is not a number"):
        parse_rule(f"*: std <= {raw}")
    assert parse_rule("*: std <= 5e-3").value == 0.005 and parse_rule("*: max < inf").value == float("inf")
    assert parse_rule("*: mean >= -.5").value == -0.5


@pytest.mark.parametrize("value", ["true", "false", "nan", "inf"])
def test_config_thresholds_must_be_real_numbers(tmp_path, value):
    p = tmp_path / "wdist.toml"
    p.write_text(f'rules = ["model: near_zero_fraction <= 0.5"]\nnear_zero_rel = {value}\n')
    with pytest.raises(UsageError, match="near_zero_rel must be a number"):
        load_config(str(p))


def test_a_float64_value_beyond_float32s_range_cannot_pass_a_rule_it_would_fail(tmp_path):
    """float64 values past +-3.4e38 are analysed as +-3.4e38: `max <= 1e39` passed a tensor holding 1e300."""
    import json as _json

    import numpy as np
    from cli_helpers import run as _run
    from safetensors.numpy import save_file as _save

    w = np.linspace(-1, 1, 64)
    w[3] = 1e300
    p = tmp_path / "f64.safetensors"
    _save({"fc.weight": w.astype(np.float64), "ok.weight": np.linspace(-1, 1, 64)}, str(p))
    cases = {"fc.weight: max <= 1e39": "fail", "fc.weight: max <= 100": "fail", "fc.weight: max > 0": "pass",
             "fc.weight: mean < 1e39": "fail", "fc.weight: l2_norm < 1e39": "fail", "fc.weight: l2_norm > 1": "pass",
             "fc.weight: nan_count == 0": "pass", "model: max <= 1e39": "fail", "ok.weight: max <= 1e39": "pass",
             "ok.weight: mean < 1e39": "pass"}
    for rule, want in cases.items():
        r = _run("check", p, "--no-config", "--no-cache", "--rule", rule, "--format", "json")
        res = _json.loads(r.output)["checkpoints"][0]["rules"][0]
        assert res["verdict"] == want, (rule, res)
        if rule in ("fc.weight: max <= 1e39", "fc.weight: mean < 1e39", "model: max <= 1e39"):
            assert "beyond float32's range" in str(res["failures"][0]["value"]), res
    assert _run("check", p, "--no-config", "--no-cache", "--rule", "fc.weight: max <= 1e39").exit_code == 1


def test_a_failing_verdict_rule_prints_its_word(tmp_path):
    """Words (a state, a flag list) go through the number formatting of the text report too."""
    import torch
    from cli_helpers import run as _run

    p = tmp_path / "m.pt"
    torch.save({"fc.weight": torch.nn.Linear(64, 64).weight.detach()}, p)
    r = _run("check", p, "--no-config", "--no-cache", "--rule", "model: state == trained")
    assert r.exit_code == 1, r.output
    assert "model: state = " in r.output


def test_saturated_values_in_change_rules_tiny_values_and_percentiles(tmp_path):
    """Review of the saturation rule: change rules passed on 1e300 -> 1e301 (both analysed as 3.4e38),
    values of 1e-300 (analysed as 1.4e-45) passed `max >= 1e-50`, and a median of 0.7 was 'undecided'."""
    import json as _json

    import numpy as np
    from cli_helpers import run as _run
    from safetensors.numpy import save_file as _save

    base = np.linspace(-1, 1, 1000)
    a, b = base.copy(), base.copy()
    a[5], b[5] = 1e300, 1e301
    _save({"fc.weight": a}, str(tmp_path / "a.safetensors"))
    _save({"fc.weight": b}, str(tmp_path / "b.safetensors"))
    _save({"fc.weight": np.full(16, 1e-300)}, str(tmp_path / "tiny.safetensors"))

    def verdicts(path, *rules, baseline=None):
        args = ["check", path, "--no-config", "--no-cache", "--format", "json"]
        args += ["--baseline", baseline] if baseline else []
        for r in rules:
            args += ["--rule", r]
        return [x["verdict"] for x in _json.loads(_run(*args).output)["checkpoints"][0]["rules"]]

    assert verdicts(tmp_path / "b.safetensors", "fc.weight: delta.max == 0", "fc.weight: max_abs_change == 0",
                    "model: rel_l2_change <= 0.01", "fc.weight: changed_fraction == 0",
                    "fc.weight: delta.nan_count == 0", "fc.weight: sign_flip_fraction == 0",
                    baseline=tmp_path / "a.safetensors") == ["fail", "fail", "fail", "fail", "pass", "pass"]
    assert verdicts(tmp_path / "tiny.safetensors", "fc.weight: max >= 1e-50", "fc.weight: abs_mean >= 1e-50",
                    "fc.weight: max <= 1", "fc.weight: zero_fraction == 0") == ["fail", "fail", "pass", "pass"]
    assert verdicts(tmp_path / "a.safetensors", "fc.weight: abs_p50 <= 10", "fc.weight: abs_p90 < 5",
                    "fc.weight: abs_p999 <= 1e39") == ["pass", "pass", "pass"]


def test_an_infinite_rule_value_is_the_word_in_json(tmp_path):
    import json as _json

    import torch
    from cli_helpers import run as _run

    p = tmp_path / "m.pt"
    torch.save({"fc.weight": torch.ones(4, 4)}, p)
    r = _run("check", p, "--no-config", "--no-cache", "--format", "json", "--rule", "model: max < inf",
             "--rule", "model: min > -inf")
    assert [x["value"] for x in _json.loads(r.output)["checkpoints"][0]["rules"]] == ["inf", "-inf"]
