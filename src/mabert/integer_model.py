"""Integer-only MA model: int8 weights and activations, int32 products, fixed-point requantization.

Built from a fused MA classifier (`mabert.fuse`) and calibration batches. Each activation gets a fixed scale from
its largest magnitude on the calibration batches (÷ 127): per channel for the residual stream, the attention
context and the feed-forward hidden layer (whose readers are weights, into which the channel scales are folded
before the weights are quantized per output row), per head for the attention operands (a head's product
reduces over its own channels only), and the approximator's W1·k per row. Values beyond the calibrated range
saturate — a clamp, like the activation bounds. The program itself is `mabert.integer_reference`; this module
only chooses its integers.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .choices import POOLER_IDENTITY, POOLER_RELU
from .errors import MABertError
from .fuse import FusedMAModel, FusedPolySoftmax, FusedReLUAttention

INT8_MAX = 127
# Results are checked to stay below this before the int32 clamp (whose hi − lo and x − lo must not overflow int32);
# it is also the logits' clamp when the model has no logit bound
UNBOUNDED = 2 ** 30 - 1
WORST_PRODUCT = INT8_MAX * 128  # |a·b| for int8 a, b in [−127, 127] (128 leaves room for a −128 input)


def _scale(amax) -> np.ndarray:
    """Scale for values up to `amax` (per channel, head or tensor). A channel that (almost) never fired on the
    calibration text gets a hundredth of the largest range: its tiny range would make its requantization
    multiplier, and the worst case of its int32 result, hundreds of times larger for values that barely matter."""
    amax = np.asarray(amax, dtype=np.float64)
    return np.maximum(amax, float(amax.max()) * 1e-2 + 1e-12) / INT8_MAX


def _quantize_rows(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 matrix and per-row scale of a float64 weight (rows = outputs)."""
    scale = _scale(np.abs(weight).max(axis=-1))
    return np.clip(np.rint(weight / scale[..., None]), -INT8_MAX, INT8_MAX).astype(np.int8), scale


def _to_int8_range(bound: np.ndarray | None, scale: np.ndarray, default: int) -> np.ndarray:
    if bound is None:
        return np.full(np.shape(scale), default, dtype=np.int32)
    return np.clip(np.rint(bound / scale), -INT8_MAX, INT8_MAX).astype(np.int32)


def add_step(params: dict, name: str, multipliers: list, bias, worst: list[float], low, high) -> None:
    """A requantization y = clamp(Σ acc_i·m_i + bias, low, high) in fixed point (see mabert.integer_reference).
    `worst[i]` bounds |acc_i|. The result of any input must fit the int32 clamp (checked); the shift is the
    largest that keeps each multiplier below 2^31 (31 bits of precision are plenty; more would only eat int64
    room) and |Σ acc_i·M_i + B| below 2^59, so the graph's 2^61 offset keeps every total positive."""
    multipliers = [np.asarray(m, dtype=np.float64) for m in multipliers]
    bias = np.asarray(bias, dtype=np.float64)
    largest = sum(np.abs(m) * w for m, w in zip(multipliers, worst)) + np.abs(bias)
    largest = float(np.max(largest))
    if not largest < UNBOUNDED:
        raise MABertError(f"integer step {name}: values up to {largest:.3g} do not fit int32; calibrate on more "
                          "representative text")
    top = max(float(np.abs(m).max()) for m in multipliers)
    shift = min(math.floor(math.log2((2 ** 31 - 1) / top)), math.floor(math.log2(2 ** 59 / max(largest, 1.0))))
    for index, m in enumerate(multipliers):
        params[f"{name}.m{index}"] = np.rint(m * 2.0 ** shift).astype(np.int64)
    params[f"{name}.bias"] = np.rint(bias * 2.0 ** shift).astype(np.int64)
    params[f"{name}.shift"] = np.array(shift, dtype=np.int64)
    params[f"{name}.low"] = np.asarray(low, dtype=np.int32)
    params[f"{name}.high"] = np.asarray(high, dtype=np.int32)


