"""Tests of the float64 KD oracle in :mod:`reference.kd` and its input checks in :mod:`reference.checks`.

The oracle is checked three independent ways: against values computed by hand in this file, against central
finite differences of its own loss, and against an autograd loss written here in plain torch ops.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st

from reference import checks
from reference.kd import (
    cross_entropy,
    kd_logit_gradient,
    kd_loss,
    kl_divergence,
    log_softmax,
    softmax,
)

LN2, LN3 = math.log(2.0), math.log(3.0)

# A 2-row x 3-vocab case chosen so that every distribution below is a simple fraction.
#   student row 0 = [0, 0, 0]           softmax = [1/3, 1/3, 1/3]  (any T)
#   student row 1 = [0, 2 ln 2, 0]      softmax = [1, 4, 1] / 6;   softmax(s/2) = [1/4, 1/2, 1/4]
#   teacher row 0 = [2 ln 2, 0, 0]      softmax(t/2) = [1/2, 1/4, 1/4]
#   teacher row 1 = [0, 0, 0]           softmax(t/2) = [1/3, 1/3, 1/3]
STUDENT = [[0.0, 0.0, 0.0], [0.0, 2 * LN2, 0.0]]
TEACHER = [[2 * LN2, 0.0, 0.0], [0.0, 0.0, 0.0]]
LABELS = [0, 1]
T = 2.0
# CE row 0 = -log(1/3) = ln 3;  CE row 1 = -log(4/6) = ln(3/2)
CE_ROWS = [LN3, math.log(1.5)]
# KL row 0 = 1/2 ln((1/2)/(1/3)) + 2 * 1/4 ln((1/4)/(1/3)) = 1/2 ln(3/2) + 1/2 ln(3/4)
# KL row 1 = 1/3 [ln((1/3)/(1/4)) + ln((1/3)/(1/2)) + ln((1/3)/(1/4))] = 1/3 [2 ln(4/3) + ln(2/3)]
KL_ROWS = [0.5 * math.log(1.5) + 0.5 * math.log(0.75), (2 * math.log(4 / 3) + math.log(2 / 3)) / 3]


def strict_float():
    """Turn overflow, invalid (NaN-producing) and divide-by-zero operations into errors; underflow is fine."""
    return np.errstate(over="raise", invalid="raise", divide="raise")


def kd_rows_by_hand(alpha: float) -> list[float]:
    return [alpha * ce + (1 - alpha) * T * T * kl for ce, kl in zip(CE_ROWS, KL_ROWS, strict=True)]


# ------------------------------------------------------------------------------------------------------------
# Hand-computed values
# ------------------------------------------------------------------------------------------------------------


def test_softmax_and_log_softmax_by_hand():
    np.testing.assert_allclose(softmax([0.0, LN2, 0.0]), [0.25, 0.5, 0.25], rtol=0, atol=1e-15)
    np.testing.assert_allclose(softmax(STUDENT[1], temperature=2.0), [0.25, 0.5, 0.25], atol=1e-15)
    np.testing.assert_allclose(softmax(STUDENT), [[1 / 3] * 3, [1 / 6, 4 / 6, 1 / 6]], atol=1e-15)
    np.testing.assert_allclose(log_softmax([0.0, LN2, 0.0]), np.log([0.25, 0.5, 0.25]), atol=1e-15)
    # a masked (-inf) entry has probability exactly 0 and log-probability -inf
    p = softmax([[0.0, -np.inf, LN3]])
    assert p[0, 1] == 0.0
    np.testing.assert_allclose(p, [[0.25, 0.0, 0.75]], atol=1e-15)
    assert log_softmax([[0.0, -np.inf]])[0, 1] == -np.inf
    assert log_softmax([[0.0, -np.inf]])[0, 0] == 0.0


def test_cross_entropy_by_hand():
    np.testing.assert_allclose(cross_entropy(STUDENT, LABELS, reduction="none"), CE_ROWS, atol=1e-15)
    assert cross_entropy(STUDENT, LABELS, reduction="sum") == pytest.approx(sum(CE_ROWS), abs=1e-15)
    assert cross_entropy(STUDENT, LABELS) == pytest.approx(sum(CE_ROWS) / 2, abs=1e-15)
    assert cross_entropy(STUDENT, [-100, 1]) == pytest.approx(CE_ROWS[1], abs=1e-15)


def test_kl_divergence_by_hand():
    kl = kl_divergence(STUDENT, TEACHER, temperature=T)
    assert kl.shape == (2,)
    np.testing.assert_allclose(kl, KL_ROWS, rtol=0, atol=1e-15)
    # KL(P || P) = 0 and the direction matters: KL(p_t || q_s) != KL(q_s || p_t) here
    assert np.all(kl_divergence(TEACHER, TEACHER, temperature=T) == 0.0)
    assert abs(kl_divergence(TEACHER, STUDENT, temperature=T)[0] - KL_ROWS[0]) > 1e-3


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 1.0])
def test_kd_loss_by_hand(alpha):
    rows = kd_rows_by_hand(alpha)
    got = kd_loss(STUDENT, TEACHER, LABELS, temperature=T, alpha=alpha, reduction="none")
    np.testing.assert_allclose(got, rows, rtol=0, atol=1e-15)
    got_sum = kd_loss(STUDENT, TEACHER, LABELS, temperature=T, alpha=alpha, reduction="sum")
    assert float(got_sum) == pytest.approx(sum(rows), abs=1e-15)
    assert float(kd_loss(STUDENT, TEACHER, LABELS, temperature=T, alpha=alpha)) == pytest.approx(
        sum(rows) / 2, abs=1e-15
    )
    # an ignored row contributes nothing and is not counted by mean
    got_ignored = kd_loss(STUDENT, TEACHER, [-100, 1], temperature=T, alpha=alpha)
    assert float(got_ignored) == pytest.approx(rows[1], abs=1e-15)


def test_kd_logit_gradient_by_hand():
    alpha = 0.5
    # row 0: alpha (q1 - e_0) + (1 - alpha) T (qT - pT)
    #      = 0.5 [1/3 - 1, 1/3, 1/3] + 0.5 * 2 [1/3 - 1/2, 1/3 - 1/4, 1/3 - 1/4] = [-1/2, 1/4, 1/4]
    # row 1: 0.5 [1/6, 4/6 - 1, 1/6] + 1 * [1/4 - 1/3, 1/2 - 1/3, 1/4 - 1/3] = [0, 0, 0]
    row0, row1 = [-0.5, 0.25, 0.25], [0.0, 0.0, 0.0]
    grad = kd_logit_gradient(STUDENT, TEACHER, LABELS, temperature=T, alpha=alpha, reduction="none")
    np.testing.assert_allclose(grad, [row0, row1], rtol=0, atol=1e-15)
    grad_mean = kd_logit_gradient(STUDENT, TEACHER, LABELS, temperature=T, alpha=alpha)
    np.testing.assert_allclose(grad_mean, [np.divide(row0, 2), row1], rtol=0, atol=1e-15)
    grad_ignored = kd_logit_gradient(STUDENT, TEACHER, [0, -100], temperature=T, alpha=alpha)
    np.testing.assert_allclose(grad_ignored, [row0, [0.0, 0.0, 0.0]], rtol=0, atol=1e-15)


def test_scalar_results_are_float64_and_none_has_labels_shape():
    loss = kd_loss(STUDENT, TEACHER, LABELS, temperature=T, alpha=0.5)
    assert isinstance(loss, np.floating) and np.asarray(loss).dtype == np.float64 and np.ndim(loss) == 0
    assert isinstance(float(loss), float)
    assert isinstance(cross_entropy(STUDENT, LABELS, reduction="sum"), np.float64)
    s3 = np.zeros((2, 3, 4))
    none = kd_loss(s3, s3, np.zeros((2, 3), dtype=np.int64), temperature=1.0, alpha=0.5, reduction="none")
    assert isinstance(none, np.ndarray) and none.shape == (2, 3) and none.dtype == np.float64
    grad = kd_logit_gradient(s3, s3, np.zeros((2, 3), dtype=int), temperature=1.0, alpha=0.5)
    assert grad.shape == (2, 3, 4) and grad.dtype == np.float64


def test_one_dimensional_logits_with_scalar_label():
    s, t = np.array([1.0, 2.0, 0.5]), np.array([0.0, 1.0, 3.0])
    row = kd_loss(s, t, np.int64(1), temperature=2.0, alpha=0.3, reduction="none")
    assert row.shape == ()
    expected = kd_loss(s[None], t[None], [1], temperature=2.0, alpha=0.3, reduction="none")[0]
    assert float(row) == pytest.approx(expected, abs=1e-15)
    grad = kd_logit_gradient(s, t, 1, temperature=2.0, alpha=0.3)
    assert grad.shape == (3,)
    assert kl_divergence(s, t).shape == ()


def test_array_likes_and_dtypes_are_converted_to_float64():
    s32 = np.asarray(STUDENT, dtype=np.float32)
    t16 = np.asarray(TEACHER, dtype=np.float16)
    loss = kd_loss(s32, t16, np.asarray(LABELS, dtype=np.int32), temperature=T, alpha=0.5)
    expected = kd_loss(s32.astype(np.float64), t16.astype(np.float64), LABELS, temperature=T, alpha=0.5)
    assert float(loss) == float(expected)
    assert kd_logit_gradient(s32, t16, LABELS, temperature=T, alpha=0.5).dtype == np.float64
    # integer logits and unsigned labels are fine
    assert float(kd_loss([[1, 2]], [[2, 1]], np.asarray([1], dtype=np.uint8), temperature=1, alpha=0)) > 0


# ------------------------------------------------------------------------------------------------------------
# Reductions, empty batches, ignored rows, extreme logits
# ------------------------------------------------------------------------------------------------------------


def random_case(rng, shape, vocab, ignore_fraction=0.3, scale=3.0, ignore_index=-100):
    s = rng.normal(0.0, scale, size=(*shape, vocab))
    t = rng.normal(0.0, scale, size=(*shape, vocab))
    y = rng.integers(0, vocab, size=shape)
    y = np.where(rng.random(shape) < ignore_fraction, ignore_index, y)
    return s, t, y


@pytest.mark.parametrize("shape", [(7,), (3, 4)])
@pytest.mark.parametrize("alpha", [0.0, 0.4, 1.0])
def test_reductions_relation(shape, alpha):
    s, t, y = random_case(np.random.default_rng(1), shape, 5)
    y.flat[0] = -100  # at least one ignored row
    y.flat[1] = 2  # at least one valid row
    count = int((y != -100).sum())
    kw = {"temperature": 1.5, "alpha": alpha}
    none = kd_loss(s, t, y, reduction="none", **kw)
    total = kd_loss(s, t, y, reduction="sum", **kw)
    mean = kd_loss(s, t, y, reduction="mean", **kw)
    assert np.all(none[y == -100] == 0.0)
    assert float(mean) * count == pytest.approx(float(total), rel=1e-12)
    assert float(total) == pytest.approx(float(none.sum()), rel=1e-12)
    g_none = kd_logit_gradient(s, t, y, reduction="none", **kw)
    g_sum = kd_logit_gradient(s, t, y, reduction="sum", **kw)
    g_mean = kd_logit_gradient(s, t, y, reduction="mean", **kw)
    np.testing.assert_array_equal(g_none, g_sum)
    np.testing.assert_allclose(g_mean * count, g_sum, rtol=1e-12, atol=1e-15)
    assert np.all(g_none[y == -100] == 0.0)


@pytest.mark.parametrize("shape", [(0,), (2, 0), (0, 3)])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_empty_batch(shape, reduction):
    s = np.zeros((*shape, 4))
    y = np.zeros(shape, dtype=np.int64)
    loss = kd_loss(s, s, y, temperature=2.0, alpha=0.5, reduction=reduction)
    grad = kd_logit_gradient(s, s, y, temperature=2.0, alpha=0.5, reduction=reduction)
    assert grad.shape == s.shape and grad.dtype == np.float64
    if reduction == "none":
        assert loss.shape == shape
    else:
        assert float(loss) == 0.0
    assert kl_divergence(s, s).shape == shape
    assert cross_entropy(s, y, reduction="mean") == 0.0


def test_empty_python_list_labels_are_integer():
    assert float(kd_loss(np.zeros((0, 3)), np.zeros((0, 3)), [], temperature=1.0, alpha=0.5)) == 0.0


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_all_ignored_gives_zero_not_nan(reduction):
    s, t, _ = random_case(np.random.default_rng(2), (2, 3), 4)
    y = np.full((2, 3), -100)
    with strict_float():
        loss = kd_loss(s, t, y, temperature=3.0, alpha=0.5, reduction=reduction)
        grad = kd_logit_gradient(s, t, y, temperature=3.0, alpha=0.5, reduction=reduction)
        ce = cross_entropy(s, y, reduction=reduction)
    assert np.all(np.asarray(loss) == 0.0) and np.all(np.asarray(ce) == 0.0)
    assert np.all(grad == 0.0)


def test_custom_ignore_index():
    s, t, y = random_case(np.random.default_rng(3), (6,), 4, ignore_index=-1)
    kw = {"temperature": 2.0, "alpha": 0.5}
    ref = kd_loss(s, t, np.where(y == -1, -100, y), **kw)
    assert float(kd_loss(s, t, y, ignore_index=-1, **kw)) == pytest.approx(float(ref), rel=1e-15)
    # an in-range ignore_index ignores that class
    y0 = np.array([0, 1, 2, 3, 0, 1])
    none = kd_loss(s, t, y0, ignore_index=0, reduction="none", **kw)
    assert np.all(none[y0 == 0] == 0.0) and np.all(none[y0 != 0] > 0.0)


def test_large_magnitude_logits_are_finite():
    rng = np.random.default_rng(4)
    s = rng.choice([-1e4, 1e4], size=(3, 5, 6)) + rng.normal(size=(3, 5, 6))
    t = rng.choice([-1e4, 1e4], size=(3, 5, 6)) + rng.normal(size=(3, 5, 6))
    y = rng.integers(0, 6, size=(3, 5))
    with strict_float():
        for temperature in (0.5, 1.0, 4.0):
            for reduction in ("none", "sum", "mean"):
                loss = kd_loss(s, t, y, temperature=temperature, alpha=0.5, reduction=reduction)
                grad = kd_logit_gradient(s, t, y, temperature=temperature, alpha=0.5, reduction=reduction)
                assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad))
            assert np.all(np.isfinite(softmax(s, temperature))) and np.all(np.isfinite(log_softmax(s)))
    # equal huge logits: exact probabilities, no overflow
    np.testing.assert_array_equal(softmax([[1e4, 1e4, -1e4]]), [[0.5, 0.5, 0.0]])


def test_negative_infinity_logits_are_masked_entries():
    ninf = -np.inf
    s = np.array([[0.0, ninf, 1.0], [ninf, 2.0, ninf]])
    t = np.array([[1.0, ninf, 0.0], [ninf, 0.5, ninf]])
    y = np.array([2, 1])
    with strict_float(), warnings.catch_warnings():
        warnings.simplefilter("error")
        for reduction in ("none", "sum", "mean"):
            loss = kd_loss(s, t, y, temperature=2.0, alpha=0.5, reduction=reduction)
            grad = kd_logit_gradient(s, t, y, temperature=2.0, alpha=0.5, reduction=reduction)
            assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad))
        kl = kl_divergence(s, t, temperature=2.0)
    assert kl[1] == 0.0  # a single admissible token: both distributions are one-hot on it
    # masked entries have zero gradient when both models mask them
    assert grad[0, 1] == 0.0 and grad[1, 0] == 0.0 and grad[1, 2] == 0.0
    # the finite part equals the same computation on the vocabulary without the masked column
    loss_row0 = kd_loss(s[:1, [0, 2]], t[:1, [0, 2]], [1], temperature=2.0, alpha=0.5)
    assert float(kd_loss(s[:1], t[:1], y[:1], temperature=2.0, alpha=0.5)) == pytest.approx(
        float(loss_row0), rel=1e-15
    )


def test_teacher_zero_probability_terms_contribute_exactly_zero():
    # teacher masks token 0 where the student also masks it: 0 * log(0 / 0) must be 0, not NaN
    s = [[-np.inf, 0.0, 1.0]]
    t = [[-np.inf, 1.0, 0.0]]
    kl = kl_divergence(s, t)
    expected = kl_divergence([[0.0, 1.0]], [[1.0, 0.0]])
    assert np.isfinite(kl[0]) and kl[0] == pytest.approx(expected[0], rel=1e-15)


def test_student_masking_teacher_mass_gives_inf_kl_and_alpha_one_ignores_it():
    s = [[-np.inf, 0.0, 1.0]]
    t = [[0.0, 0.0, 0.0]]
    assert kl_divergence(s, t)[0] == np.inf
    assert kd_loss(s, t, [1], temperature=1.0, alpha=0.5) == np.inf
    # alpha = 1 is pure CE: the infinite KL term contributes exactly 0
    pure = kd_loss(s, t, [1], temperature=1.0, alpha=1.0)
    assert float(pure) == float(cross_entropy(s, [1]))
    assert np.isfinite(pure)
    # and alpha = 0 ignores an infinite CE the same way
    assert kd_loss([[-np.inf, 0.0]], [[-np.inf, 0.0]], [0], temperature=1.0, alpha=0.0) == 0.0


def test_label_on_masked_student_logit_is_infinite_cross_entropy():
    with strict_float():
        assert cross_entropy([[-np.inf, 0.0]], [0]) == np.inf
        assert kd_loss([[-np.inf, 0.0]], [[0.0, 0.0]], [0], temperature=1.0, alpha=1.0) == np.inf


# ------------------------------------------------------------------------------------------------------------
# Bad inputs: one ValueError sentence per class
# ------------------------------------------------------------------------------------------------------------

GOOD_S = np.zeros((2, 3))
GOOD_Y = np.array([0, 1])


def kd(student=GOOD_S, teacher=GOOD_S, labels=GOOD_Y, **kw):
    kw = {"temperature": 1.0, "alpha": 0.5, **kw}
    return kd_loss(student, teacher, labels, **kw)


def kd_grad(student=GOOD_S, teacher=GOOD_S, labels=GOOD_Y, **kw):
    kw = {"temperature": 1.0, "alpha": 0.5, **kw}
    return kd_logit_gradient(student, teacher, labels, **kw)


@pytest.mark.parametrize("fn", [kd, kd_grad])
@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        ({"teacher": np.zeros((3, 3))}, ["student_logits shape (2, 3)", "teacher_logits shape (3, 3)"]),
        (
            {"teacher": np.zeros((2, 4))},
            ["teacher vocab size 4 != student vocab size 3", "config-versus-checkpoint", "(2, 3)", "(2, 4)"],
        ),
        ({"labels": np.array([0, 1, 2])}, ["labels shape (3,)", "(2,)", "logits shape (2, 3)"]),
        ({"labels": np.array([[0, 1]])}, ["labels shape (1, 2)", "(2,)"]),
        (
            {"labels": np.array([0, 3])},
            ["label 3 at position (1,)", "out of range [0, 3)", "vocab size 3", "ignore_index -100"],
        ),
        ({"labels": np.array([-1, 0])}, ["label -1 at position (0,)", "ignore_index -100"]),
        (
            {"labels": np.array([-100, 0]), "ignore_index": -1},
            ["label -100 at position (0,)", "ignore_index -1"],
        ),
        ({"labels": np.array([0.0, 1.0])}, ["labels must be an integer array", "float64"]),
        ({"labels": [0.0, 1.0]}, ["integer array", "float64"]),
        ({"labels": np.array([True, False])}, ["integer array", "bool"]),
        ({"temperature": 0.0}, ["temperature", "> 0", "0.0"]),
        ({"temperature": -2.0}, ["temperature", "-2.0"]),
        ({"temperature": float("nan")}, ["temperature", "nan"]),
        ({"temperature": float("inf")}, ["temperature", "inf"]),
        ({"temperature": "2"}, ["temperature", "'2'"]),
        ({"alpha": 1.5}, ["alpha", "[0, 1]", "1.5"]),
        ({"alpha": -0.1}, ["alpha", "-0.1"]),
        ({"alpha": float("nan")}, ["alpha", "nan"]),
        ({"alpha": float("inf")}, ["alpha", "inf"]),
        ({"reduction": "avg"}, ["unknown reduction 'avg'", "'none', 'sum', 'mean'"]),
        ({"reduction": None}, ["unknown reduction None"]),
        ({"ignore_index": 1.5}, ["ignore_index must be an integer", "1.5"]),
        (
            {"student": np.array([[0.0, np.nan, 0.0], [0.0, 0.0, 0.0]])},
            ["student_logits contains NaN", "(0, 1)"],
        ),
        (
            {"teacher": np.array([[0.0, 0.0, 0.0], [0.0, 0.0, np.nan]])},
            ["teacher_logits contains NaN", "(1, 2)"],
        ),
        (
            {"student": np.array([[0.0, 0.0, 0.0], [np.inf, 0.0, 0.0]])},
            ["student_logits contains +inf", "(1, 0)"],
        ),
        (
            {"teacher": np.array([[np.inf, 0.0, 0.0], [0.0, 0.0, 0.0]])},
            ["teacher_logits contains +inf", "(0, 0)"],
        ),
        (
            {"student": np.array([[0.0, 0.0, 0.0], [-np.inf, -np.inf, -np.inf]])},
            ["student_logits row at position (1,)", "no finite logit"],
        ),
        (
            {"teacher": np.full((2, 3), -np.inf)},
            ["teacher_logits row at position (0,)", "no finite logit"],
        ),
        ({"student": np.float64(1.0), "teacher": np.float64(1.0), "labels": 0}, ["at least 1 dimension"]),
        (
            {"student": np.zeros((2, 0)), "teacher": np.zeros((2, 0))},
            ["vocab size 0", "shape (2, 0)"],
        ),
        (
            {"student": np.array([[1j, 0, 0], [0, 0, 0]])},
            ["student_logits must be a real numeric", "complex"],
        ),
        ({"teacher": [[0, 0, 0], [0, 0]]}, ["teacher_logits could not be converted"]),
    ],
)
def test_bad_input_is_a_value_error_naming_the_values(fn, kwargs, fragments):
    with pytest.raises(ValueError) as excinfo:
        fn(**kwargs)
    message = str(excinfo.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_nan_is_reported_before_other_value_problems_and_first_position_wins():
    s = np.zeros((2, 2, 3))
    s[1, 0, 2] = np.nan
    s[1, 1, 0] = np.nan
    with pytest.raises(ValueError, match=r"student_logits contains NaN at position \(1, 0, 2\)"):
        kd_loss(s, np.zeros((2, 2, 3)), np.zeros((2, 2), dtype=int), temperature=1.0, alpha=0.5)


def test_single_function_inputs_are_checked():
    with pytest.raises(ValueError, match="logits contains NaN"):
        softmax([[0.0, np.nan]])
    with pytest.raises(ValueError, match="no finite logit"):
        log_softmax([[-np.inf, -np.inf]])
    with pytest.raises(ValueError, match="temperature"):
        softmax([0.0, 1.0], temperature=0)
    with pytest.raises(ValueError, match="at least 1 dimension"):
        softmax(1.0)
    with pytest.raises(ValueError, match=r"labels shape \(3,\)"):
        cross_entropy(GOOD_S, [0, 1, 2])
    with pytest.raises(ValueError, match="label 5 at position"):
        cross_entropy(GOOD_S, [0, 5])
    with pytest.raises(ValueError, match="teacher vocab size 4 != student vocab size 3"):
        kl_divergence(GOOD_S, np.zeros((2, 4)))
    with pytest.raises(ValueError, match="temperature"):
        kl_divergence(GOOD_S, GOOD_S, temperature=-1.0)


def test_checks_are_usable_without_arrays():
    assert checks.check_hyperparameters(2, 1, "sum") == (2.0, 1.0, "sum")
    assert checks.check_shapes((4, 5, 7), (4, 5, 7), (4, 5)) == 7
    assert checks.check_shapes((7,), (7,), ()) == 7
    checks.check_labels_dtype(np.int32)
    checks.check_labels_dtype(torch.int64)
    with pytest.raises(ValueError, match=r"torch\.float32"):
        checks.check_labels_dtype(torch.float32)
    with pytest.raises(ValueError, match="teacher vocab size 152064 != student vocab size 151936"):
        checks.check_shapes((2, 151936), (2, 152064), (2,))
    with pytest.raises(ValueError, match="temperature"):
        checks.check_hyperparameters(True, 0.5, "mean")
    with pytest.raises(ValueError, match="alpha"):
        checks.check_hyperparameters(1.0, None, "mean")
    # the message builders are the single source of the text the checks raise
    with pytest.raises(ValueError) as excinfo:
        checks.check_labels(np.array([[0, 9]]), 4, -100)
    assert str(excinfo.value) == checks.label_out_of_range_message(9, (0, 1), 4, -100)


# ------------------------------------------------------------------------------------------------------------
# Gradient against central finite differences of the loss itself
# ------------------------------------------------------------------------------------------------------------


def numerical_gradient(f, x, h=1e-6):
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[index] += h
        minus[index] -= h
        grad[index] = (f(plus) - f(minus)) / (2 * h)
    return grad


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize(
    ("temperature", "alpha"), [(1.0, 0.5), (2.0, 0.0), (0.5, 0.7), (4.0, 1.0), (3.0, 0.2)]
)
def test_gradient_matches_central_finite_differences(reduction, temperature, alpha):
    rng = np.random.default_rng(int(temperature * 10 + alpha * 100))
    s, t, y = random_case(rng, (2, 3), 5, ignore_fraction=0.25, scale=1.5)
    y[0, 0], y[1, 2] = -100, 4
    kw = {"temperature": temperature, "alpha": alpha, "reduction": reduction}

    def total_loss(x):  # for "none", sum the per-row losses: row i only depends on row i's logits
        return float(np.sum(kd_loss(x, t, y, **kw)))

    analytic = kd_logit_gradient(s, t, y, **kw)
    numeric = numerical_gradient(total_loss, s)
    np.testing.assert_allclose(analytic, numeric, rtol=0, atol=1e-7)


# ------------------------------------------------------------------------------------------------------------
# THE KEY CHECK: an independent float64 loss in plain torch ops, differentiated by autograd
# ------------------------------------------------------------------------------------------------------------


def torch_kd_loss(s, t, y, *, temperature, alpha, ignore_index, reduction):
    """The KD loss written with torch's own CE / KL / reductions (not with the reference's formulas)."""
    vocab = s.shape[-1]
    flat_s, flat_t, flat_y = s.reshape(-1, vocab), t.reshape(-1, vocab), y.reshape(-1)
    valid = flat_y != ignore_index
    count = int(valid.sum())
    log_q = F.log_softmax(flat_s / temperature, dim=-1)
    log_p = F.log_softmax(flat_t / temperature, dim=-1)
    kl_rows = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1) * valid
    if reduction == "none":
        ce_rows = F.cross_entropy(flat_s, flat_y, ignore_index=ignore_index, reduction="none")
        return (alpha * ce_rows + (1 - alpha) * temperature**2 * kl_rows).reshape(y.shape)
    if reduction == "sum":
        ce = F.cross_entropy(flat_s, flat_y, ignore_index=ignore_index, reduction="sum")
        return alpha * ce + (1 - alpha) * temperature**2 * kl_rows.sum()
    if count == 0:  # torch's mean CE is NaN with no valid rows; the convention says 0
        return (flat_s * 0.0).sum()
    ce = F.cross_entropy(flat_s, flat_y, ignore_index=ignore_index, reduction="mean")
    return alpha * ce + (1 - alpha) * temperature**2 * kl_rows.sum() / count


@settings(max_examples=60, deadline=None, derandomize=True)
@example(  # every row ignored, "mean": torch's own mean CE would be NaN; the convention gives 0
    seed=0,
    shape=(2, 3),
    vocab=4,
    temperature=2.0,
    alpha=0.5,
    reduction="mean",
    ignore_fraction=1.0,
    scale=2.0,
    ignore_index=-100,
)
@example(  # a one-token vocabulary: every probability is 1, loss and gradient are 0
    seed=1,
    shape=(3, 1, 4),
    vocab=1,
    temperature=0.5,
    alpha=0.3,
    reduction="sum",
    ignore_fraction=0.3,
    scale=20.0,
    ignore_index=-1,
)
@given(
    seed=st.integers(0, 2**32 - 1),
    shape=st.sampled_from([(1,), (6,), (2, 3), (3, 1, 4), (2, 2, 2)]),
    vocab=st.integers(1, 9),
    temperature=st.sampled_from([0.5, 1.0, 2.0, 4.0, 0.3, 7.5]),
    alpha=st.one_of(st.sampled_from([0.0, 1.0, 0.5]), st.floats(0.0, 1.0)),
    reduction=st.sampled_from(["none", "sum", "mean"]),
    ignore_fraction=st.sampled_from([0.0, 0.3, 1.0]),
    scale=st.sampled_from([0.1, 2.0, 20.0]),
    ignore_index=st.sampled_from([-100, -1]),
)
def test_matches_torch_autograd_float64(
    seed, shape, vocab, temperature, alpha, reduction, ignore_fraction, scale, ignore_index
):
    rng = np.random.default_rng(seed)
    s, t, y = random_case(rng, shape, vocab, ignore_fraction, scale, ignore_index)
    kw = {"temperature": temperature, "alpha": alpha, "ignore_index": ignore_index, "reduction": reduction}

    s_torch = torch.tensor(s, dtype=torch.float64, requires_grad=True)
    loss_torch = torch_kd_loss(s_torch, torch.tensor(t, dtype=torch.float64), torch.tensor(y), **kw)
    # for "none", row i's gradient is d loss_i / d s_i, which is the gradient of the sum over rows
    loss_torch.sum().backward()

    loss = kd_loss(s, t, y, **kw)
    grad = kd_logit_gradient(s, t, y, **kw)
    assert np.shape(loss) == tuple(loss_torch.shape)
    np.testing.assert_allclose(loss, loss_torch.detach().numpy(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(grad, s_torch.grad.numpy(), rtol=1e-9, atol=1e-9)
