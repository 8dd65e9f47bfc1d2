import csv
import io
import json

import pytest
import torch
from cli_helpers import run


@pytest.fixture(scope="module")
def training_run(tmp_path_factory):
    """A short real training run: checkpoints after epochs 1, 2, 5 and 10, as .pt and .safetensors."""
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    frozen = torch.nn.Linear(3, 3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(256, 20), torch.randint(0, 3, (256,))
    for epoch in range(1, 11):
        for _ in range(10):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        if epoch in (1, 2, 5, 10):
            sd = {**{f"net.{k}": v.clone() for k, v in model.state_dict().items()},
                  **{f"frozen.{k}": v.clone() for k, v in frozen.state_dict().items()}}
            torch.save({"epoch": epoch, "model": sd}, d / f"epoch{epoch}.pt")
            save_file(sd, str(d / f"epoch{epoch}.safetensors"))
    return d


def test_diff_table_and_json(training_run):
    a, b = training_run / "epoch1.pt", training_run / "epoch10.safetensors"
    r = run("diff", a, b, "--hist")
    assert r.exit_code == 0, r.output
    assert "frozen: did not move at all" in r.output and "A |" in r.output
    d = json.loads(run("diff", a, b, "--format", "json").output)
    assert d["schema"] == "wdist/diff/1" and set(d) >= {"a", "b", "tensors", "summary"}
    t = next(t for t in d["tensors"] if t["name"] == "net.0.weight")
    assert t["status"] == "matched"
    assert set(t["change"]) == {"rel_l2_change", "cosine", "sign_flip_fraction", "changed_fraction", "max_abs_change",
                                "wasserstein", "ks"}
    assert t["delta"]["std"] == pytest.approx(t["b"]["std"] - t["a"]["std"])
    rows = list(csv.DictReader(io.StringIO(run("diff", a, b, "--format", "csv", "--tensors").output)))
    assert rows[0]["name"] == "net.0.weight" or float(rows[0]["rel_l2_change"]) >= float(rows[-1]["rel_l2_change"])
    assert "|" in run("diff", a, b, "--format", "markdown").output


def test_trend_dir_glob_and_given(training_run):
    r = run("trend", training_run / "*.pt", "--hist")
    assert r.exit_code == 0, r.output
    assert "ordered by epoch number in the names" in r.output
    assert r.output.index("epoch2.pt") < r.output.index("epoch10.pt")
    d = json.loads(run("trend", training_run / "*.safetensors", "--format", "json", "--metric", "std").output)
    assert d["schema"] == "wdist/trend/1" and d["metrics"] == ["std"]
    assert [c["step"] for c in d["checkpoints"]] == [1, 2, 5, 10]
    net = next(lr for lr in d["layers"] if lr["name"] == "net.0")
    assert len(net["series"]["std"]) == 4
    r = run("trend", training_run / "epoch5.pt", training_run / "epoch1.pt", "--order", "given", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(r.output)))
    assert rows[0]["checkpoint"] == "epoch5.pt"


def test_trend_bad_file_keeps_going(training_run, tmp_path):
    bad = tmp_path / "epoch3.pt"
    bad.write_bytes(b"not a checkpoint")
    r = run("trend", training_run / "epoch1.pt", bad, training_run / "epoch5.pt")
    assert r.exit_code == 2
    assert "wdist: error:" in r.output and "net.0" in r.output
