"""Sparse teachers: a divergence against a teacher known only by its top-k log-probabilities and token ids.

OpenAI-compatible servers and vLLM return, per position, the ``K`` most likely tokens and their
log-probabilities ``l_k = log p(id_k)`` at the teacher's temperature 1. Two named conventions turn that into
two distributions over the same buckets:

``renormalize`` (bakery's ``topk_forward_kl``)
    The teacher is renormalized over its K ids, ``P_k = softmax(l / T)_k``, and so is the student over the
    same ids, ``Q_k = softmax(s[ids] / T)_k``. Exact for any temperature: the dense teacher
    ``softmax(t / T)`` restricted to the K ids and renormalized is ``softmax(l / T)``.
``tail`` (TRL's server-side distillation, DistillKit's tail bucket)
    A (K+1)-th bucket holds what the K ids leave: ``P_tail = 1 - sum_k exp(l_k)`` (formed as
    ``log(-expm1(logsumexp(l)))``) and ``Q_tail = sum_{v not in ids} q_v`` (a ``logsumexp`` over the
    complement, never ``1 - sum``). Both sides are distributions, so every divergence stays >= 0. At K = V
    there is no tail bucket and the value is the dense one.

Temperature. The teacher's log-probabilities are at temperature 1. ``renormalize`` tempers both sides
exactly as the dense loss does. ``tail`` would need the teacher's mass outside its K ids at temperature T,
which top-k log-probabilities at temperature 1 do not determine, so ``mode="tail"`` with ``temperature != 1``
is a ValueError (ask the server for log-probs at the loss temperature, or use ``renormalize``).

Validation. Besides the student's checks, each of these is a ValueError naming the first offending row:
ids out of ``[0, V)``, duplicate ids, NaN log-probabilities or ones above 0 (beyond rounding:
``POSITIVE_LOGPROB_LIMIT``), a top-k mass above
``1 + TOPK_MASS_TOLERANCE``, and (``renormalize``) a row whose teacher or student has no finite entry on
the K ids. A mass in ``(1, 1 + TOPK_MASS_TOLERANCE]`` is read as rounding: the teacher is renormalized and
its tail is 0.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from reference import checks
from reference.divergences import TOPK_DIVERGENCE_NAMES, Divergence, check_divergence
from reference.rows import log_softmax_rows

TOPK_MODES: tuple[str, ...] = ("tail", "renormalize")

TOPK_MASS_TOLERANCE: float = 1e-4
"""How far above 1 the teacher's top-k probability mass may sum before it is an error: float32 log-probs
rounded to ~6e-8 relative each, over up to a thousand entries, stay well inside it; a mass further above 1 is
not a top-k of one distribution (logits instead of log-probs, or two positions mixed)."""


POSITIVE_LOGPROB_LIMIT: float = float(np.log1p(TOPK_MASS_TOLERANCE))
"""A log-probability above this (``log(1 + TOPK_MASS_TOLERANCE)``) is an error; up to it, rounding of one near 0."""


class TopKTeacher(NamedTuple):
    """A sparse teacher for :func:`reference.kd.kd_loss`: ``(logprobs, ids)`` ``[..., K]`` each, and a mode.
    A plain ``(logprobs, ids)`` tuple means ``mode="tail"``."""

    logprobs: ArrayLike
    ids: ArrayLike
    mode: str = "tail"


# --------------------------------------------------------------------------------------------------------
# Messages (one builder each) and checks.
# --------------------------------------------------------------------------------------------------------


def mode_message(mode: object) -> str:
    return f"unknown top-k mode {mode!r}: expected one of {', '.join(map(repr, TOPK_MODES))}"


def tail_temperature_message(temperature: float) -> str:
    return (
        f"mode 'tail' needs temperature 1.0, got {temperature!r}: top-k log-probs at temperature 1 do not "
        "determine the teacher's tail mass at another temperature (use mode 'renormalize', or ask the teacher "
        "for log-probs at the loss temperature)"
    )


def ids_dtype_message(dtype: object) -> str:
    return f"teacher_topk_ids must be an integer array, got dtype {dtype}"


def topk_shape_message(
    logprobs_shape: tuple[int, ...], ids_shape: tuple[int, ...], student_shape: tuple[int, ...]
) -> str:
    return (
        f"teacher_topk_logprobs shape {checks.format_shape(logprobs_shape)} and teacher_topk_ids shape "
        f"{checks.format_shape(ids_shape)} must be equal, [..., K] with the leading axes of student_logits "
        f"{checks.format_shape(student_shape)} and 1 <= K <= vocab size"
    )


def id_out_of_range_message(row: tuple[int, ...], value: int, vocab: int) -> str:
    where = checks.format_position(row)
    return f"teacher_topk_ids row {where} holds id {value} outside [0, {vocab}) for vocab size {vocab}"


def duplicate_id_message(row: tuple[int, ...], value: int) -> str:
    return f"teacher_topk_ids row {checks.format_position(row)} holds id {value} twice: top-k ids must be distinct"


def logprob_nan_message(row: tuple[int, ...]) -> str:
    return f"teacher_topk_logprobs row {checks.format_position(row)} contains NaN"


def logprob_positive_message(row: tuple[int, ...], value: float) -> str:
    return (
        f"teacher_topk_logprobs row {checks.format_position(row)} holds {value!r} > 0: log-probabilities are <= 0 "
        "(logits instead of log-probs?)"
    )


def mass_message(row: tuple[int, ...], mass: float) -> str:
    return (
        f"teacher_topk_logprobs row {checks.format_position(row)} has probability mass {mass!r} > 1 + "
        f"{TOPK_MASS_TOLERANCE}: the top-k of one distribution sums to at most 1"
    )


def no_finite_topk_message(name: str, row: tuple[int, ...]) -> str:
    return (
        f"{name} row {checks.format_position(row)} has no finite entry on the teacher's top-k ids: "
        "mode 'renormalize' needs one to renormalize over"
    )


def check_mode(mode: object) -> str:
    if not isinstance(mode, str) or mode not in TOPK_MODES:
        raise ValueError(mode_message(mode))
    return mode


def check_topk_shapes(
    student_shape: tuple[int, ...], logprobs_shape: tuple[int, ...], ids_shape: tuple[int, ...]
) -> int:
    """Check ``[..., K]`` pairs against ``[..., V]`` student logits; return K."""
    ok = (
        tuple(logprobs_shape) == tuple(ids_shape)
        and len(ids_shape) == len(student_shape)
        and tuple(ids_shape[:-1]) == tuple(student_shape[:-1])
        and 1 <= ids_shape[-1] <= student_shape[-1]
    )
    if not ok:
        raise ValueError(topk_shape_message(tuple(logprobs_shape), tuple(ids_shape), tuple(student_shape)))
    return int(ids_shape[-1])


def _first_row(mask: np.ndarray, lead: tuple[int, ...]) -> tuple[int, ...]:
    flat = int(np.argmax(mask))
    return tuple(int(i) for i in np.unravel_index(flat, lead)) if lead else ()


def check_topk_values(logprobs: np.ndarray, ids: np.ndarray, vocab: int, mode: str, student: np.ndarray) -> None:
    """Value checks of a top-k pair (numpy, any leading shape), each naming the first offending row."""
    lead = tuple(ids.shape[:-1])
    lp = logprobs.reshape(-1, logprobs.shape[-1]).astype(np.float64)
    ix = ids.reshape(-1, ids.shape[-1]).astype(np.int64)
    bad = ((ix < 0) | (ix >= vocab)).any(axis=-1)
    if bad.any():
        r = int(np.argmax(bad))
        value = int(ix[r][(ix[r] < 0) | (ix[r] >= vocab)][0])
        raise ValueError(id_out_of_range_message(_first_row(bad, lead), value, vocab))
    ordered = np.sort(ix, axis=-1)
    repeated = ordered[:, 1:] == ordered[:, :-1]
    bad = repeated.any(axis=-1)
    if bad.any():
        r = int(np.argmax(bad))
        raise ValueError(duplicate_id_message(_first_row(bad, lead), int(ordered[r, 1:][repeated[r]][0])))
    bad = np.isnan(lp).any(axis=-1)
    if bad.any():
        raise ValueError(logprob_nan_message(_first_row(bad, lead)))
    positive = lp > POSITIVE_LOGPROB_LIMIT
    bad = positive.any(axis=-1)
    if bad.any():
        r = int(np.argmax(bad))
        raise ValueError(logprob_positive_message(_first_row(bad, lead), float(lp[r][positive[r]][0])))
    mass = np.exp(lp).sum(axis=-1)
    bad = mass > 1.0 + TOPK_MASS_TOLERANCE
    if bad.any():
        raise ValueError(mass_message(_first_row(bad, lead), float(mass[int(np.argmax(bad))])))
    if mode == "renormalize":
        bad = np.isneginf(lp).all(axis=-1)
        if bad.any():
            raise ValueError(no_finite_topk_message("teacher_topk_logprobs", _first_row(bad, lead)))
        s = student.reshape(-1, student.shape[-1])
        bad = np.isneginf(np.take_along_axis(s, ix, axis=-1)).all(axis=-1)
        if bad.any():
            raise ValueError(no_finite_topk_message("student_logits", _first_row(bad, lead)))


class TopKRows(NamedTuple):
    """Validated top-k inputs as rows: ``s`` [N, V], ``logprobs`` and ``ids`` [N, K]."""

    s: np.ndarray
    logprobs: np.ndarray
    ids: np.ndarray
    logits_shape: tuple[int, ...]


def topk_rows(
    student_logits: ArrayLike, logprobs: ArrayLike, ids: ArrayLike, mode: str, temperature: float
) -> TopKRows:
    """Validate a student and a top-k pair in order (mode and temperature first, then arrays)."""
    if mode == "tail" and temperature != 1.0:
        raise ValueError(tail_temperature_message(temperature))
    s = checks.as_float64_logits("student_logits", student_logits)
    lp = checks.as_float64_logits("teacher_topk_logprobs", logprobs)
    try:
        ix = np.asarray(ids)
    except (TypeError, ValueError) as error:
        raise ValueError(f"teacher_topk_ids could not be converted to an integer array: {error}") from None
    if ix.dtype.kind not in ("i", "u"):
        raise ValueError(ids_dtype_message(ix.dtype))
    vocab = checks.check_logits_shape("student_logits", s.shape)
    check_topk_shapes(s.shape, lp.shape, ix.shape)
    checks.check_logits("student_logits", s)
    check_topk_values(lp, ix, vocab, mode, s)
    k = ix.shape[-1]
    return TopKRows(s.reshape(-1, vocab), lp.reshape(-1, k), ix.reshape(-1, k).astype(np.int64), s.shape)


# --------------------------------------------------------------------------------------------------------
# The buckets and the chain rule back to the student logits.
# --------------------------------------------------------------------------------------------------------


def _teacher_buckets(lp: np.ndarray, mode: str, temperature: float, has_tail: bool) -> np.ndarray:
    """The teacher's log-probabilities over the buckets: K (renormalize) or K + 1 (tail, K < V)."""
    if mode == "renormalize":
        return log_softmax_rows(lp, temperature)
    lse = np.logaddexp.reduce(lp, axis=-1, keepdims=True)
    over = lse >= 0.0  # mass 1 (or rounding above it): renormalize, empty tail
    known = np.where(over, lp - lse, lp)
    if not has_tail:
        return known - np.where(over, 0.0, lse)  # K = V: the K ids are the whole distribution
    with np.errstate(divide="ignore"):
        tail = np.where(over, -np.inf, np.log(-np.expm1(np.minimum(lse, 0.0))))
    return np.concatenate([known, tail], axis=-1)


