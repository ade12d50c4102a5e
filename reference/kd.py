"""The float64 numpy oracle for the knowledge-distillation (KD) math.

Every backend is judged against these functions, so they are written to be read beside the equations: one
function per equation, each docstring naming the equation and its formula. Inputs are array-likes of any
real dtype; everything is computed in float64. Bad inputs raise ``ValueError`` with the messages of
:mod:`reference.checks`.

Notation. Logits have shape ``[..., V]`` (the last axis is the vocabulary); every other index addresses one
*row* ``i`` with label ``y_i`` (labels have shape ``[...]``). ``s`` are student logits, ``t`` teacher logits,
``T > 0`` the temperature, ``alpha`` in ``[0, 1]`` the weight of the hard-label term, ``e_y`` the one-hot
vector of ``y``. A row is *valid* when ``y_i != ignore_index`` (default -100).

Equations (the project's convention, DESIGN.md principle 5, Hinton's forward KL):

* ``softmax``:        ``softmax(z / T)_v = exp(z_v / T - m) / sum_u exp(z_u / T - m)``, ``m = max_u z_u / T``
* ``log_softmax``:    ``log_softmax(z / T)_v = z_v / T - m - log sum_u exp(z_u / T - m)``
* ``cross_entropy``:  ``CE_i = -log softmax(s_i)_{y_i}``                         (untempered)
* ``kl_divergence``:  ``KL_i = sum_v p_v (log p_v - log q_v)``, ``p = softmax(t_i/T)``, ``q = softmax(s_i/T)``
* ``kd_loss``:        ``L_i = alpha * CE_i + (1 - alpha) * T^2 * KL_i``
* ``kd_logit_gradient``: ``dL_i / ds_i = alpha * (softmax(s_i) - e_{y_i}) + (1 - alpha) * T * (q - p)``
* reductions:         ``none``: ``L_i`` (0 on ignored rows); ``sum``: ``sum_i L_i``;
  ``mean``: ``sum_i L_i / #valid rows`` (0 when no row is valid).

Edge conventions: ``-inf`` logits are masked vocabulary entries (probability 0) as long as each row keeps one
finite logit; ``+inf`` and NaN logits are errors. A KL term with ``p_v == 0`` contributes exactly 0. A loss
term whose weight is 0 (``alpha == 1`` for the KL term, ``alpha == 0`` for CE) contributes exactly 0, even
where the term itself is ``+inf``. A label pointing at a ``-inf`` student logit gives ``CE = +inf``: that is
the mathematics, not an error.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from reference.checks import (
    DEFAULT_IGNORE_INDEX,
    as_float64_logits,
    as_integer_labels,
    check_hyperparameters,
    check_ignore_index,
    check_labels,
    check_labels_shape,
    check_logits,
    check_reduction,
    check_shapes,
    check_temperature,
)
from reference.kd_family import (  # the divergence family (reference/divergences.py), one formula each
    generalized_jsd,
    generalized_jsd_gradient,
    interpolated_kl,
    interpolated_kl_gradient,
    kd_family_rows,
    kl_divergence_gradient,
    reduce_family,
    reduce_family_gradient,
    reverse_kl,
    reverse_kl_gradient,
    skew_kl,
    skew_kl_gradient,
    skew_reverse_kl,
    skew_reverse_kl_gradient,
    total_variation,
    total_variation_gradient,
    uses_family,
)
from reference.rows import log_softmax_rows, softmax_rows
from reference.topk import TopKTeacher, topk_divergence, topk_divergence_gradient

__all__ = [
    "TopKTeacher",
    "cross_entropy",
    "generalized_jsd",
    "generalized_jsd_gradient",
    "interpolated_kl",
    "interpolated_kl_gradient",
    "kd_logit_gradient",
    "kd_loss",
    "kl_divergence",
    "kl_divergence_gradient",
    "log_softmax",
    "reverse_kl",
    "reverse_kl_gradient",
    "skew_kl",
    "skew_kl_gradient",
    "skew_reverse_kl",
    "skew_reverse_kl_gradient",
    "softmax",
    "topk_divergence",
    "topk_divergence_gradient",
    "total_variation",
    "total_variation_gradient",
]


# --------------------------------------------------------------------------------------------------------
# Row-wise equations on validated float64 arrays of shape [N, V] (labels [N]).
# --------------------------------------------------------------------------------------------------------


def _cross_entropy_rows(s: np.ndarray, y: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``CE_i = -log softmax(s_i)_{y_i}`` on valid rows, 0 on ignored rows."""
    log_q = log_softmax_rows(s, 1.0)
    label_or_zero = np.where(valid, y, 0)  # any in-range column; ignored rows are discarded below
    log_q_label = np.take_along_axis(log_q, label_or_zero[:, None], axis=-1)[:, 0]
    return np.where(valid, -log_q_label, 0.0)


