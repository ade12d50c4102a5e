"""Running one falsifier: draw its ``given`` variables, evaluate ``assume``/``let``/``expect``, and on failure
report the falsifier ID, its prediction, its ``if_fails`` diagnosis and the (shrunk) counterexample."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import CodeType
from typing import Any

import hypothesis
from hypothesis import strategies as st

from spec.binding import Binding, Target, load_binding
from spec.checklang import LimitExceeded, compile_expression, deadline, evaluate, search

_bindings: dict[str, Binding] = {}


def binding_named(name: str) -> Binding:
    if name not in _bindings:
        _bindings[name] = load_binding(name)
    return _bindings[name]


class FalsifierFailure(AssertionError):
    """A falsifier found a counterexample: the prediction does not hold."""


@dataclass(frozen=True)
class Subject:
    """What a per-backend falsifier runs against: one backend in one dtype."""

    target: Target
    dtype: str

    @property
    def label(self) -> str:
        return self.target.label if self.dtype == "float64" else f"{self.target.label}-{self.dtype}"


@dataclass(frozen=True)
class Falsifier:
    contract: str
    binding: str
    id: str
    rule: str
    prediction: str
    if_fails: str
    expect: str
    scope: str = "per_backend"
    dtypes: tuple[str, ...] = ("float64",)
    given: Mapping[str, tuple[str, Mapping[str, Any]]] = field(default_factory=dict)
    assume: tuple[str, ...] = ()
    let: tuple[tuple[str, str], ...] = ()
    raises: str | None = None
    match: str | None = None
    tolerance: Mapping[str, float] = field(default_factory=dict)
    max_examples: int | None = None

    @property
    def mark(self) -> Any:
        """A pytest mark carrying this falsifier, which the plugin reads to parametrize the test."""
        import pytest

        return pytest.mark.falsifier(self)

    @cached_property
    def _code(self) -> dict[str, CodeType]:
        code = {
            f"assume[{i}]": compile_expression(e, f"<{self.id} assume>") for i, e in enumerate(self.assume)
        }
        code.update({f"let.{n}": compile_expression(e, f"<{self.id} let {n}>") for n, e in self.let})
        code["expect"] = compile_expression(self.expect, f"<{self.id} expect>")
        return code

    def run(self, subject: Subject | None = None) -> None:
        """Run the check once (no ``given``) or over hypothesis-drawn examples; raise
        :class:`FalsifierFailure` with the full report when the prediction does not hold."""
        __tracebackhide__ = True
        binding = binding_named(self.binding)
        names: dict[str, Any] = {**binding.names, **binding.namespaces}
        dtype = subject.dtype if subject else binding.default_dtype
        if subject is not None:
            names.update(binding.backends.namespaces(subject.target, dtype))
        if self.tolerance:
            names["tol"] = self.tolerance[dtype]
        if not self.given:
            self._once(names, {}, subject)
            return
        drawn = st.fixed_dictionaries(
            {var: binding.strategies[s].build(**dict(kw)) for var, (s, kw) in self.given.items()}
        )
        current = hypothesis.settings()
        limit = (
            current.max_examples
            if self.max_examples is None
            else min(self.max_examples, current.max_examples)
        )

        @hypothesis.settings(current, max_examples=limit)
        @hypothesis.given(drawn)
        def examples(values: dict[str, Any]) -> None:
            __tracebackhide__ = True
            self._once(names, values, subject)

        examples()

    def _once(self, names: dict[str, Any], drawn: dict[str, Any], subject: Subject | None) -> None:
        __tracebackhide__ = True
        env = {**names, **drawn}
        until = deadline()  # one time limit for the whole example
        for i, _ in enumerate(self.assume):
            if not evaluate(self._code[f"assume[{i}]"], env, until=until):
                hypothesis.reject()
        bound: dict[str, Any] = {}
        if self.raises is None:
            try:
                for name, _ in self.let:
                    bound[name] = env[name] = evaluate(self._code[f"let.{name}"], env, until=until)
                outcome = evaluate(self._code["expect"], env, until=until)
            except Exception as exc:
                step = f"let {name}" if len(bound) < len(self.let) else "expect"
                self._fail(f"{step} raised {type(exc).__name__}: {exc}", drawn, bound, subject)
            if not _truth(outcome):
                self._fail(f"the expectation is false: {_describe(outcome)}", drawn, bound, subject)
            return
        binding = binding_named(self.binding)
        wanted = binding.errors[self.raises]
        try:
            for name, _ in self.let:
                bound[name] = env[name] = evaluate(self._code[f"let.{name}"], env, until=until)
            outcome = evaluate(self._code["expect"], env, until=until)
        except wanted as exc:
            try:
                matched = not self.match or search(self.match, str(exc))
            except LimitExceeded as limit:
                self._fail(str(limit), drawn, bound, subject)
            if not matched:
                self._fail(
                    f"raised {type(exc).__name__} as expected, but its message {str(exc)!r} does not "
                    f"match {self.match!r}",
                    drawn,
                    bound,
                    subject,
                )
            return
        except Exception as exc:
            self._fail(
                f"expected {self.raises}, but it raised {type(exc).__name__}: {exc}", drawn, bound, subject
            )
        self._fail(
            f"expected {self.raises}, but nothing was raised (it returned {_describe(outcome)})",
            drawn,
            bound,
            subject,
        )

    def _fail(self, what: str, drawn: dict[str, Any], bound: dict[str, Any], subject: Subject | None) -> None:
        __tracebackhide__ = True
        where = f" on {subject.target.label} ({subject.dtype})" if subject else ""
        lines = [
            f"{self.id} falsified{where}: {what}",
            f"  contract:   {self.contract}",
            f"  rule:       {self.rule}",
            f"  prediction: {self.prediction}",
            f"  if it fails: {self.if_fails}",
            f"  expect:     {' '.join(self.expect.split())}",
        ]
        if self.raises:
            lines.append(f"  raises:     {self.raises}" + (f" matching {self.match!r}" if self.match else ""))
        if "tol" in self.expect or any("tol" in e for _, e in self.let):
            lines.append(f"  tolerance:  {dict(self.tolerance)}")
        if drawn:
            lines.append("  counterexample:")
            lines.extend(f"    {k} = {_describe(v)}" for k, v in drawn.items())
        if bound:
            lines.append("  let:")
            lines.extend(f"    {k} = {_describe(v)}" for k, v in bound.items())
        raise FalsifierFailure("\n".join(lines))


def _truth(value: Any) -> bool:
    size = getattr(value, "size", None)
    if size is not None and size != 1 and hasattr(value, "all"):
        return bool(value.all())
    return bool(value)


def _describe(value: Any, limit: int = 1500) -> str:
    describe = getattr(value, "describe", None)
    text = describe() if callable(describe) else repr(value)
    text = text.replace("\n", "\n      ")
    return text if len(text) <= limit else text[: limit - 20] + " ... (truncated)"
