"""A contract is only data: hostile contracts, file names and file types against validate, generate and the
check language. Each case here crashed, hung, ran code or wrote outside its folder before the fix (issue 9)."""

from __future__ import annotations

import ast
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from spec import checklang
from spec.binding import BindingError, load_binding, registered
from spec.generate import escape, quote, render
from spec.runtime import Falsifier, FalsifierError
from spec.validate import validate

from .support import MINIMAL, assert_no_traceback, diagnostics, snapshot, spec

MINIMAL_TEXT = MINIMAL.read_text("utf-8")


def _with_binding(name: str) -> str:
    return MINIMAL_TEXT.replace("binding: bindings.kd", f"binding: {name}")


# -- bindings come from a registry ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["venv.__main__", "this", "antigravity", "os", "spec.diagnostics"])
def test_a_binding_name_is_never_imported(name: str, tmp_path: Path) -> None:
    (tmp_path / "contract.yaml").write_text(_with_binding(name), "utf-8")
    before = snapshot(tmp_path)
    result = spec("validate", "--no-suite-check", "contract.yaml", cwd=tmp_path)
    assert_no_traceback(result)
    assert result.returncode == 1, str(result)
    [d] = [d for d in diagnostics(result.stdout) if d.rule == "BINDING-INVALID"]
    assert f"binding '{name}' is not registered: the registered bindings are bindings.kd" in d.message
    assert snapshot(tmp_path) == before  # venv.__main__ would have created a virtualenv here
    assert "The Zen of Python" not in result.output  # `this` prints it on import


def test_registry_lists_the_project_binding_and_refuses_the_rest() -> None:
    assert registered()["bindings.kd"] == "bindings.kd:BINDING"
    assert load_binding("bindings.kd").name == "bindings.kd"
    already = "this" in sys.modules
    with pytest.raises(BindingError, match="not registered"):
        load_binding("this")
    assert ("this" in sys.modules) == already


def test_operator_registers_a_binding_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KD_CONTRACTS_BINDINGS", "mine=bindings.kd:BINDING")
    assert load_binding("mine").name == "bindings.kd"
    monkeypatch.setenv("KD_CONTRACTS_BINDINGS", "mine=not a target")
    with pytest.raises(BindingError, match="KD_CONTRACTS_BINDINGS"):
        load_binding("mine")


# -- one escaping function for generated code -----------------------------------------------------------

HOSTILE_STRINGS = [
    '"""',
    "'''",
    "ends with a backslash \\",
    "nul \x00 byte",
    "lone surrogate \udc80 and \ud800",
    "line\u2028separator and paragraph\u2029separator",
    "new\nline\r\n and tab\t",
    '"""; import os; os.system("touch pwned") #',
    "\\N{BULLET} \\u0041 \\x00",
    "α β γ — ünïcödé, 😀",
]


@pytest.mark.parametrize("text", HOSTILE_STRINGS)
def test_escape_round_trips_hostile_strings(text: str) -> None:
    literal = quote(text)
    assert ast.literal_eval(literal) == text
    assert "\n" not in literal and "\r" not in literal
    literal.encode("utf-8")  # no lone surrogate reaches the file
    docstring = f'"""{escape(text)}"""'
    assert ast.literal_eval(docstring) == text
    comment = f"# {escape(text)}\nx = 1\n"
    assert ast.parse(comment).body[0].targets[0].id == "x"  # the comment did not end early


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(codec=None, exclude_categories=()), max_size=40))
def test_escape_round_trips_any_string(text: str) -> None:
    literal = quote(text)
    assert ast.literal_eval(literal) == text
    assert ast.literal_eval(f'"""{escape(text)}"""') == text
    assert len(escape(text).splitlines()) <= 1
    literal.encode("utf-8")


def test_hostile_falsifier_text_generates_inert_code(tmp_path: Path) -> None:
    """Rule, prediction, if_fails and description reach docstrings and literals: none of them becomes code."""
    text = MINIMAL_TEXT
    for field in ("rule", "prediction", "if_fails"):
        hostile = '\\"\\"\\"; open(\\"pwned\\", \\"w\\") #\\u2028\\\\'
        text = text.replace(f'    {field}: "', f'    {field}: "{hostile}', 1)
    text = text.replace('description: "', 'description: "\\"\\"\\" + __import__(\\"os\\") \\\\', 1)
    path = tmp_path / "hostile-v1.yaml"
    path.write_text(text, "utf-8")
    result = validate([path])
    assert not result.errors, result.diagnostics
    source = render(result.contracts[0], tmp_path / "falsifiers")
    tree = ast.parse(source)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    assert {c.func.id for c in calls} <= {"Falsifier"}, "a string became a call"
    [test] = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert 'open("pwned", "w")' in (ast.get_docstring(test) or "")  # kept as text, in the docstring


