"""The verdict (reading objects) on checkpoints built by torch / safetensors / h5py, as JSON would carry them."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from wdist.analyzers.inspect import InspectReport, Options, analyse
from wdist.loaders.model import Role
from wdist.loaders.registry import open_checkpoint

torch = pytest.importorskip("torch")
nn: Any = torch.nn


def _analyse(p: Path, opts: Options | None = None) -> InspectReport:
    with open_checkpoint(str(p)) as ck:
        return analyse(ck, opts or Options(jobs=1))


def _save(tmp: Path, name: str, obj: object) -> Path:
    p = tmp / name
    torch.save(obj, p)
    return p


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)


def resnet18() -> nn.Module:
    """torchvision's ResNet-18 layout and init rules: kaiming_normal_(fan_out, relu) convs, BN 1/0, Linear default."""
    m = nn.Module()
    m.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    m.bn1 = nn.BatchNorm2d(64)
    cin = 64
    for i, (cout, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2)), 1):
        setattr(m, f"layer{i}", nn.Sequential(_Block(cin, cout, stride), _Block(cout, cout, 1)))
        cin = cout
    m.fc = nn.Linear(512, 1000)
    for mod in m.modules():
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(mod, nn.BatchNorm2d):
            nn.init.constant_(mod.weight, 1)
            nn.init.constant_(mod.bias, 0)
    return m


@pytest.fixture(scope="module")
def resnet_report(tmp_path_factory: pytest.TempPathFactory) -> InspectReport:
    torch.manual_seed(0)
    p = _save(tmp_path_factory.mktemp("rn"), "resnet18.pt", resnet18().state_dict())
    return _analyse(p)


def test_resnet18_at_init_is_initialised(resnet_report: InspectReport) -> None:
    r = resnet_report
    assert r.model.reading is not None
    mr = r.model.reading
    assert mr.state == "initialised" and mr.shape == "gaussian"
    assert "at_init" in mr.flags and "heavy_tailed" not in mr.flags and "sparse" not in mr.flags
    assert abs(mr.kurtosis) < 0.1  # standardised per tensor; raw pooled kurtosis is far from 0
    assert r.model.stats["kurtosis"] > 1.0
    conv = next(t for t in r.tensors if t.name == "layer1.0.conv1.weight")
    assert conv.reading is not None and conv.reading.init == "Kaiming normal, fan_out"
    assert conv.reading.shape == "gaussian" and "at_init" in conv.reading.flags
    assert any("≈ √(2/576) = 0.0589: Kaiming normal, fan_out" in n for n in conv.notes)
    down = next(t for t in r.tensors if t.name == "layer2.0.conv1.weight")  # fan_in 576, fan_out 1152
    assert down.reading is not None and down.reading.init == "Kaiming normal, fan_out"
    fc = next(t for t in r.tensors if t.name == "fc.weight")
    assert fc.reading is not None and fc.reading.init == "PyTorch default (kaiming_uniform, a=√5)"
    assert fc.reading.shape == "uniform"
    text = r.model.summary
    assert "at initialisation" in text and "Kaiming normal, fan_out" in text and "init" in text
    assert "expected for trained weights" not in text and "heavy-tailed" not in text


def test_norm_parameters_at_init_not_sparse(resnet_report: InspectReport) -> None:
    bn_w = next(t for t in resnet_report.tensors if t.name == "bn1.weight")
    bn_b = next(t for t in resnet_report.tensors if t.name == "bn1.bias")
    assert bn_w.reading is not None and bn_b.reading is not None
    assert (bn_w.reading.group, bn_w.reading.shape, bn_w.reading.flags) == ("norm_scale", "constant", ["at_init"])
    assert (bn_b.reading.group, bn_b.reading.shape, bn_b.reading.flags) == ("norm_shift", "all_zero", ["at_init"])
    layer = next(lr for lr in resnet_report.layers if lr.name == "bn1")
    assert layer.reading is not None and "sparse" not in layer.reading.flags and "at_init" in layer.reading.flags
    assert not any("sparse" in n for n in layer.notes + bn_b.notes)
    assert layer.summary is not None and layer.summary.n == 64  # histogram of gamma alone, never gamma+beta


