"""The KD binding: the vocabulary of the contracts in ``contracts/`` (``metadata.binding: bindings.kd``).

Names a check may use:

* ``kd``: the backend under test (per-backend checks only): ``kd.kd_loss``, ``kd.kd_logit_gradient``,
  ``kd.cross_entropy``, ``kd.kl_divergence``, ``kd.softmax``, ``kd.log_softmax``;
* ``ref``: the float64 reference (:mod:`reference.kd`), with ``ref.kd_step``;
* ``pipeline``: the distillation pipeline driven and observed as plain data (:mod:`bindings.kd_pipeline`:
  ``pipeline.run_distill``, ``pipeline.parse_smoke``, ``pipeline.callback_events``, ``pipeline.step_update``, ...);
* ``distributed``: multi-process runs of :mod:`distill.distributed` beside the one-process oracle
  (:mod:`bindings.kd_distributed`: ``distributed.data_parallel``, ``distributed.pipeline``,
  ``distributed.kill_rank``);
* the helpers of :mod:`bindings.kd_values` (``close``, ``finite``, ``nondecreasing``, ...), and
  ``kd_loss_numeric_gradient``; a few safe builtins (``abs``, ``all``, ``any``, ``len``, ``max``, ...);
* ``block_softmax_sums(kd, tol)``, ``block_last_row(kd, op, tol)``: laws on fixed batches whose shapes cross
  kernel block sizes (1025 and 4097 rows, V > 4096, V = 1);
* ``not_the_reference(kd)``: true, or a skip reported as a self-comparison when the backend is the reference
  itself (the first ``let`` of a parity check);
* strategies: ``kd_batch`` (a :class:`~bindings.kd_strategies.KDBatch` record), ``reduction``, ``choice``,
  ``number``;
* the divergence family's vocabulary and strategies (``div``, ``topk``, ``accumulated``, ``divergence``,
  ``topk_batch``, ``split``, ...) from :mod:`bindings.kd_family`, whose catalog also answers ``requires``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bindings import kd_distributed, kd_family, kd_fused, kd_pipeline, kd_strategies, kd_values
from bindings.kd_strategies import KD_BATCH_FIELDS, STEP_CASE_FIELDS, KDBatch
from bindings.kd_subject import KD_OPS, Reference, not_the_reference, round_to
from reference import providers
from spec.binding import Binding, Strategy

NUMERIC_GRADIENT_STEP = {"float64": 1e-6, "float32": 2.0**-6}
"""Central-difference step per dtype: float32 (24 bits) needs a step large enough that rounding the loss
(~1e-7 relative) stays small beside it."""


def kd_loss_numeric_gradient(ops: Any, batch: KDBatch, reduction: str = "mean", eps: float | None = None) -> np.ndarray:
    """Central finite differences of ``ops.kd_loss`` (the backend's own loss) w.r.t. the student logits, taken
    on the student logits rounded to the backend's dtype, with the step of :data:`NUMERIC_GRADIENT_STEP`."""
    dtype = getattr(ops, "dtype", "float64")
    step = eps if eps is not None else NUMERIC_GRADIENT_STEP.get(dtype, 1e-6)

    def loss(student: np.ndarray) -> np.ndarray:
        return ops.kd_loss(
            student,
            batch.teacher,
            batch.labels,
            temperature=batch.temperature,
            alpha=batch.alpha,
            reduction=reduction,
        )

    return kd_values.central_difference_gradient(loss, round_to(batch.student, dtype), step)


def block_softmax_sums(ops: Any, tol: float) -> object:
    """Rows of ``ops.softmax`` sum to 1 on every batch of :func:`~bindings.kd_strategies.block_batches`."""
    return kd_values.each(
        [
            kd_values.close(
                kd_values.row_sums(ops.softmax(x.student, temperature=x.temperature)), np.ones(x.labels.shape), tol
            )
            for x in kd_strategies.block_batches()
        ]
    )


def block_last_row(ops: Any, op: str, tol: float) -> object:
    """On every batch of :func:`~bindings.kd_strategies.block_batches`, the last row of ``ops.<op>``
    (``kd_loss`` or ``kd_logit_gradient``, reduction none) equals that row computed alone."""
    fn = getattr(ops, op)

    def rows(x: KDBatch, sl: slice) -> np.ndarray:
        return fn(
            x.student[sl], x.teacher[sl], x.labels[sl], temperature=x.temperature, alpha=x.alpha, reduction="none"
        )

    whole = slice(None)
    last = slice(-1, None)
    return kd_values.each(
        [kd_values.close_scaled(rows(x, whole)[-1:], rows(x, last), tol) for x in kd_strategies.block_batches()]
    )


def factors(env: Any) -> dict[str, float]:
    """The simple factors a KD failure is often off by: the temperature T and T^2, the vocabulary size V,
    the row count and the valid-row count, read from the drawn inputs the failing check used."""
    out: dict[str, float] = {}
    for value in env.values():
        if not isinstance(value, (KDBatch, kd_strategies.StepCase)):
            continue
        out["T"] = float(value.temperature)
        out["T^2"] = float(value.temperature) ** 2
        if isinstance(value, KDBatch):
            out["V"] = float(value.vocab)
            out["rows"] = float(np.prod(value.shape[:-1]))
            out["valid rows"] = float(kd_values.valid_count(value.labels, value.ignore_index))
        else:
            out["V"] = float(value.vocab)
        break
    return out


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
        "logit_reach",
        "total",
        "close_scaled",
        "descend",
        "array",
        "exp",
        "ln",
        "onehot",
        "row_constants",
        "centered",
        "row_variance",
        "reduce_gradient",
        "gradient_from_softmax",
        "each",
        "refused",
        "label_array",
        "unmask",
        "on_grid",
    )
}

