"""The outcomes of one falsifier, in process: error versus falsification (``raises:`` included), the false
conjunct and its sides, one hypothesis database key per falsifier x backend x dtype, and ``test:``
falsifiers run under their ID (a real scratch project, real pytest subprocess)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import hypothesis
import pytest
from hypothesis.database import InMemoryExampleDatabase

from spec import explain
from spec.runtime import Falsifier, FalsifierError, FalsifierFailure

from .support import assert_no_traceback, run, spec


def falsifier(**fields: object) -> Falsifier:
    base = {"contract": "fixture-v1", "binding": "bindings.kd", "id": "F-FIX-001", "rule": "a rule",
            "prediction": "a prediction", "if_fails": "a diagnosis", "scope": "once"}
    return Falsifier(**{**base, **fields})  # type: ignore[arg-type]


@pytest.fixture
def small_db() -> Iterator[InMemoryExampleDatabase]:
    db = InMemoryExampleDatabase()
    previous = hypothesis.settings()
    hypothesis.settings.register_profile("i8-test", database=db, max_examples=20, deadline=None,
                                         derandomize=False)
    hypothesis.settings.load_profile("i8-test")
    try:
        yield db
    finally:
        hypothesis.settings.register_profile("i8-restore", previous)
        hypothesis.settings.load_profile("i8-restore")


# -- raises: the expected exception is the pass ---------------------------------------------------------------


def test_in_a_raises_falsifier_the_expected_exception_is_the_pass() -> None:
    falsifier(expect="int('not a number')", raises="ValueError").run()


def test_a_raises_falsifier_that_raises_nothing_is_falsified() -> None:
    with pytest.raises(FalsifierFailure) as failure:
        falsifier(expect="int('12')", raises="ValueError").run()
    assert failure.value.headline == "F-FIX-001 falsified: expected ValueError, but nothing was raised (it returned 12)"


def test_a_raises_falsifier_that_raises_another_exception_is_an_error() -> None:
    with pytest.raises(FalsifierError) as error:
        falsifier(expect="len(1)", raises="ValueError").run()
    assert error.value.headline.startswith("F-FIX-001 ERROR: expected ValueError, but expect raised TypeError")
    assert isinstance(error.value.__cause__, TypeError)
    assert "this is an error, not a falsification" in str(error.value)


def test_an_exception_in_a_let_is_an_error_naming_the_let() -> None:
    with pytest.raises(FalsifierError) as error:
        falsifier(let=(("x", "len(1)"),), expect="x == 1").run()
    assert error.value.headline == "F-FIX-001 ERROR: let x raised TypeError: object of type 'int' has no len()"
    assert not isinstance(error.value, AssertionError)  # pytest must not call it a failed assertion


# -- the false conjunct -------------------------------------------------------------------------------------


def test_a_false_and_chain_names_its_false_conjunct_sides_and_factor(small_db: InMemoryExampleDatabase) -> None:
    f = falsifier(
        given={"b": ("kd_batch", {})},
        let=(("p", "ref.softmax(b.student)"), ("q", "scale(p, b.temperature ** 2)")),
        assume=("abs(b.temperature - 1.0) > 0.1",),
        expect="close(p, p, 1.0e-12) and close(q, p, 1.0e-9)",
    )
    with pytest.raises(FalsifierFailure) as failure:
        f.run()
    text = str(failure.value)
    assert "why:        conjunct 2 of 2 is false: `close(q, p, 1e-09)`" in text, text
    assert re.search(r"it gave: max \|actual - expected\| = \S+ > tolerance 1\.0e-09", text), text
    assert "actual `q` = array(" in text and "expected `p` = array(" in text
    assert re.search(r"actual = \S+ x expected everywhere: the factor is T\^2 \(T\^2 = \S+\)", text), text
    assert "let (the values the check used):\n    p = array(" in text


@pytest.mark.parametrize(
    ("actual", "expected", "factor"),
    [([2.0, 4.0], [1.0, 2.0], 2.0), ([0.5, 0.0], [2.0, 0.0], 0.25), ([1.0, 3.0], [1.0, 2.0], None),
     ([1.0, 1.0], [0.0, 1.0], None)],
)
def test_constant_ratio(actual: list[float], expected: list[float], factor: float | None) -> None:
    assert explain.constant_ratio(actual, expected) == factor


def test_a_factor_is_named_or_its_reciprocal() -> None:
    factors = {"T": 2.0, "T^2": 4.0, "V": 8.0}
    assert explain.factor_lines([4.0, 8.0], [1.0, 2.0], factors) == [
        "actual = 4 x expected everywhere: the factor is T^2 (T^2 = 4)"
    ]
    assert explain.factor_lines([1.0], [8.0], factors) == [
        "actual = 0.125 x expected everywhere: the factor is 1/V (V = 8)"
    ]


# -- one hypothesis database key per falsifier x backend x dtype --------------------------------------------


def test_a_saved_failure_survives_another_falsifier_and_replays_first(small_db: InMemoryExampleDatabase) -> None:
    failing = falsifier(id="F-FIX-001", given={"b": ("kd_batch", {})}, expect="b.temperature < 0.3")
    passing = falsifier(id="F-FIX-002", given={"b": ("kd_batch", {})}, expect="b.temperature > 0")
    assert failing.database_key(None) != passing.database_key(None)
    with pytest.raises(FalsifierFailure) as first:
        failing.run()
    saved = {k: set(v) for k, v in small_db.data.items()}
    assert saved, "the failure was not saved"
    passing.run()  # with one shared key (the old generated code) this deleted the saved failure
    assert all(small_db.data.get(k, set()) >= v for k, v in saved.items())
    hypothesis.settings.register_profile("i8-one", hypothesis.settings(), max_examples=1)
    hypothesis.settings.load_profile("i8-one")
    with pytest.raises(FalsifierFailure) as again:  # one example: the saved one, replayed first
        failing.run()
    assert again.value.drawn["b"].temperature == first.value.drawn["b"].temperature


# -- test: falsifiers ----------------------------------------------------------------------------------------

NAMED_CONTRACT = """\
metadata:
  version: "1.0.0"
  description: "Falsifiers whose checks are Python tests"
  references: ["none: a fixture of the harness tests"]
  binding: bindings.kd
