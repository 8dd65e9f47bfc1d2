"""In-memory inputs: a live nn.Module, a state dict and a dict of arrays give the same numbers as the file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from wdist.analyzers.inspect import Options, analyse
from wdist.loaders import Role, open_checkpoint
from wdist.loaders.errors import UsageError
from wdist.loaders.memory import from_object


class Gpt2Conv1D(torch.nn.Module):
    """The shape of Hugging Face's GPT-2 Conv1D: weight stored [in, out]."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = torch.nn.Parameter(torch.randn(nx, nf))
        self.bias = torch.nn.Parameter(torch.zeros(nf))


Gpt2Conv1D.__name__ = "Conv1D"


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Embedding(50, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 8),
                            torch.nn.BatchNorm1d(8))
    with torch.no_grad():
        m[2].weight[3].zero_()
    return m


def _stats(ck):
    return {t.name: t.stats for t in analyse(ck, Options(jobs=1)).tensors}


def test_module_state_dict_and_arrays_match_the_file(tmp_path):
    m = _model()
    p = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(p))
    ref = _stats(open_checkpoint(str(p)))
    for obj in (m, m.state_dict(), {k: v.numpy() for k, v in m.state_dict().items()}):
        got = _stats(from_object(obj))
        assert got.keys() == ref.keys()
        for name in ref:
            assert got[name] == ref[name], name


def test_module_classes_give_roles_and_unit_axes():
    m = torch.nn.ModuleDict({"emb": torch.nn.Embedding(10, 4), "ln": torch.nn.LayerNorm(4),
                             "proj": Gpt2Conv1D(12, 4)})
    ck = from_object(m)
    by = {t.name: t for t in ck.tensors}
    assert by["emb.weight"].role is Role.EMBEDDING
    assert by["ln.weight"].role is Role.NORM and by["ln.bias"].role is Role.NORM
    assert by["proj.weight"].role is Role.WEIGHT and by["proj.weight"].unit_axis == 1


def test_bf16_and_tied_weights():
    lin = torch.nn.Linear(8, 8).to(torch.bfloat16)
    sd = {"a.weight": lin.weight, "b.weight": lin.weight}  # the same tensor twice: tied
    ck = from_object(sd)
    assert len(ck.tensors) == 1 and ck.tensors[0].aliases == ("b.weight",)
    np.testing.assert_array_equal(ck.tensors[0].read(), lin.weight.detach().float().numpy())


def test_in_memory_work_stays_in_process():
    # a large in-memory tensor with jobs=2 must not be pickled into worker processes
    sd = {"w.weight": torch.randn(4096, 2048)}
    rep = analyse(from_object(sd), Options(jobs=2))
    assert rep.tensors[0].stats["numel"] == 4096 * 2048


def test_unsupported_objects_are_a_usage_error():
    with pytest.raises(UsageError):
        from_object(42)
    with pytest.raises(UsageError, match="holds no torch tensor or NumPy array"):
        from_object({"a": 1, "b": "text"})


def test_torch_tensors_and_numpy_arrays_together_are_both_read():
    ck = from_object({"a.weight": torch.ones(2, 3), "b.weight": np.zeros((2, 3), np.float32)})
    assert [t.name for t in ck.tensors] == ["a.weight", "b.weight"] and ck.variant == "state-dict"
    rep = analyse(ck, Options(jobs=1))
    assert [t.stats["mean"] for t in rep.tensors] == [1.0, 0.0]


def _training_checkpoint():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(5, 8)).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3,
            "extra": {"ema": [torch.randn(4, 4), {"scale": torch.ones(3)}]}, "note": "run 7"}


