"""``python -m spec check``: run the generated suite and print a conformance table (contract by backend),
with the largest measured error per backend beside its tolerance, and write a report a porter can attach
to a pull request.

Honest verdicts: a falsifier that did not run for a backend (a dtype it does not compute in, a member it
does not implement) is counted as "not run" / "not implemented" with its reason, in the table, the report
and the verdict line. A verdict never counts them as passed.
"""

from __future__ import annotations

import json
import platform
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

from spec import measure
from spec.files import write_text_atomic
from spec.pytest_plugin import NOT_IMPLEMENTED, NOT_RUN, ONCE, backend_identity


@dataclass
class Cell:
    passed: int = 0
    failed: int = 0
    errors: int = 0
    not_run: int = 0
    not_implemented: int = 0

    @property
    def ran(self) -> int:
        return self.passed + self.failed + self.errors

    def __str__(self) -> str:
        parts = []
        if self.failed:
            parts.append(f"{self.failed} FAILED")
        if self.errors:
            parts.append(f"{self.errors} ERROR{'S' * (self.errors != 1)}")
        parts.append(f"{self.passed}/{self.ran} passed")
        if self.not_run:
            parts.append(f"{self.not_run} not run")
        if self.not_implemented:
            parts.append(f"{self.not_implemented} not implemented")
        return ", ".join(parts)


@dataclass
class Failure:
    """One failing test, with what a porter needs to act on it."""

    test: str
    contract: str
    subject: str
    outcome: str  # "falsified", "error", or "failed" for a test that is not a falsifier
    falsifier: str | None = None
    headline: str = ""
    details: str = ""
    counterexample_file: str | None = None
    reproduce: str | None = None


@dataclass
class Conformance:
    backends: list[str] = field(default_factory=list)
    left_out: list[tuple[str, str]] = field(default_factory=list)
    cells: dict[str, dict[str, Cell]] = field(default_factory=lambda: defaultdict(dict))
    worst: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> how many
    deselected_once: int = 0
    run: dict[str, Any] = field(default_factory=dict)  # profile, seed, backend identities, contracts
    exit_code: int = 0

    @property
    def ok(self) -> bool:
        return self.exit_code in (0, 5) and not self.failures and self.ran > 0

    @property
    def ran(self) -> int:
        return sum(c.ran for row in self.cells.values() for c in row.values())

    def totals(self) -> Cell:
        total = Cell()
        for row in self.cells.values():
            for cell in row.values():
                for k, v in vars(cell).items():
                    setattr(total, k, getattr(total, k) + v)
        return total

    def verdict(self) -> str:
        t = self.totals()
        if self.ok:
            text = f"Conformance: PASS ({t.passed} passed"
        else:
            bad = [f"{t.failed} falsified" if t.failed else "", f"{t.errors} errors" if t.errors else ""]
            other = len(self.failures) - t.failed - t.errors
            bad.append(f"{other} other failures" if other > 0 else "")
            if self.ran == 0:
                bad.append("no falsifier ran")
            text = f"Conformance: FAIL ({', '.join(b for b in bad if b) or f'pytest exit {self.exit_code}'}; "
            text += f"{t.passed} passed"
        if t.not_run or t.not_implemented:
            text += (f"; {t.not_run} not run, {t.not_implemented} not implemented: the verdict covers only what "
                     "ran, see 'Did not run'")
        return text + ")"

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "verdict": self.verdict(),
            "run": self.run,
            "backends": self.backends,
            "left_out": [{"backend": n, "reason": r} for n, r in self.left_out],
            "contracts": {
                c: {b: vars(cell) for b, cell in row.items()} for c, row in sorted(self.cells.items())
            },
            "did_not_run": [{"reason": r, "count": n} for r, n in sorted(self.skipped.items())],
            "once_scope_not_selected": self.deselected_once,
            "largest_error": self.worst,
            "failures": [asdict(f) for f in self.failures],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self, markdown: bool = False) -> str:
        columns = [*self.backends, *([ONCE] if any(ONCE in r for r in self.cells.values()) else [])]
        rows = [[c, *(str(row.get(b, "-")) for b in columns)] for c, row in sorted(self.cells.items())]
        head = ["contract", *columns]
        if markdown:
            lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(r) + " |" for r in rows]
        else:
            widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
            lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *rows]]
        bullet = "- " if markdown else "  "
        lines.append("")
        lines.append("Largest measured error per backend and dtype, beside its tolerance:")
        for backend in self.backends:
            labels = sorted(k for k in self.worst if k == backend or k.startswith(f"{backend}-"))
            if not labels:
                lines.append(f"{bullet}{backend}: no measured comparison ran")
            for label in labels:
                name = label if label != backend else f"{backend}-float64"
                lines.append(f"{bullet}{name}: {measure.describe(self.worst[label])}")
        if self.skipped or self.left_out or self.deselected_once:
            lines.append("")
            lines.append("Did not run:")
            for reason, n in sorted(self.skipped.items()):
                lines.append(f"{bullet}{n} x {reason}")
            for name, reason in self.left_out:
                lines.append(f"{bullet}backend {name}: {reason}")
            if self.deselected_once:
                lines.append(f"{bullet}{self.deselected_once} x the falsifiers of scope 'once' (the project's own "
                             "pipeline, not a backend): add --once to run them")
        lines.append("")
        lines.append(self.verdict())
        return "\n".join(lines)

    def markdown(self) -> str:
        """The whole report: run facts, the table, and each failure with its diagnosis and replay command."""
        out = ["# Conformance", ""]
        run = self.run
        if run:
            out.append("| | |")
            out.append("|---|---|")
            for key in ("command", "profile", "seed", "max_examples", "python", "platform"):
                if run.get(key) is not None:
                    out.append(f"| {key} | `{run[key]}` |")
            out.append("")
            for label, ident in run.get("backend_identity", {}).items():
                out.append(f"- backend **{label}**: module `{ident['module']}` ({ident['file']}), "
                           f"version {ident['version']}")
            for name, info in sorted(run.get("contracts", {}).items()):
                out.append(f"- contract `{name}` v{info.get('version')}: sha256 `{info.get('sha256')}`")
            out.append("")
        out.append(self.table(markdown=True))
        if self.failures:
            out += ["", "## Failures", ""]
            for f in self.failures:
                out.append(f"### {f.falsifier or f.test} on {f.subject}: {f.outcome}")
                out.append("")
                if f.reproduce:
                    out.append(f"Reproduce: `{f.reproduce}`")
                if f.counterexample_file:
                    out.append(f"Counterexample (full precision): `{f.counterexample_file}`")
                out += ["", "```", f.details.rstrip() or f.headline, "```", ""]
        return "\n".join(out) + "\n"


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return text.removeprefix("Skipped: ")


