"""On-policy sampling: the per-batch decision's law, TRL's sampling filters, and the sampled batch's masks."""

import argparse
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from distill.on_policy import (  # noqa: E402
    OnPolicySampler,
    OnPolicySchedule,
    SamplingConfig,
    add_on_policy_arguments,
    filter_logits,
    on_policy_from_args,
    sample_continuations,
)


def hoeffding(n: int, delta: float = 1e-6) -> float:
    """|share - LAMBDA| <= this with probability >= 1 - delta for n independent decisions."""
    return math.sqrt(math.log(2 / delta) / (2 * n))


@pytest.mark.falsifier_id("F-API-ONPOLICY-001")
@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.5, 0.9])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_share_of_on_policy_batches_is_within_a_binomial_bound(fraction, seed):
    n = 4000
    share = np.mean([OnPolicySchedule(fraction, seed).is_on_policy(s) for s in range(n)])
    assert abs(share - fraction) <= hoeffding(n), (share, fraction, hoeffding(n))


@pytest.mark.falsifier_id("F-API-ONPOLICY-002")
@pytest.mark.parametrize("seed", range(5))
def test_lambda_zero_never_samples_and_one_always_does(seed):
    assert not any(OnPolicySchedule(0.0, seed).is_on_policy(s) for s in range(3000))
    assert all(OnPolicySchedule(1.0, seed).is_on_policy(s) for s in range(3000))


def test_decisions_are_a_function_of_seed_and_step():
    a, b = OnPolicySchedule(0.5, 7), OnPolicySchedule(0.5, 7)
    forward = [a.is_on_policy(s) for s in range(200)]
    assert [b.is_on_policy(s) for s in reversed(range(200))][::-1] == forward  # order-free: resumable
    assert forward != [OnPolicySchedule(0.5, 8).is_on_policy(s) for s in range(200)]
    # Consecutive steps are not correlated (a lag-1 check of the stream).
    u = np.array([a.uniform(s) for s in range(4000)])
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 5 / math.sqrt(4000)


@pytest.mark.parametrize("temperature, top_k, top_p", [(0.9, 0, 1.0), (1.0, 5, 1.0), (0.7, 0, 0.8), (1.3, 10, 0.5),
                                                      (2.0, 1, 0.9), (0.5, 50, 0.05)])
def test_filters_match_hugging_face_generate(temperature, top_k, top_p):
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 40, generator=generator) * 3
    expected = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_k > 0:
        expected = TopKLogitsWarper(top_k)(None, expected)
    if top_p < 1.0:
        expected = TopPLogitsWarper(top_p)(None, expected)
    got = filter_logits(logits, temperature, top_k, top_p)
    assert torch.equal(torch.isinf(got), torch.isinf(expected))
    torch.testing.assert_close(got[~torch.isinf(got)], expected[~torch.isinf(expected)], rtol=0, atol=0)


