"""Teacher and student providers for the distillation pipeline, and deterministic fixture models.

A provider is anything with the methods of :class:`TeacherProvider` or :class:`StudentProvider`; the pipeline
needs nothing else. Shapes, for a batch of ``B`` sequences of ``S`` tokens and a vocabulary of ``V``::

    input_ids   int    [B, S]      token ids the models condition on
    logits      float  [B, S, V]   one row of logits per input position
    gradient    float  [B, S, V]   d(mean KD loss) / d(student logits), as returned by ``kd_step``

The student receives the input ids together with the gradient, so every element of a batch gets its own
update. (The seed's GPU student could only update the last element of a batch; a student here must not.)

The fixture models are a table of logits indexed by the input token at each position (a bigram-style model
over a context vocabulary of ``C`` tokens): ``logits[b, s] = table[input_ids[b, s]]``. The teacher's table is
random under its seed with one clearly preferred token per context; the student's is a small random table
under a different seed that it trains with plain SGD.
"""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = [
    "FixtureStudent",
    "FixtureTeacher",
    "StudentProvider",
    "TeacherProvider",
]


@runtime_checkable
class TeacherProvider(Protocol):
    """A model whose logits the student is distilled towards."""

    @property
    def vocab_size(self) -> int:
        """Number of output tokens ``V`` (the last axis of the logits)."""
        ...

    def logits_for_batch(self, input_ids: np.ndarray) -> np.ndarray:
        """Logits ``[B, S, V]`` for integer ``input_ids`` ``[B, S]``."""
        ...


@runtime_checkable
class StudentProvider(Protocol):
    """A trainable model: it gives logits, takes a KD gradient for the same batch, and can be saved."""

    @property
    def vocab_size(self) -> int:
        """Number of output tokens ``V`` (the last axis of the logits)."""
        ...

    def logits_for_batch(self, input_ids: np.ndarray) -> np.ndarray:
        """Logits ``[B, S, V]`` for integer ``input_ids`` ``[B, S]``."""
        ...

    def apply_kd_gradient(self, input_ids: np.ndarray, gradient: np.ndarray) -> None:
        """Update the parameters from ``gradient`` ``[B, S, V]`` (d mean loss / d logits) for ``input_ids``.

        Every element of the batch must contribute to the update.
        """
        ...

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the model to ``path``; the pipeline makes the write atomic (``pipeline.atomic_write``)."""
        ...


def _check_input_ids(input_ids: np.ndarray, context_size: int, who: str) -> np.ndarray:
    ids = np.asarray(input_ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{who}: input_ids must hold integers, got dtype {ids.dtype}")
    if ids.ndim != 2:
        raise ValueError(f"{who}: input_ids must have shape [batch, seq], got shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= context_size):
        raise ValueError(
            f"{who}: input_ids must lie in [0, {context_size}), got values from {ids.min()} to {ids.max()}"
        )
    return ids


def _check_size(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _check_learning_rate(value: float) -> float:
    rate = float(value)
    if not np.isfinite(rate) or rate <= 0:
        raise ValueError(f"learning_rate must be a finite number > 0, got {value!r}")
    return rate


class _LogitTable:
    """A logit table ``[C, V]`` looked up by input token: the forward pass both fixtures share."""

    _table: np.ndarray

    def __init__(self, vocab_size: int, context_size: int | None) -> None:
        self._vocab_size = _check_size("vocab_size", vocab_size)
        self._context_size = _check_size("context_size", vocab_size if context_size is None else context_size)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def context_size(self) -> int:
        """Number of distinct input tokens ``C`` the table conditions on."""
        return self._context_size

    def logits_for_batch(self, input_ids: np.ndarray) -> np.ndarray:
        ids = _check_input_ids(input_ids, self._context_size, type(self).__name__)
        return self._table[ids]


class FixtureTeacher(_LogitTable):
    """Deterministic teacher: a fixed random logit table ``[C, V]`` with one preferred token per context.

    ``table = N(0, 1) noise``; then ``table[c, preferred[c]] += sharpness`` so the teacher's argmax for
    context ``c`` is ``preferred[c]`` by a clear margin. Same arguments, same table.
    """

    def __init__(
        self,
        vocab_size: int = 32,
        *,
        context_size: int | None = None,
        seed: int = 0,
        sharpness: float = 5.0,
    ) -> None:
        super().__init__(vocab_size, context_size)
        rng = np.random.default_rng(seed)
        table = rng.normal(0.0, 1.0, size=(self._context_size, self._vocab_size))
        self._preferred = rng.integers(0, self._vocab_size, size=self._context_size)
        table[np.arange(self._context_size), self._preferred] += float(sharpness)
        self._table = table

    @property
    def preferred_tokens(self) -> np.ndarray:
        """The teacher's argmax token for each context, shape ``[C]`` (a copy)."""
        return self._preferred.copy()


