"""The divergence family, described once: per-row values and analytic gradients, all in log space.

Every member compares the teacher ``P = softmax(t / T)`` with the student ``Q = softmax(s / T)`` row by row
(the temperature divides both sides) and is written over *log*-probabilities, so that mixtures are formed
with ``logaddexp`` and no ``log(p + eps)`` clamp appears anywhere. ``KL(X || Y) = sum_v x_v (log x_v -
log y_v)`` over the support of ``X`` (terms with ``x_v = 0`` are exactly 0).

==================  =====================================================================================
name                per-row value
==================  =====================================================================================
forward_kl          ``KL(P || Q)``
reverse_kl          ``KL(Q || P)``
generalized_jsd     ``beta KL(P || M) + (1 - beta) KL(Q || M)``, ``M = beta P + (1 - beta) Q``;
                    ``beta = 0`` is ``KL(P || Q)`` and ``beta = 1`` is ``KL(Q || P)`` (TRL's endpoints)
interpolated_kl     ``(1 - beta) KL(P || Q) + beta KL(Q || P)`` (bakery's "JSD")
skew_kl             ``KL(P || skew P + (1 - skew) Q)`` (DistiLLM's alpha-skew KL)
skew_reverse_kl     ``KL(Q || skew Q + (1 - skew) P)`` (DistiLLM's alpha-skew reverse KL)
total_variation     ``1/2 sum_v |p_v - q_v|``
==================  =====================================================================================

Each member is one :class:`Divergence` in :data:`DIVERGENCES`: a ``value`` and a ``score`` over
log-probability rows. The score is ``g_v = dD / d log q_v`` (``log q`` treated as free coordinates); the
gradient with respect to the student logits follows by the chain rule through ``log_softmax(s / T)``:
``dD/ds_v = (g_v - q_v sum_u g_u) / T`` (:func:`dense_gradient_rows`). The same value and score serve the
top-k teacher (:mod:`reference.topk`), whose buckets are a coarser partition of the vocabulary.

The generalized JSD is *discontinuous* at its endpoints: the interior formula tends to 0 as beta -> 0+ or
beta -> 1-, while beta = 0 and beta = 1 are separate branches (forward and reverse KL), exactly as TRL's
``generalized_jsd_loss`` writes them. The reference keeps that discontinuity on purpose.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from reference.rows import log_softmax_rows

Rows = np.ndarray  # float64 log-probabilities, shape [N, B] (B buckets: the vocabulary, or top-k + tail)


# --------------------------------------------------------------------------------------------------------
# Log-space building blocks.
# --------------------------------------------------------------------------------------------------------


def kl_rows(log_x: Rows, log_y: Rows) -> np.ndarray:
    """``KL(X || Y) = sum_v x_v (log x_v - log y_v)`` per row, over the support of ``X`` (0 elsewhere)."""
    support = log_x > -np.inf
    with np.errstate(invalid="ignore"):
        terms = np.where(support, np.exp(log_x) * (log_x - log_y), 0.0)
    return terms.sum(axis=-1)


def log_mixture(weight: float, log_x: Rows, log_y: Rows) -> Rows:
    """``log(w x + (1 - w) y)`` in log space; ``w = 0`` is exactly ``log y`` and ``w = 1`` exactly ``log x``."""
    if weight == 0.0:
        return log_y
    if weight == 1.0:
        return log_x
    return np.logaddexp(math.log(weight) + log_x, math.log1p(-weight) + log_y)


def _times_q(log_q: Rows, factor: Rows) -> Rows:
    """``q * factor`` with ``q = exp(log_q)``, exactly 0 where ``q = 0`` (even where ``factor`` is infinite)."""
    with np.errstate(invalid="ignore"):
        return np.where(log_q > -np.inf, np.exp(log_q) * factor, 0.0)


def weighted(weight: float, term: np.ndarray) -> np.ndarray:
    """``weight * term``; a weight of exactly 0 gives exactly 0 (even where the term is +inf)."""
    return np.zeros_like(term) if weight == 0.0 else weight * term


# --------------------------------------------------------------------------------------------------------
# The members: value(log_q, log_p, parameter) and score(log_q, log_p, parameter) = dD / d log q.
# --------------------------------------------------------------------------------------------------------


def _forward_value(lq: Rows, lp: Rows, _: float | None) -> np.ndarray:
    return kl_rows(lp, lq)


def _forward_score(lq: Rows, lp: Rows, _: float | None) -> Rows:
    return -np.exp(lp)  # d/dlog q of -sum p log q


def _reverse_value(lq: Rows, lp: Rows, _: float | None) -> np.ndarray:
    return kl_rows(lq, lp)


def _reverse_score(lq: Rows, lp: Rows, _: float | None) -> Rows:
    # d/dlog q_v of sum q (log q - log p) = q_v (log q_v - log p_v + 1); the +1 cancels in the chain rule.
    return _times_q(lq, lq - lp)


def _jsd_value(lq: Rows, lp: Rows, beta: float | None) -> np.ndarray:
    assert beta is not None
    if beta == 0.0:
        return kl_rows(lp, lq)
    if beta == 1.0:
        return kl_rows(lq, lp)
    lm = log_mixture(beta, lp, lq)
    return beta * kl_rows(lp, lm) + (1.0 - beta) * kl_rows(lq, lm)


def _jsd_score(lq: Rows, lp: Rows, beta: float | None) -> Rows:
    assert beta is not None
    if beta == 0.0:
        return _forward_score(lq, lp, None)
    if beta == 1.0:
        return _reverse_score(lq, lp, None)
    # d/dq_v [beta KL(P||M) + (1-beta) KL(Q||M)] = (1-beta) (log q_v - log m_v + 1); the +1 cancels.
    return (1.0 - beta) * _times_q(lq, lq - log_mixture(beta, lp, lq))


def _interpolated_value(lq: Rows, lp: Rows, beta: float | None) -> np.ndarray:
    assert beta is not None
    return weighted(1.0 - beta, kl_rows(lp, lq)) + weighted(beta, kl_rows(lq, lp))


def _interpolated_score(lq: Rows, lp: Rows, beta: float | None) -> Rows:
    assert beta is not None
    return weighted(1.0 - beta, _forward_score(lq, lp, None)) + weighted(beta, _reverse_score(lq, lp, None))


def _skew_value(lq: Rows, lp: Rows, skew: float | None) -> np.ndarray:
    assert skew is not None
    return kl_rows(lp, log_mixture(skew, lp, lq))


def _skew_score(lq: Rows, lp: Rows, skew: float | None) -> Rows:
    assert skew is not None
    # d/dq_v of -sum p log m, m = skew p + (1-skew) q: -(1-skew) p_v / m_v; times q_v.
    lm = log_mixture(skew, lp, lq)
    both = (lp > -np.inf) & (lq > -np.inf)  # m_v > 0 wherever p_v q_v > 0
    with np.errstate(invalid="ignore"):
        return np.where(both, -(1.0 - skew) * np.exp(lp + lq - lm), 0.0)


def _skew_reverse_value(lq: Rows, lp: Rows, skew: float | None) -> np.ndarray:
    assert skew is not None
    return kl_rows(lq, log_mixture(skew, lq, lp))


def _skew_reverse_score(lq: Rows, lp: Rows, skew: float | None) -> Rows:
    assert skew is not None
    # d/dq_v of sum q (log q - log m), m = skew q + (1-skew) p: log q_v - log m_v + 1 - skew q_v / m_v.
    lm = log_mixture(skew, lq, lp)
    share = np.exp(math.log(skew) + lq - lm) if skew > 0.0 else 0.0  # skew q / m <= 1: never overflows
    return _times_q(lq, lq - lm - share)


def _tv_value(lq: Rows, lp: Rows, _: float | None) -> np.ndarray:
    return 0.5 * np.abs(np.exp(lp) - np.exp(lq)).sum(axis=-1)


def _tv_score(lq: Rows, lp: Rows, _: float | None) -> Rows:
    # d/dq_v of 1/2 sum |p - q| = 1/2 sign(q_v - p_v) (0 at a tie: a subgradient); times q_v.
    return 0.5 * np.exp(lq) * np.sign(np.exp(lq) - np.exp(lp))


# --------------------------------------------------------------------------------------------------------
# The table.
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Divergence:
    """One member of the family, described once; falsifiers, backends, bindings and docs iterate these."""

    name: str
    """The name every layer uses (``kd_loss(divergence=...)``, contracts, capabilities, docs)."""
    function: str
    """The per-row function in :mod:`reference.kd`; its gradient twin is ``function + "_gradient"``."""
    formula: str
    """One line, for the docs and the contract."""
    parameter: str | None
    """The keyword of its parameter (``beta``, ``skew``), or ``None``; the domain is always ``[0, 1]``."""
    value: Callable[[Rows, Rows, float | None], np.ndarray]
    score: Callable[[Rows, Rows, float | None], Rows]
    on_topk: bool
    """Whether :func:`reference.topk.topk_divergence` supports it."""
    endpoints: str
    """What the parameter's ends mean (empty when there is no parameter)."""
    smooth: bool = True
    """False for total variation, whose gradient is a subgradient at ties (finite differences are invalid)."""

    @property
    def gradient_function(self) -> str:
        return self.function + "_gradient"


