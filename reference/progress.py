"""Progress lines for the distillation pipeline.

:class:`ProgressCallback` prints, to the stream it was given (default ``sys.stdout``)::

      Step {global_step}/{total_steps}: loss: {loss:.4f}          when global_step % log_every == 0
    Epoch {epoch}/{max_epochs}: loss: {mean:.4f} ({elapsed:.1f}s)  at every epoch end

``mean`` is the mean of that epoch's step losses and ``elapsed`` the seconds since training began.
``log_every = 0`` prints epoch lines only and ``1`` every step. The interval is tested before any string is
formatted, so a silent step costs one comparison. Parse user input with ``reference.settings.log_every``.
"""

from __future__ import annotations

import sys
from typing import TextIO

from reference.pipeline import Callback, Control, EpochContext, StepContext

__all__ = ["ProgressCallback", "epoch_line", "step_line"]


def step_line(context: StepContext) -> str:
    """The step line, without a newline: ``  Step 10/60: loss: 1.2345``."""
    return f"  Step {context.global_step}/{context.total_steps}: loss: {context.loss:.4f}"


def epoch_line(context: EpochContext) -> str:
    """The epoch line, without a newline: ``Epoch 1/3: loss: 1.2345 (0.3s)``."""
    return (
        f"Epoch {context.epoch}/{context.max_epochs}: loss: {context.mean_loss:.4f} ({context.elapsed:.1f}s)"
    )


class ProgressCallback(Callback):
    """Print a step line every ``log_every`` steps and an epoch line at every epoch end."""

    def __init__(self, log_every: int = 10, stream: TextIO | None = None) -> None:
        if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 0:
            raise ValueError(f"log_every must be an integer >= 0 (0 = epoch lines only), got {log_every!r}")
        self.log_every = log_every
        self.stream = sys.stdout if stream is None else stream

    def on_step_end(self, context: StepContext) -> Control | None:
        every = self.log_every
        if every and context.global_step % every == 0:
            self.stream.write(step_line(context) + "\n")
        return None

    def on_epoch_end(self, context: EpochContext) -> None:
        self.stream.write(epoch_line(context) + "\n")
        self.stream.flush()
