"""The ``pipeline`` namespace of the KD binding: what the pipeline contracts' checks may call.

The distillation pipeline (:mod:`reference.pipeline`, :mod:`reference.progress`, :mod:`reference.smoke`,
:mod:`reference.distill`) is driven here and observed as plain data (dicts, lists, numbers), so that the
property itself is written in the contract's ``expect``:

* :func:`run_distill` runs the command of a path in-process in a fresh temporary working directory and returns
  what it printed, parsed (step, epoch and ``[SMOKE]`` lines), and every path it created or changed. The paths
  (:data:`PATHS`): ``"fixture"``, ``python -m reference.distill`` (numpy table models, the pipeline's
  reference), and ``"models"``, ``python -m distill`` (torch transformers) with :data:`MODELS_ARGS` put before
  the check's own flags: tiny Llama student and teacher, a small corpus, the fixture's 3 x 20 run shape;
  :func:`outputs` names what a full run of each path writes;
* :func:`parse_smoke` reads the two ``[SMOKE]`` summary lines into numbers;
* :func:`callback_events` / :func:`callback_log` run a real :class:`~reference.pipeline.Pipeline` with
  recording callbacks and return the hook calls in order;
* :func:`step_update` runs one step of the fixture teacher/student and reports the parameter change;
  :func:`sum_by_context` states the SGD update rule (the learning properties of the loop are tests in
  ``tests/test_pipeline.py`` that the contract names with ``test:``);
* :func:`progress_work` counts the work :class:`~reference.progress.ProgressCallback` does per step.

Every function builds its own models and data from a seed and touches nothing outside its temporary
directory, so the checks are deterministic and independent of each other and of the environment.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reference import distill
from reference.pipeline import (
    IGNORE_INDEX,
    Callback,
    Control,
    EpochContext,
    FixtureBatches,
    Pipeline,
    PipelineConfig,
    PipelineResult,
    RunInfo,
    StepContext,
    Stop,
)
from reference.progress import ProgressCallback
from reference.providers import FixtureStudent, FixtureTeacher
from reference.step import kd_step

__all__ = [
    "ATTRIBUTES",
    "MODELS_ARGS",
    "PATHS",
    "callback_events",
    "callback_log",
    "models_corpus_text",
    "old_outputs",
    "outputs",
    "parse_smoke",
    "progress_work",
    "run_distill",
    "step_update",
    "sum_by_context",
]

# --------------------------------------------------------------------------------------------------------
# The command, in-process
# --------------------------------------------------------------------------------------------------------

_STEP_LOOSE = re.compile(r"\bStep \d+")
_STEP = re.compile(r"^  Step (\d+)/(\d+): loss: (\d+\.\d{4})$")
_EPOCH_LOOSE = re.compile(r"^\s*Epoch \d+")
_EPOCH = re.compile(r"^Epoch (\d+)/(\d+): loss: (\d+\.\d{4}) \((\d+\.\d)s\)$")
_SMOKE_PREFIX = "[SMOKE]"
_SMOKE_RUN = re.compile(
    r"^\[SMOKE\] (\d+) steps in (\d+\.\d{2})s: initial_loss=(\d+\.\d{4}), final_loss=(\d+\.\d{4}), "
    r"throughput=(\d+\.\d{2}) step/s$"
)
_SMOKE_PROJECTION = re.compile(
    r"^\[SMOKE\] projected full-run wall time \((\d+) steps\): (\d+\.\d{2})h / (\d+\.\d) min / (\d+\.\d)s$"
)


def _snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path under ``root``: directories as ``("dir",)``, files by content hash, size, inode, mtime."""
    state: dict[str, tuple[object, ...]] = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if path.is_dir():
            state[rel] = ("dir",)
        else:
            stat = path.stat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            state[rel] = ("file", digest, stat.st_size, stat.st_ino, stat.st_mtime_ns)
    return state


def _inside(root: Path, rel: str, what: str) -> Path:
    """``root / rel`` when ``rel`` is a relative path that stays inside ``root``; ValueError otherwise. A check
    writes only inside its own temporary directory."""
    path = Path(rel)
    if not rel or path.is_absolute() or ".." in path.parts or path.drive:
        raise ValueError(f"{what} {rel!r} must be a relative path inside the run's temporary directory (no '..')")
    return root / path


