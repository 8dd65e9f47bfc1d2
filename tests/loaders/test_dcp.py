"""PyTorch Distributed Checkpoint folders written by torch.distributed.checkpoint.save in this process
(no process group: no_dist=True), read without torch.distributed through the restricted unpickler."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wdist.analyzers.inspect import Options, analyse
from wdist.loaders import Role, open_checkpoint
from wdist.loaders.errors import CorruptCheckpointError, UnsupportedFormatError, WdistError
from wdist.loaders.fmt_dcp import PLUGIN, ChunkedReader, sniff, sniff_dir

dcp = pytest.importorskip("torch.distributed.checkpoint")
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
MARKER = "/tmp/wdist-dcp-fuzz-marker"


def _save(state: dict, path: Path, **kw) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is disabled ... assuming a single process"
        dcp.save(state, no_dist=True, **kw) if "storage_writer" in kw else dcp.save(state, checkpoint_id=str(path),
                                                                                      no_dist=True, **kw)
    return path


def _model_and_optim() -> tuple[dict, dict]:
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(16, 2))
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    m(torch.randn(2, 3, 4, 4)).sum().backward()
    opt.step()
    return m.state_dict(), opt.state_dict()


@pytest.fixture(scope="module")
def train_ckpt(tmp_path_factory) -> tuple[Path, dict]:
    sd, osd = _model_and_optim()
    state = {"model": sd, "optim": osd, "step": 5, "bf": torch.randn(3, 2).to(torch.bfloat16)}
    path = _save(state, tmp_path_factory.mktemp("dcp") / "ckpt")
    flat = {f"model.{k}": v for k, v in sd.items()}
    flat.update({f"optim.state.{i}.{k}": v for i, s in osd["state"].items() for k, v in s.items()})
    flat["bf"] = state["bf"]
    return path, flat


def _split_planner(splits: dict[str, list[tuple[tuple[int, ...], tuple[int, ...]]]]):
    """A SavePlanner that writes the named tensors as several chunks, the way several FSDP/DTensor ranks
    would: each chunk is its own WriteItem with ChunkStorageMetadata(offsets, sizes)."""
    import dataclasses

    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex
    from torch.distributed.checkpoint.planner import TensorWriteData, WriteItem, WriteItemType

    class Split(DefaultSavePlanner):
        def create_local_plan(self):  # type: ignore[no-untyped-def]
            plan = super().create_local_plan()
            items = []
            for it in plan.items:
                if it.index.fqn not in splits:
                    items.append(it)
                    continue
                for offs, sz in splits[it.index.fqn]:
                    chunk = ChunkStorageMetadata(torch.Size(offs), torch.Size(sz))
                    items.append(WriteItem(index=MetadataIndex(it.index.fqn, torch.Size(offs)), type=WriteItemType.SHARD,
                                           tensor_data=TensorWriteData(chunk=chunk, properties=it.tensor_data.properties,
                                                                       size=it.tensor_data.size)))
            self.plan = dataclasses.replace(plan, items=items)
            return self.plan

        def resolve_data(self, wi):  # type: ignore[no-untyped-def]
            if wi.index.fqn not in splits:
                return super().resolve_data(wi)
            t = self.state_dict[wi.index.fqn]
            for d, (o, s) in enumerate(zip(wi.tensor_data.chunk.offsets, wi.tensor_data.chunk.sizes)):
                t = t.narrow(d, o, s)
            return t.contiguous()

    return Split()


SPLITS: dict[str, list[tuple[tuple[int, ...], tuple[int, ...]]]] = {
    "rows": [((0, 0), (3, 6)), ((3, 0), (5, 6))],  # FSDP-like Shard(0)
    "grid": [((0, 0), (2, 3)), ((0, 3), (2, 4)), ((2, 0), (3, 7))],  # 2-D: column and row pieces
    "cube": [((0, 0, 0), (2, 3, 2)), ((0, 0, 2), (2, 3, 2)), ((2, 0, 0), (1, 3, 4))],
}


@pytest.fixture(scope="module")
def sharded_ckpt(tmp_path_factory) -> tuple[Path, dict]:
    state = {"rows": torch.arange(48.0).reshape(8, 6), "grid": torch.randn(5, 7), "cube": torch.randn(3, 3, 4),
             "replicated": torch.randn(4)}
    path = _save(state, tmp_path_factory.mktemp("dcps") / "ckpt", planner=_split_planner(SPLITS))
    return path, state


def test_plain_training_state(train_ckpt):
    path, flat = train_ckpt
    ck = PLUGIN.load(str(path))
    assert ck.format == "torch-dcp" and ck.variant == "single-chunk"
    assert ck.metadata.get("step") == 5
    assert ck.unsafe_globals == [] and ck.warnings == []
    by = {t.name: t for t in ck.tensors}
    assert set(flat) <= set(by)
    for name, v in flat.items():
        np.testing.assert_array_equal(by[name].read(), v.float().numpy(), err_msg=name)
    assert by["bf"].dtype == "bfloat16" and by["model.0.weight"].dtype == "float32"
    assert by["model.1.num_batches_tracked"].dtype == "int64"
    assert by["model.0.weight"].role is Role.WEIGHT and by["model.0.weight"].unit_axis == 0
    assert by["model.0.bias"].role is Role.BIAS
    assert by["model.1.weight"].role is Role.NORM and by["model.1.bias"].role is Role.NORM
    assert by["model.1.running_mean"].role is Role.RUNNING_STAT
    assert by["optim.state.0.exp_avg"].role is Role.OPTIMIZER_STATE
    assert by["model.3.weight"].layer == "model.3"


def test_sharded_tensors_assembled_from_chunks(sharded_ckpt):
    path, state = sharded_ckpt
    ck = PLUGIN.load(str(path))
    assert ck.variant == "sharded"
    by = {t.name: t for t in ck.tensors}
    for name, v in state.items():
        np.testing.assert_array_equal(by[name].read(), v.numpy(), err_msg=name)
        # chunk boundaries never line up with the read boundaries here
        for step in (1, 5, 11):
            got = np.concatenate([c.copy() for _, c in by[name].chunks(max_elems=step)])
            np.testing.assert_array_equal(got, v.numpy().ravel(), err_msg=f"{name} step {step}")
    assert isinstance(by["grid"].reader, ChunkedReader) and len(by["grid"].reader.chunks) == 3
    assert not isinstance(by["replicated"].reader, ChunkedReader)


def test_several_storage_files(tmp_path):
    from torch.distributed.checkpoint import FileSystemWriter

    state = {f"l{i}.weight": torch.randn(3, 2) for i in range(4)}
    _save(state, tmp_path, storage_writer=FileSystemWriter(str(tmp_path / "ck"), thread_count=2))
    files = sorted(n for n in os.listdir(tmp_path / "ck") if n.endswith(".distcp"))
    assert len(files) == 2
    ck = PLUGIN.load(str(tmp_path / "ck"))
    assert {t.source for t in ck.tensors} == set(files)
    for t in ck.tensors:
        np.testing.assert_array_equal(t.read(), state[t.name].numpy())


def test_detection_and_path_forms(train_ckpt, tmp_path):
    path, _ = train_ckpt
    meta = path / ".metadata"
    assert sniff(meta.read_bytes()[:4096], str(meta))
    assert sniff_dir(str(path)) and not sniff_dir(str(tmp_path))
    assert open_checkpoint(str(meta)).format == "torch-dcp"  # the .metadata file names the folder
    shard = next(p for p in path.iterdir() if p.suffix == ".distcp")
    assert open_checkpoint(str(shard)).format == "torch-dcp"
    with pytest.raises(UnsupportedFormatError):
        PLUGIN.load(str(tmp_path))


def _rewrite_metadata(src: Path, dst: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    """A copy of the folder whose Metadata object (unpickled here by the test, which trusts it) was edited."""
    shutil.copytree(src, dst)
    with open(dst / ".metadata", "rb") as f:
        md = pickle.load(f)
    edit(md)
    with open(dst / ".metadata", "wb") as f:
        pickle.dump(md, f)
    return dst


def test_hostile_metadata_is_refused(sharded_ckpt, tmp_path):
    path, _ = sharded_ckpt

    def storage(md):  # type: ignore[no-untyped-def]
        return next(v for k, v in md.storage_data.items() if k.fqn == "replicated")

    def traversal(md):  # type: ignore[no-untyped-def]
        storage(md).relative_path = "../../etc/passwd.distcp"

    def past_end(md):  # type: ignore[no-untyped-def]
        storage(md).offset = 10 ** 9

    def overlap(md):  # type: ignore[no-untyped-def]
        md.state_dict_metadata["grid"].chunks[1].offsets = torch.Size((0, 2))

    def outside(md):  # type: ignore[no-untyped-def]
        md.state_dict_metadata["rows"].chunks[1].sizes = torch.Size((9, 6))

    def wrong_dtype(md):  # type: ignore[no-untyped-def]
        md.state_dict_metadata["replicated"].properties.dtype = torch.float16

    def transforms(md):  # type: ignore[no-untyped-def]
        storage(md).transform_descriptors = ["zstd"]

    for edit, match in ((traversal, "not a .distcp file of this folder"), (past_end, "outside"),
                        (overlap, "overlap|elements"), (outside, "outside its shape"), (wrong_dtype, "dtype"),
                        (transforms, "transforms")):
        d = _rewrite_metadata(path, tmp_path / edit.__name__, edit)
        with pytest.raises(CorruptCheckpointError, match=match):
            PLUGIN.load(str(d))
    shutil.copytree(path, tmp_path / "trunc")
    f = next(p for p in (tmp_path / "trunc").iterdir() if p.suffix == ".distcp")
    f.write_bytes(f.read_bytes()[:300])
    with pytest.raises(CorruptCheckpointError):
        PLUGIN.load(str(tmp_path / "trunc"))
    (tmp_path / "trunc" / ".metadata").write_bytes(b"\x80\x04K\x05.")
    with pytest.raises(CorruptCheckpointError, match="Metadata"):
        PLUGIN.load(str(tmp_path / "trunc"))


class Payload:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {MARKER}",))


def test_payload_in_metadata_never_runs(train_ckpt, tmp_path):
    path, _ = train_ckpt

    def evil(md):  # type: ignore[no-untyped-def]
        md.planner_data = Payload()

    d = _rewrite_metadata(path, tmp_path / "evil", evil)
    ck = PLUGIN.load(str(d))
    assert not os.path.exists(MARKER)
    assert "posix.system" in ck.unsafe_globals and ck.warnings
    assert len(ck.tensors) > 0


def test_cli_ls_inspect_diff_check(train_ckpt, tmp_path):
    path, flat = train_ckpt
    r = run("ls", str(path / ".metadata"), "--format", "json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["checkpoint"]["format"] == "torch-dcp"
    assert {t["name"] for t in doc["tensors"]} >= set(flat)
    r = run("inspect", str(path / ".metadata"), "--format", "json", "-j", "1")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    w = next(t for t in doc["tensors"] if t["name"] == "model.0.weight")
    assert w["stats"]["l2_norm"] == pytest.approx(float(flat["model.0.weight"].double().norm()), rel=1e-6)
    # the same weights as a torch.save file: every model tensor matches (the "model." prefix is a wrapper)
    sd = {k[len("model."):]: v for k, v in flat.items() if k.startswith("model.")}
    torch.save(sd, tmp_path / "same.pt")
    r = run("diff", str(tmp_path / "same.pt"), str(path / ".metadata"), "--format", "json", "-j", "1")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    matched = [t for t in d["tensors"] if t["status"] == "matched"]
    assert len(matched) == 6 and all(t["change"]["rel_l2_change"] == 0 for t in matched)
    r = run("check", str(path / ".metadata"), "--rule", "model: nan_count == 0", "--no-config", "-j", "1")
    assert r.exit_code == 0, r.output


def _folder_bytes(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in path.iterdir()}


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=6),
       which=st.sampled_from([".metadata", "__0_0.distcp"]))
def test_fuzz_metadata_and_storage(sharded_ckpt, tmp_path_factory, edits, which):
    path, _ = sharded_ckpt
    d = tmp_path_factory.mktemp("fz")
    for name, data in _folder_bytes(path).items():
        b = bytearray(data)
        if name == which:
            for pos, val in edits:
                b[pos % len(b)] = val
        (d / name).write_bytes(bytes(b))
    try:
        ck = open_checkpoint(str(d / ".metadata"))
        analyse(ck, Options(jobs=1, roles=tuple(Role)))
    except WdistError:
        pass
    assert not os.path.exists(MARKER)


def test_reads_are_bounded_to_the_needed_chunk_bytes(sharded_ckpt, monkeypatch):
    """A read of a few elements touches only the chunks holding them, never whole chunks."""
    path, state = sharded_ckpt
    ck = PLUGIN.load(str(path))
    grid = next(t for t in ck.tensors if t.name == "grid")
    seen: list[int] = []
    real = os.preadv

    def spy(fd, bufs, pos):  # type: ignore[no-untyped-def]
        seen.append(sum(len(b) for b in bufs))
        return real(fd, bufs, pos)

    monkeypatch.setattr(os, "preadv", spy)
    got = grid.reader.read_raw(3, 2)  # row 0, cols 3..4: only chunk 2 (offsets (0, 3))
    np.testing.assert_array_equal(got, state["grid"].numpy().ravel()[3:5])
    assert seen == [8]


_TWO_RANKS = '''
import os, sys, warnings
import torch, torch.distributed as dist, torch.multiprocessing as mp

def worker(rank, out, port):
    warnings.simplefilter("ignore")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor
    import torch.distributed.checkpoint as dcp
    mesh = init_device_mesh("cpu", (2,))
    full = {"w0": torch.arange(35.).reshape(7, 5), "w1": torch.arange(24.).reshape(4, 6), "rep": torch.ones(3)}
    sd = {"w0": distribute_tensor(full["w0"], mesh, [Shard(0)]), "w1": distribute_tensor(full["w1"], mesh, [Shard(1)]),
          "rep": distribute_tensor(full["rep"], mesh, [Replicate()])}
    dcp.save(sd, checkpoint_id=out)
    dist.destroy_process_group()

if __name__ == "__main__":
    mp.spawn(worker, args=(sys.argv[1], sys.argv[2]), nprocs=2)
'''


@pytest.mark.slow
def test_two_rank_dtensor_checkpoint(tmp_path):
    """Two real gloo ranks save DTensors sharded on dim 0 and dim 1 plus a replicated one (~30 s)."""
    import socket
    import subprocess
    import sys

    script = tmp_path / "two_ranks.py"
    script.write_text(_TWO_RANKS)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    subprocess.run([sys.executable, str(script), str(tmp_path / "ck"), port], check=True, timeout=300,
                   capture_output=True)
    assert sorted(n for n in os.listdir(tmp_path / "ck") if n.endswith(".distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    ck = open_checkpoint(str(tmp_path / "ck" / ".metadata"))
    by = {t.name: t for t in ck.tensors}
    assert ck.variant == "sharded"
    np.testing.assert_array_equal(by["w0"].read(), np.arange(35.0).reshape(7, 5))
    np.testing.assert_array_equal(by["w1"].read(), np.arange(24.0).reshape(4, 6))
    np.testing.assert_array_equal(by["rep"].read(), np.ones(3))
    assert len(by["w1"].reader.chunks) == 2 and by["w1"].source == "__0_0.distcp,__1_0.distcp"


def test_chunks_of_one_layout_run_the_pickle_vm_once(tmp_path, monkeypatch):
    """Every chunk of the same dtype, shape and layout pickles to the same data.pkl bytes: one load runs the
    pickle VM once for them (plus once for .metadata), and each chunk still reads its own data."""
    import wdist.loaders.safe_pickle as sp

    g = torch.Generator().manual_seed(3)
    state = {f"blocks.{i}.weight": torch.randn(6, 5, generator=g) * (i + 1) for i in range(40)}
    state["head.bias"] = torch.randn(7, generator=g)
    _save(state, tmp_path / "ck")
    calls = []
    real = sp.safe_load
    monkeypatch.setattr(sp, "safe_load", lambda *a, **k: calls.append(k.get("what")) or real(*a, **k))
    ck = open_checkpoint(str(tmp_path / "ck"))
    assert len(calls) == 3  # .metadata, the 6x5 float32 layout, the 7-element one
    got = {t.name: t.read() for t in ck.tensors}
    assert got.keys() == state.keys()
    for k, v in state.items():
        np.testing.assert_array_equal(got[k], v.numpy())


def _shards_in(src: Path, dst: Path, link: bool) -> Path:
    """A new folder holding the .distcp shards of `src`: symlinks to them (`link`) or copies."""
    dst.mkdir()
    for f in src.iterdir():
        if f.name.endswith(".distcp"):
            if link:
                os.symlink(f, dst / f.name)
            else:
                shutil.copy(f, dst / f.name)
    return dst


def test_storage_file_symlinked_out_of_the_folder_is_refused(tmp_path):
    """A .distcp that is a symlink to another checkpoint's shard outside the folder was followed (the other
    run's values reached the report, exit 0): shards are resolved and must stay inside the folder."""
    other = _save({"w": torch.full((8, 8), 7777.0)}, tmp_path / "other")
    d = _shards_in(other, tmp_path / "ckpt", link=True)
    shutil.copy(other / ".metadata", d / ".metadata")
    with pytest.raises(CorruptCheckpointError, match="outside"):
        open_checkpoint(str(d))
    r = run("inspect", str(d))
    assert r.exit_code == 2 and "7777" not in r.output and r.output.count("\n") == 1
    with open_checkpoint(str(other)) as ck:  # the same files in their own folder are read
        assert ck.tensors[0].read().max() == 7777.0


