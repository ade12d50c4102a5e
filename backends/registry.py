"""Finding, loading and selecting backends.

Backends are plugins (DESIGN.md principle 7): the built-ins are registered exactly as a third party
registers one, as entry points in the group ``kd_contracts.backends`` (see ``pyproject.toml``)::

    [project.entry-points."kd_contracts.backends"]
    mybackend = "my_package.kd_port:BACKEND"

A backend that is not installed as a package is named directly as ``package.module:attribute`` (the module
must be importable, e.g. from the repository root, as it is under pytest).

What the attribute may be
    The attribute (of an entry point or a ``module:attribute``) is either a backend object (anything that
    satisfies :class:`backends.protocol.Backend`) or a zero-argument factory that returns one: a class
    (always instantiated) or another callable that does not itself satisfy the protocol. ``get`` calls
    the factory once and caches the object, so one name always gives the same object.

Laziness
    ``known()`` reads entry-point metadata only; ``import backends`` and ``known()`` import neither
    torch nor cupy. ``get`` imports the backend's module, and the built-in modules import their array
    library only inside methods, so loading them is cheap even where the library is missing.

API: :func:`known`, :func:`get`, :func:`select` (returning a :class:`Selection`), :class:`BackendError`.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from backends.protocol import Availability, Backend, BackendError, conformance_problems

__all__ = ["BUILTINS", "GROUP", "BackendError", "Selection", "clear_cache", "get", "known", "select"]

GROUP = "kd_contracts.backends"
"""The entry-point group backends are registered in."""

BUILTINS: dict[str, str] = {
    "numpy": "backends.numpy_backend:BACKEND",
    "torch": "backends.torch_backend:TORCH_CPU",
    "torch-cuda": "backends.torch_backend:TORCH_CUDA",
    "cupy": "backends.cupy_backend:BACKEND",
    "triton": "backends.triton_backend:BACKEND",
}
"""The built-in backends in their listing order, with the targets ``pyproject.toml`` registers. They are
used only when the distribution's metadata is absent (a source tree that was never installed); an
installed entry point of the same name wins."""

SPECIAL = ("all", "cuda")
"""Words ``select`` expands: every backend that loads here, or every backend whose device is cuda."""

_TARGET = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")

_cache: dict[str, Any] = {}


def _registered() -> dict[str, str]:
    """Entry-point name -> ``module:attribute`` target, built-ins first, then third parties by name."""
    found: dict[str, str] = {}
    for ep in entry_points(group=GROUP):
        found.setdefault(ep.name, ep.value)
    ordered = {name: found.pop(name, target) for name, target in BUILTINS.items()}
    ordered.update(sorted(found.items()))
    return ordered


def known() -> list[str]:
    """Every registered backend name: the built-ins (numpy, torch, torch-cuda, cupy), then others sorted.

    Loads nothing: no backend module, torch or cupy is imported.
    """
    return list(_registered())


def _form_hint() -> str:
    return "a backend not installed as a package can be named as package.module:attribute"


def _unknown(name: str) -> BackendError:
    return BackendError(
        f"unknown backend {name!r}: known backends are {', '.join(known())} "
        f"(or 'all', or 'cuda' for every CUDA backend); {_form_hint()}"
    )


def _load_target(target: str, label: str) -> Any:
    """Import ``module:attribute`` and return the backend it names, checked against the protocol."""
    if not _TARGET.match(target):
        raise BackendError(
            f"backend {label!r} is not a valid package.module:attribute target ({target!r}); {_form_hint()}"
        )
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise _not_found(label, module_name, error) from error
    except Exception as error:  # any import-time failure of a plugin is reported, not raised raw
        raise BackendError(
            f"backend {label!r}: module {module_name!r} cannot be imported: {type(error).__name__}: {error}"
        ) from error
    obj: Any = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise BackendError(f"backend {label!r}: module {module_name!r} has no attribute {attribute!r}")
        obj = getattr(obj, part)
    if isinstance(obj, type) or (callable(obj) and conformance_problems(obj)):
        try:
            obj = obj()
        except Exception as error:
            raise BackendError(
                f"backend {label!r}: the factory {module_name}:{attribute} failed: {type(error).__name__}: {error}"
            ) from error
    problems = conformance_problems(obj)
    if problems:
        raise BackendError(
            f"backend {label!r} ({module_name}:{attribute}) does not satisfy the backend protocol: "
            f"{'; '.join(problems)} (the members are listed in backends/protocol.py)"
        )
    return obj


class MissingLibrary(BackendError):
    """A backend's module needs a library that is not installed here: it cannot run here, it is not broken."""


