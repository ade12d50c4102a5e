"""The divergence family on torch tensors: a port of :mod:`reference.divergences` and :mod:`reference.topk`.

:class:`TorchFamily` is mixed into :class:`backends.torch_backend.TorchBackend`; it uses only the backend's
``device`` and ``available()``, so the core fast path stays the torch backend's own. ``kd_loss`` and
``kd_logit_gradient`` hand a call here (:meth:`TorchFamily.family_kd`) whenever it uses anything beyond the
seed's dense forward KL: another ``divergence``, a top-k teacher, or a ``normalizer``.

Same formulas as the reference, in log space (``logaddexp`` mixtures, no ``log(p + eps)``), with the same
dtype policy as the torch backend (float64 in float64, everything else computed in float32 and returned in
the input's dtype). The values are plain torch expressions (autograd differentiates them, an independent
check on the analytic ``_gradient`` twins); the gradients are the analytic formulas.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from backends.family_members import FamilyMembers
from backends.family_rows import ROWS, chain, weighted
from backends.protocol import FAMILY_MEMBERS, OPTIONAL_FEATURES, BackendError
from reference import checks, topk
from reference.divergences import (
    DIVERGENCE_NAMES,
    TOPK_DIVERGENCE_NAMES,
    check_divergence,
)
from reference.kd_family import as_topk, check_normalizer, is_topk

CAPABILITIES: frozenset[str] = frozenset((*FAMILY_MEMBERS, *OPTIONAL_FEATURES))

def _own_dtype(torch: Any, dtype: Any) -> Any:
    """The dtype a gradient comes back in: the student's own float dtype (float64 for integer logits)."""
    return dtype if dtype.is_floating_point else torch.float64


# --------------------------------------------------------------------------------------------------------
# The mixin.
# --------------------------------------------------------------------------------------------------------


