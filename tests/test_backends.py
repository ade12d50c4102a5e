"""Tests of the backend layer: the protocol, the registry (known / get / select), the numpy backend, and the
third-party ports in ``tests/ports`` (the good one agrees with the reference, each bug port does not)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest

import backends
from backends import numpy_backend, registry
from backends.protocol import (
    REQUIRED_MEMBERS,
    Availability,
    Backend,
    BackendError,
    conformance_problems,
    missing_members,
)
from reference import kd
from tests.ports import PORTS, VALUE_BUGS
from tests.ports.good_port import GoodPort

ROOT = Path(__file__).resolve().parents[1]
BUILTINS = ["numpy", "torch", "torch-cuda", "cupy", "triton"]


# Objects loaded by the tests below as ``tests.test_backends:<NAME>``.
class _Incomplete:
    name = "incomplete"
    device = "cpu"
    dtypes = ("float64",)

    def available(self) -> Availability:
        return Availability(True)

    def softmax(self, logits, temperature=1.0):  # pragma: no cover - never called
        return logits


INCOMPLETE = _Incomplete()


class _WrongDevice(GoodPort):
    name = "wrong-device"
    device = "tpu"


WRONG_DEVICE = _WrongDevice()


class _RaisingAvailability(GoodPort):
    name = "raising"

    def available(self) -> Availability:
        raise RuntimeError("probe exploded")


RAISING = _RaisingAvailability()


class _Unavailable(GoodPort):
    name = "unavailable"

    def available(self) -> Availability:
        return Availability(False, "the frobnicator is not installed: pip install frobnicator")


UNAVAILABLE = _Unavailable()


def make_good_port() -> GoodPort:
    """A zero-argument factory, loadable as ``tests.test_backends:make_good_port``."""
    return GoodPort()


def _failing_factory() -> GoodPort:
    raise RuntimeError("no licence")


FAILING_FACTORY = _failing_factory


@pytest.fixture(autouse=True)
def _fresh_registry():
    registry.clear_cache()
    yield
    registry.clear_cache()


# --------------------------------------------------------------------------------------------------------
# Protocol.
# --------------------------------------------------------------------------------------------------------


def test_availability_is_truthy_only_when_ok_and_frozen():
    assert Availability(True)
    assert not Availability(False, "no CUDA device: torch.cuda.is_available() is False")
    assert Availability.no("x") == Availability(False, "x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        Availability(True).ok = False  # type: ignore[misc]


def test_missing_members_lists_every_member_in_protocol_order():
    assert missing_members(object()) == list(REQUIRED_MEMBERS)
    assert missing_members(INCOMPLETE) == [
        "asarray",
        "to_numpy",
        "log_softmax",
        "cross_entropy",
        "kl_divergence",
        "kd_loss",
        "kd_logit_gradient",
    ]
    assert missing_members(GoodPort()) == []


def test_conformance_problems_report_wrong_attribute_values():
    assert conformance_problems(GoodPort()) == []
    (problem,) = conformance_problems(WRONG_DEVICE)
    assert problem == "device must be one of 'cpu', 'cuda', got 'tpu'"


@pytest.mark.parametrize("name", BUILTINS)
def test_builtins_satisfy_the_protocol(name):
    backend = backends.get(name)
    assert isinstance(backend, Backend)
    assert conformance_problems(backend) == []
    # the Triton backend's name says how it runs: "triton (cuda)" or "triton (interpreter)"
    assert backend.name == name or (name == "triton" and backend.name in ("triton (cuda)", "triton (interpreter)"))


# --------------------------------------------------------------------------------------------------------
# known / get.
# --------------------------------------------------------------------------------------------------------


def test_known_lists_the_builtins_first():
    assert backends.known()[: len(BUILTINS)] == BUILTINS


def test_known_import_and_get_do_not_import_torch_or_cupy():
    code = textwrap.dedent(
        """
        import sys
        import backends
        names = backends.known()
        objects = [backends.get(name) for name in names[:5]]
        print(names[:5], 'torch' in sys.modules, 'cupy' in sys.modules)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == f"{BUILTINS} False False"