# -- file names, collisions and partial generation ------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ['a"""b.yaml', "new\nline.yaml", "kd_loss_extra_v1.yml", "UPPER.yaml", "x\u2028y.yaml", "trailing\\.yaml"],
)
def test_contract_file_names_follow_the_pattern(name: str, tmp_path: Path) -> None:
    (tmp_path / name).write_text(MINIMAL_TEXT, "utf-8")
    before = snapshot(tmp_path)
    result = spec("generate", "--out", "out", name, cwd=tmp_path)
    assert_no_traceback(result)
    assert result.returncode == 1, str(result)
    assert "CONTRACT-NAME" in result.stdout
    assert all("\n" not in d.path for d in diagnostics(result.stdout))
    assert snapshot(tmp_path) == before  # nothing generated


def test_two_contracts_for_one_test_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "contracts").mkdir()
    (tmp_path / "contracts" / "kd-loss-extra-v1.yaml").write_text(MINIMAL_TEXT, "utf-8")
    (tmp_path / "contracts" / "kd-loss-extra-v1.yml").write_text(MINIMAL_TEXT.replace("F-MIN-", "F-TWO-"), "utf-8")
    for command in (("generate",), ("generate", "--check"), ("validate",)):
        result = spec(*command, cwd=tmp_path)
        assert result.returncode == 1, str(result)
        assert "GENERATED-COLLISION" in result.stdout
        assert "would both generate test_kd_loss_extra_v1.py" in result.stdout
    assert not (tmp_path / "falsifiers").exists()


def test_generate_one_contract_keeps_the_others(tmp_path: Path) -> None:
    contracts = tmp_path / "contracts"
    contracts.mkdir()
    (contracts / "first-v1.yaml").write_text(MINIMAL_TEXT, "utf-8")
    (contracts / "second-v1.yaml").write_text(MINIMAL_TEXT.replace("F-MIN-", "F-SEC-"), "utf-8")
    assert spec("generate", cwd=tmp_path).returncode == 0
    suite = tmp_path / "falsifiers"
    assert {p.name for p in suite.glob("test_*.py")} == {"test_first_v1.py", "test_second_v1.py"}
    result = spec("generate", "contracts/first-v1.yaml", cwd=tmp_path)
    assert result.returncode == 0, str(result)
    assert {p.name for p in suite.glob("test_*.py")} == {"test_first_v1.py", "test_second_v1.py"}
    check = spec("generate", "--check", "contracts/second-v1.yaml", cwd=tmp_path)
    assert check.returncode == 0, str(check)
    (contracts / "second-v1.yaml").unlink()  # retired: generating the directory removes its file
    result = spec("generate", cwd=tmp_path)
    assert result.returncode == 0, str(result)
    assert {p.name for p in suite.glob("test_*.py")} == {"test_first_v1.py"}


# -- files that are not plain contracts -----------------------------------------------------------------


def _one_error(result, rule: str, fragment: str) -> None:  # type: ignore[no-untyped-def]
    assert_no_traceback(result)
    assert result.returncode == 1, str(result)
    found = [d for d in diagnostics(result.stdout) if d.rule == rule]
    assert found and fragment in found[0].message, str(result)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_in_a_scanned_folder_is_not_opened(tmp_path: Path) -> None:
    shutil.copy(MINIMAL, tmp_path / "minimal.yaml")
    os.mkfifo(tmp_path / "pipe.yaml")
    result = spec("validate", "--no-suite-check", ".", cwd=tmp_path, timeout=30)
    _one_error(result, "FILE-UNREADABLE", "it is a FIFO")
    assert result.seconds < 10


