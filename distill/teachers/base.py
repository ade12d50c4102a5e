"""The teacher interface of the real-model pipeline.

A teacher scores a :class:`TokenBatch` at the **student's next-token positions**: output row ``l`` of
sequence ``b`` is the teacher's distribution over the token at ``l + 1`` given tokens ``0..l``, exactly as a
causal language model's logits row ``l`` (no shift is applied by the teacher; the pipeline pairs row ``l``
with label ``input_ids[b, l + 1]``, see :mod:`distill.alignment`). Rows the pipeline ignores (padding, and
the last position of every sequence, which has no next token) must still hold finite, well-formed values
of the right shape; their content is unspecified.

There are two kinds, told apart by :attr:`Teacher.kind`:

``"dense"`` (:class:`DenseTeacher`)
    ``logits(batch) -> Tensor [B, L, V]``, floating, any dtype (the teacher's own; the pipeline widens it).
``"topk"`` (:class:`TopKTeacher`)
    ``topk(batch) -> (logprobs, ids)``: ``logprobs`` float ``[B, L, K]``, log-probabilities at temperature 1
    (``<= 0``, finite, each row's ``exp`` summing to at most 1), ``ids`` int64 ``[B, L, K]`` in ``[0, V)``,
    distinct within a row, ordered by descending log-probability. This is the top-k teacher pair of
    ``reference.kd.topk_divergence`` (``mode="tail"`` or ``"renormalize"``), held in a :class:`TopK`.

Every teacher also has ``vocab_size`` (``V``, the width of its distribution) and ``fingerprint``: a short
string that changes whenever its outputs could (model weights, dtype, K, endpoint and model name, ...);
on-disk caches key their entries with it. Tensors are on the CPU unless a teacher documents otherwise.

:func:`check_topk` and :func:`check_dense` validate a teacher's answer (one-line ``TeacherError`` naming the
teacher and the fault), and :func:`topk_from_logits` turns dense logits into the top-k pair, so a dense
teacher can feed a top-k cache.

Teachers that score one sequence at a time (the API teacher, the teacher cache) answer a sequence of ``n``
tokens with ``n - 1`` rows (:class:`TopK` of numpy arrays ``[n - 1, K]``, :func:`sequence_topk` from a
model's logits); :func:`pad_rows` stacks such answers into the ``[B, L, K]`` batch answer, and
:func:`sequences_from_batch` turns a right-padded batch into the sequences to score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Protocol, runtime_checkable

import numpy as np
import torch

__all__ = [
    "DenseTeacher",
    "Teacher",
    "TeacherError",
    "TeacherKind",
    "TokenBatch",
    "TopK",
    "TopKTeacher",
    "canonical",
    "check_dense",
    "check_topk",
    "empty_topk",
    "fingerprint_of",
    "pad_rows",
    "sequence_topk",
    "sequences_from_batch",
    "topk_from_logits",
]

TeacherKind = Literal["dense", "topk"]


class TeacherError(ValueError):
    """A teacher cannot be built or gave a malformed answer; the message is one sentence."""


class TopK(NamedTuple):
    """The top-k teacher pair: log-probabilities ``[..., K]`` (float, <= 0, descending) and their token ids
    ``[..., K]`` (int64); torch tensors in a batch answer, numpy arrays in a per-sequence one."""

    logprobs: Any
    ids: Any


@dataclass(frozen=True)
class TokenBatch:
    """A batch of right-padded token sequences.

    ``input_ids``: int64 ``[B, L]``; ``attention_mask``: int64 ``[B, L]``, 1 on real tokens and 0 on the
    padding after them (every sequence has at least one real token).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    def __post_init__(self) -> None:
        ids, mask = self.input_ids, self.attention_mask
        if ids.dim() != 2 or ids.dtype != torch.int64:
            raise TeacherError(f"input_ids must be int64 [batch, length], got {ids.dtype} {tuple(ids.shape)}")
        if mask.shape != ids.shape or mask.dtype != torch.int64:
            raise TeacherError(
                f"attention_mask must be int64 of the input_ids' shape {tuple(ids.shape)}, "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )

    @property
    def shape(self) -> tuple[int, int]:
        """``(B, L)``."""
        return (int(self.input_ids.shape[0]), int(self.input_ids.shape[1]))


@runtime_checkable
class DenseTeacher(Protocol):
    """A teacher that gives full logits over its vocabulary."""

    kind: Literal["dense"]
    vocab_size: int
    fingerprint: str

    def logits(self, batch: TokenBatch) -> torch.Tensor:
        """Logits ``[B, L, V]`` at the student's next-token positions (row ``l`` predicts token ``l + 1``)."""
        ...


@runtime_checkable
class TopKTeacher(Protocol):
    """A teacher that gives only its ``K`` most likely tokens per position, with their log-probabilities."""

    kind: Literal["topk"]
    vocab_size: int
    top_k: int
    fingerprint: str

    def topk(self, batch: TokenBatch) -> TopK:
        """``(logprobs [B, L, K] float, ids [B, L, K] int64)`` at temperature 1, descending per row."""
        ...


Teacher = DenseTeacher | TopKTeacher


