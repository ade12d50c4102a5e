"""Tests of the training loop, its callbacks, atomic outputs, progress lines and smoke report."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from bindings.kd_pipeline import PATHS, run_distill
from reference import distill
from reference import pipeline as pipeline_module
from reference.pipeline import (
    IGNORE_INDEX,
    METADATA_FILENAME,
    MODEL_FILENAME,
    Callback,
    EpochContext,
    FixtureBatches,
    Pipeline,
    PipelineConfig,
    PipelineMetrics,
    PipelineResult,
    RunInfo,
    StepContext,
    Stop,
    atomic_write,
    read_contract_versions,
)
from reference.progress import ProgressCallback
from reference.providers import FixtureStudent, FixtureTeacher
from reference.smoke import format_smoke_report, smoke_report

VOCAB = 16


class Recorder(Callback):
    """Records every hook call; optionally returns Stop at one global step."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.events: list[tuple[str, object]] = []
        self.steps: list[StepContext] = []
        self.epochs: list[EpochContext] = []
        self.results: list[PipelineResult] = []
        self.stop_at = stop_at

    def on_train_begin(self, info: RunInfo) -> None:
        self.events.append(("train_begin", info.total_steps))

    def on_epoch_begin(self, epoch: int, max_epochs: int) -> None:
        self.events.append(("epoch_begin", epoch))

    def on_step_end(self, context: StepContext):
        self.events.append(("step_end", context.global_step))
        self.steps.append(context)
        return Stop if context.global_step == self.stop_at else None

    def on_epoch_end(self, context: EpochContext) -> None:
        self.events.append(("epoch_end", context.epoch))
        self.epochs.append(context)

    def on_train_end(self, result: PipelineResult) -> None:
        self.events.append(("train_end", result.metrics.steps_completed))
        self.results.append(result)


def make(
    callbacks=(), *, lr: float = 4.0, batch_size: int = 4, seq_len: int = 8, **config_fields
) -> tuple[Pipeline, FixtureTeacher, FixtureStudent]:
    config = PipelineConfig(learning_rate=lr, batch_size=batch_size, **config_fields)
    teacher = FixtureTeacher(VOCAB, seed=config.seed)
    student = FixtureStudent(VOCAB, seed=config.seed + 1, learning_rate=lr)
    batches = FixtureBatches(
        teacher,
        batch_size=batch_size,
        seq_len=seq_len,
        num_batches=config.steps_per_epoch,
        seed=config.seed + 2,
    )
    return Pipeline(teacher, student, batches, config, callbacks), teacher, student


def make_command(seed: int, epochs: int, steps_per_epoch: int, callbacks=()) -> tuple[Pipeline, FixtureTeacher,
                                                                                     FixtureStudent]:
    """The setup of ``python -m reference.distill`` with its default hyperparameters, without outputs."""
    config = dataclasses.replace(
        distill.DEFAULTS, epochs=epochs, steps_per_epoch=steps_per_epoch, seed=seed, output_dir=None
    )
    teacher = FixtureTeacher(distill.VOCAB_SIZE, seed=seed)
    student = FixtureStudent(distill.VOCAB_SIZE, seed=seed + 1, learning_rate=config.learning_rate)
    batches = FixtureBatches(
        teacher, batch_size=config.batch_size, seq_len=distill.SEQ_LEN, num_batches=steps_per_epoch, seed=seed + 2
    )
    return Pipeline(teacher, student, batches, config, callbacks, contract_versions={}), teacher, student


# ---------------------------------------------------------------------------------------------- lifecycle


