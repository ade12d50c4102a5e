"""Peers not called here, pinned by their published formulas (each with its citation), and DistillKit's sparse
top-k conventions against the project's ``tail`` mode.

NeMo Automodel, torchtune and DistillKit need CUDA-only or heavy installs (NeMo's stack, torchtune's torchao
pins, DistillKit's own trainer), so their losses are written here from their published source in plain torch,
and ``reference.conventions`` must agree with them. Liger's fused linear distillation multiplies hidden states
by the lm-head inside its kernel, so its formula on logits is pinned the same way.
"""

from __future__ import annotations

import numpy as np
import pytest

from reference import conventions, kd
from reference.topk import dense_to_topk

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _batch(rng: np.random.Generator, shape=(3, 4, 9)):
    s, t = rng.normal(0, 2, shape), rng.normal(0, 2, shape)
    y = rng.integers(0, shape[-1], shape[:-1])
    y.reshape(-1)[[0, -1]] = -100
    return s, t, y


@pytest.mark.parametrize("num_batch_labels", [None, 17])
def test_nemo_automodel_kd_recipe(rng, num_batch_labels) -> None:
    """NeMo Automodel (components/loss/kd_loss.py, recipes/llm/kd.py): KDLoss = T^2 * sum of per-token
    KL(P_t || P_s) over valid tokens / (num_batch_labels or #valid); loss = (1 - kd_ratio) CE + kd_ratio KD."""
    s, t, y = _batch(rng)
    kd_ratio, temperature = 0.7, 2.0
    valid = torch.tensor(y != -100)
    n = float(num_batch_labels or valid.sum())
    ts, tt, ty = torch.tensor(s), torch.tensor(t), torch.tensor(y)
    log_p = F.log_softmax(tt[valid] / temperature, -1)
    log_q = F.log_softmax(ts[valid] / temperature, -1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1) * temperature**2
    ce = F.cross_entropy(ts.reshape(-1, 9), ty.reshape(-1), ignore_index=-100, reduction="sum")
    published = float((1 - kd_ratio) * ce / n + kd_ratio * kl.sum() / n)
    ours = conventions.nemo_automodel_kd_loss(
        s, t, y, kd_ratio=kd_ratio, temperature=temperature, num_batch_labels=num_batch_labels
    )
    assert ours == pytest.approx(published, rel=1e-12)


def test_torchtune_forward_kl_is_a_soft_cross_entropy(rng) -> None:
    """torchtune (modules/loss/kd_losses.py ForwardKLLoss): -sum_v softmax(t) log_softmax(s) per token, no
    temperature, masked mean; it keeps the teacher's entropy, so it is not 0 at s = t."""
    s, t, y = _batch(rng)
    valid = torch.tensor(y != -100)
    x = (F.softmax(torch.tensor(t), -1) * F.log_softmax(torch.tensor(s), -1)).sum(-1)
    published = float(-(x * valid).sum() / valid.sum())
    assert conventions.torchtune_forward_kl_loss(s, t, y) == pytest.approx(published, rel=1e-12)
    assert conventions.torchtune_forward_kl_loss(t, t, y) > 0.1
    assert float(kd.kd_loss(t, t, y, temperature=1.0, alpha=0.0)) == 0.0


def test_liger_fused_linear_distillation_formula(rng) -> None:
    """Liger (chunked_loss/fused_linear_distillation.py): w_hard CE(untempered) + w_soft JSD(s/T, t/T), both
    per valid token, no T^2."""
    s, t, y = _batch(rng)
    w_h, w_s, beta, temperature = 0.3, 0.9, 0.4, 2.0
    valid = y != -100
    ce = float(kd.cross_entropy(s, y))
    jsd = float(np.asarray(kd.generalized_jsd(s, t, temperature=temperature, beta=beta))[valid].mean())
    ours = conventions.liger_fused_linear_distillation(
        s, t, y, weight_hard_loss=w_h, weight_soft_loss=w_s, beta=beta, temperature=temperature
    )
    assert ours == pytest.approx(w_h * ce + w_s * jsd, rel=1e-12)


def test_distillkit_zero_tail_goes_negative_where_the_tail_mode_does_not(rng) -> None:
    """DistillKit's sparse top-k forward KL with a zero tail is sum_k p_k (l_k - log q_k): below 0 whenever the
    student puts more mass on the K ids than the teacher. The project's tail mode adds the bucket term and is
    >= 0; the two differ by exactly P_tail (log P_tail - log Q_tail)."""
    s, t, _ = _batch(rng, (64, 12))
    lp, ids = dense_to_topk(t, 3)
    np.put_along_axis(s, ids, np.take_along_axis(s, ids, -1) + 4.0, axis=-1)  # the student crowds the teacher's K
    zero = conventions.distillkit_sparse_kl(s, lp, ids, missing="zero")
    tail = np.asarray(kd.topk_divergence(s, lp, ids, mode="tail"))
    assert (zero < 0).any() and (tail >= 0).all()
    log_q = s - np.logaddexp.reduce(s, axis=-1, keepdims=True)
    p_tail = 1.0 - np.exp(lp).sum(-1)
    q_tail = 1.0 - np.exp(np.take_along_axis(log_q, ids, -1)).sum(-1)
    np.testing.assert_allclose(tail - zero, p_tail * (np.log(p_tail) - np.log(q_tail)), rtol=1e-8, atol=1e-12)


def test_distillkit_uniform_tail_is_a_dense_kl(rng) -> None:
    """With the missing mass spread evenly over the other V - K ids, DistillKit's loss is the dense forward KL
    against that completed teacher; at K = V both tails are the dense KL."""
    s, t, _ = _batch(rng, (8, 10))
    lp, ids = dense_to_topk(t, 4)
    completed = np.full(s.shape, np.log((1.0 - np.exp(lp).sum(-1, keepdims=True)) / 6.0))
    np.put_along_axis(completed, ids, lp, axis=-1)
    uniform = conventions.distillkit_sparse_kl(s, lp, ids, missing="uniform")
    np.testing.assert_allclose(uniform, kd.kl_divergence(s, completed), rtol=1e-10, atol=1e-12)
    full_lp, full_ids = dense_to_topk(t, 10)
    for missing in ("zero", "uniform"):
        got = conventions.distillkit_sparse_kl(s, full_lp, full_ids, missing=missing)
        np.testing.assert_allclose(got, kd.kl_divergence(s, t), rtol=1e-10, atol=1e-12)
