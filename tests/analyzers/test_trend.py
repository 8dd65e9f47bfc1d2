import os

import pytest
import torch

from wdist.analyzers.inspect import Options
from wdist.analyzers.trend import expand_inputs, natural_key, order_points, run, step_from_name


def test_natural_order():
    names = ["epoch10.pt", "epoch2.pt", "epoch1.pt"]
    assert sorted(names, key=natural_key) == ["epoch1.pt", "epoch2.pt", "epoch10.pt"]


@pytest.mark.parametrize("name, expect", [
    ("epoch=3-step=1200.ckpt", ("step", 1200)), ("checkpoint-500", ("step", 500)), ("run/checkpoint-500/", ("step", 500)),
    ("epoch_07.pt", ("epoch", 7)), ("model_step1000.safetensors", ("step", 1000)), ("final.pt", None),
])
def test_step_from_name(name, expect):
    assert step_from_name(name) == expect


def test_order_modes():
    paths = ["a/epoch=1-step=900.ckpt", "a/epoch=0-step=300.ckpt", "a/epoch=2-step=1500.ckpt"]
    pts, how = order_points(paths, given=False)
    assert [p.step for p in pts] == [300, 900, 1500] and "step" in how
    pts, how = order_points(paths, given=True)
    assert [p.step for p in pts] == [900, 300, 1500] and "given" in how
    pts, how = order_points(["b/final.pt", "b/a10.pt", "b/a9.pt"], given=False)
    assert [p.label for p in pts] == ["a9.pt", "a10.pt", "final.pt"] and "natural" in how


def test_run_dir_and_metadata_steps(tmp_path):
    torch.manual_seed(0)
    w = torch.randn(16, 16)
    for name in ["late", "early", "mid"]:
        scale = {"early": 1.0, "mid": 1.5, "late": 2.0}[name]
        torch.save({"global_step": {"early": 10, "mid": 20, "late": 30}[name], "state_dict": {"fc.weight": w * scale}},
                   tmp_path / f"{name}.pt")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    paths = expand_inputs([str(tmp_path)])
    assert sorted(os.path.basename(p) for p in paths) == ["early.pt", "late.pt", "mid.pt"]
    r = run(paths, Options(jobs=1))
    # no step in the names: natural order of names; steps from metadata are shown
    assert [p.label for p in r.checkpoints] == ["early.pt", "late.pt", "mid.pt"]
    assert [p.step for p in r.checkpoints] == [10, 30, 20]
    l2 = r.layers[0].series["l2_norm"]
    assert l2[1] == pytest.approx(2 * l2[0], rel=1e-6)
    assert r.layers[0].change_first["l2_norm"] == pytest.approx(0.5, rel=1e-6)


def test_bad_checkpoint_is_reported_and_others_analysed(tmp_path):
    torch.save({"fc.weight": torch.randn(4, 4)}, tmp_path / "epoch1.pt")
    (tmp_path / "epoch2.pt").write_bytes(b"garbage" * 10)
    torch.save({"fc.weight": torch.randn(4, 4)}, tmp_path / "epoch3.pt")
    r = run(expand_inputs([str(tmp_path)]), Options(jobs=1))
    assert r.errors == 1 and r.checkpoints[1].error
    assert r.layers[0].series["std"][0] is not None and r.layers[0].series["std"][1] is None


def test_natural_order_of_odd_file_names():
    """The checkpoint order key is the loaders' natural key (no int() of a digit run): a 5,000-digit run
    sorts instead of raising ValueError; case is ignored as before."""
    names = ["Epoch10.pt", "epoch2.pt", "run²3.pt", "x" + "9" * 5000 + ".pt", "x1.pt"]
    assert sorted(names, key=natural_key) == ["epoch2.pt", "Epoch10.pt", "run²3.pt", "x1.pt", names[3]]


