"""Tests of the cupy backend and its fused CUDA kernels.

Three layers, so that most of it runs on any machine:

1. **Static checks of the kernel source** (always run): balanced braces, ``#define`` constants that agree
   with the Python ones, the instantiated templates exist.
2. **Availability** (always run): here, without a usable device, ``available()`` is falsy with a reason and
   ``select("cupy")`` raises BackendError naming it (a requested backend that cannot run is an error).
3. **The kernels against the reference**, twice:

   * ``emulated``: the *same* CUDA source compiled as C++20 by g++ with a small shim (one std::thread per
     CUDA thread, ``__syncthreads`` as a std::barrier, blocks run one after another) and driven by the
     backend's own host code with numpy arrays. This checks the kernels' logic and the host code on a CPU;
     it is skipped only when no g++ is found.
   * ``cupy``: the real backend on a CUDA device; skipped with the reason when there is none.

An NVRTC compile of the source is also attempted when cupy and the NVRTC library are importable.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import backends
from backends import _cupy_kernels as K
from backends import cupy_backend
from backends.cupy_backend import BACKEND, CupyBackend
from backends.protocol import Availability, BackendError
from reference import kd

TOLERANCE = {"float64": 1e-6, "float32": 1e-4}
"""max |backend - reference| / max(1, |reference|), the reference on the inputs rounded to the dtype."""

REDUCTIONS = ["none", "sum", "mean"]
HYPER = [(1.0, 0.5), (2.5, 0.3), (0.5, 0.0), (4.0, 1.0)]

_AVAILABLE = BACKEND.available()


# --------------------------------------------------------------------------------------------------------
# 1. Static checks of the kernel source.
# --------------------------------------------------------------------------------------------------------


def _code_only(source: str) -> str:
    """The source without comments and string/char literals."""
    source = re.sub(r"//[^\n]*", "", source)
    source = re.sub(r"/\*.*?\*/", "", source, flags=re.S)
    return re.sub(r"'(\\.|[^'])'|\"(\\.|[^\"])*\"", "", source)


def test_kernel_source_brackets_balance():
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[tuple[str, int]] = []
    for line_number, line in enumerate(_code_only(K.SOURCE).splitlines(), 1):
        for char in line:
            if char in "([{":
                stack.append((char, line_number))
            elif char in pairs:
                assert stack, f"unmatched {char!r} at line {line_number}"
                opened, where = stack.pop()
                assert opened == pairs[char], f"{opened!r} from line {where} closed by {char!r} at {line_number}"
    assert not stack, f"unclosed {stack[-1][0]!r} from line {stack[-1][1]}"


def test_kernel_defines_agree_with_the_python_constants():
    defines = dict(re.findall(r"^#define (\w+) (\d+)$", K.SOURCE, flags=re.M))
    for name in [n for n in dir(K) if n.startswith(("STAT_", "FLAG_", "MODE_")) or n == "MAX_THREADS"]:
        assert int(defines[name]) == getattr(K, name), name
    assert len([n for n in defines if n.startswith("STAT_")]) == K.N_STATS


def test_every_instantiated_template_is_a_kernel():
    code = _code_only(K.SOURCE)
    for expression in K.NAME_EXPRESSIONS:
        kernel, _ = re.fullmatch(r"(\w+)<(float|double)>", expression).groups()
        assert re.search(rf"template <typename T>\s*__global__ void {kernel}\(", code), kernel


@pytest.mark.parametrize(("vocab", "threads"), [(1, 32), (32, 32), (33, 64), (200, 256), (50257, 256)])
def test_row_threads_is_a_power_of_two_within_bounds(vocab, threads):
    assert cupy_backend.row_threads(vocab) == threads


def test_kernel_source_compiles_with_nvrtc():
    nvrtc = pytest.importorskip("cupy_backends.cuda.libs.nvrtc", reason="cupy is not installed")
    try:
        nvrtc.getVersion()
    except Exception as error:
        pytest.skip(f"the NVRTC library is not loadable here: {type(error).__name__}")
    program = nvrtc.createProgram(K.SOURCE, "kd_kernels.cu", [], [])
    for expression in K.NAME_EXPRESSIONS:
        nvrtc.addNameExpression(program, expression)
    try:
        nvrtc.compileProgram(program, ["-arch=compute_90", "--std=c++17"])
    except Exception:
        pytest.fail("NVRTC rejected the kernels:\n" + nvrtc.getProgramLog(program))
    assert all(nvrtc.getLoweredName(program, e) for e in K.NAME_EXPRESSIONS)


# --------------------------------------------------------------------------------------------------------
# 2. Availability and selection.
# --------------------------------------------------------------------------------------------------------


def test_available_never_raises_and_gives_a_reason_when_false():
    available = CupyBackend().available()
    assert isinstance(available, Availability)
    if not available:
        assert available.reason.startswith(
            ("cupy is not installed: pip install 'kd-contracts[cuda]'", "no CUDA device: ", "cupy cannot")
        ), available.reason


@pytest.mark.skipif(bool(_AVAILABLE), reason="cupy runs on this machine")
def test_selecting_cupy_without_a_device_is_an_error():
    with pytest.raises(BackendError) as error:
        backends.select("cupy")
    assert re.search("CUDA|not installed", str(error.value))
    assert str(error.value) == f"backend 'cupy' cannot run here: {_AVAILABLE.reason}"
    with pytest.raises(BackendError, match="cannot run here"):
        BACKEND.kd_loss(np.zeros((1, 2)), np.zeros((1, 2)), np.zeros(1, dtype=int), temperature=1.0, alpha=0.5)


# --------------------------------------------------------------------------------------------------------
# 3. The kernels against the reference: emulated on the CPU, and on a CUDA device when there is one.
# --------------------------------------------------------------------------------------------------------

_SHIM = r"""
// Minimal CUDA emulation. kd_row_stats synchronizes, so each of its CUDA threads is a std::thread, the
// threads walk the blocks in turn, and __syncthreads is a std::barrier (also crossed between blocks, so
// that a block's shared memory is not reused while it is still being read). kd_elementwise never
// synchronizes, so its threads run one after another on the calling thread.
#include <barrier>
#include <cmath>
#include <cstring>
#include <thread>
#include <vector>
struct Dim { unsigned x; };
thread_local Dim threadIdx, blockIdx;
static Dim blockDim, gridDim;
static std::barrier<>* current_barrier;
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__
#define __shared__ static
inline void __syncthreads() { current_barrier->arrive_and_wait(); }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline double __longlong_as_double(long long i) { double d; std::memcpy(&d, &i, 8); return d; }
template <class F> void launch_threads(unsigned grid, unsigned block, F body) {
    blockDim.x = block;
    gridDim.x = grid;
    std::barrier<> barrier(block);
    current_barrier = &barrier;
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < block; ++t)
        threads.emplace_back([&, t] {
            threadIdx.x = t;
            for (unsigned b = 0; b < grid; ++b) {
                blockIdx.x = b;
                body();
                barrier.arrive_and_wait();
            }
        });
    for (auto& thread : threads) thread.join();
}
template <class F> void launch_in_turn(unsigned grid, unsigned block, F body) {
    blockDim.x = block;
    gridDim.x = grid;
    for (unsigned b = 0; b < grid; ++b)
        for (unsigned t = 0; t < block; ++t) {
            blockIdx.x = b;
            threadIdx.x = t;
            body();
        }
}
"""

_EXPORTS = r"""
#define EXPORT_ROWS(T, NAME)                                                                              \
    extern "C" void NAME(unsigned grid, unsigned block, const T* s, const T* t, const long long* y,     \
                         int has_teacher, int has_labels, long long rows, long long vocab, T inv_t,     \
                         T alpha, T kl_weight, long long ignore_index, T* stats, int* flags) {          \
        launch_threads(grid, block, [=] { kd_row_stats<T>(s, t, y, has_teacher, has_labels, rows, vocab, inv_t, \
                                                  alpha, kl_weight, ignore_index, stats, flags); });    \
    }
