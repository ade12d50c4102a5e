"""The real-model pipeline's math path: next-token alignment, padding masks, vocabulary checks, the loss through
every backend, gradient accumulation, parity with a direct Hugging Face forward and with autograd of kd_loss,
determinism and resume.

The tests marked ``falsifier_id`` are the falsifiers of ``contracts/distill-models-v1.yaml`` (FT-MODELS-*): the
logits the pipeline feeds the loss are a direct forward of the same model and batch, the gradient reaching them is
autograd of kd_loss at those logits, the shift and the padding masks, accumulation over the global token count,
the vocabulary checks, determinism and resume.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers", reason="the models extra is not installed: pip install -e '.[torch,models]'")
import torch

from backends import registry
from distill.alignment import IGNORE_INDEX, next_token_labels
from distill.loss import BackendLoss, LossError
from distill.teachers.base import TeacherError, TokenBatch, check_topk, topk_from_logits
from distill.train import StepInputs, VocabAlign, VocabError, student_logits
from reference import kd as ref
from tests import distill_helpers as h

torch.set_num_threads(1)


def _batch(rows: list[list[int]], length: int) -> TokenBatch:
    ids = torch.zeros((len(rows), length), dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for b, row in enumerate(rows):
        ids[b, : len(row)] = torch.tensor(row)
        mask[b, : len(row)] = 1
    return TokenBatch(ids, mask)


# ----------------------------------------------------------------------------------------------------------
# Alignment and masks
# ----------------------------------------------------------------------------------------------------------


def test_labels_are_the_next_token_with_last_and_padding_ignored() -> None:
    batch = _batch([[5, 6, 7, 8], [9, 10]], 4)
    labels = next_token_labels(batch)
    x = IGNORE_INDEX
    assert labels.tolist() == [[6, 7, 8, x], [10, x, x, x]]


@pytest.mark.falsifier_id("FT-MODELS-003")
def test_padding_content_changes_nothing_and_gets_zero_gradient() -> None:
    """Row l is labelled with token l + 1 where that token is real, -100 elsewhere (the last real token and
    all padding); padded positions are masked: other pad ids give the same loss, and the logits rows of every
    ignored position get gradient exactly 0, while every labelled row gets some."""
    t = h.trainer()
    rows = [list(range(1, 15)), list(range(20, 27))]
    a = _batch(rows, 14)
    x = IGNORE_INDEX
    assert t.step_inputs(a).labels.tolist() == [[*range(2, 15), x], [*range(21, 27), *[x] * 8]]
    b = TokenBatch(torch.where(a.attention_mask == 1, a.input_ids, torch.full_like(a.input_ids, 777)), a.attention_mask)
    losses, grads = [], []
    for batch in (a, b):
        inputs = t.step_inputs(batch)
        inputs.student.retain_grad()
        loss = t.micro_loss(inputs, 10.0)
        loss.backward()
        losses.append(float(loss.detach()))
        grads.append(inputs.student.grad)
        t.student.zero_grad()
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    ignored = next_token_labels(a) == IGNORE_INDEX
    assert torch.count_nonzero(grads[0][ignored]) == 0
    assert bool((grads[0][~ignored].abs().sum(-1) > 0).all()), "every labelled row reaches the loss"


# ----------------------------------------------------------------------------------------------------------
# Parity (FT-MODELS-LOGITS, FT-MODELS-GRAD)
# ----------------------------------------------------------------------------------------------------------


def _recorded_step(t, batch: TokenBatch) -> tuple[StepInputs, float]:
    """Run a real optimizer step on ``batch`` and return what reached the loss (logits keep their grad)."""
    seen: list[tuple[StepInputs, float]] = []
    original = t.micro_loss

    def spy(inputs: StepInputs, normalizer: float) -> torch.Tensor:
        inputs.student.retain_grad()
        seen.append((inputs, normalizer))
        return original(inputs, normalizer)

    t.micro_loss = spy
    t.train_step([batch])
    assert len(seen) == 1
    return seen[0]


@pytest.mark.falsifier_id("FT-MODELS-001")
@pytest.mark.parametrize("name", h.ARCHITECTURES)
def test_logits_fed_to_the_loss_equal_a_direct_hf_forward(name: str) -> None:
    """FT-MODELS-LOGITS: same model, same batch, float32, unshifted, 1e-6."""
    student = h.model(name, seed=0)
    t = h.trainer(student, h.model(name, seed=1))
    batch = next(iter(t.chunks.batches(4, seed=0, epoch=1)))
    with torch.no_grad():
        direct = student(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        teacher_direct = t.teacher.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    inputs, _ = _recorded_step(t, batch)
    assert inputs.student.dtype == torch.float32 and direct.dtype == torch.float32
    assert inputs.student.shape == (*batch.shape, 1024)
    torch.testing.assert_close(inputs.student.detach(), direct, rtol=0, atol=1e-6)
    torch.testing.assert_close(inputs.teacher, teacher_direct, rtol=0, atol=1e-6)
    # Row l is paired with token l + 1 where that token is real; nothing else counts.
    expected = torch.full_like(batch.input_ids, IGNORE_INDEX)
    for b in range(batch.shape[0]):
        real = int(batch.attention_mask[b].sum())
        expected[b, : real - 1] = batch.input_ids[b, 1:real]
    torch.testing.assert_close(inputs.labels, expected, rtol=0, atol=0)


@pytest.mark.falsifier_id("FT-MODELS-002")
@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_gradient_reaching_the_logits_is_autograd_of_kd_loss(backend: str) -> None:
    """FT-MODELS-GRAD: d(step loss)/d(logits) in a real step = autograd of the KD loss formula at those logits,
    summed over valid rows and divided by the step's valid-token count; also = reference.kd_logit_gradient."""
    t = h.trainer(backend=backend, temperature=2.0, alpha=0.3)
    batch = next(iter(t.chunks.batches(4, seed=0, epoch=1)))
    inputs, normalizer = _recorded_step(t, batch)
    s = inputs.student.detach().double().requires_grad_(True)
    teacher = inputs.teacher.double()
    y = inputs.labels
    valid = y != IGNORE_INDEX
    temperature, alpha = 2.0, 0.3
    ce = torch.nn.functional.cross_entropy(s.flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX, reduction="none")
    p_log = torch.log_softmax(teacher / temperature, -1)
    kl = (p_log.exp() * (p_log - torch.log_softmax(s / temperature, -1))).sum(-1).flatten()
    rows = alpha * ce + (1 - alpha) * temperature**2 * kl
    loss = (rows * valid.flatten()).sum() / normalizer
    (autograd,) = torch.autograd.grad(loss, s)
    assert normalizer == int(valid.sum())
    got = inputs.student.grad.double()
    torch.testing.assert_close(got, autograd, rtol=0, atol=1e-6 / normalizer)
    oracle = ref.kd_logit_gradient(
        s.detach().numpy(), teacher.numpy(), y.numpy(), temperature=temperature, alpha=alpha, reduction="sum"
    ) / normalizer
    np.testing.assert_allclose(got.numpy(), oracle, rtol=0, atol=1e-6 / normalizer)


