"""Shared builders for the tests of the real-model pipeline (``distill/``): tiny data, models, trainers."""

from __future__ import annotations

from pathlib import Path

import torch

from backends import registry
from distill.data import TokenChunks, load_documents, load_tokenizer, split_documents
from distill.models import build_model, load_model
from distill.teachers.hf import HFTeacher
from distill.train import TrainConfig, Trainer

SEQ_LEN = 24
ARCHITECTURES = ("llama-tiny", "qwen2-tiny", "gpt2-tiny")


def small_corpus_text(paragraphs: int = 60) -> str:
    """About ``paragraphs`` paragraphs of the pydoc corpus, as a .txt corpus (documents split by blank lines)."""
    pieces: list[str] = []
    for document in load_documents():
        pieces += [p.strip() for p in document.split("\n\n") if len(p.strip()) > 80]
        if len(pieces) >= paragraphs:
            break
    return "\n\n".join(pieces[:paragraphs]) + "\n"


def write_corpus(folder: Path, paragraphs: int = 60) -> Path:
    path = folder / "corpus.txt"
    path.write_text(small_corpus_text(paragraphs), encoding="utf-8")
    return path


def chunks(paragraphs: int = 60, seq_len: int = SEQ_LEN) -> TokenChunks:
    documents = [p for p in small_corpus_text(paragraphs).split("\n\n") if p.strip()]
    train, _ = split_documents(documents)
    return TokenChunks(train, load_tokenizer(), seq_len)


def tiny_config(name: str = "llama-tiny", **overrides: object):
    """The shipped config ``name`` with fields overridden (e.g. ``vocab_size``)."""
    import json

    from transformers import AutoConfig

    from distill.models import CONFIGS

    data = json.loads((CONFIGS / f"{name}.json").read_text())
    data.update(overrides)
    model_type = data.pop("model_type")
    return AutoConfig.for_model(model_type, **data)


def model(name: str = "llama-tiny", seed: int = 0, **overrides: object) -> torch.nn.Module:
    return build_model(tiny_config(name, **overrides), seed) if overrides else load_model(name, seed=seed)


def trainer(
    student: torch.nn.Module | None = None,
    teacher_model: torch.nn.Module | None = None,
    *,
    backend: str = "torch",
    data: TokenChunks | None = None,
    output_dir: Path | None = None,
    **config: object,
) -> Trainer:
    settings = {"batch_size": 4, "alpha": 0.5, "temperature": 2.0, "warmup_steps": 2, "steps_per_epoch": 4}
    settings.update(config)
    teacher = None if settings["alpha"] == 1.0 and teacher_model is None else HFTeacher(
        teacher_model if teacher_model is not None else model(seed=1)
    )
    return Trainer(
        student if student is not None else model(seed=0),
        teacher,
        data if data is not None else chunks(),
        TrainConfig(**settings),
        registry.get(backend),
        output_dir=output_dir,
        log_every=0,
        progress_bar=False,
    )
