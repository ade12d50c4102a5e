"""Triton kernels of the KD math: row statistics with an online log-sum-exp, and the outputs built from them.

Every kernel runs one program per block of ``BLOCK_N`` rows and walks the vocabulary in chunks of
``BLOCK_V`` columns, so nothing of size ``[N, V]`` is allocated besides the result. Inputs (float64,
float32 or bfloat16) are loaded in their own dtype and accumulated in ``ACC`` (float64 for float64 inputs,
float32 otherwise).

:func:`row_stats` is the one reduction: for up to three scaled views of the logits, the softmax of ``s``
(CE), of ``s/T`` (q) and of ``t/T`` (p), it keeps per row the running max ``m`` and the sum
``z = sum exp(x - m)``, rescaled by ``exp(m_old - m_new)`` whenever a chunk raises the max (the online
log-sum-exp: :func:`online_lse_step`). With p and q it also keeps the KL numerator
``A = sum_v exp(b_v - m_p) ((b_v - m_p) - (a_v - m_q))`` (rescaled the same way, and shifted when either
max moves), so ``KL = A / z_p - log z_p + log z_q`` needs no second pass. It counts NaN and ``+inf``
entries per row so that the caller can validate inputs without a pass of its own (a row without a finite
entry ends with ``m = -inf``).

The step function is a constexpr argument (``UPDATE``), so a port can plant a broken one
(tests/ports/bug_triton_missing_rescale.py drops the rescale) without a copy of the kernel.

Row statistics layout (``STATS`` float tensor ``[N, 8]``): ``m1, lse1, mq, lseq, mp, lsep, kl, bad``
where ``lse = log z`` (the log-sum-exp of the row is ``m + lse``) and ``bad`` counts NaN/+inf entries.
"""

from __future__ import annotations

import triton
import triton.language as tl

N_STATS = 8
M1, LSE1, MQ, LSEQ, MP, LSEP, KL, BAD = range(N_STATS)


@triton.jit
def online_lse_step(m, z, x):
    """One chunk ``x`` ``[BLOCK_N, BLOCK_V]`` into the running ``(m, z)``; returns ``(m, z, scale)``.

    ``scale = exp(m_old - m_new)`` is what ``z`` (and anything else summed against the old max) must be
    multiplied by; rows still without a finite entry keep ``m = -inf`` and ``z = 0``.
    """
    m_new = tl.maximum(m, tl.max(x, axis=1))
    finite = m_new != -float("inf")
    scale = tl.where(finite, tl.exp(m - tl.where(finite, m_new, 0.0)), 1.0)
    e = tl.where(x == -float("inf"), 0.0, tl.exp(x - tl.where(finite, m_new, 0.0)[:, None]))
    return m_new, z * scale + tl.sum(e, axis=1), scale


@triton.jit
def load_stats(STATS, rows, row_ok, ACC: tl.constexpr):
    """The softmax statistics of :func:`row_stats` for ``rows``: ``(m1, lse1, mq, lseq, mp, lsep)`` in ``ACC``."""
    base = STATS + rows * 8  # the layout of N_STATS, M1, ... (literals: a kernel may read only constexpr globals)
    m1 = tl.load(base + 0, mask=row_ok, other=0.0).to(ACC)
    lse1 = tl.load(base + 1, mask=row_ok, other=0.0).to(ACC)
    mq = tl.load(base + 2, mask=row_ok, other=0.0).to(ACC)
    lseq = tl.load(base + 3, mask=row_ok, other=0.0).to(ACC)
    mp = tl.load(base + 4, mask=row_ok, other=0.0).to(ACC)
    lsep = tl.load(base + 5, mask=row_ok, other=0.0).to(ACC)
    return m1, lse1, mq, lseq, mp, lsep


@triton.jit
def ce_gradient(s, cols, m1, lse1, y):
    """``softmax(s) - onehot(y)`` on one chunk ``s`` ``[BLOCK_N, BLOCK_V]`` at columns ``cols``, from the CE
    statistics ``(m1, lse1)`` of :func:`row_stats`; shared by every gradient kernel with a CE term."""
    q1 = tl.exp((s - m1[:, None]) - lse1[:, None])
    return tl.where(cols[None, :] == y[:, None], q1 - 1.0, q1)


@triton.jit
def _count_bad(x):
    """Per row: how many entries are NaN or +inf."""
    return tl.sum(((x != x) | (x == float("inf"))).to(tl.int32), axis=1)