#define EXPORT_ELEMENTWISE(T, NAME)                                                                       \
    extern "C" void NAME(unsigned grid, unsigned block, const T* x, const T* t, const long long* y,     \
                         const T* stats, long long rows, long long vocab, T inv_t, T alpha,             \
                         T soft_weight, long long ignore_index, const T* scale, int mode, T* out) {     \
        launch_in_turn(grid, block, [=] { kd_elementwise<T>(x, t, y, stats, rows, vocab, inv_t, alpha,          \
                                                    soft_weight, ignore_index, scale, mode, out); });   \
    }
EXPORT_ROWS(float, rows_float)
EXPORT_ROWS(double, rows_double)
EXPORT_ELEMENTWISE(float, elementwise_float)
EXPORT_ELEMENTWISE(double, elementwise_double)
"""

_CTYPES = {
    np.dtype(np.int32): ctypes.c_int,
    np.dtype(np.int64): ctypes.c_longlong,
    np.dtype(np.float32): ctypes.c_float,
    np.dtype(np.float64): ctypes.c_double,
}


class _EmulatedKernels:
    """Launches the g++-compiled kernels on numpy arrays, with the launcher interface of _CupyKernels."""

    def __init__(self, library: ctypes.CDLL) -> None:
        self.library = library

    @staticmethod
    def _argument(value):
        if isinstance(value, np.ndarray):
            assert value.flags.c_contiguous
            return ctypes.c_void_p(value.ctypes.data)
        return _CTYPES[np.dtype(type(value))](value)

    def _launch(self, kind: str, dtype, grid: int, block: int, args) -> None:
        function = getattr(self.library, f"{kind}_{'float' if np.dtype(dtype) == np.float32 else 'double'}")
        function(ctypes.c_uint(grid), ctypes.c_uint(block), *map(self._argument, args))

    def row_stats(self, dtype, grid: int, block: int, args) -> None:
        assert 1 <= grid and block & (block - 1) == 0 and block <= K.MAX_THREADS
        self._launch("rows", dtype, grid, block, args)

    def elementwise(self, dtype, grid: int, block: int, args) -> None:
        self._launch("elementwise", dtype, grid, block, args)


class EmulatedCupyBackend(CupyBackend):
    """The cupy backend's host code with numpy as its array module and the emulated kernels."""

    name = "cupy-emulated"
    device = "cpu"

    def __init__(self, kernels: _EmulatedKernels) -> None:
        super().__init__()
        self._emulated = kernels

    def available(self) -> Availability:
        return Availability.yes()

    def _runtime(self):
        return np, self._emulated


