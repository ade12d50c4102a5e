"""The public members of the divergence family, written once for every backend that implements them.

Each member is one line over a hook the backend provides (``backends/torch_family.py``,
``backends/cupy_family.py``, and the Triton mixins): ``self._family_dense(name, gradient, student_logits,
teacher_logits, temperature, **parameter)`` for the dense members, ``self._topk_member(gradient,
student_logits, logprobs, ids, mode, divergence, beta, temperature)`` for a top-k teacher. The names, keyword
arguments and semantics are those of :mod:`reference.kd` and its table (:mod:`reference.divergences`).
"""

from __future__ import annotations

from typing import Any


class FamilyMembers:
    """Mixin: ``reverse_kl``, ``generalized_jsd``, ... and their ``_gradient`` twins over ``_family_dense``."""

    def _family_dense(self, name: str, gradient: bool, s: Any, t: Any, temperature: Any, **param: Any) -> Any:
        raise NotImplementedError  # pragma: no cover - provided by the backend

    def _topk_member(
        self, gradient: bool, s: Any, logprobs: Any, ids: Any, mode: Any, divergence: Any, beta: Any, temperature: Any
    ) -> Any:
        raise NotImplementedError  # pragma: no cover - provided by the backend

    def topk_divergence(
        self,
        student_logits: Any,
        teacher_topk_logprobs: Any,
        teacher_topk_ids: Any,
        *,
        mode: str = "tail",
        divergence: str = "forward_kl",
        beta: float | None = None,
        temperature: float = 1.0,
    ) -> Any:
        """:func:`reference.topk.topk_divergence` per row, in the output dtype."""
        return self._topk_member(
            False, student_logits, teacher_topk_logprobs, teacher_topk_ids, mode, divergence, beta, temperature
        )

    def topk_divergence_gradient(
        self,
        student_logits: Any,
        teacher_topk_logprobs: Any,
        teacher_topk_ids: Any,
        *,
        mode: str = "tail",
        divergence: str = "forward_kl",
        beta: float | None = None,
        temperature: float = 1.0,
    ) -> Any:
        """:func:`reference.topk.topk_divergence_gradient`, in the student's dtype."""
        return self._topk_member(
            True, student_logits, teacher_topk_logprobs, teacher_topk_ids, mode, divergence, beta, temperature
        )

    def kl_divergence_gradient(self, student_logits: Any, teacher_logits: Any, *, temperature: float = 1.0) -> Any:
        return self._family_dense("forward_kl", True, student_logits, teacher_logits, temperature)

    def reverse_kl(self, student_logits: Any, teacher_logits: Any, *, temperature: float = 1.0) -> Any:
        return self._family_dense("reverse_kl", False, student_logits, teacher_logits, temperature)

    def reverse_kl_gradient(self, student_logits: Any, teacher_logits: Any, *, temperature: float = 1.0) -> Any:
        return self._family_dense("reverse_kl", True, student_logits, teacher_logits, temperature)

    def generalized_jsd(
        self, student_logits: Any, teacher_logits: Any, *, temperature: float = 1.0, beta: float
    ) -> Any:
        return self._family_dense("generalized_jsd", False, student_logits, teacher_logits, temperature, beta=beta)

    def generalized_jsd_gradient(
        self, student_logits: Any, teacher_logits: Any, *, temperature: float = 1.0, beta: float
    ) -> Any:
        return self._family_dense("generalized_jsd", True, student_logits, teacher_logits, temperature, beta=beta)

    def interpolated_kl(
        self, student_logits: Any, teacher_logits: Any, *, temperature: float = 1.0, beta: float
    ) -> Any:
        return self._family_dense("interpolated_kl", False, student_logits, teacher_logits, temperature, beta=beta)

    def interpolated_kl_gradient(
        self, student_logits: Any, teacher_logits: Any, *, temperature: float = 1.0, beta: float
    ) -> Any:
        return self._family_dense("interpolated_kl", True, student_logits, teacher_logits, temperature, beta=beta)

    def skew_kl(self, student_logits: Any, teacher_logits: Any, *, temperature: float = 1.0, skew: float) -> Any:
        return self._family_dense("skew_kl", False, student_logits, teacher_logits, temperature, skew=skew)

    def skew_kl_gradient(
        self, student_logits: Any, teacher_logits: Any, *, temperature: float = 1.0, skew: float
    ) -> Any:
        return self._family_dense("skew_kl", True, student_logits, teacher_logits, temperature, skew=skew)

    def skew_reverse_kl(
        self, student_logits: Any, teacher_logits: Any, *, temperature: float = 1.0, skew: float
    ) -> Any:
        return self._family_dense("skew_reverse_kl", False, student_logits, teacher_logits, temperature, skew=skew)

    def skew_reverse_kl_gradient(
        self, student_logits: Any, teacher_logits: Any, *, temperature: float = 1.0, skew: float
    ) -> Any:
        return self._family_dense("skew_reverse_kl", True, student_logits, teacher_logits, temperature, skew=skew)

    def total_variation(self, student_logits: Any, teacher_logits: Any, *, temperature: float = 1.0) -> Any:
        return self._family_dense("total_variation", False, student_logits, teacher_logits, temperature)

    def total_variation_gradient(self, student_logits: Any, teacher_logits: Any, *, temperature: float = 1.0) -> Any:
        return self._family_dense("total_variation", True, student_logits, teacher_logits, temperature)
