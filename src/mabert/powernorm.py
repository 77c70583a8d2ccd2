"""Technique 3: PowerNorm, the training-time replacement of LayerNorm.

Training semantics follow the MA-BERT reference (itself the PowerNorm of Shen et al.), with two deliberate deviations:
- statistic: per-channel second moment E[x²] over every token of the batch, no mean subtraction. Deviation: inside
  `real_tokens(attention_mask)` it counts the real tokens only. The MA models set that mask whenever their attention
  gives padded keys weight 0 (so padding rows influence no real token): padding rows' E[x²] was measured 3–6× that
  of real tokens in a trained student's middle layers, so counting them scaled every real token by how much of its
  batch was padding, and set φ from a padding-heavy mix. With the released multiply masking padding rows are read,
  and they count, as in the reference;
- forward: during warm-up (iters ≤ warmup_iters) x is divided by √(batch E[x²] + ε), afterwards by
  √(running_phi + ε);
- running_phi is updated every `accumulation_step` training forwards from the accumulated
  statistic: during warm-up first a cumulative average, then (always) an EMA with alpha_fwd;
- backward: `backward="exact"` (the default) differentiates through the batch statistic the forward divides by,
  as autograd does for LayerNorm (a second deviation, measured: on the demo's task KD the approximate backward
  with real-token statistics diverged after the LayerNorm hand-over, total loss 1.4 → 9.5 by step 150 and 40–57
  at the end, a 58 % student; the exact one stayed at 2.4). `backward="approximate"` is the reference's PowerNorm
  backward with the `ema_gz` correction term; under `real_tokens` Γ is then updated from the real tokens and
  padding rows get no correction term.
At inference it is the fixed per-channel affine map γ·x/√(φ+ε)+β (see `inference_affine`),
which `mabert.fuse` folds into neighbouring linear layers, followed, in a bounded model, by a per-channel clamp
calibrated on training data (`mabert.bounds`).
Buffers keep the reference names and shapes: running_phi, ema_gz, accumulated_var (1, C, 1, 1),
iters (1,) int64 (ema_gz stays 0 with the exact backward).
"""
from __future__ import annotations

import contextlib
import contextvars

import torch
from torch import nn

from .bounds import ActivationBound
from .choices import BACKWARD_EXACT, NORM_LAYER, NORM_POWER, NORM_TYPES, POWERNORM_BACKWARDS

_REAL_TOKENS: contextvars.ContextVar = contextvars.ContextVar("mabert_real_tokens", default=None)


@contextlib.contextmanager
def real_tokens(attention_mask: torch.Tensor | None):
    """Within this block, PowerNorm statistics (the training batch E[x²], its approximate backward's running term,
    `calibrate_running_phi`) count only the positions where `attention_mask` (B, T) is nonzero. No effect at
    inference, where PowerNorm is a fixed affine map."""
    token = _REAL_TOKENS.set(attention_mask)  # compared with 0 only when a statistic is taken: no op in traced graphs
    try:
        yield
    finally:
        _REAL_TOKENS.reset(token)


def _statistic_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(rows of x that statistics count, their (N,) boolean selector or None for all): the real tokens inside
    `real_tokens`; every row outside it, or when the mask has no real token."""
    rows = x.reshape(-1, x.shape[-1])
    mask = _REAL_TOKENS.get()
    if mask is None:
        return rows, None
    if tuple(mask.shape) != tuple(x.shape[:-1]):
        raise ValueError(f"attention_mask has shape {tuple(mask.shape)} but the normalised activations have token "
                         f"axes {tuple(x.shape[:-1])}; pass one mask entry per input token")
    if not bool((mask != 0).any()):
        return rows, None
    keep = mask.detach().reshape(-1) != 0
    return rows[keep], keep


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes whose gradient is the sum of the processes' gradients (each process's rows moved every
    process's statistic), as a differentiable statistic under DDP needs."""

    @staticmethod
    def forward(ctx, tensor):
        total = tensor.clone()
        torch.distributed.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad):
        total = grad.clone()
        torch.distributed.all_reduce(total)
        return total


