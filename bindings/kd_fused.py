"""Vocabulary of contracts/kd-fused-linear-v1.yaml: the ``kd_linear_batch`` strategy and its helpers.

* ``kd_linear_batch``: a :class:`LinearBatch` (student hidden states and LM-head weight, a teacher as logits and
  as hidden states + weight, labels, temperature, alpha);
* ``linear_logits(h, w)``: ``h @ w.T`` (the unfused student logits);
* ``linear_gradients(g, h, w)``: ``(g @ w, g.T @ h)``, the chain rule through the matmul;
* ``fused_linear_peak(kd, rows, hidden, vocab, chunk_rows)``: peak extra memory of one
  ``kd.kd_loss_from_hidden`` call, in units of one ``[rows, vocab]`` array of the dtype under test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import strategies as st

from bindings.kd_strategies import IGNORE_INDEX, _describe_array, _range

ITEMSIZE = {"float64": 8, "float32": 4, "bfloat16": 2}


@dataclass(frozen=True)
class LinearBatch:
    """Student ``hidden`` ``[..., H]`` and ``weight`` ``[V, H]``; the teacher as ``teacher_logits`` ``[..., V]``
    and as ``teacher_hidden`` ``[..., Ht]`` with ``teacher_weight`` ``[V, Ht]`` (a different teacher)."""

    hidden: np.ndarray
    weight: np.ndarray
    teacher_logits: np.ndarray
    teacher_hidden: np.ndarray
    teacher_weight: np.ndarray
    labels: np.ndarray
    temperature: float
    alpha: float

    @property
    def vocab(self) -> int:
        return int(self.weight.shape[0])

    @property
    def rows(self) -> int:
        return int(np.prod(self.labels.shape))

    @property
    def teacher_pair(self) -> tuple[np.ndarray, np.ndarray]:
        return (self.teacher_hidden, self.teacher_weight)

    def describe(self) -> str:
        return "\n".join(
            [
                f"LinearBatch(temperature={self.temperature!r}, alpha={self.alpha!r})",
                _describe_array("hidden", self.hidden),
                _describe_array("weight", self.weight),
                _describe_array("teacher_logits", self.teacher_logits),
                _describe_array("labels", self.labels),
            ]
        )


LINEAR_BATCH_FIELDS = (
    "hidden",
    "weight",
    "teacher_logits",
    "teacher_hidden",
    "teacher_weight",
    "teacher_pair",
    "labels",
    "temperature",
    "alpha",
    "vocab",
    "rows",
)


def kd_linear_batch(
    rows: Sequence[int] = (1, 40),
    hidden: Sequence[int] = (1, 12),
    vocab: Sequence[int] = (2, 48),
    ndim: Sequence[int] = (2, 3),
    temperature: float | Sequence[float] = (0.5, 4.0),
    alpha: float | Sequence[float] = (0.0, 1.0),
    ignore: float = 0.25,
) -> st.SearchStrategy[LinearBatch]:
    """Random fused-linear KD inputs; hidden states of order 1 and weights scaled so logits have std ~3."""

    @st.composite
    def build(draw: st.DrawFn) -> LinearBatch:
        n = draw(st.integers(int(rows[0]), int(rows[1])))
        h = draw(st.integers(int(hidden[0]), int(hidden[1])))
        v = draw(st.integers(int(vocab[0]), int(vocab[1])))
        nd = draw(st.sampled_from(tuple(ndim)))
        seed = draw(st.integers(0, 2**32 - 1))
        t = float(draw(_range(temperature)))
        a = float(draw(_range(alpha)))
        rng = np.random.default_rng(seed)
        lead = (n,) if nd == 2 else (max(1, n // 2), 2 if n > 1 else 1)
        ht = h + 3
        labels = rng.integers(0, v, lead)
        labels[rng.random(lead) < ignore] = IGNORE_INDEX
        return LinearBatch(
            hidden=rng.normal(0.0, 1.0, (*lead, h)),
            weight=rng.normal(0.0, 3.0 / np.sqrt(h), (v, h)),
            teacher_logits=rng.normal(0.0, 3.0, (*lead, v)),
            teacher_hidden=rng.normal(0.0, 1.0, (*lead, ht)),
            teacher_weight=rng.normal(0.0, 3.0 / np.sqrt(ht), (v, ht)),
            labels=labels.astype(np.int64),
            temperature=t,
            alpha=a,
        )

    return build()


def linear_logits(h: object, w: object) -> np.ndarray:
    """``h @ w.T``: the logits of hidden states ``h`` ``[..., H]`` under an LM head ``w`` ``[V, H]``."""
    return np.asarray(h, dtype=np.float64) @ np.asarray(w, dtype=np.float64).T


def linear_gradients(g: object, h: object, w: object) -> tuple[np.ndarray, np.ndarray]:
    """``(g @ w, g^T h)``: the gradients of hidden states and weight given the logit gradient ``g``."""
    g2 = np.asarray(g, dtype=np.float64)
    h2 = np.asarray(h, dtype=np.float64)
    flat_g = g2.reshape(-1, g2.shape[-1])
    return g2 @ np.asarray(w, dtype=np.float64), flat_g.T @ h2.reshape(-1, h2.shape[-1])


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}: peak memory is measured on Linux only")


def _return_freed_blocks() -> None:
    """Make glibc serve every block of 64 KiB or more with mmap (and so return it on free), so that the
    resident set follows live memory and a block freed before the measurement does not hide a new one."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError as error:
        raise RuntimeError(f"peak memory is measured with glibc only: {error}") from error
    m_mmap_threshold = -3
    if not libc.mallopt(m_mmap_threshold, 64 * 1024):
        raise RuntimeError("mallopt(M_MMAP_THRESHOLD) failed: peak memory cannot be measured here")


