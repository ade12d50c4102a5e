"""The top-k teacher pair, and the alignment every teacher in this package follows.

For a sequence of token ids ``x_0 .. x_{n-1}``, row ``j`` (``0 <= j < n - 1``) of a teacher's answer is the
teacher's distribution of token ``j + 1`` given tokens ``0 .. j``: the ``K`` largest log-probabilities
(temperature 1, descending) and their token ids. A sequence of ``n`` tokens has ``n - 1`` rows; this is the
shift by one that a causal language model's logits already carry (logits row ``j`` predicts token ``j + 1``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


class TopK(NamedTuple):
    """Top-k log-probabilities ``[..., K]`` (float32, <= 0, descending) and their token ids ``[..., K]`` (int64)."""

    logprobs: np.ndarray
    ids: np.ndarray


def empty_topk(k: int) -> TopK:
    """The answer for a sequence of one token: no rows."""
    return TopK(np.zeros((0, k), np.float32), np.zeros((0, k), np.int64))


def pad_rows(rows: Sequence[TopK], length: int, k: int) -> TopK:
    """Stack per-sequence answers (``[n_b - 1, K]`` each) into ``[B, length, K]``.

    Rows past a sequence's last predicted token (padding, and the row after the last token) hold the uniform
    distribution over ids ``0 .. K-1``: finite and harmless, and masked out by the labels (-100) in training.
    """
    batch = len(rows)
    logprobs = np.full((batch, length, k), -np.log(k), np.float32)
    ids = np.broadcast_to(np.arange(k, dtype=np.int64), (batch, length, k)).copy()
    for b, row in enumerate(rows):
        n = row.logprobs.shape[0]
        if n > length:
            raise ValueError(f"sequence {b} has {n} teacher rows, more than the batch length {length}")
        logprobs[b, :n] = row.logprobs
        ids[b, :n] = row.ids
    return TopK(logprobs, ids)


def sequences_from_batch(input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> list[list[int]]:
    """Right-padded ``[B, T]`` ids (and 0/1 mask) to a list of token-id lists; left padding is an error."""
    input_ids = np.asarray(input_ids)
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
    if attention_mask is None:
        return [row.tolist() for row in input_ids]
    mask = np.asarray(attention_mask).astype(bool)
    sequences = []
    for b in range(input_ids.shape[0]):
        n = int(mask[b].sum())
        if not mask[b, :n].all():
            raise ValueError(f"attention_mask row {b} is not right-padded (ones then zeros); the teacher needs "
                             "contiguous tokens")
        sequences.append(input_ids[b, :n].tolist())
    return sequences


def topk_from_logits(logits, k: int) -> TopK:
    """The top-k pair from a causal LM's logits ``[n, V]`` for one sequence: rows ``0 .. n-2`` (float32)."""
    import torch

    logprobs = torch.log_softmax(logits[:-1].float(), dim=-1)
    values, ids = torch.topk(logprobs, k, dim=-1)
    return TopK(values.numpy().astype(np.float32), ids.numpy().astype(np.int64))


def canonical(topk: TopK) -> TopK:
    """The same pairs in the order the API teacher returns: log-prob descending, ties by ascending id (torch's
    ``topk`` leaves the order of ties unspecified)."""
    order = np.lexsort((topk.ids, -topk.logprobs), axis=-1)
    return TopK(np.take_along_axis(topk.logprobs, order, -1), np.take_along_axis(topk.ids, order, -1))