def test_training_checkpoint_dict_in_memory_reads_as_the_same_dict_saved(tmp_path):
    """A nested checkpoint dict (model, optimizer, scalars, a list inside a dict) was a UsageError in memory
    while torch.save of the same dict was read: now both give the same tensors, names, roles, metadata and
    numbers."""
    ckpt = _training_checkpoint()
    path = tmp_path / "ckpt.pt"
    torch.save(ckpt, path)
    mem, disk = from_object(ckpt), open_checkpoint(str(path))
    assert [(t.name, t.role, t.shape, t.dtype) for t in mem.tensors] == \
        [(t.name, t.role, t.shape, t.dtype) for t in disk.tensors]
    names = [t.name for t in mem.tensors]
    assert "0.weight" in names and "extra.ema.0" in names and "extra.ema.1.scale" in names
    assert {t.role for t in mem.tensors if t.name.startswith("optimizer.")} == {Role.OPTIMIZER_STATE}
    assert mem.metadata["epoch"] == disk.metadata["epoch"] == 3 and mem.step() == disk.step()
    a, b = analyse(mem, Options(jobs=1, roles=tuple(Role))), analyse(disk, Options(jobs=1, roles=tuple(Role)))
    assert [(t.name, t.stats) for t in a.tensors] == [(t.name, t.stats) for t in b.tensors]


def test_nested_mapping_walk_is_bounded_and_visits_each_container_once():
    loop: dict = {"w.weight": torch.ones(2, 2)}
    loop["self"] = loop  # a cycle: visited once, no hang
    assert [t.name for t in from_object(loop).tensors] == ["w.weight"]
    deep: dict = {"x": torch.ones(1)}
    for _ in range(1100):
        deep = {"d": deep}
    with pytest.raises(UsageError, match="nests deeper"):
        from_object(deep)
    with pytest.raises(UsageError, match="both be named"):
        from_object({"a": {"b": torch.ones(1)}, "a.b": torch.ones(1)})


# ---- odd but real torch objects (sixth review) -------------------------------------------------------------

def test_tensors_of_dtypes_or_layouts_not_analysed_are_listed_never_dropped():
    """complex, unsigned 16/32-bit, quantized and sparse tensors were silently left out of in-memory inputs
    (a check gate then passed with a NaN in a complex tensor unseen); now listed, not analysed, and warned."""
    import warnings

    import wdist

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = torch.quantize_per_tensor(torch.randn(8, 8), 0.1, 0, torch.qint8)
    sd = {"f.weight": torch.randn(8, 8), "c.weight": torch.randn(4, 4, dtype=torch.complex64),
          "u.weight": torch.zeros(4, 4, dtype=torch.uint16), "q.weight": q, "s.weight": torch.randn(8, 8).to_sparse()}
    ck = from_object(sd)
    assert [t.name for t in ck.tensors] == list(sd)
    assert [t.name for t in ck.tensors if t.reader is not None] == ["f.weight"]
    assert "4 tensor(s)" in ck.warnings[0] and "q.weight" in ck.warnings[0]
    rep = wdist.inspect(sd, roles="all")
    assert sorted(rep.skipped) == ["c.weight", "q.weight", "s.weight", "u.weight"]
    res = wdist.check(sd, rules=["model: nan_count == 0"])
    assert res.checkpoints[0].path == "<dict>" and res.checkpoints[0].warnings  # a short label, and the warning


@pytest.mark.parametrize("make", [lambda: torch.randn(300, 700).t(), lambda: torch.randn(1, 5000).expand(3000, 5000),
                                  lambda: torch.randn(40, 50, 60).permute(2, 0, 1), lambda: torch.randn(64, 64)[::3, 1::2],
                                  lambda: torch._neg_view(torch.randn(50, 40))])
def test_views_are_read_chunk_by_chunk_with_the_right_values(make):
    """A non-contiguous tensor was copied whole for every chunk (a transposed 8192^2: 12.4 s, expand of a
    64 KB storage to 1 GB: 108 s and 2.3 GB); now each chunk copies only its rows. A negative view was
    refused."""
    t = make()
    ck = from_object({"x.weight": t})
    ref = ck.tensors[0]
    ref_np = t.resolve_neg().contiguous().numpy().ravel()
    got = np.concatenate([c.copy() for _, c in ref.chunks(max_elems=997)])
    np.testing.assert_array_equal(got, ref_np)


