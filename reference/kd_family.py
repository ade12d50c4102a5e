"""The divergence family's public functions, and ``kd_loss`` over the family, top-k teachers and a normalizer.

Re-exported by :mod:`reference.kd`, which is where callers find them. Each dense member takes
``(student_logits, teacher_logits, *, temperature=1.0, ...)`` and returns per-row values of shape
``student_logits.shape[:-1]`` with no reduction; its ``_gradient`` twin returns ``dD_i / ds_i`` row by row,
shape ``student_logits.shape``. The formulas are in :mod:`reference.divergences`.

``kd_loss`` over the family::

    L_i = alpha * CE(s_i, y_i) + (1 - alpha) * T^2 * D_i
    dL_i/ds_i = alpha * (softmax(s_i) - e_{y_i}) + (1 - alpha) * T^2 * dD_i/ds_i

where ``D_i`` is the chosen divergence between ``softmax(t_i / T)`` and ``softmax(s_i / T)``, or the top-k
divergence of :mod:`reference.topk` when the teacher is a ``(logprobs, ids)`` pair. ``normalizer=N`` divides
the summed loss (and its gradient) by ``N`` instead of the local valid-row count: with ``N`` the number of
valid tokens across all accumulation steps and ranks, the accumulated gradient equals the whole batch's.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from reference import checks
from reference.divergences import (
    DIVERGENCE_NAMES,
    TOPK_DIVERGENCE_NAMES,
    Divergence,
    check_divergence,
    dense_gradient_rows,
    dense_value_rows,
    weighted,
)
from reference.topk import TopKTeacher, check_mode, topk_rows, topk_value_and_gradient

# --------------------------------------------------------------------------------------------------------
# Dense members.
# --------------------------------------------------------------------------------------------------------


def _dense_inputs(student_logits: ArrayLike, teacher_logits: ArrayLike) -> tuple[np.ndarray, np.ndarray, tuple]:
    s = checks.as_float64_logits("student_logits", student_logits)
    t = checks.as_float64_logits("teacher_logits", teacher_logits)
    vocab = checks.check_shapes(s.shape, t.shape)
    checks.check_logits("student_logits", s)
    checks.check_logits("teacher_logits", t)
    return s.reshape(-1, vocab), t.reshape(-1, vocab), s.shape


def _dense(
    name: str,
    gradient: bool,
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    temperature: object,
    **param: object,
) -> np.ndarray:
    divergence, value = check_divergence(name, **param)
    temperature = checks.check_temperature(temperature)
    s, t, shape = _dense_inputs(student_logits, teacher_logits)
    if gradient:
        return dense_gradient_rows(divergence, s, t, temperature, value).reshape(shape)
    return dense_value_rows(divergence, s, t, temperature, value).reshape(shape[:-1])


def kl_divergence_gradient(
    student_logits: ArrayLike, teacher_logits: ArrayLike, *, temperature: float = 1.0
) -> np.ndarray:
    """``d KL(P || Q) / ds = (q - p) / T`` per row (the gradient twin of :func:`reference.kd.kl_divergence`)."""
    return _dense("forward_kl", True, student_logits, teacher_logits, temperature)


def reverse_kl(student_logits: ArrayLike, teacher_logits: ArrayLike, *, temperature: float = 1.0) -> np.ndarray:
    """Equation ``reverse_kl``: ``KL(Q || P) = sum_v q_v (log q_v - log p_v)`` per row."""
    return _dense("reverse_kl", False, student_logits, teacher_logits, temperature)


def reverse_kl_gradient(
    student_logits: ArrayLike, teacher_logits: ArrayLike, *, temperature: float = 1.0
) -> np.ndarray:
    """``d KL(Q || P) / ds = q (log q - log p - KL(Q || P)) / T`` per row."""
    return _dense("reverse_kl", True, student_logits, teacher_logits, temperature)


def generalized_jsd(
    student_logits: ArrayLike, teacher_logits: ArrayLike, *, temperature: float = 1.0, beta: float
) -> np.ndarray:
    """Equation ``generalized_jsd`` (TRL's): ``beta KL(P || M) + (1 - beta) KL(Q || M)``, ``M = beta P + (1 - beta) Q``;
    ``beta = 0`` is ``KL(P || Q)`` and ``beta = 1`` is ``KL(Q || P)`` (discontinuous endpoints)."""
    return _dense("generalized_jsd", False, student_logits, teacher_logits, temperature, beta=beta)


def generalized_jsd_gradient(
    student_logits: ArrayLike, teacher_logits: ArrayLike, *, temperature: float = 1.0, beta: float
) -> np.ndarray:
    """Interior: ``(1 - beta) q (log q - log M - KL(Q || M)) / T``; the endpoints are the KL gradients."""
    return _dense("generalized_jsd", True, student_logits, teacher_logits, temperature, beta=beta)


def interpolated_kl(
    student_logits: ArrayLike, teacher_logits: ArrayLike, *, temperature: float = 1.0, beta: float
) -> np.ndarray:
    """Equation ``interpolated_kl`` (bakery's): ``(1 - beta) KL(P || Q) + beta KL(Q || P)``."""
    return _dense("interpolated_kl", False, student_logits, teacher_logits, temperature, beta=beta)


def interpolated_kl_gradient(
    student_logits: ArrayLike, teacher_logits: ArrayLike, *, temperature: float = 1.0, beta: float
) -> np.ndarray:
    """``(1 - beta) d KL(P || Q)/ds + beta d KL(Q || P)/ds``."""
    return _dense("interpolated_kl", True, student_logits, teacher_logits, temperature, beta=beta)


def skew_kl(
    student_logits: ArrayLike, teacher_logits: ArrayLike, *, temperature: float = 1.0, skew: float
) -> np.ndarray:
    """Equation ``skew_kl`` (DistiLLM): ``KL(P || skew P + (1 - skew) Q)``."""
    return _dense("skew_kl", False, student_logits, teacher_logits, temperature, skew=skew)


def skew_kl_gradient(
    student_logits: ArrayLike, teacher_logits: ArrayLike, *, temperature: float = 1.0, skew: float
) -> np.ndarray:
    """``g = -(1 - skew) p q / M``, ``dD/ds = (g - q sum g) / T``."""
    return _dense("skew_kl", True, student_logits, teacher_logits, temperature, skew=skew)


def skew_reverse_kl(
    student_logits: ArrayLike, teacher_logits: ArrayLike, *, temperature: float = 1.0, skew: float
) -> np.ndarray:
    """Equation ``skew_reverse_kl`` (DistiLLM): ``KL(Q || skew Q + (1 - skew) P)``."""
    return _dense("skew_reverse_kl", False, student_logits, teacher_logits, temperature, skew=skew)


def skew_reverse_kl_gradient(
    student_logits: ArrayLike, teacher_logits: ArrayLike, *, temperature: float = 1.0, skew: float
) -> np.ndarray:
    """``g = q (log q - log M - skew q / M)``, ``dD/ds = (g - q sum g) / T``."""
    return _dense("skew_reverse_kl", True, student_logits, teacher_logits, temperature, skew=skew)


def total_variation(student_logits: ArrayLike, teacher_logits: ArrayLike, *, temperature: float = 1.0) -> np.ndarray:
    """Equation ``total_variation``: ``1/2 sum_v |p_v - q_v|``."""
    return _dense("total_variation", False, student_logits, teacher_logits, temperature)


def total_variation_gradient(
    student_logits: ArrayLike, teacher_logits: ArrayLike, *, temperature: float = 1.0
) -> np.ndarray:
    """``g = q sign(q - p) / 2`` (a subgradient at ties), ``dD/ds = (g - q sum g) / T``."""
    return _dense("total_variation", True, student_logits, teacher_logits, temperature)


# --------------------------------------------------------------------------------------------------------
# kd_loss over the family.
# --------------------------------------------------------------------------------------------------------


def normalizer_message(normalizer: object) -> str:
    return f"normalizer must be a finite number > 0 (the global count of valid tokens), got {normalizer!r}"


def normalizer_reduction_message(reduction: str) -> str:
    return f"normalizer divides the summed loss, so it needs reduction 'mean', got reduction {reduction!r}"


def check_normalizer(normalizer: object, reduction: str) -> float | None:
    """``None``, or the normalizer as a float; ValueError unless finite > 0 and ``reduction == 'mean'``."""
    if normalizer is None:
        return None
    real = None
    if not isinstance(normalizer, (bool, np.bool_, str, bytes)):
        try:
            real = float(normalizer)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            real = None
    if real is None or not math.isfinite(real) or real <= 0.0:
        raise ValueError(normalizer_message(normalizer))
    if reduction != "mean":
        raise ValueError(normalizer_reduction_message(reduction))
    return real


def is_topk(teacher: object) -> bool:
    """Whether a kd_loss teacher is a top-k pair (a :class:`TopKTeacher` or a 2-tuple) rather than logits."""
    return isinstance(teacher, TopKTeacher) or (isinstance(teacher, tuple) and len(teacher) == 2)


def as_topk(teacher: object) -> TopKTeacher:
    return teacher if isinstance(teacher, TopKTeacher) else TopKTeacher(*teacher)  # type: ignore[misc]


def uses_family(teacher: object, divergence: object, beta: object, skew: object, normalizer: object) -> bool:
    """Whether a kd_loss call needs the family path (anything but the seed's dense forward KL)."""
    extras = (normalizer, beta, skew)
    return divergence != "forward_kl" or is_topk(teacher) or any(x is not None for x in extras)


def kd_family_rows(
    student_logits: ArrayLike,
    teacher: object,
    labels: ArrayLike,
    *,
    temperature: object,
    alpha: object,
    divergence: object,
    beta: object,
    skew: object,
    ignore_index: object,
    reduction: object,
    normalizer: object,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float | None, str, tuple[int, ...], tuple[int, ...]]:
    """Validate a family kd_loss call; return per-row losses [N], gradients [N, V] (unreduced), validity [N],
    the normalizer, the reduction and the logits and labels shapes."""
    temperature, alpha, reduction = checks.check_hyperparameters(temperature, alpha, reduction)
    ignore_index = checks.check_ignore_index(ignore_index)
    allowed = TOPK_DIVERGENCE_NAMES if is_topk(teacher) else DIVERGENCE_NAMES
    member, parameter = check_divergence(divergence, beta, skew, allowed)
    norm = check_normalizer(normalizer, reduction)
    if is_topk(teacher):
        pair = as_topk(teacher)
        mode = check_mode(pair.mode)
        rows = topk_rows(student_logits, pair.logprobs, pair.ids, mode, temperature)
        s = rows.s
        y = checks.as_integer_labels(labels)
        checks.check_labels_shape(y.shape, rows.logits_shape)
        checks.check_labels(y, s.shape[-1], ignore_index)
        value, dvalue = topk_value_and_gradient(rows, mode, member, parameter, temperature)
        logits_shape = rows.logits_shape
    else:
        s_in = checks.as_float64_logits("student_logits", student_logits)
        t_in = checks.as_float64_logits("teacher_logits", teacher)
        y = checks.as_integer_labels(labels)
        vocab = checks.check_shapes(s_in.shape, t_in.shape, y.shape)
        checks.check_logits("student_logits", s_in)
        checks.check_logits("teacher_logits", t_in)
        checks.check_labels(y, vocab, ignore_index)
        s, t = s_in.reshape(-1, vocab), t_in.reshape(-1, vocab)
        value = dense_value_rows(member, s, t, temperature, parameter)
        dvalue = dense_gradient_rows(member, s, t, temperature, parameter)
        logits_shape = s_in.shape
    flat_y = y.reshape(-1).astype(np.int64)
    valid = flat_y != ignore_index
    loss, gradient = _combine(s, flat_y, valid, value, dvalue, member, temperature, alpha)
    return loss, gradient, valid, norm, reduction, logits_shape, y.shape


def _combine(
    s: np.ndarray,
    y: np.ndarray,
    valid: np.ndarray,
    value: np.ndarray,
    dvalue: np.ndarray,
    member: Divergence,
    temperature: float,
    alpha: float,
) -> tuple[np.ndarray, np.ndarray]:
    """``alpha CE + (1 - alpha) T^2 D`` and its gradient, 0 on ignored rows; zero weights give exact zeros."""
    lq1 = s - s.max(axis=-1, keepdims=True)
    lq1 = lq1 - np.log(np.exp(lq1).sum(axis=-1, keepdims=True))
    label = np.where(valid, y, 0)
    ce = np.where(valid, -np.take_along_axis(lq1, label[:, None], axis=-1)[:, 0], 0.0)
    one_hot = np.arange(s.shape[-1])[None, :] == label[:, None]
    hard = np.exp(lq1) - one_hot
    weight = (1.0 - alpha) * temperature**2
    loss = weighted(alpha, ce) + weighted(weight, np.where(valid, value, 0.0))
    gradient = weighted(alpha, hard) + weighted(weight, np.where(valid[:, None], dvalue, 0.0))
    return loss, np.where(valid[:, None], gradient, 0.0)


def reduce_family(
    per_row: np.ndarray, valid: np.ndarray, reduction: str, normalizer: float | None, labels_shape: tuple[int, ...]
) -> np.float64 | np.ndarray:
    if reduction == "none":
        return per_row.reshape(labels_shape)
    total = np.float64(per_row.sum())
    if reduction == "sum":
        return total
    count = normalizer if normalizer is not None else float(valid.sum())
    return np.float64(total / count) if count > 0 else np.float64(0.0)


def reduce_family_gradient(
    gradient: np.ndarray, valid: np.ndarray, reduction: str, normalizer: float | None
) -> np.ndarray:
    if reduction != "mean":
        return gradient
    count = normalizer if normalizer is not None else float(valid.sum())
    return gradient / count if count > 0 else gradient
