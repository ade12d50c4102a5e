"""A teacher behind an OpenAI-compatible ``/v1/completions`` endpoint (vLLM, the local teacher server, ...).

Two ways to ask for the prompt's top-k log-probabilities, both with the prompt sent as token ids:

- ``mode="echo"``: ``echo=true, max_tokens=0|1, logprobs=K``; the answer is ``choices[i].logprobs`` with
  ``tokens`` (the prompt, echoed), ``top_logprobs`` (one ``{token string: logprob}`` per position, null at
  position 0 where nothing precedes the first token) and, with ``max_tokens=1``, one generated position after
  the prompt (ignored: it is no prompt token);
- ``mode="prompt_logprobs"`` (vLLM's extension): ``prompt_logprobs=K``; the answer is
  ``choices[i].prompt_logprobs``, null at position 0, then ``{token id: {logprob, rank, decoded_token}}``.

Position ``p >= 1`` is the distribution of prompt token ``p`` given tokens ``0 .. p-1``, which is row ``p - 1``
of the :class:`~distill.teachers.base.TopK` answer (see that module for the alignment). Servers add the prompt's
own token to a position's alternatives when it is not in the top K; the K largest are kept.

Every answer is checked; a malformed one raises :class:`PayloadError`, one line naming the sequence and the
position. Requests are retried with exponential backoff on 429, 5xx, timeouts and dropped connections, at most
``concurrency`` in flight; :attr:`APITeacher.stats` counts requests and retries.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from distill.teachers.base import TokenBatch, TopK, empty_topk, pad_rows, sequences_from_batch
from distill.teachers.tokens import TOKEN_ID_PREFIX, TokenVocab

PROBE_TEXT = "The quick brown fox jumps over 13 lazy dogs.\n\tcafé, naïve: 日本語 🙂"


class PayloadError(ValueError):
    """The server answered 200 with a payload that breaks the API's shape or the laws of log-probabilities."""


class TeacherAPIError(RuntimeError):
    """The request failed: a 4xx answer, retries exhausted, or a tokenizer that disagrees with the server's."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: attempt ``a`` waits ``uniform(0, min(max_delay, base * 2**a))``;
    a 429's ``Retry-After`` (seconds) is honoured up to ``max_delay``."""

    max_retries: int = 8
    base_delay: float = 0.05
    max_delay: float = 2.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        if retry_after is not None:
            return min(self.max_delay, max(0.0, retry_after))
        return rng.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))


@dataclass
class APIStats:
    """Counts for one teacher: requests sent (attempts), answers accepted, retries by reason."""

    attempts: int = 0
    answered: int = 0
    retries: Counter = field(default_factory=Counter)

    @property
    def total_retries(self) -> int:
        return sum(self.retries.values())


