"""Triton kernels of the dense divergence family: a port of :mod:`reference.divergences` over row statistics.

Each member is one ``@triton.jit`` element function ``terms(lq, lp, W) -> (value, score)``
(:mod:`backends.triton_terms`, shared with the top-k kernels) on a chunk of log-probabilities
``lq = log softmax(s/T)``, ``lp = log softmax(t/T)``: the entry's share of the row's value, and its score
``g_v = dD / d log q_v``. Scalars come in ``PARAMS`` (:data:`backends.triton_terms.PARAM_NAMES`).

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

from backends.triton_kernels import ce_gradient, load_stats
from backends.triton_terms import INV_TEMP, W_BLOCK, W_CE, W_DIV

N_ROWS = 2
VALUE, SCORE_SUM = range(N_ROWS)
"""Layout of the ``[N, 2]`` output of :func:`divergence_rows`."""

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
    PARAMS,
    TERMS: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """``OUT[i] = (sum_v value_v, sum_v g_v)`` for each row, from ``STATS`` of :func:`row_stats`."""
    inv_temp = tl.load(PARAMS + INV_TEMP).to(ACC)
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n_rows
    _, _, mq, lseq, mp, lsep = load_stats(STATS, rows, row_ok, ACC)
    value = tl.zeros((BLOCK_N,), ACC)
    score = tl.zeros((BLOCK_N,), ACC)
    for v0 in range(0, vocab, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        mask = row_ok[:, None] & (cols[None, :] < vocab)
        lq = _log_softmax(_load(S, rows, cols, mask, stride_s, ACC), inv_temp, mq, lseq)
        lp = _log_softmax(_load(T, rows, cols, mask, stride_t, ACC), inv_temp, mp, lsep)
        v, g = TERMS(lq, lp, PARAMS + W_BLOCK)
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
    PARAMS,
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
    inv_temp = tl.load(PARAMS + INV_TEMP).to(ACC)
    w_ce = tl.load(PARAMS + W_CE).to(ACC)
    w_div = tl.load(PARAMS + W_DIV).to(ACC)
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n_rows
    m1, lse1, mq, lseq, mp, lsep = load_stats(STATS, rows, row_ok, ACC)
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
            _, g = TERMS(lq, lp, PARAMS + W_BLOCK)
            out += (w_div * inv_temp) * (g - tl.exp(lq) * score_sum[:, None])
        out = tl.where(weight[:, None] == 0.0, 0.0, out * weight[:, None])
        tl.store(OUT + rows[:, None] * stride_o + cols[None, :], out.to(OUT.dtype.element_ty), mask=mask)
