"""The pytest side of the harness: ``--backend``, per-backend parametrization and failure reports a porter
can act on.

* Every falsifier gets one test per backend x declared dtype. One that cannot run for a backend is skipped
  with a reason: ``not run: ...`` (the backend does not compute in that dtype) or ``not implemented: ...``
  (the backend lacks a member the falsifier ``requires``). Nothing is silently left out.
* A falsified prediction and an error (the code under test raised) are reported differently; an error
  shows the original traceback. Either saves its counterexample to an ``.npz`` file and prints the command
  that replays it (``python -m spec replay FILE``).
* ``--max-examples`` caps hypothesis' examples per falsifier; ``--skip-once`` leaves out the falsifiers
  that check the project itself (scope ``once``) rather than a backend.

The generated ``falsifiers/conftest.py`` calls :meth:`FalsifierPlugin.add_options` and
:meth:`FalsifierPlugin.install` with the binding its contracts name.
"""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path
from typing import Any

import pytest

from spec import measure, profiles, replay
from spec.binding import BindingError, Target
from spec.named_tests import MARKER as NAMED_TEST_MARKER
from spec.runtime import OPTIONS, Falsifier, Finding, Subject, binding_named

ONCE = "(once)"
NOT_RUN = "not run:"
NOT_IMPLEMENTED = "not implemented:"


def capabilities(target: Target) -> frozenset[str] | None:
    """The optional members a backend declares (``capabilities``), or ``None`` when it declares none."""
    declared = getattr(target.backend, "capabilities", None)
    return frozenset(declared) if declared is not None else None


def missing_members(target: Target, requires: tuple[str, ...], catalog: Any = None) -> list[str]:
    """The members of ``requires`` the backend does not implement. The binding's backend catalog decides when
    it has a ``lacks(target, requires)`` method (it knows the protocol); otherwise a member counts only when the
    backend declares it in ``capabilities`` (a backend without ``capabilities`` declares none)."""
    lacks = getattr(catalog, "lacks", None)
    if callable(lacks):
        return list(lacks(target, requires))
    declared = capabilities(target) or frozenset()
    return [m for m in requires if m not in declared]


def backend_identity(backend: Any) -> dict[str, str]:
    """Where a backend's code lives and which version it is: for a report a porter attaches to a PR."""
    cls = backend if isinstance(backend, type) else type(backend)
    module_name = getattr(cls, "__module__", "?")
    module = sys.modules.get(module_name)
    info = {"module": module_name, "file": str(getattr(module, "__file__", "") or "")}
    version = getattr(backend, "version", None) or getattr(module, "__version__", None)
    if version is None:
        top = module_name.split(".")[0]
        dists = importlib.metadata.packages_distributions().get(top, [])
        for dist in dists:
            try:
                version = f"{dist} {importlib.metadata.version(dist)}"
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    info["version"] = str(version) if version is not None else "unknown (not an installed distribution)"
    return info


def _database_on() -> bool:
    import hypothesis

    return hypothesis.settings().database is not None


