"""The check language: Python expressions restricted by an AST whitelist.

A falsifier's ``expect``, ``assume`` and ``let`` entries are expressions over

* the variables it draws (``given``) and the names it binds (``let``),
* the names its binding declares (functions and constants), and
* attributes of declared namespaces (``kd.kd_loss``) and of drawn records (``batch.student``).

Everything else is rejected before anything runs: imports, lambdas, assignments, f-strings, starred
arguments, dunder names, attribute access on anything that is not a declared namespace or record.
Comprehensions and generator expressions are allowed; their loop variables are local to them.
"""

from __future__ import annotations

import ast
import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import CodeType

_ALLOWED = (
    ast.Expression,
    ast.BoolOp,
    ast.BinOp,
    ast.UnaryOp,
    ast.Compare,
    ast.IfExp,
    ast.Call,
    ast.keyword,
    ast.Name,
    ast.Load,
    ast.Store,
    ast.Constant,
    ast.Attribute,
    ast.Subscript,
    ast.Slice,
    ast.Tuple,
    ast.List,
    ast.Dict,
    ast.ListComp,
    ast.GeneratorExp,
    ast.comprehension,
    ast.And,
    ast.Or,
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.FloorDiv,
    ast.Mod,
    ast.Pow,
    ast.MatMult,
    ast.USub,
    ast.UAdd,
    ast.Not,
    ast.Eq,
    ast.NotEq,
    ast.Lt,
    ast.LtE,
    ast.Gt,
    ast.GtE,
    ast.In,
    ast.NotIn,
    ast.Is,
    ast.IsNot,
)

_NODE_WORDS = {
    ast.Lambda: "lambda",
    ast.NamedExpr: "':=' assignment",
    ast.JoinedStr: "f-strings",
    ast.Starred: "starred arguments",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
    ast.SetComp: "set comprehensions",
    ast.DictComp: "dict comprehensions",
    ast.Set: "set literals",
}


@dataclass(frozen=True)
class Problem:
    rule: str
    message: str
    col: int  # 1-based column in the expression


