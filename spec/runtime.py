"""Running one falsifier: draw its ``given`` variables, evaluate ``assume``/``let``/``expect``, and tell apart
the two ways it can go wrong.

* **Falsified** (:class:`FalsifierFailure`): the check ran and its expectation is false (or a ``raises:``
  check saw nothing raised). The report names the false conjunct, the values on each side and the ``let``
  values the check used.
* **Error** (:class:`FalsifierError`): the code under test (or a harness helper) raised. The report keeps
  the original exception and its traceback, so the port's own ``file:line`` is shown. In a ``raises:``
  check the expected exception is the pass.

Each falsifier x backend x dtype has its own hypothesis database key, so a rerun replays the last failure
first; the last failing example is kept on the exception so the plugin can save it (see :mod:`spec.replay`).
"""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import CodeType
from typing import Any

import hypothesis
from hypothesis import strategies as st

from spec import explain
from spec.binding import Binding, Target, load_binding
from spec.checklang import LimitExceeded, compile_expression, deadline, evaluate, search

_bindings: dict[str, Binding] = {}
_SPEC_DIR = str(Path(__file__).resolve().parent)


def binding_named(name: str) -> Binding:
    if name not in _bindings:
        _bindings[name] = load_binding(name)
    return _bindings[name]


@dataclass
class RunOptions:
    """Session-wide settings the pytest plugin sets: a cap on examples, and a saved example to replay."""

    max_examples: int | None = None
    replay: Mapping[str, Any] | None = None  # {"id", "subject", "drawn"} from spec.replay.load


OPTIONS = RunOptions()


@dataclass(frozen=True)
class Subject:
    """What a per-backend falsifier runs against: one backend in one dtype."""

    target: Target
    dtype: str

    @property
    def label(self) -> str:
        return self.target.label if self.dtype == "float64" else f"{self.target.label}-{self.dtype}"


class Finding:
    """What a failed falsifier reports: shared by :class:`FalsifierFailure` and :class:`FalsifierError`."""

    kind = ""
    falsifier: Falsifier
    subject: Subject | None
    what: str
    drawn: dict[str, Any]
    bound: dict[str, Any]
    env: dict[str, Any]

    def _setup(self, falsifier: Falsifier, subject: Subject | None, what: str, drawn: dict[str, Any],
               bound: dict[str, Any], env: dict[str, Any]) -> None:
        self.falsifier, self.subject, self.what = falsifier, subject, what
        self.drawn, self.bound, self.env = dict(drawn), dict(bound), env

    @property
    def headline(self) -> str:
        where = f" on {self.subject.target.label} ({self.subject.dtype})" if self.subject else ""
        return f"{self.falsifier.id} {self.kind}{where}: {self.what}"

    @cached_property
    def text(self) -> str:
        return "\n".join(self.report_lines())

    def __str__(self) -> str:
        return self.text

    def diagnosis(self) -> list[str]:
        """What went wrong beyond the headline (the false conjunct, or the traceback)."""
        return []

    def report_lines(self) -> list[str]:
        f = self.falsifier
        lines = [
            self.headline,
            f"  contract:   {f.contract}",
            f"  rule:       {f.rule}",
            f"  prediction: {f.prediction}",
            f"  if it fails: {f.if_fails}",
        ]
        if f.test:
            lines.append(f"  test:       {f.test}")
        else:
            lines.append(f"  expect:     {' '.join(f.expect.split())}")
        if f.raises:
            lines.append(f"  raises:     {f.raises}" + (f" matching {f.match!r}" if f.match else ""))
        if f.tolerance and ("tol" in f.expect or any("tol" in e for _, e in f.let)):
            lines.append(f"  tolerance:  {dict(f.tolerance)}")
        lines.extend(self.diagnosis())
        if self.drawn:
            lines.append("  counterexample:")
            lines.extend(f"    {k} = {describe(v)}" for k, v in self.drawn.items())
        if self.bound:
            lines.append("  let (the values the check used):")
            lines.extend(f"    {k} = {describe(v)}" for k, v in self.bound.items())
        return lines


