import csv
import io
import json

from cli_helpers import golden, run


def test_ls_json_schema(ckpts):
    r = run("ls", ckpts["keras3_bf16.weights.h5"], "--format", "json")
    assert r.exit_code == 0
    d = json.loads(r.output)
    assert d["schema"] == "wdist/ls/1"
    assert set(d["checkpoint"]) >= {"path", "format", "tensors", "parameters", "bytes"}
    assert d["checkpoint"]["parameters"] == 74 and d["unsafe_globals"] == []
    assert d["tensors"][0] == {"name": "d1/kernel", "layer": "d1", "role": "weight", "shape": [6, 8],
                               "dtype": "bfloat16", "numel": 48, "nbytes": 96, "aliases": []}


def test_ls_table_golden(ckpts):
    r = run("ls", ckpts["keras2_lstm.h5"])
    assert r.exit_code == 0
    golden("ls_keras2_lstm.txt", r.output.replace(str(ckpts["keras2_lstm.h5"]), "keras2_lstm.h5"))


def test_ls_csv_and_markdown(ckpts):
    r = run("ls", ckpts["zip"], "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(r.output)))
    assert rows[0]["name"] == "0.weight" and rows[0]["shape"] == "8x3x3x3"
    r = run("ls", ckpts["zip"], "--format", "markdown")
    assert "| 0.weight | 0 | weight | [8, 3, 3, 3] | float32 | 216 | 864 |" in r.output


def test_ls_reads_no_tensor_data(ckpts, monkeypatch):
    from wdist.loaders import fileio

    def boom(*a, **k):
        raise AssertionError("tensor data was read")

    monkeypatch.setattr(fileio.RangeReader, "read_raw", boom)
    assert run("ls", ckpts["st"]).exit_code == 0
    assert run("ls", ckpts["zip"]).exit_code == 0


def test_ls_golden_at_narrow_widths(ckpts):
    path = ckpts["keras2_lstm.h5"]
    for width in (40, 60):
        r = run("--width", width, "ls", path)
        assert r.exit_code == 0
        # the heading follows the width too (it was one line of path and details, however long the path)
        assert all(len(line) <= width for line in r.output.splitlines() if str(path) not in line)
        assert str(path) in r.output.splitlines()
        golden(f"ls_keras2_lstm_w{width}.txt", r.output.replace(str(path), "keras2_lstm.h5"))
