"""``python -m reference.distill``: distil the embedded fixture teacher into the fixture student.

Run with ``--help`` for the flags. Every flag and ``DISTILL_*`` variable is validated before any work; a bad
value prints one line ``error: ...`` on stderr and exits 2 with nothing written. A normal run writes
``student.npz`` and ``metadata.json`` into ``--output-dir`` (default ``distill-out``) and prints where, and
the loss drop. A smoke run (``--max-steps`` / ``DISTILL_MAX_STEPS``) writes nothing and prints two
``[SMOKE]`` lines instead.

Exit codes: 0 success, 2 bad flag or variable, 1 outputs could not be written, 130 interrupted (Ctrl-C).

:func:`main` takes the environment as a mapping and the output streams as arguments, and :func:`run` calls it
in-process and returns a :class:`RunOutcome`, so checks can drive the command without a subprocess.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from reference import settings
from reference.cli_parser import EXIT_BAD_SETTING, ParserExit, StreamParser
from reference.pipeline import (
    METADATA_FILENAME,
    MODEL_FILENAME,
    FixtureBatches,
    Pipeline,
    PipelineConfig,
    PipelineResult,
    read_contract_versions,
)
from reference.progress import ProgressCallback
from reference.providers import FixtureStudent, FixtureTeacher
from reference.smoke import format_smoke_report, smoke_report

__all__ = [
    "DEFAULTS",
    "EXIT_BAD_SETTING",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_WRITE_FAILED",
    "RunOptions",
    "RunOutcome",
    "build_parser",
    "main",
    "resolve_options",
    "run",
]

EXIT_OK = 0
EXIT_WRITE_FAILED = 1
EXIT_INTERRUPTED = 130

PROG = "python -m reference.distill"
DEFAULT_OUTPUT_DIR = "distill-out"
VOCAB_SIZE = 32
SEQ_LEN = 16
CONTRACTS_DIR = Path(__file__).resolve().parent.parent / "contracts"

MAX_BATCH_SIZE = 2**16
"""The largest --batch-size: its logits ([batch, 16, 32] float64) take 256 MiB, and a step holds a few such."""

DEFAULTS = PipelineConfig(
    epochs=3,
    steps_per_epoch=20,
    batch_size=8,
    temperature=2.0,
    alpha=0.5,
    learning_rate=8.0,
    output_dir=DEFAULT_OUTPUT_DIR,
    seed=0,
)
"""The configuration of a run with no flags (``max_steps`` comes from the flag or variable only)."""

_EPILOG = f"""\
environment variables (a flag wins over its variable; an empty variable counts as unset):
  {settings.ENV_MAX_STEPS}=N         same as --max-steps N
  {settings.ENV_LOG_EVERY}=N         same as --log-every N
  {settings.ENV_PROJECT_TO_STEPS}=P  smoke mode: project the wall time to P steps
                               (default: epochs * steps-per-epoch)

The teacher is a fixed {VOCAB_SIZE}-token table model seeded with --seed, the student a small table model
seeded with --seed + 1, the data {SEQ_LEN}-token sequences seeded with --seed + 2. A normal run writes
{MODEL_FILENAME} and {METADATA_FILENAME} to --output-dir; a smoke run writes nothing.
exit status: 0 ok, 2 bad flag or variable, 1 outputs not written, 130 interrupted.

Distributed: under torchrun (WORLD_SIZE > 1), or with --distributed anywhere in the arguments, the command
is `python -m distill.distributed` (a tiny transformer, data or pipeline parallel; see its --help), e.g.
  torchrun --nproc_per_node 2 -m reference.distill --parallel data --steps 20
