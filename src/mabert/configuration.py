"""Configs for MA-BERT and MA-DistilBERT: the base architectures' configs plus one switch per technique."""
from __future__ import annotations

from transformers import BertConfig, DistilBertConfig

from .choices import (ATTENTION_APPROXIMATOR, ATTENTION_KINDS, BACKWARD_EXACT, FFN_RELU, MASK_MODES,
                      MASK_MULTIPLY, NORM_POWER, NORM_TYPES, POOLER_ACTIVATIONS, POOLER_TANH, POWERNORM_BACKWARDS)
from .registry import BERT, DISTILBERT


def _ma_settings(
    use_softmax_approx: bool = True,
    share_softmax_nn: bool = False,
    softmax_input_size: int = 128,
    softmax_hidden_layer_size: int = 128,
    softmax_mask_mode: str = MASK_MULTIPLY,
    norm_type: str = NORM_POWER,
    warmup_updates: int = 997120,
    accumulation_step: int = 8,
    ffn_hidden_act: str = FFN_RELU,
    activation_bounds: bool = False,
    attention_kind: str = ATTENTION_APPROXIMATOR,
    powernorm_backward: str = BACKWARD_EXACT,
) -> dict:
    """The MA technique settings, defaults as in the MA-BERT release except `powernorm_backward`, checked once for
    both configs.
    `activation_bounds` (not in the release) clamps every PowerNorm output and the logits at inference to ranges
    calibrated on training data (`mabert.bounds`), so no input can make the model overflow. `attention_kind`
    "relu" (not in the release) uses ReLU(scores)/L instead of the approximator, "poly" softmax itself evaluated with
    matrix arithmetic and ReLU (`mabert.softmax_approx.PolySoftmax`).
    `powernorm_backward` (training only) is "exact" (autograd through the batch statistic; not the release's) or
    "approximate" (the release's PowerNorm backward with its running correction; see `mabert.powernorm`)."""
    norm_type = str(norm_type).lower()
    if norm_type not in NORM_TYPES:
        raise ValueError(f"norm_type must be one of {NORM_TYPES}, got {norm_type!r}")
    if softmax_mask_mode not in MASK_MODES:
        raise ValueError(f"softmax_mask_mode must be one of {MASK_MODES}, got {softmax_mask_mode!r}")
    if attention_kind not in ATTENTION_KINDS:
        raise ValueError(f"attention_kind must be one of {ATTENTION_KINDS}, got {attention_kind!r}")
    if powernorm_backward not in POWERNORM_BACKWARDS:
        raise ValueError(f"powernorm_backward must be one of {POWERNORM_BACKWARDS}, got {powernorm_backward!r}")
    if attention_kind != ATTENTION_APPROXIMATOR and share_softmax_nn:
        raise ValueError(f"share_softmax_nn does not apply to attention_kind={attention_kind!r} "
                         "(it has no parameters to share)")
    return dict(
        use_softmax_approx=bool(use_softmax_approx),
        share_softmax_nn=bool(share_softmax_nn),
        softmax_input_size=int(softmax_input_size),
        softmax_hidden_layer_size=int(softmax_hidden_layer_size),
        softmax_mask_mode=softmax_mask_mode,
        norm_type=norm_type,
        warmup_updates=int(warmup_updates),
        accumulation_step=int(accumulation_step),
        ffn_hidden_act=ffn_hidden_act,
        activation_bounds=bool(activation_bounds),
        attention_kind=attention_kind,
        powernorm_backward=powernorm_backward,
    )


_MA_KEYS = tuple(_ma_settings().keys())


def _split_ma_kwargs(kwargs: dict) -> dict:
    return {key: kwargs.pop(key) for key in _MA_KEYS if key in kwargs}


class MABertConfig(BertConfig):
    """BertConfig plus the MA-BERT switches.

    `hidden_act` keeps its BERT meaning for the MLM prediction head (GELU upstream);
    `ffn_hidden_act` is the encoder feed-forward activation (ReLU in MA-BERT).
    `pooler_act` is the pooler's activation: "tanh" as in BERT, or "relu"/"identity" for a
    pooler with no transcendental function.
    """

    model_type = BERT.ma_model_type

    def __init__(self, pooler_act: str = POOLER_TANH, **kwargs):
        ma = _ma_settings(**_split_ma_kwargs(kwargs))
        if pooler_act not in POOLER_ACTIVATIONS:
            raise ValueError(f"pooler_act must be one of {POOLER_ACTIVATIONS}, got {pooler_act!r}")
        super().__init__(**kwargs)
        self.pooler_act = pooler_act
        for key, value in ma.items():
            setattr(self, key, value)


class MADistilBertConfig(DistilBertConfig):
    """DistilBertConfig plus the MA switches. `activation` stays the MLM head's activation."""

    model_type = DISTILBERT.ma_model_type

    def __init__(self, layer_norm_eps: float = 1e-12, **kwargs):
        ma = _ma_settings(**_split_ma_kwargs(kwargs))
        super().__init__(**kwargs)
        self.layer_norm_eps = layer_norm_eps
        for key, value in ma.items():
            setattr(self, key, value)
