"""Liger-Kernel's KD losses against the project's numbers on one small input (correctness only).

    TRITON_INTERPRET=1 python benchmarks/liger_check.py      # CPU: Liger's Triton kernels under the interpreter

Each line names the Liger module, the project's value (the float64 reference, or a numpy formula written
from Liger's documented convention where the project has no such divergence) and the absolute difference;
a module that cannot run here says why. Timing Liger is meaningful only on a GPU (benchmarks/bench_kd.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np
import torch

from backends.triton_interpreter import wrap_float_arguments
from reference import kd

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    wrap_float_arguments()  # Liger's KL kernel calls .to() on a float argument, which the interpreter passes raw


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def generalized_jsd(log_q: np.ndarray, log_p: np.ndarray, beta: float) -> float:
    """Liger's convention: ``beta KL(p || m) + (1 - beta) KL(q || m)``, ``m = beta p + (1 - beta) q``, row mean."""
    p, q = np.exp(log_p), np.exp(log_q)
    log_m = np.log(beta * p + (1 - beta) * q)
    rows = beta * (p * (log_p - log_m)).sum(-1) + (1 - beta) * (q * (log_q - log_m)).sum(-1)
    return float(rows.mean())


def compare() -> list[str]:
    rng = np.random.default_rng(0)
    n, hidden, vocab, beta, temperature = 8, 16, 96, 0.5, 2.0
    s, t = rng.normal(0, 3, (n, vocab)), rng.normal(0, 3, (n, vocab))
    log_q, log_p = _log_softmax(s), _log_softmax(t)
    lines = []

    def report(name: str, run, expected: float) -> None:
        try:
            value = float(run())
        except Exception as error:  # report and go on: one line per module
            lines.append(f"{name}: did not run here: {type(error).__name__}: {str(error).splitlines()[0][:160]}")
            return
        lines.append(f"{name}: {value:.10f}, project {expected:.10f}, |difference| {abs(value - expected):.2e}")

    def kl() -> float:
        from liger_kernel.transformers.kl_div import LigerKLDIVLoss

        loss = LigerKLDIVLoss(reduction="batchmean", log_target=True)
        return loss(torch.tensor(log_q, dtype=torch.float32), torch.tensor(log_p, dtype=torch.float32))

    report("LigerKLDIVLoss (batchmean, log_target)", kl, float(kd.kl_divergence(s, t).mean()))

    def jsd() -> float:
        from liger_kernel.transformers.jsd import LigerJSD

        return LigerJSD(beta=beta)(torch.tensor(log_q, dtype=torch.float32), torch.tensor(log_p, dtype=torch.float32))

    report(f"LigerJSD (beta={beta})", jsd, generalized_jsd(log_q, log_p, beta))

    h, w = rng.normal(0, 1, (n, hidden)), rng.normal(0, 0.75, (vocab, hidden))
    th, tw = rng.normal(0, 1, (n, hidden)), rng.normal(0, 0.75, (vocab, hidden))

    def fused() -> float:
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

        loss = LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=beta, temperature=temperature)
        f = {"dtype": torch.float32}
        y = torch.zeros(n, dtype=torch.long)
        return loss(torch.tensor(h, **f), torch.tensor(w, **f), torch.tensor(th, **f), torch.tensor(tw, **f), y)

    expected = generalized_jsd(_log_softmax(h @ w.T / temperature), _log_softmax(th @ tw.T / temperature), beta)
    report(f"LigerFusedLinearJSDLoss (beta={beta}, T={temperature}, soft loss only)", fused, expected)
    return lines


if __name__ == "__main__":
    for line in compare():
        print(line)
