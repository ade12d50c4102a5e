"""The divergence family beyond the falsifiers: the table drives every layer, torch's autograd agrees with the
analytic gradients, the cupy port (run with numpy as its array module) agrees with the reference, bad top-k
inputs name their row, and a backend without the family is reported "not implemented", never passed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backends import protocol
from backends.cupy_backend import CupyBackend
from backends.numpy_backend import BACKEND as NUMPY
from reference import kd
from reference.divergences import DIVERGENCES, TOPK_DIVERGENCE_NAMES
from reference.topk import TOPK_MASS_TOLERANCE, TopKTeacher, dense_to_topk

ROOT = Path(__file__).resolve().parents[1]
CASES = [pytest.param(d, id=d.name) for d in DIVERGENCES]
TOPK_CASES = [
    (name, beta, mode) for name, beta in (("forward_kl", None), ("reverse_kl", None), ("generalized_jsd", 0.3))
    for mode in ("tail", "renormalize")
]  # fmt: skip


def _param(d) -> dict[str, float]:
    return {d.parameter: 0.3} if d.parameter else {}


def _logits(seed: int = 0, shape=(2, 3, 7)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, shape[-1], shape[:-1])
    labels[0, 1] = -100
    return rng.normal(0, 2, shape), rng.normal(0, 2, shape), labels


# --------------------------------------------------------------------------------------------------------
# One table drives the public names, the protocol and every backend's capabilities.
# --------------------------------------------------------------------------------------------------------


def test_the_table_names_every_public_function_and_capability() -> None:
    functions = {d.function for d in DIVERGENCES} | {d.gradient_function for d in DIVERGENCES}
    for name in functions | {"topk_divergence", "topk_divergence_gradient"}:
        assert callable(getattr(kd, name)), name
    family = set(protocol.FAMILY_MEMBERS)
    assert family == (functions - {"kl_divergence"}) | {"topk_divergence", "topk_divergence_gradient"}
    from backends.torch_backend import TORCH_CPU

    for backend in (NUMPY, TORCH_CPU, CupyBackend()):
        assert backend.capabilities - {"kd_loss_from_hidden"} == family | set(protocol.OPTIONAL_FEATURES), backend
        assert protocol.conformance_problems(backend) == []


def test_protocol_reports_undeclared_unknown_and_unimplemented_capabilities() -> None:
    class Port:
        name, device, dtypes = "port", "cpu", ("float64",)
        capabilities = frozenset({"reverse_kl", "kd_loss_topk", "telepathy"})

    port = Port()
    for member in protocol.METHOD_MEMBERS:
        setattr(port, member, lambda *a, **k: None)
    problems = protocol.conformance_problems(port)
    assert problems[0] == "missing reverse_kl"  # declared, not implemented
    assert any("unknown 'telepathy'" in p for p in problems)
    assert protocol.lacks(port, ["kd_loss", "reverse_kl", "kd_loss_topk", "generalized_jsd"]) == [
        "reverse_kl",
        "generalized_jsd",
    ]
    assert protocol.lacks(NUMPY, list(protocol.CAPABILITIES)) == []


def test_a_backend_without_the_family_is_reported_not_implemented_never_passed() -> None:
    """tests/ports/good_port.py implements the core protocol only: every falsifier of the family contracts is
    skipped, with a reason that starts with 'not implemented:' (or 'not run:' for a dtype it does not declare)."""
    files = [
        "falsifiers/test_kd_divergences_v1.py",
        "falsifiers/test_kd_topk_v1.py",
        "falsifiers/test_kd_accumulation_v1.py",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", *files, "-q", "-rs", "-p", "no:cacheprovider", "--backend",
         "tests.ports.good_port:BACKEND"],
        cwd=ROOT, env={**os.environ, "CI": "true"}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:]
    assert "passed" not in result.stdout.splitlines()[-1], result.stdout[-2000:]
    reasons = re.findall(r"^SKIPPED \[\d+\] [^:]+:\d+: (.*)$", result.stdout, flags=re.MULTILINE)
    assert reasons and all(r.startswith(("not implemented: ", "not run: ")) for r in reasons), reasons
    assert any(r.startswith("not implemented: ") for r in reasons), reasons


# --------------------------------------------------------------------------------------------------------
# torch: autograd through the values equals the analytic gradient twins.
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("divergence", CASES)
def test_torch_autograd_of_each_member_equals_its_gradient_twin(divergence) -> None:
    torch = pytest.importorskip("torch")
    from backends.torch_backend import TORCH_CPU

    s, t, _ = _logits()
    student = torch.tensor(s, requires_grad=True)
    value = getattr(TORCH_CPU, divergence.function)(student, torch.tensor(t), temperature=1.7, **_param(divergence))
    value.sum().backward()
    analytic = getattr(TORCH_CPU, divergence.gradient_function)(s, t, temperature=1.7, **_param(divergence))
    np.testing.assert_allclose(analytic.numpy(), student.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("name", "beta", "mode"), TOPK_CASES)
def test_torch_autograd_of_topk_equals_its_gradient(name: str, beta: float | None, mode: str) -> None:
    torch = pytest.importorskip("torch")
    from backends.torch_backend import TORCH_CPU

    s, t, _ = _logits()
    lp, ids = dense_to_topk(t, 3)
    kw = {"mode": mode, "divergence": name, "beta": beta, "temperature": 1.0 if mode == "tail" else 2.0}
    student = torch.tensor(s, requires_grad=True)
    TORCH_CPU.topk_divergence(student, lp, ids, **kw).sum().backward()
    analytic = TORCH_CPU.topk_divergence_gradient(s, lp, ids, **kw)
    np.testing.assert_allclose(analytic.numpy(), student.grad.numpy(), rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------------------------------------
# cupy: the family's array-namespace code, run with numpy, against the reference.
# --------------------------------------------------------------------------------------------------------


class _CupyOnNumpy(CupyBackend):
    """The cupy backend's family code with numpy as its array module (no CUDA device needed)."""

    name = "cupy-family-on-numpy"

    def _runtime(self):
        return np, None


