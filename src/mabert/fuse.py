"""Stage 3 — fuse: fold every inference-time PowerNorm, 1/√d and the masking into the linear layers.

The result, `FusedMAModel`, computes logits with matmul, add, multiply-by-constant (the 0/1 mask and per-channel
norm scales), ReLU and gathers only. The residual stream is the normalised one (each PowerNorm's output, about
unit RMS per channel, which is what int8 activation quantization needs): a norm h' = s ⊙ (h + W·x + b) + t
becomes h' = h ⊙ s + (diag(s)·W)·x + (s ⊙ b + t), one multiply by a constant vector plus the writer linear with
the norm folded into its rows. The embedding norm lands in the tables (its shift in the position table).
(Carrying the stream divided by the product of the scales instead saves that multiply but spreads channel
ranges over orders of magnitude: int8 versions of such a graph predicted one class.) In a bounded model each
norm's clamp follows as hi − ReLU((hi − lo) − ReLU(h' − lo)) (`mabert.bounds`).

ReLU attention (`attention_kind="relu"`) is ReLU(q·kᵀ)·(v/L), 1/L folded into the value projection; PolySoftmax
(`"poly"`) is its own matrix-arithmetic softmax of q·kᵀ, then ·v.
Attention with the approximator reassociates (S·W1ᵀ = Q·(W1·K)ᵀ, P·V = H·(W2ᵀ·V) + b2·V) when that is
cheaper at the model's length L, so no T×T score matrix is ever formed.

The folds are exact algebra, done in float64. `check_fold` verifies them where they are exact (a float64 fused
model against the float64 original); the fp32 model's deviation is rounding, measured by `fp32_deviation`.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .bounds import ActivationBound, relu_clamp
from .choices import HEAD_SEQCLS, MASK_MASKED, POOLER_IDENTITY, POOLER_RELU, POOLER_TANH
from .errors import MABertError
from .powernorm import PowerNorm
from .registry import LayerParts, embedding_parts, find_family, head_of, head_parts, is_ma, layer_parts
from .softmax_approx import PolySoftmax, ReLUAttention

FOLD_TOLERANCE = 1e-9  # relative; float64 folds agree to ~1e-13


# --- pure folds (float64 in, float64 out) ------------------------------------------------------------------------
def fold_norm_into_writer(weight, bias, scale, shift):
    """s ⊙ (W·x + b) + t  →  (diag(s)·W)·x + (s ⊙ b + t)."""
    return weight * scale[:, None], bias * scale + shift


def scale_linear(weight, bias, factor):
    """factor · (W·x + b), e.g. 1/√d folded into the query projection."""
    return weight * factor, bias * factor


def fold_norm_into_tables(word, position, token_type, scale, shift):
    """s ⊙ (word + position + type) + t with the shift carried by the position table."""
    return word * scale, position * scale + shift, None if token_type is None else token_type * scale


def norm_affine(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor, ActivationBound | None]:
    """(scale, shift, bound) of a PowerNorm's inference map, scale and shift in float64."""
    if not isinstance(norm, PowerNorm):
        raise MABertError("only PowerNorm models can be fused exactly (LayerNorm depends on the input); "
                          "convert with norm_type='power'")
    scale, shift = norm.inference_affine()
    bound = norm.bound if norm.bound is not None and norm.bound.is_set else None
    return scale.detach().double(), shift.detach().double(), bound


# --- fused modules ------------------------------------------------------------------------------------------------
def _frozen(tensor, dtype):
    return nn.Parameter(tensor.detach().to(dtype).clone().contiguous(), requires_grad=False)


class FusedLinear(nn.Module):
    def __init__(self, weight, bias, dtype):
        super().__init__()
        self.weight, self.bias = _frozen(weight, dtype), _frozen(bias, dtype)

    def forward(self, x):
        return x @ self.weight.T + self.bias


class FusedBound(nn.Module):
    """A calibrated clamp written with ReLU (identity when the model is not bounded)."""

    def __init__(self, bound: ActivationBound | None, dtype):
        super().__init__()
        self.low = None if bound is None else _frozen(bound.low, dtype)
        self.high = None if bound is None else _frozen(bound.high, dtype)

    def forward(self, x):
        return x if self.low is None else relu_clamp(x, self.low, self.high)


