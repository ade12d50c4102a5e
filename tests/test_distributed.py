"""Tests of :mod:`distill.distributed` beside the ``distill-distributed-v1`` falsifiers: the pieces in-process
(splits, stages, config errors), the command through real subprocesses and ``torchrun``, and planted bugs
(``tests/distributed_mutants.py``) that the contract's falsifiers must catch.

Multi-process tests use gloo on 127.0.0.1 at a free port, and every spawn has a deadline.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from bindings import kd_distributed  # noqa: E402
from distill.distributed.config import ConfigError, RunConfig  # noqa: E402
from distill.distributed.data import IGNORE_INDEX, global_batch, rank_microbatches, split_bounds  # noqa: E402
from distill.distributed.launch import free_port  # noqa: E402
from distill.distributed.model import ModelShape, build_model, stage_module  # noqa: E402
from distill.distributed.train import train_single  # noqa: E402
from spec import measure  # noqa: E402
from spec.runtime import FalsifierFailure  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 240


def _falsifier(name: str):  # type: ignore[no-untyped-def]
    """The generated falsifier object ``name`` (e.g. ``F_DIST_PP_003``) of the distributed contract."""
    import warnings

    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    with warnings.catch_warnings():  # its falsifier mark is registered only where falsifiers/ is collected
        warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
        from falsifiers import test_distill_distributed_v1 as generated

    return getattr(generated, name)


# ------------------------------------------------------------------------------------------- in-process parts


@pytest.mark.parametrize("size,parts", [(8, 1), (8, 3), (7, 3), (5, 5), (9, 2)])
def test_split_bounds_cover_every_row_once_in_order(size: int, parts: int) -> None:
    bounds = split_bounds(size, parts)
    rows = [r for start, stop in bounds for r in range(start, stop)]
    assert rows == list(range(size))
    assert all(stop > start for start, stop in bounds)
    assert max(b - a for a, b in bounds) - min(b - a for a, b in bounds) <= 1


def test_rank_microbatches_partition_the_batch() -> None:
    batch = global_batch(0, 7, 8, 32, seed=0)
    pieces = [mb for rank in range(3) for mb in rank_microbatches(batch, rank, 3, 2)]
    assert torch.equal(torch.cat([mb.ids for mb in pieces]), batch.ids)
    assert sum(mb.valid_tokens() for mb in pieces) == batch.valid_tokens()
    assert len({mb.valid_tokens() for mb in pieces}) > 1  # uneven counts: per-piece means would differ


def test_batches_have_padding_and_next_token_labels() -> None:
    batch = global_batch(3, 16, 8, 32, seed=1)
    valid = batch.labels != IGNORE_INDEX
    assert torch.equal(batch.labels[:, :-1][valid[:, :-1]], batch.ids[:, 1:][valid[:, :-1]])
    assert not valid[:, -1].any()
    assert 0 < int(valid.sum()) < valid.numel()


@pytest.mark.parametrize("stages", [1, 2, 3, 4])
def test_stages_compose_to_the_full_model_and_keep_its_names(stages: int) -> None:
    model = build_model(ModelShape(layers=4), seed=0, dtype=torch.float64)
    ids = global_batch(0, 4, 8, 32, seed=0).ids
    x = ids
    names: list[str] = []
    for stage in range(stages):
        module = stage_module(model, stage, stages)
        x = module(x)
        names += list(module.state_dict())
    assert torch.equal(x, model(ids))
    assert sorted(names) == sorted(model.state_dict())


@pytest.mark.parametrize(
    "config,world,words",
    [
        (RunConfig(batch_size=3, accumulation=2), 2, "batch_size 3 cannot give each of 2 ranks 2"),
        (RunConfig(parallel="pipeline", batch_size=8, microbatch_size=3), 2, "microbatch_size 3 must divide"),
        (RunConfig(parallel="pipeline", schedule="1f1b", microbatch_size=8), 2, "1f1b needs at least as many"),
        (RunConfig(parallel="pipeline"), 5, "5 pipeline stages need at least 5 student layers"),
        (RunConfig(parallel="single"), 2, "runs in one process"),
        (RunConfig(alpha=1.5), 1, "alpha must be in [0, 1]"),
        (RunConfig(teacher=ModelShape(vocab=48)), 1, "teacher vocab 48"),
    ],
)
def test_bad_configurations_are_sentences(config: RunConfig, world: int, words: str) -> None:
    with pytest.raises(ConfigError, match=None) as error:
        config.check(world)
    assert words in str(error.value)


def test_teacher_delivery_matches_rows_in_any_microbatch_order() -> None:
    """The last stage's loss reads each microbatch's own teacher rows by the indices in its target, so the
    summed loss is the whole batch's whatever order the schedule runs the microbatches in."""
    from distill.distributed.loss import token_sums
    from distill.distributed.train import TeacherDelivery

    config = RunConfig(parallel="pipeline", microbatch_size=2)
    batch = global_batch(0, 8, 8, 32, seed=0)
    student = build_model(config.student, 0, torch.float64)(batch.ids)
    teacher = build_model(config.teacher, 1, torch.float64)(batch.ids)
    whole = token_sums(student, teacher, batch.labels, temperature=2.0, alpha=0.5)
    target = TeacherDelivery.target(batch)
    delivery = TeacherDelivery(teacher, batch.valid_tokens(), config)
    total = sum(delivery.loss(student[k : k + 2], target[k : k + 2]) for k in (6, 0, 4, 2))
    assert delivery.rows_seen == [[6, 7], [0, 1], [4, 5], [2, 3]]
    assert abs(float(total.detach()) - float(whole.loss.detach()) / whole.tokens) < 1e-14
    assert abs(float(delivery.totals[0]) - float(whole.loss.detach())) < 1e-12


