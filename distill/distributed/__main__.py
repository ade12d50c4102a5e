"""``torchrun --nproc_per_node N -m distill.distributed [options]``: distil a tiny teacher into a tiny student
on N ranks (gloo on CPU, NCCL on GPUs), data parallel (DDP or FSDP2) or pipeline parallel.

Every rank builds the same models and data from ``--seed``; each optimizer step is normalized by the valid
tokens of the whole step, so the run reaches the parameters of ``--parallel single`` (one process, the whole
batch) to rounding, whatever N, ``--accumulation`` or ``--microbatch-size``. The rank that sees the step's
loss prints one line per step with ``loss``, ``ce`` and ``kd`` on one scale (per valid token). With
``--output-dir``, rank 0 writes ``student.safetensors`` (the full student) and ``metrics.jsonl``.

``--device auto`` (the default) puts rank ``LOCAL_RANK`` on ``cuda:LOCAL_RANK`` with NCCL when CUDA is
available, else every rank on the CPU with gloo. The CUDA path was written for GPU nodes and is tested here
only in its selection logic (:mod:`distill.distributed.placement`); the CPU path is what the tests run.

Exit codes: 0 done; 1 a rank failed (another rank died, a timeout): one line on stderr; 2 a bad option.
Started without torchrun, it runs as a group of one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import NoReturn

from distill.distributed.config import DATA_PARALLEL, OPTIMIZERS, PARALLEL_MODES, SCHEDULES, ConfigError, RunConfig
from distill.distributed.loss import StepLog
from distill.distributed.model import ModelShape
from distill.distributed.placement import BACKENDS, DEVICES, placement_from_environment
from distill.distributed.runtime import EXIT_BAD_SETTING, distributed, exit_process, report_failure

PROG = "python -m distill.distributed"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"{PROG}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(EXIT_BAD_SETTING)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    add = parser.add_argument
    add("--parallel", choices=PARALLEL_MODES, default="data", help="data, pipeline, or single (default data)")
    add(
        "--data-parallel",
        choices=DATA_PARALLEL,
        default="ddp",
        help="data parallel: ddp (replicas) or fsdp2 (fully_shard: sharded parameters) (default ddp)",
    )
    add("--steps", type=int, default=20, help="optimizer steps (default 20)")
    add("--batch-size", type=int, default=16, help="sequences per optimizer step, over all ranks (default 16)")
    add("--accumulation", type=int, default=1, help="data parallel: microbatches per rank per step (default 1)")
    add("--microbatch-size", type=int, default=None, help="pipeline: sequences per microbatch (default: the batch)")
    add("--schedule", choices=SCHEDULES, default="gpipe", help="pipeline schedule (default gpipe)")
    add("--temperature", type=float, default=2.0, help="KD temperature (default 2.0)")
    add("--alpha", type=float, default=0.5, help="weight of the CE term; 1 is pure CE (default 0.5)")
    add("--optimizer", choices=OPTIMIZERS, default="adamw", help="default adamw")
    add("--learning-rate", type=float, default=3e-3, help="default 3e-3")
    add("--max-grad-norm", type=float, default=1.0, help="clip the global gradient norm; 0 turns it off (default 1)")
    add("--dtype", choices=("float32", "float64"), default="float32", help="default float32")
    add("--seed", type=int, default=0, help="seed of the models and the data (default 0)")
    add("--vocab", type=int, default=64, help="vocabulary size (default 64)")
    add("--seq-len", type=int, default=16, help="tokens per sequence (default 16)")
    add("--width", type=int, default=32, help="student width (default 32)")
    add("--layers", type=int, default=4, help="student blocks; pipeline stages split them (default 4)")
    add("--teacher-width", type=int, default=64, help="teacher width (default 64)")
    add("--teacher-layers", type=int, default=4, help="teacher blocks (default 4)")
    add("--device", choices=DEVICES, default="auto", help="auto (default): cuda:LOCAL_RANK if CUDA is there, else cpu")
    add("--dist-backend", choices=BACKENDS, default="auto", help="auto (default): nccl on cuda, gloo on cpu")
    add("--timeout", type=float, default=60.0, help="seconds a rank waits on a collective before failing (default 60)")
    add("--output-dir", type=Path, default=None, help="rank 0 writes student.safetensors and metrics.jsonl here")
    return parser


def config_from(args: argparse.Namespace) -> RunConfig:
    if args.timeout <= 0:
        raise ConfigError(f"--timeout must be > 0 seconds, got {args.timeout}")
    heads = 2
    return RunConfig(
        parallel=args.parallel,
        data_parallel=args.data_parallel,
        steps=args.steps,
        batch_size=args.batch_size,
        accumulation=args.accumulation,
        microbatch_size=args.microbatch_size,
        schedule=args.schedule,
        student=ModelShape(args.vocab, args.seq_len, args.width, args.layers, heads),
        teacher=ModelShape(args.vocab, args.seq_len, args.teacher_width, args.teacher_layers, heads),
        temperature=args.temperature,
        alpha=args.alpha,
        optimizer=args.optimizer,
        learning_rate=args.learning_rate,
        max_grad_norm=args.max_grad_norm or None,
        dtype=args.dtype,
        seed=args.seed,
    )


_FLAGS = re.compile(
    r"\b(steps|batch_size|accumulation|microbatch_size|schedule|temperature|alpha|optimizer|learning_rate|"
    r"max_grad_norm|dtype|data_parallel|parallel)\b"
)


def _in_flags(error: ConfigError) -> ConfigError:
    """The configuration's message with its setting names written as this command's flags."""
    return ConfigError(_FLAGS.sub(lambda m: "--" + m.group(1).replace("_", "-"), str(error)))


def _print_step(total: int):  # type: ignore[no-untyped-def]
    def show(log: StepLog) -> None:
        print(
            f"step {log.step}/{total}: loss {log.loss:.4f}  ce {log.ce:.4f}  kd {log.kd:.4f}  ({log.tokens} tokens)",
            flush=True,
        )

    return show


def _write(output_dir: Path, params: dict, logs: list[StepLog]) -> None:
    from safetensors.torch import save_file

    output_dir.mkdir(parents=True, exist_ok=True)
    model_tmp = output_dir / "student.safetensors.tmp"
    save_file({name: value.contiguous() for name, value in params.items()}, str(model_tmp))
    os.replace(model_tmp, output_dir / "student.safetensors")
    metrics_tmp = output_dir / "metrics.jsonl.tmp"
    metrics_tmp.write_text("".join(json.dumps(log.as_dict()) + "\n" for log in logs))
    os.replace(metrics_tmp, output_dir / "metrics.jsonl")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with report_failure(PROG):
        try:
            config = config_from(args).check(int(os.environ.get("WORLD_SIZE", "1")))
        except ConfigError as error:
            raise _in_flags(error) from None
        placement = placement_from_environment(args.device, args.dist_backend)
        from distill.distributed.train import train

        with distributed(args.timeout, placement) as rank:
            if rank == 0:
                world = int(os.environ.get("WORLD_SIZE", "1"))
                split = (
                    f"{world} stages, {config.microbatches} microbatches of {config.pipeline_microbatch_size}"
                    if config.parallel == "pipeline"
                    else f"{world} ranks x {config.microbatches} microbatches"
                )
                mode = f"{config.parallel} parallel" + (" (fsdp2)" if config.data_parallel == "fsdp2" else "")
                print(
                    f"{mode}: {split}, batch {config.batch_size}, {config.steps} steps on {placement}", flush=True
                )
            result = train(config, on_step=_print_step(config.steps), device=placement.device)
            if result is not None and args.output_dir is not None:
                _write(args.output_dir, result.params, result.logs)
                print(f"wrote {args.output_dir / 'student.safetensors'} and metrics.jsonl", flush=True)
    return 0


if __name__ == "__main__":
    exit_process(main())