# --- calibration: the fused model's float forward, recording each quantized tensor's largest magnitudes ---------
class _Ranges:
    def __init__(self):
        self.amax: dict[str, np.ndarray] = {}

    def see(self, name: str, tensor: torch.Tensor, keep: tuple[int, ...]) -> torch.Tensor:
        """Record max |tensor| over every axis but `keep` (negative axes)."""
        reduce = tuple(a for a in range(-tensor.dim(), 0) if a not in keep)
        amax = tensor.abs().amax(dim=reduce).numpy()  # the kept axes, in order
        self.amax[name] = np.maximum(self.amax[name], amax) if name in self.amax else amax
        return tensor


def _calibrate(fused: FusedMAModel, batches) -> dict[str, np.ndarray]:
    ranges = _Ranges()
    model = _double_copy(fused)
    with torch.no_grad():
        for batch in batches:
            ids, mask = batch[0], batch[1]
            types = batch[2] if len(batch) > 2 else None
            keymask = model.key_mask(mask, torch.float64)
            r = ranges.see("embeddings", model.embed(ids, types), (-1,))
            for index, layer in enumerate(model.layers):
                r = _trace_layer(layer, r, keymask, ranges, f"layers.{index}")
            ranges.see("pooler", _pooled(model, r), (-1,))
    return ranges.amax


def _double_copy(fused: FusedMAModel) -> FusedMAModel:
    import copy

    return copy.deepcopy(fused).double().eval()


def _pooled(model: FusedMAModel, r: torch.Tensor) -> torch.Tensor:
    pooled = model.pooler(r[:, 0])
    return torch.relu(pooled) if model.pool_act == POOLER_RELU else pooled


def _trace_layer(layer, r, keymask, ranges: _Ranges, name: str):
    see = lambda part, t, keep: ranges.see(f"{name}.{part}", t, keep)  # noqa: E731
    q = layer._heads(see("query", layer.query(r), (-1,)))
    k = layer._heads(see("key", layer.key(r), (-1,))) * keymask
    v = layer._heads(see("value", layer.value(r), (-1,)))
    attention = layer.approximator
    if isinstance(attention, FusedReLUAttention) or attention.masked_outputs:  # ReLU attention: harmless, scores 0
        v = v * keymask
    length = q.shape[2]
    if isinstance(attention, FusedReLUAttention):
        scores = see("scores", torch.relu(q @ k.transpose(-1, -2)), (-3,))
        context = scores @ v
    else:
        w1k = see("w1k", attention.w1[:, :length] @ k, (-3, -2))
        hidden = see("hidden", torch.relu(q @ w1k.transpose(-1, -2) + attention.b1), (-3,))
        w2v = see("w2v", attention.w2[:length].T @ v, (-3, -1))
        context = hidden @ w2v + attention.b2[None, :length] @ v
    context = see("context", context, (-3, -1))
    batch, heads, length, dim = context.shape
    context = context.transpose(1, 2).reshape(batch, length, heads * dim)
    r = see("attention_residual", layer.bound1(r * layer.scale1 + layer.attention_out(context)), (-1,))
    hidden = see("ffn_hidden", torch.relu(layer.ffn_in(r)), (-1,))
    return see("ffn_residual", layer.bound2(r * layer.scale2 + layer.ffn_out(hidden)), (-1,))


# --- building the integers ----------------------------------------------------------------------------------------
def _np(tensor) -> np.ndarray:
    return tensor.detach().double().numpy()


def _bounds(bound) -> tuple[np.ndarray | None, np.ndarray | None]:
    return (None, None) if bound.low is None else (_np(bound.low), _np(bound.high))


def _per_head(amax: np.ndarray, heads: int) -> np.ndarray:
    """(C,) channel maxima → (H,) head maxima."""
    return amax.reshape(heads, -1).max(axis=1)