class FalsifierFailure(Finding, AssertionError):
    """A falsifier found a counterexample: the prediction does not hold."""

    kind = "falsified"

    def __init__(self, falsifier: Falsifier, subject: Subject | None, what: str, drawn: dict[str, Any],
                 bound: dict[str, Any], env: dict[str, Any], explain_false: bool = False) -> None:
        super().__init__(what)
        self._setup(falsifier, subject, what, drawn, bound, env)
        self.explain_false = explain_false

    def diagnosis(self) -> list[str]:
        if self.falsifier.test and self.__cause__ is not None:
            return ["  where:"] + [f"    {line}" for line in origin(self.__cause__)]
        if not self.explain_false:
            return []
        binding = binding_named(self.falsifier.binding)
        factors = binding.factors(self.env) if binding.factors else {}
        try:
            found = explain.false_conjunct(self.falsifier.expect, self.env, describe, factors)
        except Exception as exc:  # explaining must never hide the failure itself
            found = [f"(could not break the expectation down: {type(exc).__name__}: {exc})"]
        return [f"  why:        {found[0]}", *(f"    {line}" for line in found[1:])] if found else []


class FalsifierError(Finding, Exception):
    """The code under test, or a helper the check called, raised: not a verdict on the prediction."""

    kind = "ERROR"

    def __init__(self, falsifier: Falsifier, subject: Subject | None, what: str, drawn: dict[str, Any],
                 bound: dict[str, Any], env: dict[str, Any]) -> None:
        super().__init__(what)
        self._setup(falsifier, subject, what, drawn, bound, env)

    def diagnosis(self) -> list[str]:
        cause = self.__cause__
        if cause is None:
            return []
        return [
            "  this is an error, not a falsification: the prediction was never tested. Where it raised "
            "(most recent call last):",
            *(f"    {line}" for line in origin(cause)),
        ]


def origin(exc: BaseException) -> list[str]:
    """The traceback of ``exc`` without the harness's own frames: the port's (or the test's) file:line."""
    frames = [fs for fs in traceback.extract_tb(exc.__traceback__) if not fs.filename.startswith(_SPEC_DIR)]
    lines: list[str] = []
    for fs in frames:
        lines.append(f'File "{fs.filename}", line {fs.lineno}, in {fs.name}')
        if fs.line:
            lines.append(f"  {fs.line}")
    lines.extend(traceback.format_exception_only(type(exc), exc)[-1].rstrip().splitlines())
    return lines


