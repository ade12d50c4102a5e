"""The settings of one distributed distillation run, checked before any work."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from distill.distributed.model import ModelShape

PARALLEL_MODES = ("single", "data", "pipeline")
DATA_PARALLEL = ("ddp", "fsdp2")
SCHEDULES = ("gpipe", "1f1b")
OPTIMIZERS = ("sgd", "adamw")
DTYPES = {"float64": torch.float64, "float32": torch.float32}


class ConfigError(ValueError):
    """A setting that cannot run; the message names the setting and the fix."""


@dataclass(frozen=True)
class RunConfig:
    """One run. ``parallel``: ``single`` (one process, the whole batch at once: the oracle), ``data`` (each
    rank ``accumulation`` microbatches of its share, the student under ``data_parallel``: ``ddp``, replicas,
    or ``fsdp2``, parameters sharded with ``fully_shard``) or ``pipeline`` (one stage per rank,
    ``microbatch_size`` rows per microbatch). ``batch_size`` is the global batch of one optimizer step."""

    parallel: str = "data"
    data_parallel: str = "ddp"
    steps: int = 3
    batch_size: int = 8
    accumulation: int = 1
    microbatch_size: int | None = None
    schedule: str = "gpipe"
    student: ModelShape = field(default_factory=ModelShape)
    teacher: ModelShape = field(default_factory=lambda: ModelShape(width=24, layers=2, heads=2))
    temperature: float = 2.0
    alpha: float = 0.5
    optimizer: str = "sgd"
    learning_rate: float = 0.5
    max_grad_norm: float | None = 1.0
    dtype: str = "float64"
    seed: int = 0

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def pipeline_microbatch_size(self) -> int:
        return self.batch_size if self.microbatch_size is None else self.microbatch_size

    @property
    def microbatches(self) -> int:
        """Microbatches per rank per step: ``accumulation`` (data), ``batch_size / microbatch_size``
        (pipeline), 1 (single)."""
        if self.parallel == "pipeline":
            return self.batch_size // self.pipeline_microbatch_size
        return self.accumulation if self.parallel == "data" else 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        values = dict(values)
        for key in ("student", "teacher"):
            if isinstance(values.get(key), dict):
                values[key] = ModelShape(**values[key])
        return cls(**values)

    def check(self, world_size: int) -> RunConfig:
        """Return ``self`` if it can run on ``world_size`` ranks, else raise :class:`ConfigError`."""
        _one_of("parallel", self.parallel, PARALLEL_MODES)
        _one_of("data_parallel", self.data_parallel, DATA_PARALLEL)
        _one_of("schedule", self.schedule, SCHEDULES)
        _one_of("optimizer", self.optimizer, OPTIMIZERS)
        _one_of("dtype", self.dtype, tuple(DTYPES))
        for name in ("steps", "batch_size", "accumulation"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("temperature", "learning_rate"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a finite number > 0, got {value}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha must be in [0, 1] (1 is pure cross-entropy), got {self.alpha}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ConfigError(f"max_grad_norm must be > 0 (or None for no clipping), got {self.max_grad_norm}")
        if (self.student.vocab, self.student.seq_len) != (self.teacher.vocab, self.teacher.seq_len):
            raise ConfigError(
                f"teacher and student must share the vocabulary and sequence length: teacher vocab "
                f"{self.teacher.vocab}, seq_len {self.teacher.seq_len}; student vocab {self.student.vocab}, "
                f"seq_len {self.student.seq_len}"
            )
        if self.data_parallel != "ddp" and self.parallel != "data":
            raise ConfigError(
                f"data_parallel {self.data_parallel!r} applies to parallel 'data', not {self.parallel!r}: use "
                f"parallel 'data' or leave data_parallel at ddp"
            )
        if self.parallel == "single" and world_size != 1:
            raise ConfigError(f"parallel 'single' runs in one process, but {world_size} were started")
        if self.parallel == "data" and self.batch_size < world_size * self.accumulation:
            raise ConfigError(
                f"batch_size {self.batch_size} cannot give each of {world_size} ranks {self.accumulation} "
                f"non-empty microbatches: use batch_size >= {world_size * self.accumulation}"
            )
        if self.parallel == "pipeline":
            m = self.pipeline_microbatch_size
            if m < 1 or self.batch_size % m:
                raise ConfigError(
                    f"microbatch_size {m} must divide batch_size {self.batch_size} (pipeline microbatches "
                    f"have one shape)"
                )
            if world_size > self.student.layers:
                raise ConfigError(
                    f"{world_size} pipeline stages need at least {world_size} student layers, got "
                    f"{self.student.layers}"
                )
            if self.schedule == "1f1b" and self.microbatches < world_size:
                raise ConfigError(
                    f"schedule 1f1b needs at least as many microbatches as stages: {self.microbatches} "
                    f"microbatches for {world_size} stages; lower microbatch_size or use gpipe"
                )
        return self


def _one_of(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
