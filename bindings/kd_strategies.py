"""How KD checks draw their inputs. Arrays come from a numpy generator seeded by a drawn integer, so
hypothesis shrinks shapes, seeds and hyperparameters (not thousands of floats) and stays fast."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
from hypothesis import strategies as st

IGNORE_INDEX = -100
REDUCTIONS = ("none", "sum", "mean")
LABEL_DTYPES = ("int64", "int32")


def _describe_array(name: str, a: np.ndarray) -> str:
    with np.printoptions(precision=4, threshold=48, edgeitems=3, linewidth=100):
        return f"{name} {a.dtype}{list(a.shape)} = {np.array2string(a, prefix='  ')}"


@dataclass(frozen=True)
class KDBatch:
    """One drawn KD input: student and teacher logits ``[..., V]``, labels ``[...]`` and hyperparameters."""

    student: np.ndarray
    teacher: np.ndarray
    labels: np.ndarray
    temperature: float
    alpha: float
    direction: np.ndarray
    ignore_index: int = IGNORE_INDEX

    @property
    def vocab(self) -> int:
        return int(self.student.shape[-1])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.student.shape)

    def describe(self) -> str:
        parts = [
            f"KDBatch(shape={list(self.shape)}, temperature={self.temperature!r}, alpha={self.alpha!r})",
            _describe_array("student", self.student),
            _describe_array("teacher", self.teacher),
            _describe_array("labels", self.labels),
        ]
        return "\n".join(parts)


KD_BATCH_FIELDS = (
    "student",
    "teacher",
    "labels",
    "temperature",
    "alpha",
    "direction",
    "ignore_index",
    "vocab",
    "shape",
)


def _range(value: float | Sequence[float], kind: str = "float") -> st.SearchStrategy:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return st.just(value)
    lo, hi = value
    if kind == "int":
        return st.integers(int(lo), int(hi))
    edges = [v for v in (lo, hi, 1.0, 0.5) if lo <= v <= hi]
    return st.one_of(st.sampled_from(edges), st.floats(lo, hi, allow_nan=False, allow_infinity=False))


def kd_batch(
    rows: Sequence[int] = (1, 8),
    vocab: Sequence[int] | int = (2, 24),
    ndim: Sequence[int] = (2, 3),
    scale: float = 4.0,
    temperature: float | Sequence[float] = (0.25, 8.0),
    alpha: float | Sequence[float] = (0.0, 1.0),
    ignore: float = 0.3,
    min_valid: int = 0,
    min_ignored: int = 0,
    masked: float = 0.0,
    extreme: bool = False,
    label_dtype: str | Sequence[str] = LABEL_DTYPES,
    ignore_index: int | Sequence[int] = IGNORE_INDEX,
) -> st.SearchStrategy[KDBatch]:
    """Random KD inputs.

    ``rows``/``vocab``: ranges of the row count and vocabulary size; ``ndim``: logits of 2 or 3 axes;
    ``scale``: standard deviation of the logits; ``ignore``: fraction of rows labelled ``ignore_index``
    (the first ``min_valid`` rows are always valid, the last ``min_ignored`` always ignored); ``masked``:
    fraction of vocabulary entries set to ``-inf`` in both student and teacher (never the label's entry, and
    never a whole row); ``extreme``: logits of magnitude about 1e4; ``label_dtype``: the label dtype(s)
    drawn (``int64``, ``int32``: labels reach the backend at that dtype); ``ignore_index``: the index of
    ignored rows (one value, or a list to draw from).
    """

    @st.composite
    def build(draw: st.DrawFn) -> KDBatch:
        n = draw(st.integers(int(rows[0]), int(rows[1])))
        v = draw(_range(vocab, "int"))
        nd = draw(st.sampled_from(tuple(ndim)))
        seed = draw(st.integers(0, 2**32 - 1))
        t = float(draw(_range(temperature)))
        a = float(draw(_range(alpha)))
        y_dtype = draw(st.sampled_from((label_dtype,) if isinstance(label_dtype, str) else tuple(label_dtype)))
        skip = int(draw(st.sampled_from((ignore_index,) if isinstance(ignore_index, int) else tuple(ignore_index))))
        rng = np.random.default_rng(seed)
        if nd == 3:
            b = draw(st.integers(1, max(1, n)))
            lead = (b, max(1, n // b))
        else:
            lead = (n,)
        shape = (*lead, v)
        student = rng.normal(0.0, scale, shape)
        teacher = rng.normal(0.0, scale, shape)
        if extreme:
            student = np.sign(student) * 1e4 + student
            teacher = np.sign(teacher) * 1e4 + teacher
        labels = rng.integers(0, v, lead)
        flat = labels.reshape(-1)
        drop = rng.random(flat.size) < ignore
        drop[flat.size - min(min_ignored, flat.size) :] = True
        drop[: min(min_valid, flat.size)] = False
        flat[drop] = skip
        if masked > 0 and v > 1:
            mask = rng.random(shape) < masked
            keep = np.where(labels == skip, 0, labels)
            np.put_along_axis(mask, keep[..., None], False, axis=-1)
            student = np.where(mask, -np.inf, student)
            teacher = np.where(mask, -np.inf, teacher)
        direction = rng.normal(0.0, 1.0, shape)
        direction -= direction.mean(axis=-1, keepdims=True)  # not a per-row constant shift
        direction[..., 0] += 1.0  # never exactly zero
        return KDBatch(student, teacher, labels.astype(y_dtype), t, a, direction, skip)

    return build()


BLOCK_SHAPES: tuple[tuple[int, int], ...] = ((1025, 5), (4097, 3), (3, 1025), (2, 4097), (1, 8193), (7, 1))
"""Shapes ``[rows, V]`` that cross the block sizes kernels use (1024-row and 1024/4096-column tiles, one row
or column past a block), plus ``V = 1``."""


@cache
def block_batches(seed: int = 0) -> tuple[KDBatch, ...]:
    """One fixed KD batch per shape of :data:`BLOCK_SHAPES` (a few ignored rows, T = 2, alpha = 0.5): explicit
    points, so every run checks every shape (hypothesis would draw them by luck). Built once; treat as read-only."""
    rng = np.random.default_rng(seed)
    out = []
    for n, v in BLOCK_SHAPES:
        labels = rng.integers(0, v, n)
        labels[rng.random(n) < 0.1] = IGNORE_INDEX
        labels[0], labels[-1] = 0, v - 1  # the first and the last row are valid
        direction = rng.normal(0.0, 1.0, (n, v))
        out.append(KDBatch(rng.normal(0, 3, (n, v)), rng.normal(0, 3, (n, v)), labels, 2.0, 0.5, direction))
    return tuple(out)


def reduction() -> st.SearchStrategy[str]:
    """One of ``none``, ``sum``, ``mean``."""
    return st.sampled_from(REDUCTIONS)


def choice(values: Sequence[object]) -> st.SearchStrategy[object]:
    """One of ``values`` (a YAML list)."""
    return st.sampled_from(list(values))


def number(low: float, high: float) -> st.SearchStrategy[float]:
    """A finite float in ``[low, high]``."""
    return st.floats(low, high, allow_nan=False, allow_infinity=False)


@dataclass(frozen=True)
class StepCase:
    """One drawn KD step: fixture teacher and student providers, a batch of input ids and labels, and the
    logits both providers give for it."""

    teacher: object
    student: object
    input_ids: np.ndarray
    labels: np.ndarray
    temperature: float
    alpha: float
    vocab: int
    context: int

    @property
    def teacher_logits(self) -> np.ndarray:
        return np.asarray(self.teacher.logits_for_batch(self.input_ids))  # type: ignore[attr-defined]

    @property
    def student_logits(self) -> np.ndarray:
        return np.asarray(self.student.logits_for_batch(self.input_ids))  # type: ignore[attr-defined]

    def describe(self) -> str:
        return (
            f"StepCase(vocab={self.vocab}, context={self.context}, temperature={self.temperature!r}, "
            f"alpha={self.alpha!r})\n"
            + _describe_array("input_ids", self.input_ids)
            + "\n"
            + _describe_array("labels", self.labels)
        )


STEP_CASE_FIELDS = (
    "teacher",
    "student",
    "input_ids",
    "labels",
    "temperature",
    "alpha",
    "vocab",
    "context",
    "teacher_logits",
    "student_logits",
)


def step_case(
    vocab: Sequence[int] = (2, 16),
    batch: Sequence[int] = (1, 4),
    seq: Sequence[int] = (1, 6),
    temperature: float | Sequence[float] = (0.5, 4.0),
    alpha: float | Sequence[float] = (0.0, 1.0),
    ignore: float = 0.2,
) -> st.SearchStrategy[StepCase]:
    """A fixture teacher and student over ``vocab`` tokens and a batch ``[batch, seq]`` of input ids with
    labels (``ignore`` of them ``ignore_index``)."""
    from reference.providers import FixtureStudent, FixtureTeacher

    @st.composite
    def build(draw: st.DrawFn) -> StepCase:
        v = draw(st.integers(int(vocab[0]), int(vocab[1])))
        b = draw(st.integers(int(batch[0]), int(batch[1])))
        s = draw(st.integers(int(seq[0]), int(seq[1])))
        seed = draw(st.integers(0, 2**32 - 1))
        t = float(draw(_range(temperature)))
        a = float(draw(_range(alpha)))
        rng = np.random.default_rng(seed)
        input_ids = rng.integers(0, v, (b, s))
        labels = rng.integers(0, v, (b, s))
        labels[rng.random((b, s)) < ignore] = IGNORE_INDEX
        teacher = FixtureTeacher(v, seed=int(rng.integers(0, 2**31)))
        student = FixtureStudent(v, seed=int(rng.integers(0, 2**31)), init_scale=1.0)
        return StepCase(teacher, student, input_ids, labels.astype(np.int64), t, a, v, v)

    return build()
