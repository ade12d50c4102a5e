"""The binding: the one place a domain's vocabulary enters the harness.

Contracts name a binding module in ``metadata.binding`` (for example ``bindings.kd``); the module holds a
:class:`Binding` called ``BINDING``. The harness imports it by name and never imports domain code itself.

A binding declares

* ``names``: functions and constants a check may use (``close``, ``finite_difference_gradient``, ...);
* ``namespaces``: objects whose listed attributes a check may use (``ref.kd_loss``);
* ``subject_namespaces``: the namespaces that stand for the backend under test (``kd``); a per-backend
  check gets them from :meth:`BackendCatalog.namespaces`, a once-run check cannot use them;
* ``strategies``: how a check's ``given`` variables are drawn (each builds a hypothesis strategy);
* ``errors``: the exception types a check may name in ``raises``;
* ``backends``: a :class:`BackendCatalog`, how backends are found, selected and put under test;
* ``factors`` (optional): the simple factors a failure report looks for between actual and expected
  (``{"T": 2.0, "T^2": 4.0, "V": 8}``), computed from the values a failing check used.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol


@dataclass(frozen=True)
class Strategy:
    """A named way to draw a value. ``build(**params)`` returns a hypothesis strategy; ``fields`` lists the
    attributes of the drawn value that a check may read (empty for a plain value)."""

    build: Callable[..., Any]
    fields: tuple[str, ...] = ()
    doc: str = ""

    @cached_property
    def params(self) -> dict[str, inspect.Parameter]:
        return dict(inspect.signature(self.build).parameters)


@dataclass(frozen=True)
class Target:
    """One backend put under test: its label (``torch``), the dtypes it supports, and the object."""

    label: str
    dtypes: tuple[str, ...]
    backend: Any


class BackendCatalog(Protocol):
    """How a binding finds, selects and presents backends."""

    default: str

    def select(self, spec: str) -> tuple[list[Target], list[tuple[str, str]]]:
        """Resolve a comma-separated ``--backend`` value into targets and (name, reason) left out.
        Raises ``LookupError`` with a sentence for unknown names or explicitly named backends that
        cannot run here."""
        ...

    def namespaces(self, target: Target, dtype: str) -> dict[str, Any]:
        """The subject namespaces (``{"kd": ...}``) for ``target`` computing in ``dtype``."""
        ...


@dataclass(frozen=True)
class Binding:
    name: str
    names: Mapping[str, Any]
    namespaces: Mapping[str, Any]
    namespace_attributes: Mapping[str, tuple[str, ...]]
    strategies: Mapping[str, Strategy]
    errors: Mapping[str, type[BaseException]]
    backends: BackendCatalog
    subject_namespaces: tuple[str, ...] = ("kd",)
    dtypes: tuple[str, ...] = ("float64", "float32", "bfloat16")
    default_dtype: str = "float64"
    factors: Callable[[Mapping[str, Any]], Mapping[str, float]] | None = None


_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class BindingError(Exception):
    """The binding named by a contract cannot be used; the message says why."""


def load_binding(module_name: str) -> Binding:
    """Import ``module_name`` and return its ``BINDING``."""
    if not isinstance(module_name, str) or not _MODULE.match(module_name):  # '.kd' would be a relative import
        raise BindingError(f"binding {module_name!r} is not a dotted module path such as bindings.kd")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BindingError(f"binding module '{module_name}' cannot be imported: {exc}") from None
    except Exception as exc:  # any failure while importing the module is reported, not raised raw
        raise BindingError(
            f"binding module '{module_name}' cannot be imported: {type(exc).__name__}: {exc}"
        ) from None
    binding = getattr(module, "BINDING", None)
    if not isinstance(binding, Binding):
        raise BindingError(f"binding module '{module_name}' has no BINDING of type spec.binding.Binding")
    return binding
