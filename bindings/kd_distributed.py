"""The ``distributed`` namespace of the KD binding: what the ``distill-distributed-v1`` checks may call.

Each function starts real multi-process runs of :mod:`distill.distributed` (gloo on CPU, 127.0.0.1, a free
port, a deadline on every spawn), runs the one-process oracle (:func:`distill.distributed.train.train_single`)
on the same configurations in this process, and returns both as plain data (numpy arrays, lists, numbers), so
that the property itself is written in the contract's ``expect``:

* :func:`data_parallel` (DDP or FSDP2) / :func:`pipeline`: one process group of ``world_size`` ranks runs
  several splits of the same batches; returns the final parameters, the logged ``loss``/``ce``/``kd`` and
  token counts of each split beside the oracle's, and (pipeline) the batch rows whose teacher logits each
  microbatch's loss used;
* :func:`first_step_losses`: the loss, CE and KD of step 1 computed by the numpy reference
  (:mod:`reference.kd`) on the initial models' logits, an oracle independent of :mod:`distill.distributed.loss`;
* :func:`kill_rank`: SIGKILL (or SIGSTOP) one rank of a running ``python -m distill.distributed`` and report
  how and when the others ended.

Results are memoized per argument list, so several falsifiers share one spawn. torch is imported only when
a function runs.
"""

from __future__ import annotations

import functools
import signal
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["ATTRIBUTES", "data_parallel", "first_step_losses", "kill_rank", "pipeline"]

_SPAWN_TIMEOUT_S = 240.0
_STEPS = 3

MUTANTS: tuple[str, ...] = ()
"""``module:function`` names every spawned rank calls before training (see ``distill.distributed.worker
--patch``). Empty in the contract's runs; the tests set it to plant a known bug and watch a falsifier fail
(clear the caches with :func:`clear_caches` when changing it)."""


def clear_caches() -> None:
    """Forget every memoized run (after changing :data:`MUTANTS`)."""
    for cached in (_oracle, _spawn, _kill_rank):
        cached.cache_clear()


def _config(**values: Any) -> Any:
    from distill.distributed.config import RunConfig

    return RunConfig(steps=_STEPS, dtype="float64", **values)


def _single(config: Any) -> Any:
    """The one-process oracle of ``config`` (the split settings do not change it, so they are dropped)."""
    import dataclasses

    split_free = dataclasses.replace(
        config, parallel="single", data_parallel="ddp", accumulation=1, microbatch_size=None, schedule="gpipe"
    )
    return _oracle(split_free)


@functools.cache
def _oracle(config: Any) -> Any:
    from distill.distributed.train import train_single

    return train_single(config)


def _flat(params: dict[str, Any]) -> np.ndarray:
    return np.concatenate([params[name].detach().double().reshape(-1).numpy() for name in sorted(params)])


def _report(configs: list[Any], results: list[dict], labels: list[str]) -> dict[str, Any]:
    singles = [_single(config) for config in configs]
    logs = [[[log["loss"], log["ce"], log["kd"]] for log in r["logs"]] for r in results]
    return {
        "splits": labels,
        "alpha": [config.alpha for config in configs],
        "params": np.stack([_flat(r["params"]) for r in results]),
        "single_params": np.stack([_flat(s.params) for s in singles]),
        "param_names": [sorted(r["params"]) for r in results],
        "single_param_names": [sorted(s.params) for s in singles],
        "logs": np.asarray(logs, dtype=np.float64),
        "single_logs": np.asarray([[[g.loss, g.ce, g.kd] for g in s.logs] for s in singles], dtype=np.float64),
        "tokens": [[log["tokens"] for log in r["logs"]] for r in results],
        "single_tokens": [[g.tokens for g in s.logs] for s in singles],
        "teacher_rows": [r["teacher_rows"] for r in results],
        "world_size": [r["world_size"] for r in results],
    }


Key = tuple[Any, ...]
"""A set of runs: ``("data", ranks, accumulations, batch_size, optimizer, kind, max_grad_norm)`` (``kind``:
``ddp`` or ``fsdp2``) or ``("pipeline", stages, ((microbatch_size, schedule), ...), batch_size, max_grad_norm)``."""

STANDARD: tuple[tuple[Key, ...], ...] = (
    (
        ("data", 2, (1, 2, 3), 8, "sgd", "ddp", 1.0),
        ("data", 3, (1, 2), 7, "adamw", "ddp", 1.0),
        ("pipeline", 2, ((8, "gpipe"), (2, "gpipe"), (1, "gpipe"), (2, "1f1b"), (4, "1f1b")), 8, 1.0),
        ("pipeline", 4, ((1, "gpipe"), (2, "gpipe"), (1, "1f1b")), 4, 0.3),
    ),
    (
        ("data", 2, (1, 2, 3), 8, "sgd", "fsdp2", 1.0),
        ("data", 3, (1, 2), 7, "adamw", "fsdp2", 0.3),
        ("data", 4, (2,), 9, "adamw", "fsdp2", 0.3),
    ),
)
"""The runs the ``distill-distributed-v1`` contract names, in two sets (DDP and pipeline; FSDP2). The first
call of :func:`data_parallel` or :func:`pipeline` for any run of a set starts the whole set in ONE process
group of 4 ranks (each run on a subgroup of the first 2, 3 or 4), which costs one spawn per set instead of
one per call; any other arguments start their own."""