@pytest.fixture(scope="module")
def emulated(tmp_path_factory) -> EmulatedCupyBackend:
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("no g++ to emulate the CUDA kernels on the CPU")
    directory = tmp_path_factory.mktemp("cuda_emulation")
    source, library = directory / "kernels.cpp", directory / "kernels.so"
    source.write_text(_SHIM + K.SOURCE + _EXPORTS)
    command = [compiler, "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", str(source), "-o", str(library)]
    built = subprocess.run(command, capture_output=True, text=True)
    if built.returncode != 0 and "c++20" in built.stderr:
        pytest.skip(f"g++ cannot compile C++20 here: {built.stderr.strip()[:200]}")
    assert built.returncode == 0, built.stderr
    return EmulatedCupyBackend(_EmulatedKernels(ctypes.CDLL(str(Path(library)))))


@pytest.fixture(params=["emulated", "cupy"])
def backend(request):
    if request.param == "cupy":
        if not _AVAILABLE:
            pytest.skip(_AVAILABLE.reason)
        return BACKEND
    return request.getfixturevalue("emulated")


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


def _ops(b, s, t, y, rs, rt, ry, temperature, alpha, reduction):
    kw = {"temperature": temperature, "alpha": alpha, "reduction": reduction}
    yield "kd_loss", b.kd_loss(s, t, y, **kw), kd.kd_loss(rs, rt, ry, **kw)
    yield "kd_logit_gradient", b.kd_logit_gradient(s, t, y, **kw), kd.kd_logit_gradient(rs, rt, ry, **kw)
    yield (
        "cross_entropy",
        b.cross_entropy(s, y, reduction=reduction),
        kd.cross_entropy(rs, ry, reduction=reduction),
    )
    yield (
        "kl_divergence",
        b.kl_divergence(s, t, temperature=temperature),
        kd.kl_divergence(rs, rt, temperature=temperature),
    )
    yield "softmax", b.softmax(s, temperature), kd.softmax(rs, temperature)
    yield "log_softmax", b.log_softmax(t, temperature), kd.log_softmax(rt, temperature)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(6, 11), (2, 3, 40), (3, 300)], ids=["2d", "3d", "wide"])
