"""The ``cupy`` backend: the KD math as fused CUDA kernels (device ``"cuda"``).

Not a line-by-line translation into CuPy array calls: every operation is one row-wise kernel
(``kd_row_stats``: one block per row reads the student and teacher rows once and produces the row max, the
log-sum-exps of ``s``, ``s/T`` and ``t/T``, the cross-entropy, the KL, the per-row loss and the validation
flags) plus, for the array-valued results (softmax, log-softmax, the gradient), one elementwise kernel
(``kd_elementwise``) that uses those per-row statistics. The CUDA source, with the derivation of the
single-pass KL, is in :mod:`backends._cupy_kernels`; only the cheap per-row reductions of the loss (a sum
over rows, the count of valid rows) are CuPy array calls.

Dtypes: ``float64`` and ``float32``, each computed and accumulated in its own type (the kernels are
templates instantiated for ``double`` and ``float``); results come back in the input's dtype. float16 input
is computed in float32 and cast back; integer logits are computed in float64. CuPy has no bfloat16.

Validation: shape, dtype and hyperparameter checks of :mod:`reference.checks` run on the host. The value
checks (NaN, +inf, rows without a finite logit, labels out of range) are flags written by the row kernel
itself, read back with one device-to-host copy; only when one is set are the inputs copied to the host and
checked by the reference's numpy checks, in the reference's order, so the messages are the reference's.

cupy is imported lazily: loading this module or the ``BACKEND`` object needs neither cupy nor a GPU, and
:meth:`CupyBackend.available` says why the backend cannot run (cupy missing, no CUDA device or driver, or
kernels that do not compile) without raising.

The host code reaches its array module and its kernel launcher only through :meth:`CupyBackend._runtime`,
so the same host code can be driven by numpy and an emulated launcher (see ``tests/test_cupy_backend.py``).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from backends import _cupy_kernels as K
from backends.cupy_family import CupyFamily
from backends.protocol import LABEL_DTYPE, Availability, BackendError
from reference import checks
from reference.kd_family import uses_family

_INSTALL_HINT = "cupy is not installed: pip install 'kd-contracts[cuda]'"

ELEMENTWISE_THREADS = 256
"""Threads per block of kd_elementwise."""

MAX_ELEMENTWISE_BLOCKS = 65536
"""Cap on kd_elementwise's grid; larger inputs are covered by its grid-stride loop."""


def row_threads(vocab: int) -> int:
    """Threads per block of kd_row_stats for a vocabulary: the next power of two, between 32 and 256."""
    threads = 32
    while threads < vocab and threads < K.MAX_THREADS:
        threads *= 2
    return threads


class _CupyKernels:
    """The compiled kernels, launched on cupy arrays."""

    def __init__(self, cupy: Any) -> None:
        module = cupy.RawModule(code=K.SOURCE, options=("--std=c++17",), name_expressions=K.NAME_EXPRESSIONS)
        self._functions = {
            (kind, np.dtype(dtype)): module.get_function(f"{kernel}<{ctype}>")
            for kind, kernel in (("rows", "kd_row_stats"), ("elementwise", "kd_elementwise"))
            for dtype, ctype in ((np.float32, "float"), (np.float64, "double"))
        }

    def row_stats(self, dtype: np.dtype, grid: int, block: int, args: tuple[Any, ...]) -> None:
        self._functions["rows", np.dtype(dtype)]((grid,), (block,), args)

    def elementwise(self, dtype: np.dtype, grid: int, block: int, args: tuple[Any, ...]) -> None:
        self._functions["elementwise", np.dtype(dtype)]((grid,), (block,), args)


def _result_dtypes(*arrays: Any) -> tuple[np.dtype, np.dtype]:
    """(compute dtype, result dtype) for these logits: float64 stays float64, any other float computes in
    float32 and comes back in its own dtype, integers compute in float64."""
    out = np.result_type(*[a.dtype if a.dtype.kind == "f" else np.float64 for a in arrays])
    compute = np.dtype(np.float64) if out == np.float64 else np.dtype(np.float32)
    return compute, out


