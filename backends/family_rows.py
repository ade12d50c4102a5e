"""The divergence family's row math over an array namespace ``xp``: numpy, cupy or torch.

A port of :data:`reference.divergences.DIVERGENCES` shared by the torch (:mod:`backends.torch_family`) and
cupy (:mod:`backends.cupy_family`) backends: each member is ``(value, score)`` of log-probabilities
``lq`` (student) and ``lp`` (teacher) over the last axis, ``score = dD / d log q``. Only what numpy, cupy
and torch share is used (``xp.where``, ``xp.exp``, ``xp.logaddexp``, ``.sum(axis=..., keepdims=...)``), so
one text serves all three. Same formulas as the reference, in log space (``logaddexp`` mixtures, no
``log(p + eps)``); the reference itself stays a separate, independent oracle.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from reference.divergences import DIVERGENCE_NAMES


def kl(xp: Any, lx: Any, ly: Any) -> Any:
    support = lx > -math.inf
    return xp.where(support, xp.exp(lx) * (lx - xp.where(support, ly, 0.0)), 0.0).sum(axis=-1)


def _mix(xp: Any, w: float, lx: Any, ly: Any) -> Any:
    if w == 0.0:
        return ly
    if w == 1.0:
        return lx
    return xp.logaddexp(lx + math.log(w), ly + math.log1p(-w))


def _times_q(xp: Any, lq: Any, factor: Any) -> Any:
    support = lq > -math.inf
    return xp.where(support, xp.exp(lq) * xp.where(support, factor, 0.0), 0.0)


def weighted(xp: Any, w: float, x: Any) -> Any:
    return xp.zeros_like(x) if w == 0.0 else w * x


def _forward(xp: Any, lq: Any, lp: Any, w: float | None) -> tuple[Any, Any]:
    return kl(xp, lp, lq), -xp.exp(lp)


def _reverse(xp: Any, lq: Any, lp: Any, w: float | None) -> tuple[Any, Any]:
    return kl(xp, lq, lp), _times_q(xp, lq, lq - lp)


def _jsd(xp: Any, lq: Any, lp: Any, w: float | None) -> tuple[Any, Any]:
    assert w is not None
    if w == 0.0:
        return _forward(xp, lq, lp, None)
    if w == 1.0:
        return _reverse(xp, lq, lp, None)
    lm = _mix(xp, w, lp, lq)
    return w * kl(xp, lp, lm) + (1 - w) * kl(xp, lq, lm), (1 - w) * _times_q(xp, lq, lq - lm)


def _interpolated(xp: Any, lq: Any, lp: Any, w: float | None) -> tuple[Any, Any]:
    assert w is not None
    fv, fg = _forward(xp, lq, lp, None)
    rv, rg = _reverse(xp, lq, lp, None)
    return weighted(xp, 1 - w, fv) + weighted(xp, w, rv), weighted(xp, 1 - w, fg) + weighted(xp, w, rg)


def _skew(xp: Any, lq: Any, lp: Any, w: float | None) -> tuple[Any, Any]:
    assert w is not None
    lm = _mix(xp, w, lp, lq)
    both = (lp > -math.inf) & (lq > -math.inf)
    score = xp.where(both, -(1 - w) * xp.exp(lp + lq - xp.where(both, lm, 0.0)), 0.0)
    return kl(xp, lp, lm), score


def _skew_reverse(xp: Any, lq: Any, lp: Any, w: float | None) -> tuple[Any, Any]:
    assert w is not None
    lm = _mix(xp, w, lq, lp)
    share = xp.exp(lq - lm + math.log(w)) if w > 0.0 else 0.0  # w q / m <= 1
    return kl(xp, lq, lm), _times_q(xp, lq, lq - lm - share)


def _total_variation(xp: Any, lq: Any, lp: Any, w: float | None) -> tuple[Any, Any]:
    q, p = xp.exp(lq), xp.exp(lp)
    return 0.5 * xp.abs(p - q).sum(axis=-1), 0.5 * q * xp.sign(q - p)


ROWS: dict[str, Callable[[Any, Any, Any, float | None], tuple[Any, Any]]] = {
    "forward_kl": _forward,
    "reverse_kl": _reverse,
    "generalized_jsd": _jsd,
    "interpolated_kl": _interpolated,
    "skew_kl": _skew,
    "skew_reverse_kl": _skew_reverse,
    "total_variation": _total_variation,
}
"""The port of :data:`reference.divergences.DIVERGENCES`, by name."""

assert tuple(ROWS) == DIVERGENCE_NAMES


def chain(xp: Any, lq: Any, g: Any, temperature: float) -> Any:
    """``(g - q sum g) / T``: the chain rule from ``d/d log q`` through ``log_softmax(s / T)``."""
    return (g - xp.exp(lq) * g.sum(axis=-1, keepdims=True)) / temperature