@pytest.mark.parametrize("view", ["t", "permute"])
def test_a_transposed_tensor_saved_by_dcp_is_read_exactly(tmp_path, view):
    import numpy as np
    import torch.distributed.checkpoint as dcp

    import wdist

    torch.manual_seed(0)
    w = torch.randn(8, 6) if view == "t" else torch.randn(3, 4, 5)
    v = w.t() if view == "t" else w.permute(2, 0, 1)
    assert not v.is_contiguous()
    dcp.save({"model": {"a.weight": v}}, checkpoint_id=str(tmp_path / "ck"))
    rep = wdist.inspect(str(tmp_path / "ck"))
    t = rep.tensors[0]
    ref = v.contiguous().numpy().astype(np.float64)
    assert t.shape == list(v.shape)
    assert t.stats["min"] == ref.min() and t.stats["max"] == ref.max()
    assert t.stats["mean"] == pytest.approx(ref.mean(), rel=1e-6, abs=1e-9)
    assert t.stats["l2_norm"] == pytest.approx(float(np.sqrt((ref ** 2).sum())), rel=1e-6)
    # element order too: a diff against the same values saved contiguously reports no change
    torch.save({"model.a.weight": v.contiguous()}, tmp_path / "c.pt")
    d = wdist.diff(str(tmp_path / "c.pt"), str(tmp_path / "ck")).to_dict()
    assert d["tensors"][0]["change"]["max_abs_change"] == 0, d["tensors"][0]


