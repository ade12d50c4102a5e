"""Device and process-group backend selection of :mod:`distill.distributed.placement`: a pure function of the
request and the machine's facts, so every branch and every error sentence is checked here without a GPU. (The
CUDA/NCCL path itself does not run in this project's CI; the gloo/CPU path is what the other tests run.)"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from distill.distributed.config import ConfigError  # noqa: E402
from distill.distributed.placement import (  # noqa: E402
    CPU_GLOO,
    Placement,
    choose_placement,
    placement_from_environment,
)

GPU_NODE = {"cuda_available": True, "cuda_devices": 8, "local_rank": 3, "local_world_size": 8}
CPU_NODE = {"cuda_available": False, "cuda_devices": 0, "local_rank": 1, "local_world_size": 2}


@pytest.mark.parametrize(
    "device,backend,facts,expected",
    [
        ("auto", "auto", GPU_NODE, Placement(torch.device("cuda:3"), "nccl")),
        ("cuda", "auto", GPU_NODE, Placement(torch.device("cuda:3"), "nccl")),
        ("cuda", "gloo", GPU_NODE, Placement(torch.device("cuda:3"), "gloo")),
        ("cpu", "auto", GPU_NODE, CPU_GLOO),
        ("auto", "auto", CPU_NODE, CPU_GLOO),
        ("cpu", "gloo", CPU_NODE, CPU_GLOO),
        ("auto", "auto", {**GPU_NODE, "local_rank": 0, "local_world_size": 1, "cuda_devices": 1},
         Placement(torch.device("cuda:0"), "nccl")),
    ],
)  # fmt: skip
def test_placement_follows_the_request_and_the_node(device, backend, facts, expected) -> None:  # type: ignore[no-untyped-def]
    assert choose_placement(device, backend, **facts) == expected


@pytest.mark.parametrize(
    "device,backend,facts,words",
    [
        ("cuda", "auto", CPU_NODE, "--device cuda: torch sees no CUDA device here (torch.cuda.is_available() is "
         "False, torch "),
        ("cuda", "nccl", CPU_NODE, "use --device cpu or auto, or a CUDA build of torch on a GPU node"),
        ("auto", "auto", {**GPU_NODE, "cuda_devices": 4}, "--device cuda: 8 ranks on this node need one GPU each, "
         "but it has 4: start at most 4 (torchrun --nproc_per_node 4), or use --device cpu"),
        ("cpu", "nccl", GPU_NODE, "--dist-backend nccl moves only CUDA tensors, but the ranks run on the CPU: use "
         "--dist-backend gloo (or auto), or --device cuda on a GPU node"),
        ("auto", "nccl", CPU_NODE, "--dist-backend nccl moves only CUDA tensors"),
        ("cuda", "auto", {**GPU_NODE, "nccl_available": False}, "--dist-backend nccl: this torch build has no NCCL "
         "(torch.distributed.is_nccl_available() is False): use --dist-backend gloo"),
        ("gpu", "auto", GPU_NODE, "--device must be one of auto, cpu, cuda, got 'gpu'"),
        ("cuda", "mpi", GPU_NODE, "--dist-backend must be one of auto, gloo, nccl, got 'mpi'"),
        ("cuda", "auto", {**GPU_NODE, "local_rank": 8}, "LOCAL_RANK 8 is not in [0, LOCAL_WORLD_SIZE 8): start the "
         "ranks with torchrun"),
    ],
)  # fmt: skip
def test_impossible_placements_are_sentences(device, backend, facts, words) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as error:
        choose_placement(device, backend, **facts)
    message = str(error.value)
    assert words in message and "\n" not in message


def test_every_rank_of_an_oversubscribed_node_fails_alike() -> None:
    """Rank 0 of 8 on a 4-GPU node fails too (it has a GPU, but its peers do not), so no rank is left waiting
    for the others at the rendezvous."""
    for local_rank in range(8):
        with pytest.raises(ConfigError, match="8 ranks on this node need one GPU each"):
            choose_placement("cuda", "auto", **{**GPU_NODE, "cuda_devices": 4, "local_rank": local_rank})


def test_the_environment_gives_the_local_rank_and_this_machines_devices() -> None:
    env = {"LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert placement_from_environment("cpu", "auto", env) == CPU_GLOO
    if torch.cuda.device_count() >= 2:
        assert placement_from_environment("auto", "auto", env) == Placement(torch.device("cuda:1"), "nccl")
    elif not torch.cuda.is_available():
        assert placement_from_environment("auto", "auto", env) == CPU_GLOO
    assert placement_from_environment("cpu", "auto", {}) == CPU_GLOO  # without torchrun: local rank 0 of 1
    with pytest.raises(ConfigError, match="the environment variable LOCAL_RANK must be an integer, got 'one'"):
        placement_from_environment("cpu", "auto", {"LOCAL_RANK": "one"})
