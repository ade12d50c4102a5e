"""The torch backend's fast KD path (backends/torch_kd_kernel.py): eager row blocks and the compiled kernel
agree with the float64 reference, the gradient keeps its accuracy, and autograd sees the right gradient.

Speed and peak memory are measured by benchmarks/bench_kd.py, not here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from backends import torch_kd_kernel as kernel
from backends.torch_backend import TORCH_CPU
from reference import kd

KW = {"temperature": 2.0, "alpha": 0.3}


def _inputs(shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    s, t = rng.normal(0, 4, shape), rng.normal(0, 4, shape)
    y = rng.integers(0, shape[-1], shape[:-1])
    y.reshape(-1)[::5] = -100
    return s, t, y


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_row_blocks_span_several_blocks_and_match_the_reference(monkeypatch, reduction: str) -> None:
    monkeypatch.setattr(kernel, "BLOCK_ELEMENTS", 64)  # 3 rows of 20 per block: 7 blocks, the last partial
    monkeypatch.setenv(kernel.COMPILE_ENV, "never")
    s, t, y = _inputs((4, 5, 20))
    loss = TORCH_CPU.kd_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), reduction=reduction, **KW)
    grad = TORCH_CPU.kd_logit_gradient(torch.tensor(s), torch.tensor(t), torch.tensor(y), reduction=reduction, **KW)
    np.testing.assert_allclose(loss.numpy(), kd.kd_loss(s, t, y, reduction=reduction, **KW), atol=1e-12)
    np.testing.assert_allclose(grad.numpy(), kd.kd_logit_gradient(s, t, y, reduction=reduction, **KW), atol=1e-14)


def test_the_compiled_kernel_matches_the_reference_and_the_eager_one(monkeypatch) -> None:
    """One compile (float32, gradient, T != 1): loss, autograd gradient, and the validation after the fact."""
    monkeypatch.setenv(kernel.COMPILE_ENV, "always")
    s, t, y = _inputs((3, 7, 50), seed=1)
    leaf = torch.tensor(s, dtype=torch.float32, requires_grad=True)
    teacher, labels = torch.tensor(t, dtype=torch.float32), torch.tensor(y)
    loss = TORCH_CPU.kd_loss(leaf, teacher, labels, **KW)
    loss.backward()
    s32, t32 = s.astype(np.float32).astype(np.float64), t.astype(np.float32).astype(np.float64)
    assert abs(loss.item() - kd.kd_loss(s32, t32, y, **KW)) < 1e-5
    np.testing.assert_allclose(leaf.grad.numpy(), kd.kd_logit_gradient(s32, t32, y, **KW), atol=1e-7)
    bad = leaf.detach().clone()
    bad[1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="student_logits contains NaN at position"):
        TORCH_CPU.kd_loss(bad.requires_grad_(True), teacher, labels, **KW)


def test_the_gradient_is_closer_to_float64_than_autograd_through_log_softmax(monkeypatch) -> None:
    monkeypatch.setenv(kernel.COMPILE_ENV, "never")
    s, t, y = _inputs((64, 4000), seed=2)
    s32, t32 = s.astype(np.float32), t.astype(np.float32)
    exact = kd.kd_logit_gradient(s32.astype(np.float64), t32.astype(np.float64), y, **KW)
    ours = TORCH_CPU.kd_logit_gradient(torch.tensor(s32), torch.tensor(t32), torch.tensor(y), **KW).numpy()
    leaf = torch.tensor(s32, requires_grad=True)
    tt, yy, temperature, alpha = torch.tensor(t32), torch.tensor(y), KW["temperature"], KW["alpha"]
    ce = F.cross_entropy(leaf, yy, ignore_index=-100)
    kl = F.kl_div(F.log_softmax(leaf / temperature, -1), F.log_softmax(tt / temperature, -1), log_target=True,
                  reduction="none").sum(-1)  # fmt: skip
    kl = torch.where(yy != -100, kl, 0.0).sum() / (yy != -100).sum()
    (alpha * ce + (1 - alpha) * temperature**2 * kl).backward()
    ours_error = np.abs(ours - exact).max()
    autograd_error = np.abs(leaf.grad.numpy() - exact).max()
    assert ours_error * 3 < autograd_error, (ours_error, autograd_error)  # measured: 3.8x


def test_grad_output_scales_the_gradient_and_a_second_backward_recomputes_it(monkeypatch) -> None:
    monkeypatch.setenv(kernel.COMPILE_ENV, "never")
    s, t, y = _inputs((6, 30), seed=3)
    expected = kd.kd_logit_gradient(s, t, y, **KW)
    leaf = torch.tensor(s, requires_grad=True)
    loss = TORCH_CPU.kd_loss(leaf, torch.tensor(t), torch.tensor(y), **KW)
    (3.0 * loss).backward(retain_graph=True)
    np.testing.assert_allclose(leaf.grad.numpy(), 3 * expected, atol=1e-14)
    loss.backward()  # accumulates: the buffer handed to autograd first must not be reused
    np.testing.assert_allclose(leaf.grad.numpy(), 4 * expected, atol=1e-14)
    rows = torch.tensor(s, requires_grad=True)
    per_row = TORCH_CPU.kd_loss(rows, torch.tensor(t), torch.tensor(y), reduction="none", **KW)
    weights = torch.arange(6, dtype=torch.float64)
    (per_row * weights).sum().backward()
    np.testing.assert_allclose(
        rows.grad.numpy(), kd.kd_logit_gradient(s, t, y, reduction="none", **KW) * weights.numpy()[:, None], atol=1e-14
    )


def test_a_bad_compile_mode_is_one_sentence(monkeypatch) -> None:
    monkeypatch.setenv(kernel.COMPILE_ENV, "sometimes")
    message = r"^KD_TORCH_COMPILE=.sometimes. is not a mode: use one of auto, always, never"
    with pytest.raises(ValueError, match=message):
        TORCH_CPU.kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 1]), **KW)
