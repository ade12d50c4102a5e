"""``python -m distill`` end to end: smoke mode and progress lines as on the fixture path (mirrors of FT-SMOKE and
FT-OBSERV for the torch path), the outputs of a full run, Ctrl-C and --resume, and one-line errors for bad model
paths, mismatched vocabularies or tokenizers and corrupt checkpoints (in a subprocess, as a user meets them).

Runs use tiny models (llama-tiny as student and teacher), a 60-paragraph corpus, 24-token sequences.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("transformers", reason="the models extra is not installed: pip install -e '.[torch,models]'")

from bindings.kd_pipeline import parse_smoke
from distill import cli
from tests import distill_helpers as h

ROOT = Path(__file__).resolve().parent.parent
STEP = re.compile(r"^  Step (\d+)/(\d+): loss: \d+\.\d{4}$")
EPOCH = re.compile(r"^Epoch (\d+)/(\d+): loss: (\d+\.\d{4}) \(\d+\.\ds\)$")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return h.write_corpus(tmp_path_factory.mktemp("corpus"))


def _own_corpus(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    return h.write_corpus(tmp_path / "data")


def _args(corpus: Path, *extra: str) -> list[str]:
    return ["--data", str(corpus), "--teacher", "llama-tiny", "--seq-len", "24", "--batch-size", "4",
            "--threads", "1", *extra]


def _run(tmp_path: Path, args: list[str], env: dict[str, str] | None = None) -> dict:
    """Run in-process in ``tmp_path``; returns stdout lines parsed and every file the run left there."""
    before = {p for p in tmp_path.rglob("*")}
    out = cli.run(args, env or {}, cwd=tmp_path)
    lines = out.stdout.splitlines()
    return {
        "out": out,
        "steps": [int(m[1]) for m in map(STEP.match, lines) if m],
        "step_totals": [int(m[2]) for m in map(STEP.match, lines) if m],
        "epochs": [(int(m[1]), int(m[2])) for m in map(EPOCH.match, lines) if m],
        "smoke": [line for line in lines if line.startswith("[SMOKE]")],
        "written": sorted(str(p.relative_to(tmp_path)) for p in set(tmp_path.rglob("*")) - before),
    }


def _subprocess(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DISTILL_")}
    environment["PYTHONPATH"] = str(ROOT)
    environment.update(env or {})
    return subprocess.run([sys.executable, "-m", "distill", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=300)


# ----------------------------------------------------------------------------------------------------------
# Smoke mode and progress lines (mirrors of FT-SMOKE-001/003/004/005/006/008 and FT-OBSERV-002/003/007)
# ----------------------------------------------------------------------------------------------------------


def test_smoke_runs_exactly_n_steps_across_epochs_and_writes_nothing(tmp_path: Path, corpus: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "metrics.jsonl").write_text("old\n")
    run = _run(tmp_path, _args(corpus, "--steps-per-epoch", "2", "--epochs", "100", "--output-dir", "out"),
               {"DISTILL_MAX_STEPS": "5", "DISTILL_LOG_EVERY": "1"})
    assert run["out"].exit_code == 0, run["out"].stderr
    assert run["steps"] == [1, 2, 3, 4, 5] and run["step_totals"] == [5] * 5
    assert [e for e, _ in run["epochs"]] == [1, 2, 3] and {t for _, t in run["epochs"]} == {3}
    smoke = parse_smoke(run["out"].stdout)
    assert smoke["steps"] == 5 and smoke["projected_steps"] == 200
    assert run["written"] == [] and (tmp_path / "out" / "metrics.jsonl").read_text() == "old\n"


def test_smoke_projection_and_flag_over_variable(tmp_path: Path, corpus: Path) -> None:
    run = _run(tmp_path, _args(corpus, "--max-steps", "2"),
               {"DISTILL_MAX_STEPS": "abc", "DISTILL_PROJECT_TO_STEPS": "50000", "DISTILL_LOG_EVERY": "1"})
    assert run["out"].exit_code == 0, run["out"].stderr
    smoke = parse_smoke(run["out"].stdout)
    secs = smoke["projected_s"]
    assert run["steps"] == [1, 2] and smoke["projected_steps"] == 50000
    assert abs(secs - 50000 / smoke["throughput"]) <= 0.05 + 1e-2 * secs  # throughput printed to 0.01 step/s
    assert abs(smoke["minutes"] - secs / 60) <= 0.05 + 1e-3 * secs


@pytest.mark.parametrize("value", ["abc", "0", "-2", "1.5", "1e3"])
def test_bad_max_steps_is_a_one_line_error_before_any_work(tmp_path: Path, corpus: Path, value: str) -> None:
    run = _run(tmp_path, _args(corpus), {"DISTILL_MAX_STEPS": value})
    err = run["out"].stderr.splitlines()
    assert run["out"].exit_code == 2 and len(err) == 1 and err[0].startswith("error: ")
    assert "DISTILL_MAX_STEPS" in err[0] and value in err[0]
    assert run["out"].stdout == "" and run["written"] == []


def test_log_every_zero_keeps_epoch_lines_with_the_mean_loss(tmp_path: Path, corpus: Path) -> None:
    run = _run(tmp_path, _args(corpus, "--steps-per-epoch", "2", "--epochs", "2", "--output-dir", "out"),
               {"DISTILL_LOG_EVERY": "0"})
    assert run["out"].exit_code == 0, run["out"].stderr
    assert run["steps"] == [] and [e for e, _ in run["epochs"]] == [1, 2]
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    first_epoch = [r["loss"] for r in records if r["epoch"] == 1]
    line = next(line for line in run["out"].stdout.splitlines() if line.startswith("Epoch 1/2"))
    assert f"loss: {sum(first_epoch) / len(first_epoch):.4f}" in line


# ----------------------------------------------------------------------------------------------------------
# A full run's outputs
# ----------------------------------------------------------------------------------------------------------


def test_full_run_writes_student_checkpoint_metrics_plot_and_metadata(tmp_path: Path, corpus: Path) -> None:
    run = _run(tmp_path, _args(corpus, "--steps-per-epoch", "3", "--output-dir", "out", "--checkpoint-every", "2"),
               {"DISTILL_LOG_EVERY": "1"})
    out = run["out"]
    assert out.exit_code == 0, out.stderr
    assert set(out.output_files) >= {"checkpoint.safetensors", "loss.png", "metadata.json", "metrics.jsonl",
                                      "student/config.json", "student/model.safetensors", "student/tokenizer.json"}
    assert not [f for f in out.output_files if ".tmp" in f or f.startswith(".")]
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3] == run["steps"]
    assert all(r["kl"] >= 0 and r["tokens"] > 0 and r["lr"] > 0 for r in records)
    assert (tmp_path / "out" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metadata = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert metadata["steps"] == 3 and metadata["held_out_after"]["perplexity"] > 1
    assert "Held-out after: perplexity" in out.stdout
    # The written student loads back as --student DIR and continues (smoke) from its weights.
    again = _run(tmp_path, _args(corpus, "--student", str(tmp_path / "out" / "student"), "--max-steps", "1"))
    assert again["out"].exit_code == 0, again["out"].stderr


# ----------------------------------------------------------------------------------------------------------
# Errors a user meets, in a subprocess: one line, exit 2, no traceback
# ----------------------------------------------------------------------------------------------------------


def _one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.falsifier_id("FT-MODELS-008")
def test_bad_inputs_are_one_line_errors(tmp_path: Path) -> None:
    corpus = _own_corpus(tmp_path)  # no module fixture: the contract's suite runs this test too
    config = json.loads((ROOT / "distill" / "configs" / "llama-tiny.json").read_text())
    (tmp_path / "wide.json").write_text(json.dumps({**config, "vocab_size": 1100}))
    (tmp_path / "narrow.json").write_text(json.dumps({**config, "vocab_size": 512}))
    (tmp_path / "broken-tokenizer.json").write_text("{ not json")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "checkpoint.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    cases = [
        (["--student", str(tmp_path / "missing")], ["--student", "missing", "no such folder"]),
        (["--teacher", str(tmp_path / "wide.json")], ["1100", "1024", "--vocab-align truncate"]),
        (["--student", str(tmp_path / "narrow.json")], ["tokenizer has 1024 tokens", "512"]),
        (["--tokenizer", str(tmp_path / "broken-tokenizer.json")], ["--tokenizer", "broken-tokenizer.json"]),
        (["--output-dir", "out", "--resume"], ["checkpoint.safetensors", "not a readable checkpoint"]),
    ]
    for extra, needles in cases:
        _one_line_error(_subprocess(_args(corpus, *extra), tmp_path), *needles)


@pytest.mark.falsifier_id("FT-MODELS-007")
def test_ctrl_c_keeps_the_last_complete_checkpoint_and_resume_continues(tmp_path: Path) -> None:
    corpus = _own_corpus(tmp_path)  # no module fixture: the contract's suite runs this test too
    args = _args(corpus, "--steps-per-epoch", "8", "--epochs", "50", "--output-dir", "out",
                 "--checkpoint-every", "1")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DISTILL_")}
    environment["PYTHONPATH"] = str(ROOT)
    process = subprocess.Popen([sys.executable, "-m", "distill", *args], cwd=tmp_path, env=environment,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "out" / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "interrupted" in lines[0] and "--resume" in lines[0]
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert "checkpoint.safetensors" in files and not [f for f in files if f.endswith(".tmp")]
    from distill.checkpoint import read_checkpoint

    step = read_checkpoint(tmp_path / "out" / "checkpoint.safetensors").step
    logged = len(metrics.read_text().splitlines())
    # Every step's checkpoint follows its metrics line: the signal may land between the two, never elsewhere.
    assert logged >= 3 and step in (logged - 1, logged), (step, logged)
    # Resuming with fewer epochs ends the run sooner (the schedule's horizon follows --epochs).
    shorter = _args(corpus, "--steps-per-epoch", "8", "--epochs", "1", "--output-dir", "out", "--resume")
    resumed = _run(tmp_path, shorter, {"DISTILL_LOG_EVERY": "1"})
    assert resumed["out"].exit_code == 0, resumed["out"].stderr
    assert resumed["steps"] == list(range(step + 1, 9))
