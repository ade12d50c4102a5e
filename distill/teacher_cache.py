"""A teacher cache on disk: each sequence's top-k rows are paid for once, then replayed.

Layout of a cache folder::

    index.json                      the teacher's fingerprint, K, each shard's sha256, and where each sequence is
    shard-000000-1a2b3c4d.safetensors   logprobs [rows, K] float32, ids [rows, K] int64, offsets [n + 1] int64

Writes are atomic: a shard is written to a temporary file, fsynced and renamed; then the index is rewritten the
same way. A crash leaves at worst an unindexed shard, which is ignored, so filling is resumable: run it again and
only the sequences not yet in the index are scored. Every shard is checked against its sha256 before its rows are
used; a shard that fails (truncated, flipped bytes, missing) is set aside as ``*.corrupt``, dropped from the
index, and its sequences are scored again by the upstream teacher, or, with none, reported as an error.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sys
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from distill.teachers.base import TokenBatch, TopK, pad_rows, sequences_from_batch

FORMAT = "kd-contracts teacher cache v1"


class CacheError(RuntimeError):
    """The cache cannot answer: another teacher's cache, a corrupt shard with no teacher to re-fetch from."""


class Teacher(Protocol):
    """What the cache needs from a teacher: one ``[n_b - 1, K]`` answer per token sequence."""

    def score(self, sequences: Sequence[Sequence[int]]) -> list[TopK]: ...