@dataclass(frozen=True)
class Falsifier:
    contract: str
    binding: str
    id: str
    rule: str
    prediction: str
    if_fails: str
    expect: str = ""
    scope: str = "per_backend"
    dtypes: tuple[str, ...] = ("float64",)
    given: Mapping[str, tuple[str, Mapping[str, Any]]] = field(default_factory=dict)
    assume: tuple[str, ...] = ()
    let: tuple[tuple[str, str], ...] = ()
    raises: str | None = None
    match: str | None = None
    tolerance: Mapping[str, float] = field(default_factory=dict)
    max_examples: int | None = None
    requires: tuple[str, ...] = ()
    test: str | None = None

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

    def database_key(self, subject: Subject | None) -> bytes:
        """One hypothesis database key per falsifier x backend x dtype."""
        return f"kd-contracts:{self.contract}:{self.id}:{subject.label if subject else 'once'}".encode()

    def run(self, subject: Subject | None = None) -> None:
        """Run the check once (no ``given``) or over hypothesis-drawn examples; raise
        :class:`FalsifierFailure` or :class:`FalsifierError` with the full report when it does not pass."""
        __tracebackhide__ = True
        binding = binding_named(self.binding)
        names: dict[str, Any] = {**binding.names, **binding.namespaces}
        dtype = subject.dtype if subject else binding.default_dtype
        if subject is not None:
            names.update(binding.backends.namespaces(subject.target, dtype))
        if self.tolerance:
            names["tol"] = self.tolerance[dtype]
        replay = OPTIONS.replay
        if replay is not None and replay["id"] == self.id:
            self._once(names, dict(replay["drawn"]), subject)
            return
        if not self.given:
            self._once(names, {}, subject)
            return
        drawn = st.fixed_dictionaries(
            {var: binding.strategies[s].build(**dict(kw)) for var, (s, kw) in self.given.items()}
        )
        current = hypothesis.settings()
        limit = OPTIONS.max_examples or current.max_examples
        if self.max_examples is not None:
            limit = min(limit, self.max_examples)

        @hypothesis.settings(current, max_examples=limit, report_multiple_bugs=False)
        @hypothesis.given(drawn)
        def examples(values: dict[str, Any]) -> None:
            __tracebackhide__ = True
            self._once(names, values, subject)

        examples.hypothesis.inner_test._hypothesis_internal_add_digest = self.database_key(subject)  # type: ignore[attr-defined]
        examples()

    def _once(self, names: dict[str, Any], drawn: dict[str, Any], subject: Subject | None) -> None:
        __tracebackhide__ = True
        env = {**names, **drawn}
        until = deadline()  # one time limit for the whole example
        bound: dict[str, Any] = {}

        def error(what: str, exc: BaseException) -> FalsifierError:
            found = FalsifierError(self, subject, what, drawn, bound, env)
            found.__cause__ = exc
            return found

        for i, expr in enumerate(self.assume):
            try:
                kept = evaluate(self._code[f"assume[{i}]"], env, until=until)
            except Exception as exc:
                raise error(f"assume `{expr}` raised {type(exc).__name__}: {exc}", exc) from exc
            if not kept:
                hypothesis.reject()
        step = "expect"
        wanted: tuple[type[BaseException], ...] = ()
        if self.raises is not None:
            wanted = (binding_named(self.binding).errors[self.raises],)
        try:
            for name, _ in self.let:
                step = f"let {name}"
                bound[name] = env[name] = evaluate(self._code[f"let.{name}"], env, until=until)
            step = "expect"
            outcome = evaluate(self._code["expect"], env, until=until)
        except wanted as exc:
            try:
                matched = not self.match or search(self.match, str(exc))
            except LimitExceeded as limit:
                raise error(f"match {self.match!r}: {limit}", limit) from limit
            if not matched:
                raise FalsifierFailure(
                    self, subject,
                    f"raised {type(exc).__name__} as expected, but its message {str(exc)!r} does not match "
                    f"{self.match!r}",
                    drawn, bound, env,
                ) from exc
            return
        except Exception as exc:
            if self.raises is not None:
                what = f"expected {self.raises}, but {step} raised {type(exc).__name__}: {exc}"
            else:
                what = f"{step} raised {type(exc).__name__}: {exc}"
            raise error(what, exc) from exc
        if self.raises is not None:
            raise FalsifierFailure(
                self, subject, f"expected {self.raises}, but nothing was raised (it returned {describe(outcome)})",
                drawn, bound, env,
            )
        if not explain._truth(outcome):
            raise FalsifierFailure(self, subject, "the expectation is false", drawn, bound, env, explain_false=True)

    def named_test(self, anchor: str) -> Callable[..., None]:
        """The pytest test function a ``test:`` falsifier names, wrapped so that it runs under this
        falsifier's ID and reports like an inline check. ``anchor`` is the generated module's ``__file__``;
        the test's path is relative to the folder above the generated suite (the project root)."""
        from spec.named_tests import load_test, unavailable

        assert self.test is not None
        target, reason = load_test(Path(anchor).resolve().parent.parent, self.test)
        falsifier = self

        if target is None:
            return self.mark(unavailable(reason))

        @functools.wraps(target)
        def wrapper(*args: Any, **kwargs: Any) -> None:
            __tracebackhide__ = True
            try:
                target(*args, **kwargs)
            except AssertionError as exc:
                message = " ".join(str(exc).split("\n")[0].split()) or "an assertion failed"
                raise FalsifierFailure(falsifier, None, f"{falsifier.test} failed: {message}", {}, {},
                                       {}) from exc
            except Exception as exc:
                found = FalsifierError(falsifier, None, f"{falsifier.test} raised {type(exc).__name__}: {exc}",
                                       {}, {}, {})
                raise found from exc

        return self.mark(wrapper)


def describe(value: Any, limit: int = 1500) -> str:
    describe_ = getattr(value, "describe", None)
    text = describe_() if callable(describe_) else repr(value)
    text = text.replace("\n", "\n      ")
    return text if len(text) <= limit else text[: limit - 20] + " ... (truncated)"
