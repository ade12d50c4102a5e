"""Triton kernels of a top-k teacher (:mod:`reference.topk`): bucket log-probabilities, the divergence over the
buckets, and the gradient with respect to the student's logits, fused with the cross-entropy of ``kd_loss``.

One program owns ``BLOCK_N`` rows. Its first pass walks the student's vocabulary in chunks of ``BLOCK_V``
columns with the online log-sum-exp (:func:`backends.triton_kernels.online_lse_step`) and keeps per row:

- ``(m1, z1)`` of ``s`` (the cross-entropy, when ``HAS_CE``);
- ``(mq, zq)`` of ``x = s / T`` (every bucket but ``renormalize``'s is a log-probability of ``softmax(x)``);
- ``(mt, zt)`` of ``x`` over the columns *not* among the row's K ids (``TAIL``): the student's tail bucket
  ``log Q_tail = (mt - mq) + log(zt / zq)``, computed exactly. ``log(1 - sum q[ids])`` would cancel catastrophically
  when the top-k holds nearly all the mass; membership is a loop over the K ids against each chunk's columns.

The bucket stage then reads the K ids (``BLOCK_K``, the next power of 2 of K, padded with empty buckets), the
student's logits at them and the teacher's bucket log-probabilities (``LOGP`` ``[N, K + 1]``, last column the
teacher's tail: formed by the caller in float64 on ``[N, K]``), and evaluates the member's terms
(``TERMS``: an element function of :mod:`backends.triton_terms`, shared with the dense family) over the
K (+ 1) buckets: the value ``D`` per row, and the scores ``g_b = dD / d log Q_b``. The second pass
(``GRADIENT``) writes the gradient once:

``OUT = weight_row (w_ce (softmax(s) - onehot(y)) + w_div dD/ds)``, with ``dD/ds_v = (g_{k(v)} - q_v sum_b g_b +
[v not in ids] (q_v / Q_tail) g_tail) / T`` (the ``g_{k(v)}`` term only at the ids), and in ``renormalize``
``dD/ds_v = (g_k - Q_k sum g) / T`` at the ids and exactly 0 elsewhere. ``w_ce = 0, w_div = 1`` is the bare
member ``topk_divergence_gradient``; ``w_ce = alpha, w_div = (1 - alpha) T^2`` is ``kd_loss``.

Dtypes: ``S`` is loaded as stored (float64, float32 or bfloat16) and everything is accumulated in ``ACC``
(float64 for float64 inputs, float32 otherwise). Scalars that need the accumulation dtype's precision (the
temperature, the loss weights, the member's parameter and its logarithms) come in ``PARAMS`` (a tensor of
``ACC``, layout :data:`backends.triton_terms.PARAM_NAMES`): compiled Triton passes Python floats as float32,
which would round ``beta = 1 - 1e-12`` to 1.

The student's tail (``TAIL_Q``, :func:`student_tail`) and the online step (``UPDATE``) are kernel parameters, so
that a port can plant a broken one without a copy of the kernel (tests/ports/bug_triton_topk_tail_cancels.py).
"""

from __future__ import annotations

import triton
import triton.language as tl

from backends.triton_kernels import ce_gradient
from backends.triton_terms import INV_TEMP, W_BLOCK, W_CE, W_DIV

# --------------------------------------------------------------------------------------------------------
# Helpers.
# --------------------------------------------------------------------------------------------------------


@triton.jit
def student_tail(mt, zt, mq, lzq, lq_k, kmask):
    """``log Q_tail``: the log-sum-exp ``(mt, zt)`` of the columns outside the ids less the row's ``(mq, log zq)``,
    ``-inf`` when every column outside the ids is ``-inf``. (``lq_k``, the ids' log-probabilities, and ``kmask``
    are there for a port to plant the cancelling form.)"""
    return tl.where(zt == 0.0, -float("inf"), (mt - mq) + (tl.log(zt) - lzq))


@triton.jit
def _members(IDS, rows, row_ok, cols, k, G, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr):
    """Which columns ``cols`` of each row are among its K ids, and the entry of ``G`` ``[BLOCK_N, BLOCK_K]`` at
    that id (0 elsewhere): a loop over the K ids, each compared with the whole chunk."""
    member = tl.zeros((BLOCK_N, BLOCK_V), tl.int1)
    at = tl.zeros((BLOCK_N, BLOCK_V), G.dtype)
    slots = tl.arange(0, BLOCK_K)
    for j in range(0, k):
        id_j = tl.load(IDS + rows * k + j, mask=row_ok, other=-1)
        hit = cols[None, :] == id_j[:, None]
        member = member | hit
        g_j = tl.sum(tl.where(slots[None, :] == j, G, 0.0), axis=1)
        at = tl.where(hit, g_j[:, None], at)
    return member, at


# --------------------------------------------------------------------------------------------------------
# The kernel.
# --------------------------------------------------------------------------------------------------------


