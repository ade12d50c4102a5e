"""TRL's ``generalized_jsd_loss`` (GKD), called from the installed ``trl`` package, against the project.

The loss must equal ``reference.conventions.trl_generalized_jsd_loss`` (and through it the project's
``generalized_jsd``) for every beta, including TRL's endpoint branches and the interior next to them, every
reduction and ``num_items_in_batch``; and TRL's autograd gradient must equal the project's analytic gradient
(``kd_logit_gradient(alpha=0, divergence='generalized_jsd') / T^2`` with the same normalizer).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from reference import conventions, kd

torch = pytest.importorskip("torch")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
gkd = pytest.importorskip("trl.experimental.gkd.gkd_trainer", reason="TRL is not installed: pip install -e '.[peers]'")
trl_loss = gkd.GKDTrainer.generalized_jsd_loss

BETAS = [0.0, 1e-9, 0.1, 0.5, 0.9, 1.0 - 1e-9, 1.0]


def _inputs(rng: np.random.Generator, shape=(2, 3, 7)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = rng.normal(0, 2, shape)
    t = rng.normal(0, 2, shape)
    y = rng.integers(0, shape[-1], shape[:-1])
    y[0, 1] = y[1, 2] = -100
    return s, t, y


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_trl_loss_equals_the_mapping(rng, beta: float, temperature: float) -> None:
    s, t, y = _inputs(rng)
    for reduction in ("batchmean", "sum", "mean"):
        theirs = float(trl_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), beta, temperature, reduction))
        ours = conventions.trl_generalized_jsd_loss(s, t, y, beta, temperature, reduction)
        assert ours == pytest.approx(theirs, rel=1e-10, abs=1e-12), reduction
    no_labels = float(trl_loss(torch.tensor(s), torch.tensor(t), None, beta, temperature))
    assert conventions.trl_generalized_jsd_loss(s, t, None, beta, temperature) == pytest.approx(no_labels, rel=1e-10)


@pytest.mark.parametrize("beta", BETAS)
def test_trl_gradient_equals_the_analytic_gradient(rng, beta: float) -> None:
    s, t, y = _inputs(rng)
    temperature, items = 1.5, 11
    student = torch.tensor(s, requires_grad=True)
    trl_loss(student, torch.tensor(t), torch.tensor(y), beta, temperature, num_items_in_batch=items).backward()
    ours = (
        kd.kd_logit_gradient(
            s, t, y, temperature=temperature, alpha=0.0, divergence="generalized_jsd", beta=beta, normalizer=items
        )
        / temperature**2
    )
    np.testing.assert_allclose(ours, student.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_trl_endpoints_are_discontinuous_as_pinned(rng) -> None:
    """TRL's interior formula tends to 0 at the ends while beta = 0 and 1 are the KL branches: the project
    keeps that (kd-divergences-v1 F-DIV-ENDPOINT-002 pins it for every backend)."""
    s, t, y = _inputs(rng)
    at = {b: float(trl_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), b)) for b in (0.0, 1e-9, 1 - 1e-9, 1.0)}
    assert at[1e-9] < 1e-6 * at[0.0] and at[1 - 1e-9] < 1e-6 * at[1.0]
    assert at[0.0] == pytest.approx(float(np.mean(kd.kl_divergence(s, t)[y != -100])), rel=1e-12)
    assert at[1.0] == pytest.approx(float(np.mean(kd.reverse_kl(s, t)[y != -100])), rel=1e-12)
