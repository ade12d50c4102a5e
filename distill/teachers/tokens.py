"""How token ids are spelled on the wire, for the API teacher and the teacher server.

An OpenAI-compatible server names tokens by strings (``tokens`` and the keys of ``top_logprobs``); vLLM names
them ``token_id:N`` when asked with ``return_tokens_as_token_ids``. A :class:`TokenVocab` turns ids into those
strings and back, so that the client can check that every string re-encodes to the id it stands for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

TOKEN_ID_PREFIX = "token_id:"


class TokenVocab(Protocol):
    """The part of a tokenizer the API teacher needs."""

    vocab_size: int

    def id_to_token(self, token_id: int) -> str: ...

    def token_to_id(self, token: str) -> int | None: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class ByteVocab:
    """Byte-level tokenizer: id ``b < 256`` is byte ``b``, spelled as the character for printable ASCII and as
    ``<0xNN>`` otherwise; ids from 256 up to ``vocab_size`` (padded embedding rows) are ``<extra_N>``."""

    def __init__(self, vocab_size: int = 256) -> None:
        if vocab_size < 256:
            raise ValueError(f"a byte-level vocabulary needs at least 256 ids, got vocab_size={vocab_size}")
        self.vocab_size = vocab_size

    def id_to_token(self, token_id: int) -> str:
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} is outside the vocabulary [0, {self.vocab_size})")
        if token_id >= 256:
            return f"<extra_{token_id}>"
        return chr(token_id) if 0x21 <= token_id <= 0x7E else f"<0x{token_id:02X}>"

    def token_to_id(self, token: str) -> int | None:
        if len(token) == 1 and 0x21 <= ord(token) <= 0x7E:
            return ord(token)
        if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            try:
                value = int(token[3:5], 16)
            except ValueError:
                return None
            return None if 0x21 <= value <= 0x7E else value
        if token.startswith("<extra_") and token.endswith(">") and token[7:-1].isdigit():
            value = int(token[7:-1])
            return value if 256 <= value < self.vocab_size else None
        return None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class HFVocab:
    """A ``tokenizers`` ``tokenizer.json`` (or a transformers tokenizer folder holding one)."""

    def __init__(self, path: str | Path) -> None:
        from tokenizers import Tokenizer

        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise ValueError(f"tokenizer {path}: no tokenizer.json there; pass a tokenizer.json file or 'bytes'")
        self._tok = Tokenizer.from_file(str(file))
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

    def id_to_token(self, token_id: int) -> str:
        token = self._tok.id_to_token(token_id)
        if token is None:
            raise ValueError(f"token id {token_id} is outside the vocabulary [0, {self.vocab_size})")
        return token

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)


def load_vocab(spec: str, vocab_size: int = 256) -> TokenVocab:
    """``bytes`` (byte-level, padded to ``vocab_size``), a tokenizer.json file, or a folder holding one."""
    if spec == "bytes":
        return ByteVocab(vocab_size)
    return HFVocab(spec)

