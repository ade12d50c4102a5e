"""Check vocabulary for the divergence family, top-k teachers and the normalizer (``contracts/kd-divergences-v1``,
``kd-topk-v1``, ``kd-accumulation-v1``); merged into :data:`bindings.kd.BINDING`.

The falsifiers iterate over the one table of operations, :data:`reference.divergences.DIVERGENCES`: the
``divergence`` strategy draws a :class:`DivergenceCase` (a member and a value of its parameter, endpoints
included) and helpers such as ``div(kd, d, s, t, T)`` call the member it names on the backend under test
(``kd``) or on the reference (``ref``). Adding a member to the table adds it to every falsifier.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hypothesis import strategies as st

from backends.protocol import lacks
from bindings import kd_values
from bindings.kd_strategies import IGNORE_INDEX, _describe_array, _range
from bindings.kd_subject import BackendOps, KDBackends, Reference, round_to
from reference import kd as reference_kd
from reference.divergences import BY_NAME, DIVERGENCES
from reference.topk import TopKTeacher, dense_to_topk
from spec.binding import Strategy, Target

# --------------------------------------------------------------------------------------------------------
# Records and strategies.
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DivergenceCase:
    """One member of the table with a value of its parameter: ``name``, ``function``, ``parameter``
    (``beta``/``skew``/None), ``value``, and whether it is ``smooth`` and allowed ``on_topk``."""

    name: str
    value: float | None = None

    @property
    def function(self) -> str:
        return BY_NAME[self.name].function

    @property
    def gradient(self) -> str:
        return BY_NAME[self.name].gradient_function

    @property
    def parameter(self) -> str | None:
        return BY_NAME[self.name].parameter

    @property
    def smooth(self) -> bool:
        return BY_NAME[self.name].smooth

    @property
    def on_topk(self) -> bool:
        return BY_NAME[self.name].on_topk

    @property
    def kwargs(self) -> dict[str, float]:
        return {} if self.parameter is None else {self.parameter: float(self.value)}  # type: ignore[arg-type]

    def describe(self) -> str:
        return f"{self.name}({self.parameter}={self.value!r})" if self.parameter else self.name


DIVERGENCE_CASE_FIELDS = ("name", "value", "function", "gradient", "parameter", "smooth", "on_topk")

_EDGES = (0.0, 1.0, 0.5, 1e-12, 1.0 - 1e-12)


def divergence(
    names: Sequence[str] | None = None, smooth: bool = False, topk: bool = False, edges: bool = True
) -> st.SearchStrategy[DivergenceCase]:
    """A member of the table (``names`` to restrict it; ``smooth``: only differentiable members; ``topk``:
    only those top-k supports) and, when it has one, a parameter in [0, 1] (endpoints and 1e-12 from them
    drawn often unless ``edges`` is false)."""
    members = [d for d in DIVERGENCES if (names is None or d.name in names)]
    members = [d for d in members if (d.smooth or not smooth) and (d.on_topk or not topk)]
    interior = st.floats(0.01, 0.99)
    values = st.one_of(st.sampled_from(_EDGES), interior) if edges else interior

    @st.composite
    def build(draw: st.DrawFn) -> DivergenceCase:
        d = draw(st.sampled_from(members))
        return DivergenceCase(d.name, None if d.parameter is None else float(draw(values)))

    return build()


@dataclass(frozen=True)
class TopKBatch:
    """A dense student and teacher ``[..., V]`` with the teacher's top-k ``(logprobs, ids)`` ``[..., K]`` (ids
    in a shuffled order), labels, a temperature, an alpha and a mode."""

    student: np.ndarray
    teacher: np.ndarray
    logprobs: np.ndarray
    ids: np.ndarray
    labels: np.ndarray
    temperature: float
    alpha: float
    mode: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.ids.shape[-1])

    @property
    def vocab(self) -> int:
        return int(self.student.shape[-1])

    @property
    def pair(self) -> TopKTeacher:
        return TopKTeacher(self.logprobs, self.ids, self.mode)

    def describe(self) -> str:
        head = (
            f"TopKBatch(mode={self.mode!r}, K={self.k}, V={self.vocab}, T={self.temperature!r}, alpha={self.alpha!r})"
        )
        arrays = [("student", self.student), ("teacher", self.teacher), ("logprobs", self.logprobs)]
        arrays += [("ids", self.ids), ("labels", self.labels)]
        return "\n".join([head, *(_describe_array(n, a) for n, a in arrays)])


TOPK_BATCH_FIELDS = (
    "student",
    "teacher",
    "logprobs",
    "ids",
    "labels",
    "temperature",
    "alpha",
    "mode",
    "k",
    "vocab",
    "pair",
)


def topk_batch(
    rows: Sequence[int] = (1, 6),
    vocab: Sequence[int] = (2, 16),
    k: str = "any",
    mode: str = "any",
    temperature: float | Sequence[float] = (0.5, 4.0),
    alpha: float | Sequence[float] = (0.0, 1.0),
    scale: float = 3.0,
    ignore: float = 0.2,
) -> st.SearchStrategy[TopKBatch]:
    """Random top-k inputs. ``k``: ``any`` (1..V), ``full`` (K = V) or ``partial`` (K < V, V >= 2);
    ``mode``: ``tail``, ``renormalize`` or ``any``. ``tail`` batches have temperature 1 (the module docstring
    of :mod:`reference.topk` says why)."""

    @st.composite
    def build(draw: st.DrawFn) -> TopKBatch:
        n = draw(st.integers(int(rows[0]), int(rows[1])))
        v = draw(st.integers(max(int(vocab[0]), 2 if k == "partial" else 1), int(vocab[1])))
        kk = v if k == "full" else draw(st.integers(1, v - 1 if k == "partial" else v))
        m = draw(st.sampled_from(("tail", "renormalize"))) if mode == "any" else mode
        t = 1.0 if m == "tail" else float(draw(_range(temperature)))
        a = float(draw(_range(alpha)))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        lead = (n,) if draw(st.booleans()) else (1, n)
        student = rng.normal(0.0, scale, (*lead, v))
        teacher = rng.normal(0.0, scale, (*lead, v))
        logprobs, ids = dense_to_topk(teacher, kk)
        order = rng.permuted(np.broadcast_to(np.arange(kk), ids.shape), axis=-1)
        logprobs, ids = np.take_along_axis(logprobs, order, -1), np.take_along_axis(ids, order, -1)
        labels = rng.integers(0, v, lead)
        labels[rng.random(lead) < ignore] = IGNORE_INDEX
        return TopKBatch(student, teacher, logprobs, ids, labels.astype(np.int64), t, a, m)

    return build()


def split(parts: Sequence[int] = (1, 4)) -> st.SearchStrategy[tuple[int, int]]:
    """``(parts, seed)``: how many accumulation parts, and the seed of a random assignment of rows to them."""
    return st.tuples(st.integers(int(parts[0]), int(parts[1])), st.integers(0, 2**32 - 1))


# --------------------------------------------------------------------------------------------------------
# Calling a member on the backend under test (``kd``) or on the reference (``ref``).
# --------------------------------------------------------------------------------------------------------


def _invoke(ops: Any, op: str, *args: Any, **kwargs: Any) -> np.ndarray:
    """``ops.<op>(*args, **kwargs)`` with numpy in and numpy out: the backend in its dtype, or the reference
    on inputs rounded to that dtype."""
    if isinstance(ops, BackendOps):
        backend, dtype = ops.backend, ops.dtype

        def inp(x: Any) -> Any:
            if isinstance(x, TopKTeacher):
                return TopKTeacher(inp(x.logprobs), inp(x.ids), x.mode)
            if isinstance(x, (list, np.ndarray)):
                a = np.asarray(x)
                return (
                    backend.asarray(a.astype(np.int64), "int64") if a.dtype.kind in "iu" else backend.asarray(a, dtype)
                )
            return x

        result = getattr(backend, op)(*(inp(a) for a in args), **kwargs)
        return np.asarray(backend.to_numpy(result), dtype=np.float64)
    if isinstance(ops, Reference):

        def rounded(x: Any) -> Any:
            if isinstance(x, TopKTeacher):
                return TopKTeacher(rounded(x.logprobs), x.ids, x.mode)
            a = np.asarray(x) if isinstance(x, list) else x
            return round_to(a, ops.dtype) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a

        return np.asarray(getattr(reference_kd, op)(*(rounded(a) for a in args), **kwargs), dtype=np.float64)
    raise TypeError(f"expected kd or ref, got {ops!r}")


def case(name: str, value: float | None = None) -> DivergenceCase:
    """The member ``name`` with its parameter ``value`` (for checks that name one member)."""
    return DivergenceCase(name, value)


def div(ops: Any, d: DivergenceCase, s: Any, t: Any, temperature: float = 1.0) -> np.ndarray:
    """Per-row ``D(softmax(t/T), softmax(s/T))`` of member ``d``."""
    return _invoke(ops, d.function, s, t, temperature=temperature, **d.kwargs)


def div_grad(ops: Any, d: DivergenceCase, s: Any, t: Any, temperature: float = 1.0) -> np.ndarray:
    """``dD_i/ds_i`` of member ``d`` (its ``_gradient`` twin)."""
    return _invoke(ops, d.gradient, s, t, temperature=temperature, **d.kwargs)


def div_numeric_grad(ops: Any, d: DivergenceCase, s: Any, t: Any, temperature: float = 1.0) -> np.ndarray:
    """Central finite differences of the same backend's per-row ``div``."""
    return kd_values.central_difference_gradient(lambda x: div(ops, d, x, t, temperature), s)


