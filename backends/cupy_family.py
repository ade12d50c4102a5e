"""The divergence family on cupy arrays: a port of :mod:`reference.divergences` and :mod:`reference.topk`.

:class:`CupyFamily` is mixed into :class:`backends.cupy_backend.CupyBackend`. It is written against the
array namespace ``xp`` that the backend's ``_runtime()`` returns (``cupy`` on a device), using only what
numpy and cupy share, so the tests also run it with ``xp = numpy`` on machines without a GPU (as they run
the backend's host code, ``tests/test_cupy_backend.py``). The fused kernels of the seed's forward KL stay
the backend's; ``kd_loss`` and ``kd_logit_gradient`` hand any other divergence, a top-k teacher or a
``normalizer`` here (:meth:`CupyFamily.family_kd`).

Same formulas as the reference, in log space (``logaddexp`` mixtures, log-sum-exp tails, no
``log(p + eps)``); float64 computes in float64 and float32 in float32, results in the input's dtype.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from backends.family_members import FamilyMembers
from backends.family_rows import ROWS, chain, weighted
from backends.protocol import FAMILY_MEMBERS, OPTIONAL_FEATURES
from reference import checks, topk
from reference.divergences import DIVERGENCE_NAMES, TOPK_DIVERGENCE_NAMES, check_divergence
from reference.kd_family import as_topk, check_normalizer, is_topk

CAPABILITIES: frozenset[str] = frozenset((*FAMILY_MEMBERS, *OPTIONAL_FEATURES))

# --------------------------------------------------------------------------------------------------------
# Row math over the last axis: (value, score = dD / d log q) per member.
# --------------------------------------------------------------------------------------------------------


def _quiet(xp: Any) -> Any:
    """numpy warns about -inf - -inf in branches that are discarded; cupy does not warn at all."""
    errstate = getattr(xp, "errstate", None)
    return errstate(invalid="ignore", over="ignore", divide="ignore") if errstate else contextlib.nullcontext()


def logsumexp(xp: Any, z: Any, keepdims: bool = False) -> Any:
    """``log sum exp z`` over the last axis, shifted by the row max; ``-inf`` for an all ``-inf`` row."""
    m = z.max(axis=-1, keepdims=True)
    safe = xp.where(xp.isfinite(m), m, 0.0)
    out = safe + xp.log(xp.exp(z - safe).sum(axis=-1, keepdims=True))
    return out if keepdims else out[..., 0]


def log_softmax(xp: Any, z: Any, temperature: float) -> Any:
    scaled = z / temperature
    return scaled - logsumexp(xp, scaled, keepdims=True)


def topk_rows(
    xp: Any, s: Any, lp: Any, ids: Any, mode: str, name: str, w: float | None, temperature: float
) -> tuple[Any, Any]:
    """Per-row value [N] and gradient [N, V] of ``[N, V]`` logits against an ``[N, K]`` top-k pair."""
    n, vocab = s.shape
    k = ids.shape[-1]
    rows = xp.arange(n)[:, None]
    if mode == "renormalize":
        log_p = log_softmax(xp, lp, temperature)
        log_q = log_softmax(xp, s[rows, ids], temperature)
        value, g = ROWS[name](xp, log_q, log_p, w)
        gradient = xp.zeros_like(s)
        gradient[rows, ids] = g - xp.exp(log_q) * g.sum(axis=-1, keepdims=True)
        return value, gradient / temperature
    has_tail = k < vocab
    # The teacher's mass in float64 ([N, K] only): its tail log(1 - sum exp(lp)) loses ~1e-7 / tail of relative
    # precision in float32.
    lp64 = lp.astype(xp.float64)
    lse = logsumexp(xp, lp64, keepdims=True)
    over = lse >= 0
    known = xp.where(over, lp64 - lse, lp64)
    if has_tail:
        tail = xp.where(over, -math.inf, xp.log(-xp.expm1(xp.minimum(lse, 0.0))))
        log_p = xp.concatenate([known, tail], axis=-1)
    else:
        log_p = known - xp.where(over, 0.0, lse)
    log_p = log_p.astype(lp.dtype)
    lq = log_softmax(xp, s, temperature)
    in_topk = xp.zeros(s.shape, dtype=bool)
    in_topk[rows, ids] = True
    log_q = lq[rows, ids]
    if has_tail:
        log_q = xp.concatenate([log_q, logsumexp(xp, xp.where(in_topk, -math.inf, lq), keepdims=True)], axis=-1)
    value, g = ROWS[name](xp, log_q, log_p, w)
    gradient = -xp.exp(lq) * g.sum(axis=-1, keepdims=True)
    gradient[rows, ids] += g[:, :k]
    if has_tail:
        tail_q = log_q[:, k:]
        share = xp.where(in_topk | (tail_q == -math.inf), 0.0, xp.exp(lq - tail_q))
        gradient = gradient + share * g[:, k:]
    return value, gradient / temperature


# --------------------------------------------------------------------------------------------------------
# The mixin.
# --------------------------------------------------------------------------------------------------------


class CupyFamily(FamilyMembers):
    """The optional family members on cupy arrays (mixed into the cupy backend; needs its ``_runtime``)."""

    capabilities: frozenset[str] = CAPABILITIES

    def _runtime(self) -> tuple[Any, Any]:  # pragma: no cover - provided by the backend
        raise NotImplementedError

    @staticmethod
    def _family_ints(xp: Any, x: Any, message: Callable[[Any], str], convert: Callable[[Any], Any]) -> Any:
        if not isinstance(x, xp.ndarray):
            x = xp.asarray(convert(x))
        if x.dtype.kind not in ("i", "u"):
            raise ValueError(message(x.dtype))
        return x.astype(np.int64)

    def _family_check_logits(self, xp: Any, *named: tuple[str, Any]) -> None:
        flags = [
            bool(xp.isnan(x).any() | xp.isposinf(x).any() | (~xp.isfinite(x)).all(axis=-1).any())
            for _, x in named
            if x.dtype.kind == "f" and x.size
        ]
        if any(flags):
            for name, x in named:
                checks.check_logits(name, self._host(xp, x))

    @staticmethod
    def _family_dtypes(*arrays: Any) -> tuple[Any, Any]:
        out = np.result_type(*(a.dtype if a.dtype.kind == "f" else np.float64 for a in arrays))
        return (np.float64 if out == np.float64 else np.float32), out

    def _family_topk_inputs(self, xp: Any, s: Any, logprobs: Any, ids: Any, mode: str, temperature: float) -> tuple:
        if mode == "tail" and temperature != 1.0:
            raise ValueError(topk.tail_temperature_message(temperature))
        lp = self._logits(xp, "teacher_topk_logprobs", logprobs)
        ix = self._family_ints(xp, ids, topk.ids_dtype_message, np.asarray)
        vocab = checks.check_logits_shape("student_logits", tuple(s.shape))
        topk.check_topk_shapes(tuple(s.shape), tuple(lp.shape), tuple(ix.shape))
        self._family_check_logits(xp, ("student_logits", s))
        lp64 = lp.astype(np.float64)
        ordered = xp.sort(ix, axis=-1)
        bad = (
            ((ix < 0) | (ix >= vocab)).any()
            | (ordered[..., 1:] == ordered[..., :-1]).any()
            | xp.isnan(lp64).any()
            | (lp64 > topk.POSITIVE_LOGPROB_LIMIT).any()
            | (xp.exp(lp64).sum(axis=-1) > 1.0 + topk.TOPK_MASS_TOLERANCE).any()
        )
        if mode == "renormalize":
            s2 = s.reshape(-1, vocab)
            ix2 = xp.clip(ix.reshape(-1, ix.shape[-1]), 0, vocab - 1)
            bad = bad | xp.isneginf(lp64).all(axis=-1).any()
            bad = bad | xp.isneginf(s2[xp.arange(s2.shape[0])[:, None], ix2]).all(axis=-1).any()
        if bool(bad):
            topk.check_topk_values(
                self._host(xp, lp), self._host(xp, ix), vocab, mode, self._host(xp, s)
            )
        return lp, ix

    # ---- dense members ---------------------------------------------------------------------------------

    def _family_dense(self, name: str, gradient: bool, s: Any, t: Any, temperature: Any, **param: Any) -> Any:
        divergence, w = check_divergence(name, **param)
        temperature = checks.check_temperature(temperature)
        xp, _ = self._runtime()
        s = self._logits(xp, "student_logits", s)
        t = self._logits(xp, "teacher_logits", t)
        checks.check_shapes(tuple(s.shape), tuple(t.shape))
        self._family_check_logits(xp, ("student_logits", s), ("teacher_logits", t))
        compute, out = self._family_dtypes(s, t)
        with _quiet(xp):
            lq = log_softmax(xp, s.astype(compute), temperature)
            lp = log_softmax(xp, t.astype(compute), temperature)
            value, score = ROWS[divergence.name](xp, lq, lp, w)
            if gradient:
                return chain(xp, lq, score, temperature).astype(self._family_dtypes(s)[1])
        return value.astype(out)

    # ---- top-k -----------------------------------------------------------------------------------------

    def _family_topk(
        self, student_logits: Any, logprobs: Any, ids: Any, mode: Any, divergence: Any, beta: Any, temperature: Any
    ) -> tuple[Any, Any]:
        mode = topk.check_mode(mode)
        member, w = check_divergence(divergence, beta, None, TOPK_DIVERGENCE_NAMES)
        temperature = checks.check_temperature(temperature)
        xp, _ = self._runtime()
        s = self._logits(xp, "student_logits", student_logits)
        lp, ix = self._family_topk_inputs(xp, s, logprobs, ids, mode, temperature)
        compute, out = self._family_dtypes(s, lp)
        vocab, k = s.shape[-1], ix.shape[-1]
        with _quiet(xp):
            value, gradient = topk_rows(
                xp, s.reshape(-1, vocab).astype(compute), lp.reshape(-1, k).astype(compute), ix.reshape(-1, k),
                mode, member.name, w, temperature,
            )  # fmt: skip
        s_out = self._family_dtypes(s)[1]
        return value.reshape(s.shape[:-1]).astype(out), gradient.reshape(s.shape).astype(s_out)

    def _topk_member(
        self, gradient: bool, s: Any, logprobs: Any, ids: Any, mode: Any, divergence: Any, beta: Any, temperature: Any
    ) -> Any:
        return self._family_topk(s, logprobs, ids, mode, divergence, beta, temperature)[1 if gradient else 0]

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
        """``kd_loss`` (or its gradient) over the family, as :func:`reference.kd_family.kd_family_rows`."""
        temperature, alpha, reduction = checks.check_hyperparameters(temperature, alpha, reduction)
        ignore_index = checks.check_ignore_index(ignore_index)
        sparse = is_topk(teacher)
        member, w = check_divergence(divergence, beta, skew, TOPK_DIVERGENCE_NAMES if sparse else DIVERGENCE_NAMES)
        norm = check_normalizer(normalizer, reduction)
        xp, _ = self._runtime()
        s = self._logits(xp, "student_logits", student_logits)
        vocab = checks.check_logits_shape("student_logits", tuple(s.shape))
        if sparse:
            pair = as_topk(teacher)
            mode = topk.check_mode(pair.mode)
            lp, ix = self._family_topk_inputs(xp, s, pair.logprobs, pair.ids, mode, temperature)
            y = self._family_ints(xp, labels, checks.labels_dtype_message, checks.as_integer_labels)
            checks.check_labels_shape(tuple(y.shape), tuple(s.shape))
            compute, out = self._family_dtypes(s, lp)
            k = ix.shape[-1]
            with _quiet(xp):
                value, dvalue = topk_rows(
                    xp, s.reshape(-1, vocab).astype(compute), lp.reshape(-1, k).astype(compute), ix.reshape(-1, k),
                    mode, member.name, w, temperature,
                )  # fmt: skip
        else:
            t = self._logits(xp, "teacher_logits", teacher)
            y = self._family_ints(xp, labels, checks.labels_dtype_message, checks.as_integer_labels)
            checks.check_shapes(tuple(s.shape), tuple(t.shape), tuple(y.shape))
            self._family_check_logits(xp, ("student_logits", s), ("teacher_logits", t))
            compute, out = self._family_dtypes(s, t)
            with _quiet(xp):
                lq = log_softmax(xp, s.reshape(-1, vocab).astype(compute), temperature)
                lp_dense = log_softmax(xp, t.reshape(-1, vocab).astype(compute), temperature)
                value, score = ROWS[member.name](xp, lq, lp_dense, w)
                dvalue = chain(xp, lq, score, temperature)
        y1 = y.reshape(-1)
        if y1.size and bool(((y1 != ignore_index) & ((y1 < 0) | (y1 >= vocab))).any()):
            checks.check_labels(self._host(xp, y), vocab, ignore_index)
        valid = y1 != ignore_index
        s2 = s.reshape(-1, vocab).astype(compute)
        with _quiet(xp):
            lq1 = log_softmax(xp, s2, 1.0)
            label = xp.where(valid, y1, 0)
            weight = (1.0 - alpha) * temperature**2
            count = norm if norm is not None else max(int(valid.sum()), 1)
            if want_gradient:
                hard = xp.exp(lq1)
                hard[xp.arange(hard.shape[0]), label] -= 1.0
                soft = xp.where(valid[:, None], dvalue, 0.0)
                gradient = xp.where(valid[:, None], weighted(xp, alpha, hard) + weighted(xp, weight, soft), 0.0)
                if reduction == "mean":
                    gradient = gradient / count
                return gradient.reshape(s.shape).astype(self._family_dtypes(s)[1])
            ce = xp.where(valid, -lq1[xp.arange(lq1.shape[0]), label], 0.0)
            per_row = weighted(xp, alpha, ce) + weighted(xp, weight, xp.where(valid, value, 0.0))
        if reduction == "none":
            return per_row.reshape(y.shape).astype(out)
        total = per_row.sum()
        return xp.asarray(total if reduction == "sum" else total / count).astype(out)
