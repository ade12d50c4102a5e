"""The distillation training loop: batches -> ``kd_step`` -> student update, with callbacks.

``Pipeline(teacher, student, batches, config, callbacks).run()`` trains and returns a :class:`PipelineResult`.

Lifecycle, with every count 1-based::

    on_train_begin(info)                       once
      on_epoch_begin(epoch, max_epochs)        per epoch
        on_step_end(step_context)              after every gradient application; may return Stop
      on_epoch_end(epoch_context)              per epoch, also for an epoch cut short by Stop or max_steps
    on_train_end(result)                       once, also after an early stop (not after an exception)

A callback that returns :data:`Stop` from ``on_step_end`` ends training after the current step: the other
callbacks still see that step, the epoch ends, the outputs are written and ``on_train_end`` runs.

Smoke runs: with ``config.max_steps = N`` the pipeline runs exactly ``N`` steps, continuing across epoch
boundaries past ``config.epochs`` if it must (``max_epochs`` becomes ``ceil(N / steps_per_epoch)``), and
writes nothing. Otherwise, when ``config.output_dir`` is set, the trained student (:data:`MODEL_FILENAME`)
and a metadata JSON (:data:`METADATA_FILENAME`) are written there atomically with :func:`atomic_write`.

Losses in the metrics are the per-step mean losses ``kd_step`` returns, measured on each step's batch before
that step's update: ``initial_loss`` is the first step's, ``final_loss`` the last step's, ``best_loss`` the
minimum. ``duration_s`` covers the training loop only (not the writes); ``throughput`` is steps per second.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from reference.checks import vocab_mismatch_message
from reference.providers import StudentProvider, TeacherProvider
from reference.step import kd_step

__all__ = [
    "CONTRACT_VERSIONS",
    "IGNORE_INDEX",
    "METADATA_FILENAME",
    "MODEL_FILENAME",
    "Callback",
    "Control",
    "EpochContext",
    "FixtureBatches",
    "Pipeline",
    "PipelineConfig",
    "PipelineMetrics",
    "PipelineResult",
    "RunInfo",
    "StepContext",
    "Stop",
    "atomic_write",
    "read_contract_versions",
]

MODEL_FILENAME: Final = "student.npz"
METADATA_FILENAME: Final = "metadata.json"
METADATA_FORMAT: Final = "kd-contracts/distill-metadata/1"
IGNORE_INDEX: Final = -100

CONTRACT_VERSIONS: Final[Mapping[str, str]] = {}
"""Contract versions recorded in the metadata when the caller passes none.

See :func:`read_contract_versions` for reading them from the ``contracts/`` directory."""

Batch = tuple[np.ndarray, np.ndarray]


class Control(enum.Enum):
    """What a callback's ``on_step_end`` may return to steer the loop."""

    STOP = "stop"


Stop: Final = Control.STOP
"""Return this from ``Callback.on_step_end`` to end training after the current step."""


# --------------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


