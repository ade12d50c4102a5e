"""A top-k teacher on Triton: :class:`TritonTopK` runs ``topk_divergence``, ``topk_divergence_gradient`` and
``kd_loss``/``kd_logit_gradient`` with a ``(logprobs, ids)`` teacher as one kernel
(:func:`backends.triton_topk_kernels.topk_rows`) per call.

Mixed into :class:`backends.triton_backend.TritonBackend` ahead of the torch backend, whose validation it reuses
(:meth:`TorchFamily._topk_inputs`, :meth:`TorchFamily._family_kd_inputs`: the reference's checks, in its order)
together with the Triton backend's launch helpers. What is not ``[N, V]`` stays in torch: the teacher's bucket
log-probabilities are formed in float64 on ``[N, K]`` (its tail ``log(1 - sum exp(l))`` loses ~1e-7 / tail of
relative precision in float32). The student's side, the divergence and the gradient are the kernel's: the
student's logits are read as stored (float64, float32 or bfloat16, accumulated in float32 unless float64), and
the only ``[N, V]`` tensor allocated is the gradient, written once, with the cross-entropy of ``kd_loss`` fused
into the same pass.
"""

from __future__ import annotations

import math
from typing import Any

from reference import checks, topk
from reference.divergences import TOPK_DIVERGENCE_NAMES, check_divergence

CAPABILITIES: frozenset[str] = frozenset({"topk_divergence", "topk_divergence_gradient", "kd_loss_topk"})
"""What :class:`TritonTopK` adds to a backend's capabilities."""


def teacher_buckets(torch: Any, lp: Any, mode: str, temperature: float, has_tail: bool) -> Any:
    """The teacher's log-probabilities over the buckets, float64 ``[N, K + 1]`` from ``[N, K]`` log-probs: the K
    ids, then the tail (``-inf`` when there is no tail bucket), as :func:`reference.topk._teacher_buckets`."""
    lp64 = lp.to(torch.float64)
    no_tail = torch.full_like(lp64[:, :1], -math.inf)
    if mode == "renormalize":
        return torch.cat([torch.log_softmax(lp64 / temperature, dim=-1), no_tail], dim=-1)
    lse = torch.logsumexp(lp64, dim=-1, keepdim=True)
    over = lse >= 0.0  # mass 1 (or rounding above it): renormalize, empty tail
    known = torch.where(over, lp64 - lse, lp64)
    if not has_tail:  # K = V: the K ids are the whole distribution
        return torch.cat([known - torch.where(over, 0.0, lse), no_tail], dim=-1)
    tail = torch.where(over, -math.inf, torch.log(-torch.expm1(lse.clamp(max=0.0))))
    return torch.cat([known, tail], dim=-1)


