"""The reading on real torch modules whose parameters are named outside the usual `weight`/`bias` pattern
(an architecture review, 2026-12-04): RNN cells, ViT/DeiT/Swin-style tokens and tables, conv kernels
under embedding names, embeddings under other names, GPT-2 cross-attention. Each model is built fresh
(its truth: at initialisation) and, where a rule could overreach, a counterpart whose truth is the other
way (a dead row in a Linear layer, an all-zero word-embedding table)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import wdist  # noqa: E402
from wdist.loaders import open_checkpoint  # noqa: E402
from wdist.loaders.model import Role  # noqa: E402


def _save(tmp_path, module_or_sd, name="m.pt"):
    sd = module_or_sd.state_dict() if isinstance(module_or_sd, torch.nn.Module) else module_or_sd
    path = tmp_path / name
    torch.save(sd, path)
    return path


def _readings(path):
    rep = wdist.inspect(path).to_dict()
    return rep, {t["name"]: t for t in rep["tensors"]}


def _roles(path):
    return {t.name: t for t in open_checkpoint(path).tensors}


class _Vit(torch.nn.Module):
    """The parameters of a small ViT/DeiT/BEiT/Swin block as their libraries create them (zeros where
    timm/Hugging Face start from zeros)."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = torch.nn.Conv2d(3, 64, 4, 4)
        self.pos_conv_embed = torch.nn.Conv1d(64, 64, 16, groups=4)
        self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, 64))
        self.dist_token = torch.nn.Parameter(torch.zeros(1, 1, 64))
        self.mask_token = torch.nn.Parameter(torch.zeros(1, 1, 64))
        self.pos_embed = torch.nn.Parameter(torch.zeros(1, 197, 64))
        self.relative_position_bias_table = torch.nn.Parameter(torch.zeros(169, 4))
        self.class_embedding = torch.nn.Parameter(torch.randn(64) * 64 ** -0.5)
        self.qkv = torch.nn.Linear(64, 192)
        self.head = torch.nn.Linear(64, 10)


def test_rnn_cells_biases_are_biases_judged_at_the_hidden_size(tmp_path):
    """LSTMCell/GRUCell/RNNCell name their biases bias_ih / bias_hh (no _l0): they were 'other' and left
    out. RNN biases are U(±1/√hidden): judged against weight_ih's input size (16), a fresh LSTM's biases
    never matched their initialiser, so the layer did not read as at initialisation."""
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"lstm_cell": torch.nn.LSTMCell(16, 48), "gru_cell": torch.nn.GRUCell(16, 40),
                                 "rnn_cell": torch.nn.RNNCell(16, 64), "lstm": torch.nn.LSTM(16, 48),
                                 "proj": torch.nn.LSTM(16, 64, proj_size=8)})
    path = _save(tmp_path, model)
    refs = _roles(path)
    assert {n for n, t in refs.items() if t.role is Role.BIAS} == {n for n in refs if ".bias_" in n}
    assert all(t.role is Role.WEIGHT for n, t in refs.items() if ".weight_" in n)
    rep, by_name = _readings(path)
    assert rep["skipped"] == [] and set(by_name) == set(refs)
    for name, t in by_name.items():
        if ".bias_" in name:
            layer = name.split(".")[0]
            hidden = {"lstm_cell": 48, "gru_cell": 40, "rnn_cell": 64, "lstm": 48, "proj": 64}[layer]
            assert "at_init" in t["reading"]["flags"], name
            assert t["reading"]["init"] == f"within PyTorch's default bias range ±1/√{hidden}", name
    assert all("at_init" in lr["reading"]["flags"] for lr in rep["layers"]), \
        [lr["name"] for lr in rep["layers"] if "at_init" not in lr["reading"]["flags"]]
    assert rep["model"]["reading"]["state"] == "initialised"


def test_rnn_biases_away_from_their_init_are_not_at_init(tmp_path):
    torch.manual_seed(1)
    lstm = torch.nn.LSTM(16, 48)
    sd = {k: (v * 3 if "bias" in k else v) for k, v in lstm.state_dict().items()}
    _, by_name = _readings(_save(tmp_path, sd))
    assert all("at_init" not in by_name[k]["reading"]["flags"] for k in sd if "bias" in k)


def test_vit_tokens_tables_and_patch_convs_of_a_fresh_model(tmp_path):
    torch.manual_seed(0)
    path = _save(tmp_path, _Vit())
    refs = _roles(path)
    # a conv kernel under an embedding's name is a weight, its units along axis 0
    for conv in ("patch_embed.weight", "pos_conv_embed.weight"):
        assert refs[conv].role is Role.WEIGHT and refs[conv].unit_axis == 0, conv
    for tok in ("cls_token", "dist_token", "mask_token", "pos_embed", "class_embedding"):
        assert refs[tok].role is Role.EMBEDDING, tok
    # a [1, tokens, dim] table has its rows along axis 1 (not the leading axis of 1)
    assert refs["pos_embed"].unit_axis == 1 and refs["cls_token"].unit_axis == 1
    assert refs["relative_position_bias_table"].role is Role.BIAS
    rep, by_name = _readings(path)
    for name in ("cls_token", "dist_token", "mask_token", "pos_embed", "relative_position_bias_table"):
        flags = by_name[name]["reading"]["flags"]
        assert flags == ["at_init"], (name, flags)  # zero by design: not sparse, no dead rows
    for conv in ("patch_embed.weight", "pos_conv_embed.weight", "qkv.weight", "head.weight"):
        assert by_name[conv]["reading"]["init"] == "PyTorch default (kaiming_uniform, a=√5)", conv
    assert rep["model"]["reading"]["state"] == "initialised"
    assert not any("dead units" in c or "sparse" in c for c in rep["model"]["reading"].get("concerns", []))


