import csv
import io
import json
import math

from cli_helpers import golden, run

from wdist.analyzers.metrics import METRICS


def test_inspect_table_golden(ckpts, monkeypatch):
    # run beside the file: the heading's layout depends on the path's length, which must not be the tmp dir's
    monkeypatch.chdir(ckpts["keras2_mlp_epoch10.h5"].parent)
    r = run("inspect", "keras2_mlp_epoch10.h5", "--hist")
    assert r.exit_code == 0, r.output
    golden("inspect_keras2_mlp.txt", r.output)


def test_inspect_json_schema(ckpts):
    r = run("inspect", ckpts["zip"], "--format", "json")
    d = json.loads(r.output)
    assert d["schema"] == "wdist/inspect/1"
    assert set(d) >= {"checkpoint", "options", "tensors", "layers", "model"}
    t = d["tensors"][0]
    assert set(t) >= {"name", "layer", "role", "shape", "dtype", "numel", "stats", "histogram", "notes"}
    assert set(t["stats"]) == set(METRICS)
    assert set(t["histogram"]) >= {"edges", "counts", "underflow", "overflow"}
    assert len(t["histogram"]["edges"]) == len(t["histogram"]["counts"]) + 1
    assert set(d["layers"][0]) >= {"name", "parameters", "stats", "notes"}
    assert set(d["model"]) >= {"stats", "notes"}
    assert t["stats"]["dead_units"] == 1


def test_json_never_has_nan_tokens(tmp_path):
    import torch

    torch.save({"fc.weight": torch.tensor([[1.0, float("nan")], [float("inf"), 0.0]]),
                "c.weight": torch.ones(3, 3)}, tmp_path / "nan.pt")
    r = run("inspect", tmp_path / "nan.pt", "--format", "json", "--tensors")
    def bare(token):
        raise AssertionError(f"bare {token} in JSON")

    d = json.loads(r.output, parse_constant=bare)
    fc = next(t for t in d["tensors"] if t["name"] == "fc.weight")
    assert fc["stats"]["nan_count"] == 1 and fc["stats"]["inf_count"] == 1
    assert any("non-finite" in n for n in fc["notes"])
    c = next(t for t in d["tensors"] if t["name"] == "c.weight")
    assert c["stats"]["kurtosis"] is None and any("constant" in n for n in c["notes"])


def test_tensors_sort_top_csv_markdown(ckpts):
    r = run("inspect", ckpts["zip"], "--tensors", "--sort", "std", "--top", "2", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(r.output)))
    assert len(rows) == 2 and float(rows[0]["std"]) >= float(rows[1]["std"])
    r = run("inspect", ckpts["zip"], "--format", "markdown")
    assert r.output.startswith("**") and "| layer" not in r.output and "| 0 |" in r.output


def test_roles_near_zero_and_layers(ckpts):
    r = run("inspect", ckpts["lightning"], "--role", "all", "--tensors", "--format", "json")
    d = json.loads(r.output)
    assert any(t["role"] == "optimizer_state" for t in d["tensors"])
    r = run("inspect", ckpts["zip"], "--near-zero-abs", "0.05", "--format", "json", "--layers", "4")
    d = json.loads(r.output)
    assert [t["name"] for t in d["tensors"]] == ["4.weight", "4.bias"]
    assert d["tensors"][0]["stats"]["near_zero_threshold"] == 0.05 and d["options"]["near_zero_abs"] == 0.05
    r = run("inspect", ckpts["zip"], "--near-zero-rel", "0.5", "--format", "json")
    t = json.loads(r.output)["tensors"][0]["stats"]
    assert math.isclose(t["near_zero_threshold"], 0.5 * max(abs(t["min"]), abs(t["max"])))


def test_every_format_inspects(ckpts):
    for key in ("zip", "legacy", "st", "st_bf16", "lightning", "keras2_lstm.h5", "keras3_conv.keras",
                "keras3_bf16.weights.h5", "keras2_mlp_weights.h5"):
        r = run("inspect", ckpts[key])
        assert r.exit_code == 0, (key, r.output)
        assert "Reading" in r.output


