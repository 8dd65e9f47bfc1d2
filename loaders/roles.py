"""Role and layer inference from tensor names, shared by every loader."""

from __future__ import annotations

import re

from wdist.loaders.model import FLOAT_DTYPES, Role, TensorRef

_RUNNING = {"running_mean", "running_var", "num_batches_tracked", "moving_mean", "moving_variance"}
_NORM_PARAMS = {"gamma", "beta", "scale"}
_NORM_LAYER = re.compile(r"(^|[._/])(bn|ln|norm|batchnorm|layernorm|groupnorm|rmsnorm|\w*_?norm\w*|\w*_bn)([._/]|\d|$)",
                         re.IGNORECASE)
_EMBED = re.compile(r"(embed|(^|[._/])emb([._/]|$)|wte|wpe|tok_embeddings|word_embeddings|position_embeddings)", re.IGNORECASE)


def split_name(name: str, sep: str = ".") -> tuple[str, str]:
    """'features.0.weight' -> ('features.0', 'weight'); a bare name is its own layer."""
    if sep in name:
        layer, param = name.rsplit(sep, 1)
        return layer, param
    return name, name


def infer_role(name: str, layer: str, param: str, shape: tuple[int, ...], dtype: str) -> Role:
    if param in _RUNNING:
        return Role.RUNNING_STAT
    if dtype not in FLOAT_DTYPES:
        return Role.OTHER
    if param in _NORM_PARAMS:
        return Role.NORM
    if len(shape) >= 2 and _EMBED.search(name):
        return Role.EMBEDDING
    if param.endswith("bias"):
        return Role.NORM if _NORM_LAYER.search(layer) else Role.BIAS
    if len(shape) == 1 and (param.endswith("weight") or _NORM_LAYER.search(layer)):
        return Role.NORM
    if len(shape) >= 2:
        return Role.WEIGHT
    return Role.OTHER


def fix_norm_biases(tensors: list[TensorRef]) -> None:
    """A bias next to a 1-D 'weight' (BatchNorm/LayerNorm) is a norm parameter, whatever the layer is called."""
    norm_layers = {t.layer for t in tensors if t.role is Role.NORM or t.role is Role.RUNNING_STAT}
    for t in tensors:
        if t.role is Role.BIAS and t.layer in norm_layers:
            t.role = Role.NORM


def default_unit_axis(role: Role, ndim: int, keras: bool) -> int | None:
    if ndim < 2 or role not in (Role.WEIGHT, Role.EMBEDDING):
        return None
    if keras and role is Role.WEIGHT:
        return ndim - 1
    return 0