class Bigram(torch.nn.Module):
    """logits[b, t] = table[ids[b, t]]: the next-token distribution depends on the last token only."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(torch.as_tensor(table, dtype=torch.float32))
        self.calls = 0

    def forward(self, ids):
        self.calls += 1
        return self.table[ids]


def test_sampled_tokens_follow_the_filtered_distribution():
    table = torch.randn(12, 12, generator=torch.Generator().manual_seed(3)) * 2
    model = Bigram(table)
    config = SamplingConfig(temperature=0.8, top_k=6, top_p=0.9, max_new_tokens=1)
    n = 6000
    batch = sample_continuations(model, [[4]] * n, config, torch.Generator().manual_seed(0))
    counts = np.bincount(batch.input_ids[:, 1].numpy(), minlength=12)
    expected = filter_logits(table[4], 0.8, 6, 0.9).softmax(-1).numpy()
    assert counts[expected == 0].sum() == 0  # filtered tokens are never drawn
    assert np.abs(counts / n - expected).max() <= hoeffding(n)


def test_top_k_one_is_greedy_and_a_seed_repeats():
    model = Bigram(torch.randn(9, 9, generator=torch.Generator().manual_seed(1)))
    greedy = sample_continuations(model, [[1, 2], [3, 4, 5]], SamplingConfig(top_k=1, max_new_tokens=5))
    for b, prompt_len in ((0, 2), (1, 3)):
        ids = greedy.input_ids[b, : prompt_len + 5].tolist()
        for t in range(prompt_len, prompt_len + 5):
            assert ids[t] == int(model.table[ids[t - 1]].argmax())
    config = SamplingConfig(temperature=1.5, max_new_tokens=6)
    one = sample_continuations(model, [[1], [2, 3]], config, torch.Generator().manual_seed(5))
    two = sample_continuations(model, [[1], [2, 3]], config, torch.Generator().manual_seed(5))
    assert torch.equal(one.input_ids, two.input_ids)


def test_masks_follow_trl_prompt_padding_and_eos():
    eos = 7
    table = torch.full((9, 9), -30.0)
    table[:, 2] = 0.0  # every token is followed by 2 ...
    table[2, 2], table[2, eos] = -30.0, 0.0  # ... except 2, which is followed by EOS
    model = Bigram(table)
    model.train()
    batch = sample_continuations(model, [[5, 6, 5], [1]], SamplingConfig(max_new_tokens=4, eos_token_id=eos,
                                                                          pad_token_id=0))
    assert model.training  # the mode is restored after sampling
    assert batch.input_ids.tolist()[1][:3] == [1, 2, eos]
    assert batch.input_ids.shape == (2, 7)
    # sequence 0: prompt 5 6 5, then 2 EOS (then two more tokens, masked)
    assert batch.input_ids[0, :5].tolist() == [5, 6, 5, 2, eos]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0, 0]]
    assert batch.labels.tolist() == [[-100, -100, -100, 2, eos, -100, -100], [-100, 2, eos, -100, -100, -100, -100]]


@pytest.mark.falsifier_id("F-API-ONPOLICY-004")
@pytest.mark.parametrize("fraction, expect_calls", [(0.0, False), (1.0, True)])
def test_sampler_hook_never_or_always_calls_the_student(fraction, expect_calls):
    model = Bigram(torch.randn(10, 10))
    sampler = OnPolicySampler(fraction, SamplingConfig(max_new_tokens=2), seed=0, prompt_length=3)
    ids, mask = torch.randint(0, 10, (4, 6)), torch.ones(4, 6, dtype=torch.long)
    results = [sampler.maybe_sample(step, model, ids, mask) for step in range(50)]
    assert (model.calls > 0) is expect_calls and sampler.sampled_steps == (50 if expect_calls else 0)
    if expect_calls:
        assert results[0].input_ids.shape == (4, 5) and torch.equal(results[0].input_ids[:, :3], ids[:, :3])
    else:
        assert all(r is None for r in results)


@pytest.mark.parametrize("argv, message", [
    (["--on-policy-fraction", "1.5"], "--on-policy-fraction 1.5: must be in [0, 1]"),
    (["--on-policy-fraction", "half"], "--on-policy-fraction 'half': expected a number"),
    (["--on-policy-fraction", "nan"], "--on-policy-fraction nan: must be in [0, 1]"),
    (["--sampling-temperature", "0"], "--sampling-temperature 0.0: must be > 0"),
    (["--sampling-top-k", "-1"], "--sampling-top-k -1: must be >= 0"),
    (["--sampling-top-p", "0"], "--sampling-top-p 0.0: must be in (0, 1]"),
    (["--max-new-tokens", "2.5"], "--max-new-tokens '2.5': expected a whole number"),
    (["--on-policy-prompt-length", "0"], "--on-policy-prompt-length 0: must be >= 1"),
])
def test_bad_flags_are_one_sentence(argv, message):
    parser = argparse.ArgumentParser()
    add_on_policy_arguments(parser)
    with pytest.raises(ValueError) as caught:
        on_policy_from_args(parser.parse_args(argv))
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_defaults_are_trl_gkd():
    parser = argparse.ArgumentParser()
    add_on_policy_arguments(parser)
    sampler = on_policy_from_args(parser.parse_args([]))
    assert sampler.schedule.fraction == 0.0
    assert (sampler.config.temperature, sampler.config.top_k, sampler.config.top_p) == (0.9, 0, 1.0)


def test_on_policy_batch_scored_by_the_api_teacher():
    """The whole on-policy path on real models: a tiny HF student samples, the local server's teacher scores."""
    from pathlib import Path

    from distill.teacher_server import ScoringModel, create_app, load_model, running_server
    from distill.teachers.api import APITeacher
    from distill.teachers.base import sequence_topk
    from distill.teachers.tokens import ByteVocab

    config = Path(__file__).parent / "data" / "teacher_tiny_llama.json"
    teacher_model, student = load_model(str(config), seed=0), load_model(str(config), seed=1)
    vocab = ByteVocab(teacher_model.config.vocab_size)
    sampler = OnPolicySampler(1.0, SamplingConfig(max_new_tokens=6), seed=0, prompt_length=4)
    ids = torch.tensor([list(b"hello there!"), list(b"distill this")])
    batch = sampler.maybe_sample(0, student, ids, torch.ones_like(ids))
    with running_server(create_app(ScoringModel(teacher_model, vocab))) as url:
        topk = APITeacher(url, vocab, k=5).score_batch(batch.input_ids.numpy(), batch.attention_mask.numpy())
    for b in range(2):
        with torch.no_grad():
            expected = sequence_topk(teacher_model(batch.input_ids[b : b + 1]).logits[0], 5)
        np.testing.assert_allclose(topk.logprobs[b, :9], expected.logprobs, atol=1e-5)