def build_integer_model(fused: FusedMAModel, calibration_batches) -> tuple[dict, dict]:
    """(params, meta) of the integer-only version of `fused`: `calibration_batches` are (input_ids,
    attention_mask[, token_type_ids]) torch batches of task text."""
    if not calibration_batches:
        raise MABertError("the integer-only graph needs calibration text (at least one input)")
    if fused.pool_act not in (POOLER_IDENTITY, POOLER_RELU):
        raise MABertError(f"the {fused.pool_act} pooler is not matrix arithmetic; integer export needs an identity "
                          "or ReLU pooler (mabert convert --pooler identity)")
    if isinstance(fused.layers[0].approximator, FusedPolySoftmax):
        raise MABertError("the integer-only graph does not support PolySoftmax attention (its exp and reciprocal "
                          "need a float range int8 cannot hold); export this model in fp32 or ORT dynamic int8")
    amax = _calibrate(fused, calibration_batches)
    heads = fused.layers[0].num_heads
    relu_attention = isinstance(fused.layers[0].approximator, FusedReLUAttention)
    meta = {"layers": len(fused.layers), "heads": heads, "max_length": int(fused.max_length),
            "attention": "relu" if relu_attention else "approximator",
            "masked_outputs": relu_attention or bool(fused.layers[0].approximator.masked_outputs)}
    params: dict[str, np.ndarray] = {}

    stream = _scale(amax["embeddings"])
    positions = fused.position_table[:fused.max_length]  # the rows an input can reach
    tables = [("word", fused.word_table), ("position", positions), ("token_type", fused.type_table)]
    multipliers = []
    for part, table in tables:
        if table is None:
            continue
        quantized, column_scale = _quantize_rows(_np(table).T)  # one scale per channel (column of the table)
        params[f"embeddings.{part}"] = np.ascontiguousarray(quantized.T)
        multipliers.append(column_scale / stream)
    low, high = _bounds(fused.embedding_bound)
    add_step(params, "embeddings", multipliers, 0.0, [INT8_MAX] * len(multipliers),
             _to_int8_range(low, stream, -INT8_MAX), _to_int8_range(high, stream, INT8_MAX))

    for index, layer in enumerate(fused.layers):
        stream = _add_layer(params, f"layers.{index}", layer, amax, stream, heads, relu_attention, meta["max_length"])

    pooled = _scale(amax["pooler"])
    weight, row_scale = _quantize_rows(_np(fused.pooler.weight) * stream)
    params["pooler.weight"] = np.ascontiguousarray(weight.T)
    add_step(params, "pooler", [row_scale / pooled], _np(fused.pooler.bias) / pooled, [weight.shape[1] * WORST_PRODUCT],
             np.full(pooled.shape, 0 if fused.pool_act == POOLER_RELU else -INT8_MAX, np.int32),
             np.full(pooled.shape, INT8_MAX, np.int32))

    weight, logit_scale = _quantize_rows(_np(fused.classifier.weight) * pooled)
    bias = np.rint(_np(fused.classifier.bias) / logit_scale)
    if not np.abs(bias).max() + weight.shape[1] * WORST_PRODUCT < UNBOUNDED:
        raise MABertError("the classifier's logits do not fit int32 at this weight scale")
    params["classifier.weight"], params["classifier.bias"] = np.ascontiguousarray(weight.T), bias.astype(np.int32)
    low, high = _bounds(fused.logit_bound)
    params["classifier.low"] = (np.full(logit_scale.shape, -UNBOUNDED) if low is None
                                else np.clip(np.floor(low / logit_scale), -UNBOUNDED, UNBOUNDED)).astype(np.int32)
    params["classifier.high"] = (np.full(logit_scale.shape, UNBOUNDED) if high is None
                                 else np.clip(np.ceil(high / logit_scale), -UNBOUNDED, UNBOUNDED)).astype(np.int32)
    params["logit_scale"] = logit_scale.astype(np.float32)
    return params, meta