class FalsifierPlugin:
    def __init__(self, config: pytest.Config, binding_name: str) -> None:
        self.config = config
        try:
            self.binding = binding_named(binding_name)
        except BindingError as exc:
            raise pytest.UsageError(str(exc)) from None
        catalog = self.binding.backends
        self.spec = config.getoption("backend") or catalog.default
        try:
            self.targets, self.left_out = catalog.select(self.spec)
        except LookupError as exc:
            raise pytest.UsageError(f"--backend {self.spec}: {exc.args[0] if exc.args else exc}") from None
        if not self.targets:
            reasons = "; ".join(f"{n}: {r}" for n, r in self.left_out) or "none selected"
            raise pytest.UsageError(f"--backend {self.spec}: no backend can run here ({reasons})")
        self.failures_dir = replay.failures_dir(config.getoption("failures_dir", None))
        self.skip_once = bool(config.getoption("skip_once", False))
        self.skipped_once = 0
        self.replay_meta: dict[str, Any] | None = None
        OPTIONS.max_examples = config.getoption("max_examples", None)
        OPTIONS.replay = None
        replay_file = config.getoption("replay", None)
        if replay_file:
            try:
                meta, drawn = replay.load(Path(replay_file))
            except replay.ReplayError as exc:
                raise pytest.UsageError(f"--replay: {exc}") from None
            self.replay_meta = meta
            OPTIONS.replay = {"id": meta["falsifier"], "subject": meta["subject"], "drawn": drawn}

    @staticmethod
    def add_options(parser: pytest.Parser) -> None:
        """Add the suite's options; a no-op when a conftest closer to the root already added them."""
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
        group.addoption("--max-examples", type=int, default=None, metavar="N",
                        help="at most N hypothesis examples per falsifier (default: the profile's)")
        group.addoption("--skip-once", action="store_true", default=False,
                        help="leave out the falsifiers of scope 'once' (they check the project, not a backend)")
        group.addoption("--replay", default=None, metavar="FILE",
                        help="run only the falsifier a counterexample file names, on its saved values")
        group.addoption("--failures-dir", default=None, metavar="DIR",
                        help=f"where failed falsifiers save their counterexamples (default: ${replay.ENV} "
                        f"or {replay.DEFAULT_DIR})")

    @classmethod
    def install(cls, config: pytest.Config, binding_name: str) -> None:
        config.addinivalue_line("markers", "falsifier(f): a generated contract falsifier")
        config.addinivalue_line(
            "markers", f"{NAMED_TEST_MARKER}(id): this test is the check of the contract falsifier `id`"
        )
        max_examples = config.getoption("max_examples", None)
        if max_examples is not None and max_examples < 1:
            raise pytest.UsageError(f"--max-examples {max_examples}: give a positive number of examples")
        if not config.getoption("hypothesis_profile", None):
            try:
                profiles.load()
            except ValueError as exc:
                raise pytest.UsageError(str(exc)) from None
        config.pluginmanager.register(cls(config, binding_name), "spec-falsifiers")

    # -- collection --------------------------------------------------------------------------------------

    def params(self, falsifier: Falsifier) -> list[Any]:
        """One parameter per backend x declared dtype; those that cannot run carry a skip with the reason."""
        out = []
        for target in self.targets:
            missing = missing_members(target, falsifier.requires, self.binding.backends)
            for dtype in falsifier.dtypes:
                subject = Subject(target, dtype)
                if dtype not in target.dtypes:
                    reason = (f"{NOT_RUN} {target.label} does not compute in {dtype} "
                              f"(it declares {', '.join(target.dtypes)})")
                    out.append(pytest.param(subject, marks=pytest.mark.skip(reason=reason), id=subject.label))
                elif missing:
                    reason = f"{NOT_IMPLEMENTED} {target.label} does not implement {', '.join(missing)}"
                    out.append(pytest.param(subject, marks=pytest.mark.skip(reason=reason), id=subject.label))
                else:
                    out.append(pytest.param(subject, id=subject.label))
        return out

    def pytest_report_header(self) -> list[str]:
        lines = [f"backends under test: {', '.join(t.label for t in self.targets)}"]
        lines += [f"backend left out: {name} ({reason})" for name, reason in self.left_out]
        return lines

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        marker = metafunc.definition.get_closest_marker("falsifier")
        if marker is None or "subject" not in metafunc.fixturenames:
            return
        metafunc.parametrize("subject", self.params(marker.args[0]))

    @pytest.hookimpl(trylast=True)  # after -k and -m, so that what it counts is what they kept
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        wrapped = {
            m.args[0].id for item in items if (m := item.get_closest_marker("falsifier")) and m.args[0].test
        }
        keep, drop = [], []
        skipped_once: set[str] = set()
        for item in items:
            mark = item.get_closest_marker("falsifier")
            named = item.get_closest_marker(NAMED_TEST_MARKER)
            if mark is None and named is not None and named.args and named.args[0] in wrapped:
                drop.append(item)  # the generated suite runs it under the falsifier's ID
            elif self.replay_meta is not None and not self._is_replayed(item, mark):
                drop.append(item)
            elif self.skip_once and mark is not None and mark.args[0].scope == "once":
                drop.append(item)
                skipped_once.add(mark.args[0].id)
            else:
                keep.append(item)
        self.skipped_once = len(skipped_once)
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep

    def _is_replayed(self, item: pytest.Item, mark: Any) -> bool:
        meta = self.replay_meta or {}
        if mark is None or mark.args[0].id != meta.get("falsifier"):
            return False
        subject = getattr(item, "callspec", None) and item.callspec.params.get("subject")
        if not isinstance(subject, Subject):
            return meta.get("subject") == "once"
        if self.spec != meta.get("backend"):  # replayed against another backend: the same dtype
            return subject.dtype == meta.get("dtype")
        return subject.label == meta.get("subject")

    # -- reports -----------------------------------------------------------------------------------------

    def _backend_token(self, target: Target) -> str:
        """A ``--backend`` value that selects ``target`` (alone where one does; else the spec of this run)."""
        tokens = [t.strip() for t in self.spec.split(",") if t.strip() not in ("all", "cuda", "")]
        for token in [*tokens, target.label]:
            try:
                targets, _ = self.binding.backends.select(token)
            except LookupError:
                continue
            if any(t.label == target.label for t in targets):
                return token
        return self.spec

    def _save(self, item: pytest.Item, finding: Finding) -> tuple[str | None, str]:
        subject = finding.subject
        label = subject.label if subject else "once"
        backend = self._backend_token(subject.target) if subject else None
        node = item.nodeid
        pytest_cmd = f"python -m pytest '{node}'" + (f" --backend {backend}" if backend else "")
        if not finding.drawn and not finding.bound:
            return None, pytest_cmd
        path = self.failures_dir / replay.file_name(finding.falsifier.id, label)
        command = f"python -m spec replay {path}"
        meta = {
            "falsifier": finding.falsifier.id,
            "contract": finding.falsifier.contract,
            "subject": label,
            "backend": backend,
            "dtype": subject.dtype if subject else None,
            "outcome": finding.kind,
            "nodeid": node,
            "suite": str(Path(str(item.fspath)).parent),
            "reproduce": command,
        }
        try:
            replay.save(path, finding.drawn, finding.bound, meta)
        except OSError as exc:
            return f"(could not be saved: {exc})", pytest_cmd
        return str(path), command

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
        outcome = yield
        report = outcome.get_result()
        if call.when != "call":
            return
        mark = item.get_closest_marker("falsifier")
        if mark is not None:
            subject = getattr(item, "callspec", None) and item.callspec.params.get("subject")
            report.user_properties.append(("subject", subject.label if isinstance(subject, Subject) else ONCE))
        worst = measure.drain()
        if worst is not None:
            report.user_properties.append(("measured_error", worst[0]))
            report.user_properties.append(("tolerance", worst[1]))
        finding = call.excinfo.value if call.excinfo is not None else None
        if not isinstance(finding, Finding):
            return
        saved, command = self._save(item, finding)
        lines = [finding.text]
        if saved:
            lines.append(f"  counterexample file: {saved}")
        lines.append(f"  reproduce:  {command}")
        if finding.drawn and OPTIONS.replay is None and _database_on():
            lines.append("  (a plain rerun replays this failure first, from the hypothesis database)")
        report.longrepr = "\n".join(lines)
        report.user_properties.extend([
            ("falsifier", finding.falsifier.id),
            ("outcome", "error" if finding.kind == "ERROR" else "falsified"),
            ("headline", finding.headline),
            ("details", finding.text),
            ("counterexample_file", saved),
            ("reproduce", command),
        ])

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.skipped_once:
            terminalreporter.write_line(
                f"{self.skipped_once} falsifier(s) of scope 'once' (the project's own pipeline) were not "
                "selected (--skip-once)"
            )
        worst: dict[str, dict[str, Any]] = {}
        for report in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("failed", []):
            props = dict(report.user_properties)
            if "measured_error" in props:
                measure.keep_worst(worst, props.get("subject") or measure.subject_label(report.nodeid),
                                   props["measured_error"],
                                   props["tolerance"], report.nodeid.split("::")[-1])
        if worst:
            terminalreporter.section("largest measured error per backend")
            for label, w in sorted(worst.items()):
                terminalreporter.write_line(f"{label:>20}: {measure.describe(w)}")
