"""Tests of the torch backends against the float64 reference: parity per op, reduction and dtype, edge
numerics, the autograd Function, and the reference's error messages for bad inputs.

Tolerances (max |backend - reference| <= tol * max(1, |reference|)), the reference evaluated on the inputs
rounded to the dtype under test:

* float64: 1e-6 (the project's parity figure; measured ~1e-15);
* float32: 1e-4 (float32 arithmetic over rows of tens of logits, including a sum over rows);
* bfloat16: 2e-2 (computed in float32, the result rounded once to bfloat16: relative 2^-9, plus the sum).

The CUDA variant runs the same tests when a device exists and is skipped with the reason otherwise.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: pip install 'kd-contracts[torch]'")

from backends.torch_backend import TORCH_CPU, TORCH_CUDA  # noqa: E402
from reference import kd  # noqa: E402

TOLERANCE = {"float64": 1e-6, "float32": 1e-4, "bfloat16": 2e-2}
REDUCTIONS = ["none", "sum", "mean"]
HYPER = [(1.0, 0.5), (2.5, 0.3), (0.5, 0.0), (4.0, 1.0)]

_cuda = TORCH_CUDA.available()
BACKENDS = [
    pytest.param(TORCH_CPU, id="torch"),
    pytest.param(TORCH_CUDA, id="torch-cuda", marks=pytest.mark.skipif(not _cuda, reason=_cuda.reason)),
]


def difference(actual, expected) -> float:
    """max |actual - expected| / max(1, |expected|); equal infinities are 0, NaN is +inf."""
    a, b = np.broadcast_arrays(np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64))
    with np.errstate(invalid="ignore"):
        diff = np.where(a == b, 0.0, np.abs(a - b) / np.maximum(1.0, np.abs(b)))
    return float(np.nan_to_num(diff, nan=np.inf).max(initial=0.0))


def batch(seed: int, shape: tuple[int, ...], scale: float = 3.0):
    """Random logits with ignored rows, a -inf masked for both models and one masked for the teacher."""
    rng = np.random.default_rng(seed)
    s = rng.normal(size=shape) * scale
    t = rng.normal(size=shape) * scale
    y = rng.integers(0, shape[-1], size=shape[:-1])
    flat_y = y.reshape(-1)
    flat_y[:: max(2, flat_y.size // 3)] = -100
    s2, t2 = s.reshape(-1, shape[-1]), t.reshape(-1, shape[-1])
    s2[1, 0] = t2[1, 0] = -np.inf
    t2[-1, 1] = -np.inf
    return s, t, y


class Case:
    """Inputs in one dtype on one backend, with the reference's view of the same (rounded) values."""

    def __init__(self, backend, dtype: str, s, t, y):
        self.b = backend
        self.s, self.t = backend.asarray(s, dtype), backend.asarray(t, dtype)
        self.y = backend.asarray(y, "int64")
        self.rs, self.rt, self.ry = backend.to_numpy(self.s), backend.to_numpy(self.t), y


def _ops(c: Case, temperature: float, alpha: float, reduction: str):
    """(name, backend result, reference result) for every op of the math surface."""
    kw = {"temperature": temperature, "alpha": alpha, "reduction": reduction}
    b = c.b
    yield "kd_loss", b.kd_loss(c.s, c.t, c.y, **kw), kd.kd_loss(c.rs, c.rt, c.ry, **kw)
    yield (
        "kd_logit_gradient",
        b.kd_logit_gradient(c.s, c.t, c.y, **kw),
        kd.kd_logit_gradient(c.rs, c.rt, c.ry, **kw),
    )
    yield (
        "cross_entropy",
        b.cross_entropy(c.s, c.y, reduction=reduction),
        kd.cross_entropy(c.rs, c.ry, reduction=reduction),
    )
    yield (
        "kl_divergence",
        b.kl_divergence(c.s, c.t, temperature=temperature),
        kd.kl_divergence(c.rs, c.rt, temperature=temperature),
    )
    yield "softmax", b.softmax(c.s, temperature), kd.softmax(c.rs, temperature)
    yield "log_softmax", b.log_softmax(c.t, temperature), kd.log_softmax(c.rt, temperature)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(6, 11), (3, 4, 13)], ids=["2d", "3d"])
