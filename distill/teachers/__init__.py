"""Teachers of the real-model pipeline: the interface (:mod:`distill.teachers.base`) and implementations."""

from distill.teachers.base import (
    DenseTeacher,
    TeacherError,
    TokenBatch,
    TopK,
    TopKTeacher,
    check_dense,
    check_topk,
    fingerprint_of,
    topk_from_logits,
)

__all__ = [
    "DenseTeacher",
    "TeacherError",
    "TokenBatch",
    "TopK",
    "TopKTeacher",
    "check_dense",
    "check_topk",
    "fingerprint_of",
    "topk_from_logits",
]
