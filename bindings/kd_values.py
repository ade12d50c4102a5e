"""Helpers a KD check may call: comparisons that report their error, and small array transformations.

Every comparison returns a truthy/falsy object whose ``describe()`` says what was measured against what,
and records the measured error with :func:`spec.measure.record` so reports show it beside the tolerance.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from spec import measure


@dataclass(frozen=True)
class Comparison:
    ok: bool
    error: float
    tolerance: float
    detail: str

    def __bool__(self) -> bool:
        return self.ok

    def describe(self) -> str:
        verdict = "<=" if self.ok else ">"
        return f"max |actual - expected| = {self.error:.3e} {verdict} tolerance {self.tolerance:.1e}{self.detail}"


def close(actual: object, expected: object, tol: float) -> Comparison:
    """Whether ``actual`` equals ``expected`` within ``tol`` absolute, elementwise (equal infinities match,
    NaN never does)."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        return Comparison(False, float("inf"), tol, f": shape {a.shape} != expected shape {e.shape}")
    diff = np.where(a == e, 0.0, np.abs(a - e))
    diff = np.where(np.isnan(diff), np.inf, diff)
    if diff.size == 0:
        measure.record(0.0, tol)
        return Comparison(True, 0.0, tol, " (empty)")
    worst = np.unravel_index(int(np.argmax(diff)), diff.shape)
    error = float(diff[worst])
    measure.record(error, tol)
    where = f" at index {tuple(int(i) for i in worst)}" if diff.ndim else ""
    detail = f"{where}: actual {a[worst]!r}, expected {e[worst]!r}"
    return Comparison(error <= tol, error, tol, detail)


def finite(x: object) -> bool:
    """Every element of ``x`` is finite (no NaN, no infinity)."""
    return bool(np.all(np.isfinite(np.asarray(x, dtype=np.float64))))


def nondecreasing(values: Sequence[float], slack: float = 0.0) -> bool:
    """``values[i] <= values[i + 1] + slack`` for every i."""
    v = [float(x) for x in values]
    return all(a <= b + slack for a, b in itertools.pairwise(v))


def increasing(values: Sequence[float]) -> bool:
    """``values[i] < values[i + 1]`` for every i."""
    v = [float(x) for x in values]
    return all(a < b for a, b in itertools.pairwise(v))


def row_sums(x: object) -> np.ndarray:
    """Sums over the last (vocabulary) axis."""
    return np.asarray(x, dtype=np.float64).sum(axis=-1)


def shift_rows(x: object, shift: object) -> np.ndarray:
    """``x`` with one constant added to each row: ``shift`` has the shape of ``x`` without its last axis."""
    return np.asarray(x, dtype=np.float64) + np.asarray(shift, dtype=np.float64)[..., None]


def along_ray(origin: object, direction: object, scales: Sequence[float]) -> list[np.ndarray]:
    """``origin + k * direction`` for each ``k`` in ``scales``."""
    o = np.asarray(origin, dtype=np.float64)
    d = np.asarray(direction, dtype=np.float64)
    return [o + float(k) * d for k in scales]


def valid_count(labels: object, ignore_index: int = -100) -> int:
    """How many rows have a label other than ``ignore_index``."""
    return int(np.sum(np.asarray(labels) != ignore_index))


def ignored(labels: object, ignore_index: int = -100) -> np.ndarray:
    """A boolean mask of the rows whose label is ``ignore_index``."""
    return np.asarray(labels) == ignore_index


def rows_where(x: object, mask: object) -> np.ndarray:
    """The rows of ``x`` (over its leading axes) where ``mask`` is true."""
    return np.asarray(x)[np.asarray(mask, dtype=bool)]


def all_ignored(labels: object, ignore_index: int = -100) -> np.ndarray:
    """``labels`` with every row ignored."""
    return np.full(np.shape(labels), ignore_index, dtype=np.int64)


def zeros_like(x: object) -> np.ndarray:
    return np.zeros(np.shape(x), dtype=np.float64)


def scale(x: object, factor: float) -> np.ndarray:
    return np.asarray(x, dtype=np.float64) * float(factor)


def with_nan(x: object) -> np.ndarray:
    """``x`` with its last element set to NaN."""
    out = np.array(x, dtype=np.float64)
    out.reshape(-1)[-1] = np.nan
    return out