def test_a_run_folder_entry_symlinked_out_of_it_is_not_read(tmp_path):
    """`trend DIR` read an entry that was a symlink to a file outside the run folder, under this run's step
    names (found by review: the 777s of another file showed as step 2)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for step in (1, 3):
        torch.save({"w.weight": torch.full((8, 8), float(step))}, run_dir / f"step{step}.pt")
    torch.save({"w.weight": torch.full((8, 8), 777.0)}, tmp_path / "secret.pt")
    os.symlink(tmp_path / "secret.pt", run_dir / "step2.pt")
    found = [os.path.basename(p) for p in expand_inputs([str(run_dir)])]
    assert found == ["step1.pt", "step3.pt"]
    refused: dict[str, str] = {}  # the trend command keeps it, to name it as unreadable
    assert [os.path.basename(p) for p in expand_inputs([str(run_dir)], refused)] == ["step1.pt", "step2.pt",
                                                                                   "step3.pt"]
    assert list(refused) == [str(run_dir / "step2.pt")]
    rep = run(expand_inputs([str(run_dir)], refused), Options(jobs=1), refused=refused)
    assert [p.error for p in rep.checkpoints] == [None, "a symlink out of the run folder: not followed", None]
    assert max(v for v in rep.model["l2_norm"] if v is not None) < 777  # never read
    from click.testing import CliRunner

    from wdist.cli.main import cli

    r = CliRunner().invoke(cli, ["trend", str(run_dir), "--no-cache"])
    assert r.exit_code == 2 and "wdist: error:" in r.output and "step2.pt: a symlink out" in r.output
    os.symlink(run_dir / "step1.pt", run_dir / "step4.pt")  # a symlink inside the folder is followed
    assert [os.path.basename(p) for p in expand_inputs([str(run_dir)])] == ["step1.pt", "step3.pt", "step4.pt"]


def test_watch_never_rereads_a_file_replaced_by_a_symlink_out(tmp_path):
    """watch() kept reported paths and passed them back each round: a reported step1 replaced by a symlink
    out of the folder was read again under its old name (found by review)."""
    from wdist.analyzers.trend import watch

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.save({"w.weight": torch.ones(8, 8)}, run_dir / "step1.pt")
    torch.save({"w.weight": torch.full((8, 8), 777.0)}, tmp_path / "secret.pt")
    now = [0.0]

    def sleep(_s: float) -> None:
        now[0] += 10.0

    rounds = []
    gen = watch(str(run_dir), poll=1.0, settle=5.0, sleep=sleep, clock=lambda: now[0])
    rounds.append(next(gen))
    os.remove(run_dir / "step1.pt")
    os.symlink(tmp_path / "secret.pt", run_dir / "step1.pt")
    torch.save({"w.weight": torch.full((8, 8), 2.0)}, run_dir / "step2.pt")
    rounds.append(next(gen))
    assert [os.path.basename(p) for p in rounds[0]] == ["step1.pt"]
    assert [os.path.basename(p) for p in rounds[1]] == ["step2.pt"]


def test_a_tensor_at_zero_throughout_does_not_hide_its_layer_moving(tmp_path):
    """A bias that stays exactly 0 had an unknown change (0 -> 0), which blanked the layer's moving/settled."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 64, generator=g)
    paths = []
    for i, scale in enumerate((1.0, 1.2, 1.44)):
        torch.save({"moving.weight": w * scale, "moving.bias": torch.zeros(64),
                    "rest.weight": w.clone(), "rest.bias": torch.zeros(64)}, tmp_path / f"step-{i + 1}.pt")
        paths.append(str(tmp_path / f"step-{i + 1}.pt"))
    rep = run(paths, Options(jobs=1))
    notes = {lt.name: lt.notes for lt in rep.layers}
    assert any(n.startswith("still moving: L2 norm changed +20.0% (moving.weight)") for n in notes["moving"]), notes
    assert any(n.startswith("settled") for n in notes["rest"]), notes


def test_a_folder_of_epoch_files_and_one_safetensors_is_a_run_not_one_model(tmp_path):
    """It read as one model (the single safetensors file) and the .pt steps were dropped without a word; a
    Hugging Face checkpoint folder (its optimizer, scheduler, RNG state, the same weights as .bin) is still
    one checkpoint."""
    import torch
    from safetensors.torch import save_file

    from wdist.analyzers.trend import expand_inputs

    run = tmp_path / "run"
    run.mkdir()
    for i in range(3):
        torch.save({"w": torch.ones(4) * (i + 1)}, run / f"epoch{i + 1}.pt")
    save_file({"w": torch.ones(4)}, str(run / "model.safetensors"))
    assert sorted(os.path.basename(p) for p in expand_inputs([str(run)])) == [
        "epoch1.pt", "epoch2.pt", "epoch3.pt", "model.safetensors"]
    hf = tmp_path / "checkpoint-500"
    hf.mkdir()
    save_file({"w": torch.ones(4)}, str(hf / "model.safetensors"))
    for name in ("pytorch_model.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"):
        torch.save({}, hf / name)
    assert [os.path.basename(p) for p in expand_inputs([str(hf)])] == ["model.safetensors"]
    # one model in two files (PEFT, diffusers), Accelerate's save_state: still one checkpoint each
    for folder, names in (("peft", ["adapter_model.bin"]), ("unet", ["diffusion_pytorch_model.bin"]),
                          ("acc", ["optimizer.bin", "scheduler.bin", "sampler.bin", "random_states_0.pkl"])):
        d = tmp_path / folder
        d.mkdir()
        main = "adapter_model" if folder == "peft" else "diffusion_pytorch_model" if folder == "unet" else "model"
        save_file({"w": torch.ones(4)}, str(d / f"{main}.safetensors"))
        for name in names:
            torch.save({}, d / name)
        assert [os.path.basename(p) for p in expand_inputs([str(d)])] == [f"{main}.safetensors"], folder
    # a run folder's optimizer and RNG files are not steps
    for name in ("optimizer.pt", "training_args.bin", "rng_state.pth"):
        torch.save({}, run / name)
    assert sorted(os.path.basename(p) for p in expand_inputs([str(run)])) == [
        "epoch1.pt", "epoch2.pt", "epoch3.pt", "model.safetensors"]


def test_a_layer_that_appears_goes_or_changes_shape_is_said_so(tmp_path):
    """The series went on as if nothing happened (diff reports these; trend said nothing)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.save({"a.weight": torch.ones(4, 4), "b.weight": torch.ones(4)}, run_dir / "step1.pt")
    torch.save({"a.weight": torch.ones(4, 4) * 2, "c.weight": torch.ones(3)}, run_dir / "step2.pt")
    torch.save({"a.weight": torch.ones(2, 8, dtype=torch.float16), "b.weight": torch.ones(8)}, run_dir / "step3.pt")
    rep = run(expand_inputs([str(run_dir)]), Options(jobs=1))
    notes = {lt.name: lt.notes for lt in rep.layers}
    assert "tensors changed: a.weight [4, 4] -> [2, 8] float32 -> float16 at step 3 (the series mix them)" \
        in notes["a"]
    assert "not in every checkpoint: absent at step 2" in notes["b"]
    assert "tensors changed: b.weight [4] -> [8] at step 3 (the series mix them)" in notes["b"]
    assert "not in every checkpoint: absent at step 1, step 3" in notes["c"]