def _kl_rows(s: np.ndarray, t: np.ndarray, temperature: float) -> np.ndarray:
    """``KL_i = sum_v p_v (log p_v - log q_v)``, ``p = softmax(t_i/T)``, ``q = softmax(s_i/T)``.

    Terms with ``p_v == 0`` are exactly 0.
    """
    log_p = log_softmax_rows(t, temperature)
    log_q = log_softmax_rows(s, temperature)
    p = np.exp(log_p)
    support = p > 0.0  # outside the teacher's support the term is 0 (never 0 * -inf = NaN)
    terms = np.zeros_like(p)
    terms[support] = p[support] * (log_p[support] - log_q[support])
    return terms.sum(axis=-1)


def _weighted(weight: float, term: np.ndarray) -> np.ndarray:
    """``weight * term``, except that a weight of exactly 0 gives exactly 0 (even where the term is +inf)."""
    if weight == 0.0:
        return np.zeros_like(term)
    return weight * term


def _kd_loss_rows(
    s: np.ndarray, t: np.ndarray, y: np.ndarray, valid: np.ndarray, temperature: float, alpha: float
) -> np.ndarray:
    """``L_i = alpha * CE_i + (1 - alpha) * T^2 * KL_i`` on valid rows, 0 on ignored rows."""
    ce = _cross_entropy_rows(s, y, valid)
    kl = np.where(valid, _kl_rows(s, t, temperature), 0.0)
    return _weighted(alpha, ce) + _weighted((1.0 - alpha) * temperature**2, kl)


def _kd_gradient_rows(
    s: np.ndarray, t: np.ndarray, y: np.ndarray, valid: np.ndarray, temperature: float, alpha: float
) -> np.ndarray:
    """``dL_i/ds_i = alpha (softmax(s_i) - e_{y_i}) + (1 - alpha) T (softmax(s_i/T) - softmax(t_i/T))``.

    Ignored rows are 0.
    """
    vocab = s.shape[-1]
    one_hot = (np.arange(vocab)[None, :] == y[:, None]).astype(np.float64)
    hard = softmax_rows(s, 1.0) - one_hot
    soft = temperature * (softmax_rows(s, temperature) - softmax_rows(t, temperature))
    gradient = alpha * hard + (1.0 - alpha) * soft
    return np.where(valid[:, None], gradient, 0.0)


# --------------------------------------------------------------------------------------------------------
# Reductions.
# --------------------------------------------------------------------------------------------------------


def _reduce_loss(
    per_row: np.ndarray, valid: np.ndarray, reduction: str, labels_shape: tuple[int, ...]
) -> np.float64 | np.ndarray:
    """``none``: rows as an array of ``labels_shape``; ``sum``: the total; ``mean``: total / #valid or 0."""
    if reduction == "none":
        return per_row.reshape(labels_shape)
    total = np.float64(per_row.sum())
    if reduction == "sum":
        return total
    count = int(valid.sum())
    return np.float64(total / count) if count > 0 else np.float64(0.0)


def _reduce_gradient(per_row: np.ndarray, valid: np.ndarray, reduction: str) -> np.ndarray:
    """Gradient of the reduced loss: rows unchanged for ``none``/``sum``, divided by #valid for ``mean``."""
    count = int(valid.sum())
    if reduction == "mean" and count > 0:
        return per_row / count
    return per_row


# --------------------------------------------------------------------------------------------------------
# Validation and flattening of public inputs.
# --------------------------------------------------------------------------------------------------------


class _Rows(NamedTuple):
    """Validated inputs flattened to rows: ``s``, ``t`` of shape [N, V]; ``y``, ``valid`` of shape [N]."""

    s: np.ndarray
    t: np.ndarray
    y: np.ndarray
    valid: np.ndarray
    logits_shape: tuple[int, ...]
    labels_shape: tuple[int, ...]


