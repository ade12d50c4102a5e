"""``loss.png``: the training loss and the KL to the teacher per step, from ``metrics.jsonl`` records."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_metrics"]


def plot_metrics(records: Sequence[dict[str, Any]], path: Path, title: str = "distillation") -> None:
    """Draw loss (and KL to the teacher, where recorded) against the step into ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    figure, loss_axis = plt.subplots(figsize=(7, 4), dpi=100)
    loss_axis.plot(steps, [r["loss"] for r in records], color="tab:blue", label="loss")
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("loss (per token)")
    kl = [(r["step"], r["kl"]) for r in records if r.get("kl") is not None]
    if kl:
        kl_axis = loss_axis.twinx()
        kl_axis.plot([s for s, _ in kl], [v for _, v in kl], color="tab:red", label="KL(teacher || student)")
        kl_axis.set_ylabel("KL to the teacher (T = 1, nats/token)")
        handles = loss_axis.get_lines() + kl_axis.get_lines()
        loss_axis.legend(handles, [line.get_label() for line in handles], loc="upper right")
    loss_axis.set_title(title)
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)
