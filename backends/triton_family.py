"""The dense divergence family on the Triton backend: :mod:`backends.triton_family_kernels` behind the
members of :class:`backends.family_members.FamilyMembers` and the family ``kd_loss``.

:class:`TritonFamily` is mixed in before :class:`backends.torch_backend.TorchBackend` (whose
:class:`~backends.torch_family.TorchFamily` keeps the validation, the ``kd_loss`` plumbing and the top-k
teacher); it overrides only the row math of a dense teacher:

- :meth:`TritonFamily._family_dense`: ``reverse_kl``, ``generalized_jsd``, ... and their ``_gradient`` twins.
- :meth:`TritonFamily._kd_rows_dense`: ``kd_loss`` / ``kd_logit_gradient`` with another ``divergence`` or a
  ``normalizer``.

Each is three passes over the rows: the statistics (:func:`backends.triton_kernels.row_stats`, which also
validates the values), the per-row value and score sum, and, for a gradient, one output pass.
"""

from __future__ import annotations

from typing import Any

from backends.protocol import FAMILY_MEMBERS
from backends.torch_family import KDCall, _own_dtype
from backends.triton_terms import params, terms_of
from reference import checks
from reference.divergences import check_divergence

FAMILY_CAPABILITIES: frozenset[str] = frozenset(
    {*(m for m in FAMILY_MEMBERS if not m.startswith("topk_divergence")), "kd_loss_divergence", "kd_loss_normalizer"}
)
"""What this mixin adds to the Triton backend's ``capabilities``: the dense members and the ``kd_loss``
keywords ``divergence=``/``beta=``/``skew=`` and ``normalizer=`` (a top-k teacher is not ported here)."""


