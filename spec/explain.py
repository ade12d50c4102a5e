"""Explaining a false expectation: which conjunct of an ``and`` chain failed, the values on each side, and
whether they differ by a simple factor (``actual = T^2 x expected``).

Everything here runs once, when a failure is reported, on the values the check actually used.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from spec.checklang import compile_expression, evaluate

Describe = Callable[[Any], str]


def conjuncts(expect: str) -> list[str]:
    """The top-level ``and`` operands of ``expect`` (the expression itself when it is not a chain)."""
    tree = ast.parse(expect.strip(), mode="eval").body
    if isinstance(tree, ast.BoolOp) and isinstance(tree.op, ast.And):
        return [ast.unparse(v) for v in tree.values]
    return [ast.unparse(tree)]


def _sides(expr: str) -> list[tuple[str, str]]:
    """``(role, source)`` of the two sides a conjunct compares: the first two positional arguments of a
    call (``close(actual, expected, tol)``), or the two operands of a single comparison (``a < b``)."""
    node = ast.parse(expr, mode="eval").body
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        node = node.operand
    if isinstance(node, ast.Call) and len(node.args) >= 2:
        return [("actual", ast.unparse(node.args[0])), ("expected", ast.unparse(node.args[1]))]
    if isinstance(node, ast.Compare) and len(node.ops) == 1:
        return [("left", ast.unparse(node.left)), ("right", ast.unparse(node.comparators[0]))]
    return []


def _truth(value: Any) -> bool:
    size = getattr(value, "size", None)
    if size is not None and size != 1 and hasattr(value, "all"):
        return bool(value.all())
    return bool(value)


def false_conjunct(expect: str, env: Mapping[str, Any], describe: Describe,
                   factors: Mapping[str, float] | None = None) -> list[str]:
    """Lines saying which conjunct of ``expect`` is false in ``env``, what it measured and the values on
    each side. Empty when no single conjunct can be blamed (each is true on its own)."""
    parts = conjuncts(expect)
    for i, part in enumerate(parts, start=1):
        try:
            value = evaluate(compile_expression(part, "<conjunct>"), env)
        except Exception as exc:  # the whole expectation already ran; a part failing alone is unusual
            return [f"conjunct {i} of {len(parts)} raised {type(exc).__name__}: {exc}: `{part}`"]
        if _truth(value):
            continue
        where = f"conjunct {i} of {len(parts)}" if len(parts) > 1 else "the expectation"
        lines = [f"{where} is false: `{part}`", f"  it gave: {describe(value)}"]
        values = {}
        for role, source in _sides(part):
            try:
                values[role] = evaluate(compile_expression(source, "<side>"), env)
            except Exception:
                continue
            lines.append(f"  {role} `{source}` = {describe(values[role])}")
        if len(values) == 2:
            first, second = values.values()
            lines.extend(f"  {line}" for line in factor_lines(first, second, factors or {}))
        return lines
    return []


def constant_ratio(actual: Any, expected: Any, rtol: float = 1e-3) -> float | None:
    """``k`` when ``actual = k * expected`` elementwise (within ``rtol``) over the entries where both are
    finite and ``expected`` is not tiny; ``None`` when there is no such single factor."""
    try:
        a = np.asarray(actual, dtype=np.float64)
        e = np.asarray(expected, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if a.shape != e.shape or a.size == 0:
        return None
    keep = np.isfinite(a) & np.isfinite(e) & (np.abs(e) > 1e-12)
    if not keep.any():
        return None
    ratios = a[keep] / e[keep]
    k = float(np.median(ratios))
    if k == 0 or not math.isfinite(k) or np.max(np.abs(ratios - k)) > rtol * abs(k):
        return None
    # the zeros of expected must be zeros of actual too, else no single factor maps one onto the other
    small = np.isfinite(e) & (np.abs(e) <= 1e-12)
    if small.any() and np.max(np.abs(a[small])) > 1e-9:
        return None
    return k


def factor_lines(actual: Any, expected: Any, factors: Mapping[str, float]) -> list[str]:
    """``actual = 4 x expected, which is T^2 (T = 2)`` when one side is a simple multiple of the other."""
    k = constant_ratio(actual, expected)
    if k is None or abs(k - 1) <= 1e-6:
        return []
    named = [
        f"{name}" if abs(k - value) <= 1e-3 * abs(value) else f"1/{name}"
        for name, value in factors.items()
        if value and math.isfinite(value) and value != 1
        and (abs(k - value) <= 1e-3 * abs(value) or abs(k * value - 1) <= 1e-3)
    ]
    text = f"actual = {k:.6g} x expected everywhere"
    if named:
        known = ", ".join(f"{n} = {factors[n]:g}" for n in factors if n in {x.removeprefix("1/") for x in named})
        text += f": the factor is {' or '.join(named)} ({known})"
    return [text]