def test_parity_with_the_reference(backend, dtype, reduction, shape):
    s, t, y = batch(len(shape) * 10 + shape[-1] + REDUCTIONS.index(reduction), shape)
    S, T, Y = backend.asarray(s, dtype), backend.asarray(t, dtype), backend.asarray(y, "int64")
    rs, rt = backend.to_numpy(S), backend.to_numpy(T)
    for temperature, alpha in HYPER:
        for op, actual, expected in _ops(backend, S, T, Y, rs, rt, y, temperature, alpha, reduction):
            assert tuple(actual.shape) == np.shape(expected), op
            assert actual.dtype == np.dtype(dtype), op
            error = difference(backend.to_numpy(actual), expected)
            assert error <= TOLERANCE[dtype], f"{op} T={temperature} alpha={alpha}: error {error:.3g}"
            if dtype == "float64":
                assert error <= 1e-12, f"{op}: float64 error {error:.3g} is far above rounding"


def test_grid_stride_loop_covers_inputs_larger_than_the_grid(backend, monkeypatch):
    monkeypatch.setattr(cupy_backend, "MAX_ELEMENTWISE_BLOCKS", 2)
    s, t, y = batch(5, (4, 333))
    S, T, Y = backend.asarray(s, "float64"), backend.asarray(t, "float64"), backend.asarray(y, "int64")
    kw = {"temperature": 2.0, "alpha": 0.5}
    gradient = backend.to_numpy(backend.kd_logit_gradient(S, T, Y, **kw))
    assert difference(gradient, kd.kd_logit_gradient(s, t, y, **kw)) <= 1e-12


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_large_logits_stay_finite(backend, dtype):
    s, t, y = batch(7, (5, 17), scale=1e4)
    S, T, Y = backend.asarray(s, dtype), backend.asarray(t, dtype), backend.asarray(y, "int64")
    rs, rt = backend.to_numpy(S), backend.to_numpy(T)
    for op, actual, expected in _ops(backend, S, T, Y, rs, rt, y, 2.0, 0.5, "mean"):
        result = backend.to_numpy(actual)
        assert not np.isnan(result).any(), op
        # float32 logits of 1e4 carry absolute rounding errors of ~1e-3 in their differences
        assert difference(result, expected) <= (1e-9 if dtype == "float64" else 1e-3), op


def test_masked_student_under_teacher_mass_gives_infinite_kl_and_zero_weight_is_exact(backend):
    s = np.array([[0.0, -np.inf, 1.0], [0.5, 0.2, 0.1], [-np.inf, 3.0, -np.inf]])
    t = np.array([[0.0, 2.0, 1.0], [0.1, 0.2, 0.3], [-np.inf, 0.0, -np.inf]])
    y = np.array([0, 2, 1])
    S, T, Y = backend.asarray(s, "float64"), backend.asarray(t, "float64"), backend.asarray(y, "int64")
    kl = backend.to_numpy(backend.kl_divergence(S, T, temperature=2.0))
    np.testing.assert_allclose(kl, kd.kl_divergence(s, t, temperature=2.0), rtol=1e-12)
    assert np.isposinf(kl[0]) and kl[2] == 0.0
    for alpha in (1.0, 0.5):
        kw = {"temperature": 2.0, "alpha": alpha, "reduction": "none"}
        np.testing.assert_allclose(backend.to_numpy(backend.kd_loss(S, T, Y, **kw)), kd.kd_loss(s, t, y, **kw))
        gradient = backend.to_numpy(backend.kd_logit_gradient(S, T, Y, **kw))
        np.testing.assert_allclose(gradient, kd.kd_logit_gradient(s, t, y, **kw), atol=1e-15)
    label_on_masked = backend.asarray(np.array([1, 2, 1]), "int64")
    ce = backend.to_numpy(backend.cross_entropy(S, label_on_masked, reduction="none"))
    assert np.isposinf(ce[0])


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_no_valid_rows_gives_zero_loss_and_gradient(backend, reduction):
    s, t, _ = batch(3, (4, 6))
    S, T = backend.asarray(s, "float64"), backend.asarray(t, "float64")
    Y = backend.asarray(np.full(4, -100), "int64")
    kw = {"temperature": 2.0, "alpha": 0.5, "reduction": reduction}
    assert not backend.to_numpy(backend.kd_loss(S, T, Y, **kw)).any()
    assert not backend.to_numpy(backend.kd_logit_gradient(S, T, Y, **kw)).any()
    assert not backend.to_numpy(backend.cross_entropy(S, Y, reduction=reduction)).any()


