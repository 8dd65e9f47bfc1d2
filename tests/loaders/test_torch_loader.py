import numpy as np
import pytest
import torch

from wdist.loaders import Format, Role, open_checkpoint
from wdist.loaders.errors import CorruptCheckpointError, UnsafeContentError


def _compare(path, ref: dict) -> None:
    ck = open_checkpoint(str(path))
    names = {t.name: t for t in ck.tensors}
    for k, v in ref.items():
        t = names[k]
        assert t.shape == tuple(v.shape)
        np.testing.assert_array_equal(t.read(), v.float().numpy())


@pytest.mark.parametrize("kind, fmt", [("zip", Format.TORCH_ZIP), ("legacy", Format.TORCH_LEGACY)])
def test_state_dict_both_formats(ckpts, torch_model_sd, kind, fmt):
    ck = open_checkpoint(str(ckpts[kind]))
    assert ck.format is fmt
    assert [t.name for t in ck.tensors] == list(torch_model_sd)
    _compare(ckpts[kind], torch_model_sd)
    roles = {t.name: t.role for t in ck.tensors}
    assert roles["0.weight"] is Role.WEIGHT and roles["0.bias"] is Role.BIAS
    assert roles["1.weight"] is Role.NORM and roles["1.bias"] is Role.NORM
    assert roles["1.running_mean"] is Role.RUNNING_STAT and roles["1.num_batches_tracked"] is Role.RUNNING_STAT
    assert {t.name: t.unit_axis for t in ck.tensors}["0.weight"] == 0


def test_lightning_checkpoint(ckpts, torch_model_sd):
    ck = open_checkpoint(str(ckpts["lightning"]))
    assert ck.metadata["epoch"] == 3 and ck.step() == 120
    model = [t for t in ck.tensors if t.role is not Role.OPTIMIZER_STATE]
    assert [t.name for t in model] == [f"model.{k}" for k in torch_model_sd]
    opt = [t for t in ck.tensors if t.role is Role.OPTIMIZER_STATE]
    assert any(t.name.endswith("exp_avg_sq") for t in opt)


@pytest.mark.parametrize("wrapper", ["state_dict", "model", "model_state_dict", "module", "net"])
def test_wrappers(tmp_path, torch_model_sd, wrapper):
    p = tmp_path / "w.pt"
    torch.save({wrapper: torch_model_sd, "epoch": 7, "optimizer": {"state": {}, "param_groups": []}}, p)
    ck = open_checkpoint(str(p))
    assert [t.name for t in ck.tensors] == list(torch_model_sd)
    assert ck.metadata["epoch"] == 7


def test_dtypes_views_and_tied_weights(tmp_path):
    torch.manual_seed(1)
    emb = torch.nn.Embedding(10, 4)
    base = torch.randn(10)
    d = {"emb.weight": emb.weight, "head.weight": emb.weight, "t": torch.randn(3, 5).t(), "slice": base[2:7],
         "bf": torch.randn(4, 4).bfloat16(), "h": torch.randn(3, 3).half(), "d": torch.randn(5).double(),
         "f8a": torch.randn(8).to(torch.float8_e4m3fn), "f8b": torch.randn(8).to(torch.float8_e5m2)}
    p = tmp_path / "t.pt"
    torch.save(d, p)
    ck = open_checkpoint(str(p))
    by = {t.name: t for t in ck.tensors}
    assert "head.weight" not in by and by["emb.weight"].aliases == ("head.weight",)
    assert by["emb.weight"].role is Role.EMBEDDING
    assert by["bf"].dtype == "bfloat16" and by["f8a"].dtype == "float8_e4m3fn" and by["f8b"].dtype == "float8_e5m2"
    for name, t in by.items():
        np.testing.assert_array_equal(t.read(), d[name].detach().float().numpy(), err_msg=name)


