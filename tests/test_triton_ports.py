"""The Triton backend's planted bug (tests/ports/bug_triton_missing_rescale.py: the online log-sum-exp adds a
chunk without rescaling the running sum) fails named falsifiers, in a real pytest subprocess under the Triton
interpreter. The interpreter is slow, so the run is limited to two parity falsifiers with the small
``interpreter`` hypothesis profile; CI runs the whole suite against ``--backend triton`` separately."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]
PORT = "tests.ports.bug_triton_missing_rescale:BACKEND"


def test_a_missing_rescale_in_the_online_log_sum_exp_fails_named_falsifiers() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1", "HYPOTHESIS_PROFILE": "interpreter"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "falsifiers/test_backend_parity_v1.py", "-q", "-p", "no:cacheprovider",
         "-k", "F_PARITY_003 or F_PARITY_004", "--backend", PORT],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 1, f"the suite passed the planted bug:\n{result.stdout[-2000:]}{result.stderr[-1000:]}"
    failed = set(re.findall(r"^(F-[A-Z0-9-]+) falsified on bug-triton-missing-rescale", result.stdout, re.MULTILINE))
    assert failed == {"F-PARITY-003", "F-PARITY-004"}, result.stdout[-3000:]
    assert "Traceback" not in result.stdout + result.stderr


TOPK_PORT = "tests.ports.bug_triton_topk_tail_cancels:BACKEND"


def test_a_top_k_student_tail_formed_as_one_minus_the_sum_fails_a_named_falsifier() -> None:
    """tests/ports/bug_triton_topk_tail_cancels.py forms the student's tail bucket as log(1 - sum q[ids]): the
    whole top-k suite but F-TOPK-TAIL-002 (a confident student, tail ~exp(-40)) passes it; that one fails. In
    float32 only, to keep the interpreter's time (and hypothesis's shrinking) small."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "HYPOTHESIS_PROFILE": "interpreter"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "falsifiers/test_kd_topk_v1.py", "-q", "-p", "no:cacheprovider",
         "-k", "(TAIL_001 or TAIL_002 or PARITY_001) and float32", "--backend", TOPK_PORT],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 1, f"the suite passed the planted bug:\n{result.stdout[-2000:]}{result.stderr[-1000:]}"
    failed = set(re.findall(r"^(F-[A-Z0-9-]+) falsified on bug-triton-topk-tail-cancels", result.stdout, re.MULTILINE))
    assert failed == {"F-TOPK-TAIL-002"}, result.stdout[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
