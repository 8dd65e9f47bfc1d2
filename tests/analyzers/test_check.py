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
