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
