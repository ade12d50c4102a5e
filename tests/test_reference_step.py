"""Tests of :func:`reference.step.kd_step`: one KD step from :mod:`reference.kd` and logits providers."""

from __future__ import annotations

import numpy as np
import pytest

from reference.kd import kd_logit_gradient, kd_loss
from reference.step import kd_step


class TableModel:
    """A tiny local provider: ``logits[..., :] = table[input_ids[...]]`` (a bigram-style lookup)."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = np.asarray(table, dtype=np.float64)
        self.vocab_size = self.table.shape[1]
        self.calls = 0

    def logits_for_batch(self, input_ids):
        self.calls += 1
        return self.table[np.asarray(input_ids)]


RNG = np.random.default_rng(7)
CONTEXTS, VOCAB = 6, 5
TEACHER = TableModel(RNG.normal(0.0, 2.0, size=(CONTEXTS, VOCAB)))
STUDENT_TABLE = RNG.normal(0.0, 1.0, size=(CONTEXTS, VOCAB))


def student_callable(input_ids):
    return STUDENT_TABLE[np.asarray(input_ids)]


@pytest.mark.parametrize(
    "student", [student_callable, TableModel(STUDENT_TABLE)], ids=["callable", "provider"]
)
@pytest.mark.parametrize("shape", [(4,), (2, 3)])
@pytest.mark.parametrize(("temperature", "alpha"), [(1.0, 0.5), (2.0, 0.0), (4.0, 1.0)])
def test_kd_step_equals_kd_loss_and_gradient(student, shape, temperature, alpha):
    input_ids = np.random.default_rng(1).integers(0, CONTEXTS, size=shape)
    labels = np.random.default_rng(2).integers(0, VOCAB, size=shape)
    labels.flat[0] = -100
    loss, gradient = kd_step(
        TEACHER, input_ids, labels, temperature=temperature, alpha=alpha, student_logits=student
    )
    s, t = STUDENT_TABLE[input_ids], TEACHER.table[input_ids]
    kw = {"temperature": temperature, "alpha": alpha, "reduction": "mean"}
    assert isinstance(loss, float)
    assert loss == float(kd_loss(s, t, labels, **kw))
    np.testing.assert_array_equal(gradient, kd_logit_gradient(s, t, labels, **kw))
    assert gradient.shape == (*shape, VOCAB) and gradient.dtype == np.float64


def test_kd_step_accepts_lists_and_custom_ignore_index():
    loss, gradient = kd_step(
        TEACHER,
        [0, 1, 2],
        [1, -1, 3],
        temperature=2.0,
        alpha=0.5,
        student_logits=student_callable,
        ignore_index=-1,
    )
    s, t = STUDENT_TABLE[[0, 1, 2]], TEACHER.table[[0, 1, 2]]
    expected = kd_loss(s, t, [1, -1, 3], temperature=2.0, alpha=0.5, ignore_index=-1)
    assert loss == pytest.approx(float(expected), rel=1e-15)
    assert np.all(gradient[1] == 0.0)


@pytest.mark.parametrize(
    ("input_ids", "labels", "shape"),
    [([], [], (0, VOCAB)), (np.zeros((0, 3), dtype=int), np.zeros((0, 3), dtype=int), (0, 3, VOCAB))],
)
def test_empty_batch_returns_zero_loss_and_empty_gradient(input_ids, labels, shape):
    teacher = TableModel(TEACHER.table)
    student = TableModel(STUDENT_TABLE)
    loss, gradient = kd_step(teacher, input_ids, labels, temperature=2.0, alpha=0.5, student_logits=student)
    assert loss == 0.0 and isinstance(loss, float)
    assert gradient.shape == shape and gradient.dtype == np.float64
    assert teacher.calls == 0 and student.calls == 0


def test_vocab_mismatch_names_both_sizes_from_declared_vocab():
    # one model family pads its vocabulary differently in config and checkpoint: 152064 vs 151936
    teacher = TableModel(np.zeros((2, 152064)))
    student = TableModel(np.zeros((2, 151936)))
    with pytest.raises(
        ValueError, match=r"teacher vocab size 152064 != student vocab size 151936"
    ) as excinfo:
        kd_step(teacher, [0, 1], [0, 1], temperature=1.0, alpha=0.5, student_logits=student)
    assert "config-versus-checkpoint vocab drift?" in str(excinfo.value)
    assert teacher.calls == 0 and student.calls == 0  # refused before any model runs
    # the same for an empty batch
    with pytest.raises(ValueError, match="teacher vocab size 152064 != student vocab size 151936"):
        kd_step(teacher, [], [], temperature=1.0, alpha=0.5, student_logits=student)


def test_vocab_mismatch_names_both_sizes_from_logits_of_a_callable_student():
    teacher = TableModel(np.zeros((3, 8)))

    def student(input_ids):
        return np.zeros((len(input_ids), 7))

    with pytest.raises(ValueError, match=r"teacher vocab size 8 != student vocab size 7"):
        kd_step(teacher, [0, 1], [0, 1], temperature=1.0, alpha=0.5, student_logits=student)


def test_teacher_logits_disagreeing_with_its_vocab_size_is_an_error():
    teacher = TableModel(np.zeros((3, 8)))
    teacher.vocab_size = 9
    with pytest.raises(ValueError, match=r"shape \(2, 8\).*declared vocab size 9"):
        kd_step(
            teacher, [0, 1], [0, 1], temperature=1.0, alpha=0.5, student_logits=lambda ids: np.zeros((2, 9))
        )


def test_bad_arguments_are_value_errors():
    with pytest.raises(ValueError, match="student_logits must be a callable"):
        kd_step(TEACHER, [0], [0], temperature=1.0, alpha=0.5, student_logits=np.zeros((1, VOCAB)))
    with pytest.raises(ValueError, match="teacher must have a positive integer vocab_size"):
        kd_step(object(), [0], [0], temperature=1.0, alpha=0.5, student_logits=student_callable)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0, got 0"):
        kd_step(TEACHER, [], [], temperature=0, alpha=0.5, student_logits=student_callable)
    with pytest.raises(ValueError, match="alpha"):
        kd_step(TEACHER, [0], [0], temperature=1.0, alpha=2.0, student_logits=student_callable)
    with pytest.raises(ValueError, match=r"label 9 at position \(1,\)"):
        kd_step(TEACHER, [0, 1], [0, 9], temperature=1.0, alpha=0.5, student_logits=student_callable)
    with pytest.raises(ValueError, match=r"labels shape \(3,\)"):
        kd_step(TEACHER, [0, 1], [0, 1, 2], temperature=1.0, alpha=0.5, student_logits=student_callable)
    with pytest.raises(ValueError, match=r"labels shape \(1,\)"):
        kd_step(TEACHER, [], [0], temperature=1.0, alpha=0.5, student_logits=student_callable)