def gradient_integral(
    ops: Any, d: DivergenceCase, s: Any, t: Any, temperature: float = 1.0, panels: int = 128
) -> np.ndarray:
    """Per row, the integral of ``<div_grad(x, t), s - t>`` along the segment ``x = t + u (s - t)``, ``u`` from 0
    to 1 (Gauss-Legendre, 4 nodes on each of ``panels`` panels, all nodes in one backend call), with ``s`` and
    ``t`` first rounded to the dtype under test. When the gradient twin is the derivative of its member, this is
    ``div(s, t) - div(t, t) = div(s, t)`` (the fundamental theorem of calculus): a law that needs no step size,
    so it holds in bfloat16 too."""
    s0, t0 = (round_to(np.asarray(x, dtype=np.float64), ops.dtype) for x in (s, t))
    nodes, weights = np.polynomial.legendre.leggauss(4)
    u = ((np.arange(panels)[:, None] + (nodes[None, :] + 1.0) / 2.0) / panels).reshape(-1)
    w = np.tile(weights / (2.0 * panels), panels)
    step = (s0 - t0).reshape(-1, s0.shape[-1])
    path = t0.reshape(1, -1, s0.shape[-1]) + u[:, None, None] * step[None]
    grads = div_grad(ops, d, path, np.broadcast_to(t0.reshape(1, -1, s0.shape[-1]), path.shape).copy(), temperature)
    return np.einsum("n,nr->r", w, (grads * step[None]).sum(-1)).reshape(s0.shape[:-1])


