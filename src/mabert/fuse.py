"""Stage 3 — fuse: fold every inference-time PowerNorm, 1/√d and the masking into the linear layers.

The result, `FusedMAModel`, computes logits with matmul, add, multiply-by-constant (the 0/1 mask and per-channel
norm scales), ReLU and gathers only. The residual stream is the normalised one (each PowerNorm's output, about
unit RMS per channel, which is what int8 activation quantization needs): a norm h' = s ⊙ (h + W·x + b) + t
becomes h' = h ⊙ s + (diag(s)·W)·x + (s ⊙ b + t), one multiply by a constant vector plus the writer linear with
the norm folded into its rows. The embedding norm lands in the tables (its shift in the position table).
(Carrying the stream divided by the product of the scales instead saves that multiply but spreads channel
ranges over orders of magnitude: int8 versions of such a graph predicted one class.)

Attention with the approximator reassociates (S·W1ᵀ = Q·(W1·K)ᵀ, P·V = H·(W2ᵀ·V) + b2·V) when that is
cheaper at the model's length L, so no T×T score matrix is ever formed.
"""
from __future__ import annotations

import torch
from torch import nn

from .errors import MABertError
from .powernorm import PowerNorm


class _Affine:
    """A norm's inference map in float64: y = x·scale + shift."""

    def __init__(self, norm: nn.Module):
        if not isinstance(norm, PowerNorm):
            raise MABertError("only PowerNorm models can be fused exactly (LayerNorm depends on the input); "
                              "convert with norm_type='power'")
        scale, shift = norm.inference_affine()
        self.scale, self.shift = scale.detach().double(), shift.detach().double()
        if (self.scale.abs() < 1e-12).any():
            raise MABertError("a PowerNorm has a zero scale channel; it cannot be folded exactly")


def _linear(weight, bias):
    return nn.Parameter(weight.float().contiguous(), requires_grad=False), nn.Parameter(bias.float().contiguous(), requires_grad=False)


def _vector(values):
    return nn.Parameter(values.float().contiguous(), requires_grad=False)


class FusedLayer(nn.Module):
    def __init__(self, q, k, v, o, f1, f2, scale1, scale2, num_heads):
        super().__init__()
        self.num_heads = num_heads
        (self.wq, self.bq), (self.wk, self.bk), (self.wv, self.bv) = q, k, v
        (self.wo, self.bo), (self.w1, self.b1), (self.w2, self.b2) = o, f1, f2
        self.scale1, self.scale2 = _vector(scale1), _vector(scale2)


