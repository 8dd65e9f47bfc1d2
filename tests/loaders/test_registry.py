"""Detection by magic bytes and a clear error for every malformed input."""

from __future__ import annotations

import pytest
from corpus import bad_files

from wdist.loaders import Format, open_checkpoint
from wdist.loaders.errors import WdistError
from wdist.loaders.registry import sniff


@pytest.mark.parametrize("key, fmt", [("zip", Format.TORCH_ZIP), ("legacy", Format.TORCH_LEGACY),
                                      ("st", Format.SAFETENSORS), ("keras2_lstm.h5", Format.KERAS_H5),
                                      ("keras3_conv.keras", Format.KERAS_ZIP)])
def test_sniff_by_content_not_extension(ckpts, tmp_path, key, fmt):
    renamed = tmp_path / "no_extension"
    renamed.write_bytes(ckpts[key].read_bytes())
    assert sniff(str(renamed)) is fmt
    assert open_checkpoint(str(renamed)).tensors


def test_input_format_override_fails_cleanly(ckpts):
    with pytest.raises(WdistError):
        open_checkpoint(str(ckpts["st"]), "keras-h5")


def test_every_bad_input_is_a_typed_error(tmp_path, ckpts):
    for what, (path, exc, match) in bad_files(tmp_path, ckpts).items():
        with pytest.raises(exc, match=match):
            open_checkpoint(str(path))
        print("ok", what)


def test_an_unlistable_subfolder_of_a_run_is_passed_over(tmp_path, monkeypatch):
    """A run folder on a volume's root has a lost+found nobody may list: trend read the steps beside it until
    a folder listing error became an error for the whole run (caught in review); it is passed over again,
    while a server's refusal of a listing stays an error (tests/loaders/test_remote_hf.py)."""
    import torch
    from safetensors.torch import save_file

    import wdist
    from wdist.loaders import fs

    for step in (100, 200):
        save_file({"w": torch.full((4, 4), float(step))}, str(tmp_path / f"step_{step}.safetensors"))
    (tmp_path / "lost+found").mkdir()
    real = fs.listdir

    def listdir(path: str) -> list[str]:
        if path.endswith("lost+found"):
            raise PermissionError(13, "Permission denied", path)  # what root cannot reproduce with a mode
        return real(path)

    monkeypatch.setattr(fs, "listdir", listdir)
    assert wdist.trend(str(tmp_path)).x_steps() == [100, 200]
