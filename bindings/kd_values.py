"""Helpers a KD check may call: comparisons that report their error, and small array transformations.

Every comparison returns a truthy/falsy object whose ``describe()`` says what was measured against what,
and records the measured error with :func:`spec.measure.record` so reports show it beside the tolerance.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from hypothesis import control, target

from spec import measure

_targets: dict[str, object] = {"context": None, "count": 0}


def _steer(error: float, tol: float) -> None:
    """Point hypothesis at larger errors: ``target(error / tol)`` under a label per comparison of the example
    (a check may compare several times), so a search that comes near a tolerance keeps pushing past it."""
    if not control.currently_in_test_context():
        return
    context = control.current_build_context()
    if _targets["context"] is not context:
        _targets.update(context=context, count=0)
    _targets["count"] = int(_targets["count"]) + 1  # type: ignore[call-overload]
    score = measure.ratio(error, tol) if math.isfinite(error) else 1e300
    target(min(score, 1e300), label=f"error/tolerance #{_targets['count']}")


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
    _steer(error, tol)
    where = f" at index {tuple(int(i) for i in worst)}" if diff.ndim else ""
    detail = f"{where}: actual {a[worst]!r}, expected {e[worst]!r}"
    return Comparison(bool(error <= tol), error, float(tol), detail)


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
    """``labels`` with every row ignored (the same integer dtype)."""
    dtype = np.asarray(labels).dtype
    return np.full(np.shape(labels), ignore_index, dtype=dtype if dtype.kind == "i" else np.int64)


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
    """``labels`` with its first entry set to ``value`` (the same integer dtype)."""
    out = np.array(labels)
    out = out if out.dtype.kind == "i" else out.astype(np.int64)
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


def logit_reach(temperature: float, *logits: object) -> float:
    """``(1 + sum over the arrays of max finite |z| / T) / T``: the scale of the rounding error in a row sum
    of a gradient taken through ``log_softmax(z / T)``. Log-probabilities of logits reaching ``max |z| / T``
    carry an absolute error of that many ulps, and the chain rule divides by T once more; a tolerance
    ``tol * logit_reach(...)`` is then a fixed number of ulps whatever the temperature and the logits' scale."""
    reach = 0.0
    for z in logits:
        a = np.abs(np.asarray(z, dtype=np.float64))
        a = a[np.isfinite(a)]
        reach += float(a.max()) if a.size else 0.0
    return (1.0 + reach / temperature) / temperature


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
    """A float64 array from nested lists (``-inf`` allowed): hand-checkable points written in a check."""
    return np.array(values, dtype=np.float64)


def exp(x: object) -> np.ndarray:
    return np.exp(np.asarray(x, dtype=np.float64))


def ln(x: object) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(np.asarray(x, dtype=np.float64))


def onehot(labels: object, vocab: int, ignore_index: int = -100) -> np.ndarray:
    """``e_y`` per row, float64 ``[..., vocab]``; an all-zero row where the label is ``ignore_index``."""
    y = np.asarray(labels).astype(np.int64)
    return ((np.arange(int(vocab)) == y[..., None]) & (y != ignore_index)[..., None]).astype(np.float64)


def row_constants(labels: object, spread: float, seed: int = 0) -> np.ndarray:
    """One constant per row (shape of ``labels``), of magnitude in ``[spread / 2, spread]`` and alternating
    sign, so neighbouring rows differ by at least ``spread``: no single global constant does it."""
    shape = np.shape(labels)
    n = int(np.prod(shape, dtype=np.int64))
    magnitude = np.random.default_rng(seed).uniform(0.5, 1.0, n) * float(spread)
    sign = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    return (sign * magnitude).reshape(shape)


def centered(x: object) -> np.ndarray:
    """``x`` minus its mean over the last axis."""
    a = np.asarray(x, dtype=np.float64)
    return a - a.mean(axis=-1, keepdims=True)


def row_variance(x: object) -> np.ndarray:
    """The population variance of each row (last axis): ``mean_v (x_v - mean x)^2``."""
    return (centered(x) ** 2).mean(axis=-1)


