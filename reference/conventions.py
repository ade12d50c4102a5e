"""Other systems' KD losses, mapped onto this project's: plain numpy functions with each peer's own argument names.

Each function computes what the peer computes (its formula, its normalization, its quirks) through the
project's reference functions, so that the mapping is the code: read one to know which ``kd_loss`` call
gives the peer's number. ``tests/peers/`` checks them against the peers' own code where it installs on a
CPU (TRL, Liger under the Triton interpreter) and pins the published formula, with a citation, where it
does not. Logits are ``[..., V]``, labels ``[...]``, ``-100`` is ignored unless said otherwise.

=====================================  ==============================================================
peer                                   in this project's terms
=====================================  ==============================================================
NeMo Automodel ``KDLoss`` + recipe     ``kd_loss(alpha=1 - kd_ratio, T, normalizer=num_batch_labels)``
torchtune ``ForwardKLLoss``            ``kd_loss(alpha=0, T=1) + mean teacher entropy`` (soft CE, no T)
TRL ``generalized_jsd_loss``           ``kd_loss(alpha=0, divergence='generalized_jsd', beta, T) / T^2``
Liger ``LigerJSD``                     mean ``generalized_jsd`` over valid rows of log-prob inputs (T = 1)
Liger ``LigerKLDIVLoss``               ``nn.KLDivLoss``: ``KL(y_true || exp(y_pred))`` summed / rows
Liger fused linear distillation        ``weight_hard * CE + weight_soft * mean JSD(T)`` (no T^2)
DistillKit sparse top-k                forward KL over the top-k, student not renormalized; tail
                                       ``zero`` (can go negative) or ``uniform``
=====================================  ==============================================================
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from reference import kd
from reference.rows import log_softmax_rows


def _valid(labels: ArrayLike | None, shape: tuple[int, ...], ignore_index: int = -100) -> np.ndarray:
    if labels is None:
        return np.ones(shape, dtype=bool)
    return np.asarray(labels) != ignore_index


def nemo_automodel_kd_loss(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    labels: ArrayLike,
    *,
    kd_ratio: float,
    temperature: float = 1.0,
    ignore_index: int = -100,
    num_batch_labels: float | None = None,
) -> float:
    """NeMo Automodel's KD recipe: ``(1 - kd_ratio) * CE + kd_ratio * KDLoss``, where ``KDLoss`` is
    ``T^2 * KL(P_t || P_s)`` summed over valid tokens and divided by ``num_batch_labels`` (the valid-token
    count of the whole accumulated batch) or, when it is None, by the local valid count.
    (nemo_automodel/components/loss/kd_loss.py; CE normalized the same way by the recipe.)"""
    return float(
        kd.kd_loss(
            student_logits, teacher_logits, labels, temperature=temperature, alpha=1.0 - kd_ratio,
            ignore_index=ignore_index, normalizer=num_batch_labels,
        )
    )  # fmt: skip


def torchtune_forward_kl_loss(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    labels: ArrayLike,
    *,
    ignore_index: int = -100,
    normalize: bool = True,
) -> float:
    """torchtune ``ForwardKLLoss``: the soft cross-entropy ``-sum_v p_v log q_v`` with no temperature, summed
    over valid tokens and divided by their count when ``normalize``. It is ``KL(P_t || P_s) + H(P_t)``: not 0
    when the student equals the teacher. (torchtune/modules/loss/kd_losses.py)"""
    valid = _valid(labels, np.shape(labels), ignore_index)
    kl = np.asarray(kd.kl_divergence(student_logits, teacher_logits))
    log_p = log_softmax_rows(np.asarray(teacher_logits, dtype=np.float64), 1.0)
    entropy = -np.where(log_p > -np.inf, np.exp(log_p) * log_p, 0.0).sum(axis=-1)
    total = float(np.where(valid, kl + entropy, 0.0).sum())
    if not normalize:
        return total
    count = int(valid.sum())
    return total / count if count else 0.0


def trl_generalized_jsd_loss(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    labels: ArrayLike | None = None,
    beta: float = 0.5,
    temperature: float = 1.0,
    reduction: str = "batchmean",
    num_items_in_batch: float | None = None,
) -> float:
    """TRL ``GKDTrainer.generalized_jsd_loss``: per-token generalized JSD of ``softmax(s/T)`` and
    ``softmax(t/T)`` with TRL's endpoint branches (beta = 0 forward KL, beta = 1 reverse KL), **no T^2**,
    masked by ``labels != -100``; ``num_items_in_batch``: sum / num_items_in_batch; ``batchmean``: sum /
    #valid tokens (at least 1), or, without labels, sum / ``size(0)`` (the *batch* size, not the token count,
    for [B, S, V] inputs); ``sum``; ``mean``: over tokens *and* vocabulary entries.
    (trl/experimental/gkd/gkd_trainer.py)"""
    s = np.asarray(student_logits, dtype=np.float64)
    rows = np.asarray(kd.generalized_jsd(s, teacher_logits, temperature=temperature, beta=beta))
    valid = _valid(labels, rows.shape)
    total = float(np.where(valid, rows, 0.0).sum())
    if num_items_in_batch is not None:
        return total / float(num_items_in_batch)
    if reduction == "batchmean":
        return total / (max(int(valid.sum()), 1) if labels is not None else max(s.shape[0], 1))
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / (int(valid.sum()) * s.shape[-1])
    raise ValueError(f"reduction {reduction!r} is not one of TRL's batchmean, sum, mean")


def liger_jsd(
    log_q: ArrayLike, log_p: ArrayLike, shift_labels: ArrayLike | None = None, *, beta: float = 0.5,
    ignore_index: int = -100,
) -> float:  # fmt: skip
    """Liger ``LigerJSD(beta, ignore_index)(log_q, log_p, shift_labels)``: inputs are the student's and the
    teacher's *log-probabilities* ``[BT, V]`` (no temperature); the generalized JSD with TRL's beta convention
    summed over rows whose label is not ``ignore_index`` and divided by their count (all rows without labels).
    Log-probabilities are logits whose softmax they are, so the project's ``generalized_jsd`` applies."""
    rows = np.asarray(kd.generalized_jsd(log_q, log_p, beta=beta))
    valid = _valid(shift_labels, rows.shape, ignore_index)
    count = int(valid.sum())
    return float(np.where(valid, rows, 0.0).sum()) / count if count else 0.0


