"""The divergence family's element functions for Triton kernels, and the kernels' scalar parameters.

Each member is one ``@triton.jit`` function ``terms(lq, lp, W) -> (value, score)`` on a tile of
log-probabilities ``lq`` (student) and ``lp`` (teacher), over vocabulary entries (the dense family,
:mod:`backends.triton_family_kernels`) or over top-k buckets (:mod:`backends.triton_topk_kernels`): the tile's
share of the row's value, and its score ``g = dD / d log q``. The support rules are the reference's
(:mod:`reference.divergences`): ``x (log x - log y)`` is 0 where ``x = 0`` (even where ``log y = -inf``),
``q * factor`` is 0 where ``q = 0``; mixtures ``log(w x + (1 - w) y)`` are formed in log space
(:func:`log_mix`), exactly ``log y`` at ``w = 0`` and ``log x`` at ``w = 1``; no ``log(p + eps)``.

Scalars reach every kernel in ``PARAMS``, a small tensor of the accumulation dtype laid out as
:data:`PARAM_NAMES` (built by :func:`params`), never as Python floats: compiled Triton types a Python float
argument as float32, so ``1 / T`` or ``log beta`` would lose their float64 digits on a GPU
(:mod:`backends.triton_interpreter` makes the interpreter do the same, so the suite sees it). ``W`` is
``PARAMS + W_BLOCK``, the member's parameter block ``(w, 1 - w, log w, log(1 - w))``, each formed in float64
on the host (``-inf`` logs at the ends; ``w = 0`` for a member without a parameter).
"""

from __future__ import annotations

import math
from typing import Any

import triton
import triton.language as tl

PARAM_NAMES = ("inv_temp", "w_ce", "w_div", "w", "one_minus_w", "log_w", "log_one_minus_w")
"""The ``PARAMS`` layout: ``1 / T``; the weights of the CE and divergence terms of a gradient (``(0, 1)`` for a
bare member, ``(alpha, (1 - alpha) T^2)`` in ``kd_loss``); the member's parameter block."""
INV_TEMP, W_CE, W_DIV, W_BLOCK = (tl.constexpr(i) for i in range(4))
"""Positions in ``PARAMS``, as ``tl.constexpr``: compiled Triton refuses any other global inside a kernel."""


def params(torch: Any, dtype: Any, device: Any, *, temperature: float, w_ce: float = 0.0, w_div: float = 0.0,
           w: float | None = None) -> Any:  # fmt: skip
    """The ``PARAMS`` tensor (:data:`PARAM_NAMES`) in ``dtype`` on ``device``, every entry formed in float64."""
    w = 0.0 if w is None else float(w)
    log_w = math.log(w) if w > 0.0 else -math.inf
    log_1mw = math.log1p(-w) if w < 1.0 else -math.inf
    values = [1.0 / temperature, float(w_ce), float(w_div), w, 1.0 - w, log_w, log_1mw]
    return torch.tensor(values, dtype=dtype, device=device)


# --------------------------------------------------------------------------------------------------------
# Log-space building blocks.
# --------------------------------------------------------------------------------------------------------


@triton.jit
def log_mix(log_w, log_1mw, lx, ly):
    """``log(w x + (1 - w) y)`` from ``log_w = log w``, ``log_1mw = log(1 - w)`` (shifted by the larger side);
    ``-inf`` where both sides are 0, exactly ``ly`` at ``w = 0`` and ``lx`` at ``w = 1``."""
    a = lx + log_w
    b = ly + log_1mw
    top = tl.maximum(a, b)
    shift = tl.where(top == -float("inf"), 0.0, top)
    return top + tl.log(tl.exp(a - shift) + tl.exp(b - shift))


@triton.jit
def kl_term(lx, ly):
    """``x (log x - log y)``, 0 where ``x = 0`` (off the support of x, even where ``log y = -inf``)."""
    support = lx != -float("inf")
    return tl.where(support, tl.exp(lx) * (lx - tl.where(support, ly, 0.0)), 0.0)


@triton.jit
def times_q(lq, factor):
    """``q * factor``, exactly 0 where ``q = 0`` (even where ``factor`` is infinite)."""
    return tl.where(lq != -float("inf"), tl.exp(lq) * factor, 0.0)


@triton.jit
def parameter(W):
    """The member's parameter block at ``W``: ``(w, 1 - w, log w, log(1 - w))``."""
    return tl.load(W), tl.load(W + 1), tl.load(W + 2), tl.load(W + 3)


