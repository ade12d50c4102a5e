"""Scalars reach the Triton kernels at the precision of the computation, as on a GPU.

Compiled Triton types a Python ``float`` kernel argument as float32. A float64 kernel handed ``1 / T`` or
``log beta`` as a float computes with them rounded (relative error ~1e-8) on a GPU, while the interpreter, which
passes the float through, hides it. The backend therefore (1) makes the interpreter round float arguments to
float32 as a GPU does (:mod:`backends.triton_interpreter`), (2) refuses any Python float in a launch, and (3)
passes its scalars in a ``PARAMS`` tensor of the accumulation dtype. These tests hold all three.

They need the Triton interpreter, switched on before triton is imported: the outer test runs this file again
in a ``TRITON_INTERPRET=1`` subprocess, where the others run.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("triton")

from tests.interpreter_run import inner, outer, run_inner


@outer
def test_scalars_under_the_interpreter() -> None:
    run_inner(__file__, "3 passed, 1 skipped", timeout_s=600)


@inner
def test_the_interpreter_rounds_a_float_argument_to_float32_as_a_gpu_does() -> None:
    import torch
    import triton
    import triton.language as tl

    from backends.triton_interpreter import wrap_float_arguments

    @triton.jit
    def scale(X, OUT, factor):
        tl.store(OUT, tl.load(X) * factor)

    wrap_float_arguments()
    x = torch.ones(1, dtype=torch.float64)
    out = torch.empty_like(x)
    scale[(1,)](x, out, 1.0 / 3.0)
    assert float(out) == float(np.float32(1.0 / 3.0)) != 1.0 / 3.0


@inner
def test_a_python_float_kernel_argument_is_refused() -> None:
    import torch

    from backends import triton_kernels as kernels
    from backends.triton_backend import BACKEND

    s = torch.zeros((1, 4), dtype=torch.float64)
    with pytest.raises(TypeError, match=r"Python floats.*PARAMS"):
        BACKEND._launch(kernels.row_stats, (1,), s, s, s, 1, 4, 4, 4, 0.5)


@inner
def test_float64_results_keep_float64_constants() -> None:
    """T = 3 and beta = 0.3 are not float32 numbers: with float32 constants the float64 results below are off
    by ~1e-7 (measured before the PARAMS tensor); with float64 constants they match the reference to ~1e-15."""
    import torch

    from backends.triton_backend import BACKEND as B
    from reference import kd

    rng = np.random.default_rng(0)
    s, t = rng.normal(0, 4, (4, 50)), rng.normal(0, 4, (4, 50))
    y = np.array([1, 2, -100, 4])
    ts, tt, ty = torch.tensor(s), torch.tensor(t), torch.tensor(y)
    lp, ids = kd.log_softmax(t)[:, :6], np.tile(np.arange(6), (4, 1))
    T, beta = 3.0, 0.3
    pairs = [
        (B.log_softmax(ts, temperature=T), kd.log_softmax(s, temperature=T)),
        (B.kl_divergence(ts, tt, temperature=T), kd.kl_divergence(s, t, temperature=T)),
        (B.kd_loss(ts, tt, ty, temperature=T, alpha=0.3), kd.kd_loss(s, t, y, temperature=T, alpha=0.3)),
        (B.kd_logit_gradient(ts, tt, ty, temperature=T, alpha=0.3),
         kd.kd_logit_gradient(s, t, y, temperature=T, alpha=0.3)),
        (B.generalized_jsd(ts, tt, temperature=T, beta=beta), kd.generalized_jsd(s, t, temperature=T, beta=beta)),
        (B.skew_reverse_kl_gradient(ts, tt, temperature=T, skew=beta),
         kd.skew_reverse_kl_gradient(s, t, temperature=T, skew=beta)),
        (B.topk_divergence_gradient(ts, torch.tensor(lp), torch.tensor(ids), mode="renormalize", temperature=T,
                                    divergence="generalized_jsd", beta=beta),
         kd.topk_divergence_gradient(s, lp, ids, mode="renormalize", temperature=T, divergence="generalized_jsd",
                                     beta=beta)),
    ]  # fmt: skip
    errors = [float(np.max(np.abs(B.to_numpy(got) - want))) for got, want in pairs]
    assert max(errors) < 1e-13, errors