class _KDCall(NamedTuple):
    """A validated kd_loss / kd_logit_gradient call after its row kernel ran."""

    xp: Any
    kernels: Any
    compute: np.dtype
    loss_dtype: np.dtype
    gradient_dtype: np.dtype
    logits_shape: tuple[int, ...]
    labels_shape: tuple[int, ...]
    s: Any  # [R, V] compute dtype
    t: Any  # [R, V] compute dtype
    y: Any  # [R] int64
    stats: Any  # [N_STATS, R]
    valid_count: Any  # 0-d device integer
    temperature: float
    alpha: float
    ignore_index: int
    reduction: str


class CupyBackend(CupyFamily):
    """The KD math as fused CUDA kernels on cupy arrays; see the module docstring."""

    name = "cupy"
    device = "cuda"
    dtypes: tuple[str, ...] = ("float64", "float32")

    def __init__(self) -> None:
        self._availability: Availability | None = None
        self._kernels: Any = None

    def __repr__(self) -> str:
        return "<backend cupy (fused CUDA kernels) on cuda>"

    # ----------------------------------------------------------------------------------------------------
    # Environment and conversion.
    # ----------------------------------------------------------------------------------------------------

    def available(self) -> Availability:
        """Whether cupy, a CUDA device and the compiled kernels are all here. Never raises; cached."""
        if self._availability is None:
            self._availability = self._probe()
        return self._availability

    def _probe(self) -> Availability:
        try:
            import cupy
        except ImportError:
            return Availability.no(_INSTALL_HINT)
        except Exception as error:  # a broken install (e.g. a CUDA library missing at import time)
            return Availability.no(f"cupy cannot be imported: {type(error).__name__}: {error}")
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as error:  # CUDARuntimeError: no driver, driver too old, no device
            return Availability.no(f"no CUDA device: cupy.cuda.runtime.getDeviceCount() failed: {error}")
        if count < 1:
            return Availability.no("no CUDA device: cupy.cuda.runtime.getDeviceCount() is 0")
        try:
            self._kernels = _CupyKernels(cupy)
        except Exception as error:  # NVRTC missing or a compile error
            return Availability.no(
                f"cupy cannot compile the KD kernels on this CUDA device: {type(error).__name__}: {error}"
            )
        return Availability.yes()

    def _runtime(self) -> tuple[Any, Any]:
        """(array module, kernel launcher); BackendError with the reason when the backend cannot run."""
        available = self.available()
        if not available:
            raise BackendError(f"backend {self.name!r} cannot run here: {available.reason}")
        import cupy

        return cupy, self._kernels

    def asarray(self, array: np.ndarray, dtype: str) -> Any:
        """``array`` as a cupy array of ``dtype`` (float64, float32, int64 or int32) on the current device."""
        wanted = {"float64": np.float64, "float32": np.float32, LABEL_DTYPE: np.int64, "int32": np.int32}
        if dtype not in wanted:
            raise ValueError(
                f"cupy backend cannot make arrays of dtype {dtype!r}: supported are "
                f"{', '.join(map(repr, wanted))} (cupy has no bfloat16)"
            )
        xp, _ = self._runtime()
        return xp.asarray(np.asarray(array, dtype=wanted[dtype]))

    def to_numpy(self, x: Any) -> np.ndarray:
        """A cupy array or scalar as numpy: float64 for floating values, int64 for integers."""
        array = np.asarray(x.get() if hasattr(x, "get") and not isinstance(x, np.ndarray) else x)
        if array.dtype.kind == "f":
            return array.astype(np.float64)
        if array.dtype.kind in ("i", "u"):
            return array.astype(np.int64)
        return array

    # ----------------------------------------------------------------------------------------------------
    # Host side: conversion, checks, launches.
    # ----------------------------------------------------------------------------------------------------

    @staticmethod
    def _host(xp: Any, x: Any) -> np.ndarray:
        return xp.asnumpy(x) if hasattr(xp, "asnumpy") else np.asarray(x)

    @staticmethod
    def _logits(xp: Any, name: str, x: Any) -> Any:
        """``x`` as a real array of ``xp`` (the reference's conversion and dtype checks)."""
        if not isinstance(x, xp.ndarray):
            x = xp.asarray(checks.as_float64_logits(name, x))
        if x.dtype.kind not in ("f", "i", "u"):
            raise ValueError(checks.logits_dtype_message(name, x.dtype))
        return x

    @staticmethod
    def _labels(xp: Any, y: Any) -> Any:
        """``y`` as an integer array of ``xp`` (the reference's conversion and dtype checks)."""
        if not isinstance(y, xp.ndarray):
            y = xp.asarray(checks.as_integer_labels(y))
        checks.check_labels_dtype(y.dtype)
        return y

    @staticmethod
    def _rows(xp: Any, x: Any, compute: np.dtype) -> Any:
        """Logits ``[..., V]`` as a C-contiguous ``[rows, V]`` array of the compute dtype."""
        return xp.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=compute)

    def _row_stats(
        self,
        xp: Any,
        kernels: Any,
        compute: np.dtype,
        s: Any,
        t: Any = None,
        y: Any = None,
        *,
        temperature: float = 1.0,
        alpha: float = 0.0,
        kl_weight: float = 0.0,
        ignore_index: int = checks.DEFAULT_IGNORE_INDEX,
    ) -> tuple[Any, Any]:
        """Launch kd_row_stats on ``s`` ``[R, V]`` (``t``, ``y`` optional); return (stats, flags ``[R]``)."""
        rows, vocab = s.shape
        stats = xp.zeros((K.N_STATS, rows), dtype=compute)
        flags = xp.zeros(rows, dtype=np.int32)
        if rows == 0:
            return stats, flags
        c = compute.type
        args = (
            s,
            s if t is None else t,
            xp.zeros(1, dtype=np.int64) if y is None else y,
            np.int32(t is not None),
            np.int32(y is not None),
            np.int64(rows),
            np.int64(vocab),
            c(1.0 / temperature),
            c(alpha),
            c(kl_weight),
            np.int64(ignore_index),
            stats,
            flags,
        )
        kernels.row_stats(compute, rows, row_threads(vocab), args)
        return stats, flags

    def _elementwise(
        self,
        xp: Any,
        kernels: Any,
        compute: np.dtype,
        mode: int,
        stats: Any,
        x: Any,
        t: Any = None,
        y: Any = None,
        *,
        temperature: float = 1.0,
        alpha: float = 0.0,
        soft_weight: float = 0.0,
        ignore_index: int = checks.DEFAULT_IGNORE_INDEX,
        scale: Any = None,
    ) -> Any:
        """Launch kd_elementwise in ``mode`` over ``x`` ``[R, V]``; return the ``[R, V]`` result."""
        rows, vocab = x.shape
        out = xp.empty((rows, vocab), dtype=compute)
        if out.size == 0:
            return out
        c = compute.type
        args = (
            x,
            x if t is None else t,
            xp.zeros(1, dtype=np.int64) if y is None else y,
            stats,
            np.int64(rows),
            np.int64(vocab),
            c(1.0 / temperature),
            c(alpha),
            c(soft_weight),
            np.int64(ignore_index),
            xp.ones(1, dtype=compute) if scale is None else scale,
            np.int32(mode),
            out,
        )
        blocks = min(math.ceil(out.size / ELEMENTWISE_THREADS), MAX_ELEMENTWISE_BLOCKS)
        kernels.elementwise(compute, blocks, ELEMENTWISE_THREADS, args)
        return out

    def _validate(
        self,
        xp: Any,
        flags: Any,
        logits: list[tuple[str, Any]],
        labels: tuple[Any, int, int] | None = None,
    ) -> None:
        """Raise the reference's ValueError if the row kernel flagged a bad value (one host read)."""
        if flags.size == 0 or int(flags.max()) == 0:
            return
        for name, x in logits:
            checks.check_logits(name, self._host(xp, x))
        if labels is not None:
            y, vocab, ignore_index = labels
            checks.check_labels(self._host(xp, y), vocab, ignore_index)
        raise RuntimeError(
            f"the cupy row kernel flagged input values (flags {int(flags.max())}) that the reference checks "
            "accept: this is a defect in backends/_cupy_kernels.py"
        )

    @staticmethod
    def _reduce(xp: Any, per_row: Any, valid_count: Any, reduction: str, shape: tuple[int, ...]) -> Any:
        """``none``: rows shaped like the labels; ``sum``; ``mean`` over valid rows (0 when none)."""
        if reduction == "none":
            return per_row.reshape(shape)
        total = per_row.sum()
        if reduction == "sum":
            return total
        # With no valid row every row is exactly 0, so total / max(count, 1) is 0.
        return total / xp.maximum(valid_count, 1)

    def _kd_call(
        self,
        student_logits: Any,
        teacher_logits: Any,
        labels: Any,
        temperature: Any,
        alpha: Any,
        ignore_index: Any,
        reduction: Any,
    ) -> _KDCall:
        """Validate on the host (reference order), run kd_row_stats, check its flags."""
        temperature, alpha, reduction = checks.check_hyperparameters(temperature, alpha, reduction)
        ignore_index = checks.check_ignore_index(ignore_index)
        xp, kernels = self._runtime()
        s = self._logits(xp, "student_logits", student_logits)
        t = self._logits(xp, "teacher_logits", teacher_logits)
        y = self._labels(xp, labels)
        vocab = checks.check_shapes(s.shape, t.shape, y.shape)
        compute, loss_dtype = _result_dtypes(s, t)
        s2, t2 = self._rows(xp, s, compute), self._rows(xp, t, compute)
        y1 = xp.ascontiguousarray(y.reshape(-1), dtype=np.int64)
        stats, flags = self._row_stats(
            xp,
            kernels,
            compute,
            s2,
            t2,
            y1,
            temperature=temperature,
            alpha=alpha,
            kl_weight=(1.0 - alpha) * temperature**2,
            ignore_index=ignore_index,
        )
        self._validate(xp, flags, [("student_logits", s), ("teacher_logits", t)], (y, vocab, ignore_index))
        return _KDCall(
            xp=xp,
            kernels=kernels,
            compute=compute,
            loss_dtype=loss_dtype,
            gradient_dtype=_result_dtypes(s)[1],
            logits_shape=tuple(s.shape),
            labels_shape=tuple(y.shape),
            s=s2,
            t=t2,
            y=y1,
            stats=stats,
            valid_count=xp.count_nonzero(y1 != ignore_index),
            temperature=temperature,
            alpha=alpha,
            ignore_index=ignore_index,
            reduction=reduction,
        )

    # ----------------------------------------------------------------------------------------------------
    # The math surface.
    # ----------------------------------------------------------------------------------------------------

    def _softmax_like(self, logits: Any, temperature: Any, mode: int) -> Any:
        temperature = checks.check_temperature(temperature)
        xp, kernels = self._runtime()
        z = self._logits(xp, "logits", logits)
        checks.check_logits_shape("logits", z.shape)
        compute, out = _result_dtypes(z)
        z2 = self._rows(xp, z, compute)
        stats, flags = self._row_stats(xp, kernels, compute, z2, temperature=temperature)
        self._validate(xp, flags, [("logits", z)])
        result = self._elementwise(xp, kernels, compute, mode, stats, z2, temperature=temperature)
        return result.reshape(z.shape).astype(out, copy=False)

    def softmax(self, logits: Any, temperature: float = 1.0) -> Any:
        """``softmax(z / T)`` over the last axis (row kernel, then one elementwise pass)."""
        return self._softmax_like(logits, temperature, K.MODE_SOFTMAX)

    def log_softmax(self, logits: Any, temperature: float = 1.0) -> Any:
        """``log_softmax(z / T)`` over the last axis (``-inf`` stays ``-inf``)."""
        return self._softmax_like(logits, temperature, K.MODE_LOG_SOFTMAX)

    def cross_entropy(
        self,
        logits: Any,
        labels: Any,
        *,
        ignore_index: int = checks.DEFAULT_IGNORE_INDEX,
        reduction: str = "mean",
    ) -> Any:
        """``CE_i = -log softmax(s_i)[y_i]`` (untempered), 0 on ignored rows, then reduced."""
        reduction = checks.check_reduction(reduction)
        ignore_index = checks.check_ignore_index(ignore_index)
        xp, kernels = self._runtime()
        s = self._logits(xp, "logits", logits)
        checks.check_logits_shape("logits", s.shape)
        try:
            y = self._labels(xp, labels)
            checks.check_labels_shape(y.shape, s.shape)
        except ValueError:  # the reference checks the logits' values before it looks at the labels
            checks.check_logits("logits", self._host(xp, s))
            raise
        compute, out = _result_dtypes(s)
        s2 = self._rows(xp, s, compute)
        y1 = xp.ascontiguousarray(y.reshape(-1), dtype=np.int64)
        stats, flags = self._row_stats(
            xp, kernels, compute, s2, None, y1, alpha=1.0, kl_weight=0.0, ignore_index=ignore_index
        )
        self._validate(xp, flags, [("logits", s)], (y, s.shape[-1], ignore_index))
        valid_count = xp.count_nonzero(y1 != ignore_index)
        result = self._reduce(xp, stats[K.STAT_CE], valid_count, reduction, y.shape)
        return xp.asarray(result).astype(out, copy=False)

    def kl_divergence(self, student_logits: Any, teacher_logits: Any, *, temperature: float = 1.0) -> Any:
        """Per-row ``KL(softmax(t/T) || softmax(s/T))`` from the single-pass row kernel."""
        temperature = checks.check_temperature(temperature)
        xp, kernels = self._runtime()
        s = self._logits(xp, "student_logits", student_logits)
        t = self._logits(xp, "teacher_logits", teacher_logits)
        checks.check_shapes(s.shape, t.shape)
        compute, out = _result_dtypes(s, t)
        s2, t2 = self._rows(xp, s, compute), self._rows(xp, t, compute)
        stats, flags = self._row_stats(xp, kernels, compute, s2, t2, temperature=temperature)
        self._validate(xp, flags, [("student_logits", s), ("teacher_logits", t)])
        return stats[K.STAT_KL].reshape(s.shape[:-1]).astype(out, copy=False)

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
    ) -> Any:
        """``alpha * CE + (1 - alpha) * T^2 * KL`` per row (one kernel), then reduced."""
        if uses_family(teacher_logits, divergence, beta, skew, normalizer):  # the family: backends/cupy_family.py
            family = {"divergence": divergence, "beta": beta, "skew": skew, "normalizer": normalizer}
            kw = {"temperature": temperature, "alpha": alpha, "ignore_index": ignore_index, "reduction": reduction}
            return self.family_kd(False, student_logits, teacher_logits, labels, **kw, **family)
        call = self._kd_call(student_logits, teacher_logits, labels, temperature, alpha, ignore_index, reduction)
        xp = call.xp
        result = self._reduce(xp, call.stats[K.STAT_LOSS], call.valid_count, call.reduction, call.labels_shape)
        return xp.asarray(result).astype(call.loss_dtype, copy=False)

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
    ) -> Any:
        """``alpha (softmax(s) - e_y) + (1 - alpha) T (softmax(s/T) - softmax(t/T))``: row kernel, then one
        elementwise pass; 0 on ignored rows, divided on the device by #valid rows for ``mean``."""
        if uses_family(teacher_logits, divergence, beta, skew, normalizer):  # the family: backends/cupy_family.py
            family = {"divergence": divergence, "beta": beta, "skew": skew, "normalizer": normalizer}
            kw = {"temperature": temperature, "alpha": alpha, "ignore_index": ignore_index, "reduction": reduction}
            return self.family_kd(True, student_logits, teacher_logits, labels, **kw, **family)
        call = self._kd_call(student_logits, teacher_logits, labels, temperature, alpha, ignore_index, reduction)
        xp, compute = call.xp, call.compute
        scale = xp.ones(1, dtype=compute)
        if call.reduction == "mean":
            scale = (scale / xp.maximum(call.valid_count, 1)).astype(compute)
        gradient = self._elementwise(
            xp,
            call.kernels,
            compute,
            K.MODE_GRADIENT,
            call.stats,
            call.s,
            call.t,
            call.y,
            temperature=call.temperature,
            alpha=call.alpha,
            soft_weight=(1.0 - call.alpha) * call.temperature,
            ignore_index=call.ignore_index,
            scale=scale,
        )
        return gradient.reshape(call.logits_shape).astype(call.gradient_dtype, copy=False)


BACKEND = CupyBackend()
"""The entry point ``cupy`` (``backends.cupy_backend:BACKEND``)."""