class FixtureStudent(_LogitTable):
    """Trainable table student ``[C, V]`` with SGD on the mean KD loss.

    ``apply_kd_gradient(input_ids, gradient)`` performs, for every position ``(b, s)`` of the batch::

        table[input_ids[b, s]] -= learning_rate * gradient[b, s]

    accumulated with ``np.add.at`` so that a context used at several positions receives the sum of their
    gradients. That sum is exactly d(mean loss)/d(table row): the division by the number of valid rows is
    already inside the gradient ``kd_step`` returns (it is the gradient of the *mean* loss), so no further
    batch averaging happens here.
    """

    def __init__(
        self,
        vocab_size: int = 32,
        *,
        context_size: int | None = None,
        seed: int = 1,
        learning_rate: float = 1.0,
        init_scale: float = 0.01,
    ) -> None:
        super().__init__(vocab_size, context_size)
        self.learning_rate = _check_learning_rate(learning_rate)
        rng = np.random.default_rng(seed)
        self._table = rng.normal(0.0, float(init_scale), size=(self._context_size, self._vocab_size))

    @classmethod
    def from_table(cls, table: np.ndarray, *, learning_rate: float = 1.0) -> FixtureStudent:
        """A student whose parameters are a copy of ``table`` ``[C, V]`` (float64)."""
        table = np.array(table, dtype=np.float64)
        if table.ndim != 2 or table.shape[0] < 1 or table.shape[1] < 1:
            raise ValueError(f"a student table must have shape [contexts, vocab], got shape {table.shape}")
        student = cls(table.shape[1], context_size=table.shape[0], learning_rate=learning_rate)
        student._table = table
        return student

    @property
    def table(self) -> np.ndarray:
        """The logit table ``[C, V]`` (a copy)."""
        return self._table.copy()

    def apply_kd_gradient(self, input_ids: np.ndarray, gradient: np.ndarray) -> None:
        ids = _check_input_ids(input_ids, self._context_size, "FixtureStudent")
        grad = np.asarray(gradient, dtype=np.float64)
        expected = (*ids.shape, self._vocab_size)
        if grad.size == 0 and ids.size == 0:
            return
        if grad.shape != expected:
            raise ValueError(
                f"FixtureStudent: gradient must have shape {expected} to match input_ids {ids.shape}, got {grad.shape}"
            )
        if not np.all(np.isfinite(grad)):
            raise ValueError("FixtureStudent: gradient holds NaN or infinite values; refusing to apply it")
        np.add.at(self._table, ids, -self.learning_rate * grad)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the table and learning rate to ``path`` as an ``.npz`` archive (no suffix is added)."""
        with open(path, "wb") as handle:
            np.savez(handle, table=self._table, learning_rate=np.float64(self.learning_rate))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FixtureStudent:
        """Read a student written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as archive:
            return cls.from_table(archive["table"], learning_rate=float(archive["learning_rate"]))
