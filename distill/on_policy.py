"""On-policy distillation: with probability LAMBDA per batch, the student writes the continuation.

This follows TRL's GKD trainer (``trl.experimental.gkd``), which is where the facts come from:

- per training step, with probability ``lmbda`` the batch's prompts are continued by the student
  (``model.generate`` with ``do_sample=True``, ``temperature`` (GKD's default 0.9), ``top_k=0`` (off),
  ``top_p=1.0`` (off), ``max_new_tokens`` (default 128)); otherwise the dataset's sequences are used;
- the sampled batch's labels are the generated sequences with the prompt masked (-100) and everything after
  the first EOS masked; the attention mask keeps the prompt's mask and drops the tokens after the first EOS;
- the logits are filtered as Hugging Face's ``generate`` does: temperature, then top-k, then top-p (the
  smallest set of most likely tokens whose probability reaches ``top_p``, at least one kept).

Two differences, both deliberate: the decision for step ``s`` is drawn from its own stream seeded by
``(seed, s)``, so a resumed run makes the same decisions, and a batch is on-policy when ``u < LAMBDA``
(TRL: ``random.random() <= lmbda``), so LAMBDA = 0 never samples and LAMBDA = 1 always does. The student is
put in eval mode (no dropout) while it samples, and its mode is restored after.

The sampled sequences are then scored by the teacher like any dataset batch (``teacher.score_batch``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

# GKDConfig's defaults (trl.experimental.gkd.gkd_config), except max_new_tokens, sized for the tiny models here.
DEFAULT_TEMPERATURE = 0.9
DEFAULT_MAX_NEW_TOKENS = 32


@dataclass(frozen=True)
class SamplingConfig:
    """How the student samples: ``top_k=0`` and ``top_p=1.0`` switch those filters off."""

    temperature: float = DEFAULT_TEMPERATURE
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    eos_token_id: int | None = None
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"--sampling-temperature {self.temperature}: must be > 0")
        if self.top_k < 0:
            raise ValueError(f"--sampling-top-k {self.top_k}: must be >= 0 (0 switches it off)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"--sampling-top-p {self.top_p}: must be in (0, 1] (1 switches it off)")
        if self.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens {self.max_new_tokens}: must be >= 1")


class OnPolicySchedule:
    """Decides per step whether the batch is sampled from the student: ``u(seed, step) < fraction``."""

    def __init__(self, fraction: float, seed: int = 0) -> None:
        if not 0 <= fraction <= 1:
            raise ValueError(f"--on-policy-fraction {fraction}: must be in [0, 1]")
        self.fraction, self.seed = float(fraction), int(seed)

    def uniform(self, step: int) -> float:
        # A stream of its own per (seed, step); the constant keeps it apart from other seeded streams.
        return float(np.random.default_rng([self.seed, int(step), 0x6F6E]).random())

    def is_on_policy(self, step: int) -> bool:
        return self.uniform(step) < self.fraction


def filter_logits(logits, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
    """Last-axis logits ``[..., V]`` after temperature, top-k and top-p, as ``generate`` filters them: removed
    entries are ``-inf``."""
    import torch

    scores = logits.float() / temperature
    if top_k > 0:
        kth = torch.topk(scores, min(top_k, scores.shape[-1]), dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        ascending, order = torch.sort(scores, dim=-1)
        cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= 1 - top_p
        drop[..., -1] = False  # the most likely token always stays
        scores = scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return scores


def _logits(model, input_ids):
    out = model(input_ids)
    return out.logits if hasattr(out, "logits") else out


class SampledBatch(NamedTuple):
    """A student-written batch, right-padded: ``labels`` sit at the positions of ``input_ids`` (Hugging Face's
    convention; the loss shifts by one), -100 on the prompt, on padding and after the first EOS."""

    input_ids: object
    attention_mask: object
    labels: object


def sample_continuations(model, prompts: list[list[int]], config: SamplingConfig, generator=None) -> SampledBatch:
    """Continue each prompt (a token-id list) by ``config.max_new_tokens`` tokens sampled from ``model`` (any
    module mapping ``[B, T]`` ids to logits ``[B, T, V]``, or to an output with ``.logits``)."""
    import torch

    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    completions: list[list[int]] = [[] for _ in prompts]
    try:
        with torch.no_grad():
            by_length: dict[int, list[int]] = {}
            for i, p in enumerate(prompts):
                by_length.setdefault(len(p), []).append(i)
            for rows in by_length.values():  # prompts of one length are sampled together, without padding
                ids = torch.tensor([prompts[i] for i in rows], dtype=torch.long, device=device)
                for _ in range(config.max_new_tokens):
                    scores = filter_logits(_logits(model, ids)[:, -1, :], config.temperature, config.top_k,
                                           config.top_p)
                    probs = scores.softmax(dim=-1)
                    token = torch.multinomial(probs.cpu(), 1, generator=generator).to(device)
                    ids = torch.cat([ids, token], dim=1)
                for i, row in zip(rows, ids[:, len(prompts[rows[0]]):].tolist()):
                    completions[i] = row
    finally:
        model.train(was_training)

    length = max(len(p) + len(c) for p, c in zip(prompts, completions))
    input_ids = torch.full((len(prompts), length), config.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), length), dtype=torch.long)
    labels = torch.full((len(prompts), length), -100, dtype=torch.long)
    for b, (prompt, completion) in enumerate(zip(prompts, completions)):
        if config.eos_token_id is not None and config.eos_token_id in completion:
            kept = completion[: completion.index(config.eos_token_id) + 1]  # the EOS itself is learned
        else:
            kept = completion
        n, m = len(prompt), len(kept)
        input_ids[b, : n + len(completion)] = torch.tensor(prompt + completion)
        attention_mask[b, : n + m] = 1
        labels[b, n : n + m] = torch.tensor(kept, dtype=torch.long)
    return SampledBatch(input_ids, attention_mask, labels)


def prompts_from_batch(input_ids, attention_mask=None, prompt_length: int = 8) -> list[list[int]]:
    """Prompts for a corpus without prompt/completion split: the first ``prompt_length`` tokens of each sequence
    (fewer when the sequence is shorter; at least one)."""
    from distill.teachers.base import sequences_from_batch

    mask = None if attention_mask is None else np.asarray(attention_mask)
    sequences = sequences_from_batch(np.asarray(input_ids), mask)
    return [s[: max(1, min(prompt_length, len(s)))] for s in sequences]


class OnPolicySampler:
    """The hook for a training loop: ``maybe_sample(step, model, input_ids, attention_mask)`` returns the batch
    to train on (``SampledBatch``) and whether it was sampled; ``None`` means "use the dataset batch"."""

    def __init__(self, fraction: float, config: SamplingConfig, *, seed: int = 0, prompt_length: int = 8) -> None:
        import torch

        if prompt_length < 1:
            raise ValueError(f"--on-policy-prompt-length {prompt_length}: must be >= 1")
        self.schedule = OnPolicySchedule(fraction, seed)
        self.config, self.prompt_length = config, prompt_length
        self.generator = torch.Generator().manual_seed(seed)
        self.sampled_steps = 0

    def maybe_sample(self, step: int, model, input_ids, attention_mask=None) -> SampledBatch | None:
        if not self.schedule.is_on_policy(step):
            return None
        self.sampled_steps += 1
        prompts = prompts_from_batch(_numpy(input_ids), None if attention_mask is None else _numpy(attention_mask),
                                     self.prompt_length)
        return sample_continuations(model, prompts, self.config, self.generator)


def _numpy(x):
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def add_on_policy_arguments(parser: argparse.ArgumentParser) -> None:
    """The on-policy flags (validated by :func:`on_policy_from_args`, which raises one-sentence ValueErrors)."""
    group = parser.add_argument_group("on-policy distillation (TRL GKD's lmbda)")
    group.add_argument("--on-policy-fraction", default="0", metavar="LAMBDA",
                       help="probability per batch that the student samples the continuation (default 0)")
    group.add_argument("--sampling-temperature", default=str(DEFAULT_TEMPERATURE), metavar="T",
                       help=f"student sampling temperature (default {DEFAULT_TEMPERATURE}, as TRL GKD)")
    group.add_argument("--sampling-top-k", default="0", metavar="K", help="top-k filter; 0 is off (default)")
    group.add_argument("--sampling-top-p", default="1.0", metavar="P", help="top-p filter; 1 is off (default)")
    group.add_argument("--max-new-tokens", default=str(DEFAULT_MAX_NEW_TOKENS), metavar="N",
                       help=f"tokens sampled per continuation (default {DEFAULT_MAX_NEW_TOKENS})")
    group.add_argument("--on-policy-prompt-length", default="8", metavar="N",
                       help="dataset tokens kept as the prompt of a sampled batch (default 8)")


def _number(flag: str, raw: str, kind: type):
    try:
        return kind(raw)
    except ValueError:
        wanted = "a whole number" if kind is int else "a number"
        raise ValueError(f"{flag} {raw!r}: expected {wanted}") from None


def on_policy_from_args(args: argparse.Namespace, *, seed: int = 0, eos_token_id: int | None = None,
                        pad_token_id: int = 0) -> OnPolicySampler:
    config = SamplingConfig(temperature=_number("--sampling-temperature", args.sampling_temperature, float),
                            top_k=_number("--sampling-top-k", args.sampling_top_k, int),
                            top_p=_number("--sampling-top-p", args.sampling_top_p, float),
                            max_new_tokens=_number("--max-new-tokens", args.max_new_tokens, int),
                            eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    fraction = _number("--on-policy-fraction", args.on_policy_fraction, float)
    return OnPolicySampler(fraction, config, seed=seed,
                           prompt_length=_number("--on-policy-prompt-length", args.on_policy_prompt_length, int))
