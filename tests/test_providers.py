"""Tests of the teacher/student provider protocols and the fixture models (reference/providers.py)."""

from __future__ import annotations

import numpy as np
import pytest

from reference.providers import FixtureStudent, FixtureTeacher, StudentProvider, TeacherProvider


def test_fixtures_satisfy_the_protocols() -> None:
    assert isinstance(FixtureTeacher(), TeacherProvider)
    assert isinstance(FixtureStudent(), StudentProvider)
    assert isinstance(FixtureStudent(), TeacherProvider)  # a student can also serve as a teacher


def test_teacher_is_deterministic_under_its_seed() -> None:
    ids = np.arange(12).reshape(3, 4)
    a = FixtureTeacher(16, seed=3).logits_for_batch(ids)
    b = FixtureTeacher(16, seed=3).logits_for_batch(ids)
    c = FixtureTeacher(16, seed=4).logits_for_batch(ids)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_teacher_logits_follow_the_input_token_and_prefer_one_token_per_context() -> None:
    teacher = FixtureTeacher(10, context_size=6, seed=0, sharpness=5.0)
    ids = np.array([[0, 5, 0], [2, 2, 3]])
    logits = teacher.logits_for_batch(ids)
    assert logits.shape == (2, 3, 10)
    assert logits.dtype == np.float64
    np.testing.assert_array_equal(logits[0, 0], logits[0, 2])  # same context, same row
    np.testing.assert_array_equal(logits.argmax(-1), teacher.preferred_tokens[ids])
    rows = teacher.logits_for_batch(np.arange(6)[None, :])[0]
    top2 = np.sort(rows, axis=-1)[:, -2:]
    assert np.all(top2[:, 1] - top2[:, 0] > 0.5), "each context has a clearly preferred token"


def test_student_is_deterministic_small_and_different_from_the_teacher() -> None:
    ids = np.arange(8).reshape(2, 4)
    a = FixtureStudent(8, seed=1).logits_for_batch(ids)
    np.testing.assert_array_equal(a, FixtureStudent(8, seed=1).logits_for_batch(ids))
    assert not np.array_equal(a, FixtureStudent(8, seed=2).logits_for_batch(ids))
    assert np.abs(a).max() < 0.1
    assert not np.allclose(a, FixtureTeacher(8, seed=1).logits_for_batch(ids))


@pytest.mark.parametrize(
    ("ids", "fragment"),
    [
        (np.array([[0.0, 1.0]]), "integers"),
        (np.array([0, 1]), "shape [batch, seq]"),
        (np.array([[0, 8]]), "[0, 8)"),
        (np.array([[-1, 0]]), "[0, 8)"),
    ],
)
def test_bad_input_ids_are_a_sentence(ids: np.ndarray, fragment: str) -> None:
    for model in (FixtureTeacher(8), FixtureStudent(8)):
        with pytest.raises(ValueError) as info:
            model.logits_for_batch(ids)
        assert fragment in str(info.value)


def test_every_batch_element_gets_its_own_update() -> None:
    student = FixtureStudent(6, context_size=8, learning_rate=0.5)
    before = student.table
    ids = np.array([[0, 1], [2, 3], [4, 5]])  # three elements, disjoint contexts
    grad = np.random.default_rng(0).normal(size=(3, 2, 6))
    student.apply_kd_gradient(ids, grad)
    after = student.table
    for b in range(3):
        for s in range(2):
            np.testing.assert_allclose(after[ids[b, s]], before[ids[b, s]] - 0.5 * grad[b, s])
    np.testing.assert_array_equal(after[6:], before[6:])  # unused contexts untouched


def test_repeated_contexts_accumulate() -> None:
    student = FixtureStudent(4, learning_rate=2.0)
    before = student.table
    ids = np.array([[1, 1], [1, 2]])
    grad = np.zeros((2, 2, 4))
    grad[0, 0, 0] = 1.0
    grad[0, 1, 0] = 1.0
    grad[1, 0, 0] = 1.0
    grad[1, 1, 3] = 1.0
    student.apply_kd_gradient(ids, grad)
    delta = student.table - before
    np.testing.assert_allclose(delta[1], [-6.0, 0, 0, 0])
    np.testing.assert_allclose(delta[2], [0, 0, 0, -2.0])


def test_gradient_shape_and_values_are_checked() -> None:
    student = FixtureStudent(4)
    with pytest.raises(ValueError, match=r"gradient must have shape \(1, 2, 4\)"):
        student.apply_kd_gradient(np.array([[0, 1]]), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        student.apply_kd_gradient(np.array([[0, 1]]), np.full((1, 2, 4), np.nan))
    before = student.table
    student.apply_kd_gradient(np.zeros((0, 3), dtype=np.int64), np.zeros((0, 3, 4)))  # empty batch
    np.testing.assert_array_equal(student.table, before)


def test_save_and_load_round_trip(tmp_path) -> None:
    student = FixtureStudent(5, context_size=7, seed=9, learning_rate=0.25)
    student.apply_kd_gradient(np.array([[1, 2]]), np.ones((1, 2, 5)))
    path = tmp_path / "model.bin"
    student.save(path)
    assert path.exists() and not (tmp_path / "model.bin.npz").exists()  # no suffix added
    loaded = FixtureStudent.load(path)
    np.testing.assert_array_equal(loaded.table, student.table)
    assert loaded.learning_rate == 0.25
    assert (loaded.vocab_size, loaded.context_size) == (5, 7)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf")])
def test_bad_learning_rate_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="learning_rate"):
        FixtureStudent(4, learning_rate=bad)


@pytest.mark.parametrize("bad", [0, -3, True, 2.5])
def test_bad_sizes_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        FixtureTeacher(bad)  # type: ignore[arg-type]