def topk_value_and_gradient(
    rows: TopKRows, mode: str, divergence: Divergence, parameter: float | None, temperature: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-row ``D(P_buckets, Q_buckets)`` [N] and its gradient w.r.t. the student logits [N, V].

    With ``G_b = dD / d log Q_b`` and bucket ``b(v)`` of token ``v``: ``dD/dz_v = (q_v / Q_b(v)) G_b(v) -
    q_v sum_b G_b``, ``z = s / T`` (``q`` the student's softmax over what the buckets cover).
    """
    with np.errstate(invalid="ignore", over="ignore"):  # -inf - -inf where both sides are masked; discarded
        return _topk_value_and_gradient(rows, mode, divergence, parameter, temperature)


def _topk_value_and_gradient(
    rows: TopKRows, mode: str, divergence: Divergence, parameter: float | None, temperature: float
) -> tuple[np.ndarray, np.ndarray]:
    s, lp, ids = rows.s, rows.logprobs, rows.ids
    vocab = s.shape[-1]
    has_tail = mode == "tail" and ids.shape[-1] < vocab
    log_p = _teacher_buckets(lp, mode, temperature, has_tail)
    if mode == "renormalize":
        log_q = log_softmax_rows(np.take_along_axis(s, ids, axis=-1), temperature)
        g = divergence.score(log_q, log_p, parameter)
        grad_k = g - np.exp(log_q) * g.sum(axis=-1, keepdims=True)
        gradient = np.zeros_like(s)
        np.put_along_axis(gradient, ids, grad_k, axis=-1)
        return divergence.value(log_q, log_p, parameter), gradient / temperature
    lq = log_softmax_rows(s, temperature)
    in_topk = np.zeros(s.shape, dtype=bool)
    np.put_along_axis(in_topk, ids, True, axis=-1)
    log_q = np.take_along_axis(lq, ids, axis=-1)
    if has_tail:
        tail = np.logaddexp.reduce(np.where(in_topk, -np.inf, lq), axis=-1, keepdims=True)
        log_q = np.concatenate([log_q, tail], axis=-1)
    g = divergence.score(log_q, log_p, parameter)
    gradient = -np.exp(lq) * g.sum(axis=-1, keepdims=True)
    np.put_along_axis(gradient, ids, np.take_along_axis(gradient, ids, axis=-1) + g[:, : ids.shape[-1]], axis=-1)
    if has_tail:
        with np.errstate(invalid="ignore"):
            share = np.where(in_topk | (log_q[:, -1:] == -np.inf), 0.0, np.exp(lq - log_q[:, -1:]))
        gradient = gradient + share * g[:, -1:]
    return divergence.value(log_q, log_p, parameter), gradient / temperature


def _prepare(
    student_logits: ArrayLike,
    logprobs: ArrayLike,
    ids: ArrayLike,
    mode: object,
    divergence: object,
    beta: object,
    temperature: object,
) -> tuple[TopKRows, str, Divergence, float | None, float]:
    mode = check_mode(mode)
    member, parameter = check_divergence(divergence, beta, None, TOPK_DIVERGENCE_NAMES)
    temperature = checks.check_temperature(temperature)
    rows = topk_rows(student_logits, logprobs, ids, mode, temperature)
    return rows, mode, member, parameter, temperature


def topk_divergence(
    student_logits: ArrayLike,
    teacher_topk_logprobs: ArrayLike,
    teacher_topk_ids: ArrayLike,
    *,
    mode: str = "tail",
    divergence: str = "forward_kl",
    beta: float | None = None,
    temperature: float = 1.0,
) -> np.ndarray:
    """Equation ``topk_divergence``: ``D(P, Q)`` per row over the top-k buckets of ``mode`` (module docstring).

    ``divergence`` is ``forward_kl``, ``reverse_kl`` or ``generalized_jsd`` (with ``beta``). Returns float64
    of shape ``student_logits.shape[:-1]``, no reduction.
    """
    rows, mode, member, parameter, temperature = _prepare(
        student_logits, teacher_topk_logprobs, teacher_topk_ids, mode, divergence, beta, temperature
    )
    value, _ = topk_value_and_gradient(rows, mode, member, parameter, temperature)
    return value.reshape(rows.logits_shape[:-1])


def topk_divergence_gradient(
    student_logits: ArrayLike,
    teacher_topk_logprobs: ArrayLike,
    teacher_topk_ids: ArrayLike,
    *,
    mode: str = "tail",
    divergence: str = "forward_kl",
    beta: float | None = None,
    temperature: float = 1.0,
) -> np.ndarray:
    """Gradient twin of :func:`topk_divergence`: row ``i`` holds ``dD_i / ds_i``, shape of ``student_logits``."""
    rows, mode, member, parameter, temperature = _prepare(
        student_logits, teacher_topk_logprobs, teacher_topk_ids, mode, divergence, beta, temperature
    )
    _, gradient = topk_value_and_gradient(rows, mode, member, parameter, temperature)
    return gradient.reshape(rows.logits_shape)


def dense_to_topk(teacher_logits: ArrayLike, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top-k ``(logprobs, ids)`` of dense teacher logits at temperature 1, most likely first (ties by id)."""
    lp = log_softmax_rows(np.asarray(teacher_logits, dtype=np.float64), 1.0)
    ids = np.argsort(-lp, axis=-1, kind="stable")[..., :k]
    return np.take_along_axis(lp, ids, axis=-1), ids.astype(np.int64)


__all__ = [
    "TOPK_MASS_TOLERANCE",
    "TOPK_MODES",
    "TopKTeacher",
    "dense_to_topk",
    "topk_divergence",
    "topk_divergence_gradient",
]
