"""The ``triton`` backend: the KD math as Triton kernels (:mod:`backends.triton_kernels`) on torch tensors.

It runs natively on a CUDA GPU, and on CPU tensors under the Triton interpreter (``TRITON_INTERPRET=1``,
set before triton is first imported). Its name says which: ``triton (cuda)`` or ``triton (interpreter)``;
it is selected as ``--backend triton`` either way.

Everything that is not arithmetic on ``[N, V]`` data is shared with :class:`backends.torch_backend.TorchBackend`
(conversion, argument checks, the reference's error messages, reductions of per-row values). Each operation
is one :func:`~backends.triton_kernels.row_stats` pass (vocabulary in chunks, online log-sum-exp) plus, for
``[N, V]`` results, one output pass. Value validation is folded into the statistics pass (it counts NaN and
``+inf`` entries; a row without a finite entry ends with max ``-inf``); only when it flags a row are the
inputs handed to the reference's checks for the message. ``kd_loss`` is differentiable: its backward is the
gradient kernel, with ``grad_output`` folded into the per-row weights.

Dtypes: float64 computes in float64; float32 and bfloat16 are loaded as they are and accumulated in
float32; results come back in the input's dtype (the torch backend's policy). Scalars (``1 / T``, loss
weights, a member's parameter) reach the kernels in a tensor of the accumulation dtype, never as Python floats,
which compiled Triton rounds to float32; under the interpreter, float arguments are made float32 the same way
(:mod:`backends.triton_interpreter`), so the suite sees what a GPU computes.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from backends.protocol import FLOAT_DTYPES, Availability
from backends.torch_backend import TorchBackend, _reduce
from backends.triton_family import FAMILY_CAPABILITIES, TritonFamily
from backends.triton_topk import CAPABILITIES as TOPK_CAPABILITIES
from backends.triton_topk import TritonTopK
from reference import checks
from reference.kd_family import uses_family

if TYPE_CHECKING:
    import torch

CAPABILITIES = frozenset({"kd_loss_from_hidden"}) | FAMILY_CAPABILITIES | TOPK_CAPABILITIES
"""Optional protocol members implemented here: the fused linear KD (the torch chunk loop around these
kernels), the dense divergence family (:mod:`backends.triton_family`) and a top-k teacher
(:mod:`backends.triton_topk`)."""


def interpreted() -> bool:
    """Whether Triton runs in interpreter mode (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0")


class TritonBackend(TritonTopK, TritonFamily, TorchBackend):
    """The KD math as Triton kernels; see the module docstring."""

    dtypes: tuple[str, ...] = FLOAT_DTYPES
    capabilities = CAPABILITIES

    block_n: int = 0
    """Rows per program (0: chosen per device: up to 256 rows in the interpreter, 1 on a GPU)."""
    block_v: int = 0
    """Vocabulary chunk (0: chosen per device: in the interpreter 16, or 1/8 of a vocabulary wider than 128,
    so that every vocabulary wider than 16 spans several chunks and the online rescale is exercised by the
    suite's small shapes; up to 4096 on a GPU)."""
    update: Any = None
    """The online log-sum-exp step (a ``@triton.jit`` function); None: :func:`triton_kernels.online_lse_step`."""

    def __init__(self) -> None:
        interpreter = interpreted()
        super().__init__("cpu" if interpreter else "cuda")
        self.name = "triton (interpreter)" if interpreter else "triton (cuda)"
        self._availability = None

    def _probe(self) -> Availability:
        base = super()._probe()
        if not base:
            return base
        try:
            import triton  # noqa: F401
        except ImportError:
            return Availability.no("triton is not installed: pip install 'kd-contracts[triton]'")
        except Exception as error:
            return Availability.no(f"triton cannot be imported: {type(error).__name__}: {error}")
        return base if self.device == "cuda" else Availability.yes()

    def _torch(self) -> Any:
        torch = super()._torch()
        if self.device == "cpu" and not interpreted():
            raise RuntimeError("the triton backend was built for the interpreter but TRITON_INTERPRET is unset")
        return torch

    # ----------------------------------------------------------------------------------------------------
    # Launch helpers.
    # ----------------------------------------------------------------------------------------------------

    def _launch(self, kernel: Any, grid: tuple[int], *args: Any, **meta: Any) -> None:
        """``kernel[grid](*args, **meta)``; in the interpreter, numpy's floating-point warnings are silenced
        (``tl.where`` evaluates both branches, so guarded ``-inf - -inf`` and ``log(0)`` are computed and
        discarded, as on a GPU, where they raise nothing).

        A Python float argument is refused: compiled Triton passes it as float32, so a float64 kernel would
        compute with a rounded ``1 / T`` or ``log beta``. Scalars go in ``PARAMS``
        (:func:`backends.triton_terms.params`)."""
        floats = [i for i, arg in enumerate(args) if isinstance(arg, float)]
        if floats:
            raise TypeError(
                f"{getattr(kernel, '__name__', kernel)}: argument(s) {floats} are Python floats, which Triton passes "
                "as float32: put them in the PARAMS tensor (backends.triton_terms.params)"
            )
        if self.device == "cpu":
            import numpy as np

            from backends.triton_interpreter import wrap_float_arguments

            wrap_float_arguments()  # float arguments become float32, as compiled Triton makes them
            with np.errstate(all="ignore"):
                kernel[grid](*args, **meta)
        else:
            kernel[grid](*args, **meta)

    def _blocks(self, rows: int, vocab: int) -> tuple[int, int]:
        """``(BLOCK_N, BLOCK_V)`` for ``[rows, vocab]`` inputs (see :attr:`block_n`, :attr:`block_v`)."""
        import triton

        if self.device == "cpu":
            # The interpreter pays per program and per chunk, not per element: few, large programs, and
            # the vocabulary in at least 2 chunks once it is wider than 16 (8 chunks for wide ones).
            block_n = self.block_n or min(256, triton.next_power_of_2(max(rows, 1)))
            return block_n, self.block_v or max(16, triton.next_power_of_2(max(vocab, 1)) // 8)
        return self.block_n or 1, self.block_v or min(4096, triton.next_power_of_2(max(vocab, 16)))

    @staticmethod
    def _acc(torch: Any, compute: Any) -> Any:
        import triton.language as tl

        return tl.float64 if compute == torch.float64 else tl.float32

    def _stats(
        self,
        torch: Any,
        s: torch.Tensor,
        t: torch.Tensor | None,
        *,
        temperature: float,
        ce: bool,
        q: bool,
        compute: Any,
    ) -> torch.Tensor:
        """Row statistics ``[N, 8]`` of 2-D contiguous ``s`` (and ``t``), see :mod:`backends.triton_kernels`."""
        from backends import triton_kernels as kernels
        from backends.triton_terms import params

        n, vocab = s.shape
        stats = torch.empty((n, kernels.N_STATS), dtype=compute, device=s.device)
        if n == 0:
            return stats
        block_n, block_v = self._blocks(n, vocab)
        grid = (-(-n // block_n),)
        self._launch(kernels.row_stats, grid,
            s,
            s if t is None else t,
            stats,
            n,
            vocab,
            s.stride(0),
            s.stride(0) if t is None else t.stride(0),
            params(torch, compute, s.device, temperature=temperature),
            HAS_CE=ce,
            HAS_Q=q,
            HAS_P=t is not None,
            ACC=self._acc(torch, compute),
            UPDATE=self.update or kernels.online_lse_step,
            BLOCK_N=block_n,
            BLOCK_V=block_v,
        )
        return stats

    @staticmethod
    def _rows(torch: Any, x: torch.Tensor, compute: Any) -> torch.Tensor:
        """``[..., V]`` as contiguous 2-D rows in a dtype the kernels load (integers become ``compute``)."""
        x = x.reshape(-1, x.shape[-1]).contiguous() if x.dim() else x
        return x if x.is_floating_point() else x.to(compute)

    def _flagged(self, torch: Any, stats: torch.Tensor, streams: tuple[int, ...]) -> bool:
        """Whether the statistics flag a NaN, a +inf or a row without a finite entry (one host sync)."""
        from backends import triton_kernels as kernels

        if stats.shape[0] == 0:
            return False
        flags = [stats[:, kernels.BAD].ne(0).any()] + [(stats[:, i] == -float("inf")).any() for i in streams]
        return bool(torch.stack(flags).any())

    def _check_logits(self, torch: Any, *named: tuple[str, Any]) -> None:
        """The family's value checks (:meth:`TorchFamily._check_logits`: NaN, +inf, a row without a finite entry)
        from the statistics kernel, one pass per input read at one host sync, with no ``[N, V]`` temporaries;
        only when one fires are the inputs handed to the reference's checks for the message."""
        from backends import triton_kernels as kernels

        flags = []
        for _, x in named:
            if x.is_floating_point() and x.numel():
                compute = torch.float64 if x.dtype == torch.float64 else torch.float32
                rows = self._rows(torch, x, compute)
                stats = self._stats(torch, rows, None, temperature=1.0, ce=True, q=False, compute=compute)
                flags += [stats[:, kernels.BAD].ne(0).any(), (stats[:, kernels.M1] == -float("inf")).any()]
        if flags and bool(torch.stack(flags).any()):
            for name, x in named:
                checks.check_logits(name, self._host(torch, x))

    # ----------------------------------------------------------------------------------------------------
    # The math surface.
    # ----------------------------------------------------------------------------------------------------

    def _softmax(self, logits: Any, temperature: Any, log: bool) -> torch.Tensor:
        from backends import triton_kernels as kernels
        from backends.triton_terms import params

        temperature = checks.check_temperature(temperature)
        torch = self._torch()
        z = self._logits(torch, "logits", logits)
        checks.check_logits_shape("logits", tuple(z.shape))
        compute, out = self._compute_dtype(torch, z)
        rows = self._rows(torch, z, compute)
        stats = self._stats(torch, rows, None, temperature=temperature, ce=False, q=True, compute=compute)
        if self._flagged(torch, stats, (kernels.MQ,)):
            self._check_values(torch, [("logits", z)])
        if temperature < 1.0 and rows.shape[0] and bool((stats[:, kernels.MQ] == float("inf")).any()):
            # z / T overflowed (finite logits near the dtype's limit, T < 1): shift before dividing, as the
            # reference does; softmax is invariant to the per-row shift. Only this rare case pays the extra pass.
            rows = rows - rows.amax(dim=-1, keepdim=True)
            stats = self._stats(torch, rows, None, temperature=temperature, ce=False, q=True, compute=compute)
        result = torch.empty(rows.shape, dtype=out, device=rows.device)
        if rows.shape[0]:
            block_n, block_v = self._blocks(*rows.shape)
            self._launch(kernels.softmax_out, (-(-rows.shape[0] // block_n),),
                rows, stats, result, rows.shape[0], rows.shape[1], rows.stride(0), result.stride(0),
                params(torch, compute, rows.device, temperature=temperature),
                LOG=log, ACC=self._acc(torch, compute), BLOCK_N=block_n, BLOCK_V=block_v,
            )  # fmt: skip
        return result.reshape(z.shape)

    def softmax(self, logits: Any, temperature: float = 1.0) -> torch.Tensor:
        """``softmax(z / T)`` over the last axis (online log-sum-exp, then one output pass)."""
        return self._softmax(logits, temperature, log=False)

    def log_softmax(self, logits: Any, temperature: float = 1.0) -> torch.Tensor:
        """``log_softmax(z / T)`` over the last axis (``-inf`` stays ``-inf``)."""
        return self._softmax(logits, temperature, log=True)

    def cross_entropy(
        self,
        logits: Any,
        labels: Any,
        *,
        ignore_index: int = checks.DEFAULT_IGNORE_INDEX,
        reduction: str = "mean",
    ) -> torch.Tensor:
        """``CE_i = m_i + lse_i - s_{i, y_i}`` from the row statistics, 0 on ignored rows, then reduced."""
        from backends import triton_kernels as kernels

        torch, s, y, ignore_index, reduction = self._ce_inputs(logits, labels, ignore_index, reduction)
        compute, out = self._compute_dtype(torch, s)
        rows = self._rows(torch, s, compute)
        stats = self._stats(torch, rows, None, temperature=1.0, ce=True, q=False, compute=compute)
        y1 = y.reshape(-1)
        valid = y1 != ignore_index
        if self._flagged(torch, stats, (kernels.M1,)) or bool((valid & ((y1 < 0) | (y1 >= s.shape[-1]))).any()):
            self._check_values(torch, [("logits", s)], (y, s.shape[-1], ignore_index))
        ce = self._picked_ce(torch, rows, stats, y1, valid, compute)
        return _reduce(torch, ce.reshape(y.shape), valid.reshape(y.shape), reduction).to(out)

    @staticmethod
    def _picked_ce(torch: Any, rows: Any, stats: Any, y1: Any, valid: Any, compute: Any) -> torch.Tensor:
        """``-log softmax(s)[y]`` per row from the statistics (one gathered entry per row), 0 where ignored."""
        from backends import triton_kernels as kernels

        picked = rows.gather(1, torch.where(valid, y1, 0)[:, None])[:, 0].to(compute)
        ce = stats[:, kernels.M1] + stats[:, kernels.LSE1] - picked
        return torch.where(valid, ce, 0.0)

    def kl_divergence(self, student_logits: Any, teacher_logits: Any, *, temperature: float = 1.0) -> torch.Tensor:
        """Per-row ``KL(softmax(t/T) || softmax(s/T))``, accumulated online in the statistics pass."""
        from backends import triton_kernels as kernels

        temperature = checks.check_temperature(temperature)
        torch = self._torch()
        s = self._logits(torch, "student_logits", student_logits)
        t = self._logits(torch, "teacher_logits", teacher_logits)
        checks.check_shapes(tuple(s.shape), tuple(t.shape))
        t = t.to(s.device)
        compute, out = self._compute_dtype(torch, s, t)
        s2, t2 = self._rows(torch, s, compute), self._rows(torch, t, compute)
        stats = self._stats(torch, s2, t2, temperature=temperature, ce=False, q=True, compute=compute)
        if self._flagged(torch, stats, (kernels.MQ, kernels.MP)):
            self._check_values(torch, [("student_logits", s), ("teacher_logits", t)])
        return stats[:, kernels.KL].reshape(s.shape[:-1]).to(out)

    def _kd_forward(
        self, torch: Any, s: Any, t: Any, y: Any, temperature: float, alpha: float, ignore_index: int
    ) -> tuple[Any, Any, Any, Any, Any, Any]:
        """Validated rows, statistics and the unreduced per-row loss (0 on ignored rows)."""
        from backends import triton_kernels as kernels

        compute, _ = self._compute_dtype(torch, s, t)
        s2, t2 = self._rows(torch, s, compute), self._rows(torch, t, compute)
        # The teacher is read even when alpha = 1: its values are validated like the reference does.
        stats = self._stats(torch, s2, t2, temperature=temperature, ce=alpha != 0.0, q=True, compute=compute)
        y1 = y.reshape(-1)
        valid = y1 != ignore_index
        streams = (kernels.MQ, kernels.MP)
        if self._flagged(torch, stats, streams) or bool((valid & ((y1 < 0) | (y1 >= s.shape[-1]))).any()):
            self._check_values(torch, [("student_logits", s), ("teacher_logits", t)], (y, s.shape[-1], ignore_index))
        per_row = torch.zeros(y1.shape, dtype=compute, device=s2.device)
        if alpha != 0.0:
            per_row = per_row + alpha * self._picked_ce(torch, s2, stats, y1, valid, compute)
        if alpha != 1.0:
            kl = torch.where(valid, stats[:, kernels.KL], 0.0)
            per_row = per_row + ((1.0 - alpha) * temperature**2) * kl
        return s2, t2, stats, y1, valid, per_row

    def _kd_gradient(
        self, torch: Any, s2: Any, t2: Any, stats: Any, y1: Any, weight: Any, temperature: float, alpha: float,
        out_dtype: Any,
    ) -> torch.Tensor:  # fmt: skip
        """The gradient kernel over all rows, with ``weight`` ``[N]`` (reduction, mask, grad_output)."""
        from backends import triton_kernels as kernels
        from backends.triton_terms import params

        gradient = torch.empty(s2.shape, dtype=out_dtype, device=s2.device)
        if s2.shape[0] == 0:
            return gradient
        block_n, block_v = self._blocks(*s2.shape)
        self._launch(kernels.kd_gradient, (-(-s2.shape[0] // block_n),),
            s2, t2, torch.where(weight != 0, y1, 0).clamp(0, s2.shape[1] - 1), stats,
            weight.to(stats.dtype).contiguous(), gradient, s2.shape[0], s2.shape[1], s2.stride(0), t2.stride(0),
            gradient.stride(0),
            params(torch, stats.dtype, s2.device, temperature=temperature, w_ce=alpha,
                   w_div=(1.0 - alpha) * temperature**2),
            HAS_CE=alpha != 0.0, HAS_KL=alpha != 1.0, ACC=self._acc(torch, stats.dtype),
            BLOCK_N=block_n, BLOCK_V=block_v,
        )  # fmt: skip
        return gradient

    @staticmethod
    def _row_weight(torch: Any, valid: Any, reduction: str, dtype: Any) -> torch.Tensor:
        weight = valid.to(dtype)
        return weight / valid.sum().clamp_min(1).to(dtype) if reduction == "mean" else weight

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

        Differentiable with respect to ``student_logits`` (backward is the gradient kernel). Another
        ``divergence``, a top-k teacher or a ``normalizer`` go to :meth:`family_kd`, differentiable the same way.
        """
        if uses_family(teacher_logits, divergence, beta, skew, normalizer):
            family = {"divergence": divergence, "beta": beta, "skew": skew, "normalizer": normalizer}
            kw = {"temperature": temperature, "alpha": alpha, "ignore_index": ignore_index, "reduction": reduction}
            return self.family_kd(False, student_logits, teacher_logits, labels, **kw, **family)
        torch, s, t, y, temperature, alpha, ignore_index, reduction = self._kd_inputs(
            student_logits, teacher_logits, labels, temperature, alpha, ignore_index, reduction
        )
        return _triton_kd_function(torch).apply(self, s, t, y, temperature, alpha, ignore_index, reduction)

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
        """``alpha (softmax(s) - e_y) + (1 - alpha) T (softmax(s/T) - softmax(t/T))`` per row, reduced."""
        if uses_family(teacher_logits, divergence, beta, skew, normalizer):
            family = {"divergence": divergence, "beta": beta, "skew": skew, "normalizer": normalizer}
            kw = {"temperature": temperature, "alpha": alpha, "ignore_index": ignore_index, "reduction": reduction}
            return self.family_kd(True, student_logits, teacher_logits, labels, **kw, **family)
        torch, s, t, y, temperature, alpha, ignore_index, reduction = self._kd_inputs(
            student_logits, teacher_logits, labels, temperature, alpha, ignore_index, reduction
        )
        s2, t2, stats, y1, valid, _ = self._kd_forward(torch, s, t, y, temperature, alpha, ignore_index)
        weight = self._row_weight(torch, valid, reduction, stats.dtype)
        gradient = self._kd_gradient(
            torch, s2, t2, stats, y1, weight, temperature, alpha, s.dtype if s.is_floating_point() else torch.float64
        )
        return gradient.reshape(s.shape)

    def family_kd(self, want_gradient: bool, student_logits: Any, teacher: Any, labels: Any, **kw: Any) -> Any:
        """:meth:`TorchFamily.family_kd`; the loss is differentiable with respect to ``student_logits``, its
        backward the row methods' analytic gradient with ``grad_output`` folded into the row weights."""
        if want_gradient:
            return super().family_kd(True, student_logits, teacher, labels, **kw)
        call = self._family_kd_inputs(student_logits, teacher, labels, **kw)
        return _triton_family_function(call.torch).apply(self, call, call.s)

    def _row_kernel(
        self, s: Any, t: Any, y: Any, weight: Any, *, temperature: float, alpha: float, gradient: bool
    ) -> tuple[Any, Any]:
        """The fused-linear loop's row kernel: loss rows and weighted logit gradient of one chunk."""
        from backends import triton_kernels as kernels

        torch = self._torch()
        stats = self._stats(torch, s, t, temperature=temperature, ce=alpha != 0.0, q=True, compute=s.dtype)
        if self._flagged(torch, stats, (kernels.MQ, kernels.MP)):
            self._check_values(torch, [("student_logits", s), ("teacher_logits", t)])
        valid = torch.ones(y.shape, dtype=torch.bool, device=s.device)
        loss = torch.zeros(y.shape, dtype=s.dtype, device=s.device)
        if alpha != 0.0:
            loss = loss + alpha * self._picked_ce(torch, s, stats, y, valid, s.dtype)
        if alpha != 1.0:
            loss = loss + ((1.0 - alpha) * temperature**2) * stats[:, kernels.KL]
        g = self._kd_gradient(torch, s, t, stats, y, weight, temperature, alpha, s.dtype) if gradient else None
        return loss, g


_FUNCTIONS: dict[str, Any] = {}


def _triton_kd_function(torch: Any) -> Any:
    """The ``torch.autograd.Function`` of the triton kd_loss (defined on first use)."""
    if "kd" in _FUNCTIONS:
        return _FUNCTIONS["kd"]

    class TritonKDLoss(torch.autograd.Function):
        """Forward: statistics pass and per-row loss. Backward: the gradient kernel, ``grad_output`` folded in."""

        @staticmethod
        def forward(ctx: Any, backend, s, t, y, temperature, alpha, ignore_index, reduction):  # type: ignore[override]
            s2, t2, stats, y1, valid, per_row = backend._kd_forward(torch, s, t, y, temperature, alpha, ignore_index)
            _, out = TorchBackend._compute_dtype(torch, s, t)
            ctx.save_for_backward(s2, t2, stats, y1, valid)
            ctx.hyper = (backend, temperature, alpha, reduction, s.shape, s.dtype)
            return _reduce(torch, per_row.reshape(y.shape), valid.reshape(y.shape), reduction).to(out)

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx: Any, grad_output):  # type: ignore[override]
            s2, t2, stats, y1, valid = ctx.saved_tensors
            backend, temperature, alpha, reduction, shape, dtype = ctx.hyper
            weight = TritonBackend._row_weight(torch, valid, reduction, stats.dtype)
            weight = weight * grad_output.to(stats.dtype).reshape(-1 if reduction == "none" else ())
            gradient = backend._kd_gradient(torch, s2, t2, stats, y1, weight, temperature, alpha, dtype)
            return None, gradient.reshape(shape), None, None, None, None, None, None

    _FUNCTIONS["kd"] = TritonKDLoss
    return TritonKDLoss


def _triton_family_function(torch: Any) -> Any:
    """The ``torch.autograd.Function`` of a family ``kd_loss`` on Triton (defined on first use)."""
    if "family" in _FUNCTIONS:
        return _FUNCTIONS["family"]

    class TritonFamilyKDLoss(torch.autograd.Function):
        """Forward: the row method's losses, reduced. Backward: its gradient with ``grad_output`` in the weights."""

        @staticmethod
        def forward(ctx: Any, backend, call, s):  # type: ignore[override]
            per_row, _ = backend._kd_rows_of(call)(call, False)
            ctx.hyper = (backend, call)
            return backend._family_reduce(call, per_row)

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx: Any, grad_output):  # type: ignore[override]
            backend, call = ctx.hyper
            scale = grad_output.to(call.compute).reshape(call.weight.shape if call.reduction == "none" else ())
            _, gradient = backend._kd_rows_of(call)(replace(call, weight=call.weight * scale), True)
            return None, None, gradient

    _FUNCTIONS["family"] = TritonFamilyKDLoss
    return TritonFamilyKDLoss


BACKEND = TritonBackend()
"""The entry point ``triton`` (``backends.triton_backend:BACKEND``)."""

__all__ = ["BACKEND", "CAPABILITIES", "TritonBackend", "interpreted"]
