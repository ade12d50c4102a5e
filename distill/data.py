"""Corpus, tokenizer and batches of the real-model pipeline; nothing is downloaded.

* :func:`load_documents`: the corpus as a list of documents. By default the text of CPython's own
  documentation (``pydoc_data.topics``, one document per topic, in sorted order); or ``--data FILE``: a
  ``.txt`` file (documents separated by blank lines) or a ``.jsonl`` file (one JSON object with a ``"text"``
  string, or one JSON string, per line).
* :func:`split_documents`: a held-out split by passage (documents cut at paragraph breaks into passages of
  about 2000 characters; every 10th passage is held out), so held-out text is never trained on, nor is the
  tokenizer trained on it.
* :func:`load_tokenizer`: the byte-level BPE tokenizer shipped as ``distill/assets/tokenizer.json``
  (``python -m distill.data`` retrains it from the default corpus, deterministically).
* :class:`TokenChunks`: each document tokenized, followed by ``<|endoftext|>``, cut into sequences of at most
  ``seq_len`` tokens; the last piece of a document is shorter and is right-padded in its batch.
  :meth:`TokenChunks.batches` yields :class:`~distill.teachers.base.TokenBatch` es in a seeded order per epoch.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from distill.teachers.base import TokenBatch

__all__ = [
    "EOS_TOKEN",
    "TOKENIZER_PATH",
    "DataError",
    "TokenChunks",
    "load_documents",
    "load_tokenizer",
    "split_documents",
    "train_tokenizer",
]

ASSETS = Path(__file__).resolve().parent / "assets"
TOKENIZER_PATH = ASSETS / "tokenizer.json"
EOS_TOKEN = "<|endoftext|>"
TOKENIZER_VOCAB = 1024
HELD_OUT_EVERY = 10
PASSAGE_CHARS = 2000


class DataError(ValueError):
    """The corpus or tokenizer cannot be used; the message is one sentence naming the file and the fix."""


def load_documents(path: str | Path | None = None) -> list[str]:
    """The documents of ``path`` (``.txt`` or ``.jsonl``), or of ``pydoc_data.topics`` when ``path`` is None."""
    if path is None:
        from pydoc_data.topics import topics

        return [topics[name] for name in sorted(topics) if topics[name].strip()]
    file = Path(path)
    if not file.is_file():
        raise DataError(f"--data {path}: no such file; give a .txt or .jsonl file")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"--data {path}: cannot be read as UTF-8 text ({error})") from None
    if file.suffix == ".txt":
        documents = [part.strip() for part in text.split("\n\n")]
    elif file.suffix == ".jsonl":
        documents = [_jsonl_text(path, number, line) for number, line in enumerate(text.splitlines(), 1)]
    else:
        raise DataError(f"--data {path}: unknown file type {file.suffix!r}; use .txt or .jsonl")
    documents = [d for d in documents if d and d.strip()]
    if len(documents) < 2:
        raise DataError(
            f"--data {path}: found {len(documents)} document(s), need at least 2 to hold one out "
            "(separate documents by a blank line in .txt, one per line in .jsonl)"
        )
    return documents


def _jsonl_text(path: str | Path, number: int, line: str) -> str:
    if not line.strip():
        return ""
    try:
        value = json.loads(line)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:{number}: not valid JSON ({error.msg})") from None
    if isinstance(value, dict):
        value = value.get("text")
    if not isinstance(value, str):
        raise DataError(f'{path}:{number}: expected a JSON string or an object with a "text" string')
    return value


def passages(documents: Sequence[str], min_chars: int = PASSAGE_CHARS) -> list[str]:
    """``documents`` cut at blank lines into passages of about ``min_chars`` characters or more (whole
    paragraphs joined in order; a document shorter than that is one passage)."""
    out: list[str] = []
    for document in documents:
        current: list[str] = []
        size = 0
        for paragraph in document.split("\n\n"):
            current.append(paragraph)
            size += len(paragraph)
            if size >= min_chars:
                out.append("\n\n".join(current))
                current, size = [], 0
        if current and "".join(current).strip():
            out.append("\n\n".join(current))
    return out


def split_documents(documents: Sequence[str], every: int = HELD_OUT_EVERY) -> tuple[list[str], list[str]]:
    """``(train, held_out)`` passages (:func:`passages`): passage ``i`` is held out when
    ``i % every == every - 1``, or the last one if there are fewer than ``every``."""
    pieces = passages(documents)
    held_index = {i for i in range(len(pieces)) if i % every == every - 1} or {len(pieces) - 1}
    train = [p for i, p in enumerate(pieces) if i not in held_index]
    return train, [p for i, p in enumerate(pieces) if i in held_index]


def load_tokenizer(path: str | Path = TOKENIZER_PATH):  # -> tokenizers.Tokenizer
    """The tokenizer saved at ``path`` (a ``tokenizer.json``); :class:`DataError` when it cannot be read."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises plain Exception subclasses for every kind of fault
        raise DataError(f"--tokenizer {path}: not a readable tokenizer.json ({str(error).splitlines()[0]})") from None
    if tokenizer.token_to_id(EOS_TOKEN) is None:
        raise DataError(f"--tokenizer {path}: has no {EOS_TOKEN} token; train it with that special token")
    return tokenizer