class TorchFamily(FamilyMembers):
    """The optional family members on torch tensors (mixed into the torch backend)."""

    capabilities: frozenset[str] = CAPABILITIES
    device: str

    def available(self) -> Any:  # pragma: no cover - provided by the backend
        raise NotImplementedError

    # ---- inputs ----------------------------------------------------------------------------------------

    def _family_torch(self) -> Any:
        available = self.available()
        if not available:
            raise BackendError(f"backend {getattr(self, 'name', 'torch')!r} cannot run here: {available.reason}")
        import torch

        return torch

    def _tensor(self, torch: Any, name: str, x: Any) -> Any:
        if not isinstance(x, torch.Tensor):
            x = torch.from_numpy(np.ascontiguousarray(checks.as_float64_logits(name, x)))
        if x.dtype == torch.bool or x.is_complex():
            raise ValueError(checks.logits_dtype_message(name, str(x.dtype).removeprefix("torch.")))
        return x.to(self.device)

    def _integers(self, torch: Any, x: Any, message: Callable[[str], str], convert: Callable[[Any], Any]) -> Any:
        if not isinstance(x, torch.Tensor):
            x = torch.from_numpy(np.ascontiguousarray(convert(x)))
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise ValueError(message(str(x.dtype).removeprefix("torch.")))
        return x.to(device=self.device, dtype=torch.int64)

    @staticmethod
    def _host(torch: Any, x: Any) -> np.ndarray:
        x = x.detach().cpu()
        return (x.to(torch.float64) if x.is_floating_point() else x).numpy()

    def _check_logits(self, torch: Any, *named: tuple[str, Any]) -> None:
        """The reference's logits value checks, with one host sync on the happy path."""
        flags = []
        for _, x in named:
            if x.is_floating_point() and x.numel():
                flags += [x.isnan().any(), x.isposinf().any(), (~x.isfinite()).all(dim=-1).any()]
        if flags and bool(torch.stack(flags).any()):
            for name, x in named:
                checks.check_logits(name, self._host(torch, x))

    @staticmethod
    def _compute(torch: Any, *tensors: Any) -> tuple[Any, Any]:
        out = None
        for x in tensors:
            dtype = x.dtype if x.is_floating_point() else torch.float64
            out = dtype if out is None else torch.promote_types(out, dtype)
        return (torch.float64 if out == torch.float64 else torch.float32), out

    def _dense_inputs(self, student_logits: Any, teacher_logits: Any) -> tuple[Any, Any, Any, Any, Any]:
        torch = self._family_torch()
        s = self._tensor(torch, "student_logits", student_logits)
        t = self._tensor(torch, "teacher_logits", teacher_logits)
        checks.check_shapes(tuple(s.shape), tuple(t.shape))
        self._check_logits(torch, ("student_logits", s), ("teacher_logits", t))
        compute, out = self._compute(torch, s, t)
        return torch, s.to(compute), t.to(compute), out, s.dtype

    def _topk_inputs(self, torch: Any, s: Any, logprobs: Any, ids: Any, mode: str, temperature: float) -> tuple:
        """Validate a top-k pair against student logits ``s`` (already a tensor) in the reference's order."""
        if mode == "tail" and temperature != 1.0:
            raise ValueError(topk.tail_temperature_message(temperature))
        lp = self._tensor(torch, "teacher_topk_logprobs", logprobs)
        ix = self._integers(torch, ids, topk.ids_dtype_message, np.asarray)
        vocab = checks.check_logits_shape("student_logits", tuple(s.shape))
        topk.check_topk_shapes(tuple(s.shape), tuple(lp.shape), tuple(ix.shape))
        self._check_logits(torch, ("student_logits", s))
        lp64 = lp.to(torch.float64)
        ordered = ix.sort(dim=-1).values
        flags = [
            ((ix < 0) | (ix >= vocab)).any(),
            (ordered[..., 1:] == ordered[..., :-1]).any(),
            lp64.isnan().any(),
            (lp64 > topk.POSITIVE_LOGPROB_LIMIT).any(),
            (lp64.exp().sum(-1) > 1.0 + topk.TOPK_MASS_TOLERANCE).any(),
        ]
        if mode == "renormalize":
            flags.append(lp64.isneginf().all(-1).any())
            flags.append(s.gather(-1, ix.clamp(0, vocab - 1)).isneginf().all(-1).any())
        if bool(torch.stack(flags).any()):
            topk.check_topk_values(self._host(torch, lp), self._host(torch, ix), vocab, mode, self._host(torch, s))
        return lp, ix

    # ---- dense members ---------------------------------------------------------------------------------

    def _family_dense(self, name: str, gradient: bool, s: Any, t: Any, temperature: Any, **param: Any) -> Any:
        divergence, w = check_divergence(name, **param)
        temperature = checks.check_temperature(temperature)
        torch, s, t, out, s_dtype = self._dense_inputs(s, t)
        lq = torch.log_softmax(s / temperature, dim=-1)
        lp = torch.log_softmax(t / temperature, dim=-1)
        value, score = ROWS[divergence.name](torch, lq, lp, w)
        if gradient:
            return chain(torch, lq, score, temperature).to(_own_dtype(torch, s_dtype))
        return value.to(out)

    # ---- top-k -----------------------------------------------------------------------------------------

    def _topk(
        self, s: Any, lp: Any, ids: Any, mode: str, name: str, w: float | None, temperature: float
    ) -> tuple[Any, Any]:
        """Per-row value and gradient over the buckets (:func:`reference.topk.topk_value_and_gradient`)."""
        torch = self._family_torch()
        vocab, k = s.shape[-1], ids.shape[-1]
        has_tail = mode == "tail" and k < vocab
        if mode == "renormalize":
            log_p = torch.log_softmax(lp / temperature, dim=-1)
            log_q = torch.log_softmax(s.gather(-1, ids) / temperature, dim=-1)
            value, g = ROWS[name](torch, log_q, log_p, w)
            gradient = torch.zeros_like(s).scatter(-1, ids, g - log_q.exp() * g.sum(-1, keepdim=True))
            return value, gradient / temperature
        # The teacher's mass is formed in float64 ([..., K] only, so it costs nothing): its tail
        # log(1 - sum exp(lp)) loses ~1e-7 / tail of relative precision in float32, 2e-2 at a tail near 1e-5.
        lp64 = lp.double()
        lse = torch.logsumexp(lp64, dim=-1, keepdim=True)
        over = lse >= 0
        known = torch.where(over, lp64 - lse, lp64)
        if has_tail:
            tail = torch.where(over, -math.inf, torch.log(-torch.expm1(lse.clamp(max=0.0))))
            log_p = torch.cat([known, tail], dim=-1)
        else:
            log_p = known - torch.where(over, 0.0, lse)
        log_p = log_p.to(lp.dtype)
        lq = torch.log_softmax(s / temperature, dim=-1)
        in_topk = torch.zeros_like(s, dtype=torch.bool).scatter(-1, ids, True)
        log_q = lq.gather(-1, ids)
        if has_tail:
            log_q = torch.cat([log_q, torch.logsumexp(lq.masked_fill(in_topk, -math.inf), -1, keepdim=True)], -1)
        value, g = ROWS[name](torch, log_q, log_p, w)
        gradient = -lq.exp() * g.sum(-1, keepdim=True)
        gradient = gradient.scatter_add(-1, ids, g[..., :k])
        if has_tail:
            tail_q = log_q[..., k:]
            share = torch.where(in_topk | (tail_q == -math.inf), 0.0, (lq - tail_q).exp())
            gradient = gradient + share * g[..., k:]
        return value, gradient / temperature

    def _topk_call(
        self, student_logits: Any, logprobs: Any, ids: Any, mode: Any, divergence: Any, beta: Any, temperature: Any
    ) -> tuple[Any, Any, Any, Any]:
        mode = topk.check_mode(mode)
        member, w = check_divergence(divergence, beta, None, TOPK_DIVERGENCE_NAMES)
        temperature = checks.check_temperature(temperature)
        torch = self._family_torch()
        s = self._tensor(torch, "student_logits", student_logits)
        lp, ix = self._topk_inputs(torch, s, logprobs, ids, mode, temperature)
        compute, out = self._compute(torch, s, lp)
        value, gradient = self._topk(s.to(compute), lp.to(compute), ix, mode, member.name, w, temperature)
        return value, gradient.to(_own_dtype(torch, s.dtype)), out, s.dtype

    def _topk_member(
        self, gradient: bool, s: Any, logprobs: Any, ids: Any, mode: Any, divergence: Any, beta: Any, temperature: Any
    ) -> Any:
        value, grad, out, _ = self._topk_call(s, logprobs, ids, mode, divergence, beta, temperature)
        return grad if gradient else value.to(out)

    # ---- kd_loss over the family -----------------------------------------------------------------------

    def family_kd(
        self,
        want_gradient: bool,
        student_logits: Any,
        teacher: Any,
        labels: Any,
        *,
        temperature: Any,
        alpha: Any,
        divergence: Any,
        beta: Any,
        skew: Any,
        ignore_index: Any,
        reduction: Any,
        normalizer: Any,
    ) -> Any:
        """``kd_loss`` (or its gradient) over the family: ``alpha CE + (1 - alpha) T^2 D`` per row, reduced,
        ``mean`` dividing by ``normalizer`` when given.

        Validation (:meth:`_family_kd_inputs`) and the reduction are shared; the row math is
        :meth:`_kd_rows_dense` or :meth:`_kd_rows_topk`, which a backend built on this one (Triton) overrides.
        """
        call = self._family_kd_inputs(
            student_logits, teacher, labels, temperature=temperature, alpha=alpha, divergence=divergence, beta=beta,
            skew=skew, ignore_index=ignore_index, reduction=reduction, normalizer=normalizer,
        )  # fmt: skip
        per_row, gradient = self._kd_rows_of(call)(call, want_gradient)
        return gradient if want_gradient else self._family_reduce(call, per_row)

    def _kd_rows_of(self, call: KDCall) -> Callable[[KDCall, bool], tuple[Any, Any]]:
        """The row method of ``call``'s teacher: :meth:`_kd_rows_topk` or :meth:`_kd_rows_dense`."""
        return self._kd_rows_topk if call.sparse else self._kd_rows_dense

    @staticmethod
    def _family_reduce(call: KDCall, per_row: Any) -> Any:
        """Masked per-row losses reduced as ``call.reduction`` says, in the output dtype."""
        per_row = call.torch.where(call.valid, per_row, 0.0)
        if call.reduction == "none":
            return per_row.to(call.out)
        total = per_row.sum()
        return (total if call.reduction == "sum" else total / call.count).to(call.out)

    def _family_kd_inputs(
        self,
        student_logits: Any,
        teacher: Any,
        labels: Any,
        *,
        temperature: Any,
        alpha: Any,
        divergence: Any,
        beta: Any,
        skew: Any,
        ignore_index: Any,
        reduction: Any,
        normalizer: Any,
    ) -> KDCall:
        """Every check of the reference, in its order, on a family ``kd_loss`` call; one host sync when valid."""
        temperature, alpha, reduction = checks.check_hyperparameters(temperature, alpha, reduction)
        ignore_index = checks.check_ignore_index(ignore_index)
        sparse = is_topk(teacher)
        member, w = check_divergence(divergence, beta, skew, TOPK_DIVERGENCE_NAMES if sparse else DIVERGENCE_NAMES)
        norm = check_normalizer(normalizer, reduction)
        torch = self._family_torch()
        s = self._tensor(torch, "student_logits", student_logits)
        if sparse:
            pair = as_topk(teacher)
            mode = topk.check_mode(pair.mode)
            lp, ix = self._topk_inputs(torch, s, pair.logprobs, pair.ids, mode, temperature)
            y = self._integers(torch, labels, checks.labels_dtype_message, checks.as_integer_labels)
            checks.check_labels_shape(tuple(y.shape), tuple(s.shape))
            compute, out = self._compute(torch, s, lp)
            teacher_data: Any = (lp, ix, mode)
        else:
            t = self._tensor(torch, "teacher_logits", teacher)
            y = self._integers(torch, labels, checks.labels_dtype_message, checks.as_integer_labels)
            checks.check_shapes(tuple(s.shape), tuple(t.shape), tuple(y.shape))
            self._check_logits(torch, ("student_logits", s), ("teacher_logits", t))
            compute, out = self._compute(torch, s, t)
            teacher_data = t
        vocab = s.shape[-1]
        if y.numel() and bool(((y != ignore_index) & ((y < 0) | (y >= vocab))).any()):
            checks.check_labels(self._host(torch, y), vocab, ignore_index)
        valid = y != ignore_index
        count = norm if norm is not None else valid.sum().clamp(min=1).to(compute)
        weight = valid.to(compute)
        return KDCall(
            torch=torch, s=s, teacher=teacher_data, y=torch.where(valid, y, 0), valid=valid,
            weight=weight / count if reduction == "mean" else weight, name=member.name, w=w,
            temperature=temperature, alpha=alpha, reduction=reduction, count=count, compute=compute, out=out,
        )  # fmt: skip

    def _kd_rows_dense(self, call: KDCall, want_gradient: bool) -> tuple[Any, Any]:
        """:meth:`_kd_rows` of a dense teacher (``call.teacher`` is its logits)."""
        torch = call.torch
        lq = torch.log_softmax(call.s.to(call.compute) / call.temperature, dim=-1)
        lp = torch.log_softmax(call.teacher.to(call.compute) / call.temperature, dim=-1)
        value, score = ROWS[call.name](torch, lq, lp, call.w)
        return self._kd_rows(call, value, chain(torch, lq, score, call.temperature) if want_gradient else None)

    def _kd_rows_topk(self, call: KDCall, want_gradient: bool) -> tuple[Any, Any]:
        """:meth:`_kd_rows` of a top-k teacher (``call.teacher`` is ``(logprobs, ids, mode)``)."""
        lp, ix, mode = call.teacher
        s = call.s.to(call.compute)
        value, dvalue = self._topk(s, lp.to(call.compute), ix, mode, call.name, call.w, call.temperature)
        return self._kd_rows(call, value, dvalue)

    @staticmethod
    def _kd_rows(call: KDCall, value: Any, dvalue: Any | None) -> tuple[Any, Any]:
        """``(per_row, gradient)``: ``alpha CE + (1 - alpha) T^2 D`` on every row (ignored rows are masked by
        the caller) and, when ``dvalue`` (``dD/ds``) is given, ``call.weight * d per_row / ds`` in the student's
        own dtype, 0 on ignored rows."""
        torch, alpha, s = call.torch, call.alpha, call.s.to(call.compute)
        lq1 = torch.log_softmax(s, dim=-1)
        weight = (1.0 - alpha) * call.temperature**2
        ce = -lq1.gather(-1, call.y[..., None])[..., 0]
        per_row = weighted(torch, alpha, ce) + weighted(torch, weight, value)
        if dvalue is None:
            return per_row, None
        hard = lq1.exp() - torch.nn.functional.one_hot(call.y, s.shape[-1]).to(call.compute)
        gradient = weighted(torch, alpha, hard) + weighted(torch, weight, dvalue)
        gradient = torch.where(call.valid[..., None], gradient * call.weight[..., None], 0.0)
        return per_row, gradient.to(_own_dtype(torch, call.s.dtype))


@dataclass(frozen=True)
class KDCall:
    """A validated ``kd_loss`` call over the family (:meth:`TorchFamily._family_kd_inputs`)."""

    torch: Any
    s: Any
    """The student's logits as given (own dtype), on the backend's device."""
    teacher: Any
    """Dense: the teacher's logits tensor. Top-k: ``(logprobs, ids, mode)``, validated."""
    y: Any
    """int64 labels, ignored rows replaced by 0 (always a valid column)."""
    valid: Any
    weight: Any
    """Per-row weight of the gradient (compute dtype): ``valid / count`` for ``mean``, ``valid`` otherwise."""
    name: str
    w: float | None
    temperature: float
    alpha: float
    reduction: str
    count: Any
    compute: Any
    out: Any

    @property
    def sparse(self) -> bool:
        return isinstance(self.teacher, tuple)
