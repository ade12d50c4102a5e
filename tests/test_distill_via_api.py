"""Distill through the API end to end: a tiny student learns from the local teacher server's top-k answers,
mixing dataset and on-policy batches, with the teacher cache in between."""

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("fastapi")

from distill.on_policy import OnPolicySampler, SamplingConfig  # noqa: E402
from distill.teacher_cache import CachedTeacher, TeacherCache  # noqa: E402
from distill.teacher_server import ScoringModel, create_app, load_model, running_server  # noqa: E402
from distill.teachers.api import APITeacher  # noqa: E402
from distill.teachers.tokens import ByteVocab  # noqa: E402

CONFIG = Path(__file__).parent / "data" / "teacher_tiny_llama.json"
K = 8
TEXT = (b"Knowledge distillation trains a small student to match a large teacher. The teacher's top-k "
        b"log-probabilities are served over HTTP, cached on disk, and replayed; ")


def topk_forward_kl(student_logits, topk, labels_mask):
    """KL(teacher || student) over the teacher's top-k, renormalized, per row; mean over masked rows.
    (A test-local loss: the project's loss is reference.kd.topk_divergence.)"""
    logprobs = torch.as_tensor(topk.logprobs)
    ids = torch.as_tensor(topk.ids)
    teacher = torch.log_softmax(logprobs, dim=-1)  # renormalize the top-k
    student = torch.log_softmax(student_logits, dim=-1).gather(-1, ids)
    student = student - torch.logsumexp(student, dim=-1, keepdim=True)
    rows = (teacher.exp() * (teacher - student)).sum(-1)
    return (rows * labels_mask).sum() / labels_mask.sum()


def test_student_distilled_through_the_api_moves_towards_the_teacher(tmp_path):
    torch.manual_seed(0)
    teacher_model, student = load_model(str(CONFIG), seed=0), load_model(str(CONFIG), seed=1)
    with torch.no_grad():  # a confident teacher: a random init's next-token distributions are near uniform
        teacher_model.lm_head.weight.mul_(40)
    vocab = ByteVocab(teacher_model.config.vocab_size)
    data = torch.tensor(list(TEXT[: 4 * 24])).view(4, 24)
    sampler = OnPolicySampler(0.5, SamplingConfig(max_new_tokens=8), seed=0, prompt_length=8)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-2)
    with running_server(create_app(ScoringModel(teacher_model, vocab))) as url:
        api = APITeacher(url, vocab, k=K, concurrency=4)
        api.check_tokenizer()
        teacher = CachedTeacher(TeacherCache(tmp_path, api.fingerprint, K), api)

        def data_kl():
            topk = teacher.score_batch(data.numpy())
            with torch.no_grad():
                return float(topk_forward_kl(student(data).logits, topk, torch.ones(4, 24).index_fill(1,
                                                                                     torch.tensor([23]), 0)))

        before = data_kl()
        on_policy_steps = 0
        for step in range(25):
            sampled = sampler.maybe_sample(step, student, data)
            if sampled is None:
                ids, mask = data, torch.ones_like(data)
                rows = torch.ones_like(data, dtype=torch.float32)
            else:
                on_policy_steps += 1
                ids, mask = sampled.input_ids, sampled.attention_mask
                # Row j predicts token j+1: learn on the rows whose next token is a sampled label.
                rows = torch.zeros_like(ids, dtype=torch.float32)
                rows[:, :-1] = (sampled.labels[:, 1:] != -100).float()
            rows[:, -1] = 0  # the last row has no next token
            topk = teacher.score_batch(ids.numpy(), mask.numpy())
            loss = topk_forward_kl(student(ids).logits, topk, rows)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        after = data_kl()
    assert 0 < on_policy_steps < 25
    assert after < 0.5 * before, (before, after)
    # The dataset batch was scored once and replayed from the cache afterwards.
    assert teacher.stats.hits >= 4 * (25 - on_policy_steps + 1)
    assert np.isfinite([before, after]).all()