DIVERGENCES: tuple[Divergence, ...] = (
    Divergence(
        "forward_kl",
        "kl_divergence",
        "KL(P || Q) = sum_v p_v (log p_v - log q_v)",
        None,
        _forward_value,
        _forward_score,
        True,
        "",
    ),
    Divergence(
        "reverse_kl",
        "reverse_kl",
        "KL(Q || P) = sum_v q_v (log q_v - log p_v)",
        None,
        _reverse_value,
        _reverse_score,
        True,
        "",
    ),
    Divergence(
        "generalized_jsd",
        "generalized_jsd",
        "beta KL(P || M) + (1 - beta) KL(Q || M), M = beta P + (1 - beta) Q; "
        "beta = 0: KL(P || Q), beta = 1: KL(Q || P)",
        "beta",
        _jsd_value,
        _jsd_score,
        True,
        "beta = 0 is forward KL and beta = 1 reverse KL (TRL's branches); the interior tends to 0 at both ends, "
        "so the endpoints are discontinuous",
    ),
    Divergence(
        "interpolated_kl",
        "interpolated_kl",
        "(1 - beta) KL(P || Q) + beta KL(Q || P)",
        "beta",
        _interpolated_value,
        _interpolated_score,
        False,
        "beta = 0 is forward KL and beta = 1 reverse KL, continuously",
    ),
    Divergence(
        "skew_kl",
        "skew_kl",
        "KL(P || skew P + (1 - skew) Q)",
        "skew",
        _skew_value,
        _skew_score,
        False,
        "skew = 0 is forward KL; skew = 1 is identically 0",
    ),
    Divergence(
        "skew_reverse_kl",
        "skew_reverse_kl",
        "KL(Q || skew Q + (1 - skew) P)",
        "skew",
        _skew_reverse_value,
        _skew_reverse_score,
        False,
        "skew = 0 is reverse KL; skew = 1 is identically 0",
    ),
    Divergence(
        "total_variation",
        "total_variation",
        "1/2 sum_v |p_v - q_v|",
        None,
        _tv_value,
        _tv_score,
        False,
        "",
        smooth=False,
    ),
)
"""The divergence family, in the order docs and reports list it."""

