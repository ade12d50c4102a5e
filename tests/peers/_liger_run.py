"""Run Liger's LigerJSD and LigerKLDIVLoss under the Triton interpreter on CPU tensors; print JSON results.

Run as a subprocess by test_liger.py with TRITON_INTERPRET=1 (the variable must be set before triton is
imported). Python float kernel arguments are wrapped as float32 scalars (:mod:`backends.triton_interpreter`),
as compiled Triton passes them, without touching Liger's code.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from backends.triton_interpreter import wrap_float_arguments

wrap_float_arguments()

from liger_kernel.transformers import LigerJSD, LigerKLDIVLoss  # noqa: E402


def main() -> None:
    case = json.loads(sys.stdin.read())
    log_q = torch.tensor(case["log_q"], dtype=torch.float32, requires_grad=True)
    log_p = torch.tensor(case["log_p"], dtype=torch.float32)
    labels = torch.tensor(case["labels"], dtype=torch.long)
    out: dict[str, object] = {"jsd": {}, "kl": {}}
    for beta in case["betas"]:
        log_q.grad = None
        loss = LigerJSD(beta=beta)(log_q, log_p, labels)
        loss.backward()
        out["jsd"][str(beta)] = {"loss": float(loss), "grad": log_q.grad.tolist()}  # type: ignore[index]
    for reduction in ("batchmean", "sum"):
        for log_target in (True, False):
            target = log_p if log_target else log_p.exp()
            loss = LigerKLDIVLoss(reduction=reduction, log_target=log_target)(log_q.detach(), target)
            out["kl"][f"{reduction}-{log_target}"] = float(loss)  # type: ignore[index]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
