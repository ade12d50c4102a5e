"""The KD loss of the real-model pipeline, computed by a verified backend (``--backend``).

:class:`BackendLoss` wraps the backend's ``kd_loss`` (forward) and ``kd_logit_gradient`` (backward) in one
``torch.autograd.Function``, so every backend of the registry trains a torch model: the torch backends get the
tensors themselves, others (numpy, cupy) get copies through their ``asarray`` / ``to_numpy``. The math lives in
the backend only; this module adds the reduction the trainer needs:

    loss = sum over valid rows of L_i / normalizer,  L_i = alpha CE_i + (1 - alpha) T^2 KL_i

where ``normalizer`` is the number of valid tokens of the whole optimizer step (all accumulation micro-batches),
so accumulating micro-batch gradients gives exactly the gradient of the step's mean loss.

With a top-k teacher the KD term is the backend's ``topk_divergence`` (and its gradient twin
``topk_divergence_gradient``); a backend without them is refused with a sentence saying so.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["BackendLoss", "LossError", "dtype_name"]

_DTYPE_NAMES = {torch.float64: "float64", torch.float32: "float32", torch.bfloat16: "bfloat16"}


class LossError(ValueError):
    """The loss cannot be computed with this backend or these inputs; the message is one sentence."""


def dtype_name(tensor: torch.Tensor) -> str:
    """``"float32"``, ``"float64"`` or ``"bfloat16"`` for a floating tensor; :class:`LossError` otherwise."""
    try:
        return _DTYPE_NAMES[tensor.dtype]
    except KeyError:
        raise LossError(f"logits of dtype {tensor.dtype} cannot go through a KD backend") from None


class _Bridge:
    """Moves tensors into a backend's arrays and back."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        probe = backend.asarray(np.zeros((1, 2), dtype=np.float32), "float32")
        self.native = isinstance(probe, torch.Tensor)

    def logits(self, x: torch.Tensor, dtype: str) -> Any:
        if self.native:
            return x.detach()
        host = x.detach().cpu()
        host = host.float() if host.dtype == torch.bfloat16 else host
        return self.backend.asarray(host.numpy(), dtype)

    def labels(self, y: torch.Tensor) -> Any:
        return y.detach() if self.native else self.backend.asarray(y.detach().cpu().numpy(), "int64")

    def back(self, value: Any, like: torch.Tensor) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            return value.detach().to(device=like.device, dtype=like.dtype)
        return torch.from_numpy(np.asarray(self.backend.to_numpy(value))).to(device=like.device, dtype=like.dtype)


class _DenseKD(torch.autograd.Function):
    """sum_i L_i / normalizer with the backend's kd_loss forward and kd_logit_gradient backward."""

    @staticmethod
    def forward(ctx: Any, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, loss: BackendLoss,
                normalizer: float) -> torch.Tensor:
        s, t, y = loss._inputs(student, teacher, labels)
        value = loss.backend.kd_loss(s, t, y, temperature=loss.temperature, alpha=loss.alpha, reduction="sum")
        ctx.loss, ctx.normalizer, ctx.arrays = loss, normalizer, (s, t, y)
        ctx.save_for_backward(student)
        return loss.bridge.back(value, student).reshape(()) / normalizer

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, ...]:
        (student,) = ctx.saved_tensors
        loss, (s, t, y) = ctx.loss, ctx.arrays
        gradient = loss.backend.kd_logit_gradient(
            s, t, y, temperature=loss.temperature, alpha=loss.alpha, reduction="sum"
        )
        scale = grad_output / ctx.normalizer
        return loss.bridge.back(gradient, student) * scale, None, None, None, None


class _TopKKD(torch.autograd.Function):
    """sum_i [alpha CE_i + (1 - alpha) T^2 D_i] / normalizer, D the backend's topk_divergence."""

    @staticmethod
    def forward(ctx: Any, student: torch.Tensor, logprobs: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor,
                loss: BackendLoss, normalizer: float) -> torch.Tensor:
        b, bridge = loss.backend, loss.bridge
        dtype = dtype_name(student)
        s, y = bridge.logits(student, dtype), bridge.labels(labels)
        lp = bridge.logits(logprobs, dtype_name(logprobs))
        ids_ = bridge.labels(ids)
        valid = (labels != loss.ignore_index).to(student.dtype)
        ce = bridge.back(b.cross_entropy(s, y, reduction="sum"), student).reshape(())
        rows = bridge.back(b.topk_divergence(s, lp, ids_, **loss._topk_options()), student)
        kd = (rows * valid).sum()
        ctx.loss, ctx.normalizer, ctx.arrays = loss, normalizer, (s, lp, ids_, y)
        ctx.save_for_backward(student, valid)
        return (loss.alpha * ce + (1.0 - loss.alpha) * loss.temperature**2 * kd) / normalizer

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, ...]:
        student, valid = ctx.saved_tensors
        loss, (s, lp, ids_, y) = ctx.loss, ctx.arrays
        b, bridge = loss.backend, loss.bridge
        # d CE / d s is kd_logit_gradient at alpha = 1 (the teacher term has weight 0).
        ce = bridge.back(b.kd_logit_gradient(s, s, y, temperature=1.0, alpha=1.0, reduction="sum"), student)
        rows = bridge.back(b.topk_divergence_gradient(s, lp, ids_, **loss._topk_options()), student)
        gradient = loss.alpha * ce + (1.0 - loss.alpha) * loss.temperature**2 * rows * valid.unsqueeze(-1)
        return gradient * (grad_output / ctx.normalizer), None, None, None, None, None


class BackendLoss:
    """The KD loss through ``backend`` at ``temperature`` and ``alpha`` (``alpha = 1``: CE only)."""

    def __init__(self, backend: Any, *, temperature: float, alpha: float, topk_mode: str = "tail",
                 ignore_index: int = -100) -> None:
        self.backend = backend
        self.bridge = _Bridge(backend)
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.topk_mode = topk_mode
        self.ignore_index = ignore_index

    def _inputs(self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor) -> tuple[Any, Any, Any]:
        dtype = dtype_name(student)
        if dtype not in self.backend.dtypes:
            raise LossError(
                f"backend {self.backend.name!r} computes in {', '.join(self.backend.dtypes)}, "
                f"but the student's logits are {dtype}"
            )
        teacher_dtype = dtype_name(teacher)
        if teacher_dtype not in self.backend.dtypes:
            teacher_dtype = dtype
        bridge = self.bridge
        return bridge.logits(student, dtype), bridge.logits(teacher, teacher_dtype), bridge.labels(labels)

    def _topk_options(self) -> dict[str, Any]:
        return {"mode": self.topk_mode, "divergence": "forward_kl", "temperature": self.temperature}

    def dense(self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
              normalizer: float) -> torch.Tensor:
        """``sum_i L_i / normalizer`` against dense teacher logits; differentiable in ``student``."""
        return _DenseKD.apply(student, teacher, labels, self, float(normalizer))

    def topk(self, student: torch.Tensor, logprobs: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor,
             normalizer: float) -> torch.Tensor:
        """The same against a top-k teacher pair, through the backend's ``topk_divergence``."""
        needed = ("topk_divergence", "topk_divergence_gradient")
        missing = [m for m in needed if not callable(getattr(self.backend, m, None))]
        if missing:
            raise LossError(
                f"backend {self.backend.name!r} does not implement {' and '.join(missing)}, which a top-k teacher "
                "needs; pick a backend that lists topk_divergence in its capabilities, or use a dense teacher"
            )
        return _TopKKD.apply(student, logprobs, ids, labels, self, float(normalizer))
