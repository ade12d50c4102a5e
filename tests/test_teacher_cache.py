"""The teacher cache: shards with an index, atomic and resumable filling, corrupt shards re-fetched."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("safetensors")

from distill.teacher_cache import CachedTeacher, CacheError, TeacherCache, sequence_key
from distill.teachers.base import TopK

ROOT = Path(__file__).resolve().parents[1]
K = 3


class TableTeacher:
    """A deterministic teacher: a fixed log-softmax table indexed by the previous token; counts what it scores."""

    def __init__(self, vocab=50, seed=0, fail_after=None):
        rng = np.random.default_rng(seed)
        logits = rng.normal(size=(vocab, vocab))
        self.table = (logits - np.log(np.exp(logits).sum(-1, keepdims=True))).astype(np.float32)
        self.scored, self.fail_after = [], fail_after

    def score(self, sequences):
        if self.fail_after is not None and len(self.scored) >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.scored.extend(map(tuple, sequences))
        out = []
        for s in sequences:
            rows = self.table[np.asarray(s[:-1], dtype=int)]
            ids = np.argsort(-rows, axis=-1, kind="stable")[:, :K]
            out.append(TopK(np.take_along_axis(rows, ids, -1), ids.astype(np.int64)))
        return out


def batches(n_batches=6, size=4, seed=1):
    rng = np.random.default_rng(seed)
    return [[rng.integers(0, 50, size=int(rng.integers(1, 12))).tolist() for _ in range(size)]
            for _ in range(n_batches)]


def assert_same(a, b):
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.ids, y.ids)
        np.testing.assert_array_equal(x.logprobs, y.logprobs)


def test_fill_then_replay_without_the_teacher(tmp_path):
    upstream = TableTeacher()
    data = batches()
    CachedTeacher(TeacherCache(tmp_path, "table", K), upstream).fill(data)
    replay = CachedTeacher(TeacherCache(tmp_path, "table", K))  # a fresh process: the index on disk
    for batch in data:
        assert_same(replay.score(batch), TableTeacher().score(batch))
    assert replay.stats.fetched == 0 and replay.stats.hits == sum(map(len, data))
    assert len(list(tmp_path.glob("shard-*.safetensors"))) == len(data)
    assert not list(tmp_path.glob(".*.tmp"))


def test_fill_is_resumable_and_pays_once(tmp_path):
    data = batches()
    interrupted = TableTeacher(fail_after=8)  # scores two batches of 4, then is interrupted
    with pytest.raises(KeyboardInterrupt):
        CachedTeacher(TeacherCache(tmp_path, "table", K), interrupted).fill(data)
    resumed = TableTeacher()
    CachedTeacher(TeacherCache(tmp_path, "table", K), resumed).fill(data)
    unique = {tuple(s) for batch in data for s in batch}
    assert len(interrupted.scored) + len(resumed.scored) == len(unique)  # every sequence scored exactly once
    assert set(interrupted.scored).isdisjoint(resumed.scored)


def test_duplicates_within_a_batch_are_scored_once(tmp_path):
    upstream = TableTeacher()
    teacher = CachedTeacher(TeacherCache(tmp_path, "table", K), upstream)
    answers = teacher.score([[1, 2, 3], [4, 5], [1, 2, 3]])
    assert len(upstream.scored) == 2
    assert_same(answers, TableTeacher().score([[1, 2, 3], [4, 5], [1, 2, 3]]))


@pytest.mark.falsifier_id("F-API-CACHE-001")
@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_corrupt_shard_is_detected_and_refetched(tmp_path, damage):
    data = batches(n_batches=3)
    CachedTeacher(TeacherCache(tmp_path, "table", K), TableTeacher()).fill(data)
    shard = sorted(tmp_path.glob("shard-*.safetensors"))[1]
    raw = bytearray(shard.read_bytes())
    if damage == "flip":
        raw[-5] ^= 0x01  # one bit of one float
        shard.write_bytes(bytes(raw))
    elif damage == "truncate":
        shard.write_bytes(bytes(raw[:-16]))
    else:
        shard.unlink()

    # Without a teacher: an error naming the shard, never the damaged rows.
    replay_only = CachedTeacher(TeacherCache(tmp_path, "table", K))
    lost = len({tuple(s) for s in data[1]})
    with pytest.raises(CacheError, match=rf"{lost} sequences are not cached.*{shard.name}") as caught:
        replay_only.score(data[1] + data[0])
    assert "\n" not in str(caught.value)
    # With a teacher: the set-aside shard's sequences are scored again and give the true rows.
    upstream = TableTeacher()
    answers = CachedTeacher(TeacherCache(tmp_path, "table", K), upstream).score(data[1])
    assert_same(answers, TableTeacher().score(data[1]))
    assert len(upstream.scored) == len({tuple(s) for s in data[1]})
    if damage != "delete":
        assert (tmp_path / (shard.name + ".corrupt")).exists()


def test_orphan_shard_and_temp_file_from_a_crash_are_ignored(tmp_path):
    data = batches(n_batches=2)
    CachedTeacher(TeacherCache(tmp_path, "table", K), TableTeacher()).fill(data[:1])
    (tmp_path / "shard-000001-deadbeef.safetensors").write_bytes(b"half-written")
    (tmp_path / ".index.json.1234.tmp").write_text("{")
    cache = TeacherCache(tmp_path, "table", K)
    assert len(cache) == len({tuple(s) for s in data[0]}) and cache.verify() == []
    upstream = TableTeacher()
    CachedTeacher(cache, upstream).fill(data)
    assert len(upstream.scored) == len({tuple(s) for s in data[1]} - {tuple(s) for s in data[0]})


def test_another_teachers_cache_is_refused(tmp_path):
    CachedTeacher(TeacherCache(tmp_path, "table", K), TableTeacher()).fill(batches(1))
    with pytest.raises(CacheError, match="holds teacher 'table' at K=3, not 'other' at K=3; use another folder"):
        TeacherCache(tmp_path, "other", K)
    with pytest.raises(CacheError, match="not 'table' at K=5"):
        TeacherCache(tmp_path, "table", 5)
    (tmp_path / "index.json").write_text("[]")
    with pytest.raises(CacheError, match=r"index\.json: not a"):
        TeacherCache(tmp_path, "table", K)


def test_score_batch_pads_like_the_api_teacher(tmp_path):
    teacher = CachedTeacher(TeacherCache(tmp_path, "table", K), TableTeacher())
    ids = np.array([[1, 2, 3, 4], [5, 6, 0, 0]])
    out = teacher.score_batch(ids, (ids > 0).astype(int))
    assert out.logprobs.shape == (2, 4, K)
    assert_same([TopK(out.logprobs[0, :3], out.ids[0, :3])], TableTeacher().score([[1, 2, 3, 4]]))
    np.testing.assert_allclose(np.exp(out.logprobs[1, 1:]).sum(-1), 1, rtol=1e-6)


def test_verify_command(tmp_path):
    CachedTeacher(TeacherCache(tmp_path, "table", K), TableTeacher()).fill(batches(2))
    run = [sys.executable, "-m", "distill.teacher_cache", "verify", str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ok = subprocess.run(run, capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert ok.returncode == 0 and "2 shards" in ok.stdout and "0 corrupt" in ok.stdout
    shard = sorted(tmp_path.glob("shard-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:-1] + b"\x00")
    bad = subprocess.run(run, capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert bad.returncode == 1 and f"corrupt shard set aside: {shard.name}" in bad.stdout
    index = json.loads((tmp_path / "index.json").read_text())
    assert shard.name not in index["shards"]
    missing = subprocess.run([*run[:-1], str(tmp_path / "nope")], capture_output=True, text=True, cwd=ROOT,
                             env=env, timeout=60)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1


def test_sequence_key_depends_on_every_id():
    assert sequence_key([1, 2, 3]) != sequence_key([1, 2, 4]) != sequence_key([1, 2])
    assert sequence_key(np.array([1, 2, 3], np.int32)) == sequence_key([1, 2, 3])