def with_posinf(x: object) -> np.ndarray:
    """``x`` with its first element set to +inf."""
    out = np.array(x, dtype=np.float64)
    out.reshape(-1)[0] = np.inf
    return out


def with_dead_row(x: object) -> np.ndarray:
    """``x`` with its last row entirely -inf (no finite logit)."""
    out = np.array(x, dtype=np.float64)
    out.reshape(-1, out.shape[-1])[-1] = -np.inf
    return out


def widen_vocab(x: object, extra: int = 1) -> np.ndarray:
    """``x`` with ``extra`` zero logits appended on the vocabulary axis (a padded vocabulary)."""
    a = np.asarray(x, dtype=np.float64)
    return np.concatenate([a, np.zeros((*a.shape[:-1], extra))], axis=-1)


def with_label(labels: object, value: int) -> np.ndarray:
    """``labels`` with its first entry set to ``value``."""
    out = np.array(labels, dtype=np.int64)
    out.reshape(-1)[0] = value
    return out


def as_float(labels: object) -> np.ndarray:
    """Integer labels stored as floats (a classic silent conversion)."""
    return np.asarray(labels, dtype=np.float64)


def central_difference_gradient(fn: object, x: object, eps: float = 1e-6) -> np.ndarray:
    """Central finite differences ``(f(x + eps e_j) - f(x - eps e_j)) / (2 eps)`` of a scalar function, or of
    a per-row function (``reduction='none'``), where row ``i`` is differentiated w.r.t. row ``i`` only."""
    x0 = np.array(x, dtype=np.float64)
    flat = x0.reshape(-1)
    grad = np.zeros_like(flat)
    row_len = x0.shape[-1]
    for j in range(flat.size):
        old = flat[j]
        flat[j] = old + eps
        up = np.asarray(fn(x0), dtype=np.float64)  # type: ignore[operator]
        flat[j] = old - eps
        down = np.asarray(fn(x0), dtype=np.float64)  # type: ignore[operator]
        flat[j] = old
        diff = (up - down) / (2 * eps)
        grad[j] = diff.reshape(-1)[j // row_len] if diff.ndim else diff
    return grad.reshape(x0.shape)


def flat(x: object) -> np.ndarray:
    """``x`` as a 1-D float64 array."""
    return np.asarray(x, dtype=np.float64).reshape(-1)


def total(x: object) -> float:
    """The sum of every element of ``x``."""
    return float(np.asarray(x, dtype=np.float64).sum())


def close_scaled(actual: object, expected: object, tol: float) -> Comparison:
    """Like :func:`close`, with the error of each element scaled by ``max(1, |expected|)``: absolute for
    values of magnitude up to 1, relative above. For low-precision dtypes, whose error grows with the value."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        return Comparison(False, float("inf"), tol, f": shape {a.shape} != expected shape {e.shape}")
    finite_e = np.where(np.isfinite(e), np.abs(e), 1.0)
    return close(a / np.maximum(1.0, finite_e), e / np.maximum(1.0, finite_e), tol)


def descend(
    ops: object,
    student: object,
    teacher: object,
    labels: object,
    *,
    temperature: float,
    alpha: float,
    steps: int,
    learning_rate: float,
) -> np.ndarray:
    """``steps`` plain gradient steps on the student logits: ``s <- s - lr * kd_logit_gradient(s)``, with the
    gradient computed by ``ops`` (a backend or the reference). Returns the final student logits."""
    s = np.array(student, dtype=np.float64)
    for _ in range(int(steps)):
        g = ops.kd_logit_gradient(s, teacher, labels, temperature=temperature, alpha=alpha)  # type: ignore[attr-defined]
        s = s - float(learning_rate) * np.asarray(g, dtype=np.float64)
    return s


def array(values: object) -> np.ndarray:
    """``values`` (nested lists, or one number for a 0-d array) as a float64 array: literal inputs for a check."""
    return np.asarray(values, dtype=np.float64)


def labels_of(values: object, dtype: str = "int64") -> np.ndarray:
    """``values`` as labels of the integer ``dtype`` (``int64``, ``uint64``, ...), stored exactly."""
    kind = np.dtype(dtype)
    if kind.kind not in "iu":
        raise ValueError(f"labels_of: {dtype!r} is not an integer dtype")
    return np.asarray(values, dtype=kind)