def reduce_gradient(per_row: object, labels: object, reduction: str, ignore_index: int = -100) -> np.ndarray:
    """A per-row gradient zeroed on ignored rows, divided by the valid-row count for ``mean``."""
    g = np.where((np.asarray(labels) != ignore_index)[..., None], np.asarray(per_row, dtype=np.float64), 0.0)
    n = valid_count(labels, ignore_index)
    return g / n if reduction == "mean" and n else g


def gradient_from_softmax(ops: object, batch: object, reduction: str) -> np.ndarray:
    """The closed form of ``d kd_loss / d s`` built from ``ops.softmax`` (the backend's own softmax):
    ``alpha (softmax(s) - e_y) + (1 - alpha) T (softmax(s/T) - softmax(t/T))``, zero on ignored rows, divided
    by the valid-row count for ``mean``."""
    b = batch
    t, a = b.temperature, b.alpha  # type: ignore[attr-defined]
    hard = ops.softmax(b.student) - onehot(b.labels, b.vocab, b.ignore_index)  # type: ignore[attr-defined]
    soft = ops.softmax(b.student, temperature=t) - ops.softmax(b.teacher, temperature=t)  # type: ignore[attr-defined]
    per_row = (a * hard if a else 0.0) + ((1.0 - a) * t * soft if a != 1.0 else 0.0)
    return reduce_gradient(np.broadcast_to(per_row, hard.shape), b.labels, reduction, b.ignore_index)  # type: ignore[attr-defined]


def each(outcomes: Sequence[object]) -> object:
    """All of ``outcomes`` hold: the first that fails (with its ``describe()``), else the comparison with the
    largest error (or the last outcome)."""
    items = list(outcomes)
    failed = [c for c in items if not c]
    if failed:
        return failed[0]
    measured = [c for c in items if isinstance(c, Comparison)]
    return max(measured, key=lambda c: c.error) if measured else (items[-1] if items else True)


@dataclass(frozen=True)
class Refusal:
    ok: bool
    detail: str

    def __bool__(self) -> bool:
        return self.ok

    def describe(self) -> str:
        return self.detail


def refused(fn: object, *args: object, match: str | None = None, **kwargs: object) -> Refusal:
    """Whether ``fn(*args, **kwargs)`` raises ValueError (whose message matches ``match``, if given). Lets one
    example try every bad input, so no bad input is left to the luck of the draw."""
    name = getattr(fn, "__name__", repr(fn))
    try:
        result = fn(*args, **kwargs)  # type: ignore[operator]
    except ValueError as exc:
        if match is not None and not re.search(match, str(exc)):
            return Refusal(False, f"{name} raised ValueError({str(exc)!r}), which does not match {match!r}")
        return Refusal(True, f"{name} raised ValueError({str(exc)!r})")
    except Exception as exc:  # reported: a bad input must give ValueError, not this
        return Refusal(False, f"{name} raised {type(exc).__name__}({exc}) instead of ValueError")
    shown = np.asarray(result)
    return Refusal(False, f"{name} accepted the bad input and returned {shown!r:.200}")


def label_array(values: object, dtype: str = "int64") -> np.ndarray:
    """``values`` as labels of the integer ``dtype`` (``int64``, ``int32``, ``uint64``, ...), stored exactly."""
    kind = np.dtype(dtype)
    if kind.kind not in "iu":
        raise ValueError(f"label_array: {dtype!r} is not an integer dtype")
    return np.asarray(values, dtype=kind)


def unmask(x: object, value: float) -> np.ndarray:
    """``x`` with every ``-inf`` replaced by ``value`` (a masked entry as the limit of a very negative one)."""
    a = np.array(x, dtype=np.float64)
    return np.where(np.isneginf(a), float(value), a)


def on_grid(x: object, step: float, limit: float) -> np.ndarray:
    """``x`` clipped to ``[-limit, limit]`` and rounded to multiples of ``step`` (``-inf`` kept): with a
    power-of-two step and a small limit every value, and every sum of two, is exact even in bfloat16."""
    a = np.asarray(x, dtype=np.float64)
    return np.where(np.isneginf(a), a, np.round(np.clip(a, -limit, limit) / step) * step)
