"""The Triton top-k kernels (backends/triton_topk.py) on what the falsifiers do not draw: vocabularies spanning
many chunks (the suite's are at most 16 wide, one chunk), bfloat16 students, and ``kd_loss``'s backward with a
top-k teacher (``grad_output`` folded into the row weights).

The checks need the Triton interpreter, which must be switched on before triton is first imported: the test
:func:`test_the_top_k_kernels_under_the_interpreter` runs this file again in a pytest subprocess with
``TRITON_INTERPRET=1``, where the other tests run (they are skipped in the outer run, which runs them).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("triton")

from tests.interpreter_run import inner, outer, run_inner


@outer
def test_the_top_k_kernels_under_the_interpreter() -> None:
    run_inner(__file__, "5 passed, 1 skipped", timeout_s=900)


def _scaled_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got - want) / np.maximum(1.0, np.abs(want)), initial=0.0))


def _case(rows: int, vocab: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from reference.topk import dense_to_topk

    rng = np.random.default_rng(seed)
    s = rng.normal(0.0, 3.0, (rows, vocab))
    logprobs, ids = dense_to_topk(rng.normal(0.0, 3.0, (rows, vocab)), k)
    order = rng.permuted(np.broadcast_to(np.arange(k), ids.shape), axis=-1)
    labels = rng.integers(0, vocab, rows)
    labels[rng.random(rows) < 0.3] = -100
    return s, np.take_along_axis(logprobs, order, -1), np.take_along_axis(ids, order, -1), labels


# Tolerances, errors scaled by max(1, |expected|): float64 and float32 as F-TOPK-PARITY-001; bfloat16 values are
# computed in float32 from the rounded inputs (as float32), its gradient is rounded to bfloat16 (2^-8 relative).
TOLERANCE = {"float64": (1e-9, 1e-9), "float32": (1e-5, 1e-5), "bfloat16": (1e-5, 8e-3)}


@inner
@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
def test_values_and_gradients_equal_the_reference_across_many_chunks(dtype: str) -> None:
    """V = 200 is 7 chunks of 32 in the interpreter, V = 64 4 chunks of 16: the online log-sum-exps and the id
    membership of the tail cross chunk boundaries; K from 1 to V, both modes, every top-k member."""
    import torch

    from backends.triton_backend import BACKEND
    from reference import kd as ref

    worst = {"value": 0.0, "gradient": 0.0}
    for vocab, k, mode, divergence, beta, seed in [
        (200, 1, "tail", "forward_kl", None, 1),
        (200, 37, "tail", "reverse_kl", None, 2),
        (200, 37, "tail", "generalized_jsd", 0.3, 3),
        (64, 63, "tail", "forward_kl", None, 4),
        (64, 64, "tail", "generalized_jsd", 0.7, 5),
        (200, 1, "renormalize", "reverse_kl", None, 6),
        (200, 37, "renormalize", "forward_kl", None, 7),
        (64, 64, "renormalize", "generalized_jsd", 0.3, 8),
    ]:
        s, logprobs, ids, _ = _case(3, vocab, k, seed)
        st = torch.tensor(s).to(getattr(torch, dtype))
        lpt = torch.tensor(logprobs).to(torch.float64 if dtype == "float64" else torch.float32)
        kw = {"mode": mode, "divergence": divergence, "beta": beta, "temperature": 1.0 if mode == "tail" else 2.5}
        value = BACKEND.topk_divergence(st, lpt, torch.tensor(ids), **kw)
        gradient = BACKEND.topk_divergence_gradient(st, lpt, torch.tensor(ids), **kw)
        assert gradient.dtype == st.dtype and value.dtype == (torch.float32 if dtype == "bfloat16" else st.dtype)
        s_in, lp_in = st.double().numpy(), lpt.double().numpy()
        want_value = ref.topk_divergence(s_in, lp_in, ids, **kw)
        want_gradient = ref.topk_divergence_gradient(s_in, lp_in, ids, **kw)
        worst["value"] = max(worst["value"], _scaled_error(value.double().numpy(), want_value))
        worst["gradient"] = max(worst["gradient"], _scaled_error(gradient.double().numpy(), want_gradient))
    value_tol, gradient_tol = TOLERANCE[dtype]
    assert worst["value"] <= value_tol and worst["gradient"] <= gradient_tol, worst


@inner
def test_kd_loss_backward_with_a_top_k_teacher_is_the_kernel_gradient() -> None:
    """``kd_loss(..., reduction='none').backward(w)`` on Triton equals the torch backend's autograd through its
    own family path, for both modes, alpha inside (0, 1) and at both ends; and ``kd_logit_gradient`` equals the
    backward of the mean."""
    import torch

    from backends.torch_backend import TorchBackend
    from backends.triton_backend import BACKEND
    from reference.topk import TopKTeacher

    reference_backend = TorchBackend("cpu")
    for mode, alpha, seed in [("tail", 0.4, 11), ("renormalize", 0.0, 12), ("tail", 1.0, 13), ("renormalize", 0.7, 14)]:
        s, logprobs, ids, labels = _case(5, 90, 9, seed)
        teacher = TopKTeacher(torch.tensor(logprobs), torch.tensor(ids), mode)
        kw = {"temperature": 1.0 if mode == "tail" else 1.7, "alpha": alpha}
        kw |= {"divergence": "generalized_jsd", "beta": 0.4}
        weights = torch.tensor(np.random.default_rng(seed).uniform(0.5, 2.0, 5))
        results = []
        for backend in (BACKEND, reference_backend):
            x = torch.tensor(s, requires_grad=True)
            rows = backend.kd_loss(x, teacher, torch.tensor(labels), reduction="none", **kw)
            rows.backward(weights)
            results.append((rows.detach().numpy(), x.grad.numpy()))
        assert _scaled_error(results[0][0], results[1][0]) < 1e-12
        assert _scaled_error(results[0][1], results[1][1]) < 1e-12
        x = torch.tensor(s, requires_grad=True)
        BACKEND.kd_loss(x, teacher, torch.tensor(labels), **kw).backward()
        direct = BACKEND.kd_logit_gradient(torch.tensor(s), teacher, torch.tensor(labels), **kw)
        assert _scaled_error(direct.numpy(), x.grad.numpy()) < 1e-14


@inner
def test_the_topk_row_hook_is_the_kernel() -> None:
    """``TritonBackend._topk``, the row hook of TorchFamily's top-k paths, returns the reference's value and
    gradient (in the student's dtype) from the kernel."""
    import torch

    from backends.triton_backend import BACKEND
    from reference import kd as ref

    s, logprobs, ids, _ = _case(4, 40, 6, 21)
    for mode, temperature in (("tail", 1.0), ("renormalize", 0.7)):
        value, gradient = BACKEND._topk(
            torch.tensor(s), torch.tensor(logprobs), torch.tensor(ids), mode, "reverse_kl", None, temperature
        )
        kw = {"mode": mode, "divergence": "reverse_kl", "temperature": temperature}
        assert _scaled_error(value.numpy(), ref.topk_divergence(s, logprobs, ids, **kw)) < 1e-12
        assert _scaled_error(gradient.numpy(), ref.topk_divergence_gradient(s, logprobs, ids, **kw)) < 1e-12