BY_NAME: dict[str, Divergence] = {d.name: d for d in DIVERGENCES}
DIVERGENCE_NAMES: tuple[str, ...] = tuple(BY_NAME)
TOPK_DIVERGENCE_NAMES: tuple[str, ...] = tuple(d.name for d in DIVERGENCES if d.on_topk)


# --------------------------------------------------------------------------------------------------------
# Parameters: one message builder each, one check.
# --------------------------------------------------------------------------------------------------------


def divergence_name_message(name: object, allowed: tuple[str, ...] = DIVERGENCE_NAMES) -> str:
    return f"unknown divergence {name!r}: expected one of {', '.join(map(repr, allowed))}"


def parameter_message(divergence: str, keyword: str, value: object) -> str:
    return f"{divergence} needs {keyword} as a finite number in [0, 1], got {value!r}"


def stray_parameter_message(divergence: str, keyword: str, value: object) -> str:
    takes = BY_NAME[divergence].parameter
    has = f"it takes {takes}" if takes else "it takes no parameter"
    return f"{divergence} does not take {keyword} (got {keyword}={value!r}): {has}"


def check_divergence(
    name: object, beta: object = None, skew: object = None, allowed: tuple[str, ...] = DIVERGENCE_NAMES
) -> tuple[Divergence, float | None]:
    """The table entry for ``name`` and its parameter as a float; ValueError for an unknown name, a missing
    or out-of-domain parameter, or a parameter the divergence does not take."""
    if not isinstance(name, str) or name not in allowed:
        raise ValueError(divergence_name_message(name, allowed))
    divergence = BY_NAME[name]
    given = {"beta": beta, "skew": skew}
    for keyword, value in given.items():
        if value is not None and keyword != divergence.parameter:
            raise ValueError(stray_parameter_message(name, keyword, value))
    if divergence.parameter is None:
        return divergence, None
    value = given[divergence.parameter]
    real = None if isinstance(value, (bool, np.bool_, str, bytes)) or value is None else _as_float(value)
    if real is None or not math.isfinite(real) or not 0.0 <= real <= 1.0:
        raise ValueError(parameter_message(name, divergence.parameter, value))
    return divergence, real


def _as_float(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------------------------------------
# Dense rows: value and gradient with respect to the student logits.
# --------------------------------------------------------------------------------------------------------


def dense_value_rows(
    divergence: Divergence, s: np.ndarray, t: np.ndarray, temperature: float, parameter: float | None
) -> np.ndarray:
    """``D(softmax(t/T), softmax(s/T))`` per row of validated ``[N, V]`` logits."""
    with np.errstate(invalid="ignore", over="ignore"):  # -inf - -inf where both sides are masked; discarded
        return divergence.value(log_softmax_rows(s, temperature), log_softmax_rows(t, temperature), parameter)


def dense_gradient_rows(
    divergence: Divergence, s: np.ndarray, t: np.ndarray, temperature: float, parameter: float | None
) -> np.ndarray:
    """``dD_i / ds_i = (g - q sum_u g_u) / T`` with ``g = dD / d log q`` (the chain rule through log_softmax)."""
    lq = log_softmax_rows(s, temperature)
    with np.errstate(invalid="ignore", over="ignore"):  # -inf - -inf where both sides are masked; discarded
        g = divergence.score(lq, log_softmax_rows(t, temperature), parameter)
    return (g - np.exp(lq) * g.sum(axis=-1, keepdims=True)) / temperature