def _short(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Spelling:
    """Maps the strings a server names tokens by to ids: ``token_id:N``, the vocabulary's own spelling, or the
    token's decoded text (when that text belongs to exactly one id)."""

    def __init__(self, vocab: TokenVocab, vocab_size: int | None = None) -> None:
        self.vocab = vocab
        self.vocab_size = vocab.vocab_size if vocab_size is None else vocab_size
        self._decoded: dict[str, int | None] | None = None

    def to_id(self, text: str) -> int | None:
        if text.startswith(TOKEN_ID_PREFIX):
            digits = text[len(TOKEN_ID_PREFIX):]
            value = int(digits) if digits.isdigit() else None
            return value if value is not None and value < self.vocab_size else None
        token_id = self.vocab.token_to_id(text)
        if token_id is not None:
            return token_id
        if self._decoded is None:
            decoded: dict[str, int | None] = {}
            for i in range(self.vocab.vocab_size):
                piece = self.vocab.decode([i])
                decoded[piece] = None if piece in decoded else i  # ambiguous decoded text maps to no id
            self._decoded = decoded
        return self._decoded.get(text)

    def spells(self, text: object, token_id: int) -> bool:
        if not isinstance(text, str):
            return False
        if self.to_id(text) == token_id:
            return True
        return not text.startswith(TOKEN_ID_PREFIX) and token_id < self.vocab.vocab_size \
            and text == self.vocab.decode([token_id])

    def unknown(self, text: str) -> str:
        """Why ``text`` names no token id, as the end of a sentence."""
        if text.startswith(TOKEN_ID_PREFIX):
            return f"is not a token id in [0, {self.vocab_size})"
        return "does not re-encode to a token id (ask the server for return_tokens_as_token_ids)"


def _logprob(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PayloadError(f"{where}: log-prob {_short(value)} is not a number")
    if not math.isfinite(value):
        raise PayloadError(f"{where}: log-prob {value} is not finite")
    if value > 0:
        raise PayloadError(f"{where}: log-prob {value} > 0 (a probability above 1)")
    return float(value)


def _top_k_row(pairs: dict[int, float], k: int, where: str) -> tuple[list[float], list[int]]:
    if len(pairs) < k:
        raise PayloadError(f"{where}: {len(pairs)} alternatives, fewer than the K={k} asked for")
    ranked = sorted(pairs.items(), key=lambda item: (-item[1], item[0]))[:k]
    mass = math.fsum(math.exp(v) for _, v in ranked)
    if mass > 1 + 1e-4:
        raise PayloadError(f"{where}: the top-{k} probabilities sum to {mass:.6f} > 1")
    return [v for _, v in ranked], [t for t, _ in ranked]


def _first_position(value: object, where: str) -> None:
    if value not in (None, {}):
        raise PayloadError(f"{where}, position 0: expected null (no token precedes the first), got {_short(value)}")


def parse_echo(choice: object, ids: Sequence[int], k: int, spelling: _Spelling, where: str,
               max_tokens: int = 0) -> TopK:
    """The top-k rows of one ``echo=true`` choice for the prompt ``ids`` (see the module doc)."""
    logprobs = choice.get("logprobs") if isinstance(choice, dict) else None
    if not isinstance(logprobs, dict):
        raise PayloadError(f"{where}: choice has no 'logprobs' object (was logprobs=K sent?)")
    tokens, top = logprobs.get("tokens"), logprobs.get("top_logprobs")
    if not isinstance(tokens, list) or not isinstance(top, list):
        raise PayloadError(f"{where}: 'logprobs' needs lists 'tokens' and 'top_logprobs'")
    n, expected = len(ids), len(ids) + max_tokens
    for name, values in (("tokens", tokens), ("top_logprobs", top)):
        if len(values) != expected:
            missing = "missing positions" if len(values) < expected else "extra positions"
            raise PayloadError(f"{where}: {missing}: '{name}' has {len(values)} entries, expected {expected} "
                               f"({n} prompt tokens + max_tokens={max_tokens})")
    for p in range(n):
        if not spelling.spells(tokens[p], ids[p]):
            got = spelling.to_id(tokens[p]) if isinstance(tokens[p], str) else None
            encodes = f"it encodes to {got}" if got is not None else "it encodes to no single id"
            raise PayloadError(f"{where}, position {p}: token string {_short(tokens[p])} does not re-encode to "
                               f"prompt id {ids[p]} ({encodes})")
    _first_position(top[0], where)
    values = np.empty((n - 1, k), np.float32)
    token_ids = np.empty((n - 1, k), np.int64)
    for p in range(1, n):
        at = f"{where}, position {p}"
        entries = top[p]
        if entries is None:
            raise PayloadError(f"{at}: top_logprobs is null (missing position)")
        if not isinstance(entries, dict):
            raise PayloadError(f"{at}: top_logprobs must map token strings to log-probs, got {_short(entries)}")
        pairs: dict[int, float] = {}
        for text, value in entries.items():
            token_id = spelling.to_id(text)
            if token_id is None:
                raise PayloadError(f"{at}: alternative {_short(text)} {spelling.unknown(text)}")
            if token_id in pairs:
                raise PayloadError(f"{at}: token id {token_id} appears twice among the alternatives")
            pairs[token_id] = _logprob(value, f"{at}, alternative {_short(text)}")
        values[p - 1], token_ids[p - 1] = _top_k_row(pairs, k, at)
    return TopK(values, token_ids)


def parse_prompt_logprobs(choice: object, ids: Sequence[int], k: int, spelling: _Spelling, where: str) -> TopK:
    """The top-k rows of one choice carrying vLLM's ``prompt_logprobs`` for the prompt ``ids``."""
    rows = choice.get("prompt_logprobs") if isinstance(choice, dict) else None
    if not isinstance(rows, list):
        raise PayloadError(f"{where}: choice has no 'prompt_logprobs' list (does the server support vLLM's "
                           "prompt_logprobs?)")
    n = len(ids)
    if len(rows) != n:
        missing = "missing positions" if len(rows) < n else "extra positions"
        raise PayloadError(f"{where}: {missing}: 'prompt_logprobs' has {len(rows)} entries, expected {n}")
    _first_position(rows[0], where)
    values = np.empty((n - 1, k), np.float32)
    token_ids = np.empty((n - 1, k), np.int64)
    vocab_size = spelling.vocab_size
    for p in range(1, n):
        at = f"{where}, position {p}"
        entries = rows[p]
        if entries is None:
            raise PayloadError(f"{at}: prompt_logprobs is null (missing position)")
        if not isinstance(entries, dict):
            raise PayloadError(f"{at}: prompt_logprobs must map token ids to objects, got {_short(entries)}")
        pairs: dict[int, float] = {}
        for key, entry in entries.items():
            if not (isinstance(key, str) and key.isdigit() and int(key) < vocab_size):
                raise PayloadError(f"{at}: key {_short(key)} is not a token id in [0, {vocab_size})")
            token_id = int(key)
            if not isinstance(entry, dict) or "logprob" not in entry:
                raise PayloadError(f"{at}, token {token_id}: expected an object with 'logprob', got {_short(entry)}")
            decoded = entry.get("decoded_token")
            if decoded is not None and not spelling.spells(decoded, token_id):
                raise PayloadError(f"{at}, token {token_id}: decoded_token {_short(decoded)} does not re-encode "
                                   f"to id {token_id}")
            pairs[token_id] = _logprob(entry["logprob"], f"{at}, token {token_id}")
        values[p - 1], token_ids[p - 1] = _top_k_row(pairs, k, at)
    return TopK(values, token_ids)


class APITeacher:
    """A :class:`~distill.teachers.base.TopKTeacher` scoring token sequences through an OpenAI-compatible server.

    ``topk(batch)`` is the batch answer of the teacher interface (torch tensors ``[B, L, K]``);

    ``score(sequences)`` returns one ``[n_b - 1, K]`` :class:`TopK` per sequence; ``score_batch(input_ids,
    attention_mask)`` returns ``[B, T, K]`` (see :func:`~distill.teachers.base.pad_rows`). ``vocab_size`` (default:
    the tokenizer's) bounds the ids accepted: pass the model's when its embedding has padded rows past the
    tokenizer's ids (servers name those ``token_id:N``).
    """

    kind = "topk"

    def __init__(self, base_url: str, vocab: TokenVocab, *, k: int, model: str = "teacher", mode: str = "echo",
                 max_tokens: int = 0, token_ids_as_strings: bool = True, sequences_per_request: int = 1,
                 concurrency: int = 8, timeout: float = 60.0, connect_timeout: float = 5.0,
                 retry: RetryPolicy | None = None, api_key: str | None = None, seed: int = 0,
                 vocab_size: int | None = None) -> None:
        if mode not in ("echo", "prompt_logprobs"):
            raise ValueError(f"mode {mode!r}: use 'echo' or 'prompt_logprobs'")
        if max_tokens not in (0, 1):
            raise ValueError(f"max_tokens={max_tokens}: the prompt is scored with max_tokens 0 or 1")
        if k < 1 or concurrency < 1 or sequences_per_request < 1:
            raise ValueError("k, concurrency and sequences_per_request must be >= 1")
        self.base_url = base_url.rstrip("/")
        self.vocab, self.k, self.model, self.mode = vocab, k, model, mode
        self.max_tokens, self.token_ids_as_strings = max_tokens, token_ids_as_strings
        self.sequences_per_request, self.concurrency = sequences_per_request, concurrency
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self.retry = retry or RetryPolicy()
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.stats = APIStats()
        self._spelling = _Spelling(vocab, vocab_size)
        self._rng = random.Random(seed)
        self.name = f"{model} at {self.base_url}"

    @property
    def top_k(self) -> int:
        return self.k

    @property
    def vocab_size(self) -> int:
        """The width of the teacher's distribution: ids are accepted in ``[0, vocab_size)``."""
        return self._spelling.vocab_size

    def topk(self, batch: TokenBatch) -> TopK:
        """The teacher interface: ``batch`` scored, as torch tensors ``[B, L, K]`` (see :func:`score_batch`)."""
        return _as_torch(self.score_batch(batch.input_ids, batch.attention_mask))

    @property
    def fingerprint(self) -> str:
        """What identifies this teacher's answers (for the teacher cache)."""
        return f"api|{self.base_url}|{self.model}|k={self.k}"

    def _client(self):
        import httpx

        return httpx.AsyncClient(
            base_url=self.base_url, headers=self.headers,
            timeout=httpx.Timeout(self.timeout, connect=self.connect_timeout),
            limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency))

    def _payload(self, prompts: list[list[int]], as_ids: bool | None = None) -> dict:
        payload = {"model": self.model, "prompt": prompts if len(prompts) > 1 else prompts[0], "echo": True,
                   "max_tokens": self.max_tokens, "temperature": 0.0,
                   "return_tokens_as_token_ids": self.token_ids_as_strings if as_ids is None else as_ids}
        if self.mode == "echo":
            payload["logprobs"] = self.k
        else:
            payload["prompt_logprobs"] = self.k
        return payload

    async def _post(self, client, path: str, payload: dict) -> dict:
        import httpx

        reason = "no attempt"
        for attempt in range(self.retry.max_retries + 1):
            retry_after = None
            self.stats.attempts += 1
            try:
                response = await client.post(path, json=payload)
            except httpx.TransportError as exc:  # timeouts, refused and dropped connections, truncated answers
                reason = type(exc).__name__
            else:
                status = response.status_code
                if status == 200:
                    try:
                        body = response.json()
                    except ValueError:
                        raise PayloadError(f"teacher API {path}: the answer is not JSON") from None
                    self.stats.answered += 1
                    return body
                if status != 429 and status < 500:
                    raise TeacherAPIError(f"teacher API {self.base_url}{path}: HTTP {status}: "
                                          f"{_error_message(response)}")
                reason = f"HTTP {status}"
                header = response.headers.get("retry-after")
                retry_after = float(header) if header and header.replace(".", "", 1).isdigit() else None
            if attempt == self.retry.max_retries:
                break
            self.stats.retries[reason] += 1
            await asyncio.sleep(self.retry.delay(attempt, retry_after, self._rng))
        raise TeacherAPIError(f"teacher API {self.base_url}{path}: gave up after {self.retry.max_retries + 1} "
                              f"attempts; last failure: {reason}")

    def _parse(self, body: object, prompts: list[list[int]], first: int) -> list[TopK]:
        choices = body.get("choices") if isinstance(body, dict) else None
        where = f"teacher API answer for sequences {first}..{first + len(prompts) - 1}"
        if not isinstance(choices, list):
            raise PayloadError(f"{where}: no 'choices' list")
        indices = [c.get("index", i) if isinstance(c, dict) else None for i, c in enumerate(choices)]
        if sorted(map(str, indices)) != sorted(str(i) for i in range(len(prompts))):
            raise PayloadError(f"{where}: choice indices {_short(indices)} are not 0..{len(prompts) - 1} once each")
        out: list[TopK | None] = [None] * len(prompts)
        for choice, index in zip(choices, indices):
            at = f"teacher API: sequence {first + index}"
            ids = prompts[index]
            if self.mode == "echo":
                out[index] = parse_echo(choice, ids, self.k, self._spelling, at, self.max_tokens)
            else:
                out[index] = parse_prompt_logprobs(choice, ids, self.k, self._spelling, at)
        return out

    async def ascore(self, sequences: Sequence[Sequence[int]]) -> list[TopK]:
        """Score every sequence (token-id lists); at most ``concurrency`` requests in flight."""
        sequences = [list(map(int, s)) for s in sequences]
        results: list[TopK | None] = [None] * len(sequences)
        scored = [i for i, s in enumerate(sequences) if len(s) >= 2]
        for i, s in enumerate(sequences):
            if not s:
                raise ValueError(f"sequence {i} is empty")
            if len(s) == 1:
                results[i] = empty_topk(self.k)
        groups = [scored[i:i + self.sequences_per_request] for i in range(0, len(scored), self.sequences_per_request)]
        gate = asyncio.Semaphore(self.concurrency)

        async with self._client() as client:
            async def run(group: list[int]) -> None:
                prompts = [sequences[i] for i in group]
                async with gate:
                    body = await self._post(client, "/v1/completions", self._payload(prompts))
                # Groups are consecutive sequence indices, so the first one names the others.
                for i, rows in zip(group, self._parse(body, prompts, group[0])):
                    results[i] = rows

            await asyncio.gather(*(run(g) for g in groups))
        return results  # type: ignore[return-value]

    def score(self, sequences: Sequence[Sequence[int]]) -> list[TopK]:
        return asyncio.run(self.ascore(sequences))

    def score_batch(self, input_ids, attention_mask=None) -> TopK:
        """``[B, T]`` right-padded ids (numpy or torch) to ``[B, T, K]`` rows (padding rows uniform over 0..K-1)."""
        input_ids = np.asarray(input_ids)
        mask = None if attention_mask is None else np.asarray(attention_mask)
        return pad_rows(self.score(sequences_from_batch(input_ids, mask)), input_ids.shape[1], self.k)

    def check_tokenizer(self) -> None:
        """Check the local tokenizer against the server's: ``/tokenize`` on a probe text (where the server has
        it, as vLLM does), then an echo of probe ids spread over the vocabulary, whose token strings must
        re-encode to the ids sent. Raises :class:`TeacherAPIError` naming the first disagreement."""
        asyncio.run(self._check_tokenizer())

    async def _check_tokenizer(self) -> None:
        import httpx

        local = self.vocab.encode(PROBE_TEXT)
        async with self._client() as client:
            try:
                response = await client.post("/tokenize", json={"model": self.model, "prompt": PROBE_TEXT,
                                                                "add_special_tokens": False})
            except httpx.TransportError as exc:
                raise TeacherAPIError(f"teacher API {self.base_url}: cannot connect ({type(exc).__name__})") from None
            if response.status_code == 200:
                remote = response.json().get("tokens")
                if remote != local:
                    diverge = next((i for i, (a, b) in enumerate(zip(local, remote or [])) if a != b),
                                   min(len(local), len(remote or [])))
                    raise TeacherAPIError(
                        f"tokenizer mismatch: the server tokenizes the probe text into {len(remote or [])} ids, the "
                        f"student's tokenizer into {len(local)}; first difference at token {diverge}")
            spread = np.linspace(0, self.vocab.vocab_size - 1, num=min(64, self.vocab.vocab_size)).astype(int)
            probe = local[:32] + [int(i) for i in spread]
            body = await self._post(client, "/v1/completions", self._payload([probe], as_ids=False))
        try:
            self._parse(body, [probe], 0)
        except PayloadError as exc:
            raise TeacherAPIError(f"tokenizer mismatch on a probe of known ids: {exc}") from None


def _as_torch(pair: TopK) -> TopK:
    import torch

    return TopK(torch.from_numpy(np.ascontiguousarray(pair.logprobs, np.float32)),
                torch.from_numpy(np.ascontiguousarray(pair.ids, np.int64)))


def _error_message(response) -> str:
    try:
        body = response.json()
        message = body.get("error", {}).get("message") if isinstance(body.get("error"), dict) else body.get("detail")
    except (ValueError, AttributeError):
        message = None
    text = str(message if message is not None else response.text[:200])
    return " ".join(text.split())