def test_get_returns_the_entry_point_objects():
    from backends import cupy_backend, torch_backend

    assert backends.get("numpy") is numpy_backend.BACKEND
    assert backends.get("torch") is torch_backend.TORCH_CPU
    assert backends.get("torch-cuda") is torch_backend.TORCH_CUDA
    assert backends.get("cupy") is cupy_backend.BACKEND
    assert backends.get("backends.torch_backend:TORCH_CPU") is torch_backend.TORCH_CPU


def test_get_unknown_name_lists_known_backends_and_the_module_attribute_form():
    with pytest.raises(BackendError) as error:
        backends.get("jax")
    message = str(error.value)
    assert isinstance(error.value, LookupError)
    assert message.startswith("unknown backend 'jax': known backends are numpy, torch, torch-cuda, cupy")
    assert "package.module:attribute" in message


def test_get_module_that_does_not_import_names_the_module():
    with pytest.raises(BackendError, match=r"module 'no_such_package_kd\.port' cannot be imported"):
        backends.get("no_such_package_kd.port:BACKEND")


def test_get_missing_attribute_names_it():
    with pytest.raises(BackendError, match=r"module 'tests\.ports\.good_port' has no attribute 'NOPE'"):
        backends.get("tests.ports.good_port:NOPE")


@pytest.mark.parametrize("target", ["tests.ports.good_port:", ":BACKEND", "a:b:c", "tests ports:X"])
def test_get_malformed_target(target):
    with pytest.raises(BackendError, match=r"not a valid package\.module:attribute target"):
        backends.get(target)


def test_get_incomplete_plugin_names_module_and_missing_members():
    with pytest.raises(BackendError) as error:
        backends.get("tests.test_backends:INCOMPLETE")
    assert str(error.value) == (
        "backend 'tests.test_backends:INCOMPLETE' (tests.test_backends:INCOMPLETE) does not satisfy the "
        "backend protocol: missing asarray, to_numpy, log_softmax, cross_entropy, kl_divergence, kd_loss, "
        "kd_logit_gradient (the members are listed in backends/protocol.py)"
    )


def test_get_wrong_device_is_refused():
    with pytest.raises(BackendError, match="device must be one of 'cpu', 'cuda', got 'tpu'"):
        backends.get("tests.test_backends:WRONG_DEVICE")


def test_get_accepts_a_class_or_a_zero_argument_factory_and_caches_the_object():
    from_class = backends.get("tests.ports.good_port:GoodPort")
    from_factory = backends.get("tests.test_backends:make_good_port")
    assert isinstance(from_class, GoodPort)
    assert isinstance(from_factory, GoodPort)
    assert backends.get("tests.ports.good_port:GoodPort") is from_class


def test_get_failing_factory_is_reported():
    with pytest.raises(BackendError, match=r"the factory tests\.test_backends:FAILING_FACTORY failed: RuntimeError"):
        backends.get("tests.test_backends:FAILING_FACTORY")


def test_third_party_entry_points_come_after_the_builtins(monkeypatch):
    fake = [
        EntryPoint("zeta", "tests.ports.good_port:BACKEND", registry.GROUP),
        EntryPoint("numpy", "backends.numpy_backend:BACKEND", registry.GROUP),
        EntryPoint("alpha-port", "tests.test_backends:make_good_port", registry.GROUP),
    ]
    monkeypatch.setattr(registry, "entry_points", lambda group: [ep for ep in fake if ep.group == group])
    assert backends.known() == [*BUILTINS, "alpha-port", "zeta"]
    assert backends.get("zeta").name == "good-port"
    assert isinstance(backends.get("alpha-port"), GoodPort)


# --------------------------------------------------------------------------------------------------------
# select.
# --------------------------------------------------------------------------------------------------------


def _available(name: str) -> Availability:
    return backends.get(name).available()


def test_select_one_name():
    selection = backends.select("numpy")
    assert selection.backends == [numpy_backend.BACKEND]
    assert selection.left_out == []
    assert selection.names == ["numpy"]


def test_select_dedups_the_same_object_keeping_order():
    selection = backends.select("tests.ports.good_port:BACKEND, numpy, backends.numpy_backend:BACKEND,numpy")
    assert selection.names == ["good-port", "numpy"]


def test_select_all_loads_what_runs_here_and_says_why_the_rest_is_left_out():
    selection = backends.select("all")
    selected = set(selection.names)
    left_out = dict(selection.left_out)
    assert "numpy" in selected
    for name in BUILTINS:
        available = _available(name)
        if available:
            assert name in selected
        else:
            assert left_out[name] == available.reason
            assert available.reason
    assert set(left_out) | selected >= set(BUILTINS)


