"""Training loops: the single-process oracle, data parallel (DDP) and pipeline parallel
(``torch.distributed.pipelining``). All three build the same student and teacher from the seed, read the same
global batches, and normalize every step by its global valid-token count, so the parameters they reach agree
to rounding whatever the split of the batch into ranks and microbatches.

* :func:`train_single` runs the whole batch through one process at once: the oracle the others are held to.
* :func:`train_data_parallel`: each rank takes its share of the batch, cut into ``accumulation``
  microbatches; the valid-token count is all-reduced before the first backward; gradients are summed over
  ranks (a DDP communication hook that sums instead of averaging) and synchronized once per step (``no_sync``
  on every microbatch but the last).
* :func:`train_pipeline`: one stage per rank. The teacher runs on the last stage over the whole batch; each
  microbatch's target carries its batch row indices, so the loss of every microbatch looks up exactly its own
  rows of teacher logits (never the last microbatch's for all of them). Gradients are not rescaled by the
  number of microbatches (``scale_grads=False``): each microbatch's loss is already divided by the global
  count.

A collective or point-to-point transfer that fails (another rank died, a timeout) raises :class:`RankFailure`
with a sentence naming this rank, the step and what it was doing.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from distill.distributed.config import RunConfig
from distill.distributed.data import Batch, global_batch, rank_microbatches
from distill.distributed.loss import StepLog, TokenSums, normalized, token_sums
from distill.distributed.model import TinyLM, build_model, stage_module

StepCallback = Callable[[StepLog], None]


class RankFailure(RuntimeError):
    """A collective or transfer failed on this rank: another rank has stopped or the timeout passed."""


@dataclass
class RunResult:
    """What a run reached: one :class:`StepLog` per step, the student's final parameters (float64 copies,
    full model names), and for pipeline runs, per step and per microbatch in the order the loss saw them, the
    batch rows whose teacher logits that microbatch's loss used."""

    config: RunConfig
    world_size: int
    logs: list[StepLog]
    params: dict[str, torch.Tensor]
    teacher_rows: list[list[list[int]]] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------------------


def build_models(config: RunConfig, *, teacher: bool = True) -> tuple[TinyLM, TinyLM | None]:
    """The student (trainable) and the teacher (eval mode, frozen; ``None`` unless ``teacher``) of ``config``."""
    student = build_model(config.student, config.seed, config.torch_dtype)
    if not teacher:
        return student, None
    model = build_model(config.teacher, config.seed + 1_000, config.torch_dtype).eval()
    model.requires_grad_(False)
    return student, model


def _batch(config: RunConfig, step: int) -> Batch:
    return global_batch(step, config.batch_size, config.student.seq_len, config.student.vocab, config.seed)


def _teacher_logits(teacher: TinyLM, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return teacher(ids)


def _optimizer(config: RunConfig, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.learning_rate, momentum=0.9)
    return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.01)


def clip_gradients(params: Iterable[nn.Parameter], max_norm: float | None, group: Any = None) -> float:
    """Scale the gradients so that their global 2-norm is at most ``max_norm``; return the norm before.

    With ``group``, the squared norm is summed over its ranks first (pipeline stages hold disjoint
    parameters); without, the local gradients are the whole model's (single process, or DDP's replicas).
    """
    grads = [p.grad for p in params if p.grad is not None]
    squares = torch.zeros((), dtype=torch.float64)
    for grad in grads:
        squares += grad.detach().double().pow(2).sum()
    if group is not None:
        dist.all_reduce(squares, group=group)
    norm = math.sqrt(float(squares))
    if max_norm is not None:
        coefficient = max_norm / (norm + 1e-6)
        if coefficient < 1.0:
            for grad in grads:
                grad.mul_(coefficient)
    return norm


def _params(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().to(torch.float64).clone() for name, value in module.state_dict().items()}


@contextlib.contextmanager
def collective_failures(rank: int, world_size: int, where: str, doing: str) -> Iterator[None]:
    """Turn a failed collective or transfer into :class:`RankFailure` with a sentence."""
    try:
        yield
    except (dist.DistError, RuntimeError) as error:
        if isinstance(error, RankFailure) or not _is_communication_error(error):
            raise
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        first_line = first_line.split(" This is typically caused by")[0]  # gloo's advice, not the fact
        raise RankFailure(
            f"rank {rank} of {world_size} stopped in {where} ({doing}): a collective failed, so another "
            f"rank has most likely died or timed out; look for the first error in the other ranks' output "
            f"({type(error).__name__}: {first_line})"
        ) from error


_COMMUNICATION_WORDS = ("gloo", "nccl", "connection", "socket", "timed out", "timeout", "peer", "closed", "broken pipe")


