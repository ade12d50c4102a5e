"""The tiny causal language models that the distributed runs train, and how one is cut into pipeline stages.

:class:`TinyLM` is a small pre-norm transformer (token and position embeddings, causal self-attention and MLP
blocks, a final norm and an untied output head) built from a seed, so every rank builds the same weights
without a broadcast. :func:`stage_module` cuts it into consecutive stages for
``torch.distributed.pipelining``; a stage keeps the full model's parameter names (``blocks.2.mlp.0.weight``),
so the stages' state dicts put together are the full model's state dict.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class ModelShape:
    """The size of a :class:`TinyLM`."""

    vocab: int = 32
    seq_len: int = 8
    width: int = 16
    layers: int = 4
    heads: int = 2


class Block(nn.Module):
    """Pre-norm causal self-attention followed by a pre-norm MLP, both residual."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.attn_norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, width = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).split(width, dim=-1)
        q, k, v = (t.view(batch, seq, self.heads, width // self.heads).transpose(1, 2) for t in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, seq, width))
        return x + self.mlp(self.mlp_norm(x))


class TinyLM(nn.Module):
    """``ids [B, S] -> logits [B, S, vocab]``: embeddings, ``layers`` blocks, a final norm and the head."""

    def __init__(self, shape: ModelShape) -> None:
        super().__init__()
        if shape.width % shape.heads:
            raise ValueError(f"model width {shape.width} is not divisible by its {shape.heads} attention heads")
        self.shape = shape
        self.embed = nn.Embedding(shape.vocab, shape.width)
        self.position = nn.Embedding(shape.seq_len, shape.width)
        self.blocks = nn.ModuleList(Block(shape.width, shape.heads) for _ in range(shape.layers))
        self.norm = nn.LayerNorm(shape.width)
        self.head = nn.Linear(shape.width, shape.vocab)

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[-1], device=ids.device)
        return self.embed(ids) + self.position(positions)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(hidden))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        hidden = self.embed_ids(ids)
        for block in self.blocks:
            hidden = block(hidden)
        return self.logits(hidden)


def build_model(shape: ModelShape, seed: int, dtype: torch.dtype) -> TinyLM:
    """A :class:`TinyLM` whose weights depend only on ``shape``, ``seed`` and ``dtype`` (same on every rank)."""
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = TinyLM(shape)
    finally:
        torch.random.set_rng_state(generator_state)
    return model.to(dtype)


class Stage(nn.Module):
    """Blocks ``[first_block, end_block)`` of a :class:`TinyLM`, with the embeddings when ``first`` and the
    norm and head when ``last``. Input: ids (first stage) or hidden states; output: hidden states or logits
    (last stage). Submodules keep the full model's names, so ``state_dict`` keys are the full model's."""

    def __init__(self, model: TinyLM, first_block: int, end_block: int, *, first: bool, last: bool) -> None:
        super().__init__()
        self.first, self.last = first, last
        if first:
            self.embed = model.embed
            self.position = model.position
        self.blocks = nn.ModuleDict({str(i): model.blocks[i] for i in range(first_block, end_block)})
        if last:
            self.norm = model.norm
            self.head = model.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.first:
            positions = torch.arange(x.shape[-1], device=x.device)
            x = self.embed(x) + self.position(positions)
        for block in self.blocks.values():
            x = block(x)
        if self.last:
            x = self.head(self.norm(x))
        return x


def stage_bounds(layers: int, stages: int) -> list[tuple[int, int]]:
    """Split ``layers`` blocks into ``stages`` consecutive, as-even-as-possible ranges (earlier ones larger)."""
    if not 1 <= stages <= layers:
        raise ValueError(f"cannot cut a model of {layers} blocks into {stages} pipeline stages: use 1 to {layers}")
    size, extra = divmod(layers, stages)
    bounds, start = [], 0
    for stage in range(stages):
        end = start + size + (1 if stage < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def stage_module(model: TinyLM, stage: int, stages: int) -> Stage:
    """Pipeline stage ``stage`` (0-based) of ``stages`` cut from ``model`` (sharing its parameters)."""
    first_block, end_block = stage_bounds(model.shape.layers, stages)[stage]
    return Stage(model, first_block, end_block, first=stage == 0, last=stage == stages - 1)