def test_symlink_loop_and_dev_zero(tmp_path: Path) -> None:
    (tmp_path / "loop.yaml").symlink_to("loop.yaml")
    _one_error(spec("validate", "--no-suite-check", "loop.yaml", cwd=tmp_path), "FILE-UNREADABLE", "symlink loop")
    if Path("/dev/zero").exists():
        (tmp_path / "zero.yaml").symlink_to("/dev/zero")
        result = spec("validate", "--no-suite-check", "zero.yaml", cwd=tmp_path, timeout=30)
        _one_error(result, "FILE-UNREADABLE", "it is a device")
        assert result.seconds < 10


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not Path("/dev/zero").exists(), reason="needs FIFOs, /dev/zero")
def test_fifo_and_device_links_in_the_output_folder_are_replaced_not_read(tmp_path: Path) -> None:
    (tmp_path / "contracts").mkdir()
    shutil.copy(MINIMAL, tmp_path / "contracts" / "minimal.yaml")
    suite = tmp_path / "falsifiers"
    suite.mkdir()
    (suite / "test_minimal.py").symlink_to("/dev/zero")
    os.mkfifo(suite / "conftest.py")
    check = spec("generate", "--check", cwd=tmp_path, timeout=30)
    assert check.returncode == 1 and "stale" in check.stdout, str(check)
    result = spec("generate", cwd=tmp_path, timeout=30)
    assert result.returncode == 0, str(result)
    assert (suite / "test_minimal.py").is_file() and not (suite / "test_minimal.py").is_symlink()
    assert (suite / "conftest.py").is_file()
    assert (suite / "test_minimal.py").stat().st_mode & 0o044, "generated files are readable by others"
    assert spec("generate", "--check", cwd=tmp_path).returncode == 0


def test_scalar_aliased_thousands_of_times(tmp_path: Path) -> None:
    big = "x" * 200_000
    text = MINIMAL_TEXT.replace(
        'description: "Softmax rows sum to one"', f'description: &d "{big}"\n  tags: [{", ".join(["*d"] * 5000)}]'
    )
    (tmp_path / "aliases.yaml").write_text(text, "utf-8")
    result = spec("generate", "--out", "out", "aliases.yaml", cwd=tmp_path, timeout=60)
    _one_error(result, "YAML-TOO-LARGE", "expands past")
    assert result.seconds < 10


# -- the check language is bounded ----------------------------------------------------------------------


def _falsifier(expect: str, **extra: object) -> Falsifier:
    return Falsifier(
        contract="limits-v1",
        binding="bindings.kd",
        id="F-LIM-001",
        rule="r",
        prediction="p",
        if_fails="f",
        expect=expect,
        scope="once",
        **extra,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("expect", "limit"),
    [
        ("10 ** 10 ** 10 > 0", "integer over"),
        ("len('a' * 10 ** 10) > 0", "repetition would build"),
        ("sum(range(10 ** 15)) > 0", "range of"),
        ("len([i for i in range(5000) for j in range(5000)]) > 0", "comprehensions visited more than"),
        ("len('%0999999999d' % 1) > 0", "%-formatting"),
    ],
)
def test_check_language_limits_are_reported(expect: str, limit: str) -> None:
    start = time.perf_counter()
    with pytest.raises(FalsifierError, match="LimitExceeded") as info:
        _falsifier(expect).run()
    assert limit in str(info.value)
    assert time.perf_counter() - start < 10


def test_check_language_time_limit() -> None:
    code = checklang.compile_expression("sum(sum(range(2000)) for i in range(10 ** 6))", "slow")
    start = time.perf_counter()
    with pytest.raises(checklang.LimitExceeded, match=r"time limit of 0\.2 s per example"):
        checklang.evaluate(code, {"sum": sum, "range": range}, checklang.Limits(seconds=0.2))
    assert time.perf_counter() - start < 2


def test_one_time_limit_spans_the_whole_example() -> None:
    """assume, let and expect of one example share a deadline: an expression that starts after it fails at once."""
    code = checklang.compile_expression("1 + 1", "cheap")
    assert checklang.evaluate(code, {}, until=checklang.deadline()) == 2
    with pytest.raises(checklang.LimitExceeded, match="per example"):
        checklang.evaluate(code, {}, until=time.monotonic() - 1.0)


def test_catastrophic_match_pattern_times_out() -> None:
    falsifier = _falsifier("int('" + "a" * 40 + "!')", raises="ValueError", match="(a|aa)+$")
    start = time.perf_counter()
    with pytest.raises(FalsifierError, match="catastrophic backtracking"):
        falsifier.run()
    assert time.perf_counter() - start < 10