# --------------------------------------------------------------------------------------------------------
# The members: (value term, score term) per entry.
# --------------------------------------------------------------------------------------------------------


@triton.jit
def forward_kl_terms(lq, lp, W):
    """``KL(P || Q)``: ``p (log p - log q)``; score ``-p``."""
    return kl_term(lp, lq), -tl.exp(lp)


@triton.jit
def reverse_kl_terms(lq, lp, W):
    """``KL(Q || P)``: ``q (log q - log p)``; score the same (``q (log q - log p + 1)``, the +1 cancels)."""
    term = kl_term(lq, lp)
    return term, term


@triton.jit
def generalized_jsd_terms(lq, lp, W):
    """The interior ``0 < beta < 1``: ``beta KL(P || M) + (1 - beta) KL(Q || M)``, ``M = beta P + (1 - beta) Q``;
    score ``(1 - beta) q (log q - log m)``. The endpoints are the KL branches (:func:`terms_of`)."""
    w, one_minus_w, log_w, log_1mw = parameter(W)
    lm = log_mix(log_w, log_1mw, lp, lq)
    return w * kl_term(lp, lm) + one_minus_w * kl_term(lq, lm), one_minus_w * times_q(lq, lq - lm)


@triton.jit
def interpolated_kl_terms(lq, lp, W):
    """``(1 - beta) KL(P || Q) + beta KL(Q || P)``; a weight of exactly 0 drops its side (even an infinite one)."""
    w, one_minus_w, _, _ = parameter(W)
    forward = kl_term(lp, lq)
    reverse = kl_term(lq, lp)
    value = tl.where(one_minus_w == 0.0, 0.0, one_minus_w * forward) + tl.where(w == 0.0, 0.0, w * reverse)
    score = tl.where(one_minus_w == 0.0, 0.0, -one_minus_w * tl.exp(lp)) + tl.where(w == 0.0, 0.0, w * reverse)
    return value, score


@triton.jit
def skew_kl_terms(lq, lp, W):
    """``KL(P || M)``, ``M = skew P + (1 - skew) Q``; score ``-(1 - skew) p q / m`` where ``p q > 0``, else 0."""
    _, one_minus_w, log_w, log_1mw = parameter(W)
    lm = log_mix(log_w, log_1mw, lp, lq)
    both = (lp != -float("inf")) & (lq != -float("inf"))
    score = tl.where(both, -one_minus_w * tl.exp(lp + lq - tl.where(both, lm, 0.0)), 0.0)
    return kl_term(lp, lm), score


@triton.jit
def skew_reverse_kl_terms(lq, lp, W):
    """``KL(Q || M)``, ``M = skew Q + (1 - skew) P``; score ``q (log q - log m - skew q / m)``."""
    _, _, log_w, log_1mw = parameter(W)
    lm = log_mix(log_w, log_1mw, lq, lp)
    share = tl.exp(log_w + lq - lm)  # skew q / m <= 1: never overflows; 0 at skew = 0
    return kl_term(lq, lm), times_q(lq, lq - lm - share)


@triton.jit
def total_variation_terms(lq, lp, W):
    """``|p - q| / 2``; score ``q sign(q - p) / 2`` with ``sign(0) = 0`` (the reference's subgradient at ties)."""
    q = tl.exp(lq)
    p = tl.exp(lp)
    sign = tl.where(q > p, 1.0, tl.where(q < p, -1.0, 0.0))
    return 0.5 * tl.abs(p - q), 0.5 * q * sign


TERMS = {
    "forward_kl": forward_kl_terms,
    "reverse_kl": reverse_kl_terms,
    "generalized_jsd": generalized_jsd_terms,
    "interpolated_kl": interpolated_kl_terms,
    "skew_kl": skew_kl_terms,
    "skew_reverse_kl": skew_reverse_kl_terms,
    "total_variation": total_variation_terms,
}
"""The element function of each member of :data:`reference.divergences.DIVERGENCES`, by name."""


def terms_of(name: str, w: float | None, table: dict | None = None) -> object:
    """The element function for ``name`` at parameter ``w``: the generalized JSD's endpoints are the KL
    branches (``beta = 0`` forward, ``beta = 1`` reverse), not the interior formula's limits."""
    table = TERMS if table is None else table
    if name == "generalized_jsd" and w in (0.0, 1.0):
        return table["forward_kl" if w == 0.0 else "reverse_kl"]
    return table[name]
