"""Tests that need the Triton interpreter, which must be switched on before triton is first imported.

A test file imports :data:`INNER`, :data:`inner` and :data:`outer` from here: its ``@outer`` test calls
:func:`run_inner` on the file itself, which runs it again in a pytest subprocess with ``TRITON_INTERPRET=1``,
where the ``@inner`` tests run (they are skipped in the outer run, which runs them).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INNER = os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0")
inner = pytest.mark.skipif(not INNER, reason="runs in the TRITON_INTERPRET=1 subprocess of the outer test")
outer = pytest.mark.skipif(INNER, reason="the outer run")


def run_inner(test_file: str, summary: str, timeout_s: float = 900) -> None:
    """Run ``test_file`` under the interpreter; it must pass with ``summary`` (e.g. ``"5 passed, 1 skipped"``)."""
    path = str(Path(test_file).resolve().relative_to(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", path, "-q", "-p", "no:cacheprovider"],
        cwd=ROOT, env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True, timeout=timeout_s,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert summary in result.stdout, result.stdout[-2000:]
