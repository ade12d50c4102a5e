"""Models of the real-model pipeline: Hugging Face causal LMs built from a shipped config or loaded from disk.

A model *spec* (``--student`` / ``--teacher``) is one of

* the name of a config shipped in ``distill/configs/`` (``llama-tiny``, ``llama-teacher``, ``qwen2-tiny``,
  ``gpt2-tiny``): the model is built from it with weights initialized under the run's seed;
* a ``.json`` config file (with ``model_type``), built the same way;
* a folder holding ``config.json`` and ``model.safetensors`` (as :func:`save_model` writes it, or any Hugging
  Face checkpoint in safetensors): the model is loaded in its own dtype.

Nothing is downloaded: :func:`load_model` passes ``local_files_only``. Every fault is a :class:`ModelError` with
one sentence naming the flag, the path and the fix.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["CONFIGS", "ModelError", "build_model", "load_model", "output_vocab_size", "save_model", "shipped_configs"]

CONFIGS = Path(__file__).resolve().parent / "configs"


class ModelError(ValueError):
    """A model spec cannot be turned into a model; the message is one sentence."""


def shipped_configs() -> list[str]:
    """Names of the configs in ``distill/configs/``."""
    return sorted(p.stem for p in CONFIGS.glob("*.json"))


def _quiet_transformers() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def _config_from_json(flag: str, file: Path) -> Any:
    from transformers import AutoConfig

    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"{flag} {file}: not a readable JSON config ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        raise ModelError(f'{flag} {file}: the config must be a JSON object with a "model_type" string')
    data = dict(data)
    model_type = data.pop("model_type")
    try:
        return AutoConfig.for_model(model_type, **data)
    except (ValueError, KeyError, TypeError) as error:
        raise ModelError(f"{flag} {file}: {str(error).splitlines()[0]}") from None


def build_model(config: Any, seed: int) -> torch.nn.Module:
    """A float32 causal LM of ``config`` with weights initialized under ``seed`` (same seed, same weights)."""
    from transformers import AutoModelForCausalLM

    _quiet_transformers()
    devices = []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    return model


def load_model(spec: str, *, seed: int, flag: str = "--student") -> torch.nn.Module:
    """The model ``spec`` names (see the module docstring); built ones are seeded with ``seed``."""
    _quiet_transformers()
    if spec in shipped_configs():
        return build_model(_config_from_json(flag, CONFIGS / f"{spec}.json"), seed)
    path = Path(spec)
    if path.is_file() and path.suffix == ".json":
        return build_model(_config_from_json(flag, path), seed)
    if not path.exists():
        raise ModelError(
            f"{flag} {spec}: no such folder or config; give a folder with config.json and model.safetensors, "
            f"a .json config, or one of {', '.join(shipped_configs())}"
        )
    if not path.is_dir():
        raise ModelError(f"{flag} {spec}: not a folder or a .json config")
    if not (path / "config.json").is_file():
        raise ModelError(f"{flag} {spec}: the folder has no config.json")
    if not any(path.glob("*.safetensors")):
        raise ModelError(f"{flag} {spec}: the folder has no .safetensors weights (only safetensors are loaded)")
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, use_safetensors=True, torch_dtype="auto"
        )
    except Exception as error:  # transformers and safetensors raise many types for a damaged folder
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelError(f"{flag} {spec}: cannot be loaded ({first})") from None
    return model


def output_vocab_size(model: torch.nn.Module) -> int:
    """Width of the model's logits: a plain module's ``vocab_size`` attribute, else the rows of its output
    embedding, else ``config.vocab_size``."""
    own = getattr(model, "vocab_size", None)
    if isinstance(own, int) and not isinstance(own, bool):
        return own
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is not None and hasattr(head, "weight"):
        return int(head.weight.shape[0])
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if not isinstance(vocab, int):
        raise ModelError(
            f"{type(model).__name__} has no vocab_size, output embedding or config.vocab_size: "
            "give it a vocab_size attribute"
        )
    return vocab


def save_model(model: torch.nn.Module, folder: str | Path) -> None:
    """Write ``model`` to ``folder`` as ``config.json`` + ``model.safetensors`` (loadable by :func:`load_model`)."""
    model.save_pretrained(folder, safe_serialization=True)