def _runs(key: Key) -> tuple[list[tuple[Any, int]], list[str]]:
    if key[0] == "data":
        _, ranks, accumulations, batch_size, optimizer, kind, max_grad_norm = key
        lr = 0.5 if optimizer == "sgd" else 0.01
        configs = [
            _config(
                parallel="data",
                data_parallel=kind,
                accumulation=a,
                batch_size=batch_size,
                optimizer=optimizer,
                learning_rate=lr,
                max_grad_norm=max_grad_norm,
            )
            for a in accumulations
        ]
        labels = [f"{kind}: {ranks} ranks x {a} microbatches of batch {batch_size}" for a in accumulations]
    else:
        _, ranks, splits, batch_size, max_grad_norm = key
        configs = [
            _config(
                parallel="pipeline",
                microbatch_size=m,
                schedule=schedule,
                batch_size=batch_size,
                max_grad_norm=max_grad_norm,
            )
            for m, schedule in splits
        ]
        labels = [f"{ranks} stages, {schedule}, microbatches of {m} in {batch_size}" for m, schedule in splits]
    return [(config, ranks) for config in configs], labels


@functools.cache
def _spawn(keys: tuple[Key, ...], mutants: tuple[str, ...]) -> dict[Key, list[dict]]:
    from distill.distributed.worker import run_plan

    plan = [_runs(key)[0] for key in keys]
    world_size = max(ranks for runs in plan for _, ranks in runs)
    results = run_plan([run for runs in plan for run in runs], world_size, timeout=_SPAWN_TIMEOUT_S, patches=mutants)
    by_key, start = {}, 0
    for key, runs in zip(keys, plan):
        by_key[key] = results[start : start + len(runs)]
        start += len(runs)
    return by_key


def _report_of(key: Key) -> dict[str, Any]:
    keys = next((keys for keys in STANDARD if key in keys), (key,))
    results = _spawn(keys, MUTANTS)[key]
    runs, labels = _runs(key)
    return _report([config for config, _ in runs], results, labels)


def data_parallel(
    world_size: int,
    accumulations: Sequence[int],
    batch_size: int = 8,
    optimizer: str = "sgd",
    kind: str = "ddp",
    max_grad_norm: float = 1.0,
) -> dict[str, Any]:
    """Data parallel under ``kind`` (``ddp``, or ``fsdp2``: parameters sharded by ``fully_shard``) on
    ``world_size`` ranks, once per ``accumulation`` in ``accumulations`` (3 steps, float64, the default tiny
    models, global batch ``batch_size``; ``optimizer`` ``sgd`` (momentum 0.9) or ``adamw``; gradients clipped
    to norm ``max_grad_norm``: the default 1 rarely bites on these runs, 0.3 clips every step), beside the
    one-process oracle on the same batches.

    Returns ``splits`` (labels), ``params`` / ``single_params`` (``[runs, P]``, the final parameters
    flattened by sorted name), ``param_names`` / ``single_param_names``, ``logs`` / ``single_logs``
    (``[runs, steps, 3]``: loss, ce, kd per valid token), ``tokens`` / ``single_tokens`` (``[runs][steps]``),
    ``alpha`` (per run), ``world_size``. A failed rank raises with every rank's last words."""
    accumulations = tuple(int(a) for a in accumulations)
    key = ("data", int(world_size), accumulations, int(batch_size), str(optimizer), str(kind), float(max_grad_norm))
    return _report_of(key)


def pipeline(
    stages: int, splits: Sequence[Sequence[Any]], batch_size: int = 8, max_grad_norm: float = 1.0
) -> dict[str, Any]:
    """Pipeline parallel on ``stages`` ranks (one stage each), once per ``[microbatch_size, schedule]`` in
    ``splits`` (schedule ``gpipe`` or ``1f1b``; 3 steps, float64, SGD, batch ``batch_size``, gradients clipped
    to norm ``max_grad_norm``), beside the one-process oracle.

    Returns what :func:`data_parallel` returns, plus ``teacher_rows`` (per run, per step, per microbatch in
    the order the loss saw them: the batch rows whose teacher logits that loss used) and ``expected_rows``
    (the same, for microbatch ``i`` holding rows ``i*m .. i*m + m - 1``)."""
    pairs = tuple((int(m), str(schedule)) for m, schedule in splits)
    report = _report_of(("pipeline", int(stages), pairs, int(batch_size), float(max_grad_norm)))
    report["expected_rows"] = [
        [[list(range(start, start + m)) for start in range(0, int(batch_size), m)] for _ in range(_STEPS)]
        for m, _ in pairs
    ]
    return report


