"""Run Liger's LigerJSD and LigerKLDIVLoss under the Triton interpreter on CPU tensors; print JSON results.

Run as a subprocess by test_liger.py with TRITON_INTERPRET=1 (the variable must be set before triton is
imported). The Triton 3 interpreter does not turn a Python float kernel argument into a scalar tensor (Liger's
KL kernel calls ``eps.to(tl.float32)`` on one), so floats are wrapped as float32 scalars here, in the
interpreter, without touching Liger's code.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
import triton.language as tl
import triton.runtime.interpreter as interpreter

_convert = interpreter._implicit_cvt


def _implicit_cvt(arg):  # the interpreter's argument conversion, plus Python floats
    if isinstance(arg, float):
        return tl.tensor(interpreter.TensorHandle(np.array([arg], dtype=np.float32), tl.float32), tl.float32)
    return _convert(arg)


interpreter._implicit_cvt = _implicit_cvt

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