def train_tokenizer(documents: Sequence[str], vocab_size: int = TOKENIZER_VOCAB):  # -> tokenizers.Tokenizer
    """A byte-level BPE tokenizer of ``vocab_size`` tokens trained on ``documents`` (id 0 is ``<|endoftext|>``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(documents, trainer=trainer)
    return tokenizer


class TokenChunks:
    """Token sequences of at most ``seq_len`` tokens cut from ``documents`` (see the module docstring)."""

    def __init__(self, documents: Sequence[str], tokenizer, seq_len: int) -> None:
        if seq_len < 2:
            raise DataError(f"--seq-len must be at least 2 (a token and its successor), got {seq_len}")
        eos = tokenizer.token_to_id(EOS_TOKEN)
        self.eos_id = int(eos)
        self.seq_len = seq_len
        self.vocab_size = int(tokenizer.get_vocab_size())
        self.chunks: list[list[int]] = []
        for encoding in tokenizer.encode_batch(list(documents)):
            ids = [*encoding.ids, self.eos_id]
            for start in range(0, len(ids), seq_len):
                piece = ids[start : start + seq_len]
                if len(piece) >= 2:
                    self.chunks.append(piece)
        self.tokens = sum(len(c) for c in self.chunks)

    def __len__(self) -> int:
        return len(self.chunks)

    def num_batches(self, batch_size: int) -> int:
        """Full batches per epoch (the incomplete last one is dropped)."""
        return len(self.chunks) // batch_size

    def batch(self, indices: Sequence[int]) -> TokenBatch:
        """The chunks at ``indices`` right-padded to the longest (pad id ``<|endoftext|>``, mask 0)."""
        rows = [self.chunks[i] for i in indices]
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.eos_id, dtype=torch.int64)
        mask = torch.zeros((len(rows), length), dtype=torch.int64)
        for b, row in enumerate(rows):
            ids[b, : len(row)] = torch.tensor(row, dtype=torch.int64)
            mask[b, : len(row)] = 1
        return TokenBatch(ids, mask)

    def order(self, seed: int, epoch: int) -> list[int]:
        """The chunk order of ``epoch`` (1-based): a permutation seeded by ``(seed, epoch)``."""
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        return torch.randperm(len(self.chunks), generator=generator).tolist()

    def batches(self, batch_size: int, *, seed: int, epoch: int) -> Iterator[TokenBatch]:
        """The full batches of ``epoch`` in their seeded order."""
        order = self.order(seed, epoch)
        for start in range(0, self.num_batches(batch_size) * batch_size, batch_size):
            yield self.batch(order[start : start + batch_size])

    def sequential(self, batch_size: int) -> Iterator[TokenBatch]:
        """Every chunk once, in order, in batches of ``batch_size`` (the last may be smaller): for evaluation."""
        for start in range(0, len(self.chunks), batch_size):
            yield self.batch(range(start, min(start + batch_size, len(self.chunks))))


def main() -> None:
    """Retrain ``distill/assets/tokenizer.json`` from the default corpus's training split."""
    train, _ = split_documents(load_documents())
    tokenizer = train_tokenizer(train)
    ASSETS.mkdir(exist_ok=True)
    tokenizer.save(str(TOKENIZER_PATH))
    print(f"wrote {TOKENIZER_PATH} ({tokenizer.get_vocab_size()} tokens)")


if __name__ == "__main__":
    main()
