"""The distillation loss of one microbatch, summed over its tokens, for normalization by a global count.

The KD math comes from the project's verified torch backend (:mod:`backends.torch_backend`, held to the
``kd-loss-v1`` contract): ``kd_loss(reduction="sum")`` is the loss and its analytic gradient, and
``cross_entropy`` / ``kl_divergence`` give the two logged terms. Nothing here re-derives them.

Normalization: a step's loss is ``sum over every valid token of the step / N``, where ``N`` is the number of
valid tokens of the whole step (all ranks, all microbatches), counted before any backward. Each microbatch
contributes ``kd_loss(..., reduction="sum") / N``; the sum of those contributions (and of their gradients)
is the single-process loss on the whole batch, whatever the split. This is ``kd_loss(reduction="mean",
normalizer=N)`` of the shared interface.

Logged values are all per valid token of the step, on one scale: ``ce`` (cross-entropy with the labels),
``kd`` (``T^2 * KL(teacher || student)`` at temperature ``T``) and ``loss = alpha * ce + (1 - alpha) * kd``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from backends.torch_backend import TORCH_CPU, TORCH_CUDA, TorchBackend
from distill.distributed.data import IGNORE_INDEX


def backend_for(device: torch.device) -> TorchBackend:
    """The verified torch backend that computes on ``device``."""
    return TORCH_CUDA if device.type == "cuda" else TORCH_CPU


@dataclass
class TokenSums:
    """Sums over the valid tokens of some microbatches: ``loss`` (a 0-d tensor; differentiable when it comes
    straight from :func:`token_sums`), ``ce`` and ``kd`` (floats, for logging), ``tokens`` (the count)."""

    loss: torch.Tensor
    ce: float
    kd: float
    tokens: int

    def as_tensor(self) -> torch.Tensor:
        """``[loss, ce, kd, tokens]`` in float64, for one all-reduce."""
        return torch.tensor([float(self.loss.detach()), self.ce, self.kd, float(self.tokens)], dtype=torch.float64)


def token_sums(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
) -> TokenSums:
    """The loss of one microbatch summed over its valid tokens, and its CE and KD terms summed the same way."""
    backend = backend_for(student_logits.device)
    loss = backend.kd_loss(
        student_logits,
        teacher_logits,
        labels,
        temperature=temperature,
        alpha=alpha,
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    with torch.no_grad():
        student = student_logits.detach()
        valid = labels != IGNORE_INDEX
        ce = backend.cross_entropy(student, labels, ignore_index=IGNORE_INDEX, reduction="sum")
        kl_rows = backend.kl_divergence(student, teacher_logits, temperature=temperature)
        kd = temperature**2 * torch.where(valid, kl_rows, torch.zeros_like(kl_rows)).sum()
    return TokenSums(loss, float(ce), float(kd), int(valid.sum()))


def normalized(loss_sum: torch.Tensor, normalizer: int) -> torch.Tensor:
    """``loss_sum / N`` for the global valid-token count ``N`` (a step without valid tokens gives 0)."""
    return loss_sum / max(int(normalizer), 1)


@dataclass(frozen=True)
class StepLog:
    """What one optimizer step logs, every value per valid token of the whole step."""

    step: int
    loss: float
    ce: float
    kd: float
    tokens: int

    @classmethod
    def from_sums(cls, step: int, sums: torch.Tensor) -> StepLog:
        """From the (all-reduced) ``[loss, ce, kd, tokens]`` sums of :meth:`TokenSums.as_tensor`."""
        loss, ce, kd, tokens = (float(v) for v in sums)
        scale = 1.0 / max(tokens, 1.0)
        return cls(step, loss * scale, ce * scale, kd * scale, round(tokens))

    def as_dict(self) -> dict[str, float | int]:
        return {"step": self.step, "loss": self.loss, "ce": self.ce, "kd": self.kd, "tokens": self.tokens}