class TritonTopK:
    """The top-k members and ``kd_loss`` with a top-k teacher as Triton kernels (module docstring)."""

    capabilities: frozenset[str] = CAPABILITIES
    student_tail: Any = None
    """The student's tail bucket (a ``@triton.jit`` function); None: :func:`triton_topk_kernels.student_tail`."""

    # ---- the launch --------------------------------------------------------------------------------------

    def _topk_kernel(
        self,
        torch: Any,
        s: Any,
        lp: Any,
        ids: Any,
        mode: str,
        name: str,
        w: float | None,
        temperature: float,
        compute: Any,
        *,
        gradient: Any = None,
        ce: tuple[Any, Any, Any, float] | None = None,
        w_div: float = 1.0,
    ) -> tuple[Any, Any, Any]:
        """One launch of :func:`~backends.triton_topk_kernels.topk_rows` on student logits ``s`` ``[..., V]``
        and a validated pair ``lp``, ``ids`` ``[..., K]``.

        ``gradient``: the dtype of the gradient to write (None: values only). ``ce``: ``(labels, valid, weight,
        w_ce)`` for ``kd_loss`` (labels in range, per-row weights), None for the bare member. Returns
        ``(value [N], ce [N] or None, gradient [..., V] or None)``.
        """
        import triton

        from backends import triton_kernels as core
        from backends import triton_topk_kernels as kernels
        from backends.triton_terms import params, terms_of

        rows = self._rows(torch, s, compute)  # type: ignore[attr-defined]
        n, vocab = rows.shape
        k = ids.shape[-1]
        has_tail = mode == "tail" and k < vocab
        ix = ids.reshape(-1, k).to(torch.int64).contiguous()
        logp = teacher_buckets(torch, lp.reshape(-1, k), mode, temperature, has_tail).to(compute).contiguous()
        terms = terms_of(name, w)
        w_ce = 0.0 if ce is None else ce[3]
        params_t = params(torch, compute, rows.device, temperature=temperature, w_ce=w_ce, w_div=w_div, w=w)
        value = torch.empty(n, dtype=compute, device=rows.device)
        ce_out = torch.empty(n, dtype=compute, device=rows.device) if ce is not None else value
        out = torch.empty(rows.shape, dtype=gradient, device=rows.device) if gradient is not None else value
        if ce is not None:
            y, valid, weight = (x.reshape(-1).contiguous() for x in ce[:3])
            weight = weight.to(compute)
        else:
            y, valid, weight = ix, ix, value  # unread
        if n:
            block_n, block_v = self._blocks(n, vocab)  # type: ignore[attr-defined]
            self._launch(kernels.topk_rows, (-(-n // block_n),),  # type: ignore[attr-defined]
                rows, logp, ix, y, weight, valid, params_t, value, ce_out, out, n, vocab, k, rows.stride(0),
                out.stride(0) if gradient is not None else 0,
                TAIL=has_tail, RENORMALIZE=mode == "renormalize", HAS_CE=ce is not None and w_ce != 0.0,
                HAS_DIV=w_div != 0.0, HAS_WEIGHT=ce is not None, GRADIENT=gradient is not None, TERMS=terms,
                UPDATE=self.update or core.online_lse_step,  # type: ignore[attr-defined]
                TAIL_Q=self.student_tail or kernels.student_tail, ACC=self._acc(torch, compute),  # type: ignore[attr-defined]
                BLOCK_N=block_n, BLOCK_V=block_v, BLOCK_K=triton.next_power_of_2(k),
            )  # fmt: skip
        grad = out.reshape(s.shape) if gradient is not None else None
        return value, (ce_out if ce is not None else None), grad

    # ---- the members -------------------------------------------------------------------------------------

    def _topk(
        self, s: Any, lp: Any, ids: Any, mode: str, name: str, w: float | None, temperature: float
    ) -> tuple[Any, Any]:
        """Per-row value and gradient over the buckets, as :meth:`TorchFamily._topk`, from one kernel."""
        torch = self._torch()  # type: ignore[attr-defined]
        compute = torch.float64 if s.dtype == torch.float64 else torch.float32
        own = s.dtype if s.is_floating_point() else compute
        value, _, gradient = self._topk_kernel(torch, s, lp, ids, mode, name, w, temperature, compute, gradient=own)
        return value.reshape(s.shape[:-1]), gradient

    def _topk_member(
        self, want_gradient: bool, student_logits: Any, logprobs: Any, ids: Any, mode: Any, divergence: Any,
        beta: Any, temperature: Any,
    ) -> Any:  # fmt: skip
        """``topk_divergence`` (or its gradient): the reference's checks in its order, then one kernel that
        reads the student as stored and computes the gradient only when asked."""
        mode = topk.check_mode(mode)
        member, w = check_divergence(divergence, beta, None, TOPK_DIVERGENCE_NAMES)
        temperature = checks.check_temperature(temperature)
        torch = self._family_torch()  # type: ignore[attr-defined]
        s = self._tensor(torch, "student_logits", student_logits)  # type: ignore[attr-defined]
        lp, ix = self._topk_inputs(torch, s, logprobs, ids, mode, temperature)  # type: ignore[attr-defined]
        compute, out = self._compute(torch, s, lp)  # type: ignore[attr-defined]
        own = s.dtype if s.is_floating_point() else torch.float64
        value, _, gradient = self._topk_kernel(
            torch, s, lp, ix, mode, member.name, w, temperature, compute, gradient=own if want_gradient else None
        )
        return gradient if want_gradient else value.reshape(s.shape[:-1]).to(out)

    # ---- kd_loss -----------------------------------------------------------------------------------------

    def _kd_rows_topk(self, call: Any, want_gradient: bool) -> tuple[Any, Any]:
        """:meth:`TorchFamily._kd_rows_topk` as one kernel: ``alpha CE + (1 - alpha) T^2 D`` per row and, when
        ``want_gradient``, ``call.weight`` times its gradient (CE and divergence in the same pass, 0 on ignored
        rows) in the student's own dtype."""
        torch = call.torch
        lp, ix, mode = call.teacher
        alpha, temperature = call.alpha, call.temperature
        w_div = (1.0 - alpha) * temperature**2
        own = call.s.dtype if call.s.is_floating_point() else torch.float64
        value, ce, gradient = self._topk_kernel(
            torch, call.s, lp, ix, mode, call.name, call.w, temperature, call.compute,
            gradient=own if want_gradient else None, ce=(call.y, call.valid, call.weight, alpha), w_div=w_div,
        )  # fmt: skip
        shape = call.s.shape[:-1]
        per_row = torch.zeros_like(value) if alpha == 0.0 else alpha * ce
        if w_div != 0.0:
            per_row = per_row + w_div * value
        return per_row.reshape(shape), gradient


__all__ = ["CAPABILITIES", "TritonTopK", "teacher_buckets"]
