import pytest

from wdist.analyzers import engine
from wdist.analyzers.inspect import Options, analyse
from wdist.loaders import Role, open_checkpoint
from wdist.loaders.errors import UsageError


def test_layers_pool_their_tensors(ckpts, torch_model_sd):
    import numpy as np

    rep = analyse(open_checkpoint(str(ckpts["zip"])), Options(jobs=1))
    layer = next(lr for lr in rep.layers if lr.name == "0")
    pooled = np.concatenate([torch_model_sd["0.weight"].numpy().ravel(), torch_model_sd["0.bias"].numpy().ravel()])
    assert layer.stats["std"] == pytest.approx(pooled.astype(np.float64).std(), rel=1e-6)
    assert layer.parameters == pooled.size and layer.stats["dead_units"] == 1
    assert rep.model.stats["numel"] == sum(t.numel for t in rep.tensors)
    assert set(rep.model.by_role) == {"weight", "bias", "norm"}
    assert any("dead units" in n for n in rep.tensors[0].notes)


def test_roles_and_globs(ckpts):
    ck = open_checkpoint(str(ckpts["lightning"]))
    rep = analyse(ck, Options(roles=tuple(Role), jobs=1))
    assert any(t.role == "optimizer_state" for t in rep.tensors)
    assert "model.1.num_batches_tracked" in rep.skipped
    rep = analyse(ck, Options(layers=("model.4",), jobs=1))
    assert {t.layer for t in rep.tensors} == {"model.4"}
    with pytest.raises(UsageError, match="matches no tensor"):
        analyse(ck, Options(layers=("nope*",), jobs=1))


def test_parallel_results_identical(ckpts, monkeypatch):
    ck = open_checkpoint(str(ckpts["st"]))
    one = analyse(ck, Options(jobs=1))
    monkeypatch.setattr(engine, "PARALLEL_MIN_BYTES", 0)
    two = analyse(ck, Options(jobs=2))
    assert [t.stats for t in one.tensors] == [t.stats for t in two.tensors]
    assert one.model.stats == two.model.stats


def test_bf16_checkpoint_matches_float32_source_closely(ckpts):
    a = analyse(open_checkpoint(str(ckpts["st"])), Options(jobs=1))
    b = analyse(open_checkpoint(str(ckpts["st_bf16"])), Options(jobs=1))
    for ta, tb in zip(a.tensors, b.tensors):
        assert ta.name == tb.name and tb.dtype == "bfloat16"
        if ta.stats["std"]:
            assert tb.stats["std"] == pytest.approx(ta.stats["std"], rel=1e-2)


def test_a_layers_numbers_do_not_depend_on_the_files_tensor_order(tmp_path):
    """safetensors stores bias before weight, a torch file weight before bias: a Linear layer's pooled mean
    differed in its last bits (-0.0005577477908371118 vs ...101) between the two files of the same weights."""
    import json

    import torch
    from safetensors.torch import save_file

    import wdist

    torch.manual_seed(0)
    sd = torch.nn.Sequential(torch.nn.Linear(72, 10), torch.nn.BatchNorm1d(10)).state_dict()
    torch.save(sd, tmp_path / "m.pt")
    save_file({k: v for k, v in sd.items() if v.is_floating_point()}, str(tmp_path / "m.safetensors"))
    a = {lr["name"]: lr["stats"] for lr in wdist.inspect(tmp_path / "m.pt").to_dict()["layers"]}
    b = {lr["name"]: lr["stats"] for lr in wdist.inspect(tmp_path / "m.safetensors").to_dict()["layers"]}
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
