"""``python -m reference.distill`` at the edges (issue 9): every value below gave a traceback partway through a
run, or hung; each is now a one-line error before any work (or, for a huge epoch, lazy batches). And a check
that drives the command through ``pipeline.run_distill`` writes only inside its own temporary directory."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bindings.kd_pipeline import run_distill

REPO = Path(__file__).resolve().parents[1]


def _distill(args: list[str], cwd: Path, **env: str) -> tuple[int, str, str, float]:
    environ = {**os.environ, "PYTHONPATH": str(REPO), **env}
    environ.pop("DISTILL_MAX_STEPS", None)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "reference.distill", *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - start


@pytest.mark.parametrize(
    ("args", "env", "code", "fragment"),
    [
        (["--temperature", "1e-320"], {}, 2, "--temperature='1e-320' is outside [0.0001, 10000]"),
        (["--temperature", "1e300"], {}, 2, "--temperature='1e300' is outside"),
        (["--batch-size", "100000000"], {}, 2, "--batch-size='100000000' is too large"),
        (["--output-dir", "x" * 300], {}, 2, "over the 255-byte limit"),
        ([], {"DISTILL_PROJECT_TO_STEPS": "9" * 400}, 2, "DISTILL_PROJECT_TO_STEPS='999"),
        (["--epochs", "9" * 5000], {}, 2, "--epochs='999"),
        (["--steps-per-epoch", "99999999999999999999"], {}, 2, "is too large"),
        (["--learning-rate", "1e308", "--epochs", "1", "--steps-per-epoch", "3"], {}, 1, "the run diverged"),
    ],
)
def test_edge_values_are_one_line_errors(
    args: list[str], env: dict[str, str], code: int, fragment: str, tmp_path: Path
) -> None:
    smoke = [] if "--learning-rate" in args else ["--max-steps", "2"]
    returncode, stdout, stderr, _ = _distill([*args, *smoke], tmp_path, **env)
    assert returncode == code, (stdout, stderr)
    assert "Traceback" not in stdout + stderr
    assert stderr.count("\n") == 1 and stderr.startswith("error: "), stderr
    assert fragment in stderr, stderr
    assert list(tmp_path.iterdir()) == [], "nothing is written by a run that fails"


def test_a_huge_epoch_builds_only_the_batches_it_runs(tmp_path: Path) -> None:
    returncode, stdout, stderr, seconds = _distill(
        ["--steps-per-epoch", "999999999999999", "--max-steps", "2"], tmp_path
    )
    assert returncode == 0, stderr
    assert "[SMOKE] 2 steps" in stdout
    assert seconds < 30, f"took {seconds:.1f} s: the batches are built up front"


@pytest.mark.parametrize(
    ("args", "files"),
    [
        (["--max-steps", "1"], {"/tmp/kd-contracts-pwned": "x"}),
        (["--max-steps", "1"], {"../pwned": "x"}),
        (["--max-steps", "1"], {"a/../../pwned": "x"}),
        (["--output-dir", "/tmp/kd-contracts-pwned-dir", "--epochs", "1", "--steps-per-epoch", "1"], {}),
        (["--output-dir=../escaped", "--epochs", "1", "--steps-per-epoch", "1"], {}),
    ],
)
def test_run_distill_writes_only_in_its_temporary_directory(args: list[str], files: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="must be a relative path inside the run's temporary directory"):
        run_distill(args, {}, files)
    assert not Path("/tmp/kd-contracts-pwned").exists() and not Path("/tmp/kd-contracts-pwned-dir").exists()


def test_run_distill_still_writes_relative_outputs() -> None:
    result = run_distill(["--output-dir", "out", "--epochs", "1", "--steps-per-epoch", "1"], {}, {"in/a.txt": "x"})
    assert result["exit_code"] == 0
    assert result["written"] == ["out", "out/metadata.json", "out/student.npz"]
