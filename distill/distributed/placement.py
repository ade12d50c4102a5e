"""Where a rank computes and how the ranks talk: the device (``cpu`` or ``cuda:LOCAL_RANK``) and the
process-group backend (``gloo`` or ``nccl``), chosen from the flags and what this machine has.

:func:`choose_placement` is a pure function of the request and the machine's facts, so every branch and every
error sentence is tested without a GPU; :func:`placement_from_environment` reads the facts (``torch.cuda``,
``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``) and calls it.

The CUDA path (NCCL, ``cuda:LOCAL_RANK``, DDP ``device_ids``, an FSDP2 mesh on ``cuda``) was written for GPU
nodes; this project's CI has no GPU, so it is tested here only in its selection logic (the CPU path, gloo, is
what the tests and the ``distill-distributed-v1`` falsifiers run).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from distill.distributed.config import ConfigError

DEVICES = ("auto", "cpu", "cuda")
BACKENDS = ("auto", "gloo", "nccl")


@dataclass(frozen=True)
class Placement:
    """This rank's device (``cpu`` or ``cuda:<local rank>``) and the process group's backend."""

    device: torch.device
    backend: str

    def __str__(self) -> str:
        return f"{self.device} ({self.backend})"


CPU_GLOO = Placement(torch.device("cpu"), "gloo")
"""What the tests and falsifiers run: every rank on the CPU, gloo between them."""


def choose_placement(
    device: str,
    backend: str,
    *,
    cuda_available: bool,
    cuda_devices: int,
    local_rank: int,
    local_world_size: int,
    nccl_available: bool = True,
) -> Placement:
    """The placement for ``device`` (``auto``: ``cuda`` if CUDA is available, else ``cpu``) and ``backend``
    (``auto``: ``nccl`` on ``cuda``, ``gloo`` on ``cpu``), on a node with ``cuda_devices`` CUDA devices that
    runs ``local_world_size`` ranks, this one ``local_rank``. Each CUDA rank takes ``cuda:<local_rank>``.

    Raises :class:`ConfigError` (a sentence naming the flag and the fix) when the request cannot run here. The
    checks use the node's rank count, not only this rank's index, so every rank of the node fails alike
    instead of some waiting for peers that have left."""
    if device not in DEVICES:
        raise ConfigError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if backend not in BACKENDS:
        raise ConfigError(f"--dist-backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if not 0 <= local_rank < local_world_size:
        raise ConfigError(
            f"LOCAL_RANK {local_rank} is not in [0, LOCAL_WORLD_SIZE {local_world_size}): start the ranks with "
            f"torchrun, which sets both"
        )
    kind = ("cuda" if cuda_available else "cpu") if device == "auto" else device
    if kind == "cuda":
        if not cuda_available:
            raise ConfigError(
                "--device cuda: torch sees no CUDA device here (torch.cuda.is_available() is False, "
                f"torch {torch.__version__}): use --device cpu or auto, or a CUDA build of torch on a GPU node"
            )
        if local_world_size > cuda_devices:
            raise ConfigError(
                f"--device cuda: {local_world_size} ranks on this node need one GPU each, but it has "
                f"{cuda_devices}: start at most {cuda_devices} (torchrun --nproc_per_node {cuda_devices}), or "
                f"use --device cpu"
            )
    chosen = ("nccl" if kind == "cuda" else "gloo") if backend == "auto" else backend
    if chosen == "nccl" and kind != "cuda":
        raise ConfigError(
            "--dist-backend nccl moves only CUDA tensors, but the ranks run on the CPU: use --dist-backend gloo "
            "(or auto), or --device cuda on a GPU node"
        )
    if chosen == "nccl" and not nccl_available:
        raise ConfigError(
            "--dist-backend nccl: this torch build has no NCCL (torch.distributed.is_nccl_available() is False): "
            "use --dist-backend gloo, or a torch build with NCCL"
        )
    return Placement(torch.device(f"cuda:{local_rank}") if kind == "cuda" else torch.device("cpu"), chosen)


def placement_from_environment(device: str, backend: str, env: Mapping[str, str] | None = None) -> Placement:
    """:func:`choose_placement` with this machine's CUDA devices and torchrun's ``LOCAL_RANK`` and
    ``LOCAL_WORLD_SIZE`` (a process started without torchrun is local rank 0 of 1)."""
    import torch.distributed as dist

    env = os.environ if env is None else env
    local_rank = _integer(env, "LOCAL_RANK", 0)
    local_world_size = _integer(env, "LOCAL_WORLD_SIZE", max(local_rank + 1, 1))
    return choose_placement(
        device,
        backend,
        cuda_available=torch.cuda.is_available(),
        cuda_devices=torch.cuda.device_count(),
        local_rank=local_rank,
        local_world_size=local_world_size,
        nccl_available=dist.is_available() and dist.is_nccl_available(),
    )


def _integer(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"the environment variable {name} must be an integer, got {text!r}") from None
