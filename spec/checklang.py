"""The check language: Python expressions restricted by an AST whitelist.

A falsifier's ``expect``, ``assume`` and ``let`` entries are expressions over

* the variables it draws (``given``) and the names it binds (``let``),
* the names its binding declares (functions and constants), and
* attributes of declared namespaces (``kd.kd_loss``) and of drawn records (``batch.student``).

Everything else is rejected before anything runs: imports, lambdas, assignments, f-strings, starred
arguments, dunder names, attribute access on anything that is not a declared namespace or record.
Comprehensions and generator expressions are allowed; their loop variables are local to them.

Evaluation is bounded (see :class:`Limits`): the integers, strings and sequences a check builds, the items its
comprehensions visit, and the time one expression may take. A check that hits a limit raises
:class:`LimitExceeded` naming the limit. A ``match:`` pattern runs on an engine with a timeout
(:func:`search`), so a catastrophic pattern fails the check instead of hanging it.
"""

from __future__ import annotations

import ast
import difflib
import math
import operator
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import CodeType
from typing import Any

import regex

MAX_EXPRESSION_CHARS = 4000
MAX_NESTING = 50

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
    if len(expression) > MAX_EXPRESSION_CHARS:
        return None, Problem(
            "CHECK-TOO-COMPLEX",
            f"the expression is {len(expression)} characters long, over the limit of {MAX_EXPRESSION_CHARS}: "
            "split it with let",
            1,
        )
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        return None, Problem("CHECK-SYNTAX", f"the expression does not parse: {exc.msg}", exc.offset or 1)
    except (RecursionError, MemoryError):
        tree = None
    if tree is None or _depth(tree) > MAX_NESTING:
        return None, Problem(
            "CHECK-TOO-COMPLEX",
            f"the expression nests deeper than {MAX_NESTING} levels: split it with let",
            1,
        )
    return tree, None


def _depth(tree: ast.AST) -> int:
    """The nesting depth of ``tree``, walked without recursion."""
    deepest = 0
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth <= MAX_NESTING:
            stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


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


@dataclass(frozen=True)
class Limits:
    """What one evaluation of a check expression may build and how long it may run."""

    seconds: float = 60.0  # wall time of one example (its assume, let and expect together)
    int_bits: int = 100_000  # the largest integer an operator may produce (about 30,000 digits)
    items: int = 10_000_000  # the longest string, list, tuple or range an operator or call may produce
    steps: int = 10_000_000  # the items all comprehensions of one expression may visit together


LIMITS = Limits()


class LimitExceeded(RuntimeError):
    """A check went past one of its :class:`Limits`; the message names the limit."""


class _Guard:
    """The functions the compiled code calls around every operator, call and comprehension."""

    def __init__(self, limits: Limits, deadline: float | None = None) -> None:
        self.limits = limits
        self.deadline = time.monotonic() + limits.seconds if deadline is None else deadline
        self.steps = 0

    def clock(self) -> None:
        if time.monotonic() > self.deadline:
            raise LimitExceeded(_time_message(self.limits))

    def size(self, value: Any) -> Any:
        self.clock()
        if isinstance(value, int) and not isinstance(value, bool):
            if value.bit_length() > self.limits.int_bits:
                raise LimitExceeded(f"the check built an integer over the limit of {self.limits.int_bits} bits")
        elif isinstance(value, (str, bytes, list, tuple, dict, range)):
            if len(value) > self.limits.items:
                raise LimitExceeded(
                    f"the check built a {type(value).__name__} of {len(value)} items, over the limit of "
                    f"{self.limits.items}"
                )
        return value

    def binop(self, op: str, left: Any, right: Any) -> Any:
        self.clock()
        if op == "Pow" and _is_int(left) and _is_int(right) and right > 0 and abs(left) > 1:
            if right * math.log2(abs(left)) > self.limits.int_bits:
                raise LimitExceeded(f"the check's power would build an integer over {self.limits.int_bits} bits")
        if op == "Mult":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, bytes, list, tuple)) and _is_int(times):
                    if len(seq) * times > self.limits.items:
                        raise LimitExceeded(
                            f"the check's repetition would build {len(seq) * times} items, over the limit of "
                            f"{self.limits.items}"
                        )
            if _is_int(left) and _is_int(right) and left.bit_length() + right.bit_length() > self.limits.int_bits:
                raise LimitExceeded(f"the check's product would build an integer over {self.limits.int_bits} bits")
        if op == "Mod" and isinstance(left, (str, bytes)):
            raise LimitExceeded("%-formatting of strings is not part of the check language")
        return self.size(_BINOPS[op](left, right))

    def iterate(self, iterable: Any) -> Iterator[Any]:
        for item in iterable:
            self.steps += 1
            if self.steps > self.limits.steps:
                raise LimitExceeded(
                    f"the check's comprehensions visited more than {self.limits.steps} items, over the limit"
                )
            if self.steps % 1024 == 0:
                self.clock()
            yield item


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_BINOPS: dict[str, Callable[[Any, Any], Any]] = {
    "Add": operator.add,
    "Sub": operator.sub,
    "Mult": operator.mul,
    "Div": operator.truediv,
    "FloorDiv": operator.floordiv,
    "Mod": operator.mod,
    "Pow": operator.pow,
    "MatMult": operator.matmul,
}


