"""The Triton backend's planted bugs fail named falsifiers, in a real pytest subprocess under the Triton
interpreter. The interpreter is slow, so each run is limited to the falsifiers that name the bug, with the
small ``interpreter`` hypothesis profile; CI runs the whole suite against ``--backend triton`` separately.

- tests/ports/bug_triton_missing_rescale.py: the online log-sum-exp adds a chunk without rescaling the
  running sum (the core kernels).
- tests/ports/bug_triton_jsd_unshifted_mixture.py: the generalized JSD's mixture formed from probabilities,
  ``log(beta p + (1 - beta) q)``, instead of in log space (the divergence family's kernels).
- tests/ports/bug_triton_topk_tail_cancels.py: the student's tail bucket of a top-k teacher formed as
  ``log(1 - sum q[ids])``, which cancels for a confident student (the top-k kernel).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]


def falsified(port: str, falsifiers: str, ids: list[str], dtype: str | None = None) -> set[str]:
    """The falsifiers among ``ids`` (in the file ``falsifiers``, at ``dtype`` only when given) that fail on
    ``tests.ports.<port>`` (whose backend's name is the module's with dashes); the run must fail, with reports
    and no traceback."""
    select = " or ".join(i.replace("-", "_") for i in ids)
    env = {**os.environ, "TRITON_INTERPRET": "1", "HYPOTHESIS_PROFILE": "interpreter"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", falsifiers, "-q", "-p", "no:cacheprovider",
         "-k", f"({select}) and {dtype}" if dtype else select, "--backend", f"tests.ports.{port}:BACKEND"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 1, f"the suite passed the planted bug:\n{result.stdout[-2000:]}{result.stderr[-1000:]}"
    assert "Traceback" not in result.stdout + result.stderr
    name = re.escape(port.replace("_", "-"))
    return set(re.findall(rf"^(F-[A-Z0-9-]+) falsified on {name}", result.stdout, re.MULTILINE))


def test_a_missing_rescale_in_the_online_log_sum_exp_fails_named_falsifiers() -> None:
    ids = ["F-PARITY-003", "F-PARITY-004"]
    assert falsified("bug_triton_missing_rescale", "falsifiers/test_backend_parity_v1.py", ids) == set(ids)


def test_a_jsd_mixture_formed_from_probabilities_fails_a_named_falsifier() -> None:
    ids = ["F-DIV-LIMIT-001"]
    assert falsified("bug_triton_jsd_unshifted_mixture", "falsifiers/test_kd_divergences_v1.py", ids) == set(ids)


def test_a_top_k_student_tail_formed_as_one_minus_the_sum_fails_a_named_falsifier() -> None:
    """The top-k suite's tail and parity falsifiers pass it but F-TOPK-TAIL-002 (a confident student, tail
    ~exp(-40)), which fails. float32 only, to keep the interpreter's time (and hypothesis's shrinking) small."""
    ids = ["F-TOPK-TAIL-001", "F-TOPK-TAIL-002", "F-TOPK-PARITY-001"]
    assert falsified("bug_triton_topk_tail_cancels", "falsifiers/test_kd_topk_v1.py", ids, "float32") == {
        "F-TOPK-TAIL-002"
    }
