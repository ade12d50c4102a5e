"""Training loops: the single-process oracle, data parallel (DDP or FSDP2) and pipeline parallel
(``torch.distributed.pipelining``). All three build the same student and teacher from the seed, read the same
global batches, and normalize every step by its global valid-token count, so the parameters they reach agree
to rounding whatever the split of the batch into ranks and microbatches.

* :func:`train_single` runs the whole batch through one process at once: the oracle the others are held to.
* :func:`train_data_parallel`: each rank takes its share of the batch, cut into ``accumulation``
  microbatches; the valid-token count is all-reduced before the first backward; gradients are summed over
  ranks and synchronized once per step. Under DDP (replicas): a communication hook that sums instead of
  averaging, ``no_sync`` on every microbatch but the last. Under FSDP2 (``fully_shard`` on every block and the
  root; parameters, gradients and optimizer state are sharded DTensors): a gradient divide factor of 1 with
  sum-only collectives, ``set_requires_gradient_sync(False)`` on every microbatch but the last, the clipping
  norm summed over the shards, and the final parameters gathered to full tensors.
* :func:`train_pipeline`: one stage per rank. The teacher runs on the last stage over the whole batch; each
  microbatch's target carries its batch row indices, so the loss of every microbatch looks up exactly its own
  rows of teacher logits (never the last microbatch's for all of them). Gradients are not rescaled by the
  number of microbatches (``scale_grads=False``): each microbatch's loss is already divided by the global
  count.

A collective or point-to-point transfer that fails (another rank died, a timeout) raises :class:`RankFailure`
with a sentence naming this rank, the step and what it was doing.

Every loop takes the ``device`` its rank computes on (default the CPU; ``cuda:LOCAL_RANK`` from
:mod:`distill.distributed.placement` on GPU nodes): models, batches, teacher logits and the tensors of every
collective live there (NCCL reduces only CUDA tensors); logged sums and returned parameters come back to the
CPU.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from distill.distributed.config import RunConfig
from distill.distributed.data import Batch, global_batch, rank_microbatches
from distill.distributed.loss import StepLog, TokenSums, normalized, token_sums
from distill.distributed.model import TinyLM, build_model, stage_module

StepCallback = Callable[[StepLog], None]
CPU = torch.device("cpu")


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


def build_models(
    config: RunConfig, *, teacher: bool = True, device: torch.device = CPU
) -> tuple[TinyLM, TinyLM | None]:
    """The student (trainable) and the teacher (eval mode, frozen; ``None`` unless ``teacher``) of ``config``,
    built on the CPU from the seed (the same weights on every rank) and moved to ``device``."""
    student = build_model(config.student, config.seed, config.torch_dtype).to(device)
    if not teacher:
        return student, None
    model = build_model(config.teacher, config.seed + 1_000, config.torch_dtype).to(device).eval()
    model.requires_grad_(False)
    return student, model


def _batch(config: RunConfig, step: int) -> Batch:
    return global_batch(step, config.batch_size, config.student.seq_len, config.student.vocab, config.seed)


def _to(batch: Batch, device: torch.device) -> Batch:
    return Batch(batch.ids.to(device), batch.labels.to(device))


def _all_reduce_sum(values: torch.Tensor, group: Any, device: torch.device) -> torch.Tensor:
    """``values`` summed over ``group``, reduced on ``device`` (NCCL reduces only CUDA tensors), on the CPU."""
    on_device = values.to(device)
    dist.all_reduce(on_device, group=group)
    return on_device.cpu()


def global_token_count(microbatches: list[Batch], group: Any, device: torch.device) -> int:
    """The valid tokens of the whole step: this rank's microbatches, summed over every rank of ``group``.
    Every rank divides its summed losses by this count before any backward."""
    local = torch.tensor(sum(mb.valid_tokens() for mb in microbatches), dtype=torch.int64)
    return int(_all_reduce_sum(local, group, device))


def _teacher_logits(teacher: TinyLM, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return teacher(ids)


def _optimizer(config: RunConfig, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.learning_rate, momentum=0.9)
    return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.01)


def clip_gradients(params: Iterable[nn.Parameter], max_norm: float | None, group: Any = None) -> float:
    """Scale the gradients so that their global 2-norm is at most ``max_norm``; return the norm before.

    With ``group``, the squared norm is summed over its ranks first (pipeline stages and FSDP2 shards hold
    disjoint parts of the gradient; a DTensor gradient counts its local shard); without, the local gradients
    are the whole model's (single process, or DDP's replicas).
    """
    grads = [_local(p.grad) for p in params if p.grad is not None]
    device = grads[0].device if grads else CPU
    squares = torch.zeros((), dtype=torch.float64, device=device)
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


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (sharing its storage), or the tensor itself."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def _params(module: nn.Module) -> dict[str, torch.Tensor]:
    """Float64 CPU copies of ``module``'s state, by name. DTensors (FSDP2 shards) are gathered to full
    tensors first: a collective, so every rank of the mesh calls this."""
    return {
        name: (value.full_tensor() if isinstance(value, DTensor) else value).detach().to(CPU, torch.float64).clone()
        for name, value in module.state_dict().items()
    }


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


def train_single(config: RunConfig, on_step: StepCallback | None = None, device: torch.device = CPU) -> RunResult:
    """Train on the whole batch in this process, without torch.distributed: the oracle."""
    config.check(1)
    student, teacher = build_models(config, device=device)
    assert teacher is not None
    optimizer = _optimizer(config, student.parameters())
    logs = []
    for step in range(1, config.steps + 1):
        batch = _to(_batch(config, step - 1), device)
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


def _fsdp2_sum_gradients(units: list[Any]) -> None:
    """Make FSDP2's gradient reduce-scatter a plain sum (its default divides by the number of ranks, on top
    of a loss already normalized by the global token count): divide factor 1, and sum-only collectives (no
    ``PREMUL_SUM``/``AVG``, which gloo lacks). Set on every ``fully_shard`` unit: each has its own groups."""
    for unit in units:
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)


@dataclass
class DataParallelStudent:
    """The student as the data-parallel loop drives it, whichever wrapper holds it.

    ``module``: what the forward calls and the optimizer steps (DDP's wrapper, or the ``fully_shard`` root,
    whose parameters are sharded DTensors); ``sync(last)``: the context of one microbatch's forward and
    backward, reducing gradients over the ranks only when ``last``; ``shard_group``: the group over which the
    gradient norm's squares are summed (FSDP2: each rank holds a shard), ``None`` for DDP's full replicas."""

    module: nn.Module
    sync: Callable[[bool], contextlib.AbstractContextManager[Any]]
    shard_group: Any


def wrap_ddp(student: TinyLM, group: Any, device: torch.device) -> DataParallelStudent:
    """``student`` under DDP (its initial parameters broadcast from rank 0), gradients summed over ranks."""
    ddp = DistributedDataParallel(
        student, process_group=group, device_ids=[device.index] if device.type == "cuda" else None
    )
    ddp.register_comm_hook(group, _sum_gradients)
    return DataParallelStudent(ddp, lambda last: contextlib.nullcontext() if last else ddp.no_sync(), None)


def wrap_fsdp2(student: TinyLM, group: Any, device: torch.device) -> DataParallelStudent:
    """``student`` under FSDP2: ``fully_shard`` on every block, then on the root (embeddings, norm, head), on
    a one-dimensional mesh over ``group``. Every rank built the same weights from the seed, so sharding them
    needs no broadcast."""
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    # The root returns the head's output, a view; FSDP2 warns that an in-place op on it would skip its
    # pre-backward hook. The loss never writes to the logits (the equivalence checks would see it if it did).
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDPTinyLM\) returned a view tensor")
    mesh = DeviceMesh.from_group(group if group is not None else dist.group.WORLD, device_type=device.type)
    for block in student.blocks:
        fully_shard(block, mesh=mesh)
    root = fully_shard(student, mesh=mesh)
    _fsdp2_sum_gradients([m for m in root.modules() if isinstance(m, FSDPModule)])

    @contextlib.contextmanager
    def sync(last: bool) -> Iterator[None]:
        root.set_requires_gradient_sync(last)  # recurses into the blocks
        yield

    return DataParallelStudent(root, sync, group if group is not None else dist.group.WORLD)


WRAPPERS: dict[str, Callable[[TinyLM, Any, torch.device], DataParallelStudent]] = {
    "ddp": wrap_ddp,
    "fsdp2": wrap_fsdp2,
}


def train_data_parallel(
    config: RunConfig, group: Any = None, on_step: StepCallback | None = None, device: torch.device = CPU
) -> RunResult | None:
    """Train with ``config.data_parallel`` (DDP or FSDP2) on the ranks of ``group`` (default: the world).
    Returns the result on rank 0 (``None`` elsewhere); ``on_step`` is called on rank 0 after every step."""
    rank, world_size = _world(group)
    config.check(world_size)
    student, teacher = build_models(config, device=device)
    assert teacher is not None
    wrapper = config.data_parallel.upper()
    exchange = "the gradient all-reduce" if config.data_parallel == "ddp" else "FSDP2's all-gathers and reduce-scatters"
    with collective_failures(rank, world_size, "setup", f"wrapping the student in {wrapper}"):
        parallel = WRAPPERS[config.data_parallel](student, group, device)
    optimizer = _optimizer(config, parallel.module.parameters())
    logs = []
    for step in range(1, config.steps + 1):
        microbatches = rank_microbatches(_batch(config, step - 1), rank, world_size, config.accumulation)
        with collective_failures(rank, world_size, f"step {step}", "all-reduce of the valid-token count"):
            count = global_token_count(microbatches, group, device)
        totals = torch.zeros(4, dtype=torch.float64)
        with collective_failures(rank, world_size, f"step {step}", f"forward and backward with {exchange}"):
            for index, piece in enumerate(microbatches):
                mb = _to(piece, device)
                with parallel.sync(index == len(microbatches) - 1):
                    sums = token_sums(
                        parallel.module(mb.ids),
                        _teacher_logits(teacher, mb.ids),
                        mb.labels,
                        temperature=config.temperature,
                        alpha=config.alpha,
                    )
                    normalized(sums.loss, count).backward()
                totals += sums.as_tensor()
        with collective_failures(rank, world_size, f"step {step}", "all-reduce of the gradient norm"):
            clip_gradients(parallel.module.parameters(), config.max_grad_norm, group=parallel.shard_group)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with collective_failures(rank, world_size, f"step {step}", "all-reduce of the logged sums"):
            totals = _all_reduce_sum(totals, group, device)
        logs.append(StepLog.from_sums(step, totals))
        if on_step is not None and rank == 0:
            on_step(logs[-1])
    with collective_failures(rank, world_size, "the end", "gathering the parameters and results"):
        params = _params(student)  # FSDP2: every rank gathers the full tensors
        _gather(group, None)
    return RunResult(config, world_size, logs, params) if rank == 0 else None


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
        rows = torch.arange(len(batch), dtype=torch.int64, device=batch.labels.device).unsqueeze(1)
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


def train_pipeline(
    config: RunConfig, group: Any = None, on_step: StepCallback | None = None, device: torch.device = CPU
) -> RunResult | None:
    """Train with one pipeline stage per rank of ``group`` (default: the world), under the
    ``torch.distributed.pipelining`` schedule ``config.schedule``. Returns the result on rank 0 (``None``
    elsewhere); ``on_step`` is called on the last stage after every step."""
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    rank, world_size = _world(group)
    config.check(world_size)
    first, last = rank == 0, rank == world_size - 1
    full, teacher = build_models(config, teacher=last, device=device)
    stage = stage_module(full, rank, world_size)
    schedule_class = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}[config.schedule]
    # Static shapes: the stage is told its microbatch's input and output at construction, so the schedule
    # never runs the model or the loss on placeholder tensors to infer them.
    m, shape = config.pipeline_microbatch_size, config.student
    # Hidden states carry a gradient back to the previous stage; the first stage's input is token ids.
    dtype = config.torch_dtype
    hidden = torch.empty(m, shape.seq_len, shape.width, dtype=dtype, device=device, requires_grad=True)
    example_in = torch.zeros(m, shape.seq_len, dtype=torch.int64, device=device) if first else hidden
    example_out = (
        torch.empty(m, shape.seq_len, shape.vocab, dtype=dtype, device=device, requires_grad=True) if last else hidden
    )
    schedule = schedule_class(
        PipelineStage(stage, rank, world_size, device, input_args=example_in, output_args=example_out, group=group),
        n_microbatches=config.microbatches,
        loss_fn=_microbatch_loss,
        scale_grads=False,
    )
    optimizer = _optimizer(config, stage.parameters())
    logs: list[StepLog] = []
    teacher_rows: list[list[list[int]]] = []
    for step in range(1, config.steps + 1):
        batch = _to(_batch(config, step - 1), device)
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
            # Each stage holds its own parameters: the norm's squares are summed over every stage (``group``
            # None means the world here, but no reduction to clip_gradients).
            stages = group if group is not None else dist.group.WORLD
            clip_gradients(stage.parameters(), config.max_grad_norm, group=stages if world_size > 1 else None)
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


def train(
    config: RunConfig, group: Any = None, on_step: StepCallback | None = None, device: torch.device = CPU
) -> RunResult | None:
    """Run ``config`` on ``group`` (``single`` needs no process group), each rank computing on ``device``.
    Returns the result on rank 0."""
    if config.parallel == "single":
        return train_single(config, on_step, device)
    if config.parallel == "data":
        return train_data_parallel(config, group, on_step, device)
    return train_pipeline(config, group, on_step, device)
