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


def ddp_average() -> None:
    """DDP's default reduction (average over ranks) on top of the global token normalization."""
    import torch.distributed as dist

    def average(group, bucket):  # type: ignore[no-untyped-def]
        work = dist.all_reduce(bucket.buffer().div_(dist.get_world_size(group)), group=group, async_op=True)
        return work.get_future().then(lambda future: future.value()[0])

    train._sum_gradients = average  # type: ignore[assignment]


def pipeline_scale_grads() -> None:
    """The schedule's default ``scale_grads=True``: gradients divided by the number of microbatches again."""
    from torch.distributed import pipelining

    for name in ("ScheduleGPipe", "Schedule1F1B"):
        original = getattr(pipelining, name)

        class Scaled(original):  # type: ignore[misc, valid-type]
            def __init__(self, *args: object, **kwargs: object) -> None:
                kwargs["scale_grads"] = True
                super().__init__(*args, **kwargs)

        setattr(pipelining, name, Scaled)


def ce_logged_as_sum() -> None:
    """NeMo Automodel's logging: CE as a sum over tokens while KD is a mean."""
    from distill.distributed.loss import StepLog

    original = StepLog.from_sums.__func__  # type: ignore[attr-defined]

    def from_sums(cls: type[StepLog], step: int, sums: torch.Tensor) -> StepLog:
        log = original(cls, step, sums)
        return cls(log.step, log.loss, float(sums[1]), log.kd, log.tokens)

    StepLog.from_sums = classmethod(from_sums)  # type: ignore[method-assign, assignment]


def rank_normalizer() -> None:
    """Per-rank normalization: each rank divides by its own valid-token count (the all-reduce skipped)."""
    train.global_token_count = lambda microbatches, group, device: max(  # type: ignore[assignment]
        sum(mb.valid_tokens() for mb in microbatches), 1
    )


def fsdp2_average() -> None:
    """FSDP2's default gradient reduction (divided by the number of ranks) on top of the global normalization."""
    train._fsdp2_sum_gradients = lambda units: None  # type: ignore[assignment]


def fsdp2_shard_norm() -> None:
    """Gradient clipping under FSDP2 that takes the norm of this rank's shard only, not of the whole gradient."""
    original = train.WRAPPERS["fsdp2"]

    def wrap(student: torch.nn.Module, group: object, device: torch.device) -> train.DataParallelStudent:
        wrapped = original(student, group, device)  # type: ignore[arg-type]
        wrapped.shard_group = None
        return wrapped

    train.WRAPPERS["fsdp2"] = wrap  # type: ignore[assignment]


def stage_only_norm() -> None:
    """Pipeline clipping that takes the norm of this stage's gradients only (the squares not summed over the
    stages)."""
    original = train.clip_gradients

    def clip_gradients(params: object, max_norm: float | None, group: object = None) -> float:
        return original(params, max_norm)  # type: ignore[arg-type]

    train.clip_gradients = clip_gradients  # type: ignore[assignment]