def _confine_output_dir(argv: list[str]) -> None:
    """Refuse an ``--output-dir`` that leaves the temporary working directory (absolute, or with ``..``)."""
    for i, arg in enumerate(argv):
        if arg == "--output-dir" and i + 1 < len(argv):
            _inside(Path("."), argv[i + 1], "--output-dir")
        elif arg.startswith("--output-dir="):
            _inside(Path("."), arg.partition("=")[2], "--output-dir")


PATHS = ("fixture", "models")
"""The paths the pipeline contracts run against: the numpy fixture command and the torch real-model command."""

MODELS_ARGS = (
    "--student", "llama-tiny", "--teacher", "llama-tiny", "--seq-len", "16", "--batch-size", "2",
    "--epochs", "3", "--steps-per-epoch", "20", "--warmup-steps", "2", "--threads", "1", "--no-progress",
)
"""Put before a check's flags on the models path (argparse keeps a flag's last value, so the check's win): tiny
models and the fixture's run shape (3 epochs of 20 steps), on :data:`MODELS_CORPUS_PARAGRAPHS` paragraphs of the
shipped corpus (``--data``, added by :func:`run_distill`)."""

MODELS_CORPUS_PARAGRAPHS = 60

_OUTPUTS = {
    "fixture": ("metadata.json", "student.npz"),
    "models": ("checkpoint.safetensors", "loss.png", "metadata.json", "metrics.jsonl", "student/"),
}


def _path(path: str) -> str:
    if path not in _OUTPUTS:
        raise ValueError(f"path {path!r} is not one of {', '.join(PATHS)}")
    return path


def outputs(path: str) -> list[str]:
    """What a full run of ``path`` writes into its output directory, as :func:`run_distill` reports it in
    ``outputs`` (its top-level entries, folders with a trailing ``/``)."""
    return list(_OUTPUTS[_path(path)])


def old_outputs(path: str, folder: str) -> dict[str, str]:
    """Files (relative path -> text) standing for a previous full run of ``path`` in ``folder``: one file per
    output of :func:`outputs`, one inside each output folder; a ``files`` argument of :func:`run_distill`."""
    return {
        f"{folder}/{name}model.safetensors" if name.endswith("/") else f"{folder}/{name}": f"old {name}"
        for name in outputs(path)
    }


def _models_command() -> Any:
    """``distill.cli``, or a "not run" skip when the models extra (transformers) is not installed."""
    try:
        import transformers  # noqa: F401

        from distill import cli
    except ImportError as error:
        import pytest

        pytest.skip(f"not run: the models path needs the models extra, pip install -e '.[torch,models]' ({error})")
    return cli


def models_corpus_text() -> str:
    """The first :data:`MODELS_CORPUS_PARAGRAPHS` paragraphs of 80+ characters of the shipped corpus."""
    from distill.data import load_documents

    pieces: list[str] = []
    for document in load_documents():
        pieces += [p.strip() for p in document.split("\n\n") if len(p.strip()) > 80]
        if len(pieces) >= MODELS_CORPUS_PARAGRAPHS:
            break
    return "\n\n".join(pieces[:MODELS_CORPUS_PARAGRAPHS]) + "\n"


def _top_level(files: Sequence[str]) -> list[str]:
    return sorted({f.split("/", 1)[0] + "/" if "/" in f else f for f in files})


