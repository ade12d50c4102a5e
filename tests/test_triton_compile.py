"""Every Triton kernel compiles for an H100 (sm_90), on a machine without a GPU.

The interpreter (``TRITON_INTERPRET=1``), which runs the falsifier suite on CPU, executes the kernels' Python
directly: it never runs Triton's code generator, so a kernel can pass the whole suite there and still fail to
compile for a GPU (a global that is not ``tl.constexpr``, a construct the compiler does not support, a type it
cannot unify across branches). ``triton.compile`` needs no device for a named target: this test lowers each
kernel, in the variants the backend launches (every dtype, member and flag combination that changes the code),
through Triton IR, PTX and ptxas to a cubin for ``GPUTarget("cuda", 90, 32)``.

What it does not check: that the cubin runs, or how fast (that needs a GPU: ``--backend triton`` on the device).
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import pytest

triton = pytest.importorskip("triton")

if os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0"):
    pytest.skip("the compiler is not used under TRITON_INTERPRET=1", allow_module_level=True)

import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from backends import triton_family_kernels as family  # noqa: E402
from backends import triton_kernels as core  # noqa: E402
from backends import triton_terms as terms  # noqa: E402
from backends import triton_topk_kernels as topk  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
INPUTS = {"S", "T", "Z", "OUT"}
"""Pointer arguments in the input's (or the output's) dtype; the other float pointers are in the accumulation
dtype (statistics, parameters, weights, per-row results)."""
INTEGERS = {"Y": "i64", "IDS": "i64", "VALID": "i1"}
ACC = {"fp32": tl.float32, "fp64": tl.float64}


def compile_kernel(kernel: Any, dtype: str, acc: str, **constexprs: Any) -> None:
    """Compile ``kernel`` with inputs of ``dtype`` (``fp32``, ``fp64``, ``bf16``), accumulating in ``acc``."""
    signature, values = {}, {}
    for index, param in enumerate(kernel.params):
        if param.is_constexpr:
            signature[param.name] = "constexpr"
            values[(index,)] = ACC[acc] if param.name == "ACC" else constexprs[param.name]
        elif param.name.isupper():
            signature[param.name] = "*" + INTEGERS.get(param.name, dtype if param.name in INPUTS else acc)
        else:
            signature[param.name] = "i32"
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=values), target=TARGET)
    assert compiled.asm.get("cubin"), f"{kernel.__name__}: no cubin"


DTYPES = [("fp32", "fp32"), ("bf16", "fp32"), ("fp64", "fp64")]


@pytest.mark.parametrize(("dtype", "acc"), DTYPES)
def test_the_core_kernels_compile(dtype: str, acc: str) -> None:
    blocks = {"BLOCK_N": 1, "BLOCK_V": 1024}
    for ce, q, p in [(True, True, True), (False, True, False), (True, False, False)]:
        compile_kernel(core.row_stats, dtype, acc, HAS_CE=ce, HAS_Q=q, HAS_P=p, UPDATE=core.online_lse_step, **blocks)
    for log in (False, True):
        compile_kernel(core.softmax_out, dtype, acc, LOG=log, **blocks)
    for ce, kl in [(True, True), (False, True), (True, False)]:
        compile_kernel(core.kd_gradient, dtype, acc, HAS_CE=ce, HAS_KL=kl, **blocks)


@pytest.mark.parametrize("member", list(terms.TERMS))
def test_the_divergence_family_kernels_compile(member: str) -> None:
    blocks = {"BLOCK_N": 1, "BLOCK_V": 1024, "TERMS": terms.TERMS[member]}
    for dtype, acc in DTYPES if member == "generalized_jsd" else DTYPES[:1]:
        compile_kernel(family.divergence_rows, dtype, acc, **blocks)
        compile_kernel(family.divergence_gradient, dtype, acc, HAS_CE=True, HAS_DIV=True, HAS_WEIGHT=True, **blocks)
    compile_kernel(family.divergence_gradient, "fp32", "fp32", HAS_CE=False, HAS_DIV=True, HAS_WEIGHT=False, **blocks)


@pytest.mark.parametrize("member", ["forward_kl", "reverse_kl", "generalized_jsd"])
def test_the_top_k_kernel_compiles(member: str) -> None:
    fixed = {"TERMS": terms.TERMS[member], "UPDATE": core.online_lse_step, "TAIL_Q": topk.student_tail,
             "BLOCK_N": 1, "BLOCK_V": 1024, "BLOCK_K": 32}  # fmt: skip
    modes = [(True, False), (False, True), (False, False)]  # tail, renormalize, K = V
    for (tail, renormalize), gradient in itertools.product(modes, (True, False)):
        compile_kernel(topk.topk_rows, "fp32", "fp32", TAIL=tail, RENORMALIZE=renormalize, HAS_CE=gradient,
                       HAS_DIV=True, HAS_WEIGHT=gradient, GRADIENT=gradient, **fixed)  # fmt: skip
    if member == "generalized_jsd":
        for dtype, acc in DTYPES[1:]:
            compile_kernel(topk.topk_rows, dtype, acc, TAIL=True, RENORMALIZE=False, HAS_CE=True, HAS_DIV=True,
                           HAS_WEIGHT=True, GRADIENT=True, **fixed)  # fmt: skip
