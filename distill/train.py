"""The training loop of the real-model pipeline: a torch student distilled towards a teacher.

One optimizer step takes ``grad_accum`` micro-batches. Their labels are the next tokens
(:func:`distill.alignment.next_token_labels`); the step's normalizer is the number of valid tokens over all
its micro-batches, so the accumulated gradient is that of the step's mean per-token loss whatever the padding.
The loss goes through a verified backend (:class:`distill.loss.BackendLoss`); AdamW with a linear warmup and a
cosine decay to ``min_lr_ratio * learning_rate``, gradient-norm clipping, then the optimizer step.

Every step appends one JSON line to ``metrics.jsonl`` and prints the pipeline's step and epoch lines
(``reference.progress``: the same format as ``python -m reference.distill``), with a tqdm bar on stderr when it
is a terminal. A checkpoint is written every ``checkpoint_every`` steps and at the end; a smoke run
(``max_steps``) writes nothing at all.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch

from distill.alignment import IGNORE_INDEX, next_token_labels, valid_token_count
from distill.checkpoint import CHECKPOINT_FILENAME, CheckpointError, read_checkpoint, write_checkpoint
from distill.data import TokenChunks
from distill.loss import BackendLoss
from distill.models import output_vocab_size
from distill.teachers.base import TokenBatch, check_topk
from reference.pipeline import EpochContext, PipelineMetrics, StepContext, atomic_write
from reference.progress import ProgressCallback

__all__ = ["METRICS_FILENAME", "StepInputs", "TrainConfig", "TrainResult", "Trainer", "VocabAlign", "student_logits"]

METRICS_FILENAME = "metrics.jsonl"
PLOT_FILENAME = "loss.png"


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of a training run (validated by the CLI)."""

    epochs: int = 1
    steps_per_epoch: int | None = None  # None: every full batch of the corpus once per epoch
    batch_size: int = 16
    grad_accum: int = 1
    learning_rate: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    clip_norm: float = 1.0
    temperature: float = 2.0
    alpha: float = 0.5
    seed: int = 0
    max_steps: int | None = None
    checkpoint_every: int = 100
    topk_mode: str = "tail"


class VocabError(ValueError):
    """Teacher and student vocabularies do not fit together; the message names both sizes."""


