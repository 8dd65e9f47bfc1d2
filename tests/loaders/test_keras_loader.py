import h5py
import numpy as np
import pytest

from wdist.loaders import Format, Role, open_checkpoint
from wdist.loaders.errors import CorruptCheckpointError


def test_keras2_full_model(ckpts):
    ck = open_checkpoint(str(ckpts["keras2_mlp_epoch1.h5"]))
    assert ck.format == Format.KERAS_H5 and ck.variant == "keras2-model"
    assert ck.metadata["keras_version"] == "2.21.0"
    model = [t for t in ck.tensors if t.role is not Role.OPTIMIZER_STATE]
    assert [t.name for t in model] == ["hidden/kernel", "hidden/bias", "logits/kernel", "logits/bias"]
    k = model[0]
    assert k.layer == "hidden" and k.role is Role.WEIGHT and k.shape == (12, 24) and k.unit_axis == 1
    with h5py.File(ckpts["keras2_mlp_epoch1.h5"], "r") as h:
        np.testing.assert_array_equal(k.read(), h["model_weights/hidden/hidden/kernel:0"][()])
    opt = [t.name for t in ck.tensors if t.role is Role.OPTIMIZER_STATE]
    assert "optimizer/Adam/m/hidden/kernel" in opt


def test_keras2_weights_only_and_lstm(ckpts):
    ck = open_checkpoint(str(ckpts["keras2_mlp_weights.h5"]))
    assert ck.variant == "keras2-weights" and len(ck.tensors) == 4
    ck = open_checkpoint(str(ckpts["keras2_lstm.h5"]))
    by = {t.name: t for t in ck.tensors}
    assert by["embed/embeddings"].role is Role.EMBEDDING
    assert by["lstm/lstm_cell/recurrent_kernel"].shape == (5, 20)
    assert by["conv1d/kernel"].shape == (3, 8, 6) and by["conv1d/kernel"].unit_axis == 2


def test_keras2_split_layer_names(ckpts):
    ck = open_checkpoint(str(ckpts["keras2_many_layers.h5"]))
    assert [t.layer for t in ck.tensors] == ["first_dense", "first_dense", "last_dense", "last_dense"]


@pytest.mark.parametrize("name", ["keras3_conv.weights.h5", "keras3_conv.keras"])
def test_keras3_names_from_vars_attribute(ckpts, name):
    ck = open_checkpoint(str(ckpts[name]))
    by = {t.name: t for t in ck.tensors}
    assert {"stem/kernel", "stem/bias", "stem_bn/gamma", "stem_bn/moving_variance", "dw/kernel", "head/kernel"} <= set(by)
    assert by["stem_bn/gamma"].role is Role.NORM and by["stem_bn/moving_mean"].role is Role.RUNNING_STAT
    assert by["stem/kernel"].shape == (3, 3, 3, 4)
    if name.endswith(".keras"):
        assert ck.format == Format.KERAS_ZIP and ck.metadata["keras_version"] == "3.15.1"


def test_keras3_archive_equals_weights_file(ckpts):
    a = {t.name: t.read() for t in open_checkpoint(str(ckpts["keras3_conv.keras"])).tensors}
    b = {t.name: t.read() for t in open_checkpoint(str(ckpts["keras3_conv.weights.h5"])).tensors}
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_keras3_bf16(ckpts):
    ck = open_checkpoint(str(ckpts["keras3_bf16.weights.h5"]))
    t = next(t for t in ck.tensors if t.name == "d1/kernel")
    assert t.dtype == "bfloat16" and t.shape == (6, 8)
    with h5py.File(ckpts["keras3_bf16.weights.h5"], "r") as h:
        raw = h["layers/dense/vars/0"][()].view("<u2").astype(np.uint32) << 16
    np.testing.assert_array_equal(t.read(), raw.view(np.float32))


def test_hdf5_without_weights(tmp_path):
    p = tmp_path / "empty.h5"
    with h5py.File(p, "w") as h:
        h.create_dataset("x", data=np.arange(3))
    with pytest.raises(CorruptCheckpointError, match="no Keras weights"):
        open_checkpoint(str(p))