def _global_mean(rows: torch.Tensor) -> torch.Tensor:
    """Per-channel mean over all rows of every process, so DDP ranks keep identical statistics; differentiable
    (the exact backward goes through it)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        packed = _AllReduceSum.apply(torch.cat([rows.sum(dim=0), rows.new_tensor([rows.shape[0]])]))
        return packed[:-1] / packed[-1]
    return rows.mean(dim=0)


class _PowerNormFunction(torch.autograd.Function):
    """y = γ ⊙ z + β with z = x / √(σ² + ε), σ² the divisor (the batch E[x²] in warm-up, φ after).

    Backward, per channel (the approximate backward of PowerNorm, Shen et al. 2020, as the MA-BERT reference has it,
    except that under `real_tokens` only real tokens update Γ and padding rows get no correction term):
        g      = ∂L/∂y ⊙ γ                                 (gradient with respect to z)
        ĝ      = g − (1 − α_bkw) · Γ ⊙ z                    (Γ = `ema_gz`)
        ∂L/∂x  = ĝ / √(σ²_batch + ε)
        Γ     ← Γ + mean over the counted tokens (ĝ ⊙ z)
    Why: the exact gradient of x / √(E[x²]) has a term −z · mean(g ⊙ z) coupling all tokens of the batch; PowerNorm
    replaces that batch mean with Γ, a running estimate across steps, so training does not depend on one batch's
    statistics. Γ is updated in place from ĝ (not g): since mean(z²) ≈ 1 per channel, the update is
    Γ ← Γ + mean(g ⊙ z) − (1 − α)·Γ ≈ α·Γ + mean(g ⊙ z), an exponentially decaying sum of the batch terms (an EMA up
    to the factor 1/(1 − α)), which is why the buffer is called ema_gz.
    The gradient is divided by the *batch* σ² even after warm-up, when the forward divides by φ: the reference
    does so (it keeps the backward's scale tied to the current batch); we keep it for fidelity with the released
    training code. Warm-up is `iters ≤ warmup_iters` in the forward (the step counting from 1), and φ's cumulative
    average runs while `iters < warmup_iters` (`_update_running_phi`): both as in the reference."""

    @staticmethod
    def forward(ctx, x, weight, bias, divisor_var, batch_var, ema_gz, eps, alpha_bkw, keep):
        z = x / (divisor_var + eps).sqrt()
        ctx.save_for_backward(z, batch_var, weight, ema_gz)
        ctx.eps, ctx.alpha_bkw, ctx.keep = eps, alpha_bkw, keep
        return weight * z + bias

    @staticmethod
    def backward(ctx, grad_output):
        z, batch_var, weight, ema_gz = ctx.saved_tensors
        channels = z.shape[-1]
        g = grad_output * weight
        correction = (1 - ctx.alpha_bkw) * ema_gz * z
        if ctx.keep is not None:
            # uncounted (padding) rows do not enter the statistic, so no batch-coupling term reaches them: their
            # gradient is g/σ exactly. (With the term, padding rows, whose g is ~0, fed −Γ·z into the weights and
            # KD diverged: loss 1.8 → 273.)
            correction = correction * ctx.keep.reshape(*z.shape[:-1], 1).to(z.dtype)
        approx_grad = g - correction
        # In-place, as the reference does: ema_gz is a running correction shared across steps.
        gz_rows = (approx_grad * z).reshape(-1, channels)
        ema_gz.add_(_global_mean(gz_rows if ctx.keep is None else gz_rows[ctx.keep]))
        grad_x = approx_grad / (batch_var + ctx.eps).sqrt()
        grad_weight = (grad_output * z).reshape(-1, channels).sum(dim=0)
        grad_bias = grad_output.reshape(-1, channels).sum(dim=0)
        return grad_x, grad_weight, grad_bias, None, None, None, None, None, None


class PowerNorm(nn.Module):
    def __init__(
        self,
        num_features: int,
        eps: float = 1e-12,
        alpha_fwd: float = 0.9,
        alpha_bkw: float = 0.9,
        warmup_iters: int = 997120,
        accumulation_step: int = 8,
        bounded: bool = False,
        backward: str = BACKWARD_EXACT,
    ):
        super().__init__()
        if backward not in POWERNORM_BACKWARDS:
            raise ValueError(f"backward must be one of {POWERNORM_BACKWARDS}, got {backward!r}")
        self.backward = backward
        self.num_features = num_features
        self.eps = eps
        self.alpha_fwd = alpha_fwd
        self.alpha_bkw = alpha_bkw
        self.warmup_iters = warmup_iters
        self.accumulation_step = accumulation_step
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_phi", torch.ones(1, num_features, 1, 1))
        self.register_buffer("ema_gz", torch.zeros(1, num_features, 1, 1))
        self.register_buffer("iters", torch.zeros(1, dtype=torch.long))
        self.register_buffer("accumulated_var", torch.zeros(1, num_features, 1, 1))
        self.bound = ActivationBound(num_features) if bounded else None

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, alpha_fwd={self.alpha_fwd}, alpha_bkw={self.alpha_bkw}, "
            f"warmup={self.warmup_iters}, accumulation_step={self.accumulation_step}, backward={self.backward}"
        )

    def reset_statistics(self) -> None:
        self.running_phi.fill_(1.0)
        self.ema_gz.zero_()
        self.iters.zero_()
        self.accumulated_var.zero_()

    def inference_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift) with eval-mode output == x * scale + shift, per channel."""
        scale = self.weight / (self.running_phi.reshape(-1) + self.eps).sqrt()
        return scale, self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            scale, shift = self.inference_affine()
            out = x * scale + shift
            return self.bound(out) if self.bound is not None else out
        if self.backward == BACKWARD_EXACT:
            return self._train_exact(x)
        with torch.no_grad():
            step = self._next_step()
            rows, keep = _statistic_rows(x.detach())
            batch_var = _global_mean(rows ** 2)
            divisor_var = self._divisor(batch_var, self._in_warmup(step))
            self._update_running_phi(batch_var, step)
        ema_gz = self.ema_gz.view(self.num_features)
        return _PowerNormFunction.apply(
            x, self.weight, self.bias, divisor_var, batch_var, ema_gz, self.eps, self.alpha_bkw, keep
        )

    def _train_exact(self, x: torch.Tensor) -> torch.Tensor:
        """Training forward whose gradient autograd takes through the batch statistic (warm-up) or through nothing
        (after warm-up φ is a constant)."""
        step = self._next_step()
        in_warmup = self._in_warmup(step)
        with torch.set_grad_enabled(in_warmup and torch.is_grad_enabled()):  # after warm-up φ divides: no graph
            rows, _ = _statistic_rows(x)
            batch_var = _global_mean(rows ** 2)
        divisor_var = self._divisor(batch_var, in_warmup)
        with torch.no_grad():
            self._update_running_phi(batch_var.detach(), step)
        return self.weight * (x / (divisor_var + self.eps).sqrt()) + self.bias

    def _next_step(self) -> int:
        with torch.no_grad():
            self.iters += 1
        return int(self.iters.item())

    def _in_warmup(self, step: int) -> bool:
        return step <= self.warmup_iters

    def _divisor(self, batch_var: torch.Tensor, in_warmup: bool) -> torch.Tensor:
        """The second moment a training step divides by: the batch's during warm-up, the running φ after."""
        return batch_var if in_warmup else self.running_phi.reshape(-1).clone()

    def _update_running_phi(self, batch_var: torch.Tensor, step: int) -> None:
        self.accumulated_var += batch_var.view_as(self.accumulated_var) / self.accumulation_step
        if step % self.accumulation_step != 0:
            return
        if step < self.warmup_iters:
            self.running_phi.mul_((step - 1) / step).add_(self.accumulated_var / step)
        self.running_phi.mul_(self.alpha_fwd).add_((1 - self.alpha_fwd) * self.accumulated_var)
        self.accumulated_var.zero_()


def make_norm(config) -> nn.Module:
    """The normalization layer a config asks for: PowerNorm ("power") or LayerNorm ("layer")."""
    kind = str(config.norm_type).lower()
    if kind == NORM_POWER:
        return PowerNorm(
            config.hidden_size,
            eps=config.layer_norm_eps,
            warmup_iters=config.warmup_updates,
            accumulation_step=config.accumulation_step,
            bounded=config.activation_bounds,
            backward=getattr(config, "powernorm_backward", BACKWARD_EXACT),
        )
    if kind == NORM_LAYER:
        return nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
    raise ValueError(f"norm_type must be one of {NORM_TYPES}, got {config.norm_type!r}")


@torch.no_grad()
def calibrate_running_phi(model: nn.Module, batches, forward) -> int:
    """Set every PowerNorm's running φ to the second moment of its real inputs over `batches`.

    Runs `forward(model, batch)` in eval mode; each norm's φ is updated before it runs, so the norms
    downstream see inputs normalised as they will be at inference. Inside the MA models' forward only real tokens
    count (`real_tokens`). Returns the number of norms set."""
    norms = [m for m in model.modules() if isinstance(m, PowerNorm)]
    sums = {id(n): torch.zeros(n.num_features, dtype=torch.float64, device=n.running_phi.device) for n in norms}
    counts = {id(n): 0 for n in norms}

    def update(norm, args):
        rows, _ = _statistic_rows(args[0].detach())
        sums[id(norm)] += (rows.double() ** 2).sum(dim=0)
        counts[id(norm)] += rows.shape[0]
        norm.running_phi.copy_((sums[id(norm)] / counts[id(norm)]).view_as(norm.running_phi).float())

    hooks = [n.register_forward_pre_hook(update) for n in norms]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            forward(model, batch)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return len(norms)