def test_metadata_symlinked_out_of_the_folder_is_refused(tmp_path):
    """A folder whose .metadata is a symlink to another run's (found by review: its copies of the shards
    were then read under the other run's metadata, exit 0) is refused like a shard symlinked out; a
    .metadata named on the command line is the user's choice, and a symlink inside the folder is fine."""
    other = _save({"w": torch.full((4, 4), 7777.0)}, tmp_path / "A")
    d = _shards_in(other, tmp_path / "C", link=False)
    os.symlink(os.path.join("..", "A", ".metadata"), d / ".metadata")
    shard = next(d.glob("*.distcp"))
    for target in (d, shard):
        with pytest.raises(CorruptCheckpointError, match="'.metadata' resolves outside the checkpoint's folder"):
            open_checkpoint(str(target))
        r = run("ls", str(target))
        assert r.exit_code == 2 and "7777" not in r.output and r.output.count("\n") == 1, r.output
        assert r.output.startswith(f"wdist: error: {target}: "), r.output
    with open_checkpoint(str(d / ".metadata")) as ck:  # named explicitly: read against this folder's shards
        assert ck.tensors[0].read().max() == 7777.0
    (d / ".metadata").unlink()
    shutil.copy(other / ".metadata", d / "metadata.real")
    os.symlink("metadata.real", d / ".metadata")
    with open_checkpoint(str(d)) as ck:
        assert [t.name for t in ck.tensors] == ["w"]


