"""Helpers of the harness tests: real subprocesses of ``python -m spec`` and ``python -m pytest``, parsing
of the validator's output, the ``#!`` expectation markers of the broken fixtures, and tree snapshots.

Markers
    A broken fixture says what the validator must report, on the line it must report it::

        verison: "1.0.1"  #! SCHEMA-UNKNOWN-KEY@3 "did you mean 'version'?"

    ``#! RULE`` expects a finding of RULE on this line; ``@COL`` pins its column; ``@LINE:COL`` pins an
    absolute place (``@0:0`` is the whole file); each ``"fragment"`` must occur in its message. A line may
    carry several markers. A fixture's markers are *all* it may report: anything else is a failure.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
BROKEN = FIXTURES / "broken"
VALID = FIXTURES / "valid"
MINIMAL = VALID / "minimal.yaml"

WARNING_RULES = frozenset({"TOLERANCE-REASON", "QA-GATE-MISSING", "COVERAGE-MISSING", "COVERAGE-DTYPE"})

DIAGNOSTIC = re.compile(
    r"^(?P<path>.+?):(?P<line>\d+):(?P<col>\d+): (?P<severity>ERROR|WARNING) (?P<rule>[A-Z][A-Z0-9-]+) "
    r"(?P<message>.*)$"
)
SUMMARY = re.compile(r"^(\d+) contracts, (\d+) falsifiers: (\d+) errors?, (\d+) warnings?$")
_MARKER = re.compile(r'#!\s*([A-Z][A-Z0-9]*(?:-[A-Z0-9]+)+)(?:@(\d+)(?::(\d+))?)?((?:\s+"[^"]*")*)')


def environment(**extra: str) -> dict[str, str]:
    """The subprocess environment: deterministic hypothesis, no bytecode written into the fixtures, and
    ``fixtures/`` importable and registered as a binding (``float64_only_binding``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
    # this checkout's code first (not an installed copy), wherever the subprocess runs, then fixtures/
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), str(FIXTURES), env.get("PYTHONPATH", "")) if p)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["HYPOTHESIS_PROFILE"] = "ci"
    env["KD_CONTRACTS_BINDINGS"] = "float64_only_binding=float64_only_binding:BINDING"  # the operator registers it
    env.update(extra)
    return env


@dataclass(frozen=True)
class Run:
    args: tuple[str, ...]
    cwd: Path
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def __str__(self) -> str:  # what a failing assertion shows
        return (
            f"$ {' '.join(self.args)}  (in {self.cwd}, exit {self.returncode}, {self.seconds:.2f} s)\n"
            f"--- stdout ---\n{self.stdout}--- stderr ---\n{self.stderr}"
        )


def run(args: Sequence[str], cwd: Path = REPO, timeout: float = 300, env: dict[str, str] | None = None) -> Run:
    """Run ``args`` (after ``sys.executable``) in a real subprocess."""
    argv = (sys.executable, *map(str, args))
    start = time.perf_counter()
    proc = subprocess.run(
        argv,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or environment(),
        stdin=subprocess.DEVNULL,
    )
    return Run(argv, Path(cwd), proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - start)


def spec(*args: str | Path, cwd: Path = REPO, timeout: float = 300) -> Run:
    return run(["-m", "spec", *map(str, args)], cwd=cwd, timeout=timeout)


def run_all(jobs: Iterable[tuple[Sequence[str], Path]], workers: int | None = None) -> list[Run]:
    """Run ``(args, cwd)`` jobs concurrently (they are independent subprocesses), in order."""
    jobs = list(jobs)
    workers = workers or max(2, min(6, 2 * (os.cpu_count() or 1)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda job: run(job[0], cwd=job[1]), jobs))


def assert_no_traceback(result: Run) -> None:
    assert "Traceback" not in result.output, str(result)


@dataclass(frozen=True)
class Diagnostic:
    path: str
    line: int
    col: int
    severity: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}: {self.severity} {self.rule} {self.message}"


def diagnostics(stdout: str) -> list[Diagnostic]:
    """The findings of ``python -m spec validate`` (text format); every other line must be the summary."""
    found = []
    for line in stdout.splitlines():
        m = DIAGNOSTIC.match(line)
        if m:
            found.append(Diagnostic(m["path"], int(m["line"]), int(m["col"]), m["severity"], m["rule"], m["message"]))
        else:
            assert SUMMARY.match(line), f"neither a diagnostic nor the summary: {line!r}"
    return found


def summary(stdout: str) -> tuple[int, int, int, int]:
    """(contracts, falsifiers, errors, warnings) from the last line of ``validate``'s output."""
    lines = stdout.strip().splitlines()
    assert lines, "no output"
    m = SUMMARY.match(lines[-1])
    assert m, f"the last line is not the summary: {lines[-1]!r}"
    return int(m[1]), int(m[2]), int(m[3]), int(m[4])


@dataclass(frozen=True)
class Marker:
    """One expected finding, from a ``#!`` marker."""

    path: str  # as the validator displays it (relative to its working directory)
    line: int
    col: int | None
    rule: str
    fragments: tuple[str, ...]
    source_line: int  # where the marker is written

    @property
    def severity(self) -> str:
        return "WARNING" if self.rule in WARNING_RULES else "ERROR"

    def matches(self, d: Diagnostic) -> bool:
        return (
            d.path == self.path
            and d.line == self.line
            and d.rule == self.rule
            and (self.col is None or d.col == self.col)
            and all(f in d.message for f in self.fragments)
        )

    def __str__(self) -> str:
        col = "" if self.col is None else f":{self.col}"
        frags = "".join(f" {f!r}" for f in self.fragments)
        return f"{self.path}:{self.line}{col}: {self.severity} {self.rule}{frags}"


def markers(path: Path, display: str) -> list[Marker]:
    out = []
    for number, text in enumerate(path.read_text("utf-8").splitlines(), start=1):
        for m in _MARKER.finditer(text):
            rule, first, second, rest = m.groups()
            if second is not None:
                line, col = int(first), int(second)
            else:
                line, col = number, (int(first) if first is not None else None)
            out.append(Marker(display, line, col, rule, tuple(re.findall(r'"([^"]*)"', rest or "")), number))
    return out


def case_markers(case: Path) -> list[Marker]:
    """The markers of a fixture file, or of every contract in a fixture directory."""
    if case.is_dir():
        files = sorted([*case.glob("*.yaml"), *case.glob("*.yml")])
        return [m for f in files for m in markers(f, f"{case.name}/{f.name}")]
    return markers(case, case.name)


def reconcile(expected: Sequence[Marker], found: Sequence[Diagnostic]) -> tuple[list[Marker], list[Diagnostic]]:
    """Pair markers with findings (the most specific markers first): (markers not reported, findings not
    expected)."""
    left = list(found)
    missing = []
    for marker in sorted(expected, key=lambda m: (m.col is None, -len(m.fragments))):
        hit = next((d for d in left if marker.matches(d)), None)
        if hit is None:
            missing.append(marker)
        else:
            left.remove(hit)
    return missing, left


def snapshot(root: Path) -> dict[str, tuple[str, int, str]]:
    """Every entry under ``root``: kind, size and content hash (and mtime for files)."""
    out: dict[str, tuple[str, int, str]] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_dir():
            out[rel] = ("dir", 0, "")
        else:
            data = path.read_bytes()
            out[rel] = (f"file@{path.stat().st_mtime_ns}", len(data), hashlib.sha256(data).hexdigest())
    return out