def test_hf_sharded_bin(tmp_path, torch_model_sd):
    import json

    keys = list(torch_model_sd)
    half = len(keys) // 2
    torch.save({k: torch_model_sd[k] for k in keys[:half]}, tmp_path / "pytorch_model-00001-of-00002.bin")
    torch.save({k: torch_model_sd[k] for k in keys[half:]}, tmp_path / "pytorch_model-00002-of-00002.bin")
    wm = {k: f"pytorch_model-0000{1 if i < half else 2}-of-00002.bin" for i, k in enumerate(keys)}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": wm}))
    ck = open_checkpoint(str(tmp_path))
    assert ck.variant == "sharded" and sorted(t.name for t in ck.tensors) == sorted(keys)
    (tmp_path / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(CorruptCheckpointError, match="missing"):
        open_checkpoint(str(tmp_path / "pytorch_model.bin.index.json"))


def test_full_module_pickle_recovers_tensors(tmp_path):
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    p = tmp_path / "full.pt"
    torch.save(m, p)
    ck = open_checkpoint(str(p))
    assert [t.name for t in ck.tensors] == list(m.state_dict())
    assert "torch.nn.modules.linear.Linear" in ck.unsafe_globals
    np.testing.assert_array_equal(ck.tensors[0].read(), m[0].weight.detach().numpy())


def test_chunks_cover_tensor(ckpts, torch_model_sd):
    ck = open_checkpoint(str(ckpts["zip"]))
    t = next(t for t in ck.tensors if t.name == "4.weight")
    got = np.concatenate([c.copy() for _, c in t.chunks(max_elems=100, align=7)])  # chunks reuse a buffer
    np.testing.assert_array_equal(got, torch_model_sd["4.weight"].numpy().ravel())
    starts = [s for s, _ in t.chunks(max_elems=100, align=7)]
    assert all(s % 7 == 0 for s in starts)


@pytest.mark.parametrize("protocol", [2, 4])
def test_numpy_pickle_of_a_large_fortran_array(tmp_path, protocol):
    """A >= 1 MiB array payload is read from the file in place (protocol 4: a strided reader over the
    pickle's bytes, column-major here), a protocol-2 one from memory; both equal the array."""
    import pickle

    a = np.asfortranarray(np.random.default_rng(0).normal(size=(600, 500)).astype(np.float32))
    p = tmp_path / "model.pkl"
    with open(p, "wb") as f:
        pickle.dump({"blobs": {"fc_w": a}}, f, protocol=protocol)
    ck = open_checkpoint(str(p))
    assert ck.variant == "numpy-pickle"
    np.testing.assert_array_equal(ck.tensors[0].read(), a)


def test_a_quantized_tensor_does_not_make_the_file_unreadable(tmp_path):
    """One qint8 tensor made the whole .pt unreadable ("storage of an unknown type"; found by review): its
    storage is known now, its rebuild (scale, zero point) is an object not loaded, and the rest is read."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = torch.quantize_per_tensor(torch.randn(8, 8), 0.1, 0, torch.qint8)
    p = tmp_path / "q.pt"
    torch.save({"q.weight": q, "f.weight": torch.ones(4, 4)}, p)
    with open_checkpoint(str(p)) as ck:
        assert [t.name for t in ck.tensors] == ["f.weight"] and ck.tensors[0].read().sum() == 16
        assert any("_rebuild_qtensor" in w for w in ck.warnings)
    p2 = tmp_path / "q_only.pt"
    torch.save({"q.weight": q}, p2)
    with pytest.raises(UnsafeContentError, match="_rebuild_qtensor"):
        open_checkpoint(str(p2))


@pytest.mark.parametrize("legacy", [False, True])
def test_two_tensors_joined_to_one_name_are_refused_as_in_memory(tmp_path, legacy):
    """{"a.b": x, "a": {"b": y}} names two different tensors "a.b": a report keyed by name would show one
    of them twice. The in-memory walk refuses the same dict (UsageError); the saved file is refused too,
    with the name. A tensor saved under two different names stays one tensor with an alias."""
    from wdist.loaders.errors import UsageError
    from wdist.loaders.memory import from_object

    obj = {"a.b": torch.ones(3), "a": {"b": torch.zeros(3)}}
    p = tmp_path / "dup.pt"
    torch.save(obj, p, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CorruptCheckpointError, match="two tensors are both named 'a.b'"):
        open_checkpoint(str(p))
    with pytest.raises(UsageError, match="both be named 'a.b'"):
        from_object(obj)
    w = torch.ones(4)
    torch.save({"x.w": w, "y": {"w": w}}, p, _use_new_zipfile_serialization=not legacy)
    with open_checkpoint(str(p)) as ck:
        assert [(t.name, t.aliases) for t in ck.tensors] == [("x.w", ("y.w",))]


def test_rnn_biases_are_biases_and_inspect_reads_them(tmp_path):
    """torch.nn.LSTM/GRU/RNN name their biases bias_ih_l0, bias_hh_l1_reverse: they were Role.OTHER, so the
    default inspect (weights, biases, embeddings, norms) left them out without a word."""
    import wdist
    from wdist.loaders import open_checkpoint
    from wdist.loaders.model import Role

    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"lstm": torch.nn.LSTM(6, 8, num_layers=2, bidirectional=True, proj_size=4),
                                 "gru": torch.nn.GRU(5, 7), "rnn": torch.nn.RNN(3, 4)})
    sd = model.state_dict()
    torch.save(sd, tmp_path / "rnn.pt")
    roles = {t.name: t.role for t in open_checkpoint(tmp_path / "rnn.pt").tensors}
    assert set(roles) == set(sd)
    for name, role in roles.items():
        param = name.rsplit(".", 1)[1]
        assert role is (Role.BIAS if param.startswith("bias_") else Role.WEIGHT), name
    rep = wdist.inspect(tmp_path / "rnn.pt").to_dict()
    assert sorted(t["name"] for t in rep["tensors"]) == sorted(sd) and rep["skipped"] == []
    assert rep["model"]["reading"]["state"] == "initialised"  # a fresh model: its biases do not say otherwise