# ---- review of 2026-12-04 (fifth session): chunk layouts checked exactly, items read as torch reads them ----

N_ROWS = 300  # more chunks than the pairwise overlap check covered (256): holes were read as zeros


@pytest.fixture(scope="module")
def many_chunks(tmp_path_factory) -> tuple[Path, torch.Tensor]:
    w = torch.full((N_ROWS, 4), float("nan"))
    w[0] = 1.0
    splits = {"fc.weight": [((i, 0), (1, 4)) for i in range(N_ROWS)]}
    return _save({"fc.weight": w}, tmp_path_factory.mktemp("many") / "ckpt", planner=_split_planner(splits)), w


def test_three_hundred_chunks_read_exactly(many_chunks):
    path, w = many_chunks
    with open_checkpoint(str(path)) as ck:
        (t,) = ck.tensors
        assert isinstance(t.reader, ChunkedReader) and len(t.reader.chunks) == N_ROWS
        np.testing.assert_array_equal(t.read(), w.numpy())


def test_overlapping_chunks_are_refused_whatever_their_number(many_chunks, tmp_path):
    """Every chunk but the first moved onto the first row: the sizes still add up, 299 rows are holes (they
    read as zeros, and a nan_count == 0 gate passed on a tensor of 1,196 NaNs), refused before any item is
    opened (copies of one chunk); and one chunk of 300 moved onto its neighbour."""
    path, _ = many_chunks

    def onto_first(md):  # type: ignore[no-untyped-def]
        for c in md.state_dict_metadata["fc.weight"].chunks[1:]:
            c.offsets = torch.Size((0, 0))

    def one_overlap(md):  # type: ignore[no-untyped-def]
        md.state_dict_metadata["fc.weight"].chunks[150].offsets = torch.Size((149, 0))

    for i, edit in enumerate((onto_first, one_overlap)):
        bad = _rewrite_metadata(path, tmp_path / f"bad{i}", edit)
        with pytest.raises(CorruptCheckpointError, match="two chunks at|chunks overlap"):
            open_checkpoint(str(bad))
        r = run("check", str(bad), "--no-config", "--rule", "model: nan_count == 0")
        assert r.exit_code == 2 and r.output.splitlines()[-1].startswith(f"wdist: error: {bad}: tensor 'fc.weight'")


