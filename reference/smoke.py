"""Smoke mode: run a few steps, report them and project the wall time of the full run.

A smoke run is a pipeline run with ``PipelineConfig.max_steps = N`` (from ``--max-steps`` or
``DISTILL_MAX_STEPS``): exactly ``N`` steps, across epoch boundaries, writing no model and no metadata. Its
report is two lines::

    [SMOKE] {N} steps in {secs:.2f}s: initial_loss={:.4f}, final_loss={:.4f}, throughput={:.2f} step/s
    [SMOKE] projected full-run wall time ({P} steps): {hours:.2f}h / {minutes:.1f} min / {seconds:.1f}s

``P`` is ``DISTILL_PROJECT_TO_STEPS`` or, by default, the configured ``epochs * steps_per_epoch``; the
projection is ``P * secs / N`` (the measured time per step, training loop only), shown in three units.
"""

from __future__ import annotations

from dataclasses import dataclass

from reference.pipeline import PipelineMetrics

__all__ = ["SMOKE_PREFIX", "SmokeReport", "format_smoke_report", "smoke_report"]

SMOKE_PREFIX = "[SMOKE]"


@dataclass(frozen=True, slots=True)
class SmokeReport:
    """Measured smoke-run figures and the projection to ``projected_steps``."""

    steps: int
    duration_s: float
    initial_loss: float
    final_loss: float
    throughput: float
    projected_steps: int
    projected_s: float


def smoke_report(metrics: PipelineMetrics, project_to_steps: int) -> SmokeReport:
    """Project ``metrics`` of a smoke run to ``project_to_steps`` steps at the measured time per step."""
    if isinstance(project_to_steps, bool) or not isinstance(project_to_steps, int) or project_to_steps < 1:
        raise ValueError(f"project_to_steps must be an integer >= 1, got {project_to_steps!r}")
    if metrics.steps_completed < 1:
        raise ValueError("a smoke report needs at least one completed step")
    per_step = metrics.duration_s / metrics.steps_completed
    return SmokeReport(
        steps=metrics.steps_completed,
        duration_s=metrics.duration_s,
        initial_loss=metrics.initial_loss,
        final_loss=metrics.final_loss,
        throughput=metrics.throughput,
        projected_steps=project_to_steps,
        projected_s=per_step * project_to_steps,
    )


def format_smoke_report(report: SmokeReport) -> list[str]:
    """The two ``[SMOKE]`` lines, without newlines."""
    seconds = report.projected_s
    return [
        f"{SMOKE_PREFIX} {report.steps} steps in {report.duration_s:.2f}s: "
        f"initial_loss={report.initial_loss:.4f}, final_loss={report.final_loss:.4f}, "
        f"throughput={report.throughput:.2f} step/s",
        f"{SMOKE_PREFIX} projected full-run wall time ({report.projected_steps} steps): "
        f"{seconds / 3600:.2f}h / {seconds / 60:.1f} min / {seconds:.1f}s",
    ]
