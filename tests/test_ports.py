"""A backend written outside the project and plugged in with ``--backend module:attribute`` passes the
falsifier suite when it is correct, and fails it with a named falsifier for each classic KD bug.

Each port runs the whole kd-loss, kd-step and parity suite in a real ``pytest`` subprocess, as a porter would.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUITE = ["falsifiers/test_kd_loss_v1.py", "falsifiers/test_kd_step_v1.py", "falsifiers/test_backend_parity_v1.py"]

# port module -> falsifiers that must fail on it (each names the bug in its if_fails)
BUGS = {
    "bug_wrong_kl_direction": {"F-KD-GRAD-001", "F-PARITY-005"},
    "bug_missing_t_squared": {"F-KD-GRAD-001", "F-PARITY-005"},
    "bug_mean_over_all_rows": {"F-KD-REDUCE-001"},
    "bug_kd_on_ignored_rows": {"F-KD-MASK-001"},
    "bug_softmax_no_max_shift": {"F-KD-FINITE-001"},
    "bug_alpha_wrong_term": {"F-DISTILL-KDSTEP-001"},
    "bug_temperature_on_ce": {"F-DISTILL-KDSTEP-001"},
    "bug_undivided_mean_gradient": {"F-KD-GRAD-001", "F-KD-REDUCE-001"},
}


def run_suite(port: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CI": "true", "HYPOTHESIS_PROFILE": "ci"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", *SUITE, "-q", "-p", "no:cacheprovider", "--backend",
         f"tests.ports.{port}:BACKEND"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )


def failed_ids(output: str) -> set[str]:
    return set(re.findall(r"^(F[T]?-[A-Z0-9-]+) falsified on ", output, flags=re.MULTILINE))


def test_a_correct_independent_port_passes_every_falsifier() -> None:
    result = run_suite("good_port")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert re.search(r"\d+ passed", result.stdout)
    assert "failed" not in result.stdout.splitlines()[-1]


@pytest.mark.parametrize("port", sorted(BUGS))
def test_each_classic_kd_bug_fails_a_named_falsifier(port: str) -> None:
    result = run_suite(port)
    assert result.returncode == 1, f"the suite passed a port with a planted bug:\n{result.stdout[-2000:]}"
    failed = failed_ids(result.stdout)
    missing = BUGS[port] - failed
    assert not missing, f"{port}: expected {sorted(BUGS[port])} to fail, failed: {sorted(failed)}"
    assert "Traceback" not in result.stdout + result.stderr
    # the report a porter reads: ID, prediction, diagnosis and a counterexample
    assert "prediction:" in result.stdout and "if it fails:" in result.stdout and "counterexample:" in result.stdout