def sequence_key(sequence: Sequence[int]) -> str:
    """The cache key of a token sequence: sha256 of its ids as little-endian int64."""
    return hashlib.sha256(np.asarray(sequence, dtype="<i8").tobytes()).hexdigest()[:32]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(path.parent, os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class TeacherCache:
    """Sharded top-k rows of one teacher (named by ``fingerprint``) at one ``k``, in the folder ``root``."""

    def __init__(self, root: str | Path, fingerprint: str, k: int, *, loaded_shards: int = 8) -> None:
        self.root = Path(root)
        self.fingerprint, self.k = fingerprint, k
        self.corrupt_shards: list[str] = []
        self._loaded: OrderedDict[str, TopK | tuple] = OrderedDict()
        self._loaded_limit = loaded_shards
        self.root.mkdir(parents=True, exist_ok=True)
        index_path = self.root / "index.json"
        if index_path.exists():
            try:
                index = json.loads(index_path.read_text())
                ok = index.get("format") == FORMAT
            except (json.JSONDecodeError, AttributeError):
                ok = False
            if not ok:
                raise CacheError(f"teacher cache {index_path}: not a {FORMAT!r} index; point --teacher-cache at a "
                                 "new folder")
            if (index["fingerprint"], index["k"]) != (fingerprint, k):
                raise CacheError(f"teacher cache {self.root} holds teacher {index['fingerprint']!r} at K={index['k']}, "
                                 f"not {fingerprint!r} at K={k}; use another folder")
            self._index = index
        else:
            self._index = {"format": FORMAT, "fingerprint": fingerprint, "k": k, "shards": {}, "entries": {}}

    @classmethod
    def open(cls, root: str | Path) -> TeacherCache:
        """An existing cache, whatever teacher and K it holds (to replay it without the teacher)."""
        index_path = Path(root) / "index.json"
        try:
            index = json.loads(index_path.read_text())
            fingerprint, k = index["fingerprint"], index["k"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CacheError(f"teacher cache {index_path}: cannot read the index ({type(exc).__name__}); fill the "
                             "cache with --teacher-url first") from None
        return cls(root, fingerprint, k)

    def __len__(self) -> int:
        return len(self._index["entries"])

    def __contains__(self, key: str) -> bool:
        return key in self._index["entries"]

    @property
    def shards(self) -> dict[str, dict]:
        return dict(self._index["shards"])

    def _save_index(self) -> None:
        _atomic_write(self.root / "index.json", json.dumps(self._index, sort_keys=True).encode())

    def put(self, keys: Sequence[str], answers: Sequence[TopK]) -> str | None:
        """Write the answers of new ``keys`` as one shard and index them (keys already cached are skipped)."""
        from safetensors.numpy import save

        fresh: dict[str, TopK] = {}
        for key, answer in zip(keys, answers):
            if key not in self._index["entries"] and key not in fresh:
                if answer.logprobs.shape[-1] != self.k or answer.ids.shape != answer.logprobs.shape:
                    raise ValueError(f"teacher answer for {key} has shape {answer.logprobs.shape}, expected [rows, "
                                     f"{self.k}]")
                fresh[key] = answer
        if not fresh:
            return None
        lengths = [a.logprobs.shape[0] for a in fresh.values()]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        tensors = {"logprobs": np.concatenate([a.logprobs for a in fresh.values()]).astype(np.float32),
                   "ids": np.concatenate([a.ids for a in fresh.values()]).astype(np.int64), "offsets": offsets}
        data = save(tensors, metadata={"keys": json.dumps(list(fresh)), "format": FORMAT})
        name = f"shard-{len(self._index['shards']):06d}-{secrets.token_hex(4)}.safetensors"
        _atomic_write(self.root / name, data)
        self._index["shards"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "sequences": len(fresh),
                                       "rows": int(offsets[-1])}
        for i, key in enumerate(fresh):
            self._index["entries"][key] = [name, i]
        self._save_index()
        return name

    def _load(self, name: str) -> tuple | None:
        """A shard's arrays after its checksum passed, or None after setting a failing shard aside."""
        if name in self._loaded:
            self._loaded.move_to_end(name)
            return self._loaded[name]
        from safetensors.numpy import load

        path, expected = self.root / name, self._index["shards"][name]["sha256"]
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            data = None
        actual = hashlib.sha256(data).hexdigest() if data is not None else "missing"
        if actual != expected:
            self._set_aside(name, f"sha256 {actual[:12]} != {expected[:12]}")
            return None
        tensors = load(data)
        arrays = (tensors["logprobs"], tensors["ids"], tensors["offsets"])
        self._loaded[name] = arrays
        if len(self._loaded) > self._loaded_limit:
            self._loaded.popitem(last=False)
        return arrays

    def _set_aside(self, name: str, why: str) -> None:
        path = self.root / name
        if path.exists():
            os.replace(path, path.with_name(name + ".corrupt"))
        del self._index["shards"][name]
        self._index["entries"] = {k: v for k, v in self._index["entries"].items() if v[0] != name}
        self._save_index()
        self.corrupt_shards.append(f"{name} ({why})")

    def get(self, keys: Sequence[str]) -> list[TopK | None]:
        """Cached answers for ``keys`` (None where absent, or where the shard failed its checksum)."""
        out: list[TopK | None] = []
        for key in keys:
            where = self._index["entries"].get(key)
            arrays = self._load(where[0]) if where is not None else None
            if arrays is None:
                out.append(None)
                continue
            logprobs, ids, offsets = arrays
            lo, hi = int(offsets[where[1]]), int(offsets[where[1] + 1])
            out.append(TopK(logprobs[lo:hi], ids[lo:hi]))
        return out

    def verify(self) -> list[str]:
        """Check every shard's checksum now; returns the shards set aside (also in :attr:`corrupt_shards`)."""
        before = len(self.corrupt_shards)
        for name in list(self._index["shards"]):
            self._loaded.pop(name, None)
            self._load(name)
        return self.corrupt_shards[before:]


@dataclass
class CacheStats:
    hits: int = 0
    fetched: int = 0


class CachedTeacher:
    """A :class:`~distill.teachers.base.TopKTeacher` that replays from a :class:`TeacherCache` and asks
    ``upstream`` only for what is missing.

    With ``upstream=None`` it replays only: a sequence that is not cached (or whose shard failed its checksum)
    is a :class:`CacheError`. ``vocab_size`` (default ``upstream.vocab_size``): how wide the cached teacher's
    distribution is.
    """

    kind = "topk"

    def __init__(self, cache: TeacherCache, upstream: Teacher | None = None, *, vocab_size: int | None = None) -> None:
        self.cache, self.upstream, self.k = cache, upstream, cache.k
        self.stats = CacheStats()
        # The teacher interface needs it (a training loop checks it against the student's); score() does not.
        self.vocab_size: int | None = vocab_size if vocab_size is not None else getattr(upstream, "vocab_size", None)
        self.name = f"teacher cache {cache.root}"

    @property
    def top_k(self) -> int:
        return self.k

    @property
    def fingerprint(self) -> str:
        return self.cache.fingerprint

    def topk(self, batch: TokenBatch) -> TopK:
        """The teacher interface: ``batch`` answered from the cache (and ``upstream``), torch ``[B, L, K]``."""
        import torch

        pair = self.score_batch(batch.input_ids, batch.attention_mask)
        return TopK(torch.from_numpy(pair.logprobs), torch.from_numpy(pair.ids))

    def score(self, sequences: Sequence[Sequence[int]]) -> list[TopK]:
        keys = [sequence_key(s) for s in sequences]
        answers = self.cache.get(keys)
        missing = list(dict.fromkeys(k for k, a in zip(keys, answers) if a is None))
        self.stats.hits += len(keys) - sum(a is None for a in answers)
        if missing:
            if self.upstream is None:
                corrupt = f"; shards set aside: {', '.join(self.cache.corrupt_shards)}" if self.cache.corrupt_shards \
                    else ""
                raise CacheError(f"teacher cache {self.cache.root}: {len(missing)} sequences are not cached and no "
                                 f"teacher is given to score them{corrupt}")
            first = {key: i for i, key in reversed(list(enumerate(keys)))}
            fetched = self.upstream.score([sequences[first[k]] for k in missing])
            self.stats.fetched += len(missing)
            self.cache.put(missing, fetched)
            by_key = dict(zip(missing, fetched))
            answers = [a if a is not None else by_key[k] for k, a in zip(keys, answers)]
        return answers  # type: ignore[return-value]

    def score_batch(self, input_ids, attention_mask=None) -> TopK:
        input_ids = np.asarray(input_ids)
        mask = None if attention_mask is None else np.asarray(attention_mask)
        return pad_rows(self.score(sequences_from_batch(input_ids, mask)), input_ids.shape[1], self.k)

    def fill(self, batches: Iterable[Sequence[Sequence[int]]], *, progress: bool = False) -> CacheStats:
        """Score every batch not yet cached, one shard per batch; safe to interrupt and run again."""
        if self.upstream is None:
            raise CacheError("filling a teacher cache needs a teacher to score with")
        if progress:
            from tqdm import tqdm

            batches = tqdm(batches, desc="teacher cache", unit="batch")
        for batch in batches:
            self.score(batch)
        return self.stats


def main(argv: list[str] | None = None) -> int:
    """``python -m distill.teacher_cache verify DIR``: check every shard's checksum."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m distill.teacher_cache")
    parser.add_argument("command", choices=["verify"])
    parser.add_argument("root", help="the cache folder (holding index.json)")
    args = parser.parse_args(argv)
    index_path = Path(args.root) / "index.json"
    try:
        cache = TeacherCache.open(args.root)
    except CacheError as exc:
        print(f"error: teacher cache {index_path}: cannot read the index ({exc})", file=sys.stderr)
        return 2
    bad = cache.verify()
    for line in bad:
        print(f"corrupt shard set aside: {line}")
    print(f"{len(cache.shards)} shards, {len(cache)} sequences verified; {len(bad)} corrupt shards set aside")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