@pytest.mark.falsifier_id("F-DISTILL-PIPELINE-003")
def test_callback_order_and_counts() -> None:
    rec = Recorder()
    result = make([rec], epochs=3, steps_per_epoch=4)[0].run()
    expected: list[tuple[str, object]] = [("train_begin", 12)]
    for epoch in (1, 2, 3):
        expected.append(("epoch_begin", epoch))
        expected += [("step_end", (epoch - 1) * 4 + s) for s in (1, 2, 3, 4)]
        expected.append(("epoch_end", epoch))
    expected.append(("train_end", 12))
    assert rec.events == expected
    assert result.metrics.steps_completed == 12
    assert [(c.epoch, c.step) for c in rec.steps] == [(e, s) for e in (1, 2, 3) for s in (1, 2, 3, 4)]
    assert {(c.max_epochs, c.total_steps, c.lr) for c in rec.steps} == {(3, 12, 4.0)}
    losses = [c.loss for c in rec.steps]
    assert [c.best_loss for c in rec.steps] == [min(losses[: i + 1]) for i in range(12)]
    assert all(a.elapsed <= b.elapsed for a, b in zip(rec.steps, rec.steps[1:], strict=False))
    assert [c.mean_loss for c in rec.epochs] == pytest.approx([np.mean(losses[i : i + 4]) for i in (0, 4, 8)])
    m = result.metrics
    assert (m.initial_loss, m.final_loss, m.best_loss) == (losses[0], losses[-1], min(losses))
    assert m.duration_s > 0 and m.throughput == pytest.approx(12 / m.duration_s)
    assert result.output_path is None and not result.stopped_early


@pytest.mark.falsifier_id("F-DISTILL-PIPELINE-005")
@pytest.mark.parametrize("stop_at", [1, 3, 4, 5, 6, 11, 12])
def test_stop_is_honoured_after_the_current_step(stop_at: int) -> None:
    stopper, watcher = Recorder(stop_at=stop_at), Recorder()
    result = make([stopper, watcher], epochs=3, steps_per_epoch=4)[0].run()
    assert result.metrics.steps_completed == stop_at
    assert result.stopped_early
    assert [c.global_step for c in watcher.steps] == list(range(1, stop_at + 1))  # others see that step too
    assert watcher.events == stopper.events  # the other callback sees step k and the same ending
    names = [name for name, _ in stopper.events]
    assert names.count("train_end") == 1 and stopper.events[-1] == ("train_end", stop_at)
    assert names[-2] == "epoch_end"  # the cut-short epoch still ends
    assert [n for name, n in stopper.events if name == "epoch_end"] == list(range(1, math.ceil(stop_at / 4) + 1))
    assert stopper.epochs[-1].steps == (stop_at - 1) % 4 + 1


def test_early_stop_still_writes_outputs(tmp_path: Path) -> None:
    rec = Recorder(stop_at=2)
    result = make([rec], epochs=2, steps_per_epoch=5, output_dir=tmp_path / "out")[0].run()
    assert result.stopped_early
    assert (tmp_path / "out" / MODEL_FILENAME).is_file()
    assert rec.results == [result]


def test_deterministic_under_the_seed() -> None:
    a, b = Recorder(), Recorder()
    make([a], epochs=1, steps_per_epoch=5, seed=7)[0].run()
    make([b], epochs=1, steps_per_epoch=5, seed=7)[0].run()
    assert [c.loss for c in a.steps] == [c.loss for c in b.steps]


# ---------------------------------------------------------------------------------------------- learning


@pytest.mark.falsifier_id("F-DISTILL-PIPELINE-001")
@pytest.mark.parametrize(("path", "seed"), [("fixture", 0), ("fixture", 1), ("fixture", 2), ("fixture", 3),
                                            ("models", 0), ("models", 1)])
def test_loss_falls_over_three_epochs(path: str, seed: int) -> None:
    """Both paths: the fixture's 3 x 20 run, and ``python -m distill`` with the same shape on tiny models."""
    if path == "models":
        out = run_distill(["--seed", seed], {"DISTILL_LOG_EVERY": "1"}, path="models")
        assert out["exit_code"] == 0, out["stderr"]
        losses, means = out["step_losses"], out["epoch_losses"]
        assert len(losses) == 60 and losses[-1] < losses[0]
        assert len(means) == 3 and means[0] > means[1] > means[2], means
        return
    rec = Recorder()
    result = make_command(seed, epochs=3, steps_per_epoch=20, callbacks=[rec])[0].run()
    assert result.metrics.final_loss < result.metrics.initial_loss
    means = [c.mean_loss for c in rec.epochs]
    assert len(means) == 3 and means[0] > means[1] > means[2], means


@pytest.mark.falsifier_id("F-DISTILL-STUDENT-002")
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_ten_steps_bring_the_loss_under_90_percent_of_its_start(seed: int) -> None:
    result = make_command(seed, epochs=1, steps_per_epoch=10)[0].run()
    assert result.metrics.steps_completed == 10
    assert result.metrics.final_loss < 0.9 * result.metrics.initial_loss


