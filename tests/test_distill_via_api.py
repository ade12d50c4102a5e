"""Distill through the API end to end: ``python -m distill`` in a subprocess trains a tiny student from the local
teacher server's top-k answers (the real server on 127.0.0.1, the real client), with and without the teacher
cache, replayed from the cache alone, with on-policy batches mixed in; every run must equal the run with the
in-process Hugging Face top-k teacher of the same seed to 1e-5 (losses of every step and the final weights)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("fastapi")

from distill.data import TOKENIZER_PATH  # noqa: E402
from distill.models import load_model, save_model  # noqa: E402
from distill.teacher_server import ScoringModel, create_app, running_server  # noqa: E402
from distill.teacher_server import load_model as load_served_model  # noqa: E402
from distill.teachers.tokens import HFVocab  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 1e-5
STEPS = 6
LAMBDA = "0.5"
CORPUS = "\n\n".join(
    f"Document {i}: knowledge distillation trains a small student to match a large teacher; the teacher's "
    f"top-k log-probabilities are served over HTTP, cached on disk and replayed. Line {i * 7 % 13}."
    for i in range(40)
)


def distill(cwd: Path, out: str, *flags: str) -> list[dict]:
    """``python -m distill`` with tiny sizes and ``flags``; returns its per-step records."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILL_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    args = ["--student", "llama-tiny", "--data", "corpus.txt", "--seq-len", "24", "--batch-size", "2",
            "--steps-per-epoch", str(STEPS), "--warmup-steps", "1", "--temperature", "1", "--alpha", "0.5",
            "--threads", "1", "--log-every", "0", "--seed", "3", "--teacher-k", "8", "--topk-mode", "tail",
            "--on-policy-fraction", LAMBDA, "--max-new-tokens", "6", "--on-policy-prompt-length", "4",
            "--output-dir", out, *flags]
    proc = subprocess.run([sys.executable, "-m", "distill", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in (cwd / out / "metrics.jsonl").read_text().splitlines()]


def weights(cwd: Path, out: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(cwd / out / "student" / "model.safetensors"))


def assert_same_run(cwd: Path, expected: tuple[str, list[dict]], got: tuple[str, list[dict]]) -> None:
    (ref_dir, ref), (dir_, records) = expected, got
    assert [r["on_policy"] for r in records] == [r["on_policy"] for r in ref]
    for a, b in zip(ref, records):
        assert abs(a["loss"] - b["loss"]) <= TOLERANCE * max(1.0, abs(a["loss"])), (dir_, a, b)
    ref_w, w = weights(cwd, ref_dir), weights(cwd, dir_)
    assert ref_w.keys() == w.keys()
    worst = max(float((ref_w[k] - w[k]).abs().max()) for k in ref_w)
    assert worst <= TOLERANCE, (dir_, worst)


@pytest.mark.falsifier_id("F-API-EQUAL-001")
def test_distill_through_the_server_equals_the_in_process_topk_teacher(tmp_path: Path) -> None:
    (tmp_path / "corpus.txt").write_text(CORPUS, encoding="utf-8")
    teacher_dir = tmp_path / "teacher"  # the teacher `python -m distill --seed 3` builds (seeded seed + 1)
    save_model(load_model("llama-teacher", seed=4, flag="--teacher"), teacher_dir)
    shutil.copy(TOKENIZER_PATH, teacher_dir / "tokenizer.json")

    in_process = ("local", distill(tmp_path, "local", "--teacher", str(teacher_dir)))
    on_policy = [r["on_policy"] for r in in_process[1]]
    assert len(on_policy) == STEPS and any(on_policy) and not all(on_policy), on_policy

    served = load_served_model(str(teacher_dir))
    scoring = ScoringModel(served, HFVocab(teacher_dir / "tokenizer.json"))
    with running_server(create_app(scoring, max_logprobs=8)) as url:
        assert url.startswith("http://127.0.0.1:")
        assert_same_run(tmp_path, in_process, ("api", distill(tmp_path, "api", "--teacher-url", url)))
        filled = ("fill", distill(tmp_path, "fill", "--teacher-url", url, "--teacher-cache", "cache"))
        assert_same_run(tmp_path, in_process, filled)
    # The server is gone: the cache alone replays the whole run, on-policy samples included.
    assert_same_run(tmp_path, in_process, ("replay", distill(tmp_path, "replay", "--teacher-cache", "cache")))


@pytest.mark.parametrize("flags, message", [
    (["--teacher", "llama-teacher", "--teacher-url", "http://127.0.0.1:9"], "name two teachers: give one of them"),
    (["--teacher-k", "4", "--topk-mode", "tail", "--temperature", "2"], "--topk-mode tail needs --temperature 1"),
    (["--teacher-k", "0"], "--teacher-k='0' is below 1"),
    (["--teacher-url", "ftp://x"], "expected http://HOST:PORT"),
    (["--teacher-url", "http://127.0.0.1:9", "--teacher-timeout", "1"], "cannot connect"),
    (["--teacher-cache", "no-such-cache"], "cannot read the index"),
    (["--teacher", "none", "--alpha", "1", "--on-policy-fraction", "0.5"], "needs a teacher"),
    (["--on-policy-fraction", "1.5"], "--on-policy-fraction 1.5: must be in [0, 1]"),
])
def test_teacher_and_on_policy_flags_fail_in_one_line(tmp_path: Path, flags: list[str], message: str) -> None:
    from distill.cli import run

    (tmp_path / "corpus.txt").write_text(CORPUS, encoding="utf-8")
    outcome = run(["--data", str(tmp_path / "corpus.txt"), "--seq-len", "16", "--batch-size", "2",
                   "--output-dir", str(tmp_path / "out"), *flags], {}, cwd=tmp_path)
    assert outcome.exit_code == 2, outcome
    assert outcome.stderr.count("\n") == 1 and outcome.stderr.startswith("error: "), outcome.stderr
    assert message in outcome.stderr, outcome.stderr
    assert not (tmp_path / "out" / "metrics.jsonl").exists()