def test_overlap_check_is_exact_on_grids():
    from wdist.loaders.fmt_dcp import MAX_GRID_CELLS, Chunk, overlap

    def ch(offs, sizes):  # type: ignore[no-untyped-def]
        return Chunk(tuple(offs), tuple(sizes), None)

    # a brick layout (rows split at different columns) tiles; shifting one brick by one column overlaps
    bricks = [ch((r, c), (1, 3)) for r in range(0, 8, 2) for c in (0, 3, 6)] + \
             [ch((r, c), (1, n)) for r in range(1, 8, 2) for c, n in ((0, 2), (2, 3), (5, 4))]
    assert overlap(bricks, (8, 9)) is None
    shifted = [*bricks[:-1], ch((7, 4), (1, 4))]
    assert "overlap" in (overlap(shifted, (8, 9)) or "")
    assert overlap([ch((0,), (0,)), ch((0,), (4,))], (4,)) is None  # an empty chunk covers nothing
    cube = [ch((i, j, k), (1, 1, 1)) for i in range(3) for j in range(3) for k in range(3)]
    assert overlap(cube, (3, 3, 3)) is None and overlap([*cube, cube[13]], (3, 3, 3)) is not None
    # 2^13 thin rows by 2^12 thin columns cut the tensor into more cells than are checked: refused
    thin = [ch((i, 0), (1, 1)) for i in range(1 << 13)] + [ch((0, j), (1, 1)) for j in range(1, 1 << 12)]
    assert "cells" in (overlap(thin, (1 << 13, 1 << 12)) or "") and MAX_GRID_CELLS < (1 << 25)