def test_empty_batch(backend):
    S = backend.asarray(np.zeros((0, 5)), "float64")
    Y = backend.asarray(np.zeros(0, dtype=np.int64), "int64")
    kw = {"temperature": 2.0, "alpha": 0.5}
    assert float(backend.to_numpy(backend.kd_loss(S, S, Y, **kw))) == 0.0
    assert backend.to_numpy(backend.kd_logit_gradient(S, S, Y, **kw)).shape == (0, 5)
    assert backend.to_numpy(backend.softmax(S)).shape == (0, 5)


_S, _T, _Y = batch(21, (3, 4, 6))
_KW = {"temperature": 2.0, "alpha": 0.5}


def _with(array, index, value):
    copy = array.copy()
    copy[index] = value
    return copy


KD_BAD = {
    "vocab mismatch": (_S, _T[..., :5], _Y, _KW),
    "labels shape": (_S, _T, _Y[:, :2], _KW),
    "label out of range": (_S, _T, _with(_Y, (2, 1), 6), _KW),
    "negative label": (_S, _T, _with(_Y, (0, 3), -1), _KW),
    "float labels": (_S, _T, _Y.astype(np.float64), _KW),
    "temperature 0": (_S, _T, _Y, {**_KW, "temperature": 0.0}),
    "alpha 1.5": (_S, _T, _Y, {**_KW, "alpha": 1.5}),
    "student nan": (_with(_S, (1, 2, 3), np.nan), _T, _Y, _KW),
    "teacher nan": (_S, _with(_T, (2, 0, 0), np.nan), _Y, _KW),
    "student +inf": (_with(_S, (0, 1, 5), np.inf), _T, _Y, _KW),
    "teacher row of -inf": (_S, _with(_T, (1, 3), -np.inf), _Y, _KW),
    "student row of -inf": (_with(_S, (0, 0), -np.inf), _T, _Y, _KW),
    "nan and bad label: student first": (_with(_S, (2, 2, 2), np.nan), _T, _with(_Y, (0, 0), 99), _KW),
    "reduction": (_S, _T, _Y, {**_KW, "reduction": "avg"}),
}


def _message(fn, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as error:
        fn(*args, **kwargs)
    return str(error.value)


def _device(backend, x):
    x = np.asarray(x)
    if x.dtype.kind == "f":
        return backend.asarray(x, "float64")
    if x.dtype.kind in "iu":
        return backend.asarray(x, "int64")
    return x  # bool labels stay bool (a numpy array: converted and refused by the backend)


@pytest.mark.parametrize("case", list(KD_BAD))
@pytest.mark.parametrize("op", ["kd_loss", "kd_logit_gradient"])
def test_bad_inputs_raise_the_reference_message(backend, op, case):
    s, t, y, kw = KD_BAD[case]
    expected = _message(getattr(kd, op), s, t, y, **kw)
    if case == "float labels":
        y_device = backend.asarray(y, "float64")
    else:
        y_device = _device(backend, y)
    actual = _message(getattr(backend, op), _device(backend, s), _device(backend, t), y_device, **kw)
    assert actual == expected


OTHER_BAD = {
    "softmax nan": ("softmax", (_with(_S, (0, 0, 0), np.nan),), {}),
    "softmax temperature": ("softmax", (_S,), {"temperature": 0}),
    "log_softmax row of -inf": ("log_softmax", (_with(_S, (2, 3), -np.inf),), {}),
    "cross_entropy label": ("cross_entropy", (_S, _with(_Y, (1, 1), 6)), {}),
    "cross_entropy nan before labels shape": ("cross_entropy", (_with(_S, (0, 0, 1), np.nan), _Y[:2]), {}),
    "kl vocab mismatch": ("kl_divergence", (_S, _T[..., :4]), {}),
    "kl teacher +inf": ("kl_divergence", (_S, _with(_T, (0, 0, 0), np.inf)), {}),
}


@pytest.mark.parametrize("case", list(OTHER_BAD))
def test_bad_inputs_of_the_other_ops_raise_the_reference_message(backend, case):
    op, args, kw = OTHER_BAD[case]
    expected = _message(getattr(kd, op), *args, **kw)
    assert _message(getattr(backend, op), *(_device(backend, a) for a in args), **kw) == expected
