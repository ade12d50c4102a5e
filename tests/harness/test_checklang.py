"""spec.checklang in-process: the AST whitelist, scopes, did-you-mean and evaluation without builtins."""

from __future__ import annotations

import keyword

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spec import checklang
from spec.checklang import Scope, compile_expression, did_you_mean, evaluate, parse, problems

SCOPE = Scope(
    names={"close", "all", "flat", "len", "zeros_like", "inf"},
    namespaces={"kd": ("softmax", "kd_loss"), "ref": ("softmax", "kd_loss", "kd_step")},
    records={"b": ("student", "teacher", "labels")},
    unavailable={"tol": "is only defined when the falsifier declares a tolerance"},
)


def rules(expression: str, scope: Scope = SCOPE) -> list[str]:
    return [p.rule for p in problems(expression, scope)]


@pytest.mark.parametrize(
    "expression",
    [
        "close(kd.softmax(b.student), ref.softmax(b.student), 1e-9)",
        "all(flat(kd.kd_loss(b.student, b.teacher, b.labels)) >= 0)",
        "b.student[..., :-1] == b.teacher[0:2, ::-1]",  # subscripts and slices of record fields
        "[x * 2 for x in [1, 2, 3] if x > 1] == [4, 6]",
        "all(v >= 0 for v, w in zip_ if w)".replace("zip_", "[(1, True)]"),
        "{'a': 1, 'b': [1, 2]}['a'] == 1 and (1, 2) != (2, 1)",
        "1 if len([]) == 0 else 2",
        "not (1 < 2 <= 3) or 1 in [1] and 2 not in [1] and None is None and inf is not None",
        "-1 ** 2 + 3 // 2 % 2 - 4 / 2 @ 1 if False else +1",
        "'a string' != \"another\"",
    ],
)
def test_allowed(expression: str) -> None:
    assert problems(expression, SCOPE) == []


@pytest.mark.parametrize(
    ("expression", "rule", "words"),
    [
        ("__import__('os').system('true')", "CHECK-FORBIDDEN", "dunder name '__import__'"),
        ("__builtins__", "CHECK-FORBIDDEN", "dunder name"),
        ("(lambda: 1)()", "CHECK-FORBIDDEN", "lambda is not allowed"),
        ("(x := 1)", "CHECK-FORBIDDEN", "':=' assignment"),
        ("f'{b}'", "CHECK-FORBIDDEN", "f-strings"),
        ("(1).real", "CHECK-FORBIDDEN", "attribute access '.real'"),
        ("b.student.T", "CHECK-FORBIDDEN", "attribute access '.T'"),
        ("b.student[0].shape", "CHECK-FORBIDDEN", "attribute access '.shape'"),
        ("kd.softmax.__globals__", "CHECK-FORBIDDEN", "attribute '__globals__' is private"),
        ("ref._private", "CHECK-FORBIDDEN", "attribute '_private' is private"),
        ("close(*[1, 2])", "CHECK-FORBIDDEN", "starred arguments"),
        ("close(**{'a': 1})", "CHECK-FORBIDDEN", "'**' keyword unpacking"),
        ("{1, 2}", "CHECK-FORBIDDEN", "set literals"),
        ("{x for x in [1]}", "CHECK-FORBIDDEN", "set comprehensions"),
        ("{x: 1 for x in [1]}", "CHECK-FORBIDDEN", "dict comprehensions"),
        ("b'bytes'", "CHECK-FORBIDDEN", "bytes literals"),
        ("[x for __x in [1]]", "CHECK-FORBIDDEN", "comprehension target must be plain names"),
        ("[1][0](2)", "CHECK-FORBIDDEN", "only declared functions"),
        ("clsoe(1, 2, 3)", "CHECK-UNKNOWN-NAME", "did you mean 'close'?"),
        ("open('/etc/passwd')", "CHECK-UNKNOWN-NAME", "name 'open' is not declared"),
        ("kd.sofmax(b.student)", "CHECK-UNKNOWN-ATTRIBUTE", "'kd' has no attribute 'sofmax' (did you mean 'softmax'?)"),
        ("b.studnet", "CHECK-UNKNOWN-ATTRIBUTE", "did you mean 'student'?"),
        ("close(1, 2, tol)", "CHECK-SCOPE", "'tol' is only defined when the falsifier declares a tolerance"),
        ("close(", "CHECK-SYNTAX", "does not parse"),
        ("x = 1", "CHECK-SYNTAX", "does not parse"),
        ("import os", "CHECK-SYNTAX", "does not parse"),
        ("   ", "CHECK-SYNTAX", "the expression is empty"),
    ],
)
def test_rejected(expression: str, rule: str, words: str) -> None:
    found = problems(expression, SCOPE)
    assert any(p.rule == rule and words in p.message for p in found), found


