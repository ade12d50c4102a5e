"""The command line: ``validate --format json``, ``--rules``, usage errors, ``list``, the generate/check
round trip, and the shipped contracts (all through real subprocesses)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest

from spec.validate import RULES

from .support import (
    BROKEN,
    MINIMAL,
    REPO,
    Run,
    assert_no_traceback,
    diagnostics,
    run_all,
    snapshot,
    spec,
    summary,
)

SHIPPED = sorted(p.stem for p in (REPO / "contracts").glob("*.yaml"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """The independent CLI runs of this module, concurrently."""
    scratch = tmp_path_factory.mktemp("cli")
    (scratch / "a-file").write_text("not a directory\n")
    (scratch / "no-contracts").mkdir()
    jobs = {
        "json": (
            ["validate", "--no-suite-check", "--format", "json", "check-forbidden.yaml", "tolerance-reason.yaml"],
            BROKEN,
        ),
        "text": (["validate", "--no-suite-check", "check-forbidden.yaml", "tolerance-reason.yaml"], BROKEN),
        "json-valid": (["validate", "--no-suite-check", "--format", "json", str(MINIMAL)], scratch),
        "rules": (["validate", "--rules"], scratch),
        "missing-path": (["validate", "no-such-contracts/"], scratch),
        "missing-path-json": (["validate", "--format", "json", "no-such.yaml"], scratch),
        "empty-dir": (["validate", "no-contracts"], scratch),
        "bad-flag": (["validate", "--no-such-flag"], scratch),
        "bad-format": (["validate", "--format", "xml", str(MINIMAL)], scratch),
        "no-command": ([], scratch),
        "generate-into-file": (["generate", "--out", "a-file", str(MINIMAL)], scratch),
        "list": (["list"], REPO),
        "list-json": (["list", "--format", "json"], REPO),
        "list-broken": (["list", "check-forbidden.yaml"], BROKEN),
        "generate-check-repo": (["generate", "--check"], REPO),
        "validate-repo-suite": (["validate"], REPO),
    }
    results = run_all((["-m", "spec", *args], cwd) for args, cwd in jobs.values())
    return dict(zip(jobs, results))


# -- validate --format json, --rules ----------------------------------------------------------------------


def test_json_output_is_the_text_output(runs: dict[str, Run]) -> None:
    result, text = runs["json"], runs["text"]
    assert_no_traceback(result)
    assert result.returncode == text.returncode == 1
    report = json.loads(result.stdout)
    assert set(report) == {"contracts", "falsifiers", "errors", "warnings", "diagnostics"}
    assert (report["contracts"], report["falsifiers"], report["errors"], report["warnings"]) == summary(text.stdout)
    as_text = [
        f"{d['path']}:{d['line']}:{d['col']}: {d['severity']} {d['rule']} {d['message']}" for d in report["diagnostics"]
    ]
    assert as_text == [str(d) for d in diagnostics(text.stdout)]
    assert {d["rule"] for d in report["diagnostics"]} == {"CHECK-FORBIDDEN", "TOLERANCE-REASON", "ID-DUPLICATE"}
    assert all(isinstance(d["line"], int) and isinstance(d["col"], int) for d in report["diagnostics"])


def test_json_output_of_a_valid_contract(runs: dict[str, Run]) -> None:
    result = runs["json-valid"]
    assert result.returncode == 0, str(result)
    assert json.loads(result.stdout) == {"contracts": 1, "falsifiers": 1, "errors": 0, "warnings": 0, "diagnostics": []}


def test_rules_lists_every_rule(runs: dict[str, Run]) -> None:
    result = runs["rules"]
    assert result.returncode == 0, str(result)
    listed = {}
    for line in result.stdout.splitlines():
        rule, _, what = line.partition(" ")
        listed[rule] = what.strip()
    assert listed == RULES


# -- usage errors: exit 2, one line, no traceback ----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "prog", "fragment"),
    [
        ("missing-path", "python -m spec validate", "no-such-contracts/: no such file or directory"),
        ("missing-path-json", "python -m spec validate", "no-such.yaml: no such file or directory"),
        ("empty-dir", "python -m spec validate", "no-contracts: the directory holds no *.yaml contract"),
        ("bad-flag", "python -m spec", "unrecognized arguments: --no-such-flag"),
        ("bad-format", "python -m spec validate", "invalid choice: 'xml'"),
        ("no-command", "python -m spec", "the following arguments are required: COMMAND"),
        ("generate-into-file", "python -m spec generate", "a-file is a file, not a directory"),
    ],
)
def test_usage_error(name: str, prog: str, fragment: str, runs: dict[str, Run]) -> None:
    result = runs[name]
    assert_no_traceback(result)
    assert result.returncode == 2, str(result)
    assert result.stdout == "", str(result)
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, str(result)
    assert errors[0].startswith(f"{prog}: error: ") and fragment in errors[0], str(result)
    assert result.stderr.splitlines()[-1] == errors[0]


# -- list -------------------------------------------------------------------------------------------------


def test_list_text(runs: dict[str, Run]) -> None:
    result = runs["list"]
    assert_no_traceback(result)
    assert result.returncode == 0, str(result)
    lines = result.stdout.splitlines()
    contracts = [line.split(" ")[0] for line in lines if not line.startswith(" ") and "(v" in line]
    assert contracts == SHIPPED
    assert re.fullmatch(rf"{len(SHIPPED)} contracts, \d+ falsifiers", lines[-1])
    assert "F-KD-GRAD-001" in result.stdout and "equation kd_loss:" in result.stdout


def test_list_json_matches_the_text(runs: dict[str, Run]) -> None:
    result = runs["list-json"]
    assert result.returncode == 0, str(result)
    rows = json.loads(result.stdout)
    assert [r["contract"] for r in rows] == SHIPPED
    for row in rows:
        assert set(row) == {"contract", "version", "path", "equations", "falsifiers"}
        assert re.fullmatch(r"\d+\.\d+\.\d+", row["version"])
        assert row["path"] == f"contracts/{row['contract']}.yaml"
        assert row["equations"] and row["falsifiers"]
        for f in row["falsifiers"]:
            assert f["scope"] in ("per_backend", "once") and f["rule"] and f["id"]
            assert f"  {f['id']}" in runs["list"].stdout
    ids = [f["id"] for r in rows for f in r["falsifiers"]]
    assert len(ids) == len(set(ids))
    total = int(runs["list"].stdout.splitlines()[-1].split(", ")[1].split()[0])
    assert total == len(ids)


def test_list_refuses_invalid_contracts(runs: dict[str, Run]) -> None:
    result = runs["list-broken"]
    assert_no_traceback(result)
    assert result.returncode == 1, str(result)
    assert {d.rule for d in diagnostics(result.stdout)} == {"CHECK-FORBIDDEN"}


# -- the shipped contracts ----------------------------------------------------------------------------------


def test_shipped_contracts_validate_quickly() -> None:
    result = spec("validate", "contracts/")  # alone, so that the time is its own
    print(f"python -m spec validate contracts/: {result.seconds:.2f} s (target < 2 s)")
    assert_no_traceback(result)
    assert result.returncode == 0, str(result)
    assert diagnostics(result.stdout) == []
    assert summary(result.stdout)[0] == len(SHIPPED)
    assert result.seconds < 5.0, f"validate contracts/ took {result.seconds:.2f} s"


def test_shipped_suite_is_fresh(runs: dict[str, Run]) -> None:
    result = runs["generate-check-repo"]
    assert_no_traceback(result)
    assert result.returncode == 0, str(result)
    assert "the generated suite is fresh" in result.stdout
    suite_check = runs["validate-repo-suite"]
    assert suite_check.returncode == 0 and diagnostics(suite_check.stdout) == [], str(suite_check)


# -- generate, then check -----------------------------------------------------------------------------------


def _project(root: Path) -> Path:
    (root / "contracts").mkdir(parents=True)
    shutil.copy(MINIMAL, root / "contracts" / "minimal.yaml")
    return root


def test_generate_round_trip(tmp_path: Path) -> None:
    one, two = _project(tmp_path / "one"), _project(tmp_path / "two")
    first = spec("generate", cwd=one)
    assert_no_traceback(first)
    assert first.returncode == 0, str(first)
    suite = one / "falsifiers"
    assert sorted(p.name for p in suite.iterdir()) == ["conftest.py", "test_minimal.py"]
    generated = {p.name: p.read_bytes() for p in suite.iterdir()}

    # deterministic: a second run changes nothing, and another checkout produces the same bytes
    again, elsewhere = run_all([(["-m", "spec", "generate"], one), (["-m", "spec", "generate"], two)])
    assert again.returncode == 0 and "0 file(s) changed" in again.stdout, str(again)
    assert elsewhere.returncode == 0, str(elsewhere)
    assert {p.name: p.read_bytes() for p in suite.iterdir()} == generated
    assert {p.name: p.read_bytes() for p in (two / "falsifiers").iterdir()} == generated

    header = generated["test_minimal.py"].decode().splitlines()
    contract = one / "contracts" / "minimal.yaml"
    assert header[0].startswith("# Generated by `python -m spec generate`. Do not edit")
    assert header[1] == "# source: contracts/minimal.yaml"
    assert header[2] == f"# sha256: {hashlib.sha256(contract.read_bytes()).hexdigest()}"
    text = generated["test_minimal.py"].decode()
    assert "def test_F_MIN_001(subject: Subject)" in text
    assert "every row of softmax(z) sums to 1 within 1e-12" in text
    assert str(tmp_path) not in text  # no absolute paths

    fresh = spec("generate", "--check", cwd=one)
    assert fresh.returncode == 0 and "fresh" in fresh.stdout, str(fresh)

    contract.write_text(contract.read_text("utf-8").replace("within 1e-12", "within 1e-10"), "utf-8")
    before = snapshot(one)
    stale = spec("generate", "--check", cwd=one)
    assert_no_traceback(stale)
    assert stale.returncode == 1, str(stale)
    assert f"{suite / 'test_minimal.py'}: stale" in stale.stdout.splitlines()
    assert "conftest.py" not in stale.stdout  # the conftest does not depend on the prediction
    assert "1 generated file(s) out of date" in stale.stdout
    assert snapshot(one) == before  # --check writes nothing

    regenerated = spec("generate", cwd=one)
    assert regenerated.returncode == 0 and "1 file(s) changed" in regenerated.stdout, str(regenerated)
    assert "within 1e-10" in (suite / "test_minimal.py").read_text("utf-8")


def test_generate_refuses_invalid_contracts(tmp_path: Path) -> None:
    project = _project(tmp_path)
    assert spec("generate", cwd=project).returncode == 0
    shutil.copy(BROKEN / "check-unknown-name.yaml", project / "contracts" / "typo.yaml")
    contract = project / "contracts" / "minimal.yaml"
    contract.write_text(contract.read_text("utf-8").replace("within 1e-12", "within 1e-10"), "utf-8")
    before = snapshot(project)
    refused = spec("generate", cwd=project)
    assert_no_traceback(refused)
    assert refused.returncode == 1, str(refused)
    assert "nothing generated: fix the errors above first" in refused.stderr
    assert {d.rule for d in diagnostics(refused.stdout)} >= {"CHECK-UNKNOWN-NAME"}
    assert snapshot(project) == before  # not even the valid contract's file was rewritten