class FusedApproximator(nn.Module):
    """The softmax approximator applied inside attention, directly or reassociated (see module docstring)."""

    value_scale = 1.0  # what FusedLayer folds into the value projection (ReLU attention's 1/L; nothing here)

    def __init__(self, stack: nn.Sequential, masked_outputs: bool, reassociate: bool, dtype):
        super().__init__()
        self.w1, self.b1 = _frozen(stack[0].weight, dtype), _frozen(stack[0].bias, dtype)
        self.w2, self.b2 = _frozen(stack[2].weight, dtype), _frozen(stack[2].bias, dtype)
        self.masked_outputs, self.reassociate = masked_outputs, reassociate

    def forward(self, q, k, v, keymask):
        """q, k, v: (B, heads, T, d); keymask (B, 1, T, 1) zeroes padded keys, as scores × mask does."""
        length = q.shape[2]
        w1, w2, b2 = self.w1[:, :length], self.w2[:length], self.b2[:length]
        k = k * keymask
        if self.masked_outputs:
            v = v * keymask
        if self.reassociate:
            hidden = torch.relu(q @ (w1 @ k).transpose(-1, -2) + self.b1)        # (B, heads, T, hid)
            return hidden @ (w2.T @ v) + b2[None, :] @ v                          # (B, heads, T, d)
        scores = q @ k.transpose(-1, -2)                                          # (B, heads, T, T)
        return (torch.relu(scores @ w1.T + self.b1) @ w2.T + b2) @ v


class FusedReLUAttention(nn.Module):
    """ReLU attention: ReLU(q·(k ⊙ mask)ᵀ) · v, its 1/L folded into the value projection (`value_scale`)."""

    def __init__(self, length: int):
        super().__init__()
        self.value_scale = 1.0 / length

    def forward(self, q, k, v, keymask):
        return torch.relu(q @ (k * keymask).transpose(-1, -2)) @ v


class FusedPolySoftmax(nn.Module):
    """PolySoftmax attention: its matrix-arithmetic softmax of q·kᵀ (1/√d already in the query), times v."""

    def __init__(self, length: int):
        super().__init__()
        self.value_scale = 1.0
        self.softmax = PolySoftmax(length)

    def forward(self, q, k, v, keymask):
        return self.softmax(q @ k.transpose(-1, -2), keymask.transpose(-1, -2)) @ v


class FusedLayer(nn.Module):
    """One encoder layer: r ← bound1(r ⊙ s1 + O·attention(r)); r ← bound2(r ⊙ s2 + W2·ReLU(W1·r))."""

    def __init__(self, parts: LayerParts, num_heads: int, approximator: FusedApproximator, dtype):
        super().__init__()
        head_dim = parts.query.weight.shape[0] // num_heads
        s1, t1, bound1 = norm_affine(parts.attention_norm)
        s2, t2, bound2 = norm_affine(parts.output_norm)
        as64 = lambda linear: (linear.weight.detach().double(), linear.bias.detach().double())  # noqa: E731
        self.num_heads = num_heads
        self.query = FusedLinear(*scale_linear(*as64(parts.query), head_dim ** -0.5), dtype)
        self.key = FusedLinear(*as64(parts.key), dtype)
        self.value = FusedLinear(*scale_linear(*as64(parts.value), approximator.value_scale), dtype)
        self.attention_out = FusedLinear(*fold_norm_into_writer(*as64(parts.attention_out), s1, t1), dtype)
        self.ffn_in = FusedLinear(*as64(parts.ffn_in), dtype)
        self.ffn_out = FusedLinear(*fold_norm_into_writer(*as64(parts.ffn_out), s2, t2), dtype)
        self.scale1, self.scale2 = _frozen(s1, dtype), _frozen(s2, dtype)
        self.bound1, self.bound2 = FusedBound(bound1, dtype), FusedBound(bound2, dtype)
        self.approximator = approximator

    def _heads(self, x):
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, -1).transpose(1, 2)

    def forward(self, r, keymask):
        q, k, v = (self._heads(proj(r)) for proj in (self.query, self.key, self.value))
        context = self.approximator(q, k, v, keymask)
        batch, heads, length, dim = context.shape
        context = context.transpose(1, 2).reshape(batch, length, heads * dim)
        r = self.bound1(r * self.scale1 + self.attention_out(context))
        return self.bound2(r * self.scale2 + self.ffn_out(torch.relu(self.ffn_in(r))))


_POOLER_ACTIVATIONS = {POOLER_TANH: torch.tanh, POOLER_RELU: torch.relu, POOLER_IDENTITY: lambda x: x}