def test_select_cuda_selects_the_cuda_backends_or_raises_with_the_reason():
    cuda = [name for name in BUILTINS if backends.get(name).device == "cuda"]
    triton = ["triton"] if backends.get("triton").device == "cuda" else []  # "cpu" under TRITON_INTERPRET=1
    assert cuda == ["torch-cuda", "cupy", *triton]
    if all(_available(name) for name in cuda):
        assert backends.select("cuda").names == cuda
    else:
        with pytest.raises(BackendError, match=r"\(selected by 'cuda'\) cannot run here: .*(CUDA|not installed)"):
            backends.select("cuda")


@pytest.mark.parametrize("name", ["torch-cuda", "cupy"])
def test_select_an_unavailable_backend_by_name_is_an_error_not_a_skip(name):
    available = _available(name)
    if available:
        pytest.skip(f"{name} is available on this machine")
    with pytest.raises(BackendError) as error:
        backends.select(f"numpy,{name}")
    assert str(error.value) == f"backend {name!r} cannot run here: {available.reason}"


def test_select_reports_unavailable_and_raising_plugins():
    with pytest.raises(BackendError, match="cannot run here: the frobnicator is not installed"):
        backends.select("tests.test_backends:UNAVAILABLE")
    # a probe that raises is a broken backend, not one that cannot run here
    with pytest.raises(BackendError, match=r"'raising': available\(\) raised RuntimeError: probe exploded"):
        backends.select("tests.test_backends:RAISING")


def test_select_unknown_name_lists_the_known_ones():
    with pytest.raises(BackendError, match="unknown backend 'numpyy': known backends are numpy, torch"):
        backends.select("numpy,numpyy")


@pytest.mark.parametrize("spec", ["", " ", "numpy,,torch", "numpy,"])
def test_select_empty_names_are_errors(spec):
    with pytest.raises(BackendError, match="has an empty name"):
        backends.select(spec)


# --------------------------------------------------------------------------------------------------------
# The numpy backend.
# --------------------------------------------------------------------------------------------------------


def _batch(seed: int = 0, shape: tuple[int, ...] = (3, 4, 9)):
    rng = np.random.default_rng(seed)
    s = rng.normal(size=shape) * 2
    t = rng.normal(size=shape) * 2
    y = rng.integers(0, shape[-1], size=shape[:-1])
    y.reshape(-1)[[0, 5]] = -100
    t.reshape(-1, shape[-1])[1, 2] = -np.inf  # masked for both: finite KL
    s.reshape(-1, shape[-1])[1, 2] = -np.inf
    t.reshape(-1, shape[-1])[2, 3] = -np.inf  # masked for the teacher only
    return s, t, y


