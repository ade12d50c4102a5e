"""Next-token alignment and padding masks, explicit.

A causal LM's logits row ``l`` predicts token ``l + 1``. For a right-padded batch (``attention_mask`` 1 on real
tokens), the label of row ``l`` is ``input_ids[l + 1]`` when token ``l + 1`` is real, else ``ignore_index``:
the last position of every sequence and every padding position are ignored, so they add nothing to the loss
and receive zero gradient.
"""

from __future__ import annotations

import torch

from distill.teachers.base import TokenBatch

__all__ = ["IGNORE_INDEX", "next_token_labels", "valid_token_count"]

IGNORE_INDEX = -100


def next_token_labels(batch: TokenBatch, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Labels ``[B, L]`` for the logits rows of ``batch``: ``input_ids`` shifted left by one, padding ignored."""
    ids, mask = batch.input_ids, batch.attention_mask
    labels = torch.full_like(ids, ignore_index)
    follows = (mask[:, 1:] == 1) & (mask[:, :-1] == 1)
    labels[:, :-1] = torch.where(follows, ids[:, 1:], torch.full_like(ids[:, 1:], ignore_index))
    return labels


def valid_token_count(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> int:
    """Rows that count in the loss (label not ``ignore_index``)."""
    return int((labels != ignore_index).sum())
