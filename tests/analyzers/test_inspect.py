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


def _lstm_and_linears(seed: int) -> dict:
    import torch

    torch.manual_seed(seed)
    sd = {f"lstm.{k}": v.contiguous() for k, v in torch.nn.LSTM(7, 13, num_layers=2).state_dict().items()}
    sd.update({f"fc{i}.weight": torch.randn(5, 3) * (i + 1) for i in range(5)})
    sd.update({f"fc{i}.bias": torch.randn(5) * (i + 1) for i in range(5)})
    return sd


def test_every_pooled_number_is_independent_of_the_files_tensor_order(tmp_path):
    """Several tensors of one group in a layer (an LSTM's weight_ih/weight_hh) and the model's group and role
    pools merged in file order: torch.save and safetensors (dtype, then name order) of the same weights gave
    an LSTM layer mean of -0.00033376663714231893 vs ...936 and a different pooled weight-group mean.
    Tensors and layers are still listed in the file's order."""
    import json

    import torch
    from safetensors.torch import save_file

    import wdist
    from wdist.loaders import open_checkpoint

    sd = _lstm_and_linears(0)
    torch.save(sd, tmp_path / "m.pt")
    save_file(sd, str(tmp_path / "m.safetensors"))
    a, b = (wdist.inspect(tmp_path / f"m.{ext}").to_dict() for ext in ("pt", "safetensors"))
    for key in ("tensors", "layers"):
        sa = {r["name"]: r["stats"] for r in a[key]}
        sb = {r["name"]: r["stats"] for r in b[key]}
        assert json.dumps(sa, sort_keys=True) == json.dumps(sb, sort_keys=True)
    assert json.dumps(a["model"], sort_keys=True) == json.dumps(b["model"], sort_keys=True)
    assert [t["name"] for t in a["tensors"]] == list(sd)  # the file's order
    assert [t["name"] for t in b["tensors"]] == [t.name for t in open_checkpoint(tmp_path / "m.safetensors").tensors]
    assert [lr["name"] for lr in a["layers"]] == list(dict.fromkeys(t["layer"] for t in a["tensors"]))


def test_diff_numbers_are_independent_of_the_files_tensor_order(tmp_path):
    import json

    import torch
    from safetensors.torch import save_file

    import wdist

    for tag, seed in (("a", 0), ("b", 1)):
        sd = _lstm_and_linears(seed)
        torch.save(sd, tmp_path / f"{tag}.pt")
        save_file(sd, str(tmp_path / f"{tag}.safetensors"))
    pt = wdist.diff(tmp_path / "a.pt", tmp_path / "b.pt").to_dict()
    st = wdist.diff(tmp_path / "a.safetensors", tmp_path / "b.safetensors").to_dict()
    assert json.dumps(pt["summary"], sort_keys=True) == json.dumps(st["summary"], sort_keys=True)
    la = {lr["name"]: lr for lr in pt["layers"]}
    lb = {lr["name"]: lr for lr in st["layers"]}
    assert json.dumps(la, sort_keys=True) == json.dumps(lb, sort_keys=True)
    assert [lr["name"] for lr in pt["layers"]] == list(dict.fromkeys(r["layer"] for r in pt["tensors"]))