def fused_linear_peak(kd: Any, rows: int, hidden: int, vocab: int, chunk_rows: int) -> float:
    """Peak extra resident memory of one ``kd.kd_loss_from_hidden`` call with a teacher given as hidden
    states and weight, in units of one ``[rows, vocab]`` array of the dtype under test.

    Inputs are made and handed to the backend first; the process's high-water mark (``VmHWM``, reset
    through ``/proc/self/clear_refs``) is read after the call, its results still alive (Linux, glibc).
    """
    backend, dtype = kd.backend, kd.dtype
    if getattr(backend, "device", "cpu") != "cpu":
        raise RuntimeError("fused_linear_peak measures CPU memory; run it on a CPU backend")
    rng = np.random.default_rng(0)
    args = [
        backend.asarray(rng.normal(0.0, 1.0, (rows, hidden)), dtype),
        backend.asarray(rng.normal(0.0, 0.5, (vocab, hidden)), dtype),
        (backend.asarray(rng.normal(0.0, 1.0, (rows, hidden)), dtype),
         backend.asarray(rng.normal(0.0, 0.5, (vocab, hidden)), dtype)),
        backend.asarray(rng.integers(0, vocab, rows), "int64"),
    ]  # fmt: skip
    kwargs = {"temperature": 2.0, "alpha": 0.5, "chunk_rows": chunk_rows}
    _return_freed_blocks()
    warm = [args[0][:chunk_rows], args[1], (args[2][0][:chunk_rows], args[2][1]), args[3][:chunk_rows]]
    backend.kd_loss_from_hidden(*warm, **kwargs)  # warm-up on one chunk: lazy imports, first-call caches
    Path("/proc/self/clear_refs").write_text("5")
    base = _rss_kib("VmRSS")
    result = backend.kd_loss_from_hidden(*args, **kwargs)
    peak = _rss_kib("VmHWM")
    del result
    return (peak - base) * 1024 / (rows * vocab * ITEMSIZE[dtype])