def _add_layer(params, name, layer, amax, stream, heads, relu_attention, max_length) -> np.ndarray:
    """Add one encoder layer's integers; `stream` is the per-channel scale of its input. Returns its output's."""
    width = stream.shape[0]
    dim = width // heads
    head_scales = {}
    for part in ("query", "key", "value"):
        linear = getattr(layer, part)
        head_scale = _scale(_per_head(amax[f"{name}.{part}"], heads))
        channel_scale = np.repeat(head_scale, dim)
        weight, row_scale = _quantize_rows(_np(linear.weight) * stream)
        params[f"{name}.{part}.weight"] = np.ascontiguousarray(weight.T)
        add_step(params, f"{name}.{part}", [row_scale / channel_scale], _np(linear.bias) / channel_scale,
                 [width * WORST_PRODUCT], np.int32(-INT8_MAX), np.int32(INT8_MAX))
        head_scales[part] = head_scale[:, None, None]  # (H, 1, 1)
    s_q, s_k, s_v = head_scales["query"], head_scales["key"], head_scales["value"]
    context_scale = _scale(amax[f"{name}.context"])[:, None, :]  # (H, 1, d)
    saturate = (np.int32(-INT8_MAX), np.int32(INT8_MAX))
    if relu_attention:
        scores = _scale(amax[f"{name}.scores"])[:, None, None]
        add_step(params, f"{name}.scores", [s_q * s_k / scores], 0.0, [dim * WORST_PRODUCT], np.int32(0),
                 np.int32(INT8_MAX))
        add_step(params, f"{name}.context", [scores * s_v / context_scale], 0.0, [max_length * WORST_PRODUCT],
                 *saturate)
    else:
        approximator = layer.approximator
        w1, row1 = _quantize_rows(_np(approximator.w1))                     # (hid, L), (hid,)
        w1k = _scale(amax[f"{name}.w1k"])[:, :, None]                       # (H, hid, 1)
        params[f"{name}.w1"] = w1
        add_step(params, f"{name}.w1k", [row1[None, :, None] * s_k / w1k], 0.0, [max_length * WORST_PRODUCT],
                 *saturate)
        hidden = _scale(amax[f"{name}.hidden"])[:, None, None]              # (H, 1, 1)
        add_step(params, f"{name}.hidden", [s_q * np.swapaxes(w1k, 1, 2) / hidden],
                 _np(approximator.b1)[None, None, :] / hidden, [dim * WORST_PRODUCT], np.int32(0), np.int32(INT8_MAX))
        w2t, row2 = _quantize_rows(_np(approximator.w2).T)                  # (hid, L), (hid,)
        w2v = _scale(amax[f"{name}.w2v"])[:, None, :]                       # (H, 1, d)
        params[f"{name}.w2t"] = w2t
        add_step(params, f"{name}.w2v", [row2[None, :, None] * s_v / w2v], 0.0, [max_length * WORST_PRODUCT],
                 *saturate)
        b2, b2_scale = _quantize_rows(_np(approximator.b2)[None, :])
        params[f"{name}.b2"] = b2[0]
        add_step(params, f"{name}.context", [hidden * w2v / context_scale, b2_scale[0] * s_v / context_scale], 0.0,
                 [w1.shape[0] * WORST_PRODUCT, max_length * WORST_PRODUCT], *saturate)
    context_channels = context_scale.reshape(-1)                           # head-major, as heads are merged
    return _add_residual_pair(params, name, layer, amax, stream, context_channels)


def _add_residual(params, name, step, writer, norm_scale, bound, amax, stream, reader_channels) -> np.ndarray:
    """r' = bound(r ⊙ norm_scale + writer(x)) as one step: `stream` is r's per-channel scale, `reader_channels`
    x's (folded into the writer's weight). Returns r''s per-channel scale."""
    out = _scale(amax[f"{name}.{step}"])
    weight, row_scale = _quantize_rows(_np(writer.weight) * reader_channels)
    params[f"{name}.{_WRITERS[step]}.weight"] = np.ascontiguousarray(weight.T)
    low, high = _bounds(bound)
    add_step(params, f"{name}.{step}", [_np(norm_scale) * stream / out, row_scale / out], _np(writer.bias) / out,
             [INT8_MAX, weight.shape[1] * WORST_PRODUCT],
             _to_int8_range(low, out, -INT8_MAX), _to_int8_range(high, out, INT8_MAX))
    return out


_WRITERS = {"attention_residual": "attention_out", "ffn_residual": "ffn_out"}


def _add_residual_pair(params, name, layer, amax, stream, context_channels) -> np.ndarray:
    """attention_out + norm 1 (residual), ffn_in + ReLU, ffn_out + norm 2 (residual)."""
    middle = _add_residual(params, name, "attention_residual", layer.attention_out, layer.scale1, layer.bound1, amax,
                           stream, context_channels)
    hidden = _scale(amax[f"{name}.ffn_hidden"])
    weight, row_scale = _quantize_rows(_np(layer.ffn_in.weight) * middle)
    params[f"{name}.ffn_in.weight"] = np.ascontiguousarray(weight.T)
    add_step(params, f"{name}.ffn_hidden", [row_scale / hidden], _np(layer.ffn_in.bias) / hidden,
             [weight.shape[1] * WORST_PRODUCT], np.zeros(hidden.shape, np.int32), np.full(hidden.shape, INT8_MAX,
                                                                                          np.int32))
    return _add_residual(params, name, "ffn_residual", layer.ffn_out, layer.scale2, layer.bound2, amax, middle,
                         hidden)
