import numpy as np
import pytest
import torch

from mabert import PowerNorm


def test_inference_form_is_affine():
    norm = PowerNorm(4, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 0.5, -1.0]))
        norm.bias.copy_(torch.tensor([0.1, 0.0, -0.2, 0.3]))
        norm.running_phi.copy_(torch.tensor([0.5, 1.0, 2.0, 4.0]).view(1, 4, 1, 1))
    norm.eval()
    x = torch.randn(2, 3, 4)
    want = x * norm.weight / torch.sqrt(torch.tensor([0.5, 1.0, 2.0, 4.0]) + 1e-5) + norm.bias
    torch.testing.assert_close(norm(x), want)
    scale, shift = norm.inference_affine()
    torch.testing.assert_close(x * scale + shift, want)


@pytest.mark.parametrize("backward", ["exact", "approximate"])
def test_training_statistics_step_by_step(backward):
    """Warm-up uses the batch second moment; φ follows the reference update every accumulation_step forwards."""
    warmup, accumulate, alpha, eps = 4, 2, 0.9, 1e-6
    norm = PowerNorm(3, eps=eps, alpha_fwd=alpha, warmup_iters=warmup, accumulation_step=accumulate,
                     backward=backward).train()
    rng = np.random.default_rng(0)
    phi, acc = np.ones(3), np.zeros(3)
    for step in range(1, 9):
        x = rng.normal(size=(2, 5, 3)).astype(np.float32) * (step % 3 + 1)
        second_moment = (x.reshape(-1, 3).astype(np.float64) ** 2).mean(0)  # no mean subtraction
        divisor = second_moment if step <= warmup else phi.copy()
        out = norm(torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(out, x / np.sqrt(divisor + eps), rtol=1e-4, atol=1e-5)
        acc = acc + second_moment / accumulate
        if step % accumulate == 0:
            if step < warmup:
                phi = phi * (step - 1) / step + acc / step
            phi = alpha * phi + (1 - alpha) * acc
            acc = np.zeros(3)
        assert int(norm.iters) == step
        np.testing.assert_allclose(norm.running_phi.view(-1).numpy(), phi, rtol=1e-5)
        np.testing.assert_allclose(norm.accumulated_var.view(-1).numpy(), acc, rtol=1e-5, atol=1e-7)


def test_approximate_backward_and_ema_gz():
    eps, alpha_bkw = 1e-6, 0.9
    norm = PowerNorm(3, eps=eps, alpha_bkw=alpha_bkw, warmup_iters=100, backward="approximate").train()
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.5, -0.5, 2.0]))
        norm.ema_gz.copy_(torch.tensor([0.1, -0.2, 0.3]).view(1, 3, 1, 1))
    x = torch.randn(4, 6, 3, requires_grad=True)
    grad_out = torch.randn(4, 6, 3)
    norm(x).backward(grad_out)

    xs, g = x.detach().numpy().reshape(-1, 3).astype(np.float64), grad_out.numpy().reshape(-1, 3)
    var = (xs ** 2).mean(0)
    z = xs / np.sqrt(var + eps)
    ema = np.array([0.1, -0.2, 0.3])
    approx = g * np.array([1.5, -0.5, 2.0]) - (1 - alpha_bkw) * ema * z
    np.testing.assert_allclose(x.grad.numpy().reshape(-1, 3), approx / np.sqrt(var + eps), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(norm.weight.grad.numpy(), (g * z).sum(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(norm.bias.grad.numpy(), g.sum(0), rtol=1e-5)
    np.testing.assert_allclose(norm.ema_gz.view(-1).numpy(), ema + (approx * z).mean(0), rtol=1e-4, atol=1e-6)


def test_buffers_have_reference_shapes():
    norm = PowerNorm(7)
    shapes = {k: tuple(v.shape) for k, v in norm.state_dict().items()}
    assert shapes == {"weight": (7,), "bias": (7,), "running_phi": (1, 7, 1, 1), "ema_gz": (1, 7, 1, 1),
                      "iters": (1,), "accumulated_var": (1, 7, 1, 1)}
    assert norm.iters.dtype == torch.long


def test_make_norm_rejects_unknown():
    from mabert.powernorm import make_norm

    class C:
        norm_type, hidden_size, layer_norm_eps, warmup_updates, accumulation_step = "batch", 4, 1e-12, 1, 1

    with pytest.raises(ValueError, match="norm_type"):
        make_norm(C())


def test_calibrate_running_phi_matches_inputs_second_moment():
    from mabert.powernorm import calibrate_running_phi

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), PowerNorm(4), torch.nn.Linear(4, 4), PowerNorm(4))
    batches = [torch.randn(5, 3) for _ in range(3)]
    assert calibrate_running_phi(model, batches, lambda m, b: m(b)) == 2
    with torch.no_grad():
        first = torch.cat([model[0](b) for b in batches])
        torch.testing.assert_close(model[1].running_phi.view(-1), (first ** 2).mean(0))
        # the second norm saw inputs produced with the first norm's final φ only for the last batch;
        # its φ is the mean over what it actually received
        assert torch.all(model[3].running_phi > 0) and not torch.allclose(model[3].running_phi, torch.ones(1))
    assert model.training  # the caller's mode is restored


def test_statistics_count_only_real_tokens():
    """Inside real_tokens(mask) the batch E[x²] and the backward's ema_gz update are over the real rows only, and
    padding rows get no batch-coupling term (checked against NumPy), so real rows come out the same whatever the
    padding rows hold."""
    from mabert.powernorm import real_tokens

    eps, alpha_bkw, ema0 = 1e-6, 0.9, np.array([0.1, -0.2, 0.3])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    real = mask.bool().numpy().reshape(-1)
    x = torch.randn(2, 5, 3)
    grad_out = torch.randn(2, 5, 3)
    xs, g = x.numpy().reshape(-1, 3).astype(np.float64), grad_out.numpy().reshape(-1, 3)
    sigma = np.sqrt((xs[real] ** 2).mean(0) + eps)
    z = xs / sigma
    approx = g - (1 - alpha_bkw) * ema0 * z * real[:, None]
    for pad_scale in (1.0, 1000.0):
        norm = PowerNorm(3, eps=eps, alpha_bkw=alpha_bkw, warmup_iters=100, backward="approximate").train()
        with torch.no_grad():
            norm.ema_gz.copy_(torch.tensor(ema0).view(1, 3, 1, 1))
        xp = torch.where(mask[..., None].bool(), x, x * pad_scale).requires_grad_()
        with real_tokens(mask):
            out = norm(xp)
        out.backward(grad_out)
        np.testing.assert_allclose(out.detach().numpy().reshape(-1, 3)[real], z[real], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(norm.ema_gz.view(-1).numpy(), ema0 + (approx[real] * z[real]).mean(0),
                                   rtol=1e-4, atol=1e-6)
        if pad_scale == 1.0:
            np.testing.assert_allclose(xp.grad.numpy().reshape(-1, 3), approx / sigma, rtol=1e-4, atol=1e-5)
    # outside the block every row counts, as in the reference
    norm = PowerNorm(3, eps=eps, warmup_iters=100).train()
    np.testing.assert_allclose(norm(x).detach().numpy().reshape(-1, 3), xs / np.sqrt((xs ** 2).mean(0) + eps),
                               rtol=1e-4, atol=1e-5)


def test_mask_that_does_not_fit_the_tokens_is_an_error():
    """A mask with the wrong shape must not silently fall back to counting every row."""
    from mabert.powernorm import real_tokens

    norm = PowerNorm(4).train()
    with real_tokens(torch.ones(2, 5)), pytest.raises(ValueError, match="one mask entry per input token"):
        norm(torch.randn(2, 6, 4))


@pytest.mark.parametrize("masked", [False, True], ids=["all-rows", "real-tokens"])
def test_exact_backward_against_numpy(masked):
    """The default backward is the gradient of what the forward computes: in warm-up, for counted rows,
    ∂L/∂x = (g − z·Σ_rows(g ⊙ z)/N_counted) / σ with g = ∂L/∂y ⊙ γ; uncounted (padding) rows get g / σ; after warm-up
    (a constant φ) every row gets g / √(φ + ε). Γ (ema_gz) is not used."""
    from mabert.powernorm import real_tokens

    eps, weight = 1e-6, np.array([1.5, -0.5, 2.0])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    counted = mask.bool().numpy().reshape(-1) if masked else np.ones(10, dtype=bool)
    x = torch.randn(2, 5, 3) * 2
    grad_out = torch.randn(2, 5, 3)
    xs, dy = x.numpy().reshape(-1, 3).astype(np.float64), grad_out.numpy().reshape(-1, 3).astype(np.float64)
    sigma = np.sqrt((xs[counted] ** 2).mean(0) + eps)
    z, g = xs / sigma, dy * weight
    # every row is divided by σ, so every row's g ⊙ z enters the coupling term; only counted rows move σ
    expected = g / sigma - counted[:, None] * z * (g * z).sum(0) / counted.sum() / sigma
    phi = np.array([0.5, 2.0, 3.0])
    for warmup, expect in ((100, expected), (0, g / np.sqrt(phi + eps))):  # warm-up 0: φ divides from the start
        norm = PowerNorm(3, eps=eps, warmup_iters=warmup).train()
        with torch.no_grad():
            norm.weight.copy_(torch.from_numpy(weight).float())
            norm.running_phi.copy_(torch.from_numpy(phi).float().view(1, 3, 1, 1))
        xp = x.clone().requires_grad_()
        with real_tokens(mask if masked else None):
            norm(xp).backward(grad_out)
        np.testing.assert_allclose(xp.grad.numpy().reshape(-1, 3), expect, rtol=1e-4, atol=1e-5)
        # the φ schedule accumulates the counted rows' E[x²] (1/accumulation_step of it per forward)
        np.testing.assert_allclose(norm.accumulated_var.view(-1).numpy(), (sigma ** 2 - eps) / norm.accumulation_step,
                                   rtol=1e-4)
        assert not norm.ema_gz.any()


def test_unknown_backward_is_rejected():
    with pytest.raises(ValueError, match="backward must be one of"):
        PowerNorm(4, backward="fast")


DDP_GRADIENT_SCRIPT = r'''
import sys
import numpy as np, torch, torch.distributed as dist, torch.multiprocessing as mp
from mabert.powernorm import PowerNorm, real_tokens

def run(rank, port, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    data = np.load(f"{out}/batch.npz")
    rows = slice(2 * rank, 2 * rank + 2)
    x = torch.from_numpy(data["x"][rows]).requires_grad_()
    with real_tokens(torch.from_numpy(data["mask"][rows])):
        PowerNorm(3, warmup_iters=100).train()(x).backward(torch.from_numpy(data["grad_out"][rows]))
    np.save(f"{out}/grad{rank}.npy", x.grad.numpy())
    dist.destroy_process_group()

if __name__ == "__main__":
    mp.spawn(run, args=(int(sys.argv[1]), sys.argv[2]), nprocs=2)
'''


@pytest.mark.slow
def test_exact_backward_across_processes_equals_one_process(tmp_path):
    """Under DDP the statistic spans every rank's real tokens, and so does its gradient: two processes holding
    half a batch each get the gradient one process computes for the whole batch (the loss summed over ranks)."""
    import os
    import subprocess
    import sys

    from mabert.powernorm import real_tokens

    rng = np.random.default_rng(0)
    x, grad_out = rng.normal(size=(4, 5, 3)).astype(np.float32) * 2, rng.normal(size=(4, 5, 3)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]])
    np.savez(tmp_path / "batch.npz", x=x, grad_out=grad_out, mask=mask)
    (tmp_path / "ddp.py").write_text(DDP_GRADIENT_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(tmp_path / "ddp.py"), "29533", str(tmp_path)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    whole = torch.from_numpy(x).requires_grad_()
    with real_tokens(torch.from_numpy(mask)):
        PowerNorm(3, warmup_iters=100).train()(whole).backward(torch.from_numpy(grad_out))
    ranks = np.concatenate([np.load(tmp_path / f"grad{rank}.npy") for rank in range(2)])
    np.testing.assert_allclose(ranks, whole.grad.numpy(), rtol=1e-4, atol=1e-6)
