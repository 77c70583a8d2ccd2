"""The integer-only MA program in NumPy: the reference that an integer-only ONNX graph must reproduce exactly.

Every tensor here is an integer. Products of int8 tensors accumulate exactly (they are computed in float64 BLAS,
which is exact while every partial sum stays below 2^53; with int8 operands that holds for reductions up to
2^53 / 127² ≈ 5.6e11 terms). Everything else happens in one *requantization* per output tensor:

    y = clamp(floor((Σ_i acc_i · M_i + B + 2^(s−1)) / 2^s), lo, hi)

with integer multipliers M_i, bias B and clamp bounds lo, hi (per channel, per head or per tensor, broadcast) and
one shift s per tensor: a fixed-point version of y ≈ Σ_i acc_i · m_i + b. A norm's scale, a residual add, a bias,
a ReLU (lo = 0), a calibrated activation bound and int8 saturation are all such a step.

`params` maps names to integer arrays, which are also the integer ONNX graph's initializers by the same names
(weights stored (in, out), as the products read them; the one float array, `logit_scale`, only turns the integer
logits into the model's). `meta` holds the program's structure. `mabert.integer_model.build_integer_model` writes
both.
"""
from __future__ import annotations

import numpy as np

EXACT_FLOAT64 = 2 ** 53


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact integer product of int8-valued arrays (numpy broadcasting rules), as int64."""
    if a.shape[-1] * 127 * 128 >= EXACT_FLOAT64:
        raise ValueError("reduction too long for an exact float64 product")
    return np.rint(a.astype(np.float64) @ b.astype(np.float64)).astype(np.int64)


def requantize(params: dict, name: str, accumulators: list[np.ndarray]) -> np.ndarray:
    """The requantization step `name` applied to its accumulators (int64 out, already clamped)."""
    total = sum(acc.astype(np.int64) * params[f"{name}.m{i}"] for i, acc in enumerate(accumulators))
    shift = int(params[f"{name}.shift"])
    total = total + params[f"{name}.bias"] + (1 << (shift - 1))
    return np.clip(total >> shift, params[f"{name}.low"], params[f"{name}.high"]).astype(np.int64)


def _heads(x: np.ndarray, heads: int) -> np.ndarray:
    batch, length, width = x.shape
    return x.reshape(batch, length, heads, width // heads).transpose(0, 2, 1, 3)


def _merge_heads(x: np.ndarray) -> np.ndarray:
    batch, heads, length, dim = x.shape
    return x.transpose(0, 2, 1, 3).reshape(batch, length, heads * dim)


def _attention(params: dict, meta: dict, name: str, q, k, v, length: int) -> np.ndarray:
    """Context of one layer from int8 heads q, k, v (padded keys already zero)."""
    if meta["attention"] == "relu":
        scores = requantize(params, f"{name}.scores", [matmul(q, k.transpose(0, 1, 3, 2))])
        return requantize(params, f"{name}.context", [matmul(scores, v)])
    # the approximator, reassociated: ReLU(q·(W1·k)ᵀ + b1)·(W2ᵀ·v) + b2·v — no T×T matrix
    w1k = requantize(params, f"{name}.w1k", [matmul(params[f"{name}.w1"][:, :length], k)])
    hidden = requantize(params, f"{name}.hidden", [matmul(q, w1k.transpose(0, 1, 3, 2))])
    w2v = requantize(params, f"{name}.w2v", [matmul(params[f"{name}.w2t"][:, :length], v)])
    b2v = matmul(params[f"{name}.b2"][None, :length], v)
    return requantize(params, f"{name}.context", [matmul(hidden, w2v), b2v])


def _layer(params: dict, meta: dict, name: str, r: np.ndarray, keymask: np.ndarray) -> np.ndarray:
    length, heads = r.shape[1], meta["heads"]
    project = lambda part: requantize(params, f"{name}.{part}", [matmul(r, params[f"{name}.{part}.weight"])])  # noqa: E731
    q, k, v = project("query"), project("key") * keymask, project("value")
    if meta["masked_outputs"]:
        v = v * keymask
    context = _attention(params, meta, name, _heads(q, heads), _heads(k, heads), _heads(v, heads), length)
    context = _merge_heads(context)
    r = requantize(params, f"{name}.attention_residual", [r, matmul(context, params[f"{name}.attention_out.weight"])])
    hidden = requantize(params, f"{name}.ffn_hidden", [matmul(r, params[f"{name}.ffn_in.weight"])])
    return requantize(params, f"{name}.ffn_residual", [r, matmul(hidden, params[f"{name}.ffn_out.weight"])])


def integer_logits(params: dict, meta: dict, input_ids, attention_mask=None, token_type_ids=None) -> np.ndarray:
    """int64 logits (multiply by `params['logit_scale']`, per class, for the model's logits)."""
    ids = np.asarray(input_ids, dtype=np.int64)
    length = ids.shape[1]
    if length > meta["max_length"]:
        raise ValueError(f"input has {length} tokens; this model accepts at most {meta['max_length']}")
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, dtype=np.int64)
    terms = [params["embeddings.word"][ids], params["embeddings.position"][None, :length]]
    if "embeddings.token_type" in params:
        types = np.zeros_like(ids) if token_type_ids is None else np.asarray(token_type_ids, dtype=np.int64)
        terms.append(params["embeddings.token_type"][types])
    r = requantize(params, "embeddings", terms)
    keymask = mask[:, :, None]
    for index in range(meta["layers"]):
        r = _layer(params, meta, f"layers.{index}", r, keymask)
    pooled = requantize(params, "pooler", [matmul(r[:, 0], params["pooler.weight"])])
    logits = matmul(pooled, params["classifier.weight"]) + params["classifier.bias"]
    return np.clip(logits, params["classifier.low"], params["classifier.high"])


def dequantized_logits(params: dict, meta: dict, *inputs) -> np.ndarray:
    return integer_logits(params, meta, *inputs) * params["logit_scale"].astype(np.float64)
