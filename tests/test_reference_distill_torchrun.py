"""``python -m reference.distill`` under torchrun is the distributed command (``distill.distributed``), with the
README's own launch line, ``torchrun --nproc_per_node 2 -m reference.distill ...``, on CPU (gloo); alone it is
still the fixture command. Every spawn has a deadline and a free port."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from distill.distributed.launch import free_port
from reference.distill import distributed_argv

REPO_ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 240
RUN = ["--steps", "3", "--batch-size", "8", "--dtype", "float64", "--accumulation", "2", "--device", "cpu"]
STEP_LINE = re.compile(r"^step (\d+)/3: loss (\d+\.\d{4})  ce (\d+\.\d{4})  kd (\d+\.\d{4})", re.M)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISTILL_", "WORLD_SIZE", "RANK", "MASTER_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    return env


def _torchrun() -> list[str]:
    found = shutil.which("torchrun")
    return [found] if found else [sys.executable, "-m", "torch.distributed.run"]


def test_torchrun_two_ranks_is_the_distributed_command_and_equals_one_process(tmp_path: Path) -> None:
    launched = subprocess.run(
        [*_torchrun(), "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "reference.distill",
         "--parallel", "data", *RUN, "--output-dir", "out"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S,
    )
    assert launched.returncode == 0, launched.stderr[-2000:]
    assert "data parallel: 2 ranks x 2 microbatches, batch 8, 3 steps on cpu (gloo)" in launched.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["metrics.jsonl", "student.safetensors"]
    single = subprocess.run(
        [sys.executable, "-m", "reference.distill", "--distributed", "--parallel", "single", *RUN],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S,
    )
    assert single.returncode == 0, single.stderr[-2000:]
    steps = STEP_LINE.findall(launched.stdout)
    assert [s[0] for s in steps] == ["1", "2", "3"]
    assert steps == STEP_LINE.findall(single.stdout), "2 ranks x 2 microbatches log what one process logs"


def test_alone_it_is_still_the_fixture_command(tmp_path: Path) -> None:
    env = {**_env(), "WORLD_SIZE": "1"}
    alone = subprocess.run([sys.executable, "-m", "reference.distill", "--max-steps", "2"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=TIMEOUT_S)
    assert alone.returncode == 0, alone.stderr
    assert "[SMOKE] 2 steps in " in alone.stdout and "parallel" not in alone.stdout and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["--epochs", "2"], {}, None),
        (["--epochs", "2"], {"WORLD_SIZE": "1"}, None),
        (["--epochs", "2"], {"WORLD_SIZE": " "}, None),
        (["--steps", "2"], {"WORLD_SIZE": "2"}, ["--steps", "2"]),
        (["--steps", "2", "--distributed"], {}, ["--steps", "2"]),
    ],
)
def test_distributed_is_chosen_by_torchrun_or_the_flag(argv, env, expected) -> None:
    assert distributed_argv(argv, env) == expected
