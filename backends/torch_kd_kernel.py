"""Forward-KL KD loss and gradient on torch tensors, computed together in row blocks.

``kd_rows(s, t, y, ...)`` returns the per-row loss ``alpha * CE + (1 - alpha) * T^2 * KL(softmax(t/T) ||
softmax(s/T))`` and, when asked, the gradient of the reduced loss with respect to ``s``, written straight
into one ``[..., V]`` output buffer. It is the fast path behind :class:`backends.torch_backend.TorchBackend`
(``kd_loss`` and ``kd_logit_gradient``); inputs are already validated (shapes, dtypes, hyperparameters).

Why it is fast (measured in ``benchmarks/bench_kd.py``; see benchmarks/RESULTS.md)
    * The rows are processed in blocks of about :data:`BLOCK_ELEMENTS` entries per thread, so every
      elementwise pass over a block runs on data that is still in the CPU's caches; only the first read of
      ``s`` and ``t`` and the single write of the gradient go to memory.
    * Scratch space is two blocks (plus a third for bfloat16 inputs), allocated once per call: no
      ``[N, V]`` temporary besides the gradient, so peak extra memory is 1 ``[N, V]`` unit plus a few blocks,
      and there are no fresh page faults per pass.
    * The loss and the gradient share the row statistics: the gradient is formed in the same block pass
      (autograd's backward then only scales it), and the KL terms need no ``log_softmax`` tensor:
      ``KL_i = sum_v e^p_v d_v / Z^p - log Z^p + log Z^q`` with ``d = (t - m_t)/T - (s - m_s)/T``.
    * Validation costs no pass of its own: a row max is NaN for a row with a NaN, ``+inf`` for a row with
      ``+inf`` and ``-inf`` for a row without a finite entry, and the row maxes are needed anyway
      (:func:`row_max_all_finite`).

Numerics
    Rows are shifted by their max before ``exp`` (logits of 1e4 stay finite, ``-inf`` gives exactly 0);
    a KL term whose teacher probability is 0 is exactly 0 (``nansum`` drops the ``0 * -inf`` terms; a
    ``0 * finite`` term is 0 anyway). The gradient is the difference of softmaxes, each formed as
    ``exp((z - m)/T) * c`` where the row's coefficient ``c`` (loss weight, ``T``, row weight and ``1/Z``) is
    computed in float64 and rounded once, and the sums ``Z`` of exponentials are accumulated in float64 (the
    compiled kernel sums in float64; the eager one adds float32 sums of 64 entries in float64,
    :func:`row_sum_wide`). A float32 sum over V terms is what limits autograd through ``log_softmax``, and the
    compiler's reductions add each vector lane sequentially. In float32 the gradient is 2-17x closer to the
    float64 oracle than autograd at V = 1000-4000 and 60-110x at V = 32000 (benchmarks/bench_kd.py
    ``--accuracy``; tests/test_torch_fast_path.py holds it to that).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch

BLOCK_ELEMENTS = 1 << 21
"""Target entries per row block and intra-op thread (8 MiB of float32). Every op on a block is one parallel
region, so a block must be large enough that the regions' start-up and barriers cost little (on a busy CPU
they dominate below about 2^20 entries per thread), and small enough that the scratch (2-3 blocks) stays a
fraction of ``[N, V]``. Measured with benchmarks/bench_kd.py (``torch-eager``); see benchmarks/RESULTS.md."""

BLOCK_ELEMENTS_MAX = 1 << 23
"""At most this many entries per block, whatever the thread count (the scratch is 2-3 blocks)."""


COMPILE_ENV = "KD_TORCH_COMPILE"
"""Environment variable choosing when the compiled kernel is used: ``auto`` (default: for inputs of at least
:data:`COMPILE_MIN_ELEMENTS` entries), ``always`` or ``never``."""

COMPILE_MODES = ("auto", "always", "never")

COMPILE_MIN_ELEMENTS = 1 << 22
"""In ``auto`` mode, smaller inputs run eagerly: compiling a graph (once per dtype and variant, about
15-30 s on a small CPU) pays off only on training-sized inputs."""


def compile_mode() -> str:
    """The mode named by :data:`COMPILE_ENV`; a value that is not a mode is a one-line ValueError."""
    mode = os.environ.get(COMPILE_ENV, "auto").strip().lower() or "auto"
    if mode not in COMPILE_MODES:
        raise ValueError(
            f"{COMPILE_ENV}={os.environ[COMPILE_ENV]!r} is not a mode: use one of {', '.join(COMPILE_MODES)}, "
            "or unset it"
        )
    return mode


_compiled: dict[str, Any] = {}


def compiled_fused_rows() -> Any:
    """``torch.compile(fused_rows, dynamic=True)``, or None when compiling failed before (eager fallback)."""
    if "fn" not in _compiled:
        _compiled["fn"] = torch.compile(fused_rows, dynamic=True)
    return _compiled["fn"]


def run_compiled(
    s: torch.Tensor,
    t: torch.Tensor,
    y: torch.Tensor,
    row_weight: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
    compute: torch.dtype,
    gradient_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor] | None:
    """:func:`fused_rows` compiled: ``(loss, gradient, m_s, m_t)``, or None (and one warning per process)
    when torch.compile cannot run here (the caller then runs :func:`kd_rows`)."""
    fn = compiled_fused_rows()
    if fn is None:
        return None
    t_compute = torch.tensor(temperature, dtype=compute, device=s.device)
    hyper = torch.tensor([temperature, alpha, 1.0 - alpha], dtype=torch.float64, device=s.device)
    try:
        return fn(s, t, y, row_weight, t_compute, hyper, gradient_dtype, compute, temperature == 1.0)
    except Exception as error:  # no C++ compiler, an unsupported device, ...: fall back to the eager kernel
        _compiled["fn"] = None
        warnings.warn(
            f"torch.compile of the KD kernel failed ({type(error).__name__}: {str(error).splitlines()[0]}); "
            f"using the eager kernel from now on (set {COMPILE_ENV}=never to skip the attempt)",
            RuntimeWarning,
            stacklevel=2,
        )
        return None


def use_compiled(numel: int) -> bool:
    """Whether an input of ``numel`` entries goes through the compiled kernel (see :data:`COMPILE_ENV`)."""
    mode = compile_mode()
    return mode == "always" or (mode == "auto" and numel >= COMPILE_MIN_ELEMENTS)


def row_max_all_finite(*row_maxes: torch.Tensor) -> bool:
    """Whether every row max is finite: one host sync; False flags a NaN, a +inf or a row without a finite
    entry in the logits the maxes came from (the caller then asks the reference's checks for the message)."""
    return bool(torch.stack([m.isfinite().all() for m in row_maxes]).all())


def block_rows(vocab: int) -> int:
    """Rows per block for a vocabulary of ``vocab`` entries (at least 1); see :data:`BLOCK_ELEMENTS`."""
    elements = min(BLOCK_ELEMENTS * torch.get_num_threads(), BLOCK_ELEMENTS_MAX)
    return max(1, elements // max(vocab, 1))


SUM_SEGMENT = 64
"""Entries per float32 partial sum in :func:`row_sum_wide` (0: one float64 sum)."""


def row_sum_wide(x: torch.Tensor) -> torch.Tensor:
    """Row sums of a 2-D float tensor as float64 ``[N, 1]``: float32 sums over segments of :data:`SUM_SEGMENT`
    entries, then their float64 sum. Nearly as accurate as a float64 sum (float32 rounding only within a
    segment) and about 4x cheaper in eager torch, where ``sum(dtype=float64)`` first copies ``x`` to float64."""
    rows, vocab = x.shape
    head = vocab - vocab % SUM_SEGMENT if SUM_SEGMENT else 0
    if head == 0:
        return x.sum(dim=1, keepdim=True, dtype=torch.float64)
    total = x[:, :head].reshape(rows, -1, SUM_SEGMENT).sum(dim=2).sum(dim=1, keepdim=True, dtype=torch.float64)
    if head < vocab:
        total = total + x[:, head:].sum(dim=1, keepdim=True, dtype=torch.float64)
    return total


def kd_rows(
    s: torch.Tensor,
    t: torch.Tensor,
    y: torch.Tensor,
    *,
    m_s: torch.Tensor,
    m_t: torch.Tensor,
    temperature: float,
    alpha: float,
    row_weight: torch.Tensor | None,
    compute: torch.dtype,
    gradient_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-row KD loss of 2-D ``s``, ``t`` ``[N, V]`` with labels ``y`` ``[N]`` and, optionally, the gradient.

    ``m_s``, ``m_t`` are the (finite) row maxes of ``s`` and ``t`` ``[N]``; ``y`` holds valid labels, with
    ignored rows already mapped to any in-range label (their ``row_weight`` is 0). ``row_weight`` ``[N]``
    multiplies each row's gradient (``valid / #valid`` for ``mean``, ``valid`` for ``sum`` and ``none``);
    with ``gradient_dtype`` None no gradient is formed. The loss is in ``compute`` and is not masked: the
    caller zeroes ignored rows.
    """
    n, v = s.shape
    if n == 0:
        empty = None if gradient_dtype is None else torch.empty((0, v), dtype=gradient_dtype, device=s.device)
        return torch.empty(0, dtype=compute, device=s.device), empty
    w_ce, w_kl = alpha, 1.0 - alpha
    device = s.device
    loss = torch.empty(n, dtype=compute, device=device)
    gradient = None if gradient_dtype is None else torch.empty((n, v), dtype=gradient_dtype, device=device)
    rows = min(block_rows(v), n)
    a = torch.empty((rows, v), dtype=compute, device=device)
    b = torch.empty_like(a)
    # c: where a block's gradient is formed; the gradient itself when it has the compute dtype.
    c = torch.empty_like(a) if gradient is None or gradient_dtype != compute else None
    y = y.to(torch.int64)
    wide = torch.float64  # per-row coefficients: formed in float64, rounded once to the compute dtype
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        k = r1 - r0
        sb, tb, ab, bb = s[r0:r1], t[r0:r1], a[:k], b[:k]
        cb = c[:k] if c is not None else gradient[r0:r1]
        ms, mt = m_s[r0:r1, None].to(compute), m_t[r0:r1, None].to(compute)
        yb = y[r0:r1, None]
        weight = torch.ones((k, 1), dtype=wide, device=device) if row_weight is None else row_weight[r0:r1, None]
        weight = weight.to(wide)
        block_loss = w_ce * (ms - sb.gather(1, yb).to(compute)) if w_ce != 0.0 else 0.0  # -(s_y - m_s)
        z1 = None
        if w_kl != 0.0:
            torch.sub(sb, ms, out=ab).div_(temperature)  # (s - m_s)/T: shifted logits of q, max entry 0
            torch.sub(tb, mt, out=bb).div_(temperature)  # (t - m_t)/T: shifted logits of p
            torch.exp(ab, out=cb)
            zq = row_sum_wide(cb)
            torch.sub(bb, ab, out=ab)  # d = log(e^p / e^q)
            bb.exp_()
            zp = row_sum_wide(bb)
            if gradient is not None:
                coef_q = w_kl * temperature / zq
                if temperature == 1.0 and w_ce != 0.0:  # softmax(s) = softmax(s/T): one exp serves both
                    coef_q = coef_q + w_ce / zq
                cb.mul_((coef_q * weight).to(compute))
                cb.addcmul_(bb, (-w_kl * temperature / zp * weight).to(compute))
            zp_c, zq_c = zp.to(compute), zq.to(compute)  # the loss is formed in the compute dtype
            kl = ab.mul_(bb).nansum(dim=1, keepdim=True) / zp_c - zp_c.log() + zq_c.log()
            block_loss = block_loss + (w_kl * temperature * temperature) * kl
            if temperature == 1.0:
                z1 = zq
        if w_ce != 0.0:
            if z1 is None:
                target = bb if (gradient is not None and w_kl != 0.0) else cb
                torch.sub(sb, ms, out=target).exp_()
                z1 = row_sum_wide(target)
                if gradient is not None:
                    coef = (w_ce * weight / z1).to(compute)
                    if target is cb:
                        cb.mul_(coef)
                    else:
                        cb.addcmul_(bb, coef)
            block_loss = block_loss + w_ce * z1.to(compute).log()
            if gradient is not None:
                cb.scatter_add_(1, yb, (-w_ce * weight).to(compute))
        if gradient is not None and c is not None:
            gradient[r0:r1].copy_(cb)
        loss[r0:r1] = block_loss.squeeze(1) if isinstance(block_loss, torch.Tensor) else block_loss
    return loss, gradient


def as_rows(x: torch.Tensor) -> torch.Tensor:
    """``[..., V]`` as a contiguous 2-D ``[N, V]`` view (a copy only when ``x`` is not contiguous)."""
    return x.reshape(-1, x.shape[-1]) if x.is_contiguous() else x.contiguous().reshape(-1, x.shape[-1])


def fused_rows(
    s: torch.Tensor,
    t: torch.Tensor,
    y: torch.Tensor,
    row_weight: torch.Tensor,
    temperature: torch.Tensor,
    hyper: torch.Tensor,
    gradient_dtype: torch.dtype | None,
    compute: torch.dtype,
    unit_temperature: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """The same per-row loss and gradient as :func:`kd_rows`, written whole-tensor for ``torch.compile``.

    The compiler fuses it into a few loops over each row (row max; the three sums of exponentials and
    the KL sum; the gradient), with no ``[N, V]`` temporary. Hyperparameters come as tensors so one compiled
    graph serves every temperature and alpha: ``temperature`` 0-d in ``compute``, ``hyper`` the float64
    ``[T, alpha, 1 - alpha]``; ``row_weight`` is float64. Returns ``(loss, gradient, m_s, m_t)``: the row
    maxes let the caller validate the inputs after the fact (the result is discarded when they flag).
    """
    s = s.to(compute)
    t = t.to(compute)
    m_s = s.amax(dim=1, keepdim=True)
    m_t = t.amax(dim=1, keepdim=True)
    shifted = s - m_s
    a = shifted / temperature  # log of the unnormalized q = softmax(s/T), max entry 0
    b = (t - m_t) / temperature  # log of the unnormalized p = softmax(t/T)
    # The sums are accumulated in float64: the compiler's reductions add each vector lane sequentially, whose
    # float32 rounding error grows with V (1e-5 relative at V = 32000, as large as autograd's own error).
    wide = torch.float64
    z1 = shifted.exp().sum(dim=1, keepdim=True, dtype=wide)
    zq = z1 if unit_temperature else a.exp().sum(dim=1, keepdim=True, dtype=wide)
    e_p = b.exp()
    zp = e_p.sum(dim=1, keepdim=True, dtype=wide)
    zero = torch.zeros((), dtype=compute, device=s.device)
    kl_terms = torch.where(e_p == 0, zero, e_p * (b - a))  # p_v = 0: the term is exactly 0
    kl = kl_terms.sum(dim=1, keepdim=True, dtype=wide) / zp - zp.log() + zq.log()
    ce = z1.log() - shifted.gather(1, y[:, None])
    t64, w_ce, w_kl = hyper[0], hyper[1], hyper[2]
    loss = torch.where(w_ce == 0, 0.0, w_ce * ce) + torch.where(w_kl == 0, 0.0, (w_kl * t64**2) * kl)
    gradient = None
    if gradient_dtype is not None:
        # Softmaxes recomputed from the logits, each exp(x) times one coefficient rounded once from float64
        # (row weight, loss weight, T and 1/Z together), so that the compiler forms the gradient in one loop that
        # reads s and t and writes the result. Not exp(x - log Z): that costs |log Z| ulps of relative accuracy.
        weight = row_weight[:, None]
        c1 = (w_ce * weight / z1).to(compute)
        cq = (w_kl * t64 * weight / zq).to(compute)
        cp = (w_kl * t64 * weight / zp).to(compute)
        one_hot = torch.arange(s.shape[1], device=s.device)[None, :] == y[:, None]
        label = (w_ce * weight).to(compute)
        # p again, as ((m_t - t) / -T).exp(): the same values as e_p (negation is exact), but not the same graph
        # node, so the compiler recomputes it in the gradient's loop instead of storing e_p as a [N, V] buffer.
        e_p_again = ((m_t - t) / -temperature).exp()
        g = shifted.exp() * c1 + (a.exp() * cq - e_p_again * cp)
        gradient = torch.where(one_hot, g - label, g).to(gradient_dtype)
    return loss[:, 0].to(compute), gradient, m_s[:, 0], m_t[:, 0]