@pytest.mark.falsifier_id("FT-MODELS-004")
def test_accumulation_is_normalized_by_the_global_token_count() -> None:
    """Two micro-batches of different padding give the parameter gradient of the one concatenated batch (float64,
    1e-10), and a real optimizer step over them (its own normalizer, AdamW, clipping) lands on the parameters of
    the step over the concatenated batch."""
    torch.manual_seed(0)
    t = h.trainer(h.model(seed=0).double(), h.model(seed=1).double(), alpha=0.5)
    one, two = _batch([list(range(3, 20))], 17), _batch([list(range(30, 36)), list(range(40, 52))], 12)
    both = _batch([list(range(3, 20)), list(range(30, 36)), list(range(40, 52))], 17)
    labels = [next_token_labels(b) for b in (one, two)]
    normalizer = float(sum(int((y != IGNORE_INDEX).sum()) for y in labels))
    for micro in (one, two):
        t.micro_loss(t.step_inputs(micro), normalizer).backward()
    accumulated = [p.grad.clone() for p in t.student.parameters()]
    t.student.zero_grad()
    whole = t.step_inputs(both)
    t.micro_loss(whole, float(int((whole.labels != IGNORE_INDEX).sum()))).backward()
    for a, b in zip(accumulated, (p.grad for p in t.student.parameters())):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    t.student.zero_grad()
    steps = [h.trainer(h.model(seed=0).double(), h.model(seed=1).double(), alpha=0.5) for _ in range(2)]
    records = [steps[0].train_step([one, two]), steps[1].train_step([both])]
    assert records[0]["tokens"] == records[1]["tokens"] == normalizer
    assert records[0]["loss"] == pytest.approx(records[1]["loss"], rel=1e-12)
    for a, b in zip(steps[0].student.parameters(), steps[1].student.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_every_backend_gives_the_same_step() -> None:
    grads = {}
    for name in ("torch", "numpy"):
        t = h.trainer(backend=name)
        batch = next(iter(t.chunks.batches(4, seed=0, epoch=1)))
        inputs, _ = _recorded_step(t, batch)
        grads[name] = inputs.student.grad
    torch.testing.assert_close(grads["torch"], grads["numpy"], rtol=0, atol=1e-7)


def test_topk_teacher_needs_the_backend_member() -> None:
    """No local top-k math: a backend without topk_divergence is refused by name."""
    backend = registry.get("numpy")
    if callable(getattr(backend, "topk_divergence", None)) and callable(
        getattr(backend, "topk_divergence_gradient", None)
    ):
        pytest.skip("not implemented: this numpy backend has topk_divergence; the refusal is not reachable")
    loss = BackendLoss(backend, temperature=1.0, alpha=0.5)
    s = torch.randn(1, 3, 8, requires_grad=True)
    logprobs, ids = topk_from_logits(torch.randn(1, 3, 8), 4)
    with pytest.raises(LossError, match="does not implement topk_divergence"):
        loss.topk(s, logprobs, ids, torch.tensor([[1, 2, IGNORE_INDEX]]), 2.0)


# ----------------------------------------------------------------------------------------------------------
# Vocabulary and teacher answers
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.falsifier_id("FT-MODELS-005")
def test_vocab_mismatch_names_both_sizes() -> None:
    with pytest.raises(VocabError, match=r"1100 tokens but the student's has 1024"):
        h.trainer(h.model(seed=0), h.model(seed=1, vocab_size=1100))
    with pytest.raises(VocabError, match=r"\(1000\) is smaller than the student's \(1024\)"):
        VocabAlign(1000, 1024, "truncate")


@pytest.mark.falsifier_id("FT-MODELS-009")
def test_truncate_reports_the_dropped_teacher_mass() -> None:
    from distill.teachers.hf import HFTeacher
    from distill.train import TrainConfig, Trainer

    teacher_model = h.model(seed=1, vocab_size=1100)
    t = Trainer(h.model(seed=0), HFTeacher(teacher_model), h.chunks(), TrainConfig(batch_size=4, steps_per_epoch=2),
                registry.get("torch"), vocab_align="truncate", log_every=0, progress_bar=False)
    batch = next(iter(t.chunks.batches(4, seed=0, epoch=1)))
    inputs = t.step_inputs(batch)
    full = teacher_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.detach()
    torch.testing.assert_close(inputs.teacher, full[..., :1024], rtol=0, atol=0)
    expected = torch.softmax(full, -1)[..., 1024:].sum(-1)
    torch.testing.assert_close(inputs.dropped_mass, expected, rtol=1e-5, atol=1e-7)
    record = t.train_step([batch])
    assert 0 < record["teacher_mass_dropped"] < 1


def test_teacher_keeps_its_own_dtype() -> None:
    """A bfloat16 teacher's logits reach the loss in bfloat16 (the backend widens them, not the pipeline)."""
    t = h.trainer(h.model(seed=0), h.model(seed=1).to(torch.bfloat16))
    batch = next(iter(t.chunks.batches(4, seed=0, epoch=1)))
    inputs = t.step_inputs(batch)
    assert inputs.teacher.dtype == torch.bfloat16 and inputs.student.dtype == torch.float32
    record = t.train_step([batch])
    assert record["loss"] > 0 and record["kl"] > 0


def test_topk_answers_are_checked() -> None:
    batch = _batch([[1, 2, 3]], 3)
    logprobs, ids = topk_from_logits(torch.randn(1, 3, 16), 4)
    check_topk("t", batch, logprobs, ids, 16, 4)
    with pytest.raises(TeacherError, match="repeated token id"):
        check_topk("t", batch, logprobs, ids[..., [0, 0, 1, 2]], 16, 4)
    with pytest.raises(TeacherError, match=r"outside \[0, 8\)"):
        check_topk("t", batch, logprobs, ids, 8, 4)
    with pytest.raises(TeacherError, match="shape"):
        check_topk("t", batch, logprobs[..., :3], ids[..., :3], 16, 4)


def test_plain_module_students_work() -> None:
    """Any nn.Module returning logits trains: a bigram embedding table."""

    class Bigram(torch.nn.Module):
        vocab_size = 1024

        def __init__(self) -> None:
            super().__init__()
            self.table = torch.nn.Embedding(1024, 1024)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.table(input_ids)

    student = Bigram()
    batch = _batch([[1, 2, 3]], 3)
    assert student_logits(student, batch).shape == (1, 3, 1024)
    t = h.trainer(student, alpha=1.0)
    before = student.table.weight.detach().clone()
    t.train_step([batch])
    assert not torch.equal(before, student.table.weight)


# ----------------------------------------------------------------------------------------------------------
# Determinism and resume
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.falsifier_id("FT-MODELS-006")
def test_same_seed_same_weights_and_resume_continues_exactly(tmp_path) -> None:
    """Two runs with one seed end with equal weights; a run interrupted after its step-2 checkpoint and
    resumed ends with the same weights as the uninterrupted one."""
    reference = h.trainer(output_dir=tmp_path / "a", checkpoint_every=2)
    reference.run()
    again = h.trainer(output_dir=tmp_path / "b", checkpoint_every=2)
    calls = 0
    original = again.train_step

    def interrupted(micro, step):
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt
        return original(micro, step)

    again.train_step = interrupted
    with pytest.raises(KeyboardInterrupt):
        again.run()
    resumed = h.trainer(output_dir=tmp_path / "b", checkpoint_every=2)
    result = resumed.run(resume=True)
    assert result.start_step == 2 and [r["step"] for r in result.records] == [1, 2, 3, 4]
    for a, b in zip(reference.student.state_dict().values(), resumed.student.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4


class _TopKTorchBackend:
    """The torch backend plus a stand-in ``topk_divergence`` (renormalized top-k forward KL, written here as a
    test double) and its autograd gradient: it checks the pipeline's composition of CE, T^2, masks and the
    normalizer around whatever a backend's top-k member computes, not the top-k math itself."""

    def __init__(self) -> None:
        self._torch = registry.get("torch")
        self.name, self.device, self.dtypes = "topk-double", "cpu", self._torch.dtypes

    def __getattr__(self, name: str):
        return getattr(self._torch, name)

    @staticmethod
    def _rows(s, logprobs, ids, temperature):
        log_q = torch.log_softmax(s / temperature, -1).gather(-1, ids)
        log_p = torch.log_softmax(logprobs / temperature, -1)
        return (log_p.exp() * (log_p - log_q)).sum(-1)

    def topk_divergence(self, s, logprobs, ids, *, mode, divergence, temperature, beta=None):
        assert mode == "tail" and divergence == "forward_kl"
        return self._rows(s.double(), logprobs.double(), ids, temperature)

    def topk_divergence_gradient(self, s, logprobs, ids, *, mode, divergence, temperature, beta=None):
        with torch.enable_grad():
            x = s.detach().double().requires_grad_(True)
            (g,) = torch.autograd.grad(self._rows(x, logprobs.double(), ids, temperature).sum(), x)
        return g


def test_topk_teacher_loss_composes_ce_temperature_masks_and_normalizer() -> None:
    backend = _TopKTorchBackend()
    loss = BackendLoss(backend, temperature=2.0, alpha=0.25)
    s = torch.randn(2, 4, 16, dtype=torch.float64, requires_grad=True)
    logprobs, ids = topk_from_logits(torch.randn(2, 4, 16), 5)
    y = torch.tensor([[1, 2, 3, IGNORE_INDEX], [4, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]])
    value = loss.topk(s, logprobs.double(), ids, y, 7.0)
    (got,) = torch.autograd.grad(value, s)
    x = s.detach().clone().requires_grad_(True)
    valid = (y != IGNORE_INDEX).double()
    ce = torch.nn.functional.cross_entropy(x.flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    kd = (backend._rows(x, logprobs.double(), ids, 2.0) * valid).sum()
    expected = (0.25 * ce + 0.75 * 4.0 * kd) / 7.0
    (want,) = torch.autograd.grad(expected, x)
    assert float(value.detach()) == pytest.approx(float(expected.detach()), abs=1e-12)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_trainer_takes_a_topk_teacher_through_the_backend_member() -> None:
    """A top-k teacher (here the top 8 of a dense one) trains the student through the backend's top-k members;
    its answers are checked on the way."""
    from distill.teachers.hf import HFTeacher
    from distill.train import TrainConfig, Trainer

    dense = HFTeacher(h.model(seed=1))

    class TopK:
        kind, vocab_size, top_k, fingerprint, name = "topk", dense.vocab_size, 8, "test", "top8"

        def topk(self, batch: TokenBatch):
            return topk_from_logits(dense.logits(batch), self.top_k)

    t = Trainer(h.model(seed=0), TopK(), h.chunks(), TrainConfig(batch_size=4, steps_per_epoch=2),
                _TopKTorchBackend(), log_every=0, progress_bar=False)
    batch = next(iter(t.chunks.batches(4, seed=0, epoch=1)))
    before = [p.detach().clone() for p in t.student.parameters()]
    record = t.train_step([batch])
    assert record["loss"] > 0 and record["kl"] is None
    assert any(not torch.equal(a, b) for a, b in zip(before, t.student.parameters()))

    class Repeating(TopK):
        def topk(self, batch: TokenBatch):
            logprobs, ids = super().topk(batch)
            return logprobs, torch.zeros_like(ids)  # every slot names token 0

    t.teacher = Repeating()
    with pytest.raises(TeacherError, match="repeated token id"):
        t.train_step([batch])