def _is_communication_error(error: BaseException) -> bool:
    if isinstance(error, dist.DistError):
        return True
    text = str(error).lower()
    return any(word in text for word in _COMMUNICATION_WORDS)


def _world(group: Any) -> tuple[int, int]:
    return dist.get_rank(group), dist.get_world_size(group)


def _gather(group: Any, payload: Any) -> list[Any] | None:
    """Every rank's ``payload`` on rank 0 (in rank order); ``None`` on the other ranks."""
    rank, world_size = _world(group)
    gathered: list[Any] | None = [None] * world_size if rank == 0 else None
    dist.gather_object(payload, gathered, dst=dist.get_global_rank(group, 0) if group is not None else 0, group=group)
    return gathered


# --------------------------------------------------------------------------------------------------------
# The oracle: one process, the whole batch at once
# --------------------------------------------------------------------------------------------------------


def train_single(config: RunConfig, on_step: StepCallback | None = None) -> RunResult:
    """Train on the whole batch in this process, without torch.distributed: the oracle."""
    config.check(1)
    student, teacher = build_models(config)
    assert teacher is not None
    optimizer = _optimizer(config, student.parameters())
    logs = []
    for step in range(1, config.steps + 1):
        batch = _batch(config, step - 1)
        sums = token_sums(
            student(batch.ids),
            _teacher_logits(teacher, batch.ids),
            batch.labels,
            temperature=config.temperature,
            alpha=config.alpha,
        )
        normalized(sums.loss, sums.tokens).backward()
        clip_gradients(student.parameters(), config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        logs.append(StepLog.from_sums(step, sums.as_tensor()))
        if on_step is not None:
            on_step(logs[-1])
    return RunResult(config, 1, logs, _params(student))


# --------------------------------------------------------------------------------------------------------
# Data parallel
# --------------------------------------------------------------------------------------------------------


def _sum_gradients(group, bucket):  # type: ignore[no-untyped-def]
    """DDP communication hook: all-reduce a gradient bucket with SUM (DDP's default hook averages, which
    would divide by the world size a loss already normalized by the global token count). Left without
    annotations: DDP checks them against the real classes, and this module's annotations are strings."""
    work = dist.all_reduce(bucket.buffer(), group=group, async_op=True)
    return work.get_future().then(lambda future: future.value()[0])


def train_data_parallel(config: RunConfig, group: Any = None, on_step: StepCallback | None = None) -> RunResult | None:
    """Train with DDP on the ranks of ``group`` (default: the world). Returns the result on rank 0 (``None``
    elsewhere); ``on_step`` is called on rank 0 after every step."""
    rank, world_size = _world(group)
    config.check(world_size)
    student, teacher = build_models(config)
    assert teacher is not None
    with collective_failures(rank, world_size, "setup", "DDP's broadcast of the initial parameters"):
        ddp = DistributedDataParallel(student, process_group=group)
    ddp.register_comm_hook(group, _sum_gradients)
    optimizer = _optimizer(config, ddp.parameters())
    logs = []
    for step in range(1, config.steps + 1):
        microbatches = rank_microbatches(_batch(config, step - 1), rank, world_size, config.accumulation)
        count = torch.tensor(sum(mb.valid_tokens() for mb in microbatches), dtype=torch.int64)
        with collective_failures(rank, world_size, f"step {step}", "all-reduce of the valid-token count"):
            dist.all_reduce(count, group=group)
        totals = torch.zeros(4, dtype=torch.float64)
        with collective_failures(rank, world_size, f"step {step}", "forward and backward with the gradient all-reduce"):
            for index, mb in enumerate(microbatches):
                last = index == len(microbatches) - 1
                with contextlib.nullcontext() if last else ddp.no_sync():
                    sums = token_sums(
                        ddp(mb.ids),
                        _teacher_logits(teacher, mb.ids),
                        mb.labels,
                        temperature=config.temperature,
                        alpha=config.alpha,
                    )
                    normalized(sums.loss, int(count)).backward()
                totals += sums.as_tensor()
        clip_gradients(ddp.parameters(), config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with collective_failures(rank, world_size, f"step {step}", "all-reduce of the logged sums"):
            dist.all_reduce(totals, group=group)
        logs.append(StepLog.from_sums(step, totals))
        if on_step is not None and rank == 0:
            on_step(logs[-1])
    with collective_failures(rank, world_size, "the end", "gathering the results"):
        _gather(group, None)
    return RunResult(config, world_size, logs, _params(student)) if rank == 0 else None


# --------------------------------------------------------------------------------------------------------
# Pipeline parallel
# --------------------------------------------------------------------------------------------------------


class TeacherDelivery:
    """The teacher's logits of one step's whole batch on the last stage, handed to the loss of each
    microbatch by the batch row indices that travel in that microbatch's target (column 0; the labels
    follow). Records the rows each microbatch's loss used, and sums the logged terms."""

    def __init__(self, teacher_logits: torch.Tensor, normalizer: int, config: RunConfig) -> None:
        self.teacher_logits = teacher_logits
        self.normalizer = normalizer
        self.temperature = config.temperature
        self.alpha = config.alpha
        self.rows_seen: list[list[int]] = []
        self.totals = torch.zeros(4, dtype=torch.float64)

    @staticmethod
    def target(batch: Batch) -> torch.Tensor:
        """``[B, 1 + S]``: each row's index in the batch, then its labels; the schedule splits it into
        microbatches exactly as it splits the inputs."""
        rows = torch.arange(len(batch), dtype=torch.int64).unsqueeze(1)
        return torch.cat([rows, batch.labels], dim=1)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        rows, labels = target[:, 0], target[:, 1:]
        self.rows_seen.append([int(r) for r in rows])
        sums: TokenSums = token_sums(
            output, self.teacher_logits[rows], labels, temperature=self.temperature, alpha=self.alpha
        )
        self.totals += sums.as_tensor()
        return normalized(sums.loss, self.normalizer)


def _microbatch_loss(output: torch.Tensor, target: torch.Tensor, *, delivery: TeacherDelivery) -> torch.Tensor:
    return delivery.loss(output, target)


def train_pipeline(config: RunConfig, group: Any = None, on_step: StepCallback | None = None) -> RunResult | None:
    """Train with one pipeline stage per rank of ``group`` (default: the world), under the
    ``torch.distributed.pipelining`` schedule ``config.schedule``. Returns the result on rank 0 (``None``
    elsewhere); ``on_step`` is called on the last stage after every step."""
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    rank, world_size = _world(group)
    config.check(world_size)
    first, last = rank == 0, rank == world_size - 1
    full, teacher = build_models(config, teacher=last)
    stage = stage_module(full, rank, world_size)
    schedule_class = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}[config.schedule]
    # Static shapes: the stage is told its microbatch's input and output at construction, so the schedule
    # never runs the model or the loss on placeholder tensors to infer them.
    m, shape = config.pipeline_microbatch_size, config.student
    # Hidden states carry a gradient back to the previous stage; the first stage's input is token ids.
    hidden = torch.empty(m, shape.seq_len, shape.width, dtype=config.torch_dtype, requires_grad=True)
    example_in = torch.zeros(m, shape.seq_len, dtype=torch.int64) if first else hidden
    example_out = (
        torch.empty(m, shape.seq_len, shape.vocab, dtype=config.torch_dtype, requires_grad=True) if last else hidden
    )
    schedule = schedule_class(
        PipelineStage(
            stage, rank, world_size, torch.device("cpu"), input_args=example_in, output_args=example_out, group=group
        ),
        n_microbatches=config.microbatches,
        loss_fn=_microbatch_loss,
        scale_grads=False,
    )
    optimizer = _optimizer(config, stage.parameters())
    logs: list[StepLog] = []
    teacher_rows: list[list[list[int]]] = []
    for step in range(1, config.steps + 1):
        batch = _batch(config, step - 1)
        args = (batch.ids,) if first else ()
        options: dict[str, Any] = {}
        delivery = None
        if last:
            assert teacher is not None
            delivery = TeacherDelivery(_teacher_logits(teacher, batch.ids), batch.valid_tokens(), config)
            options = {"target": TeacherDelivery.target(batch), "loss_kwargs": {"delivery": delivery}}
        with collective_failures(rank, world_size, f"step {step}", "the pipeline schedule's forward and backward"):
            schedule.step(*args, **options)
        with collective_failures(rank, world_size, f"step {step}", "all-reduce of the gradient norm"):
            clip_gradients(stage.parameters(), config.max_grad_norm, group=group if world_size > 1 else None)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if delivery is not None:
            logs.append(StepLog.from_sums(step, delivery.totals))
            teacher_rows.append(delivery.rows_seen)
            if on_step is not None:
                on_step(logs[-1])
    with collective_failures(rank, world_size, "the end", "gathering the results"):
        gathered = _gather(group, (_params(stage), logs, teacher_rows))
    if gathered is None:
        return None
    params: dict[str, torch.Tensor] = {}
    for stage_params, _, _ in gathered:
        params.update(stage_params)
    _, logs, teacher_rows = gathered[-1]
    return RunResult(config, world_size, logs, params, teacher_rows)


def train(config: RunConfig, group: Any = None, on_step: StepCallback | None = None) -> RunResult | None:
    """Run ``config`` on ``group`` (``single`` needs no process group). Returns the result on rank 0."""
    if config.parallel == "single":
        return train_single(config, on_step)
    if config.parallel == "data":
        return train_data_parallel(config, group, on_step)
    return train_pipeline(config, group, on_step)
