"""``python -m spec check``: validate, check the generated suite is fresh, run it, and print a conformance
table (contract by backend) with the largest measured error per backend beside its tolerance."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from spec import measure
from spec.files import write_text_atomic

ONCE = "(once)"


@dataclass
class Cell:
    passed: int = 0
    failed: int = 0
    skipped: int = 0

    def __str__(self) -> str:
        total = self.passed + self.failed
        text = f"{self.passed}/{total} passed"
        if self.failed:
            text = f"{self.failed} FAILED, {text}"
        return text + (f", {self.skipped} skipped" if self.skipped else "")


@dataclass
class Conformance:
    backends: list[str] = field(default_factory=list)
    left_out: list[tuple[str, str]] = field(default_factory=list)
    cells: dict[str, dict[str, Cell]] = field(default_factory=lambda: defaultdict(dict))
    worst: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    exit_code: int = 0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.failures

    def to_json(self) -> str:
        return json.dumps(
            {
                "ok": self.ok,
                "backends": self.backends,
                "left_out": [{"backend": n, "reason": r} for n, r in self.left_out],
                "contracts": {
                    c: {b: vars(cell) for b, cell in row.items()} for c, row in sorted(self.cells.items())
                },
                "largest_error": self.worst,
                "failures": self.failures,
            },
            indent=2,
        )

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
        lines.append("")
        lines.append("Largest measured error per backend and dtype, beside its tolerance:")
        bullet = "- " if markdown else "  "
        for backend in self.backends:
            labels = sorted(k for k in self.worst if k == backend or k.startswith(f"{backend}-"))
            if not labels:
                lines.append(f"{bullet}{backend}: no measured comparison ran")
            for label in labels:
                name = label if label != backend else f"{backend}-float64"
                lines.append(f"{bullet}{name}: {measure.describe(self.worst[label])}")
        for name, reason in self.left_out:
            lines.append(f"{bullet}not run: {name}: {reason}")
        verdict = "PASS" if self.ok else "FAIL"
        lines.append("")
        lines.append(f"Conformance: {verdict}" + (f" ({len(self.failures)} failed)" if self.failures else ""))
        return "\n".join(lines)


class _Collector:
    def __init__(self, result: Conformance) -> None:
        self.result = result
        self.contract_of: dict[str, str] = {}

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.contract_of = {
            item.nodeid: getattr(getattr(item, "module", None), "CONTRACT", item.nodeid)
            for item in session.items
        }
        plugin = session.config.pluginmanager.get_plugin("spec-falsifiers")
        if plugin is not None:
            self.result.backends = [t.label for t in plugin.targets]
            self.result.left_out = list(plugin.left_out)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call" and not (report.skipped or report.failed):
            return
        contract = self.contract_of.get(report.nodeid, report.nodeid.split("::")[0])
        label = measure.subject_label(report.nodeid, ONCE)
        backend = label
        for b in self.result.backends:
            if label == b or label.startswith(f"{b}-float") or label.startswith(f"{b}-bfloat"):
                backend = b
        cell = self.result.cells[contract].setdefault(backend, Cell())
        if report.passed:
            cell.passed += 1
        elif report.failed:
            cell.failed += 1
            self.result.failures.append(report.nodeid)
        else:
            cell.skipped += 1
        props = dict(report.user_properties)
        if "measured_error" in props:
            measure.keep_worst(self.result.worst, label, props["measured_error"], props["tolerance"],
                               report.nodeid.split("::")[-1])


def run_suite(suite_dir: Path, backend: str | None, extra_args: list[str] | None = None) -> Conformance:
    result = Conformance()
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
    result.exit_code = int(pytest.main(args, plugins=[_Collector(result)]))
    return result


def write_report(result: Conformance, path: Path) -> None:
    text = (
        result.to_json()
        if path.suffix == ".json"
        else "# Conformance\n\n" + result.table(markdown=True) + "\n"
    )
    write_text_atomic(path, text)
