"""Deterministic batches of next-token data with padding, and how a batch is split over ranks and microbatches.

Every rank builds the same global batch from ``(seed, step)`` and takes its share, so no data is sent. The
sequences have different lengths (the tail is padding, labelled ``IGNORE_INDEX``), so ranks and microbatches
hold different numbers of valid tokens: normalizing each piece by its own count would give a different update
than the whole batch, which is exactly what the distributed runs must not do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100
PAD_ID = 0


@dataclass(frozen=True)
class Batch:
    """``ids [B, S]`` (int64) and next-token ``labels [B, S]`` (``IGNORE_INDEX`` on padding and the last
    position of each sequence)."""

    ids: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def valid_tokens(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())

    def rows(self, start: int, stop: int) -> Batch:
        return Batch(self.ids[start:stop], self.labels[start:stop])


def global_batch(step: int, batch_size: int, seq_len: int, vocab: int, seed: int) -> Batch:
    """The batch of optimizer step ``step`` (0-based): ``batch_size`` sequences of 1 to ``seq_len`` tokens
    (one in four is a single token, so it has no valid label), padded to ``seq_len``."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    ids = torch.randint(1, vocab, (batch_size, seq_len), generator=generator)
    lengths = torch.randint(2, seq_len + 1, (batch_size,), generator=generator)
    lengths[torch.rand(batch_size, generator=generator) < 0.25] = 1
    positions = torch.arange(seq_len)
    padding = positions.unsqueeze(0) >= lengths.unsqueeze(1)
    ids = ids.masked_fill(padding, PAD_ID)
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, :-1] = ids[:, 1:]
    labels = labels.masked_fill(positions.unsqueeze(0) >= (lengths - 1).unsqueeze(1), IGNORE_INDEX)
    return Batch(ids, labels)


def split_bounds(size: int, parts: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of ``parts`` consecutive pieces of ``size`` rows, as even as possible (earlier ones
    larger), as ``torch.tensor_split`` cuts them. Every piece has at least one row."""
    if parts < 1 or size < parts:
        raise ValueError(f"cannot split {size} sequences into {parts} non-empty pieces")
    base, extra = divmod(size, parts)
    bounds, start = [], 0
    for part in range(parts):
        stop = start + base + (1 if part < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def rank_microbatches(batch: Batch, rank: int, world_size: int, accumulation: int) -> list[Batch]:
    """The ``accumulation`` microbatches of ``rank``: its share of ``batch`` cut into consecutive pieces."""
    start, stop = split_bounds(len(batch), world_size)[rank]
    share = batch.rows(start, stop)
    return [share.rows(a, b) for a, b in split_bounds(len(share), accumulation)]
