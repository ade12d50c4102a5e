"""Joining and leaving the process group, and turning a failed run into one line and an exit code."""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from collections.abc import Iterator
from datetime import timedelta

import torch
import torch.distributed as dist

from distill.distributed.config import ConfigError
from distill.distributed.launch import free_port
from distill.distributed.placement import CPU_GLOO, Placement
from distill.distributed.train import RankFailure, collective_failures

EXIT_RANK_FAILED = 1
EXIT_BAD_SETTING = 2

_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@contextlib.contextmanager
def distributed(timeout_s: float, placement: Placement = CPU_GLOO) -> Iterator[int]:
    """Join the process group that ``torchrun`` (or :mod:`distill.distributed.launch`) describes in the
    environment, with ``placement``'s backend (default gloo, every rank on the CPU) and a ``timeout_s`` limit
    on every collective; yield this rank. On CUDA, this rank's device becomes the current one first (NCCL
    and ``gather_object`` use it).

    Started without those variables (plain ``python -m``), it makes a group of one on 127.0.0.1.
    """
    if not all(name in os.environ for name in _TORCHRUN_VARIABLES):
        present = [name for name in _TORCHRUN_VARIABLES if name in os.environ]
        if present:
            raise ConfigError(
                f"the environment sets {', '.join(present)} but not all of {', '.join(_TORCHRUN_VARIABLES)}: "
                f"start the ranks with torchrun, or set none of them for a single process"
            )
        os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    if placement.device.type == "cuda":
        torch.cuda.set_device(placement.device)
    try:
        dist.init_process_group(placement.backend, timeout=timedelta(seconds=timeout_s))
    except (dist.DistError, RuntimeError, ValueError) as error:
        raise RankFailure(
            f"rank {os.environ.get('RANK')} could not join the process group at "
            f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} within {timeout_s:g} s "
            f"({type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''})"
        ) from error
    rank = dist.get_rank()
    yield rank
    # Free what the run left in reference cycles (FSDP2's state holds collective work and its tensors) while
    # the interpreter is whole.
    gc.collect()
    # Leave together: a rank that tears its group down while a peer still has transfers in flight to it can
    # abort that peer (gloo's threads are killed with work pending).
    with collective_failures(rank, dist.get_world_size(), "the end", "the final barrier"):
        dist.barrier(device_ids=[placement.device.index] if placement.backend == "nccl" else None)
    dist.destroy_process_group()


@contextlib.contextmanager
def report_failure(program: str) -> Iterator[None]:
    """A :class:`RankFailure` or :class:`ConfigError` inside becomes one line on stderr and an exit code
    (1 and 2). The process leaves at once (``os._exit``): tearing down a process group whose peers are gone
    can block, and a rank that must stop must never hang."""
    try:
        yield
    except RankFailure as error:
        _leave(f"{program}: error: {error}", EXIT_RANK_FAILED)
    except ConfigError as error:
        _leave(f"{program}: error: {error}", EXIT_BAD_SETTING)


def _leave(line: str, code: int) -> None:
    print(line, file=sys.stderr, flush=True)
    exit_process(code)


def exit_process(code: int) -> None:
    """End this process with ``code`` now, after flushing stdout and stderr, without the interpreter's
    finalization. The distributed commands end this way after a finished run too: a process group's C++
    objects that outlive ``destroy_process_group`` (a device mesh keeps its groups) can hold gloo work whose
    tensors need the GIL while the interpreter is torn down, which aborts the process (SIGABRT, "terminate
    called without an active exception") after a run that succeeded."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
