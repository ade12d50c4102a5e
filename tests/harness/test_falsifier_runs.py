"""Running falsifiers: ``pytest falsifiers --backend ...`` (backend selection and its errors), the report
of a falsified prediction, and ``python -m spec check`` end to end. Real subprocesses throughout."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from .support import REPO, Run, assert_no_traceback, run_all, spec

SHIPPED = sorted(p.stem for p in (REPO / "contracts").glob("*.yaml"))
PYTEST = ["-m", "pytest", "-p", "no:cacheprovider"]


def _once_only(path: Path) -> bool:
    """Whether every falsifier of a contract has scope 'once' (a named ``test:`` runs once)."""
    items = yaml.safe_load(path.read_text("utf-8"))["falsification_tests"]
    return all("test" in f or f.get("check", {}).get("scope") == "once" for f in items)


def _has_cuda_device() -> bool:
    return any(Path("/dev").glob("nvidia[0-9]*"))


@pytest.fixture(scope="module")
def backend_runs() -> dict[str, Run]:
    jobs = {
        "unknown": [*PYTEST, "falsifiers", "--backend", "no-such-backend"],
        "cupy": [*PYTEST, "falsifiers", "--backend", "cupy", "--co"],
        "all": [*PYTEST, "falsifiers", "--backend", "all", "--co"],
    }
    return dict(zip(jobs, run_all((args, REPO) for args in jobs.values())))


def _known_backends(result: Run) -> list[str]:
    m = re.search(r"known backends are (.+?) \(or 'all'", result.output)
    assert m, str(result)
    return m[1].split(", ")


def test_unknown_backend_is_a_usage_error_naming_the_known_ones(backend_runs: dict[str, Run]) -> None:
    result = backend_runs["unknown"]
    assert_no_traceback(result)
    assert result.returncode not in (0, 5), str(result)  # 5 would be "no tests ran"
    assert "no-such-backend" in result.output
    known = _known_backends(result)
    assert {"numpy", "torch"} <= set(known), known


@pytest.mark.skipif(_has_cuda_device(), reason="this machine has a CUDA device: cupy may well run here")
def test_cupy_without_a_gpu_fails_instead_of_skipping(backend_runs: dict[str, Run]) -> None:
    result = backend_runs["cupy"]
    assert_no_traceback(result)
    assert result.returncode not in (0, 5), str(result)
    errors = [line for line in result.output.splitlines() if "--backend cupy" in line]
    assert errors, str(result)
    assert re.search(r"cuda|cupy is not installed|no module named 'cupy'", errors[0], re.IGNORECASE), errors[0]
    assert "skipped" not in result.output and "collected" not in result.output


def test_backend_all_says_what_it_left_out_and_why(backend_runs: dict[str, Run]) -> None:
    result = backend_runs["all"]
    assert_no_traceback(result)
    assert result.returncode == 0, str(result)
    header = result.stdout.split("collected")[0]
    [under_test] = re.findall(r"^backends under test: (.+)$", header, re.MULTILINE)
    running = under_test.split(", ")
    left_out = dict(re.findall(r"^backend left out: (\S+) \((.+)\)$", header, re.MULTILINE))
    assert "numpy" in running
    assert all(reason.strip() for reason in left_out.values())
    assert set(running) | set(left_out) == set(_known_backends(backend_runs["unknown"]))
    assert not set(running) & set(left_out)
    if not _has_cuda_device():
        assert {"torch-cuda", "cupy"} <= set(left_out), header


FALSE_CONTRACT = """\
metadata:
  version: "1.0.0"
  description: "A prediction that is false, to see how a falsifier reports it"
  references: ["none: a fixture of the harness tests"]
  binding: bindings.kd
equations:
  softmax:
    formula: "softmax(z)_v = exp(z_v) / sum_u exp(z_u)"
falsification_tests:
  - id: F-FALSE-001
    rule: "Softmax is zero"
    prediction: "softmax(z) = 0 for every logits z"
    if_fails: "softmax returns a probability distribution, which is never all zeros"
    check:
      given:
        b: kd_batch
      expect: close(ref.softmax(b.student), zeros_like(b.student), 1.0e-9)