@triton.jit
def topk_rows(
    S,
    LOGP,
    IDS,
    Y,
    WEIGHT,
    VALID,
    PARAMS,
    VALUE,
    CE,
    OUT,
    n_rows,
    vocab,
    k,
    stride_s,
    stride_o,
    TAIL: tl.constexpr,
    RENORMALIZE: tl.constexpr,
    HAS_CE: tl.constexpr,
    HAS_DIV: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    GRADIENT: tl.constexpr,
    TERMS: tl.constexpr,
    UPDATE: tl.constexpr,
    TAIL_Q: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Per row: ``VALUE`` = the divergence over the buckets, ``CE`` = the cross-entropy (``HAS_CE``) and, when
    ``GRADIENT``, ``OUT`` = the weighted gradient (module docstring). ``TAIL``: a (K+1)-th bucket (mode
    ``tail`` with K < V); ``RENORMALIZE``: the student is renormalized over its K ids; neither: mode ``tail``
    with K = V, the dense divergence. ``Y`` holds in-range labels (ignored rows mapped to any column)."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n_rows
    inv_temp = tl.load(PARAMS + INV_TEMP)
    neg_inf = tl.full((BLOCK_N,), -float("inf"), ACC)
    zeros = tl.zeros((BLOCK_N,), ACC)
    none = tl.zeros((BLOCK_K,), ACC)  # a tile with no ids: the first pass does not need them
    m1, z1, mq, zq, mt, zt = neg_inf, zeros, neg_inf, zeros, neg_inf, zeros

    # ---- pass 1: log-sum-exps over the vocabulary ----
    if HAS_CE or not RENORMALIZE:
        for v0 in range(0, vocab, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            mask = row_ok[:, None] & (cols[None, :] < vocab)
            s = tl.load(S + rows[:, None] * stride_s + cols[None, :], mask=mask, other=-float("inf")).to(ACC)
            if HAS_CE:
                m1, z1, _ = UPDATE(m1, z1, s)
            if not RENORMALIZE:
                x = s * inv_temp
                mq, zq, _ = UPDATE(mq, zq, x)
                if TAIL:
                    member, _ = _members(IDS, rows, row_ok, cols, k, none[None, :], BLOCK_N, BLOCK_V, BLOCK_K)
                    mt, zt, _ = UPDATE(mt, zt, tl.where(member, -float("inf"), x))

    # ---- the buckets ----
    slots = tl.arange(0, BLOCK_K)
    kmask = row_ok[:, None] & (slots[None, :] < k)
    ids = tl.load(IDS + rows[:, None] * k + slots[None, :], mask=kmask, other=0)
    x_k = tl.load(S + rows[:, None] * stride_s + ids, mask=kmask, other=-float("inf")).to(ACC) * inv_temp
    lp_k = tl.load(LOGP + rows[:, None] * (k + 1) + slots[None, :], mask=kmask, other=-float("inf")).to(ACC)
    if RENORMALIZE:
        mq = tl.max(x_k, axis=1)
        mq = tl.where(mq == -float("inf"), 0.0, mq)
        zq = tl.sum(tl.where(kmask, tl.exp(x_k - mq[:, None]), 0.0), axis=1)
    lzq = tl.log(zq)
    lq_k = (x_k - mq[:, None]) - lzq[:, None]  # shift, then normalize: no rounding of |max| into log z
    value_terms, g = TERMS(lq_k, lp_k, PARAMS + W_BLOCK)
    value = tl.sum(tl.where(kmask, value_terms, 0.0), axis=1)
    g = tl.where(kmask, g, 0.0)
    sum_g = tl.sum(g, axis=1)
    lq_t = neg_inf
    g_t = zeros
    if TAIL:
        lq_t = TAIL_Q(mt, zt, mq, lzq, lq_k, kmask)
        lp_t = tl.load(LOGP + rows * (k + 1) + k, mask=row_ok, other=-float("inf")).to(ACC)
        value_t, g_t = TERMS(lq_t, lp_t, PARAMS + W_BLOCK)
        value += value_t
        sum_g += g_t
    tl.store(VALUE + rows, value, mask=row_ok)
    y = tl.zeros((BLOCK_N,), tl.int64)
    lse1 = zeros
    if HAS_CE:
        y = tl.load(Y + rows, mask=row_ok, other=0)
        lse1 = tl.log(z1)
        s_y = tl.load(S + rows * stride_s + y, mask=row_ok, other=0.0).to(ACC)
        tl.store(CE + rows, (m1 + lse1) - s_y, mask=row_ok)

    # ---- pass 2: the gradient, written once ----
    if GRADIENT:
        if RENORMALIZE:
            g = g - tl.exp(lq_k) * sum_g[:, None]  # dD/dx at the ids: the projection of softmax over K
        w_ce = tl.load(PARAMS + W_CE)
        w_div = tl.load(PARAMS + W_DIV)
        weight = tl.full((BLOCK_N,), 1.0, ACC)
        valid = row_ok
        if HAS_WEIGHT:
            weight = tl.load(WEIGHT + rows, mask=row_ok, other=0.0).to(ACC)
            valid = tl.load(VALID + rows, mask=row_ok, other=0) != 0
        for v0 in range(0, vocab, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            mask = row_ok[:, None] & (cols[None, :] < vocab)
            s = tl.load(S + rows[:, None] * stride_s + cols[None, :], mask=mask, other=0.0).to(ACC)
            total = tl.zeros((BLOCK_N, BLOCK_V), ACC)
            if HAS_CE:
                total += w_ce * ce_gradient(s, cols, m1, lse1, y)
            if HAS_DIV:
                member, d = _members(IDS, rows, row_ok, cols, k, g, BLOCK_N, BLOCK_V, BLOCK_K)
                if not RENORMALIZE:
                    lq = (s * inv_temp - mq[:, None]) - lzq[:, None]
                    d = -tl.exp(lq) * sum_g[:, None] + d
                    if TAIL:
                        outside = (member == 0) & (lq_t != -float("inf"))[:, None]
                        d += tl.where(outside, tl.exp(lq - lq_t[:, None]), 0.0) * g_t[:, None]
                total += w_div * (d * inv_temp)
            total = tl.where(valid[:, None], total * weight[:, None], 0.0)
            tl.store(OUT + rows[:, None] * stride_o + cols[None, :], total.to(OUT.dtype.element_ty), mask=mask)
