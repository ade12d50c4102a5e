"""The ``torch`` (CPU) and ``torch-cuda`` backends: the KD math on torch tensors.

One class, :class:`TorchBackend`, parametrized by device; the entry points are :data:`TORCH_CPU` and
:data:`TORCH_CUDA`. torch is imported lazily (inside methods), so loading these objects costs nothing and
works where torch is missing; :meth:`TorchBackend.available` then says why they cannot run.

Dtype policy
    float64, float32 and bfloat16 logits are supported (float16 is accepted too). float64 computes in
    float64 and float32 in float32. **bfloat16 (and float16) is computed in float32 and the result is cast
    back to the input dtype**: a bfloat16 input gives a bfloat16 loss, probabilities and gradient. One
    rule for every dtype (results come back in the input's dtype) keeps the autograd contract, where the
    gradient must have the dtype of the tensor it belongs to; the float32 internals mean the only extra
    error is the final rounding to bfloat16 (about 3 significant digits). Student and teacher of different
    float dtypes are promoted (``torch.promote_types``). Integer logits are accepted like the reference
    accepts them, and computed in float64.

Numerics
    Every softmax shifts by the row max (``-inf`` entries give probability exactly 0 and ``1e4``-sized
    logits stay finite); KL terms outside the teacher's support are exactly 0 (``torch.where``, never
    ``0 * -inf``); a loss term whose weight is exactly 0 contributes exactly 0, as in the reference.

Validation
    The shape, dtype and hyperparameter checks of :mod:`reference.checks` run on shapes and Python
    scalars. The value checks (NaN, +inf, rows without a finite logit, labels out of range) run as one
    batch of tensor reductions with a single host sync; only when that says "bad" are the offending tensors
    copied to the host and handed to the reference's numpy checks, which raise with the canonical message.
    Checks run in the reference's order, so the first problem reported is the reference's.

Autograd
    :meth:`TorchBackend.kd_loss` is a ``torch.autograd.Function`` whose backward is the analytic gradient
    (:meth:`TorchBackend.kd_logit_gradient`'s formula, scaled by ``grad_output``), computed from per-row
    statistics saved in forward. The teacher is a constant: no gradient flows to ``teacher_logits``.
    The other operations are plain tensor code (differentiable by torch where torch can).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from backends.protocol import FLOAT_DTYPES, LABEL_DTYPE, Availability, BackendError
from backends.torch_family import TorchFamily
from reference import checks
from reference.kd_family import uses_family

if TYPE_CHECKING:
    import torch

_INSTALL_HINT = "torch is not installed: pip install 'kd-contracts[torch]'"


def _dtype_name(dtype: Any) -> str:
    """``torch.float32`` -> ``float32``, to word messages as the reference (numpy) does."""
    return str(dtype).removeprefix("torch.")


class TorchBackend(TorchFamily):
    """The KD math on torch tensors on one device (``"cpu"`` or ``"cuda"``); see the module docstring."""

    dtypes: tuple[str, ...] = FLOAT_DTYPES
    capabilities: frozenset[str] = TorchFamily.capabilities | {"kd_loss_from_hidden"}
    """Optional protocol members implemented here."""

    def __init__(self, device: str = "cpu") -> None:
        if device not in ("cpu", "cuda"):
            raise ValueError(f"TorchBackend device must be 'cpu' or 'cuda', got {device!r}")
        self.device = device
        self.name = "torch" if device == "cpu" else "torch-cuda"
        self._availability: Availability | None = None

    def __repr__(self) -> str:
        return f"<backend {self.name} on {self.device}>"

    # ----------------------------------------------------------------------------------------------------
    # Environment and conversion.
    # ----------------------------------------------------------------------------------------------------

    def available(self) -> Availability:
        """Whether torch (and, for ``torch-cuda``, a CUDA device) is usable here. Never raises; cached."""
        if self._availability is None:
            self._availability = self._probe()
        return self._availability

    def _probe(self) -> Availability:
        try:
            import torch
        except ImportError:
            return Availability.no(_INSTALL_HINT)
        except Exception as error:  # a broken install
            return Availability.no(f"torch cannot be imported: {type(error).__name__}: {error}")
        if self.device == "cuda":
            try:
                ok = torch.cuda.is_available()
            except Exception as error:
                return Availability.no(f"no CUDA device: torch.cuda.is_available() raised {error}")
            if not ok:
                build = "" if torch.version.cuda else f" (this torch build, {torch.__version__}, has no CUDA)"
                return Availability.no(f"no CUDA device: torch.cuda.is_available() is False{build}")
        return Availability.yes()

    def _torch(self) -> Any:
        """The torch module, or BackendError with the reason this backend cannot run."""
        available = self.available()
        if not available:
            raise BackendError(f"backend {self.name!r} cannot run here: {available.reason}")
        import torch

        return torch

    def asarray(self, array: np.ndarray, dtype: str) -> torch.Tensor:
        """``array`` as a tensor of ``dtype`` (float64, float32, bfloat16, int64 or int32) on this device."""
        torch = self._torch()
        wanted = {
            "float64": torch.float64,
            "float32": torch.float32,
            "bfloat16": torch.bfloat16,
            LABEL_DTYPE: torch.int64,
            "int32": torch.int32,
        }
        if dtype not in wanted:
            raise ValueError(
                f"{self.name} backend cannot make tensors of dtype {dtype!r}: supported are "
                f"{', '.join(map(repr, wanted))}"
            )
        source = np.asarray(array, order="C")  # not ascontiguousarray: it turns 0-d input into 1-d
        if dtype == "bfloat16":
            # Round to float32 first, then to bfloat16 (nearest even each time): the rounding torch itself
            # applies to float64 and the one the harness uses for the reference's bfloat16 inputs.
            source = source.astype(np.float32)
        return torch.from_numpy(source).to(device=self.device, dtype=wanted[dtype])

    def to_numpy(self, x: Any) -> np.ndarray:
        """A tensor or scalar as numpy: float64 for floating values (exact widening), int64 for integers."""
        torch = self._torch()
        if isinstance(x, torch.Tensor):
            x = x.detach()
            if x.is_floating_point():
                return x.to(device="cpu", dtype=torch.float64).numpy()
            if x.dtype == torch.bool:
                return x.cpu().numpy()
            return x.to(device="cpu", dtype=torch.int64).numpy()
        array = np.asarray(x)
        if array.dtype.kind == "f":
            return array.astype(np.float64)
        if array.dtype.kind in ("i", "u"):
            return array.astype(np.int64)
        return array

    # ----------------------------------------------------------------------------------------------------
    # Input handling: conversion, host-side checks, fused value checks.
    # ----------------------------------------------------------------------------------------------------

    def _logits(self, torch: Any, name: str, x: Any) -> torch.Tensor:
        """``x`` as a real tensor (the reference's dtype and conversion checks; no value checks)."""
        if not isinstance(x, torch.Tensor):
            x = torch.from_numpy(np.asarray(checks.as_float64_logits(name, x), order="C")).to(self.device)
        if x.dtype == torch.bool or x.is_complex():
            raise ValueError(checks.logits_dtype_message(name, _dtype_name(x.dtype)))
        return x

    def _labels(self, torch: Any, y: Any, device: Any) -> torch.Tensor:
        """``y`` as an integer tensor on ``device`` (the reference's dtype checks)."""
        if not isinstance(y, torch.Tensor):
            y = torch.from_numpy(np.asarray(checks.int64_labels(checks.as_integer_labels(y)), order="C"))
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise ValueError(checks.labels_dtype_message(_dtype_name(y.dtype)))
        if y.dtype in (torch.uint32, torch.uint64):  # a cast would wrap 2**64 - 100 to -100 (ignore_index)
            y = torch.from_numpy(checks.int64_labels(y.cpu().numpy()))
        return y.to(device=device, dtype=torch.int64)

    @staticmethod
    def _check_values(
        torch: Any,
        logits: list[tuple[str, torch.Tensor]],
        labels: tuple[torch.Tensor, int, int] | None = None,
    ) -> None:
        """Value checks of logits (and labels) in the reference's order, with one host sync.

        All the "is anything bad" reductions are stacked and read at once; only if one fires are the
        tensors copied to the host and checked by :mod:`reference.checks`, which raises the message.
        """
        flags = []
        for _, x in logits:
            if x.is_floating_point() and x.numel():
                flags += [x.isnan().any(), x.isposinf().any(), (~x.isfinite()).all(dim=-1).any()]
        if labels is not None:
            y, vocab, ignore_index = labels
            if y.numel():
                flags.append(((y != ignore_index) & ((y < 0) | (y >= vocab))).any())
        if not flags or not bool(torch.stack(flags).any()):
            return
        for name, x in logits:
            host = x.detach().to("cpu", torch.float64) if x.is_floating_point() else x.detach().cpu()
            checks.check_logits(name, host.numpy())
        if labels is not None:
            y, vocab, ignore_index = labels
            checks.check_labels(y.detach().cpu().numpy(), vocab, ignore_index)
        raise RuntimeError(
            "the torch value checks flagged inputs that the reference checks accept: this is a defect in "
            "backends/torch_backend.py"
        )

    @staticmethod
    def _compute_dtype(torch: Any, *tensors: torch.Tensor) -> tuple[Any, Any]:
        """(dtype to compute in, dtype of the results) for these logits; see the dtype policy."""
        out = None
        for x in tensors:
            dtype = x.dtype if x.is_floating_point() else torch.float64
            out = dtype if out is None else torch.promote_types(out, dtype)
        compute = torch.float64 if out == torch.float64 else torch.float32
        return compute, out

    def _kd_inputs(
        self,
        student_logits: Any,
        teacher_logits: Any,
        labels: Any,
        temperature: Any,
        alpha: Any,
        ignore_index: Any,
        reduction: Any,
    ) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor, float, float, int, str]:
        """Validate kd_loss / kd_logit_gradient arguments in the reference's order."""
        temperature, alpha, reduction = checks.check_hyperparameters(temperature, alpha, reduction)
        ignore_index = checks.check_ignore_index(ignore_index)
        torch = self._torch()
        s = self._logits(torch, "student_logits", student_logits)
        t = self._logits(torch, "teacher_logits", teacher_logits)
        y = self._labels(torch, labels, s.device)
        checks.check_shapes(tuple(s.shape), tuple(t.shape), tuple(y.shape))
        t = t.to(s.device)
        return torch, s, t, y, temperature, alpha, ignore_index, reduction

    # ----------------------------------------------------------------------------------------------------
    # The math surface.
    # ----------------------------------------------------------------------------------------------------

    def softmax(self, logits: Any, temperature: float = 1.0) -> torch.Tensor:
        """``softmax(z / T)`` over the last axis, shifted by the row max; result in the input's dtype."""
        temperature = checks.check_temperature(temperature)
        torch = self._torch()
        z = self._logits(torch, "logits", logits)
        checks.check_logits_shape("logits", tuple(z.shape))
        self._check_values(torch, [("logits", z)])
        compute, out = self._compute_dtype(torch, z)
        return torch.softmax(_shifted(torch, z.to(compute), temperature), dim=-1).to(out)

    def log_softmax(self, logits: Any, temperature: float = 1.0) -> torch.Tensor:
        """``log_softmax(z / T)`` over the last axis (``-inf`` stays ``-inf``), in the input's dtype."""
        temperature = checks.check_temperature(temperature)
        torch = self._torch()
        z = self._logits(torch, "logits", logits)
        checks.check_logits_shape("logits", tuple(z.shape))
        self._check_values(torch, [("logits", z)])
        compute, out = self._compute_dtype(torch, z)
        return torch.log_softmax(_shifted(torch, z.to(compute), temperature), dim=-1).to(out)

    def cross_entropy(
        self,
        logits: Any,
        labels: Any,
        *,
        ignore_index: int = checks.DEFAULT_IGNORE_INDEX,
        reduction: str = "mean",
    ) -> torch.Tensor:
        """``CE_i = -log softmax(s_i)[y_i]`` (untempered), 0 on ignored rows, then reduced."""
        torch, s, y, ignore_index, reduction = self._ce_inputs(logits, labels, ignore_index, reduction)
        self._check_values(torch, [("logits", s)], (y, s.shape[-1], ignore_index))
        compute, out = self._compute_dtype(torch, s)
        valid = y != ignore_index
        ce = _cross_entropy_rows(torch, torch.log_softmax(s.to(compute), dim=-1), y, valid)
        return _reduce(torch, ce, valid, reduction).to(out)

    def _ce_inputs(self, logits: Any, labels: Any, ignore_index: Any, reduction: Any) -> tuple:
        """``(torch, s, y, ignore_index, reduction)`` checked as the reference checks them, in its order: the
        arguments, the logits' shape, then the labels (a bad label array reports bad logit values first)."""
        reduction = checks.check_reduction(reduction)
        ignore_index = checks.check_ignore_index(ignore_index)
        torch = self._torch()
        s = self._logits(torch, "logits", logits)
        checks.check_logits_shape("logits", tuple(s.shape))
        try:  # the reference checks the logits' values before it looks at the labels at all
            y = self._labels(torch, labels, s.device)
            checks.check_labels_shape(tuple(y.shape), tuple(s.shape))
        except ValueError:
            self._check_values(torch, [("logits", s)])
            raise
        return torch, s, y, ignore_index, reduction

    def kl_divergence(self, student_logits: Any, teacher_logits: Any, *, temperature: float = 1.0) -> torch.Tensor:
        """Per-row ``KL(softmax(t/T) || softmax(s/T))``, shape ``student_logits.shape[:-1]``."""
        temperature = checks.check_temperature(temperature)
        torch = self._torch()
        s = self._logits(torch, "student_logits", student_logits)
        t = self._logits(torch, "teacher_logits", teacher_logits)
        checks.check_shapes(tuple(s.shape), tuple(t.shape))
        t = t.to(s.device)
        self._check_values(torch, [("student_logits", s), ("teacher_logits", t)])
        compute, out = self._compute_dtype(torch, s, t)
        log_q = torch.log_softmax(s.to(compute) / temperature, dim=-1)
        log_p = torch.log_softmax(t.to(compute) / temperature, dim=-1)
        return _kl_rows(torch, log_p, log_q).to(out)

    def kd_loss(
        self,
        student_logits: Any,
        teacher_logits: Any,
        labels: Any,
        *,
        temperature: float,
        alpha: float,
        divergence: str = "forward_kl",
        beta: float | None = None,
        skew: float | None = None,
        ignore_index: int = checks.DEFAULT_IGNORE_INDEX,
        reduction: str = "mean",
        normalizer: float | None = None,
    ) -> torch.Tensor:
        """``alpha * CE + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))`` per row, then reduced.

        Differentiable with respect to ``student_logits``: backward is the analytic gradient.
        """
        if uses_family(teacher_logits, divergence, beta, skew, normalizer):  # the family: backends/torch_family.py
            family = {"divergence": divergence, "beta": beta, "skew": skew, "normalizer": normalizer}
            kw = {"temperature": temperature, "alpha": alpha, "ignore_index": ignore_index, "reduction": reduction}
            return self.family_kd(False, student_logits, teacher_logits, labels, **kw, **family)
        torch, s, t, y, temperature, alpha, ignore_index, reduction = self._kd_inputs(
            student_logits, teacher_logits, labels, temperature, alpha, ignore_index, reduction
        )
        return _kd_function(torch).apply(s, t, y, temperature, alpha, ignore_index, reduction)

    def kd_logit_gradient(
        self,
        student_logits: Any,
        teacher_logits: Any,
        labels: Any,
        *,
        temperature: float,
        alpha: float,
        divergence: str = "forward_kl",
        beta: float | None = None,
        skew: float | None = None,
        ignore_index: int = checks.DEFAULT_IGNORE_INDEX,
        reduction: str = "mean",
        normalizer: float | None = None,
    ) -> torch.Tensor:
        """``alpha (softmax(s) - e_y) + (1 - alpha) T (softmax(s/T) - softmax(t/T))`` per row.

        Zero on ignored rows; divided by the number of valid rows for ``mean``. Shape and dtype of
        ``student_logits`` (computed in the dtype promoted with the teacher's).
        """
        if uses_family(teacher_logits, divergence, beta, skew, normalizer):  # the family: backends/torch_family.py
            family = {"divergence": divergence, "beta": beta, "skew": skew, "normalizer": normalizer}
            kw = {"temperature": temperature, "alpha": alpha, "ignore_index": ignore_index, "reduction": reduction}
            return self.family_kd(True, student_logits, teacher_logits, labels, **kw, **family)
        torch, s, t, y, temperature, alpha, ignore_index, reduction = self._kd_inputs(
            student_logits, teacher_logits, labels, temperature, alpha, ignore_index, reduction
        )
        _, gradient = _forward_kl(torch, s, t, y, temperature, alpha, ignore_index, reduction, gradient=True)
        return gradient


    def kd_loss_from_hidden(
        self,
        student_hidden: Any,
        student_weight: Any,
        teacher: Any,
        labels: Any,
        *,
        temperature: float,
        alpha: float,
        ignore_index: int = checks.DEFAULT_IGNORE_INDEX,
        reduction: str = "mean",
        chunk_rows: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loss, dL/dh, dL/dW)`` of the KD loss of ``h W^T``, in row chunks (never ``[N, V]`` at once).

        ``teacher`` is logits ``[..., V]`` or a ``(hidden, weight)`` pair; see
        :mod:`backends.torch_fused_linear` (whose ``fused_linear_kd_loss`` is the differentiable form).
        """
        return _fused_linear(self, student_hidden, student_weight, teacher, labels, temperature, alpha,
                             ignore_index, reduction, chunk_rows, self._row_kernel)  # fmt: skip

    _row_kernel: Any = None
    """The per-chunk kernel of :meth:`kd_loss_from_hidden` (``None``: torch's own); Triton overrides it."""


# --------------------------------------------------------------------------------------------------------
# Row-wise math on validated tensors of the compute dtype (shape [..., V], labels [...]).
# --------------------------------------------------------------------------------------------------------


def _shifted(torch: Any, z: torch.Tensor, temperature: float) -> torch.Tensor:
    """``(z - max z) / T`` over the last axis: all entries <= 0, so huge logits cannot overflow to inf - inf
    (``[-1.7e308, 1.7e308]`` at T = 0.5 gives softmax ``[0, 1]``, not NaN). The row max is finite (checked)."""
    return (z - z.amax(dim=-1, keepdim=True)) / temperature


def _cross_entropy_rows(torch: Any, log_q: torch.Tensor, y: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``-log_q[y]`` on valid rows, 0 on ignored ones (their label is replaced by column 0 to gather)."""
    picked = log_q.gather(-1, torch.where(valid, y, 0).unsqueeze(-1).to(torch.int64)).squeeze(-1)
    return torch.where(valid, -picked, torch.zeros_like(picked))


def _kl_rows(torch: Any, log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``sum_v p_v (log p_v - log q_v)`` with terms where ``p_v == 0`` exactly 0."""
    p = log_p.exp()
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    return terms.sum(dim=-1)


def _reduce(torch: Any, per_row: torch.Tensor, valid: torch.Tensor, reduction: str) -> torch.Tensor:
    """``none``: the rows; ``sum``: their total; ``mean``: total / #valid rows, 0 when none (no sync).

    With no valid row every row is exactly 0, so dividing the total by ``max(#valid, 1)`` gives 0.
    """
    if reduction == "none":
        return per_row
    total = per_row.sum()
    if reduction == "sum":
        return total
    return total / _valid_count_divisor(torch, valid, total.dtype)


def _valid_count_divisor(torch: Any, valid: torch.Tensor, dtype: Any) -> torch.Tensor:
    """``max(#valid rows, 1)`` as a 0-d tensor of ``dtype`` (computed on the device, no host sync)."""
    return valid.sum().clamp_min(1).to(dtype)


def _gradient_dtype(torch: Any, s: torch.Tensor) -> Any:
    """The gradient's dtype: the student's (float64 for integer student logits)."""
    return s.dtype if s.is_floating_point() else torch.float64


def _forward_kl(
    torch: Any,
    s: torch.Tensor,
    t: torch.Tensor,
    y: torch.Tensor,
    temperature: float,
    alpha: float,
    ignore_index: int,
    reduction: str,
    *,
    gradient: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Reduced forward-KL KD loss (dtype promoted from ``s`` and ``t``) and, if asked, its gradient.

    Validates the logits' values with the row maxes the kernel needs anyway (one reduction pass per
    input, one host sync), then runs :func:`backends.torch_kd_kernel.kd_rows` over row blocks.
    """
    from backends import torch_kd_kernel as kernel

    compute, out = TorchBackend._compute_dtype(torch, s, t)
    s2, t2 = kernel.as_rows(s), kernel.as_rows(t)
    if not s2.is_floating_point():
        s2 = s2.to(compute)
    if not t2.is_floating_point():
        t2 = t2.to(compute)
    y1 = y.reshape(-1)
    vocab = s.shape[-1]
    valid = y1 != ignore_index
    labels_ok = bool((~(valid & ((y1 < 0) | (y1 >= vocab)))).all())
    count = valid.sum().clamp_min(1)
    weight = valid.to(torch.float64)  # float64, so that each row's gradient coefficient is rounded once
    if reduction == "mean":
        weight = weight / count
    safe_y = torch.where(valid, y1, 0)
    gradient_dtype = _gradient_dtype(torch, s) if gradient else None
    result = None
    if labels_ok and s2.numel() and kernel.use_compiled(s2.numel()):
        result = kernel.run_compiled(
            s2, t2, safe_y, weight, temperature=temperature, alpha=alpha, compute=compute, gradient_dtype=gradient_dtype
        )
    if result is not None:
        per_row, grad, m_s, m_t = result
    else:
        m_s, m_t = s2.amax(dim=1), t2.amax(dim=1)
    if not (labels_ok and kernel.row_max_all_finite(m_s, m_t)):
        TorchBackend._check_values(torch, [("student_logits", s), ("teacher_logits", t)], (y, vocab, ignore_index))
    if result is None:
        per_row, grad = kernel.kd_rows(
            s2,
            t2,
            safe_y,
            m_s=m_s,
            m_t=m_t,
            temperature=temperature,
            alpha=alpha,
            row_weight=weight,
            compute=compute,
            gradient_dtype=gradient_dtype,
        )
    per_row = torch.where(valid, per_row, 0.0).reshape(y.shape)
    if grad is not None:
        grad = grad.reshape(s.shape)
    return _reduce(torch, per_row, valid, reduction).to(out), grad


def _fused_linear(
    backend: Any, h: Any, w: Any, teacher: Any, labels: Any, temperature: Any, alpha: Any, ignore_index: Any,
    reduction: Any, chunk_rows: Any, row_kernel: Any,
) -> tuple[Any, Any, Any]:  # fmt: skip
    """``kd_loss_from_hidden`` for the torch-tensor backends, with the row kernel of ``backend``."""
    from backends import torch_fused_linear as fused

    torch = backend._torch()
    h, h2, w, teacher2, y1, lead, temperature, alpha, ignore_index, reduction = fused.validated(
        backend, h, w, teacher, labels, temperature, alpha, ignore_index, reduction, chunk_rows
    )
    loss, grad_h, grad_w = fused.chunked_loss_and_gradients(
        h2, w, teacher2, y1, temperature=temperature, alpha=alpha, ignore_index=ignore_index,
        reduction=reduction, chunk_rows=chunk_rows, row_kernel=row_kernel or fused.torch_row_kernel, gradients=True,
    )  # fmt: skip
    out = torch.promote_types(h.dtype, w.dtype) if h.is_floating_point() else torch.float64
    loss = loss.reshape(lead) if reduction == "none" else loss
    return loss.to(out), grad_h.reshape(h.shape).to(out), grad_w.to(out)


_FUNCTIONS: dict[str, Any] = {}


def _kd_function(torch: Any) -> Any:
    """The ``torch.autograd.Function`` for kd_loss, defined on first use (so torch is imported lazily)."""
    if "kd" in _FUNCTIONS:
        return _FUNCTIONS["kd"]

    class KDLossFunction(torch.autograd.Function):
        """kd_loss whose backward is the analytic gradient (teacher and labels get no gradient).

        When the student needs a gradient, forward forms it in the same pass as the loss (one ``[..., V]``
        buffer, the only large allocation) and backward scales it in place by ``grad_output`` and hands it
        to autograd. A second backward through the same graph (``retain_graph=True``) recomputes it from
        the saved inputs, since the first one may have been accumulated into or zeroed by then.
        """

        @staticmethod
        def forward(ctx: Any, s, t, y, temperature, alpha, ignore_index, reduction):  # type: ignore[override]
            need = bool(ctx.needs_input_grad[0])
            loss, gradient = _forward_kl(
                torch, s, t, y, temperature, alpha, ignore_index, reduction, gradient=need
            )
            if need:
                ctx.save_for_backward(s, t, y)
                ctx.gradient = gradient
                ctx.hyper = (temperature, alpha, ignore_index, reduction)
            return loss

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx: Any, grad_output):  # type: ignore[override]
            s, t, y = ctx.saved_tensors
            temperature, alpha, ignore_index, reduction = ctx.hyper
            gradient, ctx.gradient = ctx.gradient, None
            if gradient is None:  # a second backward: the first one's buffer is autograd's now
                _, gradient = _forward_kl(
                    torch, s, t, y, temperature, alpha, ignore_index, reduction, gradient=True
                )
            scale = grad_output.to(gradient.dtype)
            if reduction == "none":
                gradient.mul_(scale.unsqueeze(-1))
            elif not (scale.device.type == "cpu" and float(scale) == 1.0):
                gradient.mul_(scale)
            return gradient, None, None, None, None, None, None

    _FUNCTIONS["kd"] = KDLossFunction
    return KDLossFunction


TORCH_CPU = TorchBackend("cpu")
"""The entry point ``torch`` (``backends.torch_backend:TORCH_CPU``)."""

TORCH_CUDA = TorchBackend("cuda")
"""The entry point ``torch-cuda`` (``backends.torch_backend:TORCH_CUDA``)."""
