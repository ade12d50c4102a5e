"""The pytest side of the harness: ``--backend``, per-backend parametrization and clean failure reports.

The generated ``falsifiers/conftest.py`` calls :meth:`FalsifierPlugin.add_options` and
:meth:`FalsifierPlugin.install` with the binding its contracts name.
"""

from __future__ import annotations

from typing import Any

import pytest

from spec import measure, profiles
from spec.binding import BindingError
from spec.runtime import Falsifier, FalsifierFailure, Subject, binding_named


class FalsifierPlugin:
    def __init__(self, binding_name: str, backend_spec: str | None) -> None:
        try:
            self.binding = binding_named(binding_name)
        except BindingError as exc:
            raise pytest.UsageError(str(exc)) from None
        catalog = self.binding.backends
        self.spec = backend_spec or catalog.default
        try:
            self.targets, self.left_out = catalog.select(self.spec)
        except LookupError as exc:
            raise pytest.UsageError(f"--backend {self.spec}: {exc.args[0] if exc.args else exc}") from None
        if not self.targets:
            reasons = "; ".join(f"{n}: {r}" for n, r in self.left_out) or "none selected"
            raise pytest.UsageError(f"--backend {self.spec}: no backend can run here ({reasons})")

    @staticmethod
    def add_options(parser: pytest.Parser) -> None:
        """Add ``--backend``; a no-op when a conftest closer to the root already added it."""
        group = parser.getgroup("falsifiers", "contract falsifiers")
        if any("--backend" in option.names() for option in group.options):
            return
        group.addoption(
            "--backend",
            default=None,
            metavar="NAMES",
            help="comma-separated backends to hold to the contracts: names (numpy, torch, ...), "
            "package.module:attribute for a plugin, 'cuda' for every CUDA backend, 'all' for every "
            "backend that loads here (default: the reference, numpy)",
        )

    @classmethod
    def install(cls, config: pytest.Config, binding_name: str) -> None:
        config.addinivalue_line("markers", "falsifier(f): a generated contract falsifier")
        if not config.getoption("hypothesis_profile", None):
            try:
                profiles.load()
            except ValueError as exc:
                raise pytest.UsageError(str(exc)) from None
        config.pluginmanager.register(cls(binding_name, config.getoption("backend")), "spec-falsifiers")

    def subjects(self, falsifier: Falsifier) -> list[Subject]:
        return [Subject(t, d) for t in self.targets for d in falsifier.dtypes if d in t.dtypes]

    def pytest_report_header(self) -> list[str]:
        lines = [f"backends under test: {', '.join(t.label for t in self.targets)}"]
        lines += [f"backend left out: {name} ({reason})" for name, reason in self.left_out]
        return lines

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        marker = metafunc.definition.get_closest_marker("falsifier")
        if marker is None or "subject" not in metafunc.fixturenames:
            return
        falsifier: Falsifier = marker.args[0]
        subjects = self.subjects(falsifier)
        if not subjects:
            wanted = ", ".join(falsifier.dtypes)
            skip = pytest.mark.skip(reason=f"no selected backend computes in {wanted}")
            metafunc.parametrize("subject", [pytest.param(None, marks=skip)], ids=["no-backend"])
            return
        metafunc.parametrize("subject", subjects, ids=[s.label for s in subjects])

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
        outcome = yield
        report = outcome.get_result()
        if call.when != "call":
            return
        worst = measure.drain()
        if worst is not None:
            report.user_properties.append(("measured_error", worst[0]))
            report.user_properties.append(("tolerance", worst[1]))
        if call.excinfo is not None and call.excinfo.errisinstance(FalsifierFailure):
            report.longrepr = str(call.excinfo.value)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        worst: dict[str, dict[str, Any]] = {}
        for report in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("failed", []):
            props = dict(report.user_properties)
            if "measured_error" in props:
                measure.keep_worst(worst, measure.subject_label(report.nodeid), props["measured_error"],
                                   props["tolerance"], report.nodeid.split("::")[-1])
        if worst:
            terminalreporter.section("largest measured error per backend")
            for label, w in sorted(worst.items()):
                terminalreporter.write_line(f"{label:>20}: {measure.describe(w)}")