@pytest.mark.falsifier_id("F-DISTILL-STUDENT-001")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_step_moves_the_student_toward_the_teachers_preferred_token(seed: int) -> None:
    pipe, teacher, student = make_command(seed, epochs=1, steps_per_epoch=1)
    input_ids, labels = next(iter(pipe.batches))
    contexts = np.unique(input_ids[labels != IGNORE_INDEX])
    preferred = teacher.preferred_tokens[contexts]

    def p_preferred() -> np.ndarray:
        table = student.table[contexts]
        probs = np.exp(table - table.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        return probs[np.arange(len(contexts)), preferred]

    before = p_preferred()
    pipe.run()
    assert len(contexts) > 0
    assert np.all(p_preferred() > before), f"contexts that did not move: {contexts[p_preferred() <= before]}"


class TwoBatch:
    """One batch whose elements use disjoint contexts: element b only sees contexts {2b, 2b+1}."""

    def __iter__(self):
        ids = np.array([[0, 1, 0], [2, 3, 3], [4, 5, 4], [6, 7, 7]])
        labels = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]])
        yield ids, labels


def test_every_batch_element_changes_the_student() -> None:
    teacher = FixtureTeacher(VOCAB)
    student = FixtureStudent(VOCAB, learning_rate=1.0)
    before = student.table
    config = PipelineConfig(epochs=1, steps_per_epoch=1, batch_size=4, learning_rate=1.0)
    Pipeline(teacher, student, TwoBatch(), config).run()
    changed = np.any(student.table != before, axis=-1)
    assert changed[:8].all(), f"contexts not updated: {np.flatnonzero(~changed[:8]).tolist()}"
    assert not changed[8:].any()


def test_the_student_receives_the_whole_batch() -> None:
    seen: list[np.ndarray] = []

    class Spy(FixtureStudent):
        def apply_kd_gradient(self, input_ids, gradient):
            seen.append(np.array(input_ids))
            assert gradient.shape == (*np.shape(input_ids), self.vocab_size)
            super().apply_kd_gradient(input_ids, gradient)

    teacher = FixtureTeacher(VOCAB)
    config = PipelineConfig(epochs=1, steps_per_epoch=1, batch_size=4, learning_rate=1.0)
    Pipeline(teacher, Spy(VOCAB, learning_rate=1.0), TwoBatch(), config).run()
    np.testing.assert_array_equal(seen[0], next(iter(TwoBatch()))[0])


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.falsifier_id("F-DISTILL-PIPELINE-006")
@pytest.mark.parametrize("path", PATHS)
def test_vocab_mismatch_is_an_error_before_any_step(path: str, tmp_path: Path) -> None:
    if path == "models":  # a 1100-token teacher config beside the 1024-token tokenizer and student
        config = json.loads((Path(distill.__file__).parent.parent / "distill/configs/llama-tiny.json").read_text())
        (tmp_path / "wide.json").write_text(json.dumps({**config, "vocab_size": 1100}))
        out = run_distill(["--teacher", tmp_path / "wide.json"], {"DISTILL_LOG_EVERY": "1"}, path="models")
        assert out["exit_code"] == 2 and len(out["stderr_lines"]) == 1 and not out["traceback"], out["stderr"]
        assert "vocabulary" in out["stderr"] and "1100" in out["stderr"] and "1024" in out["stderr"]
        assert out["step_lines"] == [] and out["written"] == []
        return
    rec = Recorder()
    teacher = FixtureTeacher(32)
    with pytest.raises(ValueError, match=r"teacher vocab size 32 != student vocab size 24"):
        Pipeline(teacher, FixtureStudent(24), FixtureBatches(teacher), PipelineConfig(), [rec])
    assert rec.events == []


def test_learning_rate_disagreement_is_an_error() -> None:
    teacher = FixtureTeacher(VOCAB)
    student = FixtureStudent(VOCAB, learning_rate=0.1)
    with pytest.raises(
        ValueError, match=r"student learning_rate 0\.1 differs from config learning_rate 1\.0"
    ):
        Pipeline(teacher, student, FixtureBatches(teacher), PipelineConfig(learning_rate=1.0))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epochs", 0),
        ("epochs", 1.5),
        ("steps_per_epoch", -1),
        ("batch_size", True),
        ("temperature", 0.0),
        ("temperature", math.nan),
        ("learning_rate", -1.0),
        ("alpha", 1.5),
        ("seed", -1),
        ("max_steps", 0),
    ],
)
def test_bad_config_values_are_sentences(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"^{field} must be .*, got {re.escape(repr(value))}$"):
        PipelineConfig(**{field: value})