def check_dense(name: str, batch: TokenBatch, logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``logits`` if they are a finite floating ``[B, L, vocab_size]`` tensor, else :class:`TeacherError`."""
    expected = (*batch.shape, vocab_size)
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TeacherError(f"teacher {name} must return floating logits, got {type(logits).__name__}")
    if tuple(logits.shape) != expected:
        raise TeacherError(f"teacher {name} returned logits of shape {tuple(logits.shape)}, expected {expected}")
    if not bool(torch.isfinite(logits).all()):
        raise TeacherError(f"teacher {name} returned non-finite logits")
    return logits


def check_topk(
    name: str,
    batch: TokenBatch,
    logprobs: torch.Tensor,
    ids: torch.Tensor,
    vocab_size: int,
    top_k: int,
    *,
    atol: float = 1e-4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pair if it is a well-formed top-k answer for ``batch`` (see the module docstring), else
    :class:`TeacherError` naming the first fault. ``atol`` bounds how far a row's mass may exceed 1."""
    expected = (*batch.shape, top_k)
    if not isinstance(logprobs, torch.Tensor) or not logprobs.is_floating_point():
        raise TeacherError(f"teacher {name} must return floating logprobs, got {type(logprobs).__name__}")
    if not isinstance(ids, torch.Tensor) or ids.dtype != torch.int64:
        raise TeacherError(f"teacher {name} must return int64 ids, got {getattr(ids, 'dtype', type(ids).__name__)}")
    for label, tensor in (("logprobs", logprobs), ("ids", ids)):
        if tuple(tensor.shape) != expected:
            raise TeacherError(f"teacher {name} returned {label} of shape {tuple(tensor.shape)}, expected {expected}")
    if not bool(torch.isfinite(logprobs).all()) or bool((logprobs > atol).any()):
        raise TeacherError(f"teacher {name} returned logprobs that are not finite and <= 0")
    mass = logprobs.double().exp().sum(dim=-1)
    if bool((mass > 1 + atol).any()):
        raise TeacherError(f"teacher {name} returned rows whose probabilities sum to {float(mass.max()):.6f} > 1")
    if bool(((ids < 0) | (ids >= vocab_size)).any()):
        raise TeacherError(f"teacher {name} returned token ids outside [0, {vocab_size})")
    if top_k > 1:
        ordered = ids.sort(dim=-1).values
        if bool((ordered[..., 1:] == ordered[..., :-1]).any()):
            raise TeacherError(f"teacher {name} returned a row with a repeated token id")
        if bool((logprobs[..., 1:] > logprobs[..., :-1] + atol).any()):
            raise TeacherError(f"teacher {name} returned a row not in descending log-probability order")
    return logprobs, ids


def topk_from_logits(logits: torch.Tensor, top_k: int) -> TopK:
    """The top-k pair of dense ``logits [..., V]`` at temperature 1: float32 log-probabilities (computed in
    float32 or wider) and int64 ids, descending. ``1 <= top_k <= V``."""
    vocab = int(logits.shape[-1])
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= vocab:
        raise TeacherError(f"top_k must be an integer in [1, {vocab}], got {top_k!r}")
    wide = logits.float() if logits.dtype != torch.float64 else logits
    logprobs = torch.log_softmax(wide, dim=-1)
    values, ids = logprobs.topk(top_k, dim=-1, largest=True, sorted=True)
    return TopK(values.float(), ids.to(torch.int64))


def sequence_topk(logits: torch.Tensor, top_k: int) -> TopK:
    """A per-sequence answer from a causal LM's logits ``[n, V]`` for one sequence: rows ``0 .. n-2`` as numpy
    (float32, int64)."""
    values, ids = topk_from_logits(logits[:-1].detach(), top_k)
    return TopK(values.cpu().numpy(), ids.cpu().numpy())


def empty_topk(k: int) -> TopK:
    """The per-sequence answer for a sequence of one token: no rows."""
    return TopK(np.zeros((0, k), np.float32), np.zeros((0, k), np.int64))


def pad_rows(rows: Sequence[TopK], length: int, k: int) -> TopK:
    """Stack per-sequence answers (``[n_b - 1, K]`` each) into the batch answer ``[B, length, K]`` (numpy).

    Rows past a sequence's last predicted token (padding, and the row of its last token) hold the uniform
    distribution over ids ``0 .. K-1``: finite and well-formed, and ignored by the loss.
    """
    logprobs = np.full((len(rows), length, k), -np.log(k), np.float32)
    ids = np.broadcast_to(np.arange(k, dtype=np.int64), (len(rows), length, k)).copy()
    for b, row in enumerate(rows):
        n = row.logprobs.shape[0]
        if n > length:
            raise TeacherError(f"sequence {b} has {n} teacher rows, more than the batch length {length}")
        logprobs[b, :n] = row.logprobs
        ids[b, :n] = row.ids
    return TopK(logprobs, ids)


def sequences_from_batch(input_ids: Any, attention_mask: Any = None) -> list[list[int]]:
    """Right-padded ``[B, L]`` ids (and 0/1 mask), numpy or torch, to token-id lists; left padding is an error."""
    input_ids = np.asarray(input_ids)
    if input_ids.ndim != 2:
        raise TeacherError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
    if attention_mask is None:
        return [row.tolist() for row in input_ids]
    mask = np.asarray(attention_mask).astype(bool)
    sequences = []
    for b in range(input_ids.shape[0]):
        n = int(mask[b].sum())
        if not mask[b, :n].all():
            raise TeacherError(f"attention_mask row {b} is not right-padded (ones then zeros); the teacher needs "
                               "contiguous tokens")
        sequences.append(input_ids[b, :n].tolist())
    return sequences


def canonical(topk: TopK) -> TopK:
    """The same numpy pairs in the API teacher's order: log-prob descending, ties by ascending id (torch's
    ``topk`` leaves the order of ties unspecified)."""
    order = np.lexsort((topk.ids, -topk.logprobs), axis=-1)
    return TopK(np.take_along_axis(topk.logprobs, order, -1), np.take_along_axis(topk.ids, order, -1))


def fingerprint_of(*parts: object) -> str:
    """A short stable hex digest of ``parts`` (their ``repr``), for :attr:`fingerprint` values."""
    import hashlib

    return hashlib.sha256(repr(parts).encode("utf-8")).hexdigest()[:16]


