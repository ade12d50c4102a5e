"""Training checkpoints as one safetensors file, written atomically.

``checkpoint.safetensors`` holds the student's weights (``model.*``), the optimizer's tensors
(``optim.<param index>.<name>``) and the torch RNG state (``rng.torch``); its metadata header holds the step,
the optimizer's and scheduler's other state and the run's configuration as JSON. It is written to a temporary
file in the same folder, fsynced and renamed over the old one (``reference.pipeline.atomic_write``), so an
interrupted run always leaves the last complete checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from reference.pipeline import atomic_write

__all__ = ["CHECKPOINT_FILENAME", "FORMAT", "Checkpoint", "CheckpointError", "read_checkpoint", "write_checkpoint"]

CHECKPOINT_FILENAME = "checkpoint.safetensors"
FORMAT = "kd-distill-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the run; the message is one sentence."""


@dataclass
class Checkpoint:
    """What a checkpoint restores."""

    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: torch.Tensor
    config: dict[str, Any]


def write_checkpoint(
    path: Path,
    *,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    config: dict[str, Any],
) -> Path:
    """Write the state after ``step`` optimizer steps to ``path`` atomically."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    state = optimizer.state_dict()
    plain_state: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                tensors[f"optim.{index}.{name}"] = value.detach().contiguous().clone()
            else:
                plain_state.setdefault(str(index), {})[name] = float(value)
    tensors["rng.torch"] = torch.get_rng_state()
    metadata = {
        "format": FORMAT,
        "step": str(step),
        "optimizer": json.dumps({"param_groups": state["param_groups"], "scalars": plain_state}),
        "scheduler": json.dumps(scheduler.state_dict()),
        "config": json.dumps(config, sort_keys=True),
    }
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def read_checkpoint(path: Path) -> Checkpoint:
    """The checkpoint at ``path``; :class:`CheckpointError` for a missing, truncated or foreign file."""
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"--resume: no checkpoint at {path}; run without --resume to start fresh")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:  # safetensors raises SafetensorError and others for damaged files
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"--resume: {path} is not a readable checkpoint ({first}); delete it to start fresh"
        ) from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"--resume: {path} is not a {FORMAT} file (format {metadata.get('format')!r})")
    try:
        step = int(metadata["step"])
        optimizer = json.loads(metadata["optimizer"])
        scheduler = json.loads(metadata["scheduler"])
        config = json.loads(metadata["config"])
        rng = tensors.pop("rng.torch")
    except (KeyError, ValueError) as error:
        raise CheckpointError(f"--resume: {path} has a damaged header ({error}); delete it to start fresh") from None
    model = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for index, scalars in optimizer.pop("scalars").items():
        for name, value in scalars.items():
            state.setdefault(int(index), {})[name] = torch.tensor(value)
    optimizer["state"] = state
    return Checkpoint(step, model, optimizer, scheduler, rng, config)
