"""Fused linear KD, the oracle: the KD loss of a student given by its last hidden states and LM-head weight.

Equation ``kd_loss_from_hidden`` of contracts/kd-fused-linear-v1.yaml::

    s = h W^T                      (student logits [N, V] from hidden states h [N, H], weight W [V, H])
    t = teacher logits, or h_t W_t^T for a teacher given as (hidden states, weight)
    L = kd_loss(s, t, y; T, alpha, reduction)            (reference.kd.kd_loss)
    G = kd_logit_gradient(s, t, y; T, alpha, reduction)  (dL/ds)
    dL/dh = G W,   dL/dW = G^T h

This is the reference: it materializes the ``[N, V]`` logits and gradient on purpose, float64, readable.
Backends compute the same thing in row chunks without ever holding ``[N, V]`` (their peak memory is a
falsifier of the contract). Leading axes are allowed: ``h`` is ``[..., H]`` with labels ``[...]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from reference import checks, kd


def _matrix(name: str, value: ArrayLike, ndim: int | None = None) -> np.ndarray:
    """``value`` as a finite float64 array (``ndim`` axes when given, else at least 1), or ValueError."""
    array = checks.as_float64_logits(name, value)
    if (ndim is not None and array.ndim != ndim) or array.ndim < 1:
        wanted = f"{ndim} axes" if ndim is not None else "at least 1 axis"
        raise ValueError(f"{name} must have {wanted}, got shape {checks.format_shape(array.shape)}")
    bad = ~np.isfinite(array)
    if bad.any():
        position = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name} has a non-finite value ({array[position]}) at position {checks.format_position(position)}: "
            "hidden states and weights must be finite"
        )
    return array


def linear_inputs(
    student_hidden: ArrayLike, student_weight: ArrayLike, teacher: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray | tuple[np.ndarray, np.ndarray]]:
    """Validated ``(h, W, teacher)``: ``teacher`` is logits ``[..., V]`` or a ``(hidden, weight)`` pair.

    Raises ValueError naming the argument and both sizes when the hidden sizes or vocabularies disagree.
    """
    h = _matrix("student_hidden", student_hidden)
    w = _matrix("student_weight", student_weight, ndim=2)
    if h.shape[-1] != w.shape[1]:
        raise ValueError(
            f"student_hidden has hidden size {h.shape[-1]} but student_weight {checks.format_shape(w.shape)} "
            f"expects {w.shape[1]}: the weight must be [vocab, hidden]"
        )
    if isinstance(teacher, tuple):
        if len(teacher) != 2:
            raise ValueError(f"teacher must be logits or a (hidden, weight) pair, got a tuple of {len(teacher)}")
        th = _matrix("teacher_hidden", teacher[0])
        tw = _matrix("teacher_weight", teacher[1], ndim=2)
        if np.issubdtype(np.asarray(teacher[1]).dtype, np.integer):
            raise ValueError("a top-k teacher (log-probs, ids) is not supported by kd_loss_from_hidden yet")
        if th.shape[:-1] != h.shape[:-1] or th.shape[-1] != tw.shape[1] or tw.shape[0] != w.shape[0]:
            raise ValueError(
                f"teacher (hidden {checks.format_shape(th.shape)}, weight {checks.format_shape(tw.shape)}) does not "
                f"match the student (hidden {checks.format_shape(h.shape)}, weight {checks.format_shape(w.shape)}): "
                "the rows and the vocabulary must agree"
            )
        return h, w, (th, tw)
    return h, w, teacher


def teacher_logits(teacher: np.ndarray | tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The teacher's logits: as given, or ``h_t W_t^T`` for a (hidden, weight) pair."""
    if isinstance(teacher, tuple):
        return teacher[0] @ teacher[1].T
    return np.asarray(teacher)


def kd_loss_from_hidden(
    student_hidden: ArrayLike,
    student_weight: ArrayLike,
    teacher: Any,
    labels: ArrayLike,
    *,
    temperature: float,
    alpha: float,
    ignore_index: int = checks.DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
    chunk_rows: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(L, dL/dh, dL/dW)`` for student logits ``h W^T`` (see the module docstring); materializes ``[N, V]``.

    ``chunk_rows`` is accepted for the protocol's sake (backends process rows in chunks of that size) and
    has no effect here. The logits are checked by :func:`reference.kd.kd_loss` like any logits.
    """
    if chunk_rows is not None and (isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1):
        raise ValueError(f"chunk_rows must be a positive int or None, got {chunk_rows!r}")
    h, w, teacher = linear_inputs(student_hidden, student_weight, teacher)
    s = h @ w.T
    t = teacher_logits(teacher)
    kwargs = {"temperature": temperature, "alpha": alpha, "ignore_index": ignore_index, "reduction": reduction}
    loss = kd.kd_loss(s, t, labels, **kwargs)
    g = kd.kd_logit_gradient(s, t, labels, **kwargs)
    g2, h2 = g.reshape(-1, g.shape[-1]), h.reshape(-1, h.shape[-1])
    return loss, (g2 @ w).reshape(h.shape), g2.T @ h2