@dataclass(frozen=True)
class PipelineConfig:
    """Hyperparameters of a run; invalid values raise ``ValueError`` with a sentence at construction.

    ``batch_size`` is what the batch source was built with; it is recorded, not enforced per batch.
    ``learning_rate`` is the rate of the student's optimizer; the pipeline reports it and, when the student
    exposes ``learning_rate``, checks that the two agree. ``max_steps`` set makes the run a smoke run (exactly
    that many steps, nothing written). ``output_dir = None`` writes nothing either.
    """

    epochs: int = 3
    steps_per_epoch: int = 20
    batch_size: int = 8
    temperature: float = 2.0
    alpha: float = 0.5
    learning_rate: float = 1.0
    output_dir: str | os.PathLike[str] | None = None
    seed: int = 0
    max_steps: int | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "steps_per_epoch", "batch_size"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if self.max_steps is not None and (not _is_int(self.max_steps) or self.max_steps < 1):
            raise ValueError(f"max_steps must be None or an integer >= 1, got {self.max_steps!r}")
        for name in ("temperature", "learning_rate"):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if not _is_number(self.alpha) or not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be a number in [0, 1], got {self.alpha!r}")

    @property
    def is_smoke(self) -> bool:
        """True when ``max_steps`` is set: run exactly that many steps and write nothing."""
        return self.max_steps is not None

    @property
    def configured_steps(self) -> int:
        """``epochs * steps_per_epoch``: the length of a full (non-smoke) run."""
        return self.epochs * self.steps_per_epoch

    @property
    def total_steps(self) -> int:
        """Steps this run will take unless a callback stops it: ``max_steps`` if set, else the full run."""
        return self.max_steps if self.max_steps is not None else self.configured_steps

    @property
    def max_epochs(self) -> int:
        """Epochs this run spans: ``ceil(total_steps / steps_per_epoch)``; equals ``epochs`` outside smoke."""
        return -(-self.total_steps // self.steps_per_epoch)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy of the fields (``output_dir`` as a string)."""
        data = dataclasses.asdict(self)
        if data["output_dir"] is not None:
            data["output_dir"] = os.fspath(data["output_dir"])
        return data


# --------------------------------------------------------------------------------------------------------
# Callback contexts and results
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunInfo:
    """Passed to ``on_train_begin``."""

    config: PipelineConfig
    total_steps: int
    max_epochs: int
    vocab_size: int


@dataclass(frozen=True, slots=True)
class StepContext:
    """Passed to ``on_step_end`` after each gradient application. ``loss`` is the step's mean loss."""

    epoch: int
    max_epochs: int
    step: int
    global_step: int
    total_steps: int
    loss: float
    lr: float
    best_loss: float
    elapsed: float


@dataclass(frozen=True, slots=True)
class EpochContext:
    """Passed to ``on_epoch_end``. ``mean_loss`` is the mean of the epoch's step losses."""

    epoch: int
    max_epochs: int
    steps: int
    mean_loss: float
    elapsed: float


@dataclass(frozen=True, slots=True)
class PipelineMetrics:
    """Summary of a run's losses and timing."""

    initial_loss: float
    final_loss: float
    best_loss: float
    steps_completed: int
    throughput: float
    duration_s: float


@dataclass(frozen=True, slots=True)
class PipelineResult:
    """What :meth:`Pipeline.run` returns. ``output_path`` is the output directory, ``None`` if nothing was
    written; ``model_path`` and ``metadata_path`` are the files in it."""

    metrics: PipelineMetrics
    output_path: Path | None
    model_path: Path | None = None
    metadata_path: Path | None = None
    stopped_early: bool = False


class Callback:
    """Base class of pipeline callbacks: every hook is a no-op; override the ones you need."""

    def on_train_begin(self, info: RunInfo) -> None:
        """Called once before the first epoch."""

    def on_epoch_begin(self, epoch: int, max_epochs: int) -> None:
        """Called at the start of each epoch (1-based)."""

    def on_step_end(self, context: StepContext) -> Control | None:
        """Called after every gradient application; return :data:`Stop` to end training after this step."""
        return None

    def on_epoch_end(self, context: EpochContext) -> None:
        """Called at the end of each epoch, including one cut short."""

    def on_train_end(self, result: PipelineResult) -> None:
        """Called once after training, after the outputs are written, also after an early stop."""


# --------------------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------------------


class FixtureBatches:
    """A fixed, seeded dataset: ``num_batches`` batches ``(input_ids, labels)``, ``[batch_size, seq_len]``.

    Input ids are uniform over the teacher's context vocabulary; each label is the teacher's preferred
    (argmax) token for that position, except that about ``ignore_fraction`` of the positions are set to
    :data:`IGNORE_INDEX`. Iterating yields the same batches in the same order every time (one pass is one
    epoch), so a run is deterministic under the seed.
    """

    def __init__(
        self,
        teacher: TeacherProvider,
        *,
        batch_size: int = 8,
        seq_len: int = 16,
        num_batches: int = 20,
        seed: int = 0,
        ignore_fraction: float = 0.1,
    ) -> None:
        for name, value in (("batch_size", batch_size), ("seq_len", seq_len), ("num_batches", num_batches)):
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not _is_number(ignore_fraction) or not 0.0 <= ignore_fraction < 1.0:
            raise ValueError(f"ignore_fraction must be a number in [0, 1), got {ignore_fraction!r}")
        self._teacher = teacher
        self._contexts = int(getattr(teacher, "context_size", teacher.vocab_size))
        self._shape = (batch_size, seq_len)
        self._num_batches = num_batches
        self._seed = seed
        self._ignore_fraction = ignore_fraction

    def __len__(self) -> int:
        return self._num_batches

    def __iter__(self) -> Iterator[Batch]:
        """The batches, drawn lazily from a fresh generator seeded the same way each pass: a run that stops
        after 2 steps draws 2 batches however large ``num_batches`` is."""
        rng = np.random.default_rng(self._seed)
        for _ in range(self._num_batches):
            input_ids = rng.integers(0, self._contexts, size=self._shape)
            labels = np.asarray(self._teacher.logits_for_batch(input_ids)).argmax(axis=-1).astype(np.int64)
            labels[rng.random(size=labels.shape) < self._ignore_fraction] = IGNORE_INDEX
            yield input_ids, labels


# --------------------------------------------------------------------------------------------------------
# Atomic writes and metadata
# --------------------------------------------------------------------------------------------------------


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Create ``path`` all at once: ``write(tmp)`` fills a temporary file in the same directory, which is
    flushed to disk (fsync) and renamed over ``path`` (``os.replace``).

    If ``write`` or anything after it fails, or the process is interrupted (``KeyboardInterrupt``), the
    temporary file is removed and ``path`` is left as it was: never a partial file.
    """
    target = Path(path)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_directory(target.parent)
    return target


def _fsync_directory(directory: Path) -> None:
    """Persist the rename itself where the platform allows it (POSIX); best effort elsewhere."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def read_contract_versions(directory: str | os.PathLike[str]) -> dict[str, str]:
    """``{contract file stem: metadata.version}`` for every ``distill-*.yaml`` in ``directory``.

    A missing directory gives ``{}``; a file without a readable ``metadata.version`` is recorded as
    ``"unknown"`` (the metadata records what it can rather than failing a finished training run).
    """
    import yaml

    folder = Path(directory)
    versions: dict[str, str] = {}
    if not folder.is_dir():
        return versions
    for contract in sorted(folder.glob("distill-*.yaml")):
        try:
            data = yaml.safe_load(contract.read_text(encoding="utf-8"))
            version = data["metadata"]["version"]
        except (OSError, yaml.YAMLError, KeyError, TypeError):
            version = "unknown"
        versions[contract.stem] = str(version)
    return versions


# --------------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------------


class Pipeline:
    """Distil ``teacher`` into ``student`` over ``batches`` (an iterable re-iterated once per epoch)."""

    def __init__(
        self,
        teacher: TeacherProvider,
        student: StudentProvider,
        batches: Iterable[Batch],
        config: PipelineConfig,
        callbacks: Sequence[Callback] = (),
        *,
        contract_versions: Mapping[str, str] | None = None,
    ) -> None:
        if not isinstance(config, PipelineConfig):
            raise ValueError(f"config must be a PipelineConfig, got {type(config).__name__}")
        if teacher.vocab_size != student.vocab_size:
            raise ValueError(vocab_mismatch_message(teacher.vocab_size, student.vocab_size))
        student_lr = getattr(student, "learning_rate", None)
        if student_lr is not None and not math.isclose(student_lr, config.learning_rate):
            raise ValueError(
                f"student learning_rate {student_lr!r} differs from config learning_rate "
                f"{config.learning_rate!r}: build the student with the configured rate"
            )
        if config.output_dir is not None and Path(config.output_dir).exists():
            if not Path(config.output_dir).is_dir():
                raise ValueError(f"output_dir {os.fspath(config.output_dir)!r} exists and is not a directory")
        self.teacher = teacher
        self.student = student
        self.batches = batches
        self.config = config
        self.callbacks = tuple(callbacks)
        self.contract_versions = dict(CONTRACT_VERSIONS if contract_versions is None else contract_versions)

    def run(self) -> PipelineResult:
        """Train, write the outputs (unless smoke or no ``output_dir``) and return the result."""
        config = self.config
        total_steps = config.total_steps
        max_epochs = config.max_epochs
        info = RunInfo(config, total_steps, max_epochs, self.teacher.vocab_size)
        for callback in self.callbacks:
            callback.on_train_begin(info)

        losses: list[float] = []
        best = math.inf
        stopped = False
        start = time.perf_counter()
        for epoch in range(1, max_epochs + 1):
            for callback in self.callbacks:
                callback.on_epoch_begin(epoch, max_epochs)
            epoch_losses: list[float] = []
            batch_iter = iter(self.batches)
            steps_this_epoch = min(config.steps_per_epoch, total_steps - len(losses))
            for step in range(1, steps_this_epoch + 1):
                input_ids, labels = self._next_batch(batch_iter, epoch, step)
                loss = self._step(input_ids, labels, len(losses) + 1)
                losses.append(loss)
                epoch_losses.append(loss)
                best = min(best, loss)
                context = StepContext(
                    epoch=epoch,
                    max_epochs=max_epochs,
                    step=step,
                    global_step=len(losses),
                    total_steps=total_steps,
                    loss=loss,
                    lr=config.learning_rate,
                    best_loss=best,
                    elapsed=time.perf_counter() - start,
                )
                for callback in self.callbacks:
                    if callback.on_step_end(context) is Stop:
                        stopped = True
                if stopped:
                    break
            epoch_context = EpochContext(
                epoch=epoch,
                max_epochs=max_epochs,
                steps=len(epoch_losses),
                mean_loss=float(np.mean(epoch_losses)),
                elapsed=time.perf_counter() - start,
            )
            for callback in self.callbacks:
                callback.on_epoch_end(epoch_context)
            if stopped:
                break
        duration = time.perf_counter() - start

        metrics = PipelineMetrics(
            initial_loss=losses[0],
            final_loss=losses[-1],
            best_loss=best,
            steps_completed=len(losses),
            throughput=len(losses) / duration if duration > 0 else 0.0,
            duration_s=duration,
        )
        result = PipelineResult(metrics=metrics, output_path=None, stopped_early=stopped)
        if not config.is_smoke and config.output_dir is not None:
            result = self._write_outputs(result)
        for callback in self.callbacks:
            callback.on_train_end(result)
        return result

    def _next_batch(self, batch_iter: Iterator[Batch], epoch: int, step: int) -> Batch:
        try:
            input_ids, labels = next(batch_iter)
        except StopIteration:
            raise ValueError(
                f"the batch source ran out after {step - 1} batches in epoch {epoch}, but steps_per_epoch is "
                f"{self.config.steps_per_epoch}: give it at least that many batches per pass"
            ) from None
        return np.asarray(input_ids), np.asarray(labels)

    def _step(self, input_ids: np.ndarray, labels: np.ndarray, global_step: int) -> float:
        loss, gradient = kd_step(
            self.teacher,
            input_ids,
            labels,
            temperature=self.config.temperature,
            alpha=self.config.alpha,
            student_logits=self.student,
        )
        loss = float(loss)
        if not math.isfinite(loss):
            raise ValueError(
                f"step {global_step} produced a non-finite loss ({loss}); stopping before update"
            )
        self.student.apply_kd_gradient(input_ids, gradient)
        return loss

    def _write_outputs(self, result: PipelineResult) -> PipelineResult:
        assert self.config.output_dir is not None
        out = Path(self.config.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        model_path = atomic_write(out / MODEL_FILENAME, self.student.save)
        metadata = {
            "format": METADATA_FORMAT,
            "model_file": MODEL_FILENAME,
            "config": self.config.to_dict(),
            "metrics": dataclasses.asdict(result.metrics),
            "stopped_early": result.stopped_early,
            "contracts": self.contract_versions,
            "package_version": _package_version(),
        }
        text = json.dumps(metadata, indent=2, sort_keys=True, allow_nan=False, default=_json_default) + "\n"
        metadata_path = atomic_write(out / METADATA_FILENAME, lambda tmp: tmp.write_text(text, "utf-8"))
        return dataclasses.replace(
            result, output_path=out, model_path=model_path, metadata_path=metadata_path
        )


def _json_default(value: object) -> object:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    raise TypeError(f"cannot record {type(value).__name__} in the metadata JSON")


def _package_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("kd-contracts")
    except metadata.PackageNotFoundError:
        return "unknown"