def _validated_logits(name: str, logits: ArrayLike) -> np.ndarray:
    """One logits array, float64, checked (vocab axis present, no NaN / +inf, a finite entry per row)."""
    z = as_float64_logits(name, logits)
    check_logits(name, z)
    return z


def _rows(
    student_logits: ArrayLike, teacher_logits: ArrayLike, labels: ArrayLike, ignore_index: int
) -> _Rows:
    """Validate student and teacher logits and labels together; flatten every leading axis into rows."""
    s = as_float64_logits("student_logits", student_logits)
    t = as_float64_logits("teacher_logits", teacher_logits)
    y = as_integer_labels(labels)
    vocab = check_shapes(s.shape, t.shape, y.shape)
    check_logits("student_logits", s)
    check_logits("teacher_logits", t)
    check_labels(y, vocab, ignore_index)
    flat_y = y.reshape(-1).astype(np.int64)
    return _Rows(
        s=s.reshape(-1, vocab),
        t=t.reshape(-1, vocab),
        y=flat_y,
        valid=flat_y != ignore_index,
        logits_shape=s.shape,
        labels_shape=y.shape,
    )


# --------------------------------------------------------------------------------------------------------
# Public equations.
# --------------------------------------------------------------------------------------------------------


def softmax(logits: ArrayLike, temperature: float = 1.0) -> np.ndarray:
    """Equation ``softmax``: ``softmax(z / T)_v = exp(z_v / T - m) / sum_u exp(z_u / T - m)``.

    ``m = max_u z_u / T``, over the last axis of ``logits`` (shape ``[..., V]``); ``-inf`` entries get
    probability exactly 0. Returns a float64 array of the same shape.
    """
    temperature = check_temperature(temperature)
    z = _validated_logits("logits", logits)
    return softmax_rows(z, temperature)


def log_softmax(logits: ArrayLike, temperature: float = 1.0) -> np.ndarray:
    """Equation ``log_softmax``: ``log_softmax(z / T)_v = z_v / T - m - log sum_u exp(z_u / T - m)``.

    ``m = max_u z_u / T`` over the last axis; ``-inf`` entries stay ``-inf``. Returns float64, same shape.
    """
    temperature = check_temperature(temperature)
    z = _validated_logits("logits", logits)
    return log_softmax_rows(z, temperature)


def cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
) -> np.float64 | np.ndarray:
    """Equation ``cross_entropy``: ``CE_i = -log softmax(s_i)_{y_i}`` on untempered logits.

    ``logits`` ``[..., V]``, integer ``labels`` ``[...]``. Rows with ``y_i == ignore_index`` give 0 and are
    not counted by ``mean``. Returns a float64 scalar (``sum``, ``mean``) or an array of ``labels.shape``
    (``none``).
    """
    reduction = check_reduction(reduction)
    ignore_index = check_ignore_index(ignore_index)
    s = _validated_logits("logits", logits)
    y = as_integer_labels(labels)
    check_labels_shape(y.shape, s.shape)
    check_labels(y, s.shape[-1], ignore_index)
    flat_y = y.reshape(-1).astype(np.int64)
    valid = flat_y != ignore_index
    per_row = _cross_entropy_rows(s.reshape(-1, s.shape[-1]), flat_y, valid)
    return _reduce_loss(per_row, valid, reduction, y.shape)


def kl_divergence(
    student_logits: ArrayLike, teacher_logits: ArrayLike, *, temperature: float = 1.0
) -> np.ndarray:
    """Equation ``kl_divergence``: ``KL_i = sum_v p_v (log p_v - log q_v)``.

    ``p = softmax(t_i / T)`` (teacher), ``q = softmax(s_i / T)`` (student): the forward
    KL(P_teacher || P_student) per row, no reduction and no labels. Returns a float64 array of shape
    ``student_logits.shape[:-1]``. Terms with ``p_v == 0`` contribute exactly 0; a student ``-inf`` where
    the teacher has mass gives ``+inf``.
    """
    temperature = check_temperature(temperature)
    s = as_float64_logits("student_logits", student_logits)
    t = as_float64_logits("teacher_logits", teacher_logits)
    vocab = check_shapes(s.shape, t.shape)
    check_logits("student_logits", s)
    check_logits("teacher_logits", t)
    per_row = _kl_rows(s.reshape(-1, vocab), t.reshape(-1, vocab), temperature)
    return per_row.reshape(s.shape[:-1])