def test_all_zero_tables_that_are_not_tokens_are_still_sparse(tmp_path):
    """The zero-token rule is for tokens and position tables: an all-zero word-embedding table and an all-zero
    Linear weight are still sparse, and a Linear layer with a zero row has a dead unit."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32)
    w = lin.weight.detach().clone()
    w[3] = 0
    sd = {"word_embeddings.weight": torch.zeros(100, 16), "fc.weight": torch.zeros(32, 64), "lin.weight": w}
    _, by_name = _readings(_save(tmp_path, sd))
    assert "sparse" in by_name["word_embeddings.weight"]["reading"]["flags"]
    assert "at_init" not in by_name["word_embeddings.weight"]["reading"]["flags"]
    assert "sparse" in by_name["fc.weight"]["reading"]["flags"]
    assert "dead_units" in by_name["lin.weight"]["reading"]["flags"]


def test_embeddings_under_other_names(tmp_path):
    """T5/BART's `shared` token embedding is an embedding; an nn.Embedding under a name that says nothing of
    one (`lookup`) stays a weight but reads as at nn.Embedding's N(0, 1) init, its padding row not a dead unit."""
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"shared": torch.nn.Embedding(1000, 64, padding_idx=1),
                                 "lookup": torch.nn.Embedding(1000, 64, padding_idx=0)})
    path = _save(tmp_path, model)
    refs = _roles(path)
    assert refs["shared.weight"].role is Role.EMBEDDING and refs["lookup.weight"].role is Role.WEIGHT
    rep, by_name = _readings(path)
    for name in ("shared.weight", "lookup.weight"):
        r = by_name[name]["reading"]
        assert r["flags"] == ["at_init"] and r["init"] == "normal(0, 1) (PyTorch Embedding default)", (name, r)
    assert rep["model"]["reading"]["state"] == "initialised"
    # two zero rows are not a padding row: dead units
    sd = {"lookup.weight": model["lookup"].weight.detach().clone()}
    sd["lookup.weight"][5] = 0
    _, by_name = _readings(_save(tmp_path, sd, "two.pt"))
    assert "dead_units" in by_name["lookup.weight"]["reading"]["flags"]


def test_gpt2_cross_attention_q_attn_units_along_the_last_axis(tmp_path):
    torch.manual_seed(0)
    sd = {"h.0.crossattention.q_attn.weight": torch.randn(64, 96) * 0.02,
          "h.0.crossattention.c_attn.weight": torch.randn(64, 128) * 0.02}
    sd["h.0.crossattention.q_attn.weight"][:, 7] = 0  # one dead output unit (a column in [in, out])
    path = _save(tmp_path, sd)
    refs = _roles(path)
    assert refs["h.0.crossattention.q_attn.weight"].unit_axis == 1
    _, by_name = _readings(path)
    st = by_name["h.0.crossattention.q_attn.weight"]["stats"]
    assert (st["units"], st["dead_units"]) == (96, 1)


def test_transposed_convs_have_their_units_along_axis_1(tmp_path):
    """ConvTranspose weights are [in, out/groups, *k]: a dead output channel is a zero slice along axis 1.
    A state dict says so only through the module's name (deconv1, conv_transpose); a live module by its class."""
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"deconv1": torch.nn.ConvTranspose2d(8, 6, 3), "up": torch.nn.ConvTranspose2d(8, 6, 3),
                                 "conv": torch.nn.Conv2d(8, 6, 3)})
    with torch.no_grad():
        for m in model.values():
            m.weight[:, 2] = 0  # ConvTranspose: output channel 2 dead; Conv2d: input channel 2 unused (alive units)
    path = _save(tmp_path, model)
    refs = _roles(path)
    assert refs["deconv1.weight"].unit_axis == 1 and refs["conv.weight"].unit_axis == 0
    assert refs["up.weight"].unit_axis == 0  # a name that does not say it: read as a conv (README says so)
    _, by_name = _readings(path)
    assert (by_name["deconv1.weight"]["stats"]["units"], by_name["deconv1.weight"]["stats"]["dead_units"]) == (6, 1)
    assert by_name["conv.weight"]["stats"]["dead_units"] == 0
    # in memory the module's class says it, whatever its name
    mem = {t["name"]: t for t in wdist.inspect(model).to_dict()["tensors"]}
    assert (mem["up.weight"]["stats"]["units"], mem["up.weight"]["stats"]["dead_units"]) == (6, 1)
    assert mem["deconv1.weight"]["stats"]["dead_units"] == 1