@dataclass(frozen=True)
class VocabAlign:
    """How teacher rows map to the student's: ``"error"`` (sizes must match) or ``"truncate"`` (drop the
    teacher's rows past the student's vocabulary, typically padded embedding rows)."""

    teacher_vocab: int
    student_vocab: int
    mode: str = "error"

    def __post_init__(self) -> None:
        t, s = self.teacher_vocab, self.student_vocab
        if t == s:
            return
        if self.mode != "truncate":
            raise VocabError(
                f"the teacher's vocabulary has {t} tokens but the student's has {s}; use models with one "
                "tokenizer, or --vocab-align truncate when the extra teacher rows are padding"
            )
        if t < s:
            raise VocabError(
                f"--vocab-align truncate drops teacher rows, but the teacher's vocabulary ({t}) is smaller "
                f"than the student's ({s})"
            )

    def dense(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The teacher logits cut to the student's width, and the probability mass dropped per row."""
        s = self.student_vocab
        if self.teacher_vocab == s:
            return logits, None
        dropped = torch.softmax(logits.float(), dim=-1)[..., s:].sum(dim=-1)
        return logits[..., :s], dropped


@dataclass
class StepInputs:
    """Exactly what one micro-batch feeds the loss: the student's logits (with grad), the teacher's answer,
    the labels; plus the teacher mass dropped by ``--vocab-align truncate``."""

    student: torch.Tensor
    teacher: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None
    labels: torch.Tensor
    dropped_mass: torch.Tensor | None = None


@dataclass
class TrainResult:
    """What a run did: its per-step records and summary metrics."""

    records: list[dict[str, Any]] = field(default_factory=list)
    metrics: PipelineMetrics | None = None
    start_step: int = 0


def student_logits(model: torch.nn.Module, batch: TokenBatch) -> torch.Tensor:
    """The student's logits for ``batch``: its forward on ``input_ids`` and ``attention_mask``, unshifted and
    in its own dtype (``.logits`` of a Hugging Face output, or the tensor a plain module returns)."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    return out.logits if hasattr(out, "logits") else out


def _warmup_cosine(warmup: int, total: int, floor: float) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


class Trainer:
    """Distil ``teacher`` (a dense or top-k teacher, or None for CE only at ``alpha = 1``) into ``student``."""

    def __init__(
        self,
        student: torch.nn.Module,
        teacher: Any,
        chunks: TokenChunks,
        config: TrainConfig,
        backend: Any,
        *,
        output_dir: Path | None = None,
        vocab_align: str = "error",
        log_every: int = 10,
        stdout: TextIO | None = None,
        progress_bar: bool | None = None,
        description: str = "distill",
        on_policy: Any = None,
    ) -> None:
        if teacher is None and config.alpha != 1.0:
            raise ValueError(f"without a teacher only CE training (--alpha 1) is possible, got alpha {config.alpha}")
        self.student = student
        self.teacher = teacher
        self.chunks = chunks
        self.config = config
        self.backend = backend
        self.output_dir = None if config.max_steps is not None else output_dir
        self.stdout = sys.stdout if stdout is None else stdout
        self.progress = ProgressCallback(log_every, self.stdout)
        self.progress_bar = progress_bar
        self.description = description
        self.on_policy = on_policy  # a distill.on_policy.OnPolicySampler, or None for dataset batches only
        self.student_vocab = output_vocab_size(student)
        if chunks.vocab_size > self.student_vocab:
            raise VocabError(
                f"the tokenizer has {chunks.vocab_size} tokens but the student's vocabulary has only "
                f"{self.student_vocab}; use the tokenizer the models were built for"
            )
        self.align = None if teacher is None else VocabAlign(teacher.vocab_size, self.student_vocab, vocab_align)
        self.loss = BackendLoss(backend, temperature=config.temperature, alpha=config.alpha,
                                topk_mode=config.topk_mode)
        batches = chunks.num_batches(config.batch_size)
        per_epoch = batches // config.grad_accum
        if per_epoch < 1:
            raise ValueError(
                f"the training split has {batches} batches of {config.batch_size}, fewer than --grad-accum "
                f"{config.grad_accum}: lower --batch-size or --grad-accum"
            )
        if config.steps_per_epoch is not None and config.steps_per_epoch > per_epoch:
            raise ValueError(
                f"--steps-per-epoch {config.steps_per_epoch} needs {config.steps_per_epoch * config.grad_accum} "
                f"batches per epoch, but the training split has {batches} batches of {config.batch_size}"
            )
        self.steps_per_epoch = config.steps_per_epoch or per_epoch
        self.configured_steps = config.epochs * self.steps_per_epoch
        self.total_steps = config.max_steps if config.max_steps is not None else self.configured_steps
        self.optimizer = torch.optim.AdamW(
            [p for p in student.parameters() if p.requires_grad],
            lr=config.learning_rate,
            weight_decay=config.weight_decay,
        )
        factor = _warmup_cosine(config.warmup_steps, self.configured_steps, config.min_lr_ratio)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    # ------------------------------------------------------------------------------------------------------
    # One micro-batch, one step
    # ------------------------------------------------------------------------------------------------------

    def step_inputs(self, batch: TokenBatch, labels: torch.Tensor | None = None) -> StepInputs:
        """The loss inputs of ``batch``: what :meth:`micro_loss` feeds the backend, nothing changed after.
        ``labels`` (row ``l``: the token ``l + 1`` to learn, or -100) default to the batch's next tokens."""
        labels = next_token_labels(batch, IGNORE_INDEX) if labels is None else labels
        logits = student_logits(self.student, batch)
        if self.teacher is None:
            return StepInputs(logits, None, labels)
        if self.teacher.kind == "topk":
            logprobs, ids = check_topk(getattr(self.teacher, "name", type(self.teacher).__name__), batch,
                                       *self.teacher.topk(batch), self.teacher.vocab_size, self.teacher.top_k)
            if self.align is not None and self.align.teacher_vocab != self.student_vocab and bool(
                (ids >= self.student_vocab).any()
            ):
                raise VocabError(
                    f"the top-k teacher names token ids past the student's vocabulary ({self.student_vocab}); "
                    "--vocab-align truncate applies to dense teachers only"
                )
            return StepInputs(logits, (logprobs, ids), labels)
        teacher_logits, dropped = self.align.dense(self.teacher.logits(batch))
        return StepInputs(logits, teacher_logits, labels, dropped)

    def micro_loss(self, inputs: StepInputs, normalizer: float) -> torch.Tensor:
        """The micro-batch's summed loss over ``normalizer`` through the backend (differentiable)."""
        if inputs.teacher is None:
            # CE only: the backend's kd_loss at alpha = 1, whose KD term has weight exactly 0.
            return self.loss.dense(inputs.student, inputs.student.detach(), inputs.labels, normalizer)
        if isinstance(inputs.teacher, tuple):
            logprobs, ids = inputs.teacher
            return self.loss.topk(inputs.student, logprobs, ids, inputs.labels, normalizer)
        return self.loss.dense(inputs.student, inputs.teacher, inputs.labels, normalizer)

    def _kl_sum(self, inputs: StepInputs) -> float | None:
        """Sum over valid rows of KL(teacher || student) at T = 1 (dense teachers only), via the backend."""
        if inputs.teacher is None or isinstance(inputs.teacher, tuple):
            return None
        rows = self.loss.bridge.back(
            self.backend.kl_divergence(
                self.loss.bridge.logits(inputs.student, "float32"),
                self.loss.bridge.logits(inputs.teacher.float(), "float32"),
                temperature=1.0,
            ),
            inputs.student.detach().float(),
        )
        return float((rows * (inputs.labels != IGNORE_INDEX)).sum())

    def _on_policy(self, step: int, micro_batches: list[TokenBatch]) -> list[tuple[TokenBatch, torch.Tensor]] | None:
        """The student-written micro-batches of ``step`` with their labels, or None for the dataset's."""
        if self.on_policy is None or not self.on_policy.schedule.is_on_policy(step):
            return None
        out = []
        for batch in micro_batches:
            sampled = self.on_policy.maybe_sample(step, self.student, batch.input_ids, batch.attention_mask)
            written = TokenBatch(sampled.input_ids, sampled.attention_mask)
            labels = torch.full_like(sampled.labels, IGNORE_INDEX)
            labels[:, :-1] = sampled.labels[:, 1:]  # row l learns token l + 1: the sampled tokens only
            out.append((written, labels))
        return out

    def train_step(self, micro_batches: list[TokenBatch], step: int = 0) -> dict[str, Any]:
        """One optimizer step over ``micro_batches`` (replaced by student-written ones when the on-policy
        schedule picks ``step``, 0-based); returns the step's record (loss per valid token, ...)."""
        sampled = self._on_policy(step, micro_batches)
        pairs = sampled or [(b, next_token_labels(b)) for b in micro_batches]
        self.student.train()
        tokens = sum(valid_token_count(y) for _, y in pairs)
        normalizer = float(max(tokens, 1))
        loss_total, kl_total, dropped_total = 0.0, 0.0, 0.0
        has_kl = has_dropped = False
        for batch, batch_labels in pairs:
            inputs = self.step_inputs(batch, batch_labels)
            loss = self.micro_loss(inputs, normalizer)
            loss.backward()
            loss_total += float(loss.detach())
            kl = self._kl_sum(inputs)
            if kl is not None:
                kl_total += kl
                has_kl = True
            if inputs.dropped_mass is not None:
                valid = inputs.labels != IGNORE_INDEX
                dropped_total += float((inputs.dropped_mass * valid).sum())
                has_dropped = True
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.config.clip_norm))
        lr = self.optimizer.param_groups[0]["lr"]
        if not math.isfinite(loss_total):
            raise FloatingPointError(f"the loss became {loss_total}; lower --learning-rate")
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        record: dict[str, Any] = {"loss": loss_total, "lr": lr, "grad_norm": grad_norm, "tokens": tokens}
        if self.on_policy is not None:
            record["on_policy"] = sampled is not None
        record["kl"] = kl_total / normalizer if has_kl else None
        if has_dropped:
            record["teacher_mass_dropped"] = dropped_total / normalizer
        return record

    # ------------------------------------------------------------------------------------------------------
    # The run
    # ------------------------------------------------------------------------------------------------------

    def _micro_batches(self, epoch: int, skip_steps: int) -> Iterator[list[TokenBatch]]:
        batches = self.chunks.batches(self.config.batch_size, seed=self.config.seed, epoch=epoch)
        accum = self.config.grad_accum
        for step in range(self.steps_per_epoch):
            group = [next(batches) for _ in range(accum)]
            if step >= skip_steps:
                yield group

    def _checkpoint_config(self) -> dict[str, Any]:
        return {**asdict(self.config), "max_steps": None, "steps_per_epoch": self.steps_per_epoch}

    def _resume(self) -> tuple[int, list[dict[str, Any]]]:
        assert self.output_dir is not None
        checkpoint = read_checkpoint(self.output_dir / CHECKPOINT_FILENAME)
        mine = self._checkpoint_config()
        free = {"epochs", "checkpoint_every"}  # a resumed run may be longer or shorter, checkpoint more or less
        differing = sorted(k for k in mine if k not in free and checkpoint.config.get(k) != mine[k])
        if differing:
            raise CheckpointError(
                f"--resume: the checkpoint was written with other settings ({', '.join(differing)}); "
                "resume with the same flags or start a new --output-dir"
            )
        try:
            self.student.load_state_dict(checkpoint.model)
            self.optimizer.load_state_dict(checkpoint.optimizer)
            self.scheduler.load_state_dict(checkpoint.scheduler)
        except (RuntimeError, ValueError, KeyError) as error:
            first = str(error).strip().splitlines()[0]
            raise CheckpointError(f"--resume: the checkpoint does not fit this student ({first})") from None
        torch.set_rng_state(checkpoint.rng)
        records = []
        metrics = self.output_dir / METRICS_FILENAME
        if metrics.is_file():
            for line in metrics.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by an interrupt
                if isinstance(record, dict) and record.get("step", 0) <= checkpoint.step:
                    records.append(record)
        return checkpoint.step, records

    def _save_checkpoint(self, step: int) -> None:
        assert self.output_dir is not None
        write_checkpoint(
            self.output_dir / CHECKPOINT_FILENAME,
            step=step,
            model=self.student,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            config=self._checkpoint_config(),
        )

    def run(self, *, resume: bool = False) -> TrainResult:
        """Train for the configured steps (or ``max_steps``); write metrics and checkpoints unless smoke."""
        start_step, records = 0, []
        metrics_file = None
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            if resume:
                start_step, records = self._resume()
            text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
            atomic_write(self.output_dir / METRICS_FILENAME, lambda tmp: tmp.write_text(text, "utf-8"))
            metrics_file = open(self.output_dir / METRICS_FILENAME, "a", encoding="utf-8")
        elif resume:
            raise CheckpointError("--resume needs an --output-dir to read the checkpoint from (not a smoke run)")
        if start_step == 0:
            torch.manual_seed(self.config.seed)
        total, per_epoch = self.total_steps, self.steps_per_epoch
        max_epochs = -(-total // per_epoch)
        from tqdm import tqdm

        bar_enabled = self.progress_bar if self.progress_bar is not None else sys.stderr.isatty()
        bar = tqdm(total=total, initial=start_step, desc=self.description, unit="step", disable=not bar_enabled,
                   dynamic_ncols=True, leave=False)
        losses = [r["loss"] for r in records]
        best = min(losses, default=math.inf)
        step = start_step
        begin = time.perf_counter()
        try:
            for epoch in range(start_step // per_epoch + 1, max_epochs + 1):
                epoch_losses: list[float] = []
                first = step - (epoch - 1) * per_epoch
                for micro in self._micro_batches(epoch, first):
                    if step >= total:
                        break
                    record = self.train_step(micro, step)
                    step += 1
                    record = {"step": step, "epoch": epoch, **record, "elapsed": time.perf_counter() - begin}
                    records.append(record)
                    losses.append(record["loss"])
                    epoch_losses.append(record["loss"])
                    best = min(best, record["loss"])
                    if metrics_file is not None:
                        metrics_file.write(json.dumps(record, sort_keys=True) + "\n")
                        metrics_file.flush()
                    bar.update(1)
                    bar.set_postfix(loss=f"{record['loss']:.3f}", refresh=False)
                    self.progress.on_step_end(
                        StepContext(epoch, max_epochs, step - (epoch - 1) * per_epoch, step, total,
                                    record["loss"], record["lr"], best, record["elapsed"])
                    )
                    if self.output_dir is not None and step % self.config.checkpoint_every == 0:
                        self._save_checkpoint(step)
                if epoch_losses:
                    mean = sum(epoch_losses) / len(epoch_losses)
                    self.progress.on_epoch_end(
                        EpochContext(epoch, max_epochs, len(epoch_losses), mean, time.perf_counter() - begin)
                    )
                if step >= total:
                    break
        finally:
            bar.close()
            if metrics_file is not None:
                metrics_file.close()
        duration = time.perf_counter() - begin
        if self.output_dir is not None and step % self.config.checkpoint_every != 0:
            self._save_checkpoint(step)
        done = step - start_step
        metrics = None
        if losses:
            metrics = PipelineMetrics(
                initial_loss=losses[0],
                final_loss=losses[-1],
                best_loss=best,
                steps_completed=done,
                throughput=done / duration if duration > 0 else 0.0,
                duration_s=duration,
            )
        return TrainResult(records, metrics, start_step)


def evaluate(
    model: torch.nn.Module, teacher: Any, chunks: TokenChunks, backend: Any, *, batch_size: int = 32,
    vocab_align: str = "error",
) -> dict[str, float]:
    """Held-out figures of ``model``: per-token cross-entropy, perplexity, and (with a dense teacher) the mean
    per-token ``KL(teacher || model)`` at T = 1, all through ``backend``."""
    loss = BackendLoss(backend, temperature=1.0, alpha=1.0)
    bridge = loss.bridge
    vocab = output_vocab_size(model)
    align = None if teacher is None else VocabAlign(teacher.vocab_size, vocab, vocab_align)
    was_training = model.training
    model.eval()
    ce_sum, kl_sum, tokens = 0.0, 0.0, 0
    with torch.inference_mode():
        for batch in chunks.sequential(batch_size):
            labels = next_token_labels(batch)
            valid = labels != IGNORE_INDEX
            logits = student_logits(model, batch).float()
            ce = backend.cross_entropy(bridge.logits(logits, "float32"), bridge.labels(labels), reduction="sum")
            ce_sum += float(bridge.back(ce, logits))
            tokens += int(valid.sum())
            if align is not None and teacher.kind == "dense":
                t, _ = align.dense(teacher.logits(batch))
                rows = backend.kl_divergence(
                    bridge.logits(logits, "float32"), bridge.logits(t.float(), "float32"), temperature=1.0
                )
                kl_sum += float((bridge.back(rows, logits) * valid).sum())
    model.train(was_training)
    ce_mean = ce_sum / max(tokens, 1)
    out = {"ce": ce_mean, "perplexity": math.exp(ce_mean), "tokens": float(tokens)}
    if align is not None and teacher.kind == "dense":
        out["kl_to_teacher"] = kl_sum / max(tokens, 1)
    return out