def test_columns_are_one_based_within_the_expression() -> None:
    [problem] = problems("close(1, 2) and clsoe(3)", SCOPE)
    assert problem.col == len("close(1, 2) and ") + 1
    [syntax] = problems("close(1, 2", SCOPE)
    assert syntax.rule == "CHECK-SYNTAX" and syntax.col == len("close") + 1


def test_comprehension_variables_are_local() -> None:
    assert problems("[v for v in flat(b.student)]", SCOPE) == []
    assert rules("[v for v in flat(b.student)] and v") == ["CHECK-UNKNOWN-NAME"]  # v leaks nowhere
    # a loop variable that shadows a record is a plain value inside the comprehension
    assert rules("[b.student for b in [1]]") == ["CHECK-FORBIDDEN"]


def test_a_record_is_not_a_namespace_and_an_unavailable_name_is_not_unknown() -> None:
    assert rules("b") == []
    assert rules("kd") == []
    scope = Scope(names=set(), namespaces={}, records={}, unavailable={"kd": "stands for the backend under test"})
    assert rules("kd.softmax(1)", scope) == ["CHECK-SCOPE"]  # one finding, not a cascade


def test_did_you_mean() -> None:
    assert did_you_mean("predicton", ["prediction", "rule"]) == " (did you mean 'prediction'?)"
    assert did_you_mean("zzz", ["prediction", "rule"]) == ""
    assert did_you_mean("x", []) == ""


def test_parse_rejects_non_strings() -> None:
    tree, problem = parse(None)  # type: ignore[arg-type]
    assert tree is None and problem is not None and problem.rule == "CHECK-SYNTAX"


def test_evaluation_has_no_builtins() -> None:
    code = compile_expression("len([1, 2]) + offset", "<test>")
    assert evaluate(code, {"len": len, "offset": 1}) == 3
    with pytest.raises(NameError):
        evaluate(compile_expression("open", "<test>"), {})
    # comprehensions see the names too (they are globals of the evaluation)
    assert evaluate(compile_expression("[x + k for x in [1, 2]]", "<test>"), {"k": 10}) == [11, 12]


@given(st.from_regex(r"__[a-z]{1,8}(__)?", fullmatch=True))
def test_any_dunder_name_is_forbidden(name: str) -> None:
    assert "CHECK-FORBIDDEN" in rules(name)
    assert "CHECK-FORBIDDEN" in rules(f"kd.{name}")


@given(st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True).filter(lambda s: not keyword.iskeyword(s)))
def test_a_name_is_known_exactly_when_declared(name: str) -> None:
    declared = SCOPE.known() | set(SCOPE.unavailable)
    found = rules(name)
    assert found == ([] if name in SCOPE.known() else ["CHECK-SCOPE"] if name in declared else ["CHECK-UNKNOWN-NAME"])


def test_the_whitelist_has_no_statement_nodes() -> None:
    import ast

    statements = [n for n in checklang._ALLOWED if issubclass(n, ast.stmt)]
    assert statements == []