def _difference(a, b) -> float:
    """max |a - b|, with equal infinities counting as 0 and any NaN as +inf."""
    a, b = np.broadcast_arrays(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    with np.errstate(invalid="ignore"):
        diff = np.where(a == b, 0.0, np.abs(a - b))
    return float(np.nan_to_num(diff, nan=np.inf).max(initial=0.0))


def test_numpy_backend_is_the_reference_in_float64():
    b = numpy_backend.BACKEND
    assert b.available()
    s, t, y = _batch()
    s32 = b.asarray(s, "float32")
    assert s32.dtype == np.float32
    loss = b.kd_loss(s32, b.asarray(t, "float64"), b.asarray(y, "int64"), temperature=2.0, alpha=0.5)
    assert np.asarray(loss).dtype == np.float64  # computes in float64 always
    expected = kd.kd_loss(s32.astype(np.float64), t, y, temperature=2.0, alpha=0.5)
    assert b.to_numpy(loss) == expected
    with pytest.raises(ValueError, match="numpy backend cannot make arrays of dtype 'bfloat16'"):
        b.asarray(s, "bfloat16")


# --------------------------------------------------------------------------------------------------------
# Third-party ports: loadable by module:attribute; the good one agrees with the reference, each bug differs.
# --------------------------------------------------------------------------------------------------------

_KW = {"temperature": 2.0, "alpha": 0.4}


@pytest.mark.parametrize("module", list(PORTS))
def test_every_port_loads_by_module_attribute(module):
    backend = backends.get(PORTS[module])
    assert conformance_problems(backend) == []
    assert backends.select(PORTS[module]).backends == [backend]


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("seed", [0, 1])
def test_good_port_agrees_with_the_reference(seed, reduction):
    good = backends.get(PORTS["good_port"])
    s, t, y = _batch(seed)
    for temperature, alpha in [(1.0, 0.5), (2.0, 0.4), (0.5, 0.0), (3.0, 1.0)]:
        kw = {"temperature": temperature, "alpha": alpha, "reduction": reduction}
        np.testing.assert_allclose(good.kd_loss(s, t, y, **kw), kd.kd_loss(s, t, y, **kw), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(
            good.kd_logit_gradient(s, t, y, **kw), kd.kd_logit_gradient(s, t, y, **kw), rtol=1e-12, atol=1e-12
        )
    np.testing.assert_allclose(
        good.cross_entropy(s, y, reduction=reduction), kd.cross_entropy(s, y, reduction=reduction)
    )
    np.testing.assert_allclose(good.kl_divergence(s, t, temperature=2.0), kd.kl_divergence(s, t, temperature=2.0))
    np.testing.assert_allclose(good.softmax(s, 2.0), kd.softmax(s, 2.0), atol=1e-15)
    np.testing.assert_array_equal(np.isneginf(good.log_softmax(s)), np.isneginf(kd.log_softmax(s)))


def _bad_inputs():
    s, t, y = _batch()
    nan = s.copy()
    nan[0, 0, 0] = np.nan
    posinf = s.copy()
    posinf[0, 0, 0] = np.inf
    dead_row = s.copy()
    dead_row[1, 1] = -np.inf
    out_of_range = y.copy()
    out_of_range[0, 1] = 9
    return {
        "vocab mismatch": (s, t[..., :5], y, _KW),
        "shape mismatch": (s, t[:2], y, _KW),
        "labels shape": (s, t, y[:, :2], _KW),
        "label out of range": (s, t, out_of_range, _KW),
        "float labels": (s, t, y.astype(float), _KW),
        "bool labels": (s, t, y > 0, _KW),
        "temperature 0": (s, t, y, {**_KW, "temperature": 0.0}),
        "temperature nan": (s, t, y, {**_KW, "temperature": float("nan")}),
        "alpha 1.5": (s, t, y, {**_KW, "alpha": 1.5}),
        "nan logits": (nan, t, y, _KW),
        "+inf logits": (s, posinf, y, _KW),
        "row of -inf": (dead_row, t, y, _KW),
        "reduction": (s, t, y, {**_KW, "reduction": "avg"}),
        "ignore_index": (s, t, y, {**_KW, "ignore_index": 1.5}),
    }


@pytest.mark.parametrize("case", list(_bad_inputs()))
def test_good_port_refuses_what_the_reference_refuses(case):
    good = backends.get(PORTS["good_port"])
    s, t, y, kw = _bad_inputs()[case]
    with pytest.raises(ValueError):
        kd.kd_loss(s, t, y, **kw)
    with pytest.raises(ValueError):
        good.kd_loss(s, t, y, **kw)
    with pytest.raises(ValueError):
        good.kd_logit_gradient(s, t, y, **kw)


def _max_difference_from_reference(backend) -> float:
    """The largest |port - reference| over inputs chosen so that every classic bug shows."""
    s, t, y = _batch(3)
    worst = 0.0
    for reduction in ("none", "sum", "mean"):
        kw = {**_KW, "reduction": reduction}
        worst = max(worst, _difference(backend.kd_loss(s, t, y, **kw), kd.kd_loss(s, t, y, **kw)))
        gradient = backend.kd_logit_gradient(s, t, y, **kw)
        worst = max(worst, _difference(gradient, kd.kd_logit_gradient(s, t, y, **kw)))
    large = s * 500.0  # exp overflows without the max shift
    with np.errstate(all="ignore"):
        worst = max(worst, _difference(backend.softmax(large), kd.softmax(large)))
    return worst


def test_good_port_has_no_difference_on_the_bug_revealing_inputs():
    assert _max_difference_from_reference(backends.get(PORTS["good_port"])) < 1e-12


@pytest.mark.parametrize("module", VALUE_BUGS)
def test_each_bug_port_differs_from_the_reference(module):
    assert _max_difference_from_reference(backends.get(PORTS[module])) > 1e-3