def topk(ops: Any, d: DivergenceCase, b: TopKBatch, s: Any = None, mode: str | None = None) -> np.ndarray:
    """Per-row ``topk_divergence`` of member ``d`` on ``b`` (student ``s`` instead of ``b.student`` if given)."""
    student = b.student if s is None else s
    return _invoke(
        ops, "topk_divergence", student, b.logprobs, b.ids, mode=mode or b.mode, divergence=d.name,
        beta=d.value, temperature=b.temperature,
    )  # fmt: skip


def topk_grad(ops: Any, d: DivergenceCase, b: TopKBatch, mode: str | None = None, s: Any = None) -> np.ndarray:
    """``topk_divergence_gradient`` of member ``d`` on ``b`` (student ``s`` instead of ``b.student`` if given)."""
    student = b.student if s is None else s
    return _invoke(
        ops, "topk_divergence_gradient", student, b.logprobs, b.ids, mode=mode or b.mode, divergence=d.name,
        beta=d.value, temperature=b.temperature,
    )  # fmt: skip


def topk_numeric_grad(ops: Any, d: DivergenceCase, b: TopKBatch) -> np.ndarray:
    """Central finite differences of the same backend's per-row ``topk``."""
    return kd_values.central_difference_gradient(lambda x: topk(ops, d, b, x), b.student)


def topk_call(
    ops: Any, d: DivergenceCase, s: Any, logprobs: Any, ids: Any, mode: str, temperature: float
) -> np.ndarray:
    """``topk_divergence`` on explicit arrays (for the input falsifiers)."""
    return _invoke(
        ops, "topk_divergence", s, logprobs, ids, mode=mode, divergence=d.name, beta=d.value, temperature=temperature
    )


