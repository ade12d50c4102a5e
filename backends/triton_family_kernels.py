"""Triton kernels of the dense divergence family: a port of :mod:`reference.divergences` over row statistics.

Each member is one ``@triton.jit`` element function ``terms(lq, lp, w, log_w, log_1mw) -> (value, score)``
on a chunk of log-probabilities ``lq = log softmax(s/T)``, ``lp = log softmax(t/T)``: the entry's share of
the row's value, and its score ``g_v = dD / d log q_v``. ``w`` is the member's parameter (``beta`` or
``skew``; 0 when it takes none), ``log_w = log w`` and ``log_1mw = log(1 - w)``, ``-inf`` at the ends, so a
mixture ``log(w x + (1 - w) y)`` is formed in log space (:func:`log_mix`) and is exactly ``log y`` at
``w = 0`` and ``log x`` at ``w = 1``. The support rules are the reference's: ``x (log x - log y)`` is 0
where ``x = 0`` (even where ``log y = -inf``), ``q * factor`` is 0 where ``q = 0``; no ``log(p + eps)``.

The element function is a constexpr argument (``TERMS``) of two kernels, so the same kernels serve every
member and a port can plant a broken member (tests/ports/bug_triton_jsd_unshifted_mixture.py):

- :func:`divergence_rows`: per row, the value ``sum_v value_v`` and ``sum_v g_v``, reading ``s`` and ``t``
  in chunks with the statistics of :func:`backends.triton_kernels.row_stats` (``mq, lseq, mp, lsep``).
- :func:`divergence_gradient`: ``OUT = weight_row (w_ce (softmax(s) - onehot(y)) + w_div (g - q sum g) / T)``,
  written once; ``(w_ce, w_div)`` is ``(0, 1)`` for a bare member and ``(alpha, (1 - alpha) T^2)`` in
  ``kd_loss``. A row whose weight is 0 (an ignored label) is exactly 0.

Nothing of size ``[N, V]`` is allocated besides the gradient. Inputs are loaded in their own dtype and
accumulated in ``ACC`` (float64 for float64 inputs, float32 for float32 and bfloat16).
"""

from __future__ import annotations

import triton
import triton.language as tl

from backends.triton_kernels import ce_gradient

N_ROWS = 2
VALUE, SCORE_SUM = range(N_ROWS)
"""Layout of the ``[N, 2]`` output of :func:`divergence_rows`."""

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


# --------------------------------------------------------------------------------------------------------
# The members: (value term, score term) per entry.
# --------------------------------------------------------------------------------------------------------


@triton.jit
def forward_kl_terms(lq, lp, w, log_w, log_1mw):
    """``KL(P || Q)``: ``p (log p - log q)``; score ``-p``."""
    return kl_term(lp, lq), -tl.exp(lp)


@triton.jit
def reverse_kl_terms(lq, lp, w, log_w, log_1mw):
    """``KL(Q || P)``: ``q (log q - log p)``; score the same (``q (log q - log p + 1)``, the +1 cancels)."""
    term = kl_term(lq, lp)
    return term, term


@triton.jit
def generalized_jsd_terms(lq, lp, w, log_w, log_1mw):
    """The interior ``0 < beta < 1``: ``beta KL(P || M) + (1 - beta) KL(Q || M)``, ``M = beta P + (1 - beta) Q``;
    score ``(1 - beta) q (log q - log m)``. The endpoints are the KL branches (:func:`terms_of`)."""
    lm = log_mix(log_w, log_1mw, lp, lq)
    value = w * kl_term(lp, lm) + (1.0 - w) * kl_term(lq, lm)
    return value, (1.0 - w) * times_q(lq, lq - lm)


@triton.jit
def interpolated_kl_terms(lq, lp, w, log_w, log_1mw):
    """``(1 - beta) KL(P || Q) + beta KL(Q || P)``; a weight of exactly 0 drops its side (even an infinite one)."""
    forward = kl_term(lp, lq)
    reverse = kl_term(lq, lp)
    value = tl.where(w == 1.0, 0.0, (1.0 - w) * forward) + tl.where(w == 0.0, 0.0, w * reverse)
    score = tl.where(w == 1.0, 0.0, -(1.0 - w) * tl.exp(lp)) + tl.where(w == 0.0, 0.0, w * reverse)
    return value, score


@triton.jit
def skew_kl_terms(lq, lp, w, log_w, log_1mw):
    """``KL(P || M)``, ``M = skew P + (1 - skew) Q``; score ``-(1 - skew) p q / m`` where ``p q > 0``, else 0."""
    lm = log_mix(log_w, log_1mw, lp, lq)
    both = (lp != -float("inf")) & (lq != -float("inf"))
    score = tl.where(both, -(1.0 - w) * tl.exp(lp + lq - tl.where(both, lm, 0.0)), 0.0)
    return kl_term(lp, lm), score


@triton.jit
def skew_reverse_kl_terms(lq, lp, w, log_w, log_1mw):
    """``KL(Q || M)``, ``M = skew Q + (1 - skew) P``; score ``q (log q - log m - skew q / m)``."""
    lm = log_mix(log_w, log_1mw, lq, lp)
    share = tl.exp(log_w + lq - lm)  # skew q / m <= 1: never overflows; 0 at skew = 0
    return kl_term(lq, lm), times_q(lq, lq - lm - share)