def test_parity_with_the_reference(backend, dtype, reduction, shape):
    s, t, y = batch(len(shape) * 10 + REDUCTIONS.index(reduction), shape)
    case = Case(backend, dtype, s, t, y)
    for temperature, alpha in HYPER:
        for op, actual, expected in _ops(case, temperature, alpha, reduction):
            assert tuple(actual.shape) == np.shape(expected), op
            assert str(actual.dtype) == f"torch.{dtype}", op  # results come back in the input's dtype
            error = difference(backend.to_numpy(actual), expected)
            assert error <= TOLERANCE[dtype], f"{op} T={temperature} alpha={alpha}: error {error:.3g}"
            if dtype == "float64":
                assert error <= 1e-12, f"{op}: float64 error {error:.3g} is far above rounding"


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_logits_stay_finite_and_match(backend):
    s, t, y = batch(7, (5, 17), scale=1e4)
    case = Case(backend, "float64", s, t, y)
    for op, actual, expected in _ops(case, 2.0, 0.5, "mean"):
        result = backend.to_numpy(actual)
        assert not np.isnan(result).any(), op
        assert difference(result, expected) <= 1e-9, op
    loss = backend.to_numpy(backend.kd_loss(case.s, case.t, case.y, temperature=2.0, alpha=0.5))
    assert np.isfinite(loss)


@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_student_under_teacher_mass_gives_infinite_kl_but_alpha_one_is_finite(backend):
    s = np.array([[0.0, -np.inf, 1.0], [0.5, 0.2, 0.1]])
    t = np.array([[0.0, 2.0, 1.0], [0.1, 0.2, 0.3]])
    y = np.array([0, 2])
    S, T, Y = backend.asarray(s, "float64"), backend.asarray(t, "float64"), backend.asarray(y, "int64")
    kl = backend.to_numpy(backend.kl_divergence(S, T, temperature=2.0))
    np.testing.assert_array_equal(kl, kd.kl_divergence(s, t, temperature=2.0))
    assert np.isposinf(kl[0]) and np.isfinite(kl[1])
    loss = backend.to_numpy(backend.kd_loss(S, T, Y, temperature=2.0, alpha=1.0, reduction="none"))
    np.testing.assert_allclose(loss, kd.kd_loss(s, t, y, temperature=2.0, alpha=1.0, reduction="none"))
    assert np.isfinite(loss).all()
    gradient = backend.kd_logit_gradient(S, T, Y, temperature=2.0, alpha=0.5)
    assert np.isfinite(backend.to_numpy(gradient)).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_no_valid_rows_gives_zero_loss_and_gradient(backend, reduction):
    s, t, _ = batch(3, (4, 6))
    y = np.full(4, -100)
    S, T, Y = backend.asarray(s, "float64"), backend.asarray(t, "float64"), backend.asarray(y, "int64")
    kw = {"temperature": 2.0, "alpha": 0.5, "reduction": reduction}
    assert not backend.to_numpy(backend.kd_loss(S, T, Y, **kw)).any()
    assert not backend.to_numpy(backend.kd_logit_gradient(S, T, Y, **kw)).any()
    assert not backend.to_numpy(backend.cross_entropy(S, Y, reduction=reduction)).any()


def test_numpy_and_list_inputs_are_accepted():
    s, t, y = batch(4, (3, 5))
    kw = {"temperature": 1.5, "alpha": 0.25}
    from_numpy = TORCH_CPU.kd_loss(s, t, y, **kw)
    from_lists = TORCH_CPU.kd_loss(s.tolist(), t.tolist(), y.tolist(), **kw)
    assert from_numpy.dtype == torch.float64
    assert float(from_numpy) == float(from_lists) == pytest.approx(kd.kd_loss(s, t, y, **kw), abs=1e-12)


def test_mixed_dtypes_promote_and_integer_logits_compute_in_float64():
    s, t, y = batch(5, (3, 5))
    S, T, Y = torch.tensor(s, dtype=torch.bfloat16), torch.tensor(t, dtype=torch.float32), torch.tensor(y)
    assert TORCH_CPU.kd_loss(S, T, Y, temperature=2.0, alpha=0.5).dtype == torch.float32
    assert TORCH_CPU.kd_logit_gradient(S, T, Y, temperature=2.0, alpha=0.5).dtype == torch.bfloat16
    ints = torch.tensor([[1, 2, 3], [0, 0, 5]])
    assert TORCH_CPU.softmax(ints).dtype == torch.float64


def test_availability_reasons():
    assert TORCH_CPU.available()
    cuda = TORCH_CUDA.available()
    if not torch.cuda.is_available():
        assert not cuda
        assert cuda.reason.startswith("no CUDA device: torch.cuda.is_available() is False")