"""


def build_parser(stdout: TextIO | None = None, stderr: TextIO | None = None) -> argparse.ArgumentParser:
    """The command's argument parser. Values stay strings; :func:`resolve_options` validates them."""
    parser = StreamParser(
        out=sys.stdout if stdout is None else stdout,
        err=sys.stderr if stderr is None else stderr,
        prog=PROG,
        description="Distil the embedded fixture teacher into the fixture student with the KD loss\n"
        "  L = alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(teacher/T || student/T),\n"
        "printing progress as it trains.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    d = DEFAULTS
    add = parser.add_argument
    add("--epochs", metavar="N", help=f"number of epochs, >= 1 (default {d.epochs})")
    add(
        "--steps-per-epoch",
        metavar="N",
        help=f"optimizer steps per epoch, >= 1 (default {d.steps_per_epoch})",
    )
    add("--batch-size", metavar="N", help=f"sequences per batch, >= 1 (default {d.batch_size})")
    add(
        "--temperature",
        metavar="T",
        help=f"softmax temperature of the KD term, > 0 (default {d.temperature})",
    )
    add(
        "--alpha",
        metavar="A",
        help=f"weight of the hard-label CE term in [0, 1]; 1 is pure CE (default {d.alpha})",
    )
    add("--learning-rate", metavar="LR", help=f"student SGD learning rate, > 0 (default {d.learning_rate})")
    add("--seed", metavar="S", help=f"seed of teacher, student and data, >= 0 (default {d.seed})")
    add(
        "--output-dir",
        metavar="DIR",
        help=f"directory for {MODEL_FILENAME} and {METADATA_FILENAME}, created if needed "
        f"(default {DEFAULT_OUTPUT_DIR})",
    )
    add(
        "--max-steps",
        metavar="N",
        help=f"smoke mode: run exactly N >= 1 steps across epochs, print [SMOKE] timing and a projection "
        f"of the full run, write nothing (env {settings.ENV_MAX_STEPS})",
    )
    add(
        "--log-every",
        metavar="N",
        help=f"print a step line every N steps; 0 prints epoch lines only, 1 every step "
        f"(env {settings.ENV_LOG_EVERY}, default {settings.DEFAULT_LOG_EVERY})",
    )
    return parser


@dataclass(frozen=True)
class RunOptions:
    """Everything a run needs, validated: the pipeline config and the output-only settings."""

    config: PipelineConfig
    log_every: int
    project_to_steps: int
    output_dir: Path
    output_display: str


def _output_dir(args: argparse.Namespace, cwd: str | os.PathLike[str] | None) -> Path:
    raw = DEFAULT_OUTPUT_DIR if args.output_dir is None else args.output_dir
    return settings.output_dir("--output-dir", raw, cwd)


def resolve_options(
    args: argparse.Namespace, env: Mapping[str, str], cwd: str | os.PathLike[str] | None = None
) -> RunOptions:
    """Validate parsed flags and ``env`` into :class:`RunOptions`; raises ``SettingsError`` on a bad value.

    A relative ``--output-dir`` is resolved against ``cwd`` (default: the process's working directory).
    """
    d = DEFAULTS
    epochs = d.epochs if args.epochs is None else settings.positive_int("--epochs", args.epochs)
    steps = d.steps_per_epoch
    if args.steps_per_epoch is not None:
        steps = settings.positive_int("--steps-per-epoch", args.steps_per_epoch)
    batch_size = (
        d.batch_size if args.batch_size is None else settings.positive_int("--batch-size", args.batch_size)
    )
    if batch_size > MAX_BATCH_SIZE:
        raise settings.SettingsError(
            f"--batch-size={args.batch_size!r} is too large: one batch of logits would take "
            f"{batch_size * SEQ_LEN * VOCAB_SIZE * 8 / 2**30:.1f} GiB; pass at most {MAX_BATCH_SIZE}"
        )
    temperature = d.temperature
    if args.temperature is not None:
        temperature = settings.temperature("--temperature", args.temperature)
    alpha = d.alpha if args.alpha is None else settings.unit_interval_float("--alpha", args.alpha)
    learning_rate = d.learning_rate
    if args.learning_rate is not None:
        learning_rate = settings.positive_float("--learning-rate", args.learning_rate)
    seed = d.seed if args.seed is None else settings.non_negative_int("--seed", args.seed)
    display = DEFAULT_OUTPUT_DIR if args.output_dir is None else args.output_dir
    output_dir = _output_dir(args, cwd)
    max_steps = settings.max_steps(args.max_steps, env)
    log_every = settings.log_every(args.log_every, env)
    project_to = settings.project_to_steps(env, epochs * steps)
    config = PipelineConfig(
        epochs=epochs,
        steps_per_epoch=steps,
        batch_size=batch_size,
        temperature=temperature,
        alpha=alpha,
        learning_rate=learning_rate,
        output_dir=output_dir,
        seed=seed,
        max_steps=max_steps,
    )
    return RunOptions(config, log_every, project_to, output_dir, display)


def _pipeline(options: RunOptions, stdout: TextIO) -> Pipeline:
    config = options.config
    teacher = FixtureTeacher(VOCAB_SIZE, seed=config.seed)
    student = FixtureStudent(VOCAB_SIZE, seed=config.seed + 1, learning_rate=config.learning_rate)
    batches = FixtureBatches(
        teacher,
        batch_size=config.batch_size,
        seq_len=SEQ_LEN,
        num_batches=config.steps_per_epoch,
        seed=config.seed + 2,
    )
    return Pipeline(
        teacher,
        student,
        batches,
        config,
        callbacks=[ProgressCallback(options.log_every, stdout)],
        contract_versions=read_contract_versions(CONTRACTS_DIR),
    )


def _report(result: PipelineResult, options: RunOptions, stdout: TextIO) -> None:
    m = result.metrics
    if options.config.is_smoke:
        for line in format_smoke_report(smoke_report(m, options.project_to_steps)):
            stdout.write(line + "\n")
        return
    stdout.write(f"Model written to {os.path.join(options.output_display, MODEL_FILENAME)}\n")
    stdout.write(f"Metadata written to {os.path.join(options.output_display, METADATA_FILENAME)}\n")
    change = (m.final_loss - m.initial_loss) / m.initial_loss * 100 if m.initial_loss else 0.0
    stdout.write(
        f"Loss {m.initial_loss:.4f} -> {m.final_loss:.4f} ({change:+.1f}%) over {m.steps_completed} steps "
        f"in {m.duration_s:.2f}s\n"
    )


def _main(
    argv: Sequence[str] | None,
    env: Mapping[str, str],
    stdout: TextIO,
    stderr: TextIO,
    cwd: str | os.PathLike[str] | None,
) -> tuple[int, Path | None]:
    parser = build_parser(stdout, stderr)
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    except ParserExit as stop:
        return stop.status, None
    output_dir: Path | None = None
    try:
        output_dir = _output_dir(args, cwd)
        options = resolve_options(args, env, cwd)
        pipeline = _pipeline(options, stdout)
    except ValueError as error:  # SettingsError and the config's own checks
        stderr.write(f"error: {error}\n")
        return EXIT_BAD_SETTING, output_dir
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # a diverging run is reported below, in one line
            result = pipeline.run()
    except KeyboardInterrupt:
        stdout.flush()
        stderr.write("error: interrupted; no partial file was written\n")
        return EXIT_INTERRUPTED, options.output_dir
    except OSError as error:
        stderr.write(f"error: could not write the outputs to {options.output_display!r}: {error}\n")
        return EXIT_WRITE_FAILED, options.output_dir
    except ValueError as error:  # the run diverged: a non-finite loss stops it before the update
        stderr.write(f"error: {error}: the run diverged; lower --learning-rate or --temperature\n")
        return EXIT_WRITE_FAILED, options.output_dir
    _report(result, options, stdout)
    stdout.flush()
    return EXIT_OK, options.output_dir


def main(
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> int:
    """Run the command; returns the exit status.

    ``argv`` defaults to ``sys.argv[1:]``, ``env`` to ``os.environ``, the streams to ``sys.stdout`` and
    ``sys.stderr``; a relative ``--output-dir`` is resolved against ``cwd`` (default: the working directory).
    """
    code, _ = _main(
        argv,
        os.environ if env is None else env,
        sys.stdout if stdout is None else stdout,
        sys.stderr if stderr is None else stderr,
        cwd,
    )
    return code


@dataclass(frozen=True)
class RunOutcome:
    """What :func:`run` observed. ``output_files`` are the files under the output directory after the run,
    as sorted POSIX paths relative to it (empty when the directory does not exist or was never resolved)."""

    exit_code: int
    stdout: str
    stderr: str
    output_files: tuple[str, ...]
    output_dir: str | None


def run(
    argv: Sequence[str], env: Mapping[str, str], *, cwd: str | os.PathLike[str] | None = None
) -> RunOutcome:
    """Run the command in-process with captured output and ``env`` in place of ``os.environ``."""
    out, err = io.StringIO(), io.StringIO()
    code, output_dir = _main(list(argv), dict(env), out, err, cwd)
    files: tuple[str, ...] = ()
    if output_dir is not None and output_dir.is_dir():
        files = tuple(
            sorted(p.relative_to(output_dir).as_posix() for p in output_dir.rglob("*") if p.is_file())
        )
    return RunOutcome(
        code, out.getvalue(), err.getvalue(), files, None if output_dir is None else str(output_dir)
    )


DISTRIBUTED_FLAG = "--distributed"


def distributed_argv(argv: Sequence[str], env: Mapping[str, str]) -> list[str] | None:
    """The arguments for ``distill.distributed`` when this command runs distributed, else None: under
    torchrun (``WORLD_SIZE`` > 1) or with ``--distributed`` anywhere in ``argv`` (removed from them)."""
    world = env.get("WORLD_SIZE", "").strip()
    if DISTRIBUTED_FLAG in argv or (world.isdigit() and int(world) > 1):
        return [a for a in argv if a != DISTRIBUTED_FLAG]
    return None


def entry(argv: Sequence[str] | None = None) -> int:
    """``python -m reference.distill``: :func:`main` in one process; :func:`distill.distributed.__main__.main`
    under torchrun or with ``--distributed``. The single-process command is unchanged."""
    args = sys.argv[1:] if argv is None else list(argv)
    forwarded = distributed_argv(args, os.environ)
    if forwarded is None:
        return main(args)
    from distill.distributed.__main__ import main as distributed_main

    return distributed_main(forwarded)


if __name__ == "__main__":
    if distributed_argv(sys.argv[1:], os.environ) is not None:
        from distill.distributed.runtime import exit_process

        exit_process(entry())  # a distributed rank leaves without the interpreter's finalization (see there)
    raise SystemExit(entry())
