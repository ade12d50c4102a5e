"""Fused linear KD on torch: the KD loss of ``h W^T`` and its gradients, row chunk by row chunk.

``fused_linear_kd_loss(h, W, teacher, y, ...)`` is differentiable with respect to the student's hidden
states ``h`` ``[..., H]`` and LM-head weight ``W`` ``[V, H]``; the teacher is logits ``[..., V]`` or a
``(hidden, weight)`` pair (its logits are formed per chunk too). For each chunk of ``C`` rows it forms the
chunk's logits ``h_c W^T``, the KD loss and logit gradient ``G_c`` of those rows (one pass, the row kernel
of the backend), and accumulates ``dL/dh_c = G_c W`` and ``dL/dW += G_c^T h_c``. Peak extra memory is
``O(C V)`` (a few ``[C, V]`` buffers) plus the gradients themselves (``[N, H]`` and ``[V, H]``): the
``[N, V]`` logits and gradient never exist. The contract is contracts/kd-fused-linear-v1.yaml.

The gradients are formed in forward (when ``h`` or ``W`` needs one) and scaled by ``grad_output`` in
backward; for ``reduction="none"`` backward recomputes them with the per-row ``grad_output`` folded in.

The row kernel is a parameter (:class:`RowKernel`), so the Triton backend drives the same loop with its
own kernels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from reference import checks

RowKernel = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]
"""``kernel(s_c, t_c, y_c, weight_c, temperature=, alpha=, gradient=) -> (loss_rows, gradient or None)``:
per-row KD loss of a chunk (not masked) and ``weight_c``-scaled logit gradient. It validates the chunk's
logits (raising the reference's ValueError)."""

CHUNK_ELEMENTS = 1 << 24
"""Default chunk: about this many logits (64 MiB of float32) per chunk. Large enough that the chunk's matmuls
run near the speed of whole ones and that the row kernel is compiled (from
backends.torch_kd_kernel.COMPILE_MIN_ELEMENTS = 2^22 logits; below it the eager kernel runs); small enough that
a chunk's few [C, V] buffers stay far below [N, V] at training sizes (at N = 4096, V = 32000: 525 rows, peak
about 0.16x the unfused path's; benchmarks/RESULTS.md)."""


def default_chunk_rows(vocab: int) -> int:
    """Rows per chunk: at least :data:`CHUNK_ELEMENTS` logits (rounded up to whole rows)."""
    return max(1, -(-CHUNK_ELEMENTS // max(vocab, 1)))


def torch_row_kernel(
    s: torch.Tensor,
    t: torch.Tensor,
    y: torch.Tensor,
    weight: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
    gradient: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The torch backend's row kernel (compiled or eager, as :mod:`backends.torch_kd_kernel` decides)."""
    from backends import torch_kd_kernel as kernel
    from backends.torch_backend import TorchBackend

    compute = s.dtype
    grad_dtype = compute if gradient else None
    result = None
    if kernel.use_compiled(s.numel()):
        result = kernel.run_compiled(
            s, t, y, weight, temperature=temperature, alpha=alpha, compute=compute, gradient_dtype=grad_dtype
        )
    if result is not None:
        loss, g, m_s, m_t = result
    else:
        m_s, m_t = s.amax(dim=1), t.amax(dim=1)
    if not kernel.row_max_all_finite(m_s, m_t):
        TorchBackend._check_values(torch, [("student_logits", s), ("teacher_logits", t)])
    if result is None:
        loss, g = kernel.kd_rows(
            s, t, y, m_s=m_s, m_t=m_t, temperature=temperature, alpha=alpha, row_weight=weight,
            compute=compute, gradient_dtype=grad_dtype,
        )  # fmt: skip
    return loss, g


def _finite(name: str, x: torch.Tensor) -> None:
    if x.numel() and not bool(x.isfinite().all()):
        from reference.fused_linear import _matrix

        _matrix(name, x.detach().to("cpu", torch.float64).numpy())  # raises with the position


def chunked_loss_and_gradients(
    h: torch.Tensor,
    w: torch.Tensor,
    teacher: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    y: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
    ignore_index: int,
    reduction: str,
    chunk_rows: int | None,
    row_kernel: RowKernel,
    gradients: bool,
    grad_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(loss, dL/dh, dL/dW)`` with rows processed ``chunk_rows`` at a time (inputs already validated).

    ``h`` is ``[N, H]``, ``y`` ``[N]``, the teacher ``[N, V]`` logits or a pair ``([N, Ht], [V, Ht])``.
    The loss is reduced (``none``: per row). ``grad_scale`` ``[N]`` multiplies each row's gradient
    (autograd's per-row ``grad_output`` for ``none``).
    """
    compute = torch.float64 if h.dtype == torch.float64 or w.dtype == torch.float64 else torch.float32
    n, vocab = h.shape[0], w.shape[0]
    rows = chunk_rows or default_chunk_rows(vocab)
    valid = y != ignore_index
    count = valid.sum().clamp_min(1).to(compute)
    weight = valid.to(torch.float64)  # float64: each row's gradient coefficient is rounded once, in the kernel
    if reduction == "mean":
        weight = weight / valid.sum().clamp_min(1)
    if grad_scale is not None:
        weight = weight * grad_scale.to(torch.float64)
    safe_y = torch.where(valid, y, 0)
    wc = w.to(compute)
    per_row = torch.empty(n, dtype=compute, device=h.device)
    grad_h = torch.empty(h.shape, dtype=compute, device=h.device) if gradients else None
    grad_w = torch.zeros(w.shape, dtype=compute, device=h.device) if gradients else None
    paired = isinstance(teacher, tuple)
    tw = teacher[1].to(compute) if paired else None
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        hc = h[r0:r1].to(compute)
        s = hc @ wc.T
        t = teacher[0][r0:r1].to(compute) @ tw.T if paired else teacher[r0:r1].to(compute)
        loss_c, g = row_kernel(
            s, t, safe_y[r0:r1], weight[r0:r1], temperature=temperature, alpha=alpha, gradient=gradients
        )
        per_row[r0:r1] = loss_c
        if gradients:
            torch.mm(g, wc, out=grad_h[r0:r1])
            grad_w.addmm_(g.T, hc)
        del s, t, g
    per_row = torch.where(valid, per_row, 0.0)
    if reduction == "none":
        loss = per_row
    elif reduction == "sum":
        loss = per_row.sum()
    else:
        loss = per_row.sum() / count
    return loss, grad_h, grad_w


def validated(
    torch_backend: Any,
    student_hidden: Any,
    student_weight: Any,
    teacher: Any,
    labels: Any,
    temperature: Any,
    alpha: Any,
    ignore_index: Any,
    reduction: Any,
    chunk_rows: Any,
) -> tuple[Any, ...]:
    """Checked arguments as tensors on the backend's device: ``(h2, w, teacher2, y1, lead_shape, ...)``."""
    temperature, alpha, reduction = checks.check_hyperparameters(temperature, alpha, reduction)
    ignore_index = checks.check_ignore_index(ignore_index)
    if chunk_rows is not None and (isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1):
        raise ValueError(f"chunk_rows must be a positive int or None, got {chunk_rows!r}")
    h = torch_backend._logits(torch, "student_hidden", student_hidden)
    w = torch_backend._logits(torch, "student_weight", student_weight).to(h.device)
    if h.dim() < 1 or w.dim() != 2 or h.shape[-1] != w.shape[1]:
        raise ValueError(
            f"student_hidden {checks.format_shape(tuple(h.shape))} and student_weight "
            f"{checks.format_shape(tuple(w.shape))} do not fit: the weight must be [vocab, hidden] with the "
            "hidden states' last axis"
        )
    y = torch_backend._labels(torch, labels, h.device)
    lead = tuple(h.shape[:-1])
    if tuple(y.shape) != lead:
        raise ValueError(checks.labels_shape_message(tuple(y.shape), (*lead, w.shape[0])))
    h2 = h.reshape(-1, h.shape[-1])
    _finite("student_hidden", h2)
    _finite("student_weight", w)
    if isinstance(teacher, tuple):
        th = torch_backend._logits(torch, "teacher_hidden", teacher[0]).to(h.device)
        tw = torch_backend._logits(torch, "teacher_weight", teacher[1]).to(h.device)
        if tuple(th.shape[:-1]) != lead or tw.dim() != 2 or th.shape[-1] != tw.shape[1] or tw.shape[0] != w.shape[0]:
            raise ValueError(
                f"teacher (hidden {checks.format_shape(tuple(th.shape))}, weight "
                f"{checks.format_shape(tuple(tw.shape))}) does not match the student (hidden "
                f"{checks.format_shape(tuple(h.shape))}, weight {checks.format_shape(tuple(w.shape))}): "
                "the rows and the vocabulary must agree"
            )
        th2 = th.reshape(-1, th.shape[-1])
        _finite("teacher_hidden", th2)
        _finite("teacher_weight", tw)
        teacher2: Any = (th2, tw)
    else:
        t = torch_backend._logits(torch, "teacher_logits", teacher).to(h.device)
        checks.check_shapes((*lead, w.shape[0]), tuple(t.shape))
        teacher2 = t.reshape(-1, t.shape[-1])
    y1 = y.reshape(-1)
    vocab = w.shape[0]
    valid = y1 != ignore_index
    if bool((valid & ((y1 < 0) | (y1 >= vocab))).any()):
        checks.check_labels(y.cpu().numpy(), vocab, ignore_index)
    return h, h2, w, teacher2, y1, lead, temperature, alpha, ignore_index, reduction


class _FusedLinearKD(torch.autograd.Function):
    """Loss of ``h W^T``; the gradients of ``h`` and ``W`` come from the chunked forward."""

    @staticmethod
    def forward(ctx: Any, h, w, teacher_a, teacher_b, y, hyper):  # type: ignore[override]
        temperature, alpha, ignore_index, reduction, chunk_rows, row_kernel, lead = hyper
        teacher = teacher_a if teacher_b is None else (teacher_a, teacher_b)
        need = bool(ctx.needs_input_grad[0] or ctx.needs_input_grad[1])
        eager = need and reduction != "none"
        loss, gh, gw = chunked_loss_and_gradients(
            h.reshape(-1, h.shape[-1]), w, teacher, y, temperature=temperature, alpha=alpha,
            ignore_index=ignore_index, reduction=reduction, chunk_rows=chunk_rows, row_kernel=row_kernel,
            gradients=eager,
        )  # fmt: skip
        ctx.hyper = hyper
        ctx.gradients = (gh, gw)
        if need:
            ctx.save_for_backward(h, w, teacher_a, teacher_b, y)
        out = torch.promote_types(h.dtype, w.dtype) if h.is_floating_point() else torch.float64
        return (loss.reshape(lead) if reduction == "none" else loss).to(out)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_output):  # type: ignore[override]
        h, w, teacher_a, teacher_b, y = ctx.saved_tensors
        temperature, alpha, ignore_index, reduction, chunk_rows, row_kernel, _ = ctx.hyper
        gh, gw = ctx.gradients
        ctx.gradients = (None, None)
        if gh is None:  # reduction "none", or a second backward: recompute with grad_output folded in
            teacher = teacher_a if teacher_b is None else (teacher_a, teacher_b)
            scale = grad_output.reshape(-1) if reduction == "none" else None
            _, gh, gw = chunked_loss_and_gradients(
                h.reshape(-1, h.shape[-1]), w, teacher, y, temperature=temperature, alpha=alpha,
                ignore_index=ignore_index, reduction=reduction, chunk_rows=chunk_rows, row_kernel=row_kernel,
                gradients=True, grad_scale=scale,
            )  # fmt: skip
            if reduction != "none":
                gh.mul_(grad_output.to(gh.dtype))
                gw.mul_(grad_output.to(gw.dtype))
        elif not (grad_output.device.type == "cpu" and float(grad_output) == 1.0):
            gh.mul_(grad_output.to(gh.dtype))
            gw.mul_(grad_output.to(gw.dtype))
        return gh.reshape(h.shape).to(h.dtype), gw.to(w.dtype), None, None, None, None


def fused_linear_kd_loss(
    torch_backend: Any,
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
    row_kernel: RowKernel = torch_row_kernel,
) -> torch.Tensor:
    """The KD loss of ``student_hidden @ student_weight.T``, differentiable w.r.t. hidden states and weight."""
    h, _, w, teacher2, y1, lead, temperature, alpha, ignore_index, reduction = validated(
        torch_backend, student_hidden, student_weight, teacher, labels, temperature, alpha, ignore_index,
        reduction, chunk_rows,
    )  # fmt: skip
    a, b = teacher2 if isinstance(teacher2, tuple) else (teacher2, None)
    hyper = (temperature, alpha, ignore_index, reduction, chunk_rows, row_kernel, lead)
    return _FusedLinearKD.apply(h, w, a, b, y1, hyper)