def family_loss(
    ops: Any, d: DivergenceCase, s: Any, teacher: Any, labels: Any, temperature: float, alpha: float,
    reduction: str = "mean", normalizer: float | None = None,
) -> np.ndarray:  # fmt: skip
    """``kd_loss(..., divergence=d.name, <d's parameter>, normalizer=...)``; ``teacher`` dense or a top-k pair."""
    return _invoke(
        ops, "kd_loss", s, teacher, labels, temperature=temperature, alpha=alpha, divergence=d.name,
        reduction=reduction, normalizer=normalizer, **d.kwargs,
    )  # fmt: skip


def family_gradient(
    ops: Any, d: DivergenceCase, s: Any, teacher: Any, labels: Any, temperature: float, alpha: float,
    reduction: str = "mean", normalizer: float | None = None,
) -> np.ndarray:  # fmt: skip
    """``kd_logit_gradient`` with the same arguments as :func:`family_loss`."""
    return _invoke(
        ops, "kd_logit_gradient", s, teacher, labels, temperature=temperature, alpha=alpha, divergence=d.name,
        reduction=reduction, normalizer=normalizer, **d.kwargs,
    )  # fmt: skip


def family_numeric_gradient(
    ops: Any, d: DivergenceCase, s: Any, teacher: Any, labels: Any, temperature: float, alpha: float,
    reduction: str = "mean",
) -> np.ndarray:  # fmt: skip
    """Central finite differences of the same backend's :func:`family_loss`."""

    def loss(x: np.ndarray) -> np.ndarray:
        return family_loss(ops, d, x, teacher, labels, temperature, alpha, reduction)

    return kd_values.central_difference_gradient(loss, s)


# --------------------------------------------------------------------------------------------------------
# Accumulation: a batch split into parts, each normalized by the whole batch's valid count.
# --------------------------------------------------------------------------------------------------------


def _parts(n_rows: int, how: tuple[int, int]) -> list[np.ndarray]:
    parts, seed = how
    owner = np.random.default_rng(seed).integers(0, parts, n_rows)
    return [np.flatnonzero(owner == p) for p in range(parts) if (owner == p).any()]


def accumulated(
    ops: Any, d: DivergenceCase, s: Any, teacher: Any, labels: Any, temperature: float, alpha: float,
    how: tuple[int, int], what: str = "gradient",
) -> np.ndarray:  # fmt: skip
    """Split the rows of a batch at random into ``how = (parts, seed)`` accumulation parts; evaluate each part
    with ``normalizer`` = the whole batch's valid-row count; return the summed loss (``what='loss'``) or the
    part gradients put back in place and summed (``what='gradient'``)."""
    s2 = np.asarray(s, dtype=np.float64).reshape(-1, np.shape(s)[-1])
    y = np.asarray(labels).reshape(-1)
    count = int((y != IGNORE_INDEX).sum())
    normalizer = float(max(count, 1))
    pair = teacher if isinstance(teacher, TopKTeacher) else None
    t2 = None if pair else np.asarray(teacher, dtype=np.float64).reshape(-1, s2.shape[-1])
    total = np.zeros(s2.shape) if what == "gradient" else np.zeros(())
    for rows in _parts(s2.shape[0], how):
        if pair is not None:
            k = np.shape(pair.ids)[-1]
            part_teacher: Any = TopKTeacher(
                np.asarray(pair.logprobs).reshape(-1, k)[rows], np.asarray(pair.ids).reshape(-1, k)[rows], pair.mode
            )
        else:
            part_teacher = t2[rows]  # type: ignore[index]
        if what == "gradient":
            total[rows] += family_gradient(
                ops, d, s2[rows], part_teacher, y[rows], temperature, alpha, "mean", normalizer
            )
        else:
            total = total + family_loss(ops, d, s2[rows], part_teacher, y[rows], temperature, alpha, "mean", normalizer)
    return total.reshape(np.shape(s)) if what == "gradient" else total


# --------------------------------------------------------------------------------------------------------
# Small helpers: buckets, gathers, corruptions of a top-k pair.
# --------------------------------------------------------------------------------------------------------


