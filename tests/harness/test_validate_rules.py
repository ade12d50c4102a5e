"""Every rule of ``python -m spec validate``, through a real subprocess, at its line and column.

The broken fixtures in ``fixtures/broken`` carry ``#!`` markers (see ``support.py``); each fixture (a file,
or a directory validated as a whole) is validated on its own, concurrently, in a scratch copy of the
fixtures. Cases that cannot be written as a small text file (empty, not UTF-8, over 1 MB, alias bombs,
unreadable) and the generated-suite rules are built in ``tmp_path``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from spec.validate import RULES

from .support import (
    BROKEN,
    MINIMAL,
    VALID,
    Marker,
    Run,
    assert_no_traceback,
    case_markers,
    diagnostics,
    reconcile,
    run_all,
    snapshot,
    spec,
    summary,
)

BROKEN_CASES = sorted(p.name for p in BROKEN.iterdir() if p.suffix == ".yaml" or p.is_dir())
VALID_CASES = sorted(p.name for p in VALID.iterdir() if p.suffix == ".yaml" or p.is_dir())
ALL_MARKERS = [(case, m) for case in BROKEN_CASES for m in case_markers(BROKEN / case)]

# Rules asserted by the built cases below rather than by markers.
BUILT_RULES = {
    "FILE-UNREADABLE",
    "FILE-ENCODING",
    "FILE-EMPTY",
    "YAML-TOO-LARGE",
    "GENERATED-MISSING",
    "GENERATED-STALE",
}

# Side effects the fixtures would have if validation ever constructed a tag or ran a check.
SENTINELS = ("pwned-by-yaml-tag", "pwned-by-check")


class Validated:
    """The broken and valid fixtures, each validated by its own subprocess in a scratch copy."""

    def __init__(self, root: Path) -> None:
        self.root = root
        shutil.copytree(BROKEN, root / "broken")
        shutil.copytree(VALID, root / "valid")
        self.before = snapshot(root)
        jobs = [(["-m", "spec", "validate", "--no-suite-check", case], root / "broken") for case in BROKEN_CASES]
        jobs += [(["-m", "spec", "validate", "--no-suite-check", case], root / "valid") for case in VALID_CASES]
        runs = run_all(jobs)
        self.broken: dict[str, Run] = dict(zip(BROKEN_CASES, runs[: len(BROKEN_CASES)]))
        self.valid: dict[str, Run] = dict(zip(VALID_CASES, runs[len(BROKEN_CASES) :]))
        self.after = snapshot(root)


@pytest.fixture(scope="module")
def validated(tmp_path_factory: pytest.TempPathFactory) -> Validated:
    return Validated(tmp_path_factory.mktemp("validated"))


def test_every_rule_has_a_fixture() -> None:
    marked = {m.rule for _, m in ALL_MARKERS}
    assert marked | BUILT_RULES == set(RULES), (
        f"rules without a fixture: {sorted(set(RULES) - marked - BUILT_RULES)}; "
        f"markers naming no rule: {sorted(marked - set(RULES))}"
    )


def test_every_broken_fixture_has_markers() -> None:
    assert [c for c in BROKEN_CASES if not case_markers(BROKEN / c)] == []


@pytest.mark.parametrize("case", BROKEN_CASES)
def test_broken_fixture_reports_exactly_its_markers(case: str, validated: Validated) -> None:
    result = validated.broken[case]
    expected = case_markers(BROKEN / case)
    assert_no_traceback(result)
    assert result.stderr == "", str(result)
    errors = [m for m in expected if m.severity == "ERROR"]
    assert result.returncode == (1 if errors else 0), str(result)
    found = diagnostics(result.stdout)
    missing, unexpected = reconcile(expected, found)
    assert not missing and not unexpected, (
        "\nnot reported:\n  "
        + "\n  ".join(map(str, missing))
        + "\nreported but not expected:\n  "
        + "\n  ".join(map(str, unexpected))
        + f"\n\n{result}"
    )
    _, _, n_errors, n_warnings = summary(result.stdout)
    assert (n_errors, n_warnings) == (len(errors), len(expected) - len(errors))


@pytest.mark.parametrize(("case", "marker"), ALL_MARKERS, ids=[f"{m.rule}-{m.path}:{m.line}" for _, m in ALL_MARKERS])
def test_rule_is_reported_at_its_line(case: str, marker: Marker, validated: Validated) -> None:
    result = validated.broken[case]
    found = [d for d in diagnostics(result.stdout) if marker.matches(d)]
    assert found, f"expected {marker} (marker on line {marker.source_line})\n\n{result}"
    assert all(d.severity == marker.severity for d in found)


@pytest.mark.parametrize("case", VALID_CASES)
def test_valid_fixture_is_valid(case: str, validated: Validated) -> None:
    result = validated.valid[case]
    assert_no_traceback(result)
    assert result.returncode == 0, str(result)
    assert diagnostics(result.stdout) == []
    n_contracts, n_falsifiers, n_errors, n_warnings = summary(result.stdout)
    assert n_contracts >= 1 and n_falsifiers >= 1 and n_errors == n_warnings == 0


def test_validation_never_constructs_a_tag_runs_a_check_or_writes_a_file(validated: Validated) -> None:
    # never-run.yaml (valid) divides by zero and expects softmax to be 0; the broken fixtures would create
    # the sentinels if a !!python tag were constructed or a check expression evaluated.
    assert validated.valid["never-run.yaml"].returncode == 0
    for name in SENTINELS:
        assert not list(validated.root.rglob(name)), f"{name} was created: something was executed"
    assert validated.after == validated.before


def test_duplicate_ids_across_contracts_name_the_first_file(validated: Validated) -> None:
    result = validated.broken["id-duplicate-across"]
    [dup] = [d for d in diagnostics(result.stdout) if d.rule == "ID-DUPLICATE"]
    assert dup.path == "id-duplicate-across/b-second.yaml"
    assert "id-duplicate-across/a-first.yaml:14" in dup.message
    assert summary(result.stdout)[:2] == (2, 2)


# -- cases built in tmp_path ------------------------------------------------------------------------------


def _alias_bomb() -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 10)]
    return "\n".join(lines) + "\n"


def _too_large() -> str:
    text = MINIMAL.read_text("utf-8")
    return text + "".join(f"# padding line {i:07d} {'x' * 60}\n" for i in range(16_000))


BUILT: dict[str, tuple[bytes, str, tuple[int, int] | None, str]] = {
    # name: (content, rule, (line, col) or None for "a place inside the file", fragment of the message)
    "empty.yaml": (b"", "FILE-EMPTY", (0, 0), "the file is empty"),
    "blank.yaml": (b"  \n\n\t\n", "FILE-EMPTY", (0, 0), "the file is empty"),
    "not-utf8.yaml": (
        MINIMAL.read_bytes().replace(b'"Softmax rows', b'"Softmax r\xe9ws'),
        "FILE-ENCODING",
        (4, 26),
        "byte 0xe9 is not UTF-8",
    ),
    "too-large.yaml": (_too_large().encode(), "YAML-TOO-LARGE", (0, 0), "over the 1000000-byte limit"),
    "alias-bomb.yaml": (_alias_bomb().encode(), "YAML-TOO-LARGE", None, "more than 100000 nodes (an alias bomb?)"),
    "recursive-alias.yaml": (b"metadata: &m\n  version: *m\n", "YAML-TOO-LARGE", (2, 3), "nesting deeper than 64"),
    "deep-flow.yaml": (b"metadata: " + b"[" * 5000 + b"]" * 5000 + b"\n", "YAML-TOO-LARGE", (0, 0), "nests too deeply"),
    "unreadable": (b"", "FILE-UNREADABLE", (0, 0), "cannot read the file"),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    root = tmp_path_factory.mktemp("built")
    for name, (content, *_) in BUILT.items():
        if name == "unreadable":  # a directory named like a contract: reading it fails, even as root
            (root / name / "contract.yaml").mkdir(parents=True)
        else:
            (root / name).write_bytes(content)
    assert (root / "too-large.yaml").stat().st_size > 1_000_000
    assert b"\xe9" in (root / "not-utf8.yaml").read_bytes()
    # two at a time on purpose: each run's wall time is then its own, for test_hostile_yaml_fails_fast
    runs = run_all(((["-m", "spec", "validate", "--no-suite-check", name], root) for name in BUILT), workers=2)
    return dict(zip(BUILT, runs))


@pytest.mark.parametrize("name", list(BUILT))
def test_built_case(name: str, built: dict[str, Run]) -> None:
    content, rule, place, fragment = BUILT[name]
    result = built[name]
    assert_no_traceback(result)
    assert result.returncode == 1, str(result)
    [d] = diagnostics(result.stdout)
    assert (d.rule, d.severity) == (rule, "ERROR"), str(result)
    assert fragment in d.message, str(d)
    if place is None:
        assert 1 <= d.line <= content.count(b"\n") and d.col >= 1, str(d)
    else:
        assert (d.line, d.col) == place, str(d)
    assert d.path == ("unreadable/contract.yaml" if name == "unreadable" else name)


@pytest.mark.parametrize("name", ["too-large.yaml", "alias-bomb.yaml", "recursive-alias.yaml", "deep-flow.yaml"])
def test_hostile_yaml_fails_fast(name: str, built: dict[str, Run]) -> None:
    result = built[name]
    print(f"{name}: {result.seconds:.2f} s")
    assert result.seconds < 5.0, f"{name} took {result.seconds:.1f} s: the limits should stop it early"


def test_bom_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "bom.yaml").write_bytes(b"\xef\xbb\xbf" + MINIMAL.read_bytes())
    result = spec("validate", "--no-suite-check", "bom.yaml", cwd=tmp_path)
    assert result.returncode == 0 and diagnostics(result.stdout) == [], str(result)


def _project(tmp_path: Path, *contracts: Path) -> Path:
    (tmp_path / "contracts").mkdir()
    for c in contracts:
        shutil.copy(c, tmp_path / "contracts" / c.name)
    return tmp_path


def test_generated_suite_missing_stale_and_orphan(tmp_path: Path) -> None:
    project = _project(tmp_path, MINIMAL)
    assert spec("validate", cwd=project).returncode == 1  # nothing generated yet: GENERATED-MISSING
    generated = spec("generate", cwd=project)
    assert generated.returncode == 0, str(generated)
    fresh = spec("validate", cwd=project)
    assert fresh.returncode == 0 and diagnostics(fresh.stdout) == [], str(fresh)

    contract = project / "contracts" / "minimal.yaml"
    contract.write_text(contract.read_text("utf-8").replace("within 1e-12", "within 1e-11"), "utf-8")
    suite = project / "falsifiers"
    (suite / "conftest.py").unlink()
    shutil.copy(suite / "test_minimal.py", suite / "test_retired.py")  # generated from a contract now gone
    before = snapshot(project)
    result = spec("validate", "--format", "json", cwd=project)
    assert snapshot(project) == before
    assert_no_traceback(result)
    assert result.returncode == 1, str(result)
    report = json.loads(result.stdout)["diagnostics"]
    found = {(d["path"], d["line"], d["col"], d["rule"]): d["message"] for d in report}
    assert set(found) == {
        ("falsifiers/conftest.py", 0, 0, "GENERATED-MISSING"),
        ("falsifiers/test_minimal.py", 0, 0, "GENERATED-STALE"),
        ("falsifiers/test_retired.py", 0, 0, "GENERATED-STALE"),
    }, result.stdout
    assert "does not match its contract" in found[("falsifiers/test_minimal.py", 0, 0, "GENERATED-STALE")]
    assert "no longer exists" in found[("falsifiers/test_retired.py", 0, 0, "GENERATED-STALE")]
    assert "is missing" in found[("falsifiers/conftest.py", 0, 0, "GENERATED-MISSING")]


def test_generated_rules_are_skipped_with_no_suite_check(tmp_path: Path) -> None:
    project = _project(tmp_path, MINIMAL)
    result = spec("validate", "--no-suite-check", cwd=project)
    assert result.returncode == 0 and diagnostics(result.stdout) == [], str(result)