class _Bound(ast.NodeTransformer):
    """Routes every operator, call result and comprehension of a validated expression through the guard.

    The guard's names start with ``__``, which no check may write, so a contract cannot reach or replace them.
    """

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        return _guard_call("binop", [ast.Constant(type(node.op).__name__), node.left, node.right], node)

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        return _guard_call("size", [node], node)

    def visit_comprehension(self, node: ast.comprehension) -> ast.AST:
        self.generic_visit(node)
        node.iter = _guard_call("iterate", [node.iter], node.iter)
        return node


def _guard_call(method: str, args: list[ast.expr], where: ast.AST) -> ast.Call:
    func = ast.Attribute(ast.Name("__guard__", ast.Load()), method, ast.Load())
    return ast.copy_location(ast.Call(func, args, []), where)


def compile_expression(expression: str, label: str) -> CodeType:
    """Compile an already-validated expression for :func:`evaluate`, with every operator, call and
    comprehension bounded."""
    tree = _Bound().visit(ast.parse(expression.strip(), mode="eval"))
    return compile(ast.fix_missing_locations(tree), label, "eval")


def deadline(limits: Limits | None = None) -> float:
    """The ``time.monotonic()`` by which one example must finish: pass it to every :func:`evaluate` of the
    example (its assume, let and expect entries share one time limit)."""
    return time.monotonic() + (limits or LIMITS).seconds


def evaluate(
    code: CodeType, names: Mapping[str, object], limits: Limits | None = None, until: float | None = None
) -> object:
    """Evaluate compiled check code with ``names``, no builtins, and :class:`Limits`; with ``until`` (from
    :func:`deadline`) the time limit is that of the whole example, else of this expression alone."""
    guard = _Guard(limits or LIMITS, until)
    scope = {**names, "__builtins__": {}, "__guard__": guard}  # globals, so that comprehensions see them too
    guard.clock()
    with _alarm(guard.deadline - time.monotonic(), guard.limits):
        return eval(code, scope)  # the AST whitelist was enforced by the validator


def _time_message(limits: Limits) -> str:
    return f"the check ran past its time limit of {limits.seconds:g} s per example"


@contextmanager
def _alarm(seconds: float, limits: Limits) -> Iterator[None]:
    """A backstop for time spent inside the binding's own Python code, which the guard does not see: on the
    main thread of a Unix process, SIGALRM raises :class:`LimitExceeded` once ``seconds`` have passed."""
    usable = (
        hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
        and signal.getitimer(signal.ITIMER_REAL)[0] == 0  # never take over a timer someone else set
    )
    if not usable:
        yield
        return

    def expired(signum: int, frame: Any) -> None:
        raise LimitExceeded(_time_message(limits))

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def search(pattern: str, text: str, seconds: float = 1.0) -> bool:
    """Whether ``pattern`` matches somewhere in ``text``, on an engine that gives up after ``seconds``
    (a pattern that backtracks catastrophically raises :class:`LimitExceeded` instead of hanging)."""
    try:
        return regex.search(pattern, text, timeout=seconds) is not None
    except TimeoutError:
        raise LimitExceeded(
            f"the match pattern {pattern!r} ran past its time limit of {seconds:g} s (catastrophic backtracking?): "
            "simplify it"
        ) from None


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` is not a valid ``match:`` regular expression, or None."""
    try:
        regex.compile(pattern)
    except (regex.error, RecursionError, OverflowError, ValueError) as exc:
        return str(exc)
    return None
