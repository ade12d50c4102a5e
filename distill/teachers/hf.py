"""A Hugging Face causal LM as an in-process dense teacher: eval mode, no gradients, its own dtype."""

from __future__ import annotations

import torch

from distill.models import output_vocab_size
from distill.teachers.base import TeacherError, TokenBatch, TopK, check_dense, fingerprint_of, topk_from_logits

__all__ = ["HFTeacher", "HFTopKTeacher"]


class HFTeacher:
    """Dense teacher over ``model``: ``logits(batch)`` is the model's forward on the batch, unshifted.

    The model is put in eval mode with ``requires_grad`` off, and runs under ``torch.inference_mode`` in the
    dtype it was loaded in; the logits come back in that dtype (the loss widens them, not the teacher).
    """

    kind = "dense"

    def __init__(self, model: torch.nn.Module, name: str = "teacher") -> None:
        self.model = model.eval().requires_grad_(False)
        self.name = name
        self.vocab_size = output_vocab_size(model)
        dtype = next(model.parameters()).dtype
        shapes = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
        checksum = float(sum(float(p.double().sum()) for p in model.parameters()))
        self.fingerprint = fingerprint_of(type(model).__name__, str(dtype), shapes, round(checksum, 6))

    def logits(self, batch: TokenBatch) -> torch.Tensor:
        with torch.inference_mode():
            out = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        logits = out.logits if hasattr(out, "logits") else out
        return check_dense(self.name, batch, logits, self.vocab_size)


class HFTopKTeacher:
    """Top-k teacher over an in-process :class:`HFTeacher`: its logits' ``top_k`` most likely tokens at
    temperature 1 (:func:`~distill.teachers.base.topk_from_logits`), the answer an API teacher serving the same
    model gives."""

    kind = "topk"

    def __init__(self, dense: HFTeacher, top_k: int) -> None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= dense.vocab_size:
            raise TeacherError(f"--teacher-k {top_k!r}: expected a whole number in [1, {dense.vocab_size}]")
        self.dense, self.top_k = dense, top_k
        self.name, self.vocab_size = dense.name, dense.vocab_size
        self.fingerprint = fingerprint_of(dense.fingerprint, "topk", top_k)

    def topk(self, batch: TokenBatch) -> TopK:
        return topk_from_logits(self.dense.logits(batch), self.top_k)