def liger_kl_div(
    y_pred: ArrayLike, y_true: ArrayLike, *, reduction: str = "batchmean", log_target: bool = False
) -> float:
    """Liger ``LigerKLDIVLoss`` (``nn.KLDivLoss`` semantics): ``y_pred`` the student's log-probabilities, ``y_true``
    the teacher's probabilities (log-probabilities with ``log_target``); ``KL(y_true || exp(y_pred))`` per row,
    ``batchmean``: summed and divided by the row count; ``sum``; ``mean``: divided by rows * V. Liger clamps
    ``log(max(y_true, eps))`` without ``log_target``; the project's value has no clamp (equal for p > eps)."""
    p = np.asarray(y_true, dtype=np.float64)
    log_p = p if log_target else np.log(np.where(p > 0, p, 1.0)) + np.where(p > 0, 0.0, -np.inf)
    rows = np.asarray(kd.kl_divergence(y_pred, log_p))
    if reduction == "batchmean":
        return float(rows.sum()) / rows.shape[0]
    if reduction == "sum":
        return float(rows.sum())
    if reduction == "mean":
        return float(rows.sum()) / np.asarray(y_pred).size
    raise ValueError(f"reduction {reduction!r} is not one of batchmean, sum, mean")


def liger_fused_linear_distillation(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    labels: ArrayLike,
    *,
    weight_hard_loss: float = 0.5,
    weight_soft_loss: float = 0.5,
    beta: float = 0.5,
    temperature: float = 1.0,
    ignore_index: int = -100,
) -> float:
    """Liger's fused linear distillation (``LigerFusedLinearJSD``, chunked_loss/fused_linear_distillation.py):
    ``weight_hard_loss * CE(s, y) + weight_soft_loss * JSD(s/T, t/T)``, CE on the untempered logits, the JSD
    per valid token, both divided by the valid count, **no T^2**. Pinned formula (the fused kernel multiplies
    the hidden states by the lm-head itself, so it is not called on logits here). In kd_loss terms:
    ``c * kd_loss(alpha = w_h / c, divergence='generalized_jsd')`` with ``c = w_h + w_s / T^2``."""
    c = weight_hard_loss + weight_soft_loss / temperature**2
    if c == 0.0:
        return 0.0
    return c * float(
        kd.kd_loss(
            student_logits, teacher_logits, labels, temperature=temperature, alpha=weight_hard_loss / c,
            divergence="generalized_jsd", beta=beta, ignore_index=ignore_index,
        )
    )  # fmt: skip


def distillkit_sparse_kl(
    student_logits: ArrayLike,
    target_logprobs: ArrayLike,
    target_ids: ArrayLike,
    *,
    missing: str = "zero",
) -> np.ndarray:
    """DistillKit's sparse top-k forward KL per row: the teacher's top-k log-probs ``l_k`` against the student's
    *unrenormalized* ``log q = log_softmax(s)`` at the same ids. ``missing='zero'``: the teacher's mass outside
    the K is dropped, ``sum_k p_k (l_k - log q_k)``, which **can be negative** (the reason for the project's
    ``tail`` mode, which adds the bucket ``P_tail (log P_tail - log Q_tail)`` and is >= 0); ``'uniform'``: the
    missing mass is spread evenly over the other V - K tokens and the KL taken over the whole vocabulary.
    (DistillKit distillkit/losses: sparse top-k with zero or uniform tail; pinned formula)"""
    s = np.asarray(student_logits, dtype=np.float64)
    lp = np.asarray(target_logprobs, dtype=np.float64)
    ids = np.asarray(target_ids)
    log_q = log_softmax_rows(s, 1.0)
    p = np.exp(lp)
    known = (p * (lp - np.take_along_axis(log_q, ids, axis=-1))).sum(axis=-1)
    if missing == "zero":
        return known
    if missing != "uniform":
        raise ValueError(f"missing must be 'zero' or 'uniform', got {missing!r}")
    others = s.shape[-1] - ids.shape[-1]
    rest = np.clip(1.0 - p.sum(axis=-1), 0.0, None)
    if others == 0:
        return known
    inside = np.zeros(s.shape, dtype=bool)
    np.put_along_axis(inside, ids, True, axis=-1)
    each = rest / others
    with np.errstate(divide="ignore", invalid="ignore"):
        tail = np.where(each > 0, each * others * np.log(each), 0.0) - each * np.where(inside, 0.0, log_q).sum(axis=-1)
    return known + tail