class _Collector:
    def __init__(self, result: Conformance) -> None:
        self.result = result
        self.contract_of: dict[str, str] = {}
        self.once: set[str] = set()

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.contract_of = {
            item.nodeid: getattr(getattr(item, "module", None), "CONTRACT", item.nodeid)
            for item in session.items
        }
        self.once = {
            item.nodeid for item in session.items
            if (mark := item.get_closest_marker("falsifier")) is not None and mark.args[0].scope == "once"
        }
        plugin = session.config.pluginmanager.get_plugin("spec-falsifiers")
        if plugin is not None:
            self.result.backends = [t.label for t in plugin.targets]
            self.result.left_out = list(plugin.left_out)
            self.result.run["backend_identity"] = {t.label: backend_identity(t.backend) for t in plugin.targets}
            self.result.deselected_once = plugin.skipped_once
        self._run_facts(session.config)

    def _run_facts(self, config: pytest.Config) -> None:
        import hypothesis

        self.result.run["profile"] = getattr(hypothesis.settings, "_current_profile", None)
        seed = config.getoption("hypothesis_seed", None)
        derandomized = hypothesis.settings().derandomize
        self.result.run["seed"] = seed if seed is not None else ("derandomized" if derandomized else "random")
        self.result.run["max_examples"] = config.getoption("max_examples", None) or hypothesis.settings().max_examples

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call" and not (report.skipped or report.failed):
            return
        contract = self.contract_of.get(report.nodeid, report.nodeid.split("::")[0])
        label = ONCE if report.nodeid in self.once else measure.subject_label(report.nodeid, ONCE)
        backend = label
        for b in self.result.backends:
            if label == b or label.startswith(f"{b}-float") or label.startswith(f"{b}-bfloat"):
                backend = b
        cell = self.result.cells[contract].setdefault(backend, Cell())
        props = dict(report.user_properties)
        if report.passed:
            cell.passed += 1
        elif report.failed:
            outcome = props.get("outcome", "failed" if report.when == "call" else "error")
            if outcome == "error":
                cell.errors += 1
            else:
                cell.failed += 1
            self.result.failures.append(
                Failure(
                    test=report.nodeid,
                    contract=contract,
                    subject=label,
                    outcome=outcome,
                    falsifier=props.get("falsifier"),
                    headline=props.get("headline") or f"{report.nodeid} failed in {report.when}",
                    details=props.get("details") or str(report.longrepr),
                    counterexample_file=props.get("counterexample_file"),
                    reproduce=props.get("reproduce") or f"python -m pytest '{report.nodeid}'",
                )
            )
        else:
            reason = _skip_reason(report)
            if reason.startswith(NOT_IMPLEMENTED):
                cell.not_implemented += 1
            else:
                cell.not_run += 1
            self.result.skipped[reason if reason.startswith((NOT_RUN, NOT_IMPLEMENTED)) else f"{NOT_RUN} {reason}"] += 1
        if "measured_error" in props:
            measure.keep_worst(self.result.worst, label, props["measured_error"], props["tolerance"],
                               report.nodeid.split("::")[-1])


def run_suite(suite_dir: Path, backend: str | None, extra_args: list[str] | None = None,
              facts: dict[str, Any] | None = None) -> Conformance:
    result = Conformance()
    result.run.update(facts or {})
    result.run.setdefault("python", platform.python_version())
    result.run.setdefault("platform", platform.platform())
    args = [
        str(suite_dir),
        "-q",
        "-p",
        "no:cacheprovider",
        "--no-header",
        "-rfE",
        "-W",
        "ignore::pytest.PytestAssertRewriteWarning",
        *(extra_args or []),
    ]
    if backend:
        args += ["--backend", backend]
    collector = _Collector(result)
    result.exit_code = int(pytest.main(args, plugins=[collector]))
    return result


def write_report(result: Conformance, path: Path) -> None:
    """The JSON or Markdown report, written atomically with the permissions a new file normally gets."""
    text = result.to_json() + "\n" if path.suffix == ".json" else result.markdown()
    write_text_atomic(path, text)