@triton.jit
def row_stats(
    S,
    T,
    STATS,
    n_rows,
    vocab,
    stride_s,
    stride_t,
    PARAMS,
    HAS_CE: tl.constexpr,
    HAS_Q: tl.constexpr,
    HAS_P: tl.constexpr,
    ACC: tl.constexpr,
    UPDATE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """Row statistics (see the module docstring) of ``S`` (and ``T`` when ``HAS_P``) into ``STATS``; ``1 / T`` is
    ``PARAMS[0]`` (:data:`backends.triton_terms.PARAM_NAMES`)."""
    inv_temp = tl.load(PARAMS).to(ACC)
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n_rows
    neg_inf = tl.full((BLOCK_N,), -float("inf"), ACC)
    zeros = tl.zeros((BLOCK_N,), ACC)
    m1, z1, mq, zq, mp, zp, acc_kl = neg_inf, zeros, neg_inf, zeros, neg_inf, zeros, zeros
    bad = tl.zeros((BLOCK_N,), tl.int32)
    for v0 in range(0, vocab, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        mask = row_ok[:, None] & (cols[None, :] < vocab)
        s = tl.load(S + rows[:, None] * stride_s + cols[None, :], mask=mask, other=-float("inf")).to(ACC)
        bad += _count_bad(s)
        if HAS_CE:
            m1, z1, _ = UPDATE(m1, z1, s)
        if HAS_Q:
            a = s * inv_temp
            mq_old = mq
            mq, zq, _ = UPDATE(mq, zq, a)
            if HAS_P:
                t = tl.load(T + rows[:, None] * stride_t + cols[None, :], mask=mask, other=-float("inf")).to(ACC)
                bad += _count_bad(t)
                b = t * inv_temp
                mp_old, zp_old = mp, zp
                mp, zp, scale_p = UPDATE(mp, zp, b)
                # the old terms were shifted by (mp_old, mq_old): move them to (mp, mq), then rescale
                moved = tl.where(zp_old == 0.0, 0.0, zp_old * ((mq - mq_old) - (mp - mp_old)))
                mp_safe = tl.where(mp == -float("inf"), 0.0, mp)
                mq_safe = tl.where(mq == -float("inf"), 0.0, mq)
                e_p = tl.where(b == -float("inf"), 0.0, tl.exp(b - mp_safe[:, None]))
                d = (b - mp_safe[:, None]) - (a - mq_safe[:, None])
                terms = tl.where(e_p == 0.0, 0.0, e_p * d)
                acc_kl = (acc_kl + moved) * scale_p + tl.sum(terms, axis=1)
    out = STATS + rows * 8
    tl.store(out + 0, m1, mask=row_ok)
    tl.store(out + 1, tl.log(z1), mask=row_ok)
    tl.store(out + 2, mq, mask=row_ok)
    tl.store(out + 3, tl.log(zq), mask=row_ok)
    tl.store(out + 4, mp, mask=row_ok)
    tl.store(out + 5, tl.log(zp), mask=row_ok)
    tl.store(out + 6, acc_kl / zp - tl.log(zp) + tl.log(zq), mask=row_ok)
    tl.store(out + 7, bad.to(ACC), mask=row_ok)


@triton.jit
def softmax_out(
    Z,
    STATS,
    OUT,
    n_rows,
    vocab,
    stride_z,
    stride_o,
    PARAMS,
    LOG: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """``OUT = (log_)softmax(Z / T)`` from the q statistics (``mq``, ``lseq``) in ``STATS``; ``1 / T`` is
    ``PARAMS[0]``."""
    inv_temp = tl.load(PARAMS).to(ACC)
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n_rows
    m = tl.load(STATS + rows * 8 + 2, mask=row_ok, other=0.0).to(ACC)
    lse = tl.load(STATS + rows * 8 + 3, mask=row_ok, other=0.0).to(ACC)
    for v0 in range(0, vocab, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        mask = row_ok[:, None] & (cols[None, :] < vocab)
        z = tl.load(Z + rows[:, None] * stride_z + cols[None, :], mask=mask, other=0.0).to(ACC)
        log_p = (z * inv_temp - m[:, None]) - lse[:, None]
        value = log_p if LOG else tl.exp(log_p)
        tl.store(OUT + rows[:, None] * stride_o + cols[None, :], value.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def kd_gradient(
    S,
    T,
    Y,
    STATS,
    WEIGHT,
    OUT,
    n_rows,
    vocab,
    stride_s,
    stride_t,
    stride_o,
    PARAMS,
    HAS_CE: tl.constexpr,
    HAS_KL: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """``OUT = WEIGHT_row * (w_ce (softmax(s) - onehot(y)) + (w_div / T) (softmax(s/T) - softmax(t/T)))``.

    ``WEIGHT`` ``[N]`` carries the reduction (``1/#valid`` for mean), the mask (0 on ignored rows) and
    autograd's ``grad_output``; ``Y`` holds in-range labels (ignored rows mapped to any column). ``PARAMS``
    holds ``1 / T``, ``w_ce = alpha`` and ``w_div = (1 - alpha) T^2`` (:data:`backends.triton_terms.PARAM_NAMES`).
    """
    inv_temp = tl.load(PARAMS).to(ACC)
    w_ce = tl.load(PARAMS + 1).to(ACC)
    w_div = tl.load(PARAMS + 2).to(ACC)
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n_rows
    m1, lse1, mq, lseq, mp, lsep = load_stats(STATS, rows, row_ok, ACC)
    weight = tl.load(WEIGHT + rows, mask=row_ok, other=0.0).to(ACC)
    y = tl.load(Y + rows, mask=row_ok, other=0)
    for v0 in range(0, vocab, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        mask = row_ok[:, None] & (cols[None, :] < vocab)
        s = tl.load(S + rows[:, None] * stride_s + cols[None, :], mask=mask, other=0.0).to(ACC)
        g = tl.zeros((BLOCK_N, BLOCK_V), ACC)
        if HAS_CE:
            g += w_ce * ce_gradient(s, cols, m1, lse1, y)
        if HAS_KL:
            t = tl.load(T + rows[:, None] * stride_t + cols[None, :], mask=mask, other=0.0).to(ACC)
            q = tl.exp((s * inv_temp - mq[:, None]) - lseq[:, None])
            p = tl.exp((t * inv_temp - mp[:, None]) - lsep[:, None])
            g += (w_div * inv_temp) * (q - p)
        g = g * weight[:, None]
        tl.store(OUT + rows[:, None] * stride_o + cols[None, :], g.to(OUT.dtype.element_ty), mask=mask)