class FusedMAModel(nn.Module):
    """Matrix-arithmetic-only sequence classifier produced by `fuse`."""

    def __init__(self, parts: dict, config, reassociate: bool, dtype=torch.float32):
        super().__init__()
        self.config = config
        self.max_length = config.softmax_input_size
        self.reassociate = reassociate
        self.pool_act = parts["pool_act"]
        s0, t0, bound0 = norm_affine(parts["norm0"])
        word, position, token_type = fold_norm_into_tables(
            parts["word"].double(), parts["pos"].double(), None if parts["type"] is None else parts["type"].double(),
            s0, t0)
        self.word_table, self.position_table = _frozen(word, dtype), _frozen(position, dtype)
        self.type_table = None if token_type is None else _frozen(token_type, dtype)
        self.embedding_bound = FusedBound(bound0, dtype)
        masked = config.softmax_mask_mode == MASK_MASKED
        shared = None
        layers = []
        for layer in parts["layers"]:
            if not isinstance(layer.ffn_activation, nn.ReLU):
                raise MABertError("fuse needs the ReLU feed-forward (ffn_hidden_act='relu')")
            if isinstance(layer.approximator, ReLUAttention):
                attention = FusedReLUAttention(layer.approximator.input_size)
            elif isinstance(layer.approximator, PolySoftmax):
                attention = FusedPolySoftmax(layer.approximator.input_size)
            else:
                stack = layer.approximator.linear_relu_stack
                if shared is None or shared[0] is not stack:  # a shared approximator is stored once
                    shared = (stack, FusedApproximator(stack, masked, reassociate, dtype))
                attention = shared[1]
            layers.append(FusedLayer(layer, layer.num_heads, attention, dtype))
        self.layers = nn.ModuleList(layers)
        as64 = lambda linear: (linear.weight.detach().double(), linear.bias.detach().double())  # noqa: E731
        self.pooler = FusedLinear(*as64(parts["pool"]), dtype)
        self.classifier = FusedLinear(*as64(parts["cls"]), dtype)
        self.logit_bound = FusedBound(parts["logit_bound"], dtype)

    def embed(self, input_ids, token_type_ids=None):
        """The stream entering the first layer (the embedding norm and its bound folded in)."""
        r = nn.functional.embedding(input_ids, self.word_table) + self.position_table[:input_ids.shape[1]]
        if self.type_table is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            r = r + nn.functional.embedding(token_type_ids, self.type_table)
        return self.embedding_bound(r)

    def head(self, r):
        """Logits from the last layer's stream."""
        pooled = _POOLER_ACTIVATIONS[self.pool_act](self.pooler(r[:, 0]))
        return self.logit_bound(self.classifier(pooled))

    @staticmethod
    def key_mask(attention_mask, dtype):
        return attention_mask.to(dtype)[:, None, :, None]

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        length = input_ids.shape[1]
        if length > self.max_length:
            raise MABertError(f"input has {length} tokens; this model accepts at most {self.max_length}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        keymask = self.key_mask(attention_mask, self.position_table.dtype)
        r = self.embed(input_ids, token_type_ids)
        for layer in self.layers:
            r = layer(r, keymask)
        return self.head(r)


def _parts(model):
    """Uniform view of MA-BERT and MA-DistilBERT classifiers (see mabert.registry)."""
    if find_family(model) is None or not is_ma(model) or head_of(model) != HEAD_SEQCLS:
        raise MABertError(f"fuse takes an MA-BERT or MA-DistilBERT sequence classifier, got {type(model).__name__}")
    embeddings, head = embedding_parts(model), head_parts(model)
    bound = head.logit_bound
    # DistilBERT's head is Linear → ReLU → Linear: the registry presents it as pooler(relu) + classifier
    return dict(word=embeddings.word.weight, pos=embeddings.position.weight,
                type=None if embeddings.token_type is None else embeddings.token_type.weight,
                norm0=embeddings.norm, layers=layer_parts(model), pool=head.pooler, pool_act=head.pooler_act,
                cls=head.classifier, logit_bound=bound if bound is not None and bound.is_set else None)


def cheaper_to_reassociate(config) -> bool:
    """Per head at T = L: direct scores cost T²(d + h), reassociated 2·T·h·d (+ small terms)."""
    head_dim = config.hidden_size // config.num_attention_heads
    length, hidden = config.softmax_input_size, config.softmax_hidden_layer_size
    return 2 * hidden * head_dim < length * (head_dim + hidden)


@torch.no_grad()
def fuse(model, check: bool = True, reassociate: bool | None = None, dtype=torch.float32) -> FusedMAModel:
    """Exact matrix-arithmetic-only version of an MA sequence classifier (eval-mode semantics). With `check`, the
    folds are verified in float64 first (`check_fold`)."""
    config = model.config
    if not config.use_softmax_approx:
        raise MABertError("this model uses the real softmax; only models with the softmax approximator can be fused")
    model.eval()
    reassociate = cheaper_to_reassociate(config) if reassociate is None else reassociate
    if check:
        check_fold(model, reassociate)
    return FusedMAModel(_parts(model), config, reassociate, dtype).eval()


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


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got − want| / max |want| over the rows whose reference is finite; NaN in `got` counts as inf."""
    finite = torch.isfinite(want).all(dim=-1)
    if not finite.any():
        return float("nan")
    got, want = got[finite].double(), want[finite].double()
    error = ((got - want).abs().max() / want.abs().max().clamp_min(1e-12)).item()
    return error if error == error else float("inf")


def _piece_errors(reference, fused, ids, mask) -> list[float]:
    """Relative error (max |Δ| / max |reference|) of each piece of `fused` — embeddings, every layer, the head —
    fed the reference's own input to that piece."""
    out = reference(ids, attention_mask=mask, output_hidden_states=True)
    hidden, keymask = out.hidden_states, fused.key_mask(mask, fused.position_table.dtype)
    pieces = [(fused.embed(ids), hidden[0])]
    pieces += [(layer(hidden[i], keymask), hidden[i + 1]) for i, layer in enumerate(fused.layers)]
    pieces.append((fused.head(hidden[-1]), out.logits))
    return [relative_error(got.reshape(-1, got.shape[-1]), want.reshape(-1, want.shape[-1])) for got, want in pieces]


@torch.no_grad()
def check_fold(model, reassociate: bool | None = None, rtol: float = FOLD_TOLERANCE) -> float:
    """The folds' algebra, checked where it is exact: each piece of a float64 fused model (embeddings, every layer,
    the head) against the same piece of a float64 copy of the model, fed the copy's own input to that piece, on
    padded random batches at a short length and at L. A piece passes at ≤ `rtol`; a barely trained model can be so
    ill-conditioned (huge terms cancelling inside a layer) that even float64 rounding shows, and then the piece
    passes if its float64 error is ≤ 1e-4 × its float32 error: rounding shrinks with precision (float64/float32
    epsilon ~2e-9), a wrong fold does not. Returns the worst float64 relative error; raises on a wrong fold."""
    reassociate = cheaper_to_reassociate(model.config) if reassociate is None else reassociate
    reference = copy.deepcopy(model).double().eval()
    fused64 = FusedMAModel(_parts(reference), reference.config, reassociate, torch.float64).eval()
    fused32 = FusedMAModel(_parts(model.eval()), model.config, reassociate, torch.float32).eval()
    worst = 0.0
    for length in sorted({min(16, model.config.softmax_input_size), model.config.softmax_input_size}):
        ids, mask = parity_inputs(model.config, length=length)
        for e64, e32 in zip(_piece_errors(reference, fused64, ids, mask), _piece_errors(model, fused32, ids, mask)):
            if e64 != e64:
                raise MABertError("the model's activations are not finite even in float64 on random inputs, so "
                                  "fusion cannot be checked; calibrate its activation bounds (train it with mabert)")
            if e64 > rtol and not e64 <= 1e-4 * e32:
                raise MABertError(f"fused model disagrees with the original in float64 (relative error {e64:.2e} "
                                  f"> {rtol:.0e}, and not from rounding: float32 gives {e32:.2e}): the fold is wrong "
                                  "for this model; nothing was written")
            worst = max(worst, e64)
    return worst


@torch.no_grad()
def fp32_deviation(model, fused, batches) -> float:
    """Measured fp32 rounding of the fused model: max |fused − model| over `batches` of (input_ids,
    attention_mask[, token_type_ids]), relative to the largest |logit| (a number to report, not a pass/fail)."""
    model.eval()
    got, want = [], []
    for batch in batches:
        ids, mask = batch[0], batch[1]
        types = batch[2] if len(batch) > 2 else None
        want.append(model(ids, attention_mask=mask, token_type_ids=types).logits)
        got.append(fused(ids, attention_mask=mask, token_type_ids=types))
    return relative_error(torch.cat(got), torch.cat(want))