def test_unknown_sort_metric_is_usage_error(ckpts):
    r = run("inspect", ckpts["zip"], "--sort", "bogus")
    assert r.exit_code == 2 and "unknown metric 'bogus'" in r.output


def test_degenerate_tensors_without_numpy_warnings(tmp_path):
    """NaN/Inf, all-zero, constant, empty and scalar tensors: analysed, named, no warnings leak
    (pytest turns RuntimeWarning into errors for this suite)."""
    import torch

    torch.save({"nan.weight": torch.tensor([[float("nan"), 1.0], [2.0, float("-inf")]]),
                "zero.weight": torch.zeros(4, 4), "const.weight": torch.full((3, 3), 0.5),
                "empty.weight": torch.zeros(0, 5), "scalar": torch.tensor(3.0)}, tmp_path / "d.pt")
    r = run("inspect", tmp_path / "d.pt", "--role", "all", "--tensors", "--format", "json")
    assert r.exit_code == 0, r.output
    notes = {t["name"]: " ".join(t["notes"]) for t in json.loads(r.output)["tensors"]}
    assert "non-finite" in notes["nan.weight"] and "all zeros" in notes["zero.weight"]
    assert "constant" in notes["const.weight"] and "empty" in notes["empty.weight"]
    assert "scalar" in notes
    r = run("inspect", tmp_path / "d.pt", "--role", "all", "--tensors")
    line = next(ln for ln in r.output.splitlines() if "non-finite values: 1 NaN and 1 Inf" in ln)
    assert r.exit_code == 0 and line.lstrip().startswith("nan.weight")  # grouped with the model's same note


def test_inspect_golden_at_several_widths(ckpts, monkeypatch):
    monkeypatch.chdir(ckpts["keras2_mlp_epoch10.h5"].parent)  # a path of fixed length (see above)
    path = "keras2_mlp_epoch10.h5"
    for width in (40, 80, None):
        args = ["inspect", path, "--tensors"] if width is None else ["--width", width, "inspect", path, "--tensors"]
        r = run(*args, env={"COLUMNS": None} if width is None else None)
        assert r.exit_code == 0, r.output
        text = r.output
        # the table only: the reading's wording belongs to the analyzers and is tested there
        golden(f"inspect_keras2_mlp_tensors_{width or 'piped'}.txt", text.split("\nReading\n")[0] + "\n")


def test_heading_keeps_a_long_path_with_spaces_whole(ckpts, tmp_path):
    import shutil

    d = tmp_path / "a folder  with two spaces and a long name"
    d.mkdir()
    p = d / "my  model.pt"
    shutil.copy(ckpts["zip"], p)
    for args in (["inspect", p], ["diff", p, p]):
        narrow = run("--width", "40", *args).output.splitlines()
        wide = run("--width", "400", *args).output.splitlines()
        assert str(p) in narrow[0]  # the whole path on one line, its double spaces kept
        if args[0] == "inspect":
            assert wide[0].startswith(f"{p}  (torch-zip") and narrow[1].startswith("  (torch-zip")
        else:
            assert wide[0] == f"A {p} (torch-zip)  B {p} (torch-zip)" and narrow[:2] == [f"A {p} (torch-zip)",
                                                                                      f"B {p} (torch-zip)"]


def test_histogram_headers_fit_the_width(ckpts, monkeypatch):
    # run beside the file so that the path itself is short; every line then fits 40 columns
    monkeypatch.chdir(ckpts["zip"].parent)
    for args in (["inspect", "model.pt", "--hist"], ["diff", "model.pt", "model.pt", "--hist"]):
        r = run("--width", "40", *args)
        assert r.exit_code == 0, r.output
        assert "w in [" in r.output
        assert [ln for ln in r.output.splitlines() if len(ln) > 40] == [], args