@dataclass
class Scope:
    """What an expression may refer to."""

    names: set[str] = field(default_factory=set)
    namespaces: Mapping[str, Iterable[str]] = field(default_factory=dict)
    records: Mapping[str, Iterable[str]] = field(default_factory=dict)
    unavailable: Mapping[str, str] = field(default_factory=dict)  # name -> why it cannot be used here

    def known(self) -> set[str]:
        return set(self.names) | set(self.namespaces) | set(self.records)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    if not isinstance(word, str):  # a number where a name belongs (a schema error already)
        return ""
    close = difflib.get_close_matches(word, sorted({c for c in choices if isinstance(c, str)}), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def parse(expression: str) -> tuple[ast.Expression | None, Problem | None]:
    if not isinstance(expression, str) or not expression.strip():
        return None, Problem("CHECK-SYNTAX", "the expression is empty", 1)
    try:
        return ast.parse(expression.strip(), mode="eval"), None
    except SyntaxError as exc:
        return None, Problem("CHECK-SYNTAX", f"the expression does not parse: {exc.msg}", exc.offset or 1)


def problems(expression: str, scope: Scope) -> list[Problem]:
    """Every reason ``expression`` is not a valid check in ``scope`` (empty when it is)."""
    tree, problem = parse(expression)
    if problem:
        return [problem]
    assert tree is not None
    walker = _Walker(scope)
    walker.visit(tree.body, frozenset())
    return walker.problems


class _Walker:
    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self.problems: list[Problem] = []

    def fail(self, node: ast.AST, rule: str, message: str) -> None:
        self.problems.append(Problem(rule, message, getattr(node, "col_offset", 0) + 1))

    def visit(self, node: ast.AST, local: frozenset[str]) -> None:
        if not isinstance(node, _ALLOWED):
            word = _NODE_WORDS.get(type(node), type(node).__name__)
            verb = "are" if word.endswith("s") else "is"
            self.fail(node, "CHECK-FORBIDDEN", f"{word} {verb} not allowed in a check expression")
            return
        if isinstance(node, ast.Name):
            self.name(node, local)
        elif isinstance(node, ast.Attribute):
            self.attribute(node, local)
        elif isinstance(node, ast.Call):
            self.call(node, local)
        elif isinstance(node, (ast.ListComp, ast.GeneratorExp)):
            self.comprehension(node, local)
        elif isinstance(node, ast.Constant) and isinstance(node.value, bytes):
            self.fail(node, "CHECK-FORBIDDEN", "bytes literals are not allowed in a check expression")
        else:
            for child in ast.iter_child_nodes(node):
                self.visit(child, local)

    def name(self, node: ast.Name, local: frozenset[str]) -> None:
        if node.id.startswith("__"):
            self.fail(node, "CHECK-FORBIDDEN", f"dunder name '{node.id}' is not allowed")
        elif node.id in local:
            return
        elif node.id in self.scope.unavailable:
            self.fail(node, "CHECK-SCOPE", f"'{node.id}' {self.scope.unavailable[node.id]}")
        elif node.id not in self.scope.known():
            hint = did_you_mean(node.id, self.scope.known() | local)
            self.fail(node, "CHECK-UNKNOWN-NAME", f"name '{node.id}' is not declared by the binding{hint}")

    def attribute(self, node: ast.Attribute, local: frozenset[str]) -> None:
        if node.attr.startswith("_"):
            self.fail(node, "CHECK-FORBIDDEN", f"attribute '{node.attr}' is private: only public attributes")
            return
        base = node.value
        allowed = None
        if isinstance(base, ast.Name) and base.id not in local:
            allowed = self.scope.namespaces.get(base.id, self.scope.records.get(base.id))
        if allowed is None:
            self.visit(base, local)
            if not self.problems or self.problems[-1].rule != "CHECK-SCOPE":
                self.fail(
                    node,
                    "CHECK-FORBIDDEN",
                    f"attribute access '.{node.attr}' is only allowed on a declared namespace "
                    f"({', '.join(sorted(self.scope.namespaces)) or 'none'}) or a drawn record",
                )
            return
        assert isinstance(base, ast.Name)
        self.name(base, local)
        if node.attr not in set(allowed):
            hint = did_you_mean(node.attr, allowed)
            self.fail(node, "CHECK-UNKNOWN-ATTRIBUTE", f"'{base.id}' has no attribute '{node.attr}'{hint}")

    def call(self, node: ast.Call, local: frozenset[str]) -> None:
        if not isinstance(node.func, (ast.Name, ast.Attribute)):
            self.fail(
                node, "CHECK-FORBIDDEN", "only declared functions and namespace attributes can be called"
            )
        self.visit(node.func, local)
        for arg in node.args:
            self.visit(arg, local)
        for kw in node.keywords:
            if kw.arg is None:
                self.fail(kw.value, "CHECK-FORBIDDEN", "'**' keyword unpacking is not allowed")
            self.visit(kw.value, local)

    def comprehension(self, node: ast.ListComp | ast.GeneratorExp, local: frozenset[str]) -> None:
        bound = set(local)
        for gen in node.generators:
            if gen.is_async:
                self.fail(gen, "CHECK-FORBIDDEN", "async comprehensions are not allowed")
            self.visit(gen.iter, frozenset(bound))
            targets = (
                [gen.target] if isinstance(gen.target, ast.Name) else getattr(gen.target, "elts", [None])
            )
            for target in targets:
                if not isinstance(target, ast.Name) or target.id.startswith("__"):
                    self.fail(gen.target, "CHECK-FORBIDDEN", "a comprehension target must be plain names")
                    return
                bound.add(target.id)
            for cond in gen.ifs:
                self.visit(cond, frozenset(bound))
        self.visit(node.elt, frozenset(bound))


def compile_expression(expression: str, label: str) -> CodeType:
    """Compile an already-validated expression for :func:`evaluate`."""
    return compile(ast.parse(expression.strip(), mode="eval"), label, "eval")


def evaluate(code: CodeType, names: Mapping[str, object]) -> object:
    """Evaluate compiled check code with ``names`` and no builtins."""
    scope = {**names, "__builtins__": {}}  # globals, so that comprehensions see the names too
    return eval(code, scope)  # the AST whitelist was enforced by the validator
