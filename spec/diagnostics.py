"""Diagnostics: one finding of the validator, with its place, severity and stable rule ID."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass

ERROR = "ERROR"
WARNING = "WARNING"


@dataclass(frozen=True, order=True)
class Diagnostic:
    """A finding at ``path:line:col`` (1-based; 0 when the place is the whole file)."""

    path: str
    line: int
    col: int
    severity: str
    rule: str
    message: str

    def format(self) -> str:
        return f"{self.path}:{self.line}:{self.col}: {self.severity} {self.rule} {self.message}"


def summary_line(n_contracts: int, n_falsifiers: int, diagnostics: Iterable[Diagnostic]) -> str:
    diags = list(diagnostics)
    errors = sum(d.severity == ERROR for d in diags)
    warnings = sum(d.severity == WARNING for d in diags)
    return (
        f"{n_contracts} contracts, {n_falsifiers} falsifiers: "
        f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}"
    )


def to_json(n_contracts: int, n_falsifiers: int, diagnostics: Iterable[Diagnostic]) -> str:
    diags = sorted(diagnostics)
    return json.dumps(
        {
            "contracts": n_contracts,
            "falsifiers": n_falsifiers,
            "errors": sum(d.severity == ERROR for d in diags),
            "warnings": sum(d.severity == WARNING for d in diags),
            "diagnostics": [asdict(d) for d in diags],
        },
        indent=2,
    )