def test_default_mlp_is_initialised(tmp_path: Path) -> None:
    torch.manual_seed(1)
    m = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10))
    r = _analyse(_save(tmp_path, "mlp.pt", m.state_dict()))
    assert r.model.reading is not None and r.model.reading.state == "initialised"
    assert r.model.reading.shape == "uniform"
    w0 = r.tensors[0]
    assert w0.reading is not None and w0.reading.init == "PyTorch default (kaiming_uniform, a=√5)"
    b0 = r.tensors[1]
    assert b0.reading is not None and b0.reading.group == "bias" and "at_init" in b0.reading.flags
    assert "PyTorch default (kaiming_uniform, a=√5)" in r.model.summary


def test_gaussian_layers_at_100x_scales_are_not_heavy_tailed(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(2)
    sd = {f"l{i}.weight": torch.randn(256, 256, generator=g) * s for i, s in enumerate((0.001, 0.01, 0.1))}
    sd["meta"] = torch.zeros(1)  # keeps no role: only the weights are judged
    r = _analyse(_save(tmp_path, "scales.pt", sd))
    assert r.model.stats["kurtosis"] > 5  # the raw pooled metric still shows the scale mixture
    mr = r.model.reading
    assert mr is not None and mr.shape == "gaussian" and "heavy_tailed" not in mr.flags
    assert mr.state == "trained"  # 0.001 / 0.01 / 0.1 match no initialiser at 256x256 fans
    assert "Gaussian-like" in r.model.summary and "heavy-tailed" not in r.model.summary


def test_magnitude_pruned_net(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(3)
    sd = {}
    for i in range(3):
        w = torch.randn(300, 200, generator=g) * 0.05
        t = w.abs().flatten().kthvalue(int(0.8 * w.numel())).values
        sd[f"fc{i}.weight"] = torch.where(w.abs() > t, w, torch.zeros(()))
    r = _analyse(_save(tmp_path, "pruned.pt", sd))
    t0 = r.tensors[0]
    assert t0.reading is not None and t0.reading.shape == "sparse" and "sparse" in t0.reading.flags
    gap = t0.reading.pruning_gap
    true_min = float(sd["fc0.weight"][sd["fc0.weight"] != 0].abs().min())
    assert gap is not None and true_min * (1 - 2 ** -7) <= gap <= true_min
    assert any("magnitude pruning" in n for n in t0.notes)
    assert r.model.reading is not None and r.model.reading.shape == "sparse"
    text = r.model.summary
    assert "magnitude pruning" in text and "inf" not in text.split("exactly zero")[0]
    assert "bell-shaped" not in text


def test_student_t_is_heavy_tailed(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    sd = {f"h{i}.weight": torch.from_numpy((rng.standard_t(3, size=(400, 400)) * 0.02).astype(np.float32))
          for i in range(2)}
    r = _analyse(_save(tmp_path, "studt.pt", sd))
    mr = r.model.reading
    assert mr is not None and mr.shape == "heavy_tailed" and "heavy_tailed" in mr.flags and mr.state == "trained"
    assert "expected for trained weights" in r.model.summary


def test_outlier_dead_rows_and_nan(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(5)
    a = torch.randn(200, 100, generator=g) * 0.03
    a[7, 3] = 50.0
    b = torch.randn(200, 100, generator=g) * 0.03
    b[:5] = 0
    c = torch.randn(200, 100, generator=g) * 0.03
    c[0, 0], c[1, 1] = float("nan"), float("inf")
    r = _analyse(_save(tmp_path, "bad.pt", {"a.weight": a, "b.weight": b, "c.weight": c}))
    fl = {t.name: t.reading.flags for t in r.tensors if t.reading}
    assert "outliers" in fl["a.weight"] and "dead_units" in fl["b.weight"] and "non_finite" in fl["c.weight"]
    mr = r.model.reading
    assert mr is not None and {"outliers", "dead_units", "non_finite"} <= set(mr.flags)
    text = r.model.summary
    assert "non-finite values in c" in text and "dead units in b (5/200)" in text and "outlier weights in a" in text


def test_zero_biases_with_layernorm_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(6)
    sd = {"fc.weight": torch.randn(64, 64, generator=g) * 0.02, "fc.bias": torch.zeros(64),
          "ln.weight": torch.ones(64), "ln.bias": torch.zeros(64)}
    p = tmp_path / "m.safetensors"
    save_file(sd, str(p))
    r = _analyse(p)
    rd = {t.name: t.reading for t in r.tensors}
    assert rd["fc.bias"] is not None and rd["fc.bias"].flags == ["at_init"] and rd["fc.bias"].shape == "all_zero"
    assert rd["ln.bias"] is not None and rd["ln.bias"].group == "norm_shift"
    assert rd["ln.weight"] is not None and rd["ln.weight"].group == "norm_scale"
    assert rd["fc.weight"] is not None and rd["fc.weight"].init == "normal(0, 0.02)"
    assert not any("sparse" in n for t in r.tensors for n in t.notes)


def test_lightning_checkpoint_with_adam_state_is_trained(tmp_path: Path) -> None:
    torch.manual_seed(7)
    m = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 64))
    with torch.no_grad():
        for p_ in m.parameters():
            p_.mul_(4.0)  # weights grew 4x
    opt = torch.optim.Adam(m.parameters())
    m(torch.randn(8, 128)).sum().backward()
    opt.step()
    ck = {"epoch": 3, "global_step": 1000, "pytorch-lightning_version": "2.1.0",
          "state_dict": {f"model.{k}": v for k, v in m.state_dict().items()},
          "optimizer_states": [opt.state_dict()]}
    p = _save(tmp_path, "epoch=3-step=1000.ckpt", ck)
    r = _analyse(p)
    mr = r.model.reading
    assert mr is not None and mr.state == "trained"
    assert any("global_step 1000" in e for e in mr.evidence) and any("optimizer state" in e for e in mr.evidence)
    assert "untrained" not in r.model.summary and "barely" not in r.model.summary
    every = _analyse(p, Options(roles=tuple(Role), jobs=1))
    groups = {t.name: t.reading.group for t in every.tensors if t.reading}
    steps = [n for n in groups if n.endswith(".step")]
    assert steps and all(groups[n] == "optimizer_scalar" for n in steps)
    assert {groups[n] for n in groups if "exp_avg" in n} == {"optimizer_moment"}
    assert every.model.stats["numel"] == sum(p_.numel() for p_ in m.parameters())  # no step counter pooled
    assert "optimizer_scalar" in every.model.by_group and "optimizer_moment" in every.model.by_group
    assert not any("100.0% of values" in n or "outlier" in n for n in every.model.notes)


def test_near_zero_is_per_tensor_and_agrees(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(8)
    sd = {"a.weight": torch.randn(100, 100, generator=g) * 0.01, "b.weight": torch.randn(100, 100, generator=g)}
    sd["b.weight"][0, 0] = 40.0  # one outlier used to make the whole model "near zero"
    r = _analyse(_save(tmp_path, "nz.pt", sd))
    per = [t.stats["near_zero_fraction"] * t.numel for t in r.tensors]
    assert r.model.stats["near_zero_fraction"] == pytest.approx(sum(per) / 20000, rel=1e-12)
    assert r.model.stats["near_zero_threshold"] is None
    assert f"{100 * r.model.stats['near_zero_fraction']:.1f}% of analysed values are near zero" in r.model.summary


def test_json_carries_the_reading(resnet_report: InspectReport) -> None:
    from wdist.cli.render.common import jsonable

    d = jsonable(resnet_report)
    assert d["model"]["reading"]["state"] == "initialised"
    assert set(d["tensors"][0]["reading"]) >= {"shape", "flags"}
    assert d["layers"][0]["reading"]["shape"] in ("gaussian", "uniform", "constant", "all_zero", "other")


def test_keras_kernel_layout_uses_keras_fans(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    from wdist.analyzers import inits

    assert inits.fans((3, 3, 16, 32), keras=True) == (144, 288)
    assert inits.fans((32, 16, 3, 3), keras=False) == (144, 288)
    rng = np.random.default_rng(9)
    lim = math.sqrt(6 / (300 + 200))
    p = tmp_path / "m.weights.h5"
    with h5py.File(p, "w") as f:
        grp = f.create_group("dense").create_group("dense")
        grp.create_dataset("kernel:0", data=rng.uniform(-lim, lim, size=(300, 200)).astype(np.float32))
        grp.create_dataset("bias:0", data=np.zeros(200, np.float32))
        f.attrs["layer_names"] = [b"dense"]
        f["dense"].attrs["weight_names"] = [b"dense/kernel:0", b"dense/bias:0"]
    r = _analyse(p)
    k = next(t for t in r.tensors if t.role == "weight")
    assert k.reading is not None and k.reading.init == "Xavier/Glorot uniform"


def test_magnitude_pruned_normal_weights_are_recognised(tmp_path):
    """The non-zeros of a magnitude-pruned normal are a normal with its centre removed: their kurtosis is
    compared with that truncated normal's (−1.72 at 80% pruning), so they read Gaussian-like; pruned
    Laplace weights do not."""
    import numpy as np
    import scipy.stats as st
    from safetensors.numpy import save_file

    from wdist.analyzers.inspect import Options, analyse
    from wdist.analyzers.verdict import truncated_normal_kurtosis
    from wdist.loaders import open_checkpoint

    rng = np.random.default_rng(3)
    z = rng.standard_normal(1_000_000)
    assert abs(truncated_normal_kurtosis(1.0) - st.kurtosis(z[np.abs(z) > 1.0])) < 0.01
    w = (rng.standard_normal((512, 512)) * 0.05).astype(np.float32)
    t = np.quantile(np.abs(w), 0.8)
    w[np.abs(w) < t] = 0
    lap = rng.laplace(size=(512, 512)).astype(np.float32) * 0.05
    lap[np.abs(lap) < np.quantile(np.abs(lap), 0.8)] = 0
    p = tmp_path / "pruned.safetensors"
    save_file({"fc.weight": w, "lap.weight": lap}, str(p))
    by = {x.name: x.reading for x in analyse(open_checkpoint(str(p)), Options(jobs=1)).tensors}
    fc = by["fc.weight"]
    assert fc.shape == "sparse" and fc.nonzero_shape == "gaussian"
    assert fc.pruning_gap is not None and abs(fc.pruning_gap - t) / t < 2 ** -6
    assert by["lap.weight"].nonzero_shape != "gaussian"


def test_constant_weights_are_no_evidence_of_training(tmp_path: Path) -> None:
    """nn.init.constant_ leaves a constant matrix: neither a trained spread nor a random-init signature, so
    it cannot make the model `trained` (it used to: 0 of 1 judged tensors at init -> "trained")."""
    sd = {"fc.weight": torch.ones(64, 64), "fc2.weight": torch.full((64, 64), 0.5)}
    r = _analyse(_save(tmp_path, "const.pt", sd))
    mr = r.model.reading
    assert mr is not None and mr.shape == "constant" and mr.state == "unknown"
    assert any("not constant" in e for e in mr.evidence)
    # a trained-looking matrix beside them still decides
    g = torch.Generator().manual_seed(0)
    sd["fc3.weight"] = torch.randn(256, 256, generator=g) * 0.01
    mr = _analyse(_save(tmp_path, "mixed.pt", sd)).model.reading
    assert mr is not None and mr.state == "trained"


def test_nothing_floating_point_is_not_an_empty_tensor(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from wdist.cli.main import cli

    p = tmp_path / "c.npy"
    np.save(p, (np.arange(16) + 1j).astype(np.complex64))
    r = _analyse(p, Options(jobs=1, roles=tuple(Role)))
    assert r.skipped == ["c"] and r.model.notes == ["no floating-point values analysed"]
    out = CliRunner().invoke(cli, ["inspect", str(p), "--role", "all"]).output
    assert "not analysed (not floating point): 1 tensor: c" in out and "empty tensor" not in out
    js = json.loads(CliRunner().invoke(cli, ["inspect", str(p), "--role", "all", "--format", "json"]).output)
    assert js["skipped"] == ["c"]
    with open_checkpoint(str(p)) as ck:  # the library never drops the imaginary part silently
        from wdist.loaders.errors import UnsupportedFormatError

        with pytest.raises(UnsupportedFormatError, match="complex64"):
            ck.tensors[0].read()
        with pytest.raises(UnsupportedFormatError, match="complex64"):
            next(ck.tensors[0].chunks())
        assert ck.tensors[0].reader.read_raw(0, 2).tolist() == [1j, 1 + 1j]


# --- readings found wrong by the 2026-12-03 review -------------------------------------------------------


def _state(tmp_path, name: str, sd: dict) -> tuple[str, list[str]]:
    import torch

    import wdist

    p = tmp_path / f"{name}.pt"
    torch.save(sd, p)
    r = wdist.inspect(str(p)).model.reading
    return r.state, r.evidence


@pytest.mark.parametrize("make", [lambda t: t.nn.LSTM(2048, 64), lambda t: t.nn.GRU(64, 128),
                                  lambda t: t.nn.RNN(96, 160), lambda t: t.nn.LSTM(32, 48, num_layers=2)])
def test_a_fresh_recurrent_layer_reads_initialised(tmp_path, make):
    import torch

    torch.manual_seed(0)
    state, evidence = _state(tmp_path, "rnn", make(torch).state_dict())
    assert state == "initialised", evidence


def test_uniform_weights_of_no_known_scheme_are_not_read_as_trained(tmp_path):
    import torch

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(256, 128), torch.nn.Linear(128, 64))
    for lin in m:
        torch.nn.init.uniform_(lin.weight, -0.1, 0.1)
        torch.nn.init.zeros_(lin.bias)
    state, evidence = _state(tmp_path, "u", m.state_dict())
    assert state == "unknown" and any("uniform-shaped" in e for e in evidence), (state, evidence)
    scaled = {k: v * 10 for k, v in torch.nn.Linear(256, 128).state_dict().items()}
    assert _state(tmp_path, "x10", scaled)[0] == "unknown"
    # weights that left the uniform shape and every signature read trained, as before
    g = torch.Generator().manual_seed(1)
    lap = torch.distributions.Laplace(0.0, 0.05)
    trained = {"a.weight": lap.sample((256, 128)), "b.weight": torch.randn(64, 256, generator=g) * 0.07}
    assert _state(tmp_path, "t", trained)[0] == "trained"


@pytest.mark.parametrize("amount", [0.5, 0.8, 0.9, 0.97])
def test_magnitude_pruning_reads_the_original_family(tmp_path, amount):
    import numpy as np
    from safetensors.numpy import save_file

    import wdist

    rng = np.random.default_rng(0)
    for family, w in (("normal", rng.normal(0, 0.05, (256, 256))), ("uniform", rng.uniform(-0.06, 0.06, (256, 256)))):
        t = np.quantile(np.abs(w), amount)
        w = np.where(np.abs(w) > t, w, 0).astype(np.float32)
        p = tmp_path / f"{family}{amount}.safetensors"
        save_file({"fc.weight": w}, str(p))
        r = wdist.inspect(str(p)).tensors[0].reading
        kz = float(((w[w != 0] - w[w != 0].mean()) ** 4).mean() / w[w != 0].var() ** 2 - 3)
        if family == "normal":
            assert r.nonzero_shape == "gaussian", (amount, r)
        else:  # a band of +-U(t, b): never Gaussian-like (its kurtosis is near -2 like a pruned normal's)
            assert r.nonzero_shape != "gaussian", (amount, r, kz)


def test_an_embeddings_padding_row_is_not_a_dead_unit(tmp_path):
    import torch

    import wdist

    torch.manual_seed(0)
    torch.save({"emb.weight": torch.nn.Embedding(2000, 64, padding_idx=0).weight.detach()}, tmp_path / "emb.pt")
    t = wdist.inspect(str(tmp_path / "emb.pt")).tensors[0]
    assert t.stats["dead_units"] == 1 and "dead_units" not in t.reading.flags
    w = torch.nn.Embedding(2000, 64).weight.detach().clone()
    w[:2] = 0  # two zero rows are more than a padding row
    torch.save({"emb.weight": w}, tmp_path / "emb2.pt")
    assert "dead_units" in wdist.inspect(str(tmp_path / "emb2.pt")).tensors[0].reading.flags


def test_constant_members_at_different_values_are_not_one_value() -> None:
    """Two constant weights (0.1 and 0.3) pooled: the note said "every value is 0.2", a value none has."""
    import wdist

    rep = wdist.inspect({"l0.weight": np.full((16, 16), 0.1, np.float32),
                         "l1.weight": np.full((16, 16), 0.3, np.float32)}, jobs=1)
    assert rep.reading is not None and rep.reading.shape == "constant"
    text = " ".join(rep.model.notes)
    assert "0.2" not in text and "0.1 to 0.3" in text
    # a single constant tensor still says its value
    assert any("every value is 0.1" in n for n in rep.tensors[0].notes)


def test_a_recorded_step_of_0_is_not_the_reason_for_trained(tmp_path: Path) -> None:
    import torch

    import wdist

    rng = np.random.default_rng(0)
    sd = {f"l{i}.weight": torch.from_numpy(rng.standard_t(3, size=(256, 256)).astype(np.float32) * 0.05)
          for i in range(4)}
    torch.save({"state_dict": sd, "global_step": 0}, tmp_path / "step0.pt")
    rep = wdist.inspect(str(tmp_path / "step0.pt"), jobs=1)
    assert rep.reading is not None and rep.reading.state == "trained"
    assert rep.reading.evidence[0].startswith("0 of 4 weight tensors")
    assert "global_step 0 recorded in the checkpoint" in rep.reading.evidence[1:]
    assert "State: trained (0 of 4 weight tensors" in rep.model.summary
