"""Role and layer inference from tensor names, shared by every loader."""

from __future__ import annotations

import re

from wdist.loaders.model import FLOAT_DTYPES, Role, TensorRef

# Top-level keys of a training checkpoint (torch.save of a dict, or the same dict in memory): the model's
# tensors are named without their key's prefix, as the model's state_dict() names them; the optimizer's are
# optimizer state; these scalars are kept as metadata.
MODEL_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "model_state")
OPTIMIZER_KEYS = ("optimizer", "optimizer_states", "optimizer_state_dict", "optimizer_state", "optim", "opt")
META_KEYS = ("epoch", "global_step", "step", "iteration", "best_score", "pytorch-lightning_version", "lr")


def is_optimizer_key(key: object) -> bool:
    return key in OPTIMIZER_KEYS or "optimizer" in str(key)


_RUNNING = {"running_mean", "running_var", "num_batches_tracked", "moving_mean", "moving_variance"}
_NORM_PARAMS = {"gamma", "beta", "scale"}
_NORM_NAMES = {"bn", "ln", "norm", "batchnorm", "layernorm", "groupnorm", "rmsnorm"}
_TOKENS = re.compile(r"[._/]")
# Hugging Face GPT-2 style Conv1D modules store their weight as [in, out] (q_attn: GPT-2 cross-attention)
_CONV1D_LAYERS = {"c_attn", "c_proj", "c_fc", "q_attn"}
# torch.nn.ConvTranspose weights are [in, out/groups, *k]: output units along axis 1. A state dict says so
# only through its module's name (deconv1, conv_transpose, transposed_conv, ConvTranspose2d_0)
_TRANSPOSED = re.compile(r"(de_?conv|conv_?transpose|transpose_?conv|transposed_?conv)[0-9]*(_[0-9]+)?", re.IGNORECASE)
# torch.nn.RNN/LSTM/GRU parameters: weight_ih_l0, bias_hh_l1_reverse, weight_hr_l0 (LSTM projections);
# the cells (LSTMCell, GRUCell, RNNCell) name theirs bias_ih / bias_hh
_RNN_BIAS = re.compile(r"bias_(ih|hh)(_l[0-9]+(_reverse)?)?")
_EMBED = re.compile(r"(embed|(^|[._/])emb([._/]|$)|wte|wpe|tok_embeddings|word_embeddings|position_embeddings)", re.IGNORECASE)
# learned tokens and position tables added to or substituted for the inputs (ViT/DeiT cls and distillation
# tokens, masked-modelling mask tokens, register tokens): embeddings, often initialised to zero
_TOKEN = re.compile(r"(cls|class|mask|dist|distillation|reg|register)_tokens?|pos_embed|position_embeddings?",
                    re.IGNORECASE)
# additive tables of relative-position biases (Swin, T5's relative_attention_bias is an nn.Embedding and
# stays one): biases, zero at init in Hugging Face's Swin
_BIAS_TABLE = re.compile(r".*bias_table")


_DIGITS = re.compile(r"[0-9]+")


def _digit_run(m: re.Match) -> str:
    d = m.group().lstrip("0") or "0"
    return f"\0{len(d):08x}{d}"


def natural_key(s: str) -> str:
    """Natural sort key, shared by every sort of names: 'layers.2' before 'layers.10'. One string per name (a million keys live at once
    during the sort): each run of ASCII digits becomes NUL, its length without leading zeros in 8 hex
    digits, then the digits, so runs compare by numeric value and a name that stops where another goes on
    with a number sorts first. No int() conversion: a 5,000-digit run in a name is just a long key."""
    return _DIGITS.sub(_digit_run, s)


def split_name(name: str, sep: str = ".") -> tuple[str, str]:
    """'features.0.weight' -> ('features.0', 'weight'); a bare name is its own layer."""
    if sep in name:
        layer, param = name.rsplit(sep, 1)
        return layer, param
    return name, name