qa_gate: {id: F-FALSE-GATE, name: "False on purpose"}
"""


def test_a_falsified_prediction_is_reported_with_its_counterexample(tmp_path: Path) -> None:
    (tmp_path / "contracts").mkdir()
    (tmp_path / "contracts" / "false-v1.yaml").write_text(FALSE_CONTRACT, "utf-8")
    generated = spec("generate", cwd=tmp_path)
    assert generated.returncode == 0, str(generated)
    result = run_all([([*PYTEST, "falsifiers", "--backend", "numpy"], tmp_path)])[0]
    assert result.returncode == 1, str(result)
    out = result.stdout
    assert "F-FALSE-001 falsified on numpy (float64): the expectation is false" in out, str(result)
    assert "prediction: softmax(z) = 0 for every logits z" in out
    assert "if it fails: softmax returns a probability distribution, which is never all zeros" in out
    assert "expect:     close(ref.softmax(b.student), zeros_like(b.student), 1.0e-9)" in out
    assert re.search(r"counterexample:\n\s+b = KDBatch\(shape=\[", out), out
    assert "1 failed" in out
    # the report is the falsifier's, not a traceback through the harness
    assert "spec/runtime.py" not in out and "Traceback" not in out


# -- python -m spec check ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def check_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Run]]:
    out = tmp_path_factory.mktemp("reports")
    jobs = {
        "json": ["-m", "spec", "check", "--backend", "numpy", "--once", "--report", str(out / "conformance.json")],
        "md": ["-m", "spec", "check", "--backend", "numpy", "--report", str(out / "sub" / "conformance.md")],
        "txt": ["-m", "spec", "check", "--backend", "numpy", "--report", str(out / "conformance.txt")],
    }
    return out, dict(zip(jobs, run_all((args, REPO) for args in jobs.values())))


def test_check_prints_a_conformance_table(check_runs: tuple[Path, dict[str, Run]]) -> None:
    _, runs = check_runs
    result = runs["json"]
    assert_no_traceback(result)
    assert result.returncode == 0, str(result)
    table = result.stdout.split("== conformance", 1)[1]
    header = next(line for line in table.splitlines() if line.startswith("contract"))
    assert "numpy" in header
    for name in SHIPPED:
        assert re.search(rf"^{re.escape(name)}\s", table, re.MULTILINE), f"{name} missing from\n{table}"
    assert "Conformance: PASS" in table


def test_check_writes_a_json_report(check_runs: tuple[Path, dict[str, Run]]) -> None:
    out, runs = check_runs
    assert runs["json"].returncode == 0, str(runs["json"])
    report = json.loads((out / "conformance.json").read_text("utf-8"))
    assert report["ok"] is True and report["failures"] == []
    assert "numpy" in report["backends"]
    assert sorted(report["contracts"]) == SHIPPED
    assert f"report written to {out / 'conformance.json'}" in runs["json"].stdout


def test_check_writes_a_markdown_report(check_runs: tuple[Path, dict[str, Run]]) -> None:
    out, runs = check_runs
    assert runs["md"].returncode == 0, str(runs["md"])
    text = (out / "sub" / "conformance.md").read_text("utf-8")
    assert text.startswith("# Conformance\n")
    assert re.search(r"^\| contract \| numpy", text, re.MULTILINE), text
    once_only = {name for name in SHIPPED if _once_only(REPO / "contracts" / f"{name}.yaml")}
    assert "distill-pipeline-v1" in once_only and "kd-loss-v1" not in once_only
    for name in SHIPPED:
        assert (f"| {name} |" in text) != (name in once_only), name
    # naming only a backend leaves out the project's own pipeline falsifiers, and says so
    assert re.search(r"^- \d+ x the falsifiers of scope 'once' .*add --once to run them$", text, re.MULTILINE), text
    assert "Conformance: PASS" in text


def test_check_refuses_a_report_that_is_neither_json_nor_markdown(check_runs: tuple[Path, dict[str, Run]]) -> None:
    out, runs = check_runs
    result = runs["txt"]
    assert_no_traceback(result)
    assert result.returncode == 2, str(result)
    expected = f"python -m spec check: error: --report {out / 'conformance.txt'}: name a .json or .md file"
    assert result.stderr.strip() == expected
    assert result.stdout == "" and not (out / "conformance.txt").exists()