def gather(x: Any, ids: Any) -> np.ndarray:
    """``x`` at ``ids`` along the last axis (the student's logits on the teacher's top-k ids)."""
    return np.take_along_axis(np.asarray(x, dtype=np.float64), np.asarray(ids), axis=-1)


def outside(x: Any, ids: Any) -> np.ndarray:
    """The entries of ``x`` ``[..., V]`` not at ``ids`` ``[..., K]``, flattened."""
    a = np.asarray(x, dtype=np.float64)
    inside = np.zeros(a.shape, dtype=bool)
    np.put_along_axis(inside, np.asarray(ids), True, axis=-1)
    return a[~inside]


def bucket_logits(x: Any, ids: Any) -> np.ndarray:
    """Logits over K + 1 buckets: the log-probabilities of ``ids`` and the log of the mass outside them (a
    coarser partition of the vocabulary, as the ``tail`` mode sees it)."""
    z = np.asarray(x, dtype=np.float64)
    lz = z - np.logaddexp.reduce(z, axis=-1, keepdims=True)
    inside = np.zeros(z.shape, dtype=bool)
    np.put_along_axis(inside, np.asarray(ids), True, axis=-1)
    rest = np.logaddexp.reduce(np.where(inside, -np.inf, lz), axis=-1, keepdims=True)
    return np.concatenate([np.take_along_axis(lz, np.asarray(ids), axis=-1), rest], axis=-1)


def with_duplicate_id(ids: Any) -> np.ndarray:
    """``ids`` with the last row's last id replaced by its first (needs K >= 2)."""
    out = np.array(ids, dtype=np.int64)
    last = out.reshape(-1, out.shape[-1])
    last[-1, -1] = last[-1, 0]
    return out


def with_last_row(x: Any, value: float) -> np.ndarray:
    """``x`` with the last row's first entry set to ``value``."""
    out = np.array(x)
    out.reshape(-1, out.shape[-1])[-1, 0] = value
    return out


def with_mass(logprobs: Any, mass: float) -> np.ndarray:
    """``logprobs`` with the last row shifted so that its probabilities sum to ``mass``."""
    out = np.array(logprobs, dtype=np.float64)
    rows = out.reshape(-1, out.shape[-1])
    rows[-1] = rows[-1] - np.logaddexp.reduce(rows[-1]) + math.log(mass)
    return out


def with_margin(student: Any, ids: Any, margin: float) -> np.ndarray:
    """``student`` raised by ``margin`` at ``ids``: its top-k then holds all but about ``exp(-margin)`` of its mass
    (a confident student, whose tail bucket ``1 - sum q[ids]`` would cancel)."""
    out = np.array(student, dtype=np.float64)
    np.put_along_axis(out, np.asarray(ids), np.take_along_axis(out, np.asarray(ids), axis=-1) + margin, axis=-1)
    return out


def topk_pair(logprobs: Any, ids: Any, mode: str = "tail") -> TopKTeacher:
    """A top-k teacher for ``kd_loss``."""
    return TopKTeacher(logprobs, ids, mode)


def ln(x: Any) -> Any:
    """Natural logarithm (elementwise)."""
    return np.log(x)


# --------------------------------------------------------------------------------------------------------
# Binding parts, merged into bindings.kd.BINDING.
# --------------------------------------------------------------------------------------------------------


class FamilyBackends(KDBackends):
    """The KD backend catalog, which also answers which optional members a backend lacks (``requires``)."""

    def lacks(self, target: Target, required: Sequence[str]) -> list[str]:
        return lacks(target.backend, list(required))


NAMES: dict[str, Any] = {
    f.__name__: f
    for f in (
        case, div, div_grad, div_numeric_grad, gradient_integral, topk, topk_grad, topk_numeric_grad, topk_call,
        family_loss, family_gradient, family_numeric_gradient, accumulated, gather, outside, bucket_logits,
        with_duplicate_id, with_last_row, with_mass, with_margin, topk_pair, ln,
    )
}  # fmt: skip

STRATEGIES: dict[str, Strategy] = {
    "divergence": Strategy(divergence, DIVERGENCE_CASE_FIELDS, "a member of the divergence table with its parameter"),
    "topk_batch": Strategy(topk_batch, TOPK_BATCH_FIELDS, "dense logits with the teacher's top-k pair (a TopKBatch)"),
    "split": Strategy(split, (), "(parts, seed): a random split of a batch into accumulation parts"),
}
