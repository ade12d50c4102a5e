"""``python -m distill.distributed.worker PLAN.json OUT_DIR [--patch MODULE:FUNCTION ...]``: run a list of
configurations in one process group, one after the other, and write each result (``run-<i>.pt``) from rank 0.
A run may use only the first ``W`` ranks (a subgroup), so one group of 4 serves splits over 2, 3 and 4 ranks.

Started by :mod:`distill.distributed.launch` for the tests and the ``distill-distributed-v1`` falsifiers: one
process group serves several runs, which keeps the multi-process checks cheap. ``PLAN.json`` is a list of
:class:`~distill.distributed.config.RunConfig` dicts, each with the number of ranks it uses under
``"ranks"``. Each ``--patch`` names a function that every rank calls
before the runs: the tests use it to plant a known bug (a mutant) and watch the checks catch it.
Exit codes: 0 done, 1 a rank failed (one line on stderr).
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from distill.distributed.config import RunConfig
from distill.distributed.runtime import distributed, exit_process, report_failure
from distill.distributed.train import train


def main(argv: list[str]) -> int:
    plan_path, out_dir, patches = Path(argv[0]), Path(argv[1]), argv[2:]
    while patches[:1] == ["--patch"] and len(patches) >= 2:
        module, _, function = patches[1].partition(":")
        getattr(importlib.import_module(module), function)()
        patches = patches[2:]
    if patches:
        print(f"distill.distributed.worker: error: unexpected arguments {patches}", file=sys.stderr)
        return 2
    entries = json.loads(plan_path.read_text())
    with report_failure("distill.distributed.worker"), distributed(timeout_s=60.0) as rank:
        world_size = dist.get_world_size()
        # Every rank creates every subgroup, in plan order, before any run (new_group is collective).
        groups = {w: dist.new_group(list(range(w))) for w in sorted({e["ranks"] for e in entries}) if w < world_size}
        for index, entry in enumerate(entries):
            if rank >= entry["ranks"]:
                continue
            result = train(RunConfig.from_dict(entry["config"]), group=groups.get(entry["ranks"]))
            if rank == 0 and result is not None:
                torch.save(
                    {
                        "world_size": result.world_size,
                        "logs": [log.as_dict() for log in result.logs],
                        "params": result.params,
                        "teacher_rows": result.teacher_rows,
                    },
                    out_dir / f"run-{index}.pt",
                )
    return 0


if __name__ == "__main__":
    exit_process(main(sys.argv[1:]))


class PlanFailed(RuntimeError):
    """A rank of a plan run failed or ran past its deadline; the message holds each rank's last words."""


def run_plan(
    runs: list[tuple[RunConfig, int]], world_size: int, *, timeout: float = 240.0, patches: tuple[str, ...] = ()
) -> list[dict]:
    """Run each ``(config, ranks)`` of ``runs`` on the first ``ranks`` of ``world_size`` local ranks (one
    process group) and return rank 0's results, as dicts with ``world_size``, ``logs``, ``params`` and
    ``teacher_rows``. Raises :class:`PlanFailed` with every rank's exit code and last stderr lines when a rank
    fails or ``timeout`` passes."""
    import tempfile

    from distill.distributed.launch import run_ranks

    with tempfile.TemporaryDirectory(prefix="distill-plan-") as folder:
        plan = Path(folder) / "plan.json"
        plan.write_text(json.dumps([{"config": config.as_dict(), "ranks": ranks} for config, ranks in runs]))
        args = [str(plan), folder]
        for patch in patches:
            args += ["--patch", patch]
        outcomes = run_ranks("distill.distributed.worker", args, world_size, timeout)
        if any(o.returncode != 0 for o in outcomes):
            words = "; ".join(
                f"rank {o.rank}: {'timed out' if o.returncode is None else f'exit {o.returncode}'}: "
                f"{' | '.join(o.stderr.strip().splitlines()[-3:])}"
                for o in outcomes
            )
            raise PlanFailed(f"a {world_size}-rank plan run failed: {words}")
        return [torch.load(Path(folder) / f"run-{i}.pt") for i in range(len(runs))]