@pytest.mark.falsifier_id("F-API-ONPOLICY-003")
@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_trainer_lambda_zero_never_samples_and_one_always_does(fraction):
    """In the training loop: LAMBDA = 0 trains on every dataset batch, LAMBDA = 1 on student samples only, whose
    rows learn exactly the sampled tokens (batch x max_new_tokens of them, the prompt masked)."""
    from distill.alignment import next_token_labels
    from tests import distill_helpers as h

    t = h.trainer(batch_size=2, steps_per_epoch=3, alpha=0.5, temperature=1.0)
    t.on_policy = OnPolicySampler(fraction, SamplingConfig(max_new_tokens=5), seed=0, prompt_length=4)
    seen = []
    original = t.micro_loss

    def spy(inputs, normalizer):
        seen.append(inputs)
        return original(inputs, normalizer)

    t.micro_loss = spy
    written_ids = []
    step_inputs = t.step_inputs

    def spy_inputs(batch, labels=None):
        written_ids.append(batch.input_ids)
        return step_inputs(batch, labels)

    t.step_inputs = spy_inputs
    stream = t.chunks.batches(2, seed=0, epoch=1)
    batches = [next(stream) for _ in range(6)]
    records = [t.train_step([batch], step) for step, batch in enumerate(batches)]
    assert [r["on_policy"] for r in records] == [fraction == 1.0] * 6
    assert t.on_policy.sampled_steps == (6 if fraction == 1.0 else 0)
    for inputs, record, batch in zip(seen, records, batches):
        valid = int((inputs.labels != -100).sum())
        assert record["tokens"] == valid
        if fraction == 1.0:  # 4 prompt tokens, then 5 sampled ones: rows 3..7 learn tokens 4..8
            assert valid == 2 * 5 and inputs.student.shape[1] == 4 + 5
            assert torch.equal(inputs.labels[:, 3:8], written_ids.pop(0)[:, 4:9])
        else:
            assert torch.equal(inputs.labels, next_token_labels(batch))
