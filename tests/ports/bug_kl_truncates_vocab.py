"""Bug port: kl_divergence compares the common part of two vocabularies.

When the teacher's vocabulary is wider than the student's (config-versus-checkpoint drift, 151936 vs 152064),
the extra entries are cut off instead of being refused: the loss is silently computed on the wrong
distributions. kd_loss itself still refuses the mismatch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tests.ports.good_port import GoodPort


class KLTruncatesVocab(GoodPort):
    name = "bug-kl-truncates-vocab"
    dtypes = ("float64",)  # the bug is dtype-independent: one dtype keeps the suite fast

    def kl_divergence(self, student_logits: Any, teacher_logits: Any, *, temperature: float = 1.0) -> np.ndarray:
        s = np.asarray(student_logits)
        t = np.asarray(teacher_logits)
        v = min(s.shape[-1], t.shape[-1])
        return super().kl_divergence(s[..., :v], t[..., :v], temperature=temperature)


BACKEND = KLTruncatesVocab()
