"""One knowledge-distillation step in the reference: teacher and student logits in, loss and gradient out.

:func:`kd_step` is backend-agnostic pipeline code. It asks a teacher provider and a student for logits over
the same batch of token ids and returns ``(kd_loss, kd_logit_gradient)`` with reduction ``mean``, both
computed by :mod:`reference.kd` (the single source of the math).

A *teacher* is any object with ``vocab_size: int`` and ``logits_for_batch(input_ids) -> array [..., V]``.
A *student* is either a callable ``student(input_ids) -> array [..., V]`` or an object with the same
``logits_for_batch`` method (and optionally ``vocab_size``). Vocabulary sizes are compared before any loss
is computed; a mismatch is a ``ValueError`` naming both sizes, never a silent broadcast or padding.
"""

from __future__ import annotations

from collections.abc import Callable, Sized
from typing import Any, Protocol

import numpy as np
from numpy.typing import ArrayLike

from reference.checks import (
    DEFAULT_IGNORE_INDEX,
    check_alpha,
    check_ignore_index,
    check_temperature,
    format_shape,
    vocab_mismatch_message,
)
from reference.kd import kd_logit_gradient, kd_loss

__all__ = ["LogitsProvider", "kd_step"]


class LogitsProvider(Protocol):
    """What :func:`kd_step` needs from a teacher (and accepts from a student): a vocab size and logits."""

    vocab_size: int

    def logits_for_batch(self, input_ids: Any) -> ArrayLike:
        """Logits of shape ``[..., vocab_size]`` for ``input_ids`` of shape ``[...]``."""
        ...


def _teacher_vocab_size(teacher: object) -> int:
    """The teacher's declared vocab size, checked to be a positive integer."""
    vocab = getattr(teacher, "vocab_size", None)
    if isinstance(vocab, bool) or not isinstance(vocab, (int, np.integer)) or vocab <= 0:
        raise ValueError(
            f"teacher must have a positive integer vocab_size, got {vocab!r} from {type(teacher).__name__}"
        )
    if not callable(getattr(teacher, "logits_for_batch", None)):
        raise ValueError(
            f"teacher must have a logits_for_batch(input_ids) method; {type(teacher).__name__} has none"
        )
    return int(vocab)


def _student_forward(student_logits: object) -> Callable[[Any], ArrayLike]:
    """The student's logits function: the object's ``logits_for_batch`` if it has one, else the callable."""
    method = getattr(student_logits, "logits_for_batch", None)
    if callable(method):
        return method
    if callable(student_logits):
        return student_logits
    raise ValueError(
        "student_logits must be a callable student_logits(input_ids) -> logits or an object with a "
        f"logits_for_batch(input_ids) method; got {type(student_logits).__name__}"
    )


def _check_vocab(teacher_vocab: int, student_vocab: int) -> None:
    """Raise ValueError naming both sizes when the teacher and student vocabularies differ."""
    if teacher_vocab != student_vocab:
        raise ValueError(vocab_mismatch_message(teacher_vocab, student_vocab))


def kd_step(
    teacher: LogitsProvider,
    input_ids: Sized,
    labels: ArrayLike,
    *,
    temperature: float,
    alpha: float,
    student_logits: Callable[[Any], ArrayLike] | LogitsProvider,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
) -> tuple[float, np.ndarray]:
    """One KD step: ``(mean kd_loss, kd_logit_gradient with reduction "mean")`` over ``input_ids``.

    ``L = mean_i [alpha * CE(s_i, y_i) + (1 - alpha) * T^2 * KL(softmax(t_i/T) || softmax(s_i/T))]`` over
    rows whose label is not ``ignore_index``; the gradient is ``dL/ds`` with the shape of the student
    logits. An empty batch (``len(input_ids) == 0``) returns ``(0.0, zeros of shape
    np.shape(input_ids) + (V,))`` without calling either model (labels must then be empty too).

    Raises ValueError on a teacher/student vocab mismatch (naming both sizes) and on every bad input
    :mod:`reference.kd` refuses.
    """
    temperature = check_temperature(temperature)
    alpha = check_alpha(alpha)
    ignore_index = check_ignore_index(ignore_index)
    teacher_vocab = _teacher_vocab_size(teacher)
    student_forward = _student_forward(student_logits)
    declared_student_vocab = getattr(student_logits, "vocab_size", None)
    if declared_student_vocab is not None:
        _check_vocab(teacher_vocab, int(declared_student_vocab))

    if len(input_ids) == 0:
        # Neither model is called; the empty logits still go through kd.py so labels are validated.
        teacher_logits = np.zeros((*np.shape(input_ids), teacher_vocab), dtype=np.float64)
        student = teacher_logits
    else:
        teacher_logits = np.asarray(teacher.logits_for_batch(input_ids))
        if teacher_logits.ndim < 1 or teacher_logits.shape[-1] != teacher_vocab:
            raise ValueError(
                f"teacher.logits_for_batch returned shape {format_shape(teacher_logits.shape)}, whose last "
                f"axis is not the teacher's declared vocab size {teacher_vocab}"
            )
        student = np.asarray(student_forward(input_ids))
        if student.ndim >= 1:
            _check_vocab(teacher_vocab, student.shape[-1])

    loss = kd_loss(
        student,
        teacher_logits,
        labels,
        temperature=temperature,
        alpha=alpha,
        ignore_index=ignore_index,
        reduction="mean",
    )
    gradient = kd_logit_gradient(
        student,
        teacher_logits,
        labels,
        temperature=temperature,
        alpha=alpha,
        ignore_index=ignore_index,
        reduction="mean",
    )
    return float(loss), gradient