CUPY = _CupyOnNumpy()
TOLERANCE = {np.float64: 1e-12, np.float32: 1e-5}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("divergence", CASES)
def test_cupy_family_matches_the_reference(divergence, dtype) -> None:
    s, t, y = (a.astype(dtype) if a.dtype.kind == "f" else a for a in _logits(3))
    kw = _param(divergence)
    for op in (divergence.function, divergence.gradient_function):
        if op == "kl_divergence":
            continue  # the backend's fused kernel
        got = getattr(CUPY, op)(s, t, temperature=1.7, **kw)
        assert got.dtype == dtype
        np.testing.assert_allclose(got, getattr(kd, op)(s, t, temperature=1.7, **kw), atol=TOLERANCE[dtype])
    for op in ("kd_loss", "kd_logit_gradient"):
        for reduction in ("none", "sum", "mean"):
            extra = {"divergence": divergence.name, "reduction": reduction, **kw}
            extra |= {"normalizer": 5.0} if reduction == "mean" else {}
            if divergence.name == "forward_kl" and "normalizer" not in extra:
                continue  # the backend's fused kernels (tests/test_cupy_backend.py)
            got = getattr(CUPY, op)(s, t, y, temperature=2.0, alpha=0.3, **extra)
            want = getattr(kd, op)(s, t, y, temperature=2.0, alpha=0.3, **extra)
            np.testing.assert_allclose(got, want, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])


@pytest.mark.parametrize(("name", "beta", "mode"), TOPK_CASES)
@pytest.mark.parametrize("k", [1, 4, 7])
def test_cupy_topk_matches_the_reference(name: str, beta: float | None, mode: str, k: int) -> None:
    s, t, y = _logits(4)
    lp, ids = dense_to_topk(t, k)
    kw = {"mode": mode, "divergence": name, "beta": beta, "temperature": 1.0 if mode == "tail" else 2.0}
    for op in ("topk_divergence", "topk_divergence_gradient"):
        np.testing.assert_allclose(getattr(CUPY, op)(s, lp, ids, **kw), getattr(kd, op)(s, lp, ids, **kw), atol=1e-12)
    teacher = TopKTeacher(lp, ids, mode)
    for op in ("kd_loss", "kd_logit_gradient"):
        got = getattr(CUPY, op)(s, teacher, y, temperature=kw["temperature"], alpha=0.4, divergence=name, beta=beta)
        want = getattr(kd, op)(s, teacher, y, temperature=kw["temperature"], alpha=0.4, divergence=name, beta=beta)
        np.testing.assert_allclose(got, want, atol=1e-12)


# --------------------------------------------------------------------------------------------------------
# Inputs: every bad top-k input is a sentence naming its row, on every backend, with the same message.
# --------------------------------------------------------------------------------------------------------