def test_logged_terms_share_one_scale_in_the_oracle() -> None:
    result = train_single(RunConfig(parallel="single", steps=2))
    for log in result.logs:
        assert abs(log.loss - (0.5 * log.ce + 0.5 * log.kd)) < 1e-12


# ----------------------------------------------------------------------------------------- the command


def _command(*args: str, world: int | None = None) -> list[str]:
    """The command on the CPU (gloo) whatever this machine has; a later ``--device`` in ``args`` wins."""
    if world is None:
        return [sys.executable, "-m", "distill.distributed", "--device", "cpu", *args]
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world),
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "distill.distributed",
        "--device", "cpu", *args,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    if "lo" in [name for _, name in __import__("socket").if_nameindex()]:
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    return env


@pytest.mark.parametrize(
    "args,words",
    [
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--parallel", "pipeline", "--microbatch-size", "3"], "--microbatch-size 3 must divide --batch-size 16"),
        (["--parallel", "tensor"], "invalid choice: 'tensor'"),
        (["--steps", "ten"], "invalid int value: 'ten'"),
        (["--timeout", "-1"], "--timeout must be > 0"),
        (["--parallel", "pipeline", "--data-parallel", "fsdp2"], "--data-parallel 'fsdp2' applies to"),
        (["--device", "cpu", "--dist-backend", "nccl"], "--dist-backend nccl moves only CUDA tensors"),
        (["--device", "tpu"], "invalid choice: 'tpu'"),
    ],
)
def test_bad_flags_are_one_line_exit_2(args: list[str], words: str) -> None:
    proc = subprocess.run(_command(*args), cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert words in proc.stderr and "Traceback" not in proc.stderr


def test_a_partial_torchrun_environment_is_one_line_exit_2() -> None:
    env = {**_env(), "RANK": "0"}
    proc = subprocess.run(_command("--steps", "1"), cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "the environment sets RANK but not all of RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: --device cuda would run")
def test_cuda_without_a_gpu_is_one_line_exit_2() -> None:
    proc = subprocess.run(
        _command("--device", "cuda", "--steps", "1"), cwd=REPO_ROOT, env=_env(), capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "--device cuda: torch sees no CUDA device here" in proc.stderr and "use --device cpu" in proc.stderr


@pytest.mark.parametrize("data_parallel", ["ddp", "fsdp2"])
def test_torchrun_data_parallel_equals_one_process(tmp_path: Path, data_parallel: str) -> None:
    """The README command under the real launcher: float64 parameters written by rank 0 (under FSDP2, gathered
    from the shards to full tensors) equal the oracle."""
    from safetensors.torch import load_file

    flags = ["--steps", "3", "--batch-size", "8", "--accumulation", "2", "--dtype", "float64", "--optimizer", "sgd"]
    flags += ["--data-parallel", data_parallel]
    proc = subprocess.run(
        _command("--parallel", "data", *flags, "--output-dir", str(tmp_path), world=2),
        cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    mode = "data parallel (fsdp2)" if data_parallel == "fsdp2" else "data parallel"
    assert f"{mode}: 2 ranks x 2 microbatches, batch 8, 3 steps on cpu (gloo)" in proc.stdout
    assert "UserWarning" not in proc.stderr, proc.stderr[-2000:]
    assert [line.split(":")[0] for line in proc.stdout.splitlines() if line.startswith("step ")] == [
        "step 1/3", "step 2/3", "step 3/3",
    ]  # fmt: skip
    written = load_file(str(tmp_path / "student.safetensors"))
    config = RunConfig(
        parallel="single", steps=3, batch_size=8, dtype="float64", optimizer="sgd", learning_rate=3e-3,
        student=ModelShape(64, 16, 32, 4, 2), teacher=ModelShape(64, 16, 64, 4, 2),
    )  # fmt: skip
    expected = train_single(config).params
    assert sorted(written) == sorted(expected)
    assert max(float((written[k] - expected[k]).abs().max()) for k in expected) <= 1e-10
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH")
def test_torchrun_ends_the_run_within_60_s_when_a_rank_is_killed() -> None:
    """Under torchrun, SIGKILL of one worker ends the whole run with a non-zero exit within 60 s."""
    import signal

    proc = subprocess.Popen(
        ["torchrun", "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
         "-m", "distill.distributed", "--device", "cpu", "--steps", "1000000", "--batch-size", "8",
         "--timeout", "60"],
        cwd=REPO_ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("step 2/"):
                break
        workers = subprocess.run(
            ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True, check=False
        ).stdout.split()
        assert len(workers) == 2, workers
        killed = time.monotonic()
        os.kill(int(workers[-1]), signal.SIGKILL)
        returncode = proc.wait(timeout=90)
        assert returncode != 0
        assert time.monotonic() - killed < 60
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -------------------------------------------------------------------------- planted bugs the falsifiers catch


@pytest.fixture
def mutant(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Plant ``tests.distributed_mutants:<name>`` into the spawned ranks of the binding's runs."""

    def plant(name: str) -> None:
        monkeypatch.setattr(kd_distributed, "MUTANTS", (f"tests.distributed_mutants:{name}",))
        kd_distributed.clear_caches()

    yield plant
    kd_distributed.clear_caches()


def test_last_microbatch_teacher_logits_are_caught(mutant) -> None:  # type: ignore[no-untyped-def]
    """NeMo Automodel's bug (only the last microbatch's teacher logits kept): F-DIST-PP-003 and F-DIST-PP-001
    fail on it."""
    mutant("teacher_last_microbatch")
    with pytest.raises(FalsifierFailure, match="F-DIST-PP-003 falsified"):
        _falsifier("F_DIST_PP_003").run()
    with pytest.raises(FalsifierFailure, match=r"F-DIST-PP-001 falsified.*expectation is false"):
        _falsifier("F_DIST_PP_001").run()
    measure.drain()  # the mutant's errors are expected: keep them out of the largest-measured-error summary


def test_fsdp2_default_averaging_is_caught(mutant) -> None:  # type: ignore[no-untyped-def]
    """FSDP2's default reduce-scatter (gradients divided by the number of ranks) on top of the global token
    normalization: F-DIST-FSDP-001 and F-DIST-FSDP-002 fail on it (one spawn serves both)."""
    mutant("fsdp2_average")
    for name in ("F_DIST_FSDP_001", "F_DIST_FSDP_002"):
        with pytest.raises(FalsifierFailure, match=name.replace("_", "-") + r" falsified.*expectation is false"):
            _falsifier(name).run()
    measure.drain()  # the mutant's errors are expected: keep them out of the largest-measured-error summary


def test_per_microbatch_normalization_is_caught(mutant) -> None:  # type: ignore[no-untyped-def]
    """Each microbatch divided by its own token count: F-DIST-DP-001 fails on it."""
    mutant("local_normalizer")
    with pytest.raises(FalsifierFailure, match=r"F-DIST-DP-001 falsified.*expectation is false"):
        _falsifier("F_DIST_DP_001").run()
    measure.drain()  # the mutant's errors are expected: keep them out of the largest-measured-error summary


@pytest.mark.skipif(
    os.environ.get("KD_DISTRIBUTED_MUTANTS") != "1",
    reason="opt-in (each mutant spawns ranks): set KD_DISTRIBUTED_MUTANTS=1",
)
@pytest.mark.parametrize(
    "name,falsifier",
    [
        ("ddp_average", "F_DIST_DP_001"),
        ("pipeline_scale_grads", "F_DIST_PP_001"),
        ("ce_logged_as_sum", "F_DIST_LOG_001"),
        ("ce_logged_as_sum", "F_DIST_LOG_002"),
        ("rank_normalizer", "F_DIST_DP_001"),
        ("rank_normalizer", "F_DIST_FSDP_001"),
        ("fsdp2_shard_norm", "F_DIST_FSDP_002"),
        ("stage_only_norm", "F_DIST_PP_002"),
    ],
)
def test_more_mutants_are_caught(mutant, name: str, falsifier: str) -> None:  # type: ignore[no-untyped-def]
    mutant(name)
    with pytest.raises(FalsifierFailure, match=falsifier.replace("_", "-") + " falsified"):
        _falsifier(falsifier).run()
    measure.drain()