def kd_loss(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    labels: ArrayLike,
    *,
    temperature: float,
    alpha: float,
    divergence: str = "forward_kl",
    beta: float | None = None,
    skew: float | None = None,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
    normalizer: float | None = None,
) -> np.float64 | np.ndarray:
    """Equation ``kd_loss``: ``L_i = alpha * CE(s_i, y_i) + (1 - alpha) * T^2 * KL_i``.

    ``KL_i = KL(softmax(t_i / T) || softmax(s_i / T))``; ``CE`` uses the untempered student logits.
    ``alpha == 1`` is pure cross-entropy (the KL term contributes exactly 0). Rows with
    ``y_i == ignore_index`` contribute 0 to both terms. Reductions: ``none`` (array of ``labels.shape``),
    ``sum``, ``mean`` (over valid rows; 0.0 when there are none).

    The family (:mod:`reference.kd_family`): ``divergence`` replaces ``KL_i`` by any member of
    :data:`reference.divergences.DIVERGENCES` (with its ``beta`` or ``skew``); ``teacher_logits`` may be a
    top-k pair ``(logprobs, ids)`` or a :class:`TopKTeacher` (:mod:`reference.topk`); ``normalizer=N``
    makes ``mean`` divide the sum by ``N`` (the global valid-token count) instead of the local count.
    """
    if uses_family(teacher_logits, divergence, beta, skew, normalizer):
        per_row, _, valid, norm, reduction, _, labels_shape = kd_family_rows(
            student_logits, teacher_logits, labels, temperature=temperature, alpha=alpha, divergence=divergence,
            beta=beta, skew=skew, ignore_index=ignore_index, reduction=reduction, normalizer=normalizer,
        )  # fmt: skip
        return reduce_family(per_row, valid, reduction, norm, labels_shape)
    temperature, alpha, reduction = check_hyperparameters(temperature, alpha, reduction)
    ignore_index = check_ignore_index(ignore_index)
    rows = _rows(student_logits, teacher_logits, labels, ignore_index)
    per_row = _kd_loss_rows(rows.s, rows.t, rows.y, rows.valid, temperature, alpha)
    return _reduce_loss(per_row, rows.valid, reduction, rows.labels_shape)


def kd_logit_gradient(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    labels: ArrayLike,
    *,
    temperature: float,
    alpha: float,
    divergence: str = "forward_kl",
    beta: float | None = None,
    skew: float | None = None,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
    normalizer: float | None = None,
) -> np.ndarray:
    """Equation ``kd_logit_gradient``: ``dL_i/ds_i = alpha (softmax(s_i) - e_{y_i}) + (1 - alpha) T (q - p)``.

    ``q = softmax(s_i / T)``, ``p = softmax(t_i / T)``. The exact gradient of :func:`kd_loss` (same
    arguments) with respect to ``student_logits``, always of shape ``student_logits.shape``. Rows with
    ``y_i == ignore_index`` are 0. ``none``: row ``i`` holds ``d L_i / d s_i``; ``sum``: the same rows;
    ``mean``: divided by the number of valid rows (all zeros when there are none), or by ``normalizer``.

    Over the family: ``alpha (softmax(s_i) - e_{y_i}) + (1 - alpha) T^2 dD_i/ds_i`` (see :func:`kd_loss`).
    """
    if uses_family(teacher_logits, divergence, beta, skew, normalizer):
        _, per_row, valid, norm, reduction, logits_shape, _ = kd_family_rows(
            student_logits, teacher_logits, labels, temperature=temperature, alpha=alpha, divergence=divergence,
            beta=beta, skew=skew, ignore_index=ignore_index, reduction=reduction, normalizer=normalizer,
        )  # fmt: skip
        return reduce_family_gradient(per_row, valid, reduction, norm).reshape(logits_shape)
    temperature, alpha, reduction = check_hyperparameters(temperature, alpha, reduction)
    ignore_index = check_ignore_index(ignore_index)
    rows = _rows(student_logits, teacher_logits, labels, ignore_index)
    per_row = _kd_gradient_rows(rows.s, rows.t, rows.y, rows.valid, temperature, alpha)
    return _reduce_gradient(per_row, rows.valid, reduction).reshape(rows.logits_shape)