@functools.cache
def _kill_rank(parallel: str, world_size: int, victim: int, how: str, timeout_s: float, data_parallel: str) -> dict:
    from distill.distributed.launch import LocalRun

    args = ["--parallel", parallel, "--device", "cpu", "--steps", "1000000", "--batch-size", "8"]
    args += ["--timeout", f"{timeout_s:g}"]
    if parallel == "data":
        args += ["--data-parallel", data_parallel]
    if parallel == "pipeline":
        args += ["--microbatch-size", "2"]
    logger = world_size - 1 if parallel == "pipeline" else 0
    if logger == victim:
        raise ValueError(f"kill_rank: rank {victim} prints the step lines; choose another victim")
    with LocalRun("distill.distributed", args, world_size) as run:
        if not run.wait_for_output(logger, "step 2/", _SPAWN_TIMEOUT_S):
            raise RuntimeError(f"kill_rank: rank {logger} never logged step 2: {run.stderr(logger).strip()[-500:]}")
        killed_at = time.monotonic()
        if how == "kill":
            run.processes[victim].send_signal(signal.SIGKILL)
        else:
            run.processes[victim].send_signal(signal.SIGSTOP)
        survivors = [r for r in range(world_size) if r != victim]
        ended: dict[int, float] = {}
        deadline = killed_at + 120.0
        while time.monotonic() < deadline and len(ended) < len(survivors):
            for rank in survivors:
                if rank not in ended and run.processes[rank].poll() is not None:
                    ended[rank] = time.monotonic() - killed_at
            time.sleep(0.05)
        if how == "stop":
            run.processes[victim].send_signal(signal.SIGCONT)
        outcomes = run.wait(0.0)
    return {
        "victim": victim,
        "how": how,
        "survivors": [
            {
                "rank": rank,
                "returncode": outcomes[rank].returncode,
                "seconds": ended.get(rank, float("inf")),
                "stderr_lines": outcomes[rank].stderr.strip().splitlines(),
                "message": (outcomes[rank].stderr.strip().splitlines() or [""])[-1],
            }
            for rank in survivors
        ],
    }


def kill_rank(
    parallel: str,
    world_size: int,
    victim: int,
    how: str = "kill",
    timeout_s: float = 60.0,
    data_parallel: str = "ddp",
) -> dict[str, Any]:
    """Start ``torchrun``-style ``python -m distill.distributed --parallel PARALLEL --device cpu`` on
    ``world_size`` ranks (``--timeout timeout_s``; ``--data-parallel data_parallel`` for ``parallel='data'``),
    wait until step 2 is logged, then ``how`` = ``kill``
    (SIGKILL: the rank dies) or ``stop`` (SIGSTOP: the rank hangs) rank ``victim``, and watch the others for
    up to 120 s.

    Returns ``survivors``: per other rank, ``returncode`` (``None``: still running after 120 s, then
    killed), ``seconds`` from the signal to its exit (``inf`` if it never exited), its ``stderr_lines`` and
    ``message`` (the last stderr line)."""
    return _kill_rank(str(parallel), int(world_size), int(victim), str(how), float(timeout_s), str(data_parallel))


def first_step_losses(batch_size: int = 8) -> list[float]:
    """``[loss, ce, kd]`` of step 1 of the runs above (float64, the initial student and teacher, the first
    global batch of ``batch_size``), per valid token, from the numpy reference: ``ce`` is
    ``reference.kd.cross_entropy(reduction="mean")``, ``kd`` is ``T^2`` times the mean over valid tokens of
    ``reference.kd.kl_divergence``, ``loss`` is ``reference.kd.kd_loss(reduction="mean")``."""
    import torch

    from distill.distributed.data import IGNORE_INDEX, global_batch
    from distill.distributed.train import build_models
    from reference import kd as ref

    config = _config(parallel="single", batch_size=int(batch_size))
    batch = global_batch(0, config.batch_size, config.student.seq_len, config.student.vocab, config.seed)
    student_model, teacher_model = build_models(config)
    with torch.no_grad():
        student = student_model(batch.ids).numpy()
        teacher = teacher_model(batch.ids).numpy()
    labels = batch.labels.numpy()
    valid = labels != IGNORE_INDEX
    t, alpha = config.temperature, config.alpha
    ce = ref.cross_entropy(student, labels, ignore_index=IGNORE_INDEX, reduction="mean")
    kd = t**2 * float(ref.kl_divergence(student, teacher, temperature=t)[valid].sum()) / max(int(valid.sum()), 1)
    loss = ref.kd_loss(student, teacher, labels, temperature=t, alpha=alpha, ignore_index=IGNORE_INDEX)
    return [float(loss), float(ce), float(kd)]


ATTRIBUTES = ("data_parallel", "pipeline", "first_step_losses", "kill_rank")
"""The functions a check may call as ``distributed.<name>``."""