def test_guard_names_cannot_be_reached_from_a_check() -> None:
    scope = checklang.Scope(names={"x"})
    found = checklang.problems("__guard__.size(x)", scope)
    assert found and all(p.rule == "CHECK-FORBIDDEN" for p in found)
    assert any("dunder name '__guard__'" in p.message for p in found)


# -- property: generated hostile contracts and file names -----------------------------------------------

NAME_CHARS = st.characters(codec="utf-8", exclude_characters="/\x00")
VALID_NAMES = st.from_regex(r"[a-z][a-z0-9]{0,8}(-[a-z0-9]{1,4}){0,3}\.ya?ml", fullmatch=True)
FILE_NAMES = st.one_of(
    VALID_NAMES,
    VALID_NAMES,
    st.text(NAME_CHARS, min_size=1, max_size=30).map(lambda s: s + ".yaml"),
    st.sampled_from(["kd-loss-v1.yaml", "kd_loss_v1.yml", "a.yml", "-a.yaml", "..yaml", "a--b.yaml"]),
).filter(lambda n: n not in (".", "..") and len(n.encode("utf-8", "surrogateescape")) < 200)
TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=30)
YAML_SNIPPETS = st.sampled_from(
    [
        "!!int abc",
        "!!float abc",
        "!!bool maybe",
        "!!python/object/apply:os.system ['touch pwned']",
        "&a x",
        "*a",
        '"\\udc80"',
        "[" * 80 + "]" * 80,
        "not " * 1500 + "True",
        "10 ** 10 ** 10",
        "__import__('os').system('touch pwned')",
        "open('/tmp/pwned', 'w')",
        "pipeline.run_distill(files={'/etc/x': 1})",
        "9" * 5000,
        "{a: 1, a: 2}",
        "<<: {x: 1}",
    ]
)


def _yaml_quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _hostile_contract(draw: st.DrawFn, index: int) -> str:
    text = MINIMAL_TEXT.replace("F-MIN-", f"F-M{index}-")
    for anchor in ('"Softmax rows sum to one"', "bindings.kd", f"F-M{index}-001", '"Bridle (1990), softmax"'):
        if draw(st.integers(0, 3)) == 0:
            snippet = draw(st.one_of(YAML_SNIPPETS, TEXT.map(_yaml_quoted)))
            text = text.replace(anchor, snippet, 1)
    if draw(st.integers(0, 3)) == 0:
        text = text.replace(
            "      expect: close(", f"      expect: {draw(YAML_SNIPPETS)}\n      unused: close(", 1
        )
    if draw(st.integers(0, 3)) == 0:
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(TEXT) + text[cut:]
    return text


@st.composite
def hostile_projects(draw: st.DrawFn) -> list[tuple[str, bytes]]:
    files = draw(st.lists(FILE_NAMES, min_size=1, max_size=2, unique_by=lambda n: n.lower()))
    return [(name, _hostile_contract(draw, i).encode("utf-8", "surrogatepass")) for i, name in enumerate(files)]


@settings(
    max_examples=int(os.environ.get("HOSTILE_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(project=hostile_projects())
def test_hostile_contracts_never_crash_write_outside_or_hang(
    project: list[tuple[str, bytes]], tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    from spec.cli import main

    root = tmp_path_factory.mktemp("hostile")
    contracts = root / "contracts"
    contracts.mkdir()
    for name, data in project:
        try:
            (contracts / name).write_bytes(data)
        except OSError:  # a name this file system refuses
            continue
    before = snapshot(contracts)
    cwd = Path.cwd()
    os.chdir(root)
    try:
        for argv in (
            ["validate", "--no-suite-check", "contracts"],
            ["list", "contracts"],
            ["generate", "--out", "out", "contracts"],
            ["generate", "--check", "--out", "out", "contracts"],
        ):
            start = time.perf_counter()
            code = main(argv)  # any exception here is a traceback: the test fails
            assert code in (0, 1, 2), (argv, code)
            assert time.perf_counter() - start < 20, f"{argv} took too long"
    finally:
        os.chdir(cwd)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    (out + err).encode("utf-8")  # printable: no lone surrogate reaches the terminal
    assert snapshot(contracts) == before
    assert {p.name for p in root.iterdir()} <= {"contracts", "out"}, "something was written outside out/"
    event("generated a suite" if (root / "out").exists() else "refused: nothing generated")
    for generated in (root / "out").glob("*.py") if (root / "out").exists() else ():
        tree = ast.parse(generated.read_text("utf-8"))
        calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert calls <= {"Falsifier"}, generated