def test_zero_size_tensors_are_tied_as_torch_save_ties_them(tmp_path):
    """Two zero-size tensors of their own storages are two tensors; one zero-size tensor under two names
    is one storage in torch.save's file, so one tensor with an alias in memory too (it was two)."""
    ck = from_object({"b.weight": torch.zeros(0, 4), "c.weight": torch.zeros(0, 4)})
    assert [t.name for t in ck.tensors] == ["b.weight", "c.weight"] and all(not t.aliases for t in ck.tensors)
    z = torch.zeros(0, 4)
    for obj in ({"b.weight": torch.zeros(0, 4), "c.weight": torch.zeros(0, 4)},
                {"b.weight": z, "c.weight": z, "d.weight": torch.zeros(0, 4)}):
        _same_as_saved(obj, tmp_path)
    assert [(t.name, t.aliases) for t in from_object({"b.weight": z, "c.weight": z}).tensors] == [
        ("b.weight", ("c.weight",))]


def _same_as_saved(obj, tmp_path):
    path = tmp_path / "saved.pt"
    torch.save(obj, path)
    mem, disk = from_object(obj), open_checkpoint(str(path))
    key = [(t.name, t.role, t.shape, t.dtype, t.aliases) for t in mem.tensors]
    assert key == [(t.name, t.role, t.shape, t.dtype, t.aliases) for t in disk.tensors]
    a, b = analyse(mem, Options(jobs=1, roles=tuple(Role))), analyse(disk, Options(jobs=1, roles=tuple(Role)))
    assert [(t.name, t.stats) for t in a.tensors] == [(t.name, t.stats) for t in b.tensors]
    return mem


def test_live_module_inside_a_checkpoint_dict_is_read_not_dropped(tmp_path):
    """{"model": nn.Module, "optimizer": ...} lost the whole model in memory (only a Mapping counted as the
    model entry) and read Adam's moments as weights; now the module's state_dict is the model entry, as in
    the saved file; ModuleDict and ParameterList values nested deeper are read too."""
    torch.manual_seed(1)
    m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    opt = torch.optim.Adam(m.parameters())
    m(torch.randn(2, 4)).sum().backward()
    opt.step()
    ck = _same_as_saved({"model": m, "optimizer": opt.state_dict(), "epoch": 1}, tmp_path)
    assert [t.name for t in ck.tensors][:4] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert {t.role for t in ck.tensors if t.name.startswith("optimizer.")} == {Role.OPTIMIZER_STATE}
    nested = {"heads": torch.nn.ModuleDict({"cls": torch.nn.Linear(3, 2)}),
              "extra": {"p": torch.nn.ParameterList([torch.nn.Parameter(torch.randn(5))])}}
    names = [t.name for t in _same_as_saved(nested, tmp_path).tensors]
    assert names == ["heads.cls.weight", "heads.cls.bias", "extra.p.0"]


def test_numpy_array_saved_inside_a_torch_checkpoint_is_read(tmp_path):
    """torch.save pickles a NumPy array value inertly readable; the zip loader walked torch tensors only and
    dropped it silently. Now it is read (its bytes from the pickle), as the same dict in memory is."""
    d = {"a.weight": torch.ones(2, 3), "b.weight": np.arange(6, dtype=np.float32).reshape(2, 3)}
    ck = _same_as_saved(d, tmp_path)
    assert [t.name for t in ck.tensors] == ["a.weight", "b.weight"]
    rep = analyse(open_checkpoint(str(tmp_path / "saved.pt")), Options(jobs=1))
    assert rep.tensors[1].stats["max"] == 5.0 and rep.tensors[1].stats["mean"] == 2.5


def test_only_what_pickles_as_a_scalar_is_metadata_and_storages_are_skipped():
    ck = from_object({"w.weight": torch.ones(2, 2), "epoch": np.int64(3), "lr": np.float64(1e-3), "step": 7,
                      "raw": torch.ones(3).untyped_storage(), "history": [0.5] * 10_000})
    assert ck.metadata == {"step": 7} and [t.name for t in ck.tensors] == ["w.weight"]