class FusedMAModel(nn.Module):
    """Matrix-arithmetic-only sequence classifier produced by `fuse`."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList()
        self.approximators = nn.ParameterList()

    def _split(self, x, heads):
        batch, length, _ = x.shape
        return x.view(batch, length, heads, -1).transpose(1, 2)

    def _attention(self, layer, index, r, mask):
        """r: the stream (B, T, H); mask (B, T) float. Returns the context (B, T, H)."""
        length = r.shape[1]
        w1, b1, w2, b2 = (self.approximators[4 * index + i] for i in range(4))
        w1, w2, b2 = w1[:, :length], w2[:length], b2[:length]
        keymask = mask[:, None, :, None]  # (B, 1, T, 1): zero padded keys, as scores × mask does
        q = self._split(r @ layer.wq.T + layer.bq, layer.num_heads)
        k = self._split(r @ layer.wk.T + layer.bk, layer.num_heads) * keymask
        v = self._split(r @ layer.wv.T + layer.bv, layer.num_heads)
        if self.masked_outputs:
            v = v * keymask
        if self.reassociate:
            hidden = torch.relu(q @ (w1 @ k).transpose(-1, -2) + b1)           # (B, h, T, hid)
            context = hidden @ (w2.T @ v) + b2[None, :] @ v                            # (B, h, T, d)
        else:
            scores = q @ k.transpose(-1, -2)                                    # (B, h, T, T)
            probs = torch.relu(scores @ w1.T + b1) @ w2.T + b2
            context = probs @ v
        batch, heads, _, dim = context.shape
        return context.transpose(1, 2).reshape(batch, length, heads * dim)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        length = input_ids.shape[1]
        if length > self.max_length:
            raise MABertError(f"input has {length} tokens; this model accepts at most {self.max_length}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        mask = attention_mask.to(self.position_table.dtype)
        r = nn.functional.embedding(input_ids, self.word_table) + self.position_table[:length]
        if self.type_table is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            r = r + nn.functional.embedding(token_type_ids, self.type_table)
        for index, layer in enumerate(self.layers):
            r = r * layer.scale1 + self._attention(layer, index, r, mask) @ layer.wo.T + layer.bo
            r = r * layer.scale2 + torch.relu(r @ layer.w1.T + layer.b1) @ layer.w2.T + layer.b2
        first = r[:, 0]
        pooled = first @ self.pool_w.T + self.pool_b
        pooled = {"tanh": torch.tanh, "relu": torch.relu, "identity": lambda x: x}[self.pool_act](pooled)
        return pooled @ self.cls_w.T + self.cls_b


def _parts(model):
    """Uniform view of MA-BERT and MA-DistilBERT classifiers."""
    name = type(model).__name__
    if name == "MABertForSequenceClassification":
        base = model.bert
        layers = []
        for layer in base.encoder.layer:
            att = layer.attention
            layers.append(dict(q=att.self.query, k=att.self.key, v=att.self.value, o=att.output.dense,
                               norm1=att.output.LayerNorm, f1=layer.intermediate.dense, f2=layer.output.dense,
                               norm2=layer.output.LayerNorm, approx=att.self.approximator,
                               act=layer.intermediate.intermediate_act_fn))
        emb = base.embeddings
        return dict(word=emb.word_embeddings.weight, pos=emb.position_embeddings.weight,
                    type=emb.token_type_embeddings.weight, norm0=emb.LayerNorm, layers=layers,
                    pool=base.pooler.dense, pool_act=model.config.pooler_act, cls=model.classifier)
    if name == "MADistilBertForSequenceClassification":
        base = model.distilbert
        layers = [dict(q=b.attention.q_lin, k=b.attention.k_lin, v=b.attention.v_lin, o=b.attention.out_lin,
                       norm1=b.sa_layer_norm, f1=b.ffn.lin1, f2=b.ffn.lin2, norm2=b.output_layer_norm,
                       approx=b.attention.approximator, act=b.ffn.activation) for b in base.transformer.layer]
        emb = base.embeddings
        # DistilBERT's head is Linear → ReLU → Linear; represent it as pooler(relu) + classifier.
        return dict(word=emb.word_embeddings.weight, pos=emb.position_embeddings.weight, type=None,
                    norm0=emb.LayerNorm, layers=layers, pool=model.pre_classifier, pool_act="relu",
                    cls=model.classifier)
    raise MABertError(f"fuse takes an MA-BERT or MA-DistilBERT sequence classifier, got {name}")


@torch.no_grad()
def fuse(model, check: bool = True, reassociate: bool | None = None) -> FusedMAModel:
    """Exact matrix-arithmetic-only version of an MA sequence classifier (eval-mode semantics)."""
    config = model.config
    if not config.use_softmax_approx:
        raise MABertError("this model uses the real softmax; only models with the softmax approximator can be fused")
    parts = _parts(model)
    fused = FusedMAModel()
    num_heads = config.num_attention_heads
    hidden = config.hidden_size
    head_dim = hidden // num_heads
    approx_in, approx_hidden = config.softmax_input_size, config.softmax_hidden_layer_size
    fused.max_length = approx_in
    fused.masked_outputs = config.softmax_mask_mode == "masked"
    # cost per head at T = L: scores order T²(d+h) vs reassociated 2·T·h·d (+ small terms)
    fused.reassociate = (2 * approx_hidden * head_dim < approx_in * (head_dim + approx_hidden)
                         if reassociate is None else reassociate)
    fused.pool_act = parts["pool_act"]

    norm0 = _Affine(parts["norm0"])  # h0 = s0 ⊙ (word + pos + type) + t0, folded into the tables
    fused.word_table = _vector(parts["word"].double() * norm0.scale)
    fused.position_table = _vector(parts["pos"].double() * norm0.scale + norm0.shift)
    fused.type_table = _vector(parts["type"].double() * norm0.scale) if parts["type"] is not None else None

    inv_sqrt_d = head_dim ** -0.5

    def writer(linear, norm):  # s ⊙ (W·x + b) + t
        return _linear(linear.weight.double() * norm.scale[:, None], linear.bias.double() * norm.scale + norm.shift)

    def reader(linear, factor=1.0):
        return _linear(linear.weight.double() * factor, linear.bias.double() * factor)

    for spec in parts["layers"]:
        if not isinstance(spec["act"], nn.ReLU) and type(spec["act"]).__name__ != "ReLU":
            raise MABertError("fuse needs the ReLU feed-forward (ffn_hidden_act='relu')")
        norm1, norm2 = _Affine(spec["norm1"]), _Affine(spec["norm2"])
        fused.layers.append(FusedLayer(
            reader(spec["q"], inv_sqrt_d), reader(spec["k"]), reader(spec["v"]), writer(spec["o"], norm1),
            reader(spec["f1"]), writer(spec["f2"], norm2), norm1.scale, norm2.scale, num_heads))
        approx = spec["approx"].linear_relu_stack
        for tensor in (approx[0].weight, approx[0].bias, approx[2].weight, approx[2].bias):
            fused.approximators.append(nn.Parameter(tensor.detach().float().clone(), requires_grad=False))

    fused.pool_w, fused.pool_b = reader(parts["pool"])
    fused.cls_w, fused.cls_b = _linear(parts["cls"].weight.double(), parts["cls"].bias.double())
    fused.config = config
    fused.eval()
    if check:
        check_parity(model, fused)
    return fused


def parity_inputs(config, batch: int = 3, length: int | None = None, seed: int = 0):
    """A padded batch: one full row, one half, one very short."""
    length = length or min(config.softmax_input_size, 32)
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, config.vocab_size, (batch, length), generator=generator)
    mask = torch.ones(batch, length, dtype=torch.long)
    for row, real in zip(range(1, batch), (length // 2, 3)):
        mask[row, real:] = 0
        ids[row, real:] = config.pad_token_id or 0
    return ids, mask


@torch.no_grad()
def check_parity(model, fused, rtol: float = 1e-4) -> float:
    """Relative max error of fused vs unfused logits on a padded batch; raises above rtol."""
    model.eval()
    worst, checked = 0.0, 0
    for length in sorted({min(16, model.config.softmax_input_size), model.config.softmax_input_size}):
        ids, mask = parity_inputs(model.config, length=length)
        want = model(ids, attention_mask=mask).logits
        got = fused(ids, attention_mask=mask)
        # A student distilled on short text can overflow on random ids; compare the examples it keeps finite.
        finite = torch.isfinite(want).all(dim=-1)
        if not finite.any():
            continue
        want, got = want[finite], got[finite]
        error = ((got - want).abs().max() / want.abs().max().clamp_min(1e-6)).item()
        worst = max(worst, error if error == error else float("inf"))  # NaN must fail, not compare False
        checked += 1
    if not checked:
        raise MABertError("the model's own logits are not finite on any random parity batch, so fusion cannot be "
                          "checked; distil it on inputs of these lengths first")
    if worst > rtol:
        raise MABertError(f"fused model disagrees with the original (relative error {worst:.2e} > {rtol:.0e}); "
                          "nothing was written")
    return worst
