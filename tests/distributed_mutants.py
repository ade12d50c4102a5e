"""Known bugs of distributed distillation, planted into spawned ranks with ``distill.distributed.worker
--patch tests.distributed_mutants:<name>`` (through ``bindings.kd_distributed.MUTANTS``), so the tests can
watch the ``distill-distributed-v1`` falsifiers catch each one. Each function patches the running process."""

from __future__ import annotations

import torch

from distill.distributed import train


def teacher_last_microbatch() -> None:
    """NeMo Automodel's bug: every microbatch's loss reads the teacher logits of the LAST microbatch."""
    original = train.TeacherDelivery.loss

    def loss(self: train.TeacherDelivery, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        rows = target[:, 0]
        last = torch.arange(len(self.teacher_logits) - len(rows), len(self.teacher_logits))
        return original(self, output, torch.cat([last.unsqueeze(1), target[:, 1:]], dim=1))

    train.TeacherDelivery.loss = loss  # type: ignore[method-assign]


def local_normalizer() -> None:
    """The gradient-accumulation bug: each microbatch is divided by its own valid-token count."""
    original = train.token_sums
    last_count: list[int] = [1]

    def token_sums(*args: object, **kwargs: object) -> train.TokenSums:
        sums = original(*args, **kwargs)  # type: ignore[arg-type]
        last_count[0] = sums.tokens
        return sums

    train.token_sums = token_sums  # type: ignore[assignment]
    train.normalized = lambda loss_sum, normalizer: loss_sum / max(last_count[0], 1)  # type: ignore[assignment]
