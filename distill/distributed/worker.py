"""``python -m distill.distributed.worker PLAN.json OUT_DIR``: run a list of configurations in one process
group, one after the other, and write each result (``run-<i>.pt``) from rank 0.

Started by :mod:`distill.distributed.launch` for the tests and the ``distill-distributed-v1`` falsifiers: one
process group serves several runs, which keeps the multi-process checks cheap. ``PLAN.json`` is a list of
:class:`~distill.distributed.config.RunConfig` dicts. Exit codes: 0 done, 1 a rank failed (one line on stderr).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from distill.distributed.config import RunConfig
from distill.distributed.runtime import distributed, report_failure
from distill.distributed.train import train


def main(argv: list[str]) -> int:
    plan_path, out_dir = Path(argv[0]), Path(argv[1])
    configs = [RunConfig.from_dict(entry) for entry in json.loads(plan_path.read_text())]
    with report_failure("distill.distributed.worker"), distributed(timeout_s=60.0) as group_rank:
        for index, config in enumerate(configs):
            result = train(config)
            if group_rank == 0 and result is not None:
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
    sys.exit(main(sys.argv[1:]))