def run_distill(
    args: Sequence[object],
    env: Mapping[str, object],
    files: Mapping[str, str] | None = None,
    path: str = "fixture",
) -> dict[str, Any]:
    """Run the command of ``path`` in-process with ``env`` as its whole environment, in a fresh temporary working
    directory (removed afterwards) that holds ``files`` (relative path -> text) first: ``python -m
    reference.distill ARGS`` (``"fixture"``) or ``python -m distill MODELS_ARGS --data CORPUS ARGS``
    (``"models"``; the corpus file lies outside the working directory).

    Returns a dict:

    * ``path``; ``exit_code``, ``stdout``, ``stderr`` and their ``stdout_lines`` / ``stderr_lines``;
    * ``step_lines``: stdout lines that mention ``Step <n>``; ``logged_steps``, ``step_totals``,
      ``step_losses``: the numbers of those lines that have the exact form ``  Step g/G: loss: x.xxxx``;
    * ``epoch_lines``: stdout lines starting ``Epoch <n>``; ``logged_epochs``, ``epoch_totals``,
      ``epoch_losses``: the numbers of those of the exact form ``Epoch e/E: loss: x.xxxx (t.ts)``;
    * ``smoke_lines``: stdout lines starting ``[SMOKE]`` (see :func:`parse_smoke`);
    * ``output_files``: the files in the output directory after the run (``distill.run``'s view), and
      ``outputs``: its top-level entries, folders with a trailing ``/`` (compare with :func:`outputs`);
    * ``written``: every path under the working directory created, changed or removed by the run;
    * ``traceback``: whether ``Traceback`` appears in either stream.
    """
    argv = [str(a) for a in args]
    _confine_output_dir(argv)
    command: Any = distill
    corpus_dir: Path | None = None
    if _path(path) == "models":
        command = _models_command()
        corpus_dir = Path(tempfile.mkdtemp(prefix="kd-corpus-"))
        corpus = corpus_dir / "corpus.txt"
        corpus.write_text(models_corpus_text(), encoding="utf-8")
        argv = [*MODELS_ARGS, "--data", str(corpus), *argv]
    root = Path(tempfile.mkdtemp(prefix="kd-distill-"))
    try:
        for rel, text in (files or {}).items():
            target = _inside(root, str(rel), "files key")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(str(text), encoding="utf-8")
        before = _snapshot(root)
        outcome = command.run(argv, {str(k): str(v) for k, v in env.items()}, cwd=root)
        after = _snapshot(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if corpus_dir is not None:
            shutil.rmtree(corpus_dir, ignore_errors=True)
    written = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    out_lines = outcome.stdout.splitlines()
    steps = [m for m in (_STEP.match(line) for line in out_lines) if m]
    epochs = [m for m in (_EPOCH.match(line) for line in out_lines) if m]
    # Compact, telling fields first: a failure report shows this dict truncated.
    return {
        "path": path,
        "exit_code": outcome.exit_code,
        "traceback": "Traceback" in outcome.stdout or "Traceback" in outcome.stderr,
        "written": written,
        "outputs": _top_level(outcome.output_files),
        "output_files": list(outcome.output_files),
        "stderr_lines": outcome.stderr.splitlines(),
        "logged_steps": [int(m[1]) for m in steps],
        "step_totals": [int(m[2]) for m in steps],
        "logged_epochs": [int(m[1]) for m in epochs],
        "epoch_totals": [int(m[2]) for m in epochs],
        "smoke_lines": [line for line in out_lines if line.startswith(_SMOKE_PREFIX)],
        "epoch_lines": [line for line in out_lines if _EPOCH_LOOSE.match(line)],
        "step_lines": [line for line in out_lines if _STEP_LOOSE.search(line)],
        "step_losses": [float(m[3]) for m in steps],
        "epoch_losses": [float(m[3]) for m in epochs],
        "stdout_lines": out_lines,
        "stdout": outcome.stdout,
        "stderr": outcome.stderr,
    }


def parse_smoke(out: Mapping[str, Any] | str) -> dict[str, float]:
    """The numbers of the two ``[SMOKE]`` lines of a :func:`run_distill` result (or of a stdout string):
    ``steps``, ``seconds``, ``initial_loss``, ``final_loss``, ``throughput`` from the first line and
    ``projected_steps``, ``hours``, ``minutes``, ``projected_s`` from the second.

    Raises ``ValueError`` saying which line is missing or malformed when there are not exactly those two
    lines, in that order, in the documented format.
    """
    text = out if isinstance(out, str) else out["stdout"]
    lines = [line for line in text.splitlines() if line.startswith(_SMOKE_PREFIX)]
    if len(lines) != 2:
        raise ValueError(f"expected exactly 2 [SMOKE] lines, found {len(lines)}: {lines!r}")
    run_line, projection_line = lines
    first = _SMOKE_RUN.match(run_line)
    if first is None:
        raise ValueError(f"the first [SMOKE] line is not '[SMOKE] N steps in T.TTs: ...': {run_line!r}")
    second = _SMOKE_PROJECTION.match(projection_line)
    if second is None:
        raise ValueError(
            f"the second [SMOKE] line is not '[SMOKE] projected full-run wall time (P steps): ...': "
            f"{projection_line!r}"
        )
    return {
        "steps": int(first[1]),
        "seconds": float(first[2]),
        "initial_loss": float(first[3]),
        "final_loss": float(first[4]),
        "throughput": float(first[5]),
        "projected_steps": int(second[1]),
        "hours": float(second[2]),
        "minutes": float(second[3]),
        "projected_s": float(second[4]),
    }


# --------------------------------------------------------------------------------------------------------
# The training loop with fixture models
# --------------------------------------------------------------------------------------------------------

_DEFAULTS = distill.DEFAULTS
_VOCAB = distill.VOCAB_SIZE
_SEQ_LEN = distill.SEQ_LEN


class _Recorder(Callback):
    """Appends ``(who, event, number)`` to a shared log for every hook call; returns Stop at ``stop_at``."""

    def __init__(self, who: int, log: list[tuple[int, str, int]], stop_at: int | None = None) -> None:
        self.who = who
        self.log = log
        self.stop_at = stop_at

    def on_train_begin(self, info: RunInfo) -> None:
        self.log.append((self.who, "train_begin", info.total_steps))

    def on_epoch_begin(self, epoch: int, max_epochs: int) -> None:
        self.log.append((self.who, "epoch_begin", epoch))

    def on_step_end(self, context: StepContext) -> Control | None:
        self.log.append((self.who, "step_end", context.global_step))
        return Stop if context.global_step == self.stop_at else None

    def on_epoch_end(self, context: EpochContext) -> None:
        self.log.append((self.who, "epoch_end", context.epoch))

    def on_train_end(self, result: PipelineResult) -> None:
        self.log.append((self.who, "train_end", result.metrics.steps_completed))


def _fixture_pipeline(
    epochs: int,
    steps_per_epoch: int,
    callbacks: Sequence[Callback] = (),
    *,
    seed: int = 0,
    vocab: int = _VOCAB,
    student_vocab: int | None = None,
    batch_size: int = _DEFAULTS.batch_size,
    seq_len: int = _SEQ_LEN,
    max_steps: int | None = None,
    **config: Any,
) -> Pipeline:
    """The command's setup (fixture teacher, student and data under ``seed``) without output directory."""
    settings = {
        "temperature": _DEFAULTS.temperature,
        "alpha": _DEFAULTS.alpha,
        "learning_rate": _DEFAULTS.learning_rate,
        **config,
    }
    cfg = PipelineConfig(
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        batch_size=batch_size,
        seed=seed,
        max_steps=max_steps,
        output_dir=None,
        **settings,
    )
    teacher = FixtureTeacher(vocab, seed=seed)
    student = FixtureStudent(
        vocab if student_vocab is None else student_vocab, seed=seed + 1, learning_rate=cfg.learning_rate
    )
    batches = FixtureBatches(
        teacher, batch_size=batch_size, seq_len=seq_len, num_batches=steps_per_epoch, seed=seed + 2
    )
    return Pipeline(teacher, student, batches, cfg, callbacks, contract_versions={})


def callback_log(
    recorders: int,
    epochs: int,
    steps_per_epoch: int,
    stop_at: int | None = None,
    max_steps: int | None = None,
) -> list[tuple[int, str, int]]:
    """Run a small fixture pipeline with ``recorders`` recording callbacks attached in order 0, 1, ... and
    return their shared log of ``(recorder, event, number)``: ``train_begin`` with the planned total steps,
    ``epoch_begin``/``epoch_end`` with the 1-based epoch, ``step_end`` with the 1-based global step,
    ``train_end`` with the steps completed. Recorder 0 returns Stop from ``on_step_end`` at step ``stop_at``.
    """
    log: list[tuple[int, str, int]] = []
    callbacks = [_Recorder(i, log, stop_at if i == 0 else None) for i in range(recorders)]
    _fixture_pipeline(
        epochs,
        steps_per_epoch,
        callbacks,
        vocab=8,
        batch_size=2,
        seq_len=4,
        max_steps=max_steps,
        learning_rate=1.0,
    ).run()
    return log


def callback_events(
    epochs: int, steps_per_epoch: int, stop_at: int | None = None, max_steps: int | None = None
) -> list[tuple[str, int]]:
    """The ``(event, number)`` hook calls one recording callback sees (see :func:`callback_log`)."""
    return [(event, n) for _, event, n in callback_log(1, epochs, steps_per_epoch, stop_at, max_steps)]


def step_update(
    batch_size: int = 4, seq_len: int = 6, contexts_per_element: int = 3, seed: int = 0, ignored: int = 0
) -> dict[str, Any]:
    """One pipeline step on a batch whose elements use disjoint contexts: element ``b`` draws its input
    tokens from ``[b*k, (b+1)*k)``, ``k = contexts_per_element``, and every label is the teacher's argmax,
    except the last ``ignored`` positions of every element, labelled ``IGNORE_INDEX``.

    Returns ``ids`` ``[B, S]``, ``gradient`` ``[B, S, V]`` (``reference.step.kd_step`` on the batch with the
    student as it was before the step), ``delta`` (the student's table after minus before, ``[C, V]``),
    ``contexts`` (``C = B * k``), ``lr``, ``element_moved`` (per element: did any row of its contexts
    change), and ``ignored_gradient`` (the gradient rows of the ignored positions, ``[B * ignored, V]``).
    """
    k = contexts_per_element
    n_contexts = batch_size * k
    rng = np.random.default_rng(seed + 2)
    ids = np.stack([rng.integers(b * k, (b + 1) * k, size=seq_len) for b in range(batch_size)])
    teacher = FixtureTeacher(_VOCAB, context_size=n_contexts, seed=seed)
    labels = teacher.logits_for_batch(ids).argmax(axis=-1).astype(np.int64)
    if ignored:
        labels[:, seq_len - ignored :] = IGNORE_INDEX
    lr = _DEFAULTS.learning_rate
    student = FixtureStudent(_VOCAB, context_size=n_contexts, seed=seed + 1, learning_rate=lr)
    before = student.table
    _, gradient = kd_step(
        teacher,
        ids,
        labels,
        temperature=_DEFAULTS.temperature,
        alpha=_DEFAULTS.alpha,
        student_logits=FixtureStudent.from_table(before, learning_rate=lr),
    )
    config = PipelineConfig(
        epochs=1,
        steps_per_epoch=1,
        batch_size=batch_size,
        temperature=_DEFAULTS.temperature,
        alpha=_DEFAULTS.alpha,
        learning_rate=lr,
        seed=seed,
    )
    Pipeline(teacher, student, [(ids, labels)], config, contract_versions={}).run()
    delta = student.table - before
    moved = [bool(np.any(delta[b * k : (b + 1) * k] != 0)) for b in range(batch_size)]
    return {
        "ids": ids,
        "gradient": gradient,
        "delta": delta,
        "contexts": n_contexts,
        "lr": lr,
        "element_moved": moved,
        "ignored_gradient": gradient[labels == IGNORE_INDEX],
    }


def sum_by_context(ids: object, rows: object, contexts: int) -> np.ndarray:
    """``out[c] = sum of rows[b, s] over the positions (b, s) with ids[b, s] = c``; shape ``[contexts, V]``.

    The SGD update of a table student is ``table -= lr * sum_by_context(ids, gradient, contexts)``."""
    ids = np.asarray(ids)
    rows = np.asarray(rows, dtype=np.float64)
    out = np.zeros((int(contexts), rows.shape[-1]))
    np.add.at(out, ids, rows)
    return out


# --------------------------------------------------------------------------------------------------------
# The work the progress callback does
# --------------------------------------------------------------------------------------------------------


class _Counter:
    def __init__(self) -> None:
        self.loss_formats = 0
        self.writes = 0
        self.text: list[str] = []


class _CountedLoss(float):
    """A step loss that counts every time it is turned into text."""

    counter: _Counter

    def __new__(cls, value: float, counter: _Counter) -> _CountedLoss:
        self = super().__new__(cls, value)
        self.counter = counter
        return self

    def __format__(self, spec: str) -> str:
        self.counter.loss_formats += 1
        return float(self).__format__(spec)

    def __str__(self) -> str:
        self.counter.loss_formats += 1
        return float(self).__str__()

    def __repr__(self) -> str:
        self.counter.loss_formats += 1
        return float(self).__repr__()


class _CountingStream:
    def __init__(self, counter: _Counter) -> None:
        self.counter = counter

    def write(self, text: str) -> int:
        self.counter.writes += 1
        self.counter.text.append(text)
        return len(text)

    def flush(self) -> None:
        pass


class _Probe(Callback):
    """Forwards every hook to ``inner``, handing ``on_step_end`` a context whose loss counts formatting."""

    def __init__(self, inner: Callback, counter: _Counter) -> None:
        self.inner = inner
        self.counter = counter

    def on_train_begin(self, info: RunInfo) -> None:
        self.inner.on_train_begin(info)

    def on_epoch_begin(self, epoch: int, max_epochs: int) -> None:
        self.inner.on_epoch_begin(epoch, max_epochs)

    def on_step_end(self, context: StepContext) -> Control | None:
        counted = dataclasses.replace(context, loss=_CountedLoss(context.loss, self.counter))
        return self.inner.on_step_end(counted)

    def on_epoch_end(self, context: EpochContext) -> None:
        self.inner.on_epoch_end(context)

    def on_train_end(self, result: PipelineResult) -> None:
        self.inner.on_train_end(result)


def _models_trainer(epochs: int, steps_per_epoch: int, log_every: int) -> Any:
    """The models path's trainer as ``python -m distill`` builds it from :data:`MODELS_ARGS` (tiny Llama student
    and teacher, 16-token sequences in batches of 2), without outputs."""
    _models_command()  # a "not run" skip without the models extra
    import torch

    from backends import registry
    from distill.data import TOKENIZER_PATH, TokenChunks, load_tokenizer, split_documents
    from distill.models import load_model
    from distill.teachers.hf import HFTeacher
    from distill.train import TrainConfig, Trainer

    torch.set_num_threads(1)  # as --threads 1 in MODELS_ARGS
    documents = [p for p in models_corpus_text().split("\n\n") if p.strip()]
    train, _ = split_documents(documents)
    chunks = TokenChunks(train, load_tokenizer(TOKENIZER_PATH), 16)
    config = TrainConfig(epochs=epochs, steps_per_epoch=steps_per_epoch, batch_size=2, warmup_steps=2)
    teacher = HFTeacher(load_model("llama-tiny", seed=1), name="llama-tiny")
    return Trainer(load_model("llama-tiny", seed=0), teacher, chunks, config, registry.get("torch"),
                   log_every=log_every, progress_bar=False)


def progress_work(log_every: int, epochs: int, steps_per_epoch: int, path: str = "fixture") -> dict[str, int]:
    """Run a small training loop of ``path`` (a fixture pipeline, or the models path's trainer) with
    ``ProgressCallback(log_every)`` writing to a counting stream, and count its work: ``steps`` run,
    ``loss_formats`` (times a step's loss was turned into text), ``writes`` (calls to the stream's ``write``),
    ``step_lines`` and ``epoch_lines`` (lines of each kind written).
    """
    counter = _Counter()
    progress = ProgressCallback(log_every, _CountingStream(counter))  # type: ignore[arg-type]
    if _path(path) == "models":
        trainer = _models_trainer(epochs, steps_per_epoch, log_every)
        trainer.progress = _Probe(progress, counter)
        steps = trainer.run().metrics.steps_completed
    else:
        steps = _fixture_pipeline(
            epochs,
            steps_per_epoch,
            [_Probe(progress, counter)],
            vocab=8,
            batch_size=2,
            seq_len=4,
            learning_rate=1.0,
        ).run().metrics.steps_completed
    lines = "".join(counter.text).splitlines()
    return {
        "steps": steps,
        "loss_formats": counter.loss_formats,
        "writes": counter.writes,
        "step_lines": sum(1 for line in lines if _STEP_LOOSE.search(line)),
        "epoch_lines": sum(1 for line in lines if _EPOCH_LOOSE.match(line)),
    }


ATTRIBUTES = (
    "run_distill",
    "outputs",
    "old_outputs",
    "parse_smoke",
    "callback_log",
    "callback_events",
    "step_update",
    "sum_by_context",
    "progress_work",
)
"""The functions a check may call as ``pipeline.<name>``."""
