"""Falsifiers that name a Python test instead of an inline check: ``test: tests/test_pipeline.py::test_x``.

The named test names its falsifier back with a marker, so the link is checked from both ends::

    @pytest.mark.falsifier_id("F-DISTILL-PIPELINE-005")
    def test_stop_is_honoured_after_the_current_step(...): ...

:func:`problems` is what ``spec validate`` uses: it reads the test file's syntax tree (nothing is imported or
run) and says what is missing. :func:`load_test` imports the test for the generated suite, which runs it
under the falsifier's ID; the original is then deselected where it was collected, so it runs once.
"""

from __future__ import annotations

import ast
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spec.checklang import did_you_mean

MARKER = "falsifier_id"


def split(ref: str) -> tuple[str, list[str]]:
    """``tests/test_x.py::Class::test_y`` -> (``tests/test_x.py``, [``Class``, ``test_y``])."""
    path, _, rest = ref.partition("::")
    return path, [p for p in rest.split("::") if p] if rest else []


def _marker_ids(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> list[str]:
    ids = []
    for deco in node.decorator_list:
        if (
            isinstance(deco, ast.Call)
            and isinstance(deco.func, ast.Attribute)
            and deco.func.attr == MARKER
            and deco.args
            and isinstance(deco.args[0], ast.Constant)
            and isinstance(deco.args[0].value, str)
        ):
            ids.append(deco.args[0].value)
    return ids


def problems(root: Path, ref: str, falsifier_id: str) -> list[str]:
    """Why ``ref`` (relative to ``root``) is not a test that names ``falsifier_id`` back; empty when it is."""
    path, parts = split(ref)
    if not path.endswith(".py") or not parts or Path(path).is_absolute() or ".." in Path(path).parts:
        return [f"test '{ref}' is not of the form path/to/test_file.py::test_name (relative to the project root)"]
    file = root / path
    if not file.is_file():
        if installed_copy(root):
            return []  # the project's own tests are not installed: the generated test reports "not run"
        return [f"test '{ref}': there is no file {path} under {root}"]
    try:
        tree = ast.parse(file.read_text("utf-8"), filename=str(file))
    except (SyntaxError, UnicodeDecodeError, OSError) as exc:
        return [f"test '{ref}': {path} cannot be read as Python: {exc}"]
    scope: list[ast.stmt] = tree.body
    node: Any = None
    for part in parts:
        node = next(
            (n for n in scope if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
             and n.name == part),
            None,
        )
        if node is None:
            defined = sorted(n.name for n in scope if isinstance(n, (ast.FunctionDef, ast.ClassDef)))
            return [f"test '{ref}': {path} defines no {part}{did_you_mean(part, defined)}"]
        scope = node.body if isinstance(node, ast.ClassDef) else []
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return [f"test '{ref}' names a class, not a test function"]
    ids = _marker_ids(node)
    if falsifier_id not in ids:
        found = f" (it names {', '.join(ids)})" if ids else ""
        return [
            f"test '{ref}' does not name this falsifier back{found}: decorate it with "
            f'@pytest.mark.{MARKER}("{falsifier_id}")'
        ]
    return []


def installed_copy(root: Path) -> bool:
    """Whether ``root`` is where pip installed the project (spec beside the contracts, no source tree)."""
    return (root / "spec" / "__init__.py").is_file() and not (root / "pyproject.toml").is_file()


def load_test(root: Path, ref: str) -> tuple[Callable[..., Any] | None, str]:
    """Import the test ``ref`` names (its file as a module of the package path under ``root``):
    ``(function, "")``, or ``(None, reason)`` when this installation does not hold it."""
    path, parts = split(ref)
    file = root / path
    if not file.is_file():
        return None, f"{path} is not in this installation (the project's own tests run from a source checkout)"
    module_name = ".".join(Path(path).with_suffix("").parts)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in parts:
        obj = getattr(obj, part)
    if len(parts) > 1:  # a method: pytest would make an instance; so do we
        obj = getattr(getattr(module, parts[0])(), parts[-1])
    return obj, ""


def unavailable(reason: str) -> Callable[[], None]:
    """A test that reports it was not run, and why."""

    def not_available() -> None:
        import pytest

        pytest.skip(f"not run: {reason}")

    return not_available
