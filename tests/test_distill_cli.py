"""Tests of ``python -m reference.distill`` through real subprocesses, of ``distill.run`` in-process, and of
the flag/variable parsing in reference/settings.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bindings.kd_pipeline import MODELS_ARGS, PATHS, models_corpus_text
from reference import settings
from reference.distill import RunOutcome, run
from reference.settings import SettingsError

REPO_ROOT = Path(__file__).resolve().parent.parent
STEP = re.compile(r"^  Step (\d+)/(\d+): loss: (\d+\.\d{4})$", re.MULTILINE)
EPOCH = re.compile(r"^Epoch (\d+)/(\d+): loss: (\d+\.\d{4}) \((\d+\.\d)s\)$", re.MULTILINE)
SMOKE_RUN = re.compile(
    r"^\[SMOKE\] (\d+) steps in (\d+\.\d{2})s: initial_loss=(\d+\.\d{4}), final_loss=(\d+\.\d{4}), "
    r"throughput=(\d+\.\d{2}) step/s$",
    re.MULTILINE,
)
SMOKE_PROJECTION = re.compile(
    r"^\[SMOKE\] projected full-run wall time \((\d+) steps\): (\d+\.\d{2})h / (\d+\.\d) min / (\d+\.\d)s$",
    re.MULTILINE,
)


def distill(cwd: Path, *args: str, **env_vars: str) -> subprocess.CompletedProcess[str]:
    """Run the command in a subprocess in ``cwd`` with the DISTILL_* variables given and no others."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILL_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(env_vars)
    return subprocess.run(
        [sys.executable, "-m", "reference.distill", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def command(path: str, tmp_path: Path, *args: str, **env_vars: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run the command of ``path`` in a subprocess in ``tmp_path / "run"``: ``python -m reference.distill ARGS``
    (``fixture``) or ``python -m distill MODELS_ARGS --data CORPUS ARGS`` (``models``: tiny models, the fixture's
    3 x 20 run shape, the corpus outside the working directory). Returns the process and its working directory."""
    cwd = tmp_path / "run"
    cwd.mkdir()
    if path == "fixture":
        return distill(cwd, *args, **env_vars), cwd
    pytest.importorskip("transformers", reason="not run: the models path needs the models extra")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(models_corpus_text(), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILL_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(env_vars)
    argv = [sys.executable, "-m", "distill", *MODELS_ARGS, "--data", str(corpus), *args]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300), cwd


def files_under(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*"))


# ---------------------------------------------------------------------------------------------- normal runs


@pytest.mark.falsifier_id("FT-OBSERV-001")
@pytest.mark.parametrize("path", PATHS)
def test_default_run_prints_progress_and_writes_model_and_metadata(tmp_path: Path, path: str) -> None:
    proc, cwd = command(path, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    steps = STEP.findall(proc.stdout)
    assert [int(s[0]) for s in steps] == [10, 20, 30, 40, 50, 60]
    assert {s[1] for s in steps} == {"60"}
    epochs = EPOCH.findall(proc.stdout)
    assert [(e[0], e[1]) for e in epochs] == [("1", "3"), ("2", "3"), ("3", "3")]
    epoch_losses = [float(e[2]) for e in epochs]
    assert epoch_losses == sorted(epoch_losses, reverse=True), "loss falls epoch after epoch"
    if path == "models":
        assert [f for f in files_under(cwd) if f.count("/") == 1] == [
            "distill-out/checkpoint.safetensors", "distill-out/loss.png", "distill-out/metadata.json",
            "distill-out/metrics.jsonl", "distill-out/student"]
        assert "Student written to distill-out/student" in proc.stdout
        drop = re.search(r"^Loss (\d+\.\d{4}) -> (\d+\.\d{4}) over 60 steps", proc.stdout, re.M)
        assert drop and float(drop.group(2)) < float(drop.group(1))
        meta = json.loads((cwd / "distill-out" / "metadata.json").read_text())
        assert meta["steps"] == 60 and meta["config"]["epochs"] == 3
        return
    assert files_under(cwd) == ["distill-out", "distill-out/metadata.json", "distill-out/student.npz"]
    assert "Model written to distill-out/student.npz" in proc.stdout
    assert "Metadata written to distill-out/metadata.json" in proc.stdout
    drop = re.search(
        r"^Loss (\d+\.\d{4}) -> (\d+\.\d{4}) \(([-+]\d+\.\d)%\) over 60 steps", proc.stdout, re.M
    )
    assert drop and float(drop.group(2)) < float(drop.group(1))
    meta = json.loads((cwd / "distill-out" / "metadata.json").read_text())
    assert meta["metrics"]["steps_completed"] == 60 and meta["config"]["epochs"] == 3


@pytest.mark.falsifier_id("FT-OBSERV-003")
@pytest.mark.parametrize("path", PATHS)
def test_log_every_zero_prints_epoch_lines_only(tmp_path: Path, path: str) -> None:
    proc, _ = command(path, tmp_path, DISTILL_LOG_EVERY="0")
    assert proc.returncode == 0, proc.stderr
    assert STEP.findall(proc.stdout) == [] and "Step" not in proc.stdout
    assert [(e[0], e[1]) for e in EPOCH.findall(proc.stdout)] == [("1", "3"), ("2", "3"), ("3", "3")]


@pytest.mark.falsifier_id("FT-OBSERV-002")
@pytest.mark.parametrize("path", PATHS)
def test_log_every_one_prints_every_step(tmp_path: Path, path: str) -> None:
    proc, _ = command(path, tmp_path, "--epochs", "2", "--steps-per-epoch", "7", DISTILL_LOG_EVERY="1")
    assert proc.returncode == 0, proc.stderr
    assert [int(s[0]) for s in STEP.findall(proc.stdout)] == list(range(1, 15))
    assert [(e[0], e[1]) for e in EPOCH.findall(proc.stdout)] == [("1", "2"), ("2", "2")]


def test_smoke_mode_runs_n_steps_prints_both_lines_and_writes_nothing(tmp_path: Path) -> None:
    proc = distill(tmp_path, "--epochs", "100", "--log-every", "1", DISTILL_MAX_STEPS="7")
    assert proc.returncode == 0, proc.stderr
    assert [int(s[0]) for s in STEP.findall(proc.stdout)] == list(range(1, 8))
    smoke = SMOKE_RUN.findall(proc.stdout)
    projection = SMOKE_PROJECTION.findall(proc.stdout)
    assert len(smoke) == 1 and len(projection) == 1, proc.stdout
    steps, _secs, initial, final, throughput = smoke[0]
    assert int(steps) == 7 and float(final) < float(initial) and float(throughput) > 0
    projected_steps, hours, minutes, seconds = projection[0]
    assert int(projected_steps) == 100 * 20
    assert float(minutes) == pytest.approx(float(seconds) / 60, abs=0.06)
    assert float(hours) == pytest.approx(float(seconds) / 3600, abs=0.006)
    assert files_under(tmp_path) == []


def test_smoke_projection_target_from_the_environment(tmp_path: Path) -> None:
    proc = distill(tmp_path, "--max-steps", "3", DISTILL_PROJECT_TO_STEPS="12345")
    assert proc.returncode == 0, proc.stderr
    assert SMOKE_PROJECTION.findall(proc.stdout)[0][0] == "12345"
    assert files_under(tmp_path) == []


def test_empty_variables_count_as_unset(tmp_path: Path) -> None:
    proc = distill(tmp_path, "--epochs", "1", DISTILL_MAX_STEPS="", DISTILL_LOG_EVERY=" ")
    assert proc.returncode == 0, proc.stderr
    assert "[SMOKE]" not in proc.stdout
    assert [int(s[0]) for s in STEP.findall(proc.stdout)] == [10, 20]
    assert (tmp_path / "distill-out" / "student.npz").is_file()


# ---------------------------------------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        ((), {"DISTILL_MAX_STEPS": "abc"}, "DISTILL_MAX_STEPS='abc'"),
        ((), {"DISTILL_MAX_STEPS": "0"}, "DISTILL_MAX_STEPS='0'"),
        ((), {"DISTILL_MAX_STEPS": "-2"}, "DISTILL_MAX_STEPS='-2'"),
        ((), {"DISTILL_LOG_EVERY": "-3"}, "DISTILL_LOG_EVERY='-3'"),
        ((), {"DISTILL_LOG_EVERY": "ten"}, "DISTILL_LOG_EVERY='ten'"),
        ((), {"DISTILL_PROJECT_TO_STEPS": "1.5"}, "DISTILL_PROJECT_TO_STEPS='1.5'"),
        (("--max-steps", "0"), {}, "--max-steps='0'"),
        (("--epochs", "three"), {}, "--epochs='three'"),
        (("--alpha", "2"), {}, "--alpha='2'"),
    ],
)
def test_bad_values_fail_with_one_line_before_any_work(tmp_path: Path, args, env, named: str) -> None:
    proc = distill(tmp_path, *args, **env)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], proc.stderr
    assert proc.stdout == ""
    assert files_under(tmp_path) == []


def test_unknown_flag_is_a_usage_error(tmp_path: Path) -> None:
    proc = distill(tmp_path, "--max-step", "3")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "unrecognized arguments: --max-step" in proc.stderr
    assert files_under(tmp_path) == []


# ---------------------------------------------------------------------------------------------- precedence


def test_flags_win_over_environment_variables(tmp_path: Path) -> None:
    proc = distill(
        tmp_path, "--max-steps", "3", "--log-every", "0", DISTILL_MAX_STEPS="abc", DISTILL_LOG_EVERY="1"
    )
    assert proc.returncode == 0, proc.stderr
    assert "Step" not in proc.stdout
    assert SMOKE_RUN.findall(proc.stdout)[0][0] == "3"


def test_help_explains_flags_and_variables(tmp_path: Path) -> None:
    proc = distill(tmp_path, "--help")
    assert proc.returncode == 0
    for word in (
        "--epochs",
        "--steps-per-epoch",
        "--batch-size",
        "--temperature",
        "--alpha",
        "--learning-rate",
        "--seed",
        "--output-dir",
        "--max-steps",
        "--log-every",
        "DISTILL_MAX_STEPS",
        "DISTILL_LOG_EVERY",
        "DISTILL_PROJECT_TO_STEPS",
    ):
        assert word in proc.stdout
    assert files_under(tmp_path) == []


# ---------------------------------------------------------------------------------------------- in-process


def test_run_in_process_uses_the_given_environment(tmp_path: Path) -> None:
    outcome = run(["--epochs", "1", "--output-dir", "out"], {"DISTILL_LOG_EVERY": "5"}, cwd=tmp_path)
    assert isinstance(outcome, RunOutcome)
    assert outcome.exit_code == 0, outcome.stderr
    assert [int(s[0]) for s in STEP.findall(outcome.stdout)] == [5, 10, 15, 20]
    assert outcome.output_files == ("metadata.json", "student.npz")
    assert outcome.output_dir == str(tmp_path / "out")

    smoke = run(["--output-dir", "smoke"], {"DISTILL_MAX_STEPS": "4"}, cwd=tmp_path)
    assert smoke.exit_code == 0 and smoke.output_files == ()
    assert SMOKE_RUN.findall(smoke.stdout)[0][0] == "4"

    bad = run([], {"DISTILL_LOG_EVERY": "ten"}, cwd=tmp_path)
    assert bad.exit_code == 2 and bad.stdout == ""
    assert bad.stderr.startswith("error: DISTILL_LOG_EVERY='ten' is not an integer")

    usage = run(["--nope"], {}, cwd=tmp_path)
    assert usage.exit_code == 2 and "unrecognized arguments" in usage.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_run_in_process_help_goes_to_the_captured_stdout(tmp_path: Path, capsys) -> None:
    outcome = run(["--help"], {}, cwd=tmp_path)
    assert outcome.exit_code == 0 and "DISTILL_MAX_STEPS" in outcome.stdout
    assert capsys.readouterr() == ("", "")


# ---------------------------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("flag", "env", "expected"),
    [
        (None, {}, None),
        (None, {"DISTILL_MAX_STEPS": ""}, None),
        (None, {"DISTILL_MAX_STEPS": " 7 "}, 7),
        (None, {"DISTILL_MAX_STEPS": "+7"}, 7),
        ("3", {"DISTILL_MAX_STEPS": "abc"}, 3),
    ],
)
def test_max_steps_values(flag, env, expected) -> None:
    assert settings.max_steps(flag, env) == expected


@pytest.mark.parametrize(
    ("flag", "env", "message"),
    [
        (
            None,
            {"DISTILL_MAX_STEPS": "abc"},
            "DISTILL_MAX_STEPS='abc' is not an integer: set it to a whole number >= 1, or unset it",
        ),
        (
            None,
            {"DISTILL_MAX_STEPS": "0"},
            "DISTILL_MAX_STEPS='0' is below 1: set it to a whole number >= 1, or unset it",
        ),
        (None, {"DISTILL_MAX_STEPS": "7.0"}, "DISTILL_MAX_STEPS='7.0' is not an integer"),
        (None, {"DISTILL_MAX_STEPS": "1_000"}, "DISTILL_MAX_STEPS='1_000' is not an integer"),
        ("", {}, "--max-steps='' is not an integer: pass a whole number >= 1, or leave the flag out"),
        ("-1", {}, "--max-steps='-1' is below 1"),
    ],
)
def test_max_steps_errors(flag, env, message: str) -> None:
    with pytest.raises(SettingsError) as info:
        settings.max_steps(flag, env)
    assert str(info.value).startswith(message)


def test_log_every_and_projection_values() -> None:
    assert settings.log_every(None, {}) == settings.DEFAULT_LOG_EVERY == 10
    assert settings.log_every(None, {"DISTILL_LOG_EVERY": "0"}) == 0
    assert settings.log_every("2", {"DISTILL_LOG_EVERY": "-3"}) == 2
    with pytest.raises(
        SettingsError, match=r"DISTILL_LOG_EVERY='-3' is below 0: set it to a whole number >= 0"
    ):
        settings.log_every(None, {"DISTILL_LOG_EVERY": "-3"})
    assert settings.project_to_steps({}, 60) == 60
    assert settings.project_to_steps({"DISTILL_PROJECT_TO_STEPS": "100"}, 60) == 100
    with pytest.raises(SettingsError, match="DISTILL_PROJECT_TO_STEPS='0' is below 1"):
        settings.project_to_steps({"DISTILL_PROJECT_TO_STEPS": "0"}, 60)


def test_float_and_path_settings(tmp_path: Path) -> None:
    assert settings.positive_float("--temperature", "0.5") == 0.5
    assert settings.unit_interval_float("--alpha", "1") == 1.0
    for raw in ("0", "-1", "nan", "inf", "x"):
        with pytest.raises(SettingsError, match=re.escape(f"--temperature={raw!r}")):
            settings.positive_float("--temperature", raw)
    assert settings.output_dir("--output-dir", "o", tmp_path) == tmp_path / "o"
    (tmp_path / "file").write_text("")
    with pytest.raises(SettingsError, match="is not a directory"):
        settings.output_dir("--output-dir", "file/sub", tmp_path)
    with pytest.raises(SettingsError, match="is empty"):
        settings.output_dir("--output-dir", "", tmp_path)
    assert issubclass(SettingsError, ValueError)