@triton.jit
def total_variation_terms(lq, lp, w, log_w, log_1mw):
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


# --------------------------------------------------------------------------------------------------------
# Kernels.
# --------------------------------------------------------------------------------------------------------


@triton.jit
def _load(X, rows, cols, mask, stride, ACC: tl.constexpr):
    """One chunk ``[BLOCK_N, BLOCK_V]`` of ``X`` in ``ACC``; entries outside ``mask`` are ``-inf``."""
    return tl.load(X + rows[:, None] * stride + cols[None, :], mask=mask, other=-float("inf")).to(ACC)


@triton.jit
def _log_softmax(x, inv_temp, m, lse):
    """``log softmax(x / T)`` of one chunk from its row statistics ``(m, lse)``."""
    return (x * inv_temp - m[:, None]) - lse[:, None]


@triton.jit
def divergence_rows(
    S,
    T,
    STATS,
    OUT,
    n_rows,
    vocab,
    stride_s,
    stride_t,
    inv_temp,
    w,
    log_w,
    log_1mw,
    TERMS: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """``OUT[i] = (sum_v value_v, sum_v g_v)`` for each row, from ``STATS`` of :func:`row_stats`."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n_rows
    base = STATS + rows * 8
    mq = tl.load(base + 2, mask=row_ok, other=0.0).to(ACC)
    lseq = tl.load(base + 3, mask=row_ok, other=0.0).to(ACC)
    mp = tl.load(base + 4, mask=row_ok, other=0.0).to(ACC)
    lsep = tl.load(base + 5, mask=row_ok, other=0.0).to(ACC)
    value = tl.zeros((BLOCK_N,), ACC)
    score = tl.zeros((BLOCK_N,), ACC)
    for v0 in range(0, vocab, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        mask = row_ok[:, None] & (cols[None, :] < vocab)
        lq = _log_softmax(_load(S, rows, cols, mask, stride_s, ACC), inv_temp, mq, lseq)
        lp = _log_softmax(_load(T, rows, cols, mask, stride_t, ACC), inv_temp, mp, lsep)
        v, g = TERMS(lq, lp, w, log_w, log_1mw)
        value += tl.sum(tl.where(mask, v, 0.0), axis=1)
        score += tl.sum(tl.where(mask, g, 0.0), axis=1)
    tl.store(OUT + rows * 2, value, mask=row_ok)
    tl.store(OUT + rows * 2 + 1, score, mask=row_ok)


@triton.jit
def divergence_gradient(
    S,
    T,
    Y,
    STATS,
    ROWS,
    WEIGHT,
    OUT,
    n_rows,
    vocab,
    stride_s,
    stride_t,
    stride_o,
    inv_temp,
    w,
    log_w,
    log_1mw,
    w_ce,
    w_div,
    HAS_CE: tl.constexpr,
    HAS_DIV: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    TERMS: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """``OUT = WEIGHT_row (w_ce (softmax(s) - onehot(y)) + w_div (g - q sum g) / T)`` (see the module docstring).

    ``ROWS`` holds :func:`divergence_rows`' output (``sum g`` per row); ``WEIGHT`` ``[N]`` (when
    ``HAS_WEIGHT``) the reduction, the mask and autograd's ``grad_output``; ``Y`` in-range labels.
    """
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n_rows
    base = STATS + rows * 8
    m1 = tl.load(base + 0, mask=row_ok, other=0.0).to(ACC)
    lse1 = tl.load(base + 1, mask=row_ok, other=0.0).to(ACC)
    mq = tl.load(base + 2, mask=row_ok, other=0.0).to(ACC)
    lseq = tl.load(base + 3, mask=row_ok, other=0.0).to(ACC)
    mp = tl.load(base + 4, mask=row_ok, other=0.0).to(ACC)
    lsep = tl.load(base + 5, mask=row_ok, other=0.0).to(ACC)
    score_sum = tl.load(ROWS + rows * 2 + 1, mask=row_ok, other=0.0).to(ACC)
    if HAS_WEIGHT:
        weight = tl.load(WEIGHT + rows, mask=row_ok, other=0.0).to(ACC)
    else:
        weight = tl.full((BLOCK_N,), 1.0, ACC)
    if HAS_CE:
        y = tl.load(Y + rows, mask=row_ok, other=0)
    for v0 in range(0, vocab, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        mask = row_ok[:, None] & (cols[None, :] < vocab)
        s = _load(S, rows, cols, mask, stride_s, ACC)
        out = tl.zeros((BLOCK_N, BLOCK_V), ACC)
        if HAS_CE:
            out += w_ce * ce_gradient(s, cols, m1, lse1, y)
        if HAS_DIV:
            lq = _log_softmax(s, inv_temp, mq, lseq)
            lp = _log_softmax(_load(T, rows, cols, mask, stride_t, ACC), inv_temp, mp, lsep)
            _, g = TERMS(lq, lp, w, log_w, log_1mw)
            out += (w_div * inv_temp) * (g - tl.exp(lq) * score_sum[:, None])
        out = tl.where(weight[:, None] == 0.0, 0.0, out * weight[:, None])
        tl.store(OUT + rows[:, None] * stride_o + cols[None, :], out.to(OUT.dtype.element_ty), mask=mask)