BINDING = Binding(
    name="bindings.kd",
    names={
        **_BUILTINS,
        **_HELPERS,
        "kd_loss_numeric_gradient": kd_loss_numeric_gradient,
        "forward_of": forward_of,
        "block_softmax_sums": block_softmax_sums,
        "block_last_row": block_last_row,
        "not_the_reference": not_the_reference,
        "linear_logits": kd_fused.linear_logits,
        "linear_gradients": kd_fused.linear_gradients,
        "fused_linear_peak": kd_fused.fused_linear_peak,
        "IGNORE_INDEX": kd_strategies.IGNORE_INDEX,
        "inf": float("inf"),
        "nan": float("nan"),
        **kd_family.NAMES,
    },
    namespaces={
        "ref": Reference("float64"),
        "providers": providers,
        "pipeline": kd_pipeline,
        "distributed": kd_distributed,
    },
    namespace_attributes={
        "kd": (*KD_OPS, "kd_loss_from_hidden"),
        "ref": (*KD_OPS, "kd_step"),
        "providers": ("FixtureTeacher", "FixtureStudent"),
        "pipeline": kd_pipeline.ATTRIBUTES,
        "distributed": kd_distributed.ATTRIBUTES,
    },
    strategies={
        "kd_batch": Strategy(kd_strategies.kd_batch, KD_BATCH_FIELDS, "random KD inputs (a KDBatch record)"),
        "step_case": Strategy(
            kd_strategies.step_case,
            STEP_CASE_FIELDS,
            "fixture teacher and student providers with a batch (a StepCase record)",
        ),
        "kd_linear_batch": Strategy(
            kd_fused.kd_linear_batch,
            kd_fused.LINEAR_BATCH_FIELDS,
            "random fused-linear KD inputs: hidden states, LM-head weight, teacher (a LinearBatch record)",
        ),
        "reduction": Strategy(kd_strategies.reduction, (), "none, sum or mean"),
        "choice": Strategy(kd_strategies.choice, (), "one of the listed values"),
        "number": Strategy(kd_strategies.number, (), "a finite float in [low, high]"),
        **kd_family.STRATEGIES,
    },
    errors={"ValueError": ValueError},
    backends=kd_family.FamilyBackends(),
    subject_namespaces=("kd",),
    factors=factors,
)
