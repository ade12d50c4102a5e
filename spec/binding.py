"""The binding: the one place a domain's vocabulary enters the harness.

Contracts name a binding in ``metadata.binding`` (for example ``bindings.kd``). The name is looked up in a
registry, never imported as a module: a contract is only data, so it can choose among the bindings the
operator installed, and nothing else. A binding is registered as an entry point in the group
``kd_contracts.bindings`` (``bindings.kd = "bindings.kd:BINDING"`` in ``pyproject.toml``); the project's own
bindings are also listed in :data:`BUILTINS`, for a source tree that was never installed; and an operator can
register more for one run with ``KD_CONTRACTS_BINDINGS=name=package.module:attribute[,...]`` (their own code,
like ``--backend package.module:attribute``). Any other name is an error that lists the registered ones.

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
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from importlib.metadata import entry_points
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


GROUP = "kd_contracts.bindings"
"""The entry-point group bindings are registered in."""

BUILTINS: dict[str, str] = {"bindings.kd": "bindings.kd:BINDING"}
"""The project's own bindings and their targets (as ``pyproject.toml`` registers them), used when the
installed metadata does not list them; an installed entry point of the same name wins."""

ENVIRONMENT = "KD_CONTRACTS_BINDINGS"
"""Extra bindings the operator registers for one run: ``name=package.module:attribute``, comma-separated."""

_TARGET = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


class BindingError(Exception):
    """The binding named by a contract cannot be used; the message says why."""


def registered() -> dict[str, str]:
    """Every registered binding name -> its ``package.module:attribute`` target."""
    found = dict(BUILTINS)
    try:
        found.update({ep.name: ep.value for ep in entry_points(group=GROUP)})
    except Exception:  # broken metadata of some other distribution: the built-ins still work
        pass
    for item in filter(None, (part.strip() for part in os.environ.get(ENVIRONMENT, "").split(","))):
        name, sep, target = item.partition("=")
        if not sep or not _TARGET.match(target.strip()):
            raise BindingError(
                f"{ENVIRONMENT}: {item!r} is not name=package.module:attribute (e.g. "
                "my_binding=my_package.binding:BINDING)"
            )
        found[name.strip()] = target.strip()
    return found


def load_binding(name: str) -> Binding:
    """The registered binding called ``name``; :class:`BindingError` for any other name."""
    targets = registered()
    if not isinstance(name, str) or name not in targets:
        raise BindingError(
            f"binding {str(name)[:80]!r} is not registered: the registered bindings are "
            f"{', '.join(sorted(targets))} (register one as an entry point in the group {GROUP!r})"
        )
    module_name, _, attribute = targets[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any failure while importing the module is reported, not raised raw
        raise BindingError(
            f"binding {name!r}: module '{module_name}' cannot be imported: {type(exc).__name__}: {exc}"
        ) from None
    binding = getattr(module, attribute, None)
    if not isinstance(binding, Binding):
        raise BindingError(f"binding {name!r}: {targets[name]} is not a spec.binding.Binding")
    return binding