def _bad_topk_cases():
    s, t, _ = _logits(5)
    lp, ids = dense_to_topk(t, 3)

    def at(array, value, where=(1, 2, 1)):
        out = np.array(array)
        out[where] = value
        return out

    over = np.array(lp)
    over[1, 0] = np.log(np.exp(over[1, 0]) / np.exp(over[1, 0]).sum() * (1 + 10 * TOPK_MASS_TOLERANCE))
    return [
        ("duplicate", s, lp, at(ids, ids[1, 2, 0]), "tail", r"teacher_topk_ids row \(1, 2\) holds id \d+ twice"),
        ("range", s, lp, at(ids, 7), "tail", r"teacher_topk_ids row \(1, 2\) holds id 7 outside \[0, 7\)"),
        ("negative", s, lp, at(ids, -1), "tail", r"row \(1, 2\) holds id -1 outside"),
        ("nan", s, at(lp, np.nan), ids, "tail", r"teacher_topk_logprobs row \(1, 2\) contains NaN"),
        ("positive", s, at(lp, 0.5), ids, "tail", r"teacher_topk_logprobs row \(1, 2\) holds 0.5 > 0"),
        ("mass", s, over, ids, "tail", r"teacher_topk_logprobs row \(1, 0\) has probability mass 1.00"),
        ("dead", s, at(lp, -np.inf, (0, 1)), ids, "renormalize", r"teacher_topk_logprobs row \(0, 1\) has no finite"),
        ("float ids", s, lp, ids.astype(np.float64), "tail", r"teacher_topk_ids must be an integer array"),
        ("shape", s, lp[..., :2], ids, "tail", r"teacher_topk_logprobs shape \(2, 3, 2\) and teacher_topk_ids shape"),
    ]


@pytest.mark.parametrize("case", _bad_topk_cases(), ids=lambda c: c[0])
def test_bad_topk_inputs_name_the_row_on_every_backend(case) -> None:
    _, s, lp, ids, mode, message = case
    torch = pytest.importorskip("torch")
    from backends.torch_backend import TORCH_CPU

    backends = [(NUMPY, lambda x: x), (CUPY, lambda x: x), (TORCH_CPU, lambda x: torch.from_numpy(np.asarray(x)))]
    texts = []
    for backend, convert in backends:
        with pytest.raises(ValueError, match=message) as error:
            backend.topk_divergence(convert(s), convert(lp), convert(ids), mode=mode)
        texts.append(str(error.value))
    assert len(set(texts)) == 1, texts


def test_tail_mode_refuses_a_temperature_and_names_the_alternative() -> None:
    s, t, _ = _logits()
    lp, ids = dense_to_topk(t, 3)
    with pytest.raises(ValueError, match=r"mode .tail. needs temperature 1.0, got 2.0.*renormalize"):
        kd.topk_divergence(s, lp, ids, temperature=2.0)
    with pytest.raises(ValueError, match=r"unknown divergence .skew_kl.*.forward_kl."):
        kd.topk_divergence(s, lp, ids, divergence="skew_kl")
    assert set(TOPK_DIVERGENCE_NAMES) == {"forward_kl", "reverse_kl", "generalized_jsd"}


def test_kd_loss_default_path_is_unchanged_and_the_family_path_agrees_with_it() -> None:
    s, t, y = _logits(6)
    n = int((y != -100).sum())
    for op in (kd.kd_loss, kd.kd_logit_gradient):
        default = op(s, t, y, temperature=2.0, alpha=0.3)
        assert np.array_equal(default, op(s, t, y, temperature=2.0, alpha=0.3, divergence="forward_kl"))
        np.testing.assert_allclose(op(s, t, y, temperature=2.0, alpha=0.3, normalizer=n), default, rtol=1e-14)
        pair = op(s, TopKTeacher(*dense_to_topk(t, 7), "renormalize"), y, temperature=2.0, alpha=0.3)
        np.testing.assert_allclose(pair, default, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("doc", ["README.md", "docs/porting.md"])
def test_the_docs_list_every_member_with_its_formula(doc: str) -> None:
    text = (ROOT / doc).read_text()
    for d in DIVERGENCES:
        parameter = f" (`{d.parameter}`)" if d.parameter else ""
        assert f"- `{d.name}`{parameter}: `{d.formula}`" in text, d.name