class TritonFamily:
    """The dense divergence family as Triton kernels (mixed into :class:`backends.triton_backend.TritonBackend`)."""

    family_terms: dict[str, Any] | None = None
    """The element functions by member name; None: :data:`triton_terms.TERMS` (a port may plant one)."""

    def _divergence_rows(
        self, torch: Any, s2: Any, t2: Any, stats: Any, name: str, w: float | None, temperature: float
    ) -> tuple[Any, Any]:
        """``[N, 2]`` per-row ``(value, sum g)`` of 2-D rows ``s2``, ``t2``, and the element function used.

        Forward KL's value is the statistics pass's own (``stats[:, KL]``, what ``kl_divergence`` returns), so
        ``generalized_jsd(beta=0)`` and a family ``kd_loss`` with forward KL equal the core members exactly."""
        from backends import triton_family_kernels as kernels
        from backends import triton_kernels as core

        terms = terms_of(name, w, self.family_terms)
        n, vocab = s2.shape
        rows = torch.empty((n, kernels.N_ROWS), dtype=stats.dtype, device=s2.device)
        if n:
            block_n, block_v = self._blocks(n, vocab)
            self._launch(kernels.divergence_rows, (-(-n // block_n),),
                s2, t2, stats, rows, n, vocab, s2.stride(0), t2.stride(0),
                params(torch, stats.dtype, s2.device, temperature=temperature, w=w),
                TERMS=terms, ACC=self._acc(torch, stats.dtype), BLOCK_N=block_n, BLOCK_V=block_v,
            )  # fmt: skip
            if name == "forward_kl" or (name == "generalized_jsd" and w == 0.0):
                rows[:, kernels.VALUE] = stats[:, core.KL]
        return rows, terms

    def _divergence_gradient(
        self,
        torch: Any,
        s2: Any,
        t2: Any,
        stats: Any,
        rows: Any,
        terms: Any,
        *,
        w: float | None,
        temperature: float,
        out_dtype: Any,
        ce: tuple[Any, float] | None = None,
        w_div: float = 1.0,
        weight: Any = None,
    ) -> Any:
        """``weight_row (w_ce (softmax(s) - onehot(y)) + w_div dD/ds)`` with ``ce = (labels, w_ce)``; no CE
        term when ``ce`` is None, no divergence term when ``w_div`` is 0, weight 1 when ``weight`` is None."""
        from backends import triton_family_kernels as kernels

        gradient = torch.empty(s2.shape, dtype=out_dtype, device=s2.device)
        n, vocab = s2.shape
        if n == 0:
            return gradient
        y, w_ce = ce if ce is not None else (stats, 0.0)  # stats: a placeholder pointer, never read
        block_n, block_v = self._blocks(n, vocab)
        self._launch(kernels.divergence_gradient, (-(-n // block_n),),
            s2, t2, y, stats, rows, stats if weight is None else weight, gradient, n, vocab, s2.stride(0),
            t2.stride(0), gradient.stride(0),
            params(torch, stats.dtype, s2.device, temperature=temperature, w_ce=w_ce, w_div=w_div, w=w),
            HAS_CE=ce is not None, HAS_DIV=w_div != 0.0, HAS_WEIGHT=weight is not None, TERMS=terms,
            ACC=self._acc(torch, stats.dtype), BLOCK_N=block_n, BLOCK_V=block_v,
        )  # fmt: skip
        return gradient

    # ---- the members -----------------------------------------------------------------------------------

    def _family_dense(self, name: str, gradient: bool, s: Any, t: Any, temperature: Any, **param: Any) -> Any:
        """One member (``gradient``: its ``_gradient`` twin), with the reference's checks in its order."""
        from backends import triton_kernels as kernels

        divergence, w = check_divergence(name, **param)
        temperature = checks.check_temperature(temperature)
        torch = self._torch()
        s = self._tensor(torch, "student_logits", s)
        t = self._tensor(torch, "teacher_logits", t)
        checks.check_shapes(tuple(s.shape), tuple(t.shape))
        compute, out = self._compute(torch, s, t)
        s2, t2 = self._rows(torch, s, compute), self._rows(torch, t, compute)
        stats = self._stats(torch, s2, t2, temperature=temperature, ce=False, q=True, compute=compute)
        if self._flagged(torch, stats, (kernels.MQ, kernels.MP)):
            self._check_values(torch, [("student_logits", s), ("teacher_logits", t)])
        rows, terms = self._divergence_rows(torch, s2, t2, stats, divergence.name, w, temperature)
        if not gradient:
            return rows[:, 0].reshape(s.shape[:-1]).to(out)
        own = _own_dtype(torch, s.dtype)
        g = self._divergence_gradient(torch, s2, t2, stats, rows, terms, w=w, temperature=temperature, out_dtype=own)
        return g.reshape(s.shape)

    # ---- kd_loss over the family -----------------------------------------------------------------------

    def _kd_rows_dense(self, call: KDCall, want_gradient: bool) -> tuple[Any, Any]:
        """:meth:`TorchFamily._kd_rows` of a dense teacher as kernels: per row ``alpha CE + (1 - alpha) T^2 D``
        and, when asked, ``call.weight * d per_row / ds`` in the student's own dtype (0 on ignored rows).
        The inputs were validated by :meth:`TorchFamily._family_kd_inputs`."""
        torch, alpha, temperature = call.torch, call.alpha, call.temperature
        w_div = (1.0 - alpha) * temperature**2
        s2 = self._rows(torch, call.s, call.compute)
        t2 = self._rows(torch, call.teacher.to(call.s.device), call.compute) if w_div != 0.0 else None
        stats = self._stats(
            torch, s2, t2, temperature=temperature, ce=alpha != 0.0, q=t2 is not None, compute=call.compute
        )
        y1, valid = call.y.reshape(-1), call.valid.reshape(-1)
        per_row = torch.zeros(y1.shape, dtype=call.compute, device=s2.device)
        if alpha != 0.0:
            per_row = per_row + alpha * self._picked_ce(torch, s2, stats, y1, valid, call.compute)
        rows = torch.zeros((s2.shape[0], 2), dtype=call.compute, device=s2.device)
        terms = self._any_terms()  # placeholders when there is no divergence term (alpha = 1)
        if t2 is not None:
            rows, terms = self._divergence_rows(torch, s2, t2, stats, call.name, call.w, temperature)
            per_row = per_row + w_div * rows[:, 0]
        per_row = per_row.reshape(call.y.shape)
        if not want_gradient:
            return per_row, None
        gradient = self._divergence_gradient(
            torch, s2, s2 if t2 is None else t2, stats, rows, terms, w=call.w,
            temperature=temperature, out_dtype=_own_dtype(torch, call.s.dtype),
            ce=(y1, alpha) if alpha != 0.0 else None, w_div=w_div,
            weight=call.weight.reshape(-1).to(call.compute).contiguous(),
        )  # fmt: skip
        return per_row, gradient.reshape(call.s.shape)

    @staticmethod
    def _any_terms() -> Any:
        """An element function for a launch whose divergence term is off (``HAS_DIV`` false: never called)."""
        from backends.triton_terms import forward_kl_terms

        return forward_kl_terms