def _norm_layer(layer: str) -> bool:
    """Whether a module path names a normalisation layer ('bn1', 'encoder.layer_norm', 'conv_bn2', 'ln_f').
    Token by token, so the work is linear in the name's length (a regex with nested \\w* was quadratic)."""
    for tok in _TOKENS.split(layer.lower()):
        base = tok.rstrip("0123456789")
        if base in _NORM_NAMES or "norm" in tok:
            return True
    return False


def infer_role(name: str, layer: str, param: str, shape: tuple[int, ...], dtype: str) -> Role:
    if param in _RUNNING:
        return Role.RUNNING_STAT
    if dtype not in FLOAT_DTYPES:
        return Role.OTHER
    if param in _NORM_PARAMS:
        return Role.NORM
    if _table_shape(shape) and (_EMBED.search(name) or _TOKEN.fullmatch(param) or _shared_table(layer, param)):
        return Role.EMBEDDING
    if param.endswith("bias") or _RNN_BIAS.fullmatch(param) or _BIAS_TABLE.fullmatch(param):
        return Role.NORM if _norm_layer(layer) else Role.BIAS
    if len(shape) == 1 and (param.endswith("weight") or _norm_layer(layer)):
        return Role.NORM
    if len(shape) >= 2:
        return Role.WEIGHT
    if len(shape) == 1 and (_TOKEN.fullmatch(param) or _EMBED.search(param)):
        return Role.EMBEDDING  # CLIP's class_embedding, wav2vec2's masked_spec_embed: one learned vector
    return Role.OTHER


def _table_shape(shape: tuple[int, ...]) -> bool:
    """An embedding table is 2-D ([rows, dim]) or one with leading axes of 1 ([1, tokens, dim]: ViT's
    pos_embed); a 4-D patch_embed / pos_conv_embed kernel is a conv weight, whatever its module's name."""
    return len(shape) >= 2 and all(d == 1 for d in shape[:-2])


def _shared_table(layer: str, param: str) -> bool:
    # T5, BART, MBart, Marian, Pegasus: the token embedding shared by encoder and decoder is `shared.weight`
    return param == "weight" and (layer == "shared" or layer.endswith((".shared", "/shared")))


def fix_norm_biases(tensors: list[TensorRef]) -> None:
    """Post-pass shared by every loader. A bias next to a 1-D 'weight' (BatchNorm/LayerNorm) is a norm
    parameter, whatever the layer is called; GPT-2-style Conv1D weights (`c_attn`, `c_proj`, `c_fc`, stored
    [in, out]) have their output units along the last axis, and transposed convolutions named so (`deconv1`,
    `conv_transpose`) along axis 1."""
    norm_layers = {t.layer for t in tensors if t.role is Role.NORM or t.role is Role.RUNNING_STAT}
    for t in tensors:
        if t.role is Role.BIAS and t.layer in norm_layers:
            t.role = Role.NORM
        elif t.role is Role.WEIGHT and t.unit_axis == 0:
            module = re.split(r"[./]", t.layer)[-1]
            if (len(t.shape) == 2 and module in _CONV1D_LAYERS) or (len(t.shape) >= 3 and _TRANSPOSED.fullmatch(module)):
                t.unit_axis = 1


def is_token_table(param: str) -> bool:
    """Whether a parameter name (the last part of a tensor's name) is a learned token or position table
    (cls_token, mask_token, pos_embed, position_embeddings, ...), which models commonly initialise to zero."""
    return bool(_TOKEN.fullmatch(param))


def default_unit_axis(role: Role, ndim: int, keras: bool) -> int | None:
    if ndim < 2 or role not in (Role.WEIGHT, Role.EMBEDDING):
        return None
    if keras and role is Role.WEIGHT:
        return ndim - 1
    if role is Role.EMBEDDING:
        return ndim - 2  # the rows of the table: [1, tokens, dim] has its tokens along axis 1
    return 0
