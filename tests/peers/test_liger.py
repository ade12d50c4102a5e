"""Liger's ``LigerJSD`` and ``LigerKLDIVLoss``, run by the Triton interpreter on CPU tensors, against the project.

Liger's kernels are Triton; with ``TRITON_INTERPRET=1`` (triton 3.x) they run on the CPU, in a subprocess
(``_liger_run.py``) because the variable must be set before triton is imported. Liger computes in float32,
so the comparison tolerance is float32's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from reference import conventions, kd

pytest.importorskip("liger_kernel", reason="liger-kernel is not installed: pip install -e '.[peers]'")
pytest.importorskip("triton", reason="triton is not installed: pip install -e '.[peers]'")

BETAS = [0.0, 0.1, 0.5, 0.9, 1.0]
ROOT = Path(__file__).resolve().parents[2]


@cache
def _case() -> tuple[dict, dict]:
    rng = np.random.default_rng(7)
    s, t = rng.normal(0, 2, (6, 11)), rng.normal(0, 2, (6, 11))
    log_q = (s - np.logaddexp.reduce(s, axis=-1, keepdims=True)).astype(np.float32)
    log_p = (t - np.logaddexp.reduce(t, axis=-1, keepdims=True)).astype(np.float32)
    case = {"log_q": log_q.tolist(), "log_p": log_p.tolist(), "labels": [1, -100, 3, 4, -100, 0], "betas": BETAS}
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("_liger_run.py"))],
        input=json.dumps(case), capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return case, json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("beta", BETAS)
def test_liger_jsd_equals_the_mapping_and_the_gradient(beta: float) -> None:
    case, out = _case()
    log_q, log_p = np.array(case["log_q"], np.float64), np.array(case["log_p"], np.float64)
    labels = np.array(case["labels"])
    theirs = out["jsd"][str(beta)]
    assert conventions.liger_jsd(log_q, log_p, labels, beta=beta) == pytest.approx(theirs["loss"], rel=1e-5, abs=1e-6)
    # Liger differentiates with respect to its input log_q (free coordinates): the score g = dD/dlog q. Through
    # log_softmax (as a caller feeding log_softmax(logits) gets from autograd) that is g - q sum(g): ours.
    score = np.array(theirs["grad"], np.float64)
    through_log_softmax = score - np.exp(log_q) * score.sum(axis=-1, keepdims=True)
    ours = kd.kd_logit_gradient(
        log_q, log_p, labels, temperature=1.0, alpha=0.0, divergence="generalized_jsd", beta=beta
    )
    np.testing.assert_allclose(ours, through_log_softmax, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("reduction", ["batchmean", "sum"])
@pytest.mark.parametrize("log_target", [True, False])
def test_liger_kl_div_equals_the_mapping(reduction: str, log_target: bool) -> None:
    case, out = _case()
    log_q, log_p = np.array(case["log_q"], np.float64), np.array(case["log_p"], np.float64)
    target = log_p if log_target else np.exp(log_p)
    ours = conventions.liger_kl_div(log_q, target, reduction=reduction, log_target=log_target)
    assert ours == pytest.approx(out["kl"][f"{reduction}-{log_target}"], rel=1e-5, abs=1e-6)