def _not_found(label: str, module_name: str, error: ModuleNotFoundError) -> BackendError:
    missing = error.name or ""
    own = module_name.split(".")[0]
    if missing and missing.split(".")[0] != own and not module_name.startswith(f"{missing}."):
        return MissingLibrary(
            f"backend {label!r}: module {module_name!r} needs {missing!r}, which is not installed here"
        )
    return BackendError(
        f"backend {label!r}: module {module_name!r} cannot be imported ({error}): run from the folder that "
        f"holds {own!r} with `python -m pytest` or `python -m spec` (plain `pytest` does not put the current "
        f"folder on sys.path), install your port (`pip install -e .`), or add its folder to PYTHONPATH"
    )


def get(name: str) -> Backend:
    """Load the backend called ``name``: an entry-point name or ``package.module:attribute``.

    Raises :class:`BackendError` for an unknown name (listing the known ones), a module that cannot be
    imported, a missing attribute, or an object that lacks protocol members (naming them). Does not check
    :meth:`Backend.available`; :func:`select` does.
    """
    if not isinstance(name, str) or not name.strip():
        raise BackendError(f"backend name must be a non-empty string, got {name!r}; known: {', '.join(known())}")
    name = name.strip()
    if name in _cache:
        return _cache[name]
    if ":" in name:
        backend = _load_target(name, name)
    else:
        registered = _registered()
        if name not in registered:
            raise _unknown(name)
        backend = _load_target(registered[name], name)
    _cache[name] = backend
    return backend


def clear_cache() -> None:
    """Forget loaded backends, so the next :func:`get` loads (and constructs) them again."""
    _cache.clear()


def _availability(backend: Any) -> Availability:
    """``backend.available()``; an ill-typed answer is read as a truth value. A raising ``available()`` is
    a broken backend (BackendError), not one that cannot run here."""
    try:
        answer = backend.available()
    except Exception as error:
        raise BackendError(
            f"backend {getattr(backend, 'name', backend)!r}: available() raised {type(error).__name__}: {error}"
        ) from error
    if isinstance(answer, Availability):
        return answer
    return Availability(bool(answer), "" if answer else "available() returned a false value")


@dataclass
class Selection:
    """The outcome of :func:`select`: loaded, available backends (deduplicated, in the order asked for)
    and the ``(name, reason)`` of every backend ``all`` left out."""

    backends: list[Any] = field(default_factory=list)
    left_out: list[tuple[str, str]] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        """The selected backends' names."""
        return [b.name for b in self.backends]

    def _add(self, backend: Any) -> None:
        if not any(backend is b for b in self.backends):
            self.backends.append(backend)


def _require(name: str, backend: Any, why: str = "") -> Any:
    available = _availability(backend)
    if not available:
        raise BackendError(f"backend {name!r}{why} cannot run here: {available.reason}")
    return backend


def select(spec: str) -> Selection:
    """Resolve a comma-separated backend spec, e.g. ``"numpy,torch"``, ``"cuda"``, ``"all"``.

    * a name or ``module:attribute``: that backend; it must load and be available, else BackendError;
    * ``cuda``: every known backend whose device is ``"cuda"``, each required to be available;
    * ``all``: every known backend that loads and is available here. One that cannot run here (its
      ``available()`` is false, or its module needs a library that is not installed) goes to ``left_out``
      with the reason; a registered backend that is broken (its module raises on import, it does not
      satisfy the protocol, ``available()`` raises) raises BackendError naming every broken one: a broken
      backend fails the run, it is not left out.

    Duplicates (the same object reached twice) are kept once, at their first position.
    """
    if not isinstance(spec, str):
        raise BackendError(f"backend spec must be a string, got {spec!r}")
    tokens = [token.strip() for token in spec.split(",")]
    if not spec.strip() or any(not token for token in tokens):
        raise BackendError(
            f"backend spec {spec!r} has an empty name: give comma-separated names from "
            f"{', '.join(known())}, 'all' or 'cuda'"
        )
    selection = Selection()
    for token in tokens:
        if token == "all":
            broken: list[str] = []
            for name in known():
                try:
                    backend = get(name)
                    available = _availability(backend)
                except MissingLibrary as error:
                    selection.left_out.append((name, str(error)))
                    continue
                except BackendError as error:
                    said = str(error)
                    broken.append(said if f"backend {name!r}" in said else f"backend {name!r}: {said}")
                    continue
                if available:
                    selection._add(backend)
                else:
                    selection.left_out.append((name, available.reason))
            if broken:
                raise BackendError(
                    f"{len(broken)} registered backend(s) are broken, so 'all' cannot vouch for them: "
                    + "; ".join(broken)
                    + " (fix them, uninstall them, or name the backends to check instead of 'all')"
                )
        elif token == "cuda":
            for name in known():
                backend = get(name)
                if backend.device == "cuda":
                    selection._add(_require(name, backend, " (selected by 'cuda')"))
        else:
            selection._add(_require(token, get(token)))
    # A backend that 'all' left out but another token named explicitly would have raised above; one that
    # 'all' left out and nothing else named stays in left_out.
    return selection