def test_output_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        make(output_dir=tmp_path / "f")


def test_a_short_batch_source_is_a_sentence() -> None:
    teacher = FixtureTeacher(VOCAB)
    student = FixtureStudent(VOCAB, learning_rate=1.0)
    config = PipelineConfig(epochs=1, steps_per_epoch=5, learning_rate=1.0)
    pipe = Pipeline(teacher, student, FixtureBatches(teacher, num_batches=3), config)
    with pytest.raises(ValueError, match="ran out after 3 batches in epoch 1, but steps_per_epoch is 5"):
        pipe.run()


# ---------------------------------------------------------------------------------------------- smoke


def test_smoke_runs_exactly_n_steps_across_epochs_and_writes_nothing(tmp_path: Path) -> None:
    rec = Recorder()
    out = tmp_path / "out"
    result = make([rec], epochs=1, steps_per_epoch=10, max_steps=25, output_dir=out)[0].run()
    assert result.metrics.steps_completed == 25
    assert [c.steps for c in rec.epochs] == [10, 10, 5]
    assert {c.max_epochs for c in rec.steps} == {3} and rec.steps[-1].total_steps == 25
    assert result.output_path is None and not out.exists()


def test_smoke_report_lines() -> None:
    metrics = PipelineMetrics(
        initial_loss=2.5, final_loss=1.25, best_loss=1.2, steps_completed=7, throughput=3.5, duration_s=2.0
    )
    report = smoke_report(metrics, 7200 * 7 // 2)  # 25200 steps at 2/7 s per step = 7200 s
    assert format_smoke_report(report) == [
        "[SMOKE] 7 steps in 2.00s: initial_loss=2.5000, final_loss=1.2500, throughput=3.50 step/s",
        "[SMOKE] projected full-run wall time (25200 steps): 2.00h / 120.0 min / 7200.0s",
    ]
    with pytest.raises(ValueError, match="project_to_steps"):
        smoke_report(metrics, 0)


# ---------------------------------------------------------------------------------------------- outputs


def test_a_normal_run_writes_the_student_and_metadata(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b"
    pipe, _, student = make(epochs=2, steps_per_epoch=3, output_dir=out)
    pipe.contract_versions = {"distill-kd-loss": "1.0.0"}
    result = pipe.run()
    assert result.output_path == out
    assert sorted(p.name for p in out.iterdir()) == [METADATA_FILENAME, MODEL_FILENAME]
    np.testing.assert_array_equal(FixtureStudent.load(result.model_path).table, student.table)
    meta = json.loads((out / METADATA_FILENAME).read_text())
    assert meta["config"]["epochs"] == 2 and meta["config"]["output_dir"] == str(out)
    assert meta["metrics"]["steps_completed"] == 6
    assert meta["metrics"]["final_loss"] == result.metrics.final_loss
    assert meta["contracts"] == {"distill-kd-loss": "1.0.0"}
    assert meta["model_file"] == MODEL_FILENAME


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_a_crash_while_saving_leaves_no_partial_and_no_temp_file(tmp_path: Path, monkeypatch) -> None:
    def crashing_save(self, path):
        Path(path).write_bytes(b"PK\x03\x04 half a zip")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(FixtureStudent, "save", crashing_save)
    out = tmp_path / "out"
    pipe = make(epochs=1, steps_per_epoch=2, output_dir=out)[0]
    with pytest.raises(RuntimeError, match="disk on fire"):
        pipe.run()
    assert _leftovers(out) == []


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_atomic_write_keeps_the_old_file_on_failure(tmp_path: Path, error: BaseException) -> None:
    target = tmp_path / METADATA_FILENAME
    target.write_text("old")

    def half(tmp: Path) -> None:
        tmp.write_text('{"config": ')
        raise error

    with pytest.raises(type(error)):
        atomic_write(target, half)
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == [METADATA_FILENAME]


def test_atomic_write_cleans_up_when_the_rename_fails(tmp_path: Path, monkeypatch) -> None:
    def failing_replace(src, dst):
        raise OSError("rename refused")

    monkeypatch.setattr(pipeline_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="rename refused"):
        atomic_write(tmp_path / "x.json", lambda tmp: tmp.write_text("{}"))
    assert _leftovers(tmp_path) == []


def test_atomic_write_replaces(tmp_path: Path) -> None:
    target = tmp_path / "x.txt"
    target.write_text("old")
    assert atomic_write(target, lambda tmp: tmp.write_text("new")) == target
    assert target.read_text() == "new" and _leftovers(tmp_path) == ["x.txt"]


def test_read_contract_versions(tmp_path: Path) -> None:
    assert read_contract_versions(tmp_path / "missing") == {}
    (tmp_path / "distill-a.yaml").write_text("metadata:\n  version: 1.2.0\n")
    (tmp_path / "distill-b.yaml").write_text("equations: {}\n")
    (tmp_path / "other.yaml").write_text("metadata:\n  version: 9\n")
    assert read_contract_versions(tmp_path) == {"distill-a": "1.2.0", "distill-b": "unknown"}


def test_fixture_batches_are_deterministic_and_labelled_by_the_teacher() -> None:
    teacher = FixtureTeacher(VOCAB)
    a = list(FixtureBatches(teacher, batch_size=6, seq_len=10, num_batches=3, seed=5))
    b = list(FixtureBatches(teacher, batch_size=6, seq_len=10, num_batches=3, seed=5))
    assert len(a) == 3
    for (ids_a, lab_a), (ids_b, lab_b) in zip(a, b, strict=True):
        np.testing.assert_array_equal(ids_a, ids_b)
        np.testing.assert_array_equal(lab_a, lab_b)
    ids, labels = np.concatenate([x for x, _ in a]), np.concatenate([y for _, y in a])
    assert ids.shape == (18, 10)
    ignored = labels == IGNORE_INDEX
    assert 0 < ignored.sum() < ignored.size
    np.testing.assert_array_equal(labels[~ignored], teacher.preferred_tokens[ids[~ignored]])


# ---------------------------------------------------------------------------------------------- progress


def _progress_output(log_every: int, **config_fields) -> list[str]:
    stream = io.StringIO()
    make([ProgressCallback(log_every, stream)], **config_fields)[0].run()
    return stream.getvalue().splitlines()


STEP = re.compile(r"^  Step (\d+)/(\d+): loss: \d+\.\d{4}$")
EPOCH = re.compile(r"^Epoch (\d+)/(\d+): loss: \d+\.\d{4} \(\d+\.\ds\)$")


@pytest.mark.parametrize(("log_every", "steps"), [(0, []), (1, list(range(1, 7))), (4, [4]), (3, [3, 6])])
def test_progress_lines(log_every: int, steps: list[int]) -> None:
    lines = _progress_output(log_every, epochs=2, steps_per_epoch=3)
    step_lines = [STEP.match(line) for line in lines if line.startswith("  Step")]
    epoch_lines = [EPOCH.match(line) for line in lines if line.startswith("Epoch")]
    assert len(step_lines) + len(epoch_lines) == len(lines)
    assert all(step_lines) and all(epoch_lines)
    assert [int(m.group(1)) for m in step_lines] == steps
    assert {int(m.group(2)) for m in step_lines} <= {6}
    assert [(m.group(1), m.group(2)) for m in epoch_lines] == [("1", "2"), ("2", "2")]


def test_progress_epoch_loss_is_the_mean_of_the_epoch() -> None:
    stream, rec = io.StringIO(), Recorder()
    make([rec, ProgressCallback(0, stream)], epochs=1, steps_per_epoch=4)[0].run()
    expected = np.mean([c.loss for c in rec.steps])
    assert stream.getvalue().startswith(f"Epoch 1/1: loss: {expected:.4f} (")


def test_progress_checks_the_interval_before_formatting() -> None:
    class Untouchable:
        global_step = 7

        @property
        def loss(self) -> float:
            raise AssertionError("formatted a step that is not logged")

    ProgressCallback(5, io.StringIO()).on_step_end(Untouchable())  # type: ignore[arg-type]
    ProgressCallback(0, io.StringIO()).on_step_end(Untouchable())  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-1, 2.0, "10", True])
def test_progress_refuses_a_bad_interval(bad: object) -> None:
    with pytest.raises(ValueError, match="log_every must be an integer >= 0"):
        ProgressCallback(bad)  # type: ignore[arg-type]