# --------------------------------------------------------------------------------------------------------
# Autograd.
# --------------------------------------------------------------------------------------------------------


def plain_torch_kd_loss(s, t, y, temperature, alpha, reduction, ignore_index=-100):
    """The KD loss in plain torch ops (finite logits only), differentiated by torch's autograd."""
    vocab = s.shape[-1]
    valid = (y != ignore_index).to(s.dtype)
    ce = torch.nn.functional.cross_entropy(
        s.reshape(-1, vocab), y.reshape(-1), ignore_index=ignore_index, reduction="none"
    ).reshape(y.shape)
    log_p = torch.log_softmax(t / temperature, dim=-1)
    log_q = torch.log_softmax(s / temperature, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    rows = alpha * ce + (1 - alpha) * temperature**2 * kl * valid
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    return rows.sum() / valid.sum().clamp_min(1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(("temperature", "alpha"), HYPER)
def test_backward_is_the_analytic_gradient_and_matches_plain_autograd(backend, reduction, temperature, alpha):
    rng = np.random.default_rng(11)
    s, t = rng.normal(size=(2, 3, 7)) * 2, rng.normal(size=(2, 3, 7)) * 2
    y = rng.integers(0, 7, size=(2, 3))
    y[0, 1] = -100
    kw = {"temperature": temperature, "alpha": alpha, "reduction": reduction}
    S = backend.asarray(s, "float64").requires_grad_(True)
    T, Y = backend.asarray(t, "float64"), backend.asarray(y, "int64")
    weights = backend.asarray(rng.normal(size=(2, 3)), "float64")
    loss = backend.kd_loss(S, T, Y, **kw)
    (loss * weights).sum().backward() if reduction == "none" else (3.0 * loss).backward()
    analytic = backend.to_numpy(backend.kd_logit_gradient(S.detach(), T, Y, **kw))
    scale = backend.to_numpy(weights)[..., None] if reduction == "none" else 3.0
    np.testing.assert_allclose(backend.to_numpy(S.grad), analytic * scale, atol=1e-13)
    np.testing.assert_allclose(analytic, kd.kd_logit_gradient(s, t, y, **kw), atol=1e-13)

    S2 = backend.asarray(s, "float64").requires_grad_(True)
    plain = plain_torch_kd_loss(S2, T, Y, temperature, alpha, reduction)
    np.testing.assert_allclose(backend.to_numpy(plain), backend.to_numpy(loss.detach()), atol=1e-12)
    (plain * weights).sum().backward() if reduction == "none" else (3.0 * plain).backward()
    np.testing.assert_allclose(backend.to_numpy(S.grad), backend.to_numpy(S2.grad), atol=1e-12)


def test_gradcheck_against_finite_differences():
    rng = np.random.default_rng(12)
    s = torch.tensor(rng.normal(size=(4, 5)), requires_grad=True)
    t = torch.tensor(rng.normal(size=(4, 5)))
    y = torch.tensor([1, -100, 4, 0])
    for reduction in REDUCTIONS:
        assert torch.autograd.gradcheck(
            lambda x, r=reduction: TORCH_CPU.kd_loss(x, t, y, temperature=2.0, alpha=0.3, reduction=r), (s,)
        )


def test_teacher_gets_no_gradient_and_bfloat16_backward_keeps_the_dtype():
    s, t, y = batch(13, (4, 9))
    S = TORCH_CPU.asarray(s, "bfloat16").requires_grad_(True)
    T = TORCH_CPU.asarray(t, "bfloat16").requires_grad_(True)
    loss = TORCH_CPU.kd_loss(S, T, torch.tensor(y), temperature=2.0, alpha=0.5)
    assert loss.dtype == torch.bfloat16
    loss.backward()
    assert S.grad.dtype == torch.bfloat16
    assert T.grad is None
    expected = kd.kd_logit_gradient(TORCH_CPU.to_numpy(S), TORCH_CPU.to_numpy(T), y, temperature=2.0, alpha=0.5)
    assert difference(TORCH_CPU.to_numpy(S.grad), expected) <= TOLERANCE["bfloat16"]


# --------------------------------------------------------------------------------------------------------
# Bad inputs raise ValueError with the reference's message.
# --------------------------------------------------------------------------------------------------------

_S, _T, _Y = batch(21, (3, 4, 6))
_KW = {"temperature": 2.0, "alpha": 0.5}


def _with(array, index, value):
    copy = array.copy()
    copy[index] = value
    return copy


KD_BAD = {
    "vocab mismatch": (_S, _T[..., :5], _Y, _KW),
    "shape mismatch": (_S, _T[:2], _Y, _KW),
    "labels shape": (_S, _T, _Y[:, :2], _KW),
    "label out of range": (_S, _T, _with(_Y, (2, 1), 6), _KW),
    "negative label": (_S, _T, _with(_Y, (0, 3), -1), _KW),
    "float labels": (_S, _T, _Y.astype(np.float64), _KW),
    "bool labels": (_S, _T, _Y > 0, _KW),
    "temperature 0": (_S, _T, _Y, {**_KW, "temperature": 0.0}),
    "temperature -1": (_S, _T, _Y, {**_KW, "temperature": -1.0}),
    "temperature inf": (_S, _T, _Y, {**_KW, "temperature": float("inf")}),
    "alpha -0.1": (_S, _T, _Y, {**_KW, "alpha": -0.1}),
    "alpha nan": (_S, _T, _Y, {**_KW, "alpha": float("nan")}),
    "student nan": (_with(_S, (1, 2, 3), np.nan), _T, _Y, _KW),
    "teacher nan": (_S, _with(_T, (2, 0, 0), np.nan), _Y, _KW),
    "student +inf": (_with(_S, (0, 1, 5), np.inf), _T, _Y, _KW),
    "teacher row of -inf": (_S, _with(_T, (1, 3), -np.inf), _Y, _KW),
    "nan and bad label: student first": (_with(_S, (2, 2, 2), np.nan), _T, _with(_Y, (0, 0), 99), _KW),
    "reduction": (_S, _T, _Y, {**_KW, "reduction": "avg"}),
    "ignore_index": (_S, _T, _Y, {**_KW, "ignore_index": 1.5}),
}


def _message(fn, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as error:
        fn(*args, **kwargs)
    return str(error.value)


def _tensor(x):
    return torch.from_numpy(np.array(x))  # a copy, C-contiguous, 0-d stays 0-d


@pytest.mark.parametrize("case", list(KD_BAD))
@pytest.mark.parametrize("op", ["kd_loss", "kd_logit_gradient"])
def test_bad_kd_inputs_raise_the_reference_message(op, case):
    s, t, y, kw = KD_BAD[case]
    expected = _message(getattr(kd, op), s, t, y, **kw)
    assert _message(getattr(TORCH_CPU, op), _tensor(s), _tensor(t), _tensor(y), **kw) == expected
    if "nan" in case or "inf" in case:  # the value checks also see bfloat16 inputs
        bf16 = (TORCH_CPU.asarray(s, "bfloat16"), TORCH_CPU.asarray(t, "bfloat16"), _tensor(y))
        assert _message(getattr(TORCH_CPU, op), *bf16, **kw) == expected


OTHER_BAD = {
    "softmax nan": ("softmax", (_with(_S, (0, 0, 0), np.nan),), {}),
    "softmax temperature": ("softmax", (_S,), {"temperature": 0}),
    "softmax 0-d": ("softmax", (np.float64(1.0),), {}),
    "softmax empty vocab": ("softmax", (np.zeros((2, 0)),), {}),
    "log_softmax row of -inf": ("log_softmax", (_with(_S, (2, 3), -np.inf),), {}),
    "cross_entropy label": ("cross_entropy", (_S, _with(_Y, (1, 1), 6)), {}),
    "cross_entropy reduction": ("cross_entropy", (_S, _Y), {"reduction": "max"}),
    "cross_entropy nan before labels shape": ("cross_entropy", (_with(_S, (0, 0, 1), np.nan), _Y[:2]), {}),
    "cross_entropy float labels": ("cross_entropy", (_S, _Y.astype(np.float32)), {}),
    "kl vocab mismatch": ("kl_divergence", (_S, _T[..., :4]), {}),
    "kl teacher +inf": ("kl_divergence", (_S, _with(_T, (0, 0, 0), np.inf)), {}),
    "kl temperature": ("kl_divergence", (_S, _T), {"temperature": -2.0}),
}


@pytest.mark.parametrize("case", list(OTHER_BAD))
def test_bad_inputs_of_the_other_ops_raise_the_reference_message(case):
    op, args, kw = OTHER_BAD[case]
    expected = _message(getattr(kd, op), *args, **kw)
    assert _message(getattr(TORCH_CPU, op), *map(_tensor, args), **kw) == expected


def test_complex_logits_are_refused_like_numpy_does():
    z = np.ones((2, 3), dtype=np.complex128)
    assert _message(TORCH_CPU.softmax, _tensor(z)) == _message(kd.softmax, z)