equations:
  identity:
    formula: "x = x"
falsification_tests:
  - id: F-NAMED-001
    rule: "A passing test"
    prediction: "it passes"
    if_fails: "the test is broken"
    test: checks/test_named.py::test_passes
  - id: F-NAMED-002
    rule: "Two plus two is five"
    prediction: "2 + 2 == 5"
    if_fails: "arithmetic holds"
    test: checks/test_named.py::test_fails
  - id: F-NAMED-003
    rule: "A test that raises"
    prediction: "nothing raises"
    if_fails: "the code under test raised"
    test: checks/test_named.py::test_raises
qa_gate: {id: F-NAMED-GATE, name: "Named tests"}
"""

NAMED_TESTS = '''\
import pytest


def helper():
    return {}["missing"]


@pytest.mark.falsifier_id("F-NAMED-001")
@pytest.mark.parametrize("n", [1, 2])
def test_passes(n, tmp_path):
    assert tmp_path.is_dir() and n > 0


@pytest.mark.falsifier_id("F-NAMED-002")
def test_fails():
    total = 2 + 2
    assert total == 5, "two plus two is not five"


@pytest.mark.falsifier_id("F-NAMED-003")
def test_raises():
    helper()
'''


def test_a_named_test_runs_once_under_its_falsifier_id(tmp_path: Path) -> None:
    (tmp_path / "contracts").mkdir()
    (tmp_path / "checks").mkdir()
    (tmp_path / "pyproject.toml").write_text("", "utf-8")
    (tmp_path / "contracts" / "named-v1.yaml").write_text(NAMED_CONTRACT, "utf-8")
    (tmp_path / "checks" / "test_named.py").write_text(NAMED_TESTS, "utf-8")
    generated = spec("generate", cwd=tmp_path)
    assert generated.returncode == 0, str(generated)
    validated = spec("validate", cwd=tmp_path)
    assert validated.returncode == 0, str(validated)
    result = run(["-m", "pytest", "-p", "no:cacheprovider", "falsifiers", "checks", "-rA"], cwd=tmp_path)
    assert_no_traceback(result)
    assert result.returncode == 1, str(result)
    out = result.stdout
    assert "2 failed, 2 passed, 4 deselected" in out, out  # the originals ran once, as the falsifiers
    assert "PASSED falsifiers/test_named_v1.py::test_F_NAMED_001[1]" in out
    assert ("F-NAMED-002 falsified: checks/test_named.py::test_fails failed: two plus two is not five" in out), out
    assert re.search(r'File ".*checks/test_named\.py", line 17, in test_fails', out), out
    assert "F-NAMED-003 ERROR: checks/test_named.py::test_raises raised KeyError: 'missing'" in out
    assert re.search(r'File ".*checks/test_named\.py", line 5, in helper', out), out
    assert "prediction: 2 + 2 == 5" in out and "if it fails: arithmetic holds" in out
