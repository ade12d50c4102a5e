"""Softmax and log-softmax over the last axis: the one place the reference computes them.

Every reference function (the KD loss, the divergence family, top-k teachers, the conventions of other systems)
goes through these, so that one convention for huge and masked logits holds everywhere.
"""

from __future__ import annotations

import numpy as np


def shifted_rows(z: np.ndarray, temperature: float) -> np.ndarray:
    """``z / T - m`` computed as ``(z - max z) / T``: every entry is <= 0, and the row max gives exactly 0.

    Shifting before dividing keeps huge logits exact: for ``[-1.7e308, 1.7e308]`` at ``T = 0.5``, ``z / T``
    would overflow to ``[-inf, inf]`` (NaN after the shift), while ``z - max z`` is ``[-inf, 0]``. The row max is
    finite (checked before), and a difference that overflows to ``-inf`` is a probability of exactly 0.
    """
    with np.errstate(over="ignore"):
        return (z - z.max(axis=-1, keepdims=True)) / temperature


def log_softmax_rows(z: np.ndarray, temperature: float) -> np.ndarray:
    """``log_softmax(z / T) = z / T - m - log sum exp(z / T - m)`` with ``m`` the row max (last axis)."""
    shifted = shifted_rows(z, temperature)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax_rows(z: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(z / T) = exp(z / T - m) / sum exp(z / T - m)`` with ``m`` the row max (last axis)."""
    unnormalized = np.exp(shifted_rows(z, temperature))
    return unnormalized / unnormalized.sum(axis=-1, keepdims=True)
