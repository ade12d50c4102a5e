"""The ``numpy`` backend: the float64 reference (:mod:`reference.kd`) exposed through the backend protocol.

It delegates every operation to the reference, so it agrees with it exactly and raises the same errors.
It exists so that the harness always has one backend that runs anywhere, and so that the registry path
(entry point, protocol check, selection) is exercised on every machine.

Dtype policy, stated honestly: numpy **computes in float64 always**. It declares ``float64`` and
``float32``; ``asarray(x, "float32")`` really gives a float32 array (the inputs are rounded to float32), but
the reference then widens them and every result comes back float64. So at ``float32`` this backend
measures the effect of float32 *inputs*, not of float32 arithmetic. ``bfloat16`` is not supported (numpy
has no bfloat16 type).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from backends.protocol import FAMILY_MEMBERS, LABEL_DTYPE, OPTIONAL_FEATURES, Availability
from reference import kd

_DTYPES: dict[str, type[np.generic]] = {
    "float64": np.float64,
    "float32": np.float32,
    LABEL_DTYPE: np.int64,
    "int32": np.int32,
}


class NumpyBackend:
    """The reference, as a backend on numpy arrays (see the module docstring for its dtype policy)."""

    name = "numpy"
    device = "cpu"
    dtypes: tuple[str, ...] = ("float64", "float32")
    capabilities: frozenset[str] = frozenset((*FAMILY_MEMBERS, *OPTIONAL_FEATURES, "kd_loss_from_hidden"))

    def available(self) -> Availability:
        """Always available: numpy is a dependency of the project."""
        return Availability.yes()

    def asarray(self, array: np.ndarray, dtype: str) -> np.ndarray:
        """``array`` as a numpy array of ``dtype`` (``float64``, ``float32``, ``int64`` or ``int32``)."""
        if dtype not in _DTYPES:
            raise ValueError(
                f"numpy backend cannot make arrays of dtype {dtype!r}: supported are {', '.join(map(repr, _DTYPES))}"
            )
        return np.asarray(array, dtype=_DTYPES[dtype])

    def to_numpy(self, x: Any) -> np.ndarray:
        """``x`` as a numpy array: float64 for floating values, int64 for integers."""
        array = np.asarray(x)
        if array.dtype.kind == "f":
            return array.astype(np.float64)
        if array.dtype.kind in ("i", "u"):
            return array.astype(np.int64)
        return array

    softmax = staticmethod(kd.softmax)
    log_softmax = staticmethod(kd.log_softmax)
    cross_entropy = staticmethod(kd.cross_entropy)
    kl_divergence = staticmethod(kd.kl_divergence)
    kd_loss = staticmethod(kd.kd_loss)
    kd_logit_gradient = staticmethod(kd.kd_logit_gradient)

    # The divergence family (optional members, all declared in ``capabilities``).
    kl_divergence_gradient = staticmethod(kd.kl_divergence_gradient)
    reverse_kl = staticmethod(kd.reverse_kl)
    reverse_kl_gradient = staticmethod(kd.reverse_kl_gradient)
    generalized_jsd = staticmethod(kd.generalized_jsd)
    generalized_jsd_gradient = staticmethod(kd.generalized_jsd_gradient)
    interpolated_kl = staticmethod(kd.interpolated_kl)
    interpolated_kl_gradient = staticmethod(kd.interpolated_kl_gradient)
    skew_kl = staticmethod(kd.skew_kl)
    skew_kl_gradient = staticmethod(kd.skew_kl_gradient)
    skew_reverse_kl = staticmethod(kd.skew_reverse_kl)
    skew_reverse_kl_gradient = staticmethod(kd.skew_reverse_kl_gradient)
    total_variation = staticmethod(kd.total_variation)
    total_variation_gradient = staticmethod(kd.total_variation_gradient)
    topk_divergence = staticmethod(kd.topk_divergence)
    topk_divergence_gradient = staticmethod(kd.topk_divergence_gradient)
    @staticmethod
    def kd_loss_from_hidden(
        student_hidden: Any,
        student_weight: Any,
        teacher: Any,
        labels: Any,
        *,
        temperature: float,
        alpha: float,
        ignore_index: int = -100,
        reduction: str = "mean",
        chunk_rows: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The fused linear KD, at most ``chunk_rows`` rows at a time (and at most 2^16 logits), each piece
        computed by the reference; equal to :func:`reference.fused_linear.kd_loss_from_hidden`."""
        from reference import checks, fused_linear

        reduction = checks.check_reduction(reduction)
        if chunk_rows is not None and (
            isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1
        ):
            raise ValueError(f"chunk_rows must be a positive int or None, got {chunk_rows!r}")
        kwargs = {"temperature": temperature, "alpha": alpha, "ignore_index": ignore_index}
        h, w, t = fused_linear.linear_inputs(student_hidden, student_weight, teacher)
        y = np.asarray(labels)
        lead = h.shape[:-1]
        h2, y1 = h.reshape(-1, h.shape[-1]), y.reshape(-1)
        # The reference makes about 15 temporaries of a chunk's size: keep pieces to 2^16 logits or fewer.
        rows = min(chunk_rows or h2.shape[0] or 1, max(1, (1 << 16) // max(w.shape[0], 1)))
        valid = int(np.count_nonzero(y1 != ignore_index))
        per_row = np.zeros(h2.shape[0])
        grad_h = np.empty_like(h2)
        grad_w = np.zeros_like(w)
        for r0 in range(0, h2.shape[0], rows):
            s = h2[r0 : r0 + rows] @ w.T
            if isinstance(t, tuple):
                tc = t[0].reshape(-1, t[0].shape[-1])[r0 : r0 + rows] @ t[1].T
            else:
                tc = np.asarray(t).reshape(-1, np.shape(t)[-1])[r0 : r0 + rows]
            per_row[r0 : r0 + rows] = kd.kd_loss(s, tc, y1[r0 : r0 + rows], reduction="none", **kwargs)
            g = kd.kd_logit_gradient(s, tc, y1[r0 : r0 + rows], reduction="sum", **kwargs)
            grad_h[r0 : r0 + rows] = g @ w
            grad_w += g.T @ h2[r0 : r0 + rows]
        scale = 1.0 / max(valid, 1) if reduction == "mean" else 1.0
        loss = per_row.reshape(lead) if reduction == "none" else np.asarray(per_row.sum() * scale)
        return loss, (grad_h * scale).reshape(h.shape), grad_w * scale

    def __repr__(self) -> str:
        return "<backend numpy (reference.kd, float64) on cpu>"


BACKEND = NumpyBackend()
"""The entry point ``numpy`` (``backends.numpy_backend:BACKEND``)."""
