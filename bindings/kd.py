"""The KD binding: the vocabulary of the contracts in ``contracts/`` (``metadata.binding: bindings.kd``).

Names a check may use:

* ``kd``: the backend under test (per-backend checks only): ``kd.kd_loss``, ``kd.kd_logit_gradient``,
  ``kd.cross_entropy``, ``kd.kl_divergence``, ``kd.softmax``, ``kd.log_softmax``;
* ``ref``: the float64 reference (:mod:`reference.kd`), with ``ref.kd_step``;
* ``pipeline``: the distillation pipeline driven and observed as plain data (:mod:`bindings.kd_pipeline`:
  ``pipeline.run_distill``, ``pipeline.parse_smoke``, ``pipeline.callback_events``, ``pipeline.train``, ...);
* the helpers of :mod:`bindings.kd_values` (``close``, ``finite``, ``nondecreasing``, ...), and
  ``kd_loss_numeric_gradient``; a few safe builtins (``abs``, ``all``, ``any``, ``len``, ``max``, ...);
* strategies: ``kd_batch`` (a :class:`~bindings.kd_strategies.KDBatch` record), ``reduction``, ``choice``,
  ``number``;
* the divergence family's vocabulary and strategies (``div``, ``topk``, ``accumulated``, ``divergence``,
  ``topk_batch``, ``split``, ...) from :mod:`bindings.kd_family`, whose catalog also answers ``requires``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bindings import kd_family, kd_pipeline, kd_strategies, kd_values
from bindings.kd_strategies import KD_BATCH_FIELDS, STEP_CASE_FIELDS, KDBatch
from bindings.kd_subject import KD_OPS, Reference
from reference import providers
from spec.binding import Binding, Strategy


def kd_loss_numeric_gradient(
    ops: Any, batch: KDBatch, reduction: str = "mean", eps: float = 1e-6
) -> np.ndarray:
    """Central finite differences of ``ops.kd_loss`` (the backend's own loss) w.r.t. the student logits."""

    def loss(student: np.ndarray) -> np.ndarray:
        return ops.kd_loss(
            student,
            batch.teacher,
            batch.labels,
            temperature=batch.temperature,
            alpha=batch.alpha,
            reduction=reduction,
        )

    return kd_values.central_difference_gradient(loss, batch.student, eps)


def forward_of(provider: Any) -> Any:
    """A provider's forward pass as a plain callable: ``provider.logits_for_batch``."""
    return provider.logits_for_batch


_BUILTINS = {
    f.__name__: f
    for f in (
        abs,
        all,
        any,
        len,
        max,
        min,
        sum,
        zip,
        range,
        float,
        int,
        round,
        sorted,
        enumerate,
        list,
        tuple,
        isinstance,
    )
}

_HELPERS = {
    name: getattr(kd_values, name)
    for name in (
        "close",
        "finite",
        "nondecreasing",
        "increasing",
        "row_sums",
        "shift_rows",
        "along_ray",
        "valid_count",
        "ignored",
        "rows_where",
        "all_ignored",
        "zeros_like",
        "scale",
        "with_nan",
        "with_posinf",
        "with_dead_row",
        "widen_vocab",
        "with_label",
        "as_float",
        "flat",
        "total",
        "close_scaled",
        "descend",
    )
}

BINDING = Binding(
    name="bindings.kd",
    names={
        **_BUILTINS,
        **_HELPERS,
        "kd_loss_numeric_gradient": kd_loss_numeric_gradient,
        "forward_of": forward_of,
        "IGNORE_INDEX": kd_strategies.IGNORE_INDEX,
        "inf": float("inf"),
        "nan": float("nan"),
        **kd_family.NAMES,
    },
    namespaces={"ref": Reference("float64"), "providers": providers, "pipeline": kd_pipeline},
    namespace_attributes={
        "kd": KD_OPS,
        "ref": (*KD_OPS, "kd_step"),
        "providers": ("FixtureTeacher", "FixtureStudent"),
        "pipeline": kd_pipeline.ATTRIBUTES,
    },
    strategies={
        "kd_batch": Strategy(kd_strategies.kd_batch, KD_BATCH_FIELDS, "random KD inputs (a KDBatch record)"),
        "step_case": Strategy(
            kd_strategies.step_case,
            STEP_CASE_FIELDS,
            "fixture teacher and student providers with a batch (a StepCase record)",
        ),
        "reduction": Strategy(kd_strategies.reduction, (), "none, sum or mean"),
        "choice": Strategy(kd_strategies.choice, (), "one of the listed values"),
        "number": Strategy(kd_strategies.number, (), "a finite float in [low, high]"),
        **kd_family.STRATEGIES,
    },
    errors={"ValueError": ValueError},
    backends=kd_family.FamilyBackends(),
    subject_namespaces=("kd",),
)