def test_chunks_sharing_one_stored_item_are_refused(many_chunks, tmp_path):
    """Chunks at their own offsets whose storage entries all name the first chunk's item: each would read
    the same bytes (2,000 such 4 MB chunks analysed 8 GB from a 4 MB folder)."""
    path, _ = many_chunks

    def shared(md):  # type: ignore[no-untyped-def]
        first = next(v for k, v in md.storage_data.items() if k.fqn == "fc.weight" and tuple(k.offset) == (0, 0))
        for k in md.storage_data:
            if k.fqn == "fc.weight":
                md.storage_data[k] = first

    bad = _rewrite_metadata(path, tmp_path / "shared", shared)
    with pytest.raises(CorruptCheckpointError, match="overlapping bytes"):
        open_checkpoint(str(bad))


def test_item_with_two_members_of_one_name_is_refused(tmp_path):
    """An item zip holding archive/data/0 twice (NaN and ones): torch.load and Python's zipfile need not
    take the same one (the review saw torch read the NaN copy while wdist read the ones and passed a
    nan_count gate); wdist refuses it, as it refuses such a torch zip."""
    import io
    import zipfile

    out = _save({"fc.weight": torch.full((4, 4), float("nan"))}, tmp_path / "dup")
    with open(out / ".metadata", "rb") as f:
        md = pickle.load(f)
    ((_k, v0),) = [(k, v) for k, v in md.storage_data.items() if k.fqn == "fc.weight"]
    (shard,) = list(out.glob("*.distcp"))
    raw = shard.read_bytes()
    zin = zipfile.ZipFile(io.BytesIO(raw[v0.offset:v0.offset + v0.length]))
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        warnings.simplefilter("ignore")  # "Duplicate name"
        for n in zin.namelist():
            z.writestr(n, zin.read(n))
            if n.endswith("/data/0"):
                z.writestr(n, np.ones(16, np.float32).tobytes())
    new = buf.getvalue()
    names = zipfile.ZipFile(io.BytesIO(new)).namelist()
    assert len([n for n in names if n.endswith("/data/0")]) == 2  # two readers may take either
    shard.write_bytes(raw[:v0.offset] + new + raw[v0.offset + v0.length:])
    for v in md.storage_data.values():
        if v.offset > v0.offset:
            v.offset += len(new) - v0.length
    v0.length = len(new)
    with open(out / ".metadata", "wb") as f:
        pickle.dump(md, f)
    with pytest.raises(CorruptCheckpointError, match="two members named"):
        open_checkpoint(str(out))
