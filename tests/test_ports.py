"""Backends written outside the project, plugged in with ``--backend module:attribute``: the faithful port passes
the whole falsifier suite, and each port with a planted bug fails it, first at the falsifier the kill table
(:data:`tests.ports.KILL_TABLE`) names, a reference-free law, whatever the hypothesis seed.

The ports run in real ``pytest`` subprocesses, as a porter would run them (``--backend module:attribute``): the
faithful port through the kd-loss, kd-step and parity suites, all the bug ports together, each through the
falsifiers of the kd-loss and kd-step suites up to and including its killer; once under the ``ci`` profile
(derandomized) and once under ``dev`` with another seed. ``KD_THOROUGH=1`` adds runs under the ``thorough``
profile with three more seeds.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import yaml

from tests.ports import KILL_TABLE, PORTS

ROOT = Path(__file__).resolve().parents[1]
SUITE = ("falsifiers/test_kd_loss_v1.py", "falsifiers/test_kd_step_v1.py", "falsifiers/test_backend_parity_v1.py")
CONTRACTS = ("contracts/kd-loss-v1.yaml", "contracts/kd-step-v1.yaml", "contracts/backend-parity-v1.yaml")

THOROUGH = os.environ.get("KD_THOROUGH", "").lower() in ("1", "true", "yes")
RUNS: tuple[tuple[str, int | None], ...] = (("ci", None), ("dev", 20261121)) + (
    (("thorough", 1), ("thorough", 2), ("thorough", 3)) if THOROUGH else ()
)
"""(hypothesis profile, seed) of each run; ``None``: the profile's own (``ci`` is derandomized)."""

FAILED = "(?:falsified|ERROR)"
"""How a report opens when a port fails a falsifier: a false prediction, or an exception raised by the port's own
code (a crash on int32 labels, a refusal of a valid ignore_index) that the harness reports as an ERROR."""


@dataclass(frozen=True)
class Verdict:
    passed: bool
    first_failure: str | None  # the ID of the first falsifier that failed
    report: str

    def __str__(self) -> str:
        return "passes" if self.passed else f"fails first at {self.first_failure}"


def _pytest(suite: tuple[str, ...], backends: list[str], profile: str, seed: int | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "CI": "true", "HYPOTHESIS_PROFILE": profile}
    args = [sys.executable, "-m", "pytest", *suite, "-q", "-p", "no:cacheprovider", "--backend", ",".join(backends)]
    if seed is not None:
        args.append(f"--hypothesis-seed={seed}")
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    if result.returncode not in (0, 1):
        pytest.fail(f"pytest ended with exit code {result.returncode}:\n{(result.stdout + result.stderr)[-3000:]}")
    return result


def _backend(port: str) -> object:
    return importlib.import_module(f"tests.ports.{port}").BACKEND


def _node_ids_through(port: str, killer: str) -> list[str]:
    """The pytest node IDs of ``port``'s per-backend falsifiers, in suite order, up to and including ``killer``:
    the falsifiers a port must pass before its killer, and the killer."""
    backend = _backend(port)
    ids = []
    for test_file, contract in zip(SUITE[:2], CONTRACTS[:2], strict=True):
        for f in yaml.safe_load((ROOT / contract).read_text())["falsification_tests"]:
            check = f["check"]
            if check.get("scope", "per_backend") == "per_backend":
                for dtype in check.get("dtypes", ["float64"]):
                    if dtype in backend.dtypes:
                        label = backend.name if dtype == "float64" else f"{backend.name}-{dtype}"
                        ids.append(f"{test_file}::test_{f['id'].replace('-', '_')}[{label}]")
            if f["id"] == killer:
                return ids
    raise AssertionError(f"{killer} is not a falsifier of {', '.join(CONTRACTS[:2])}")


def _run(kind: str, profile: str, seed: int | None) -> dict[str, Verdict]:
    """``kind`` "good": the faithful port through the whole suite. "bugs": every bug port at once, each through
    the falsifiers of the kd-loss and kd-step suites up to its killer (where every killer lives): a port's
    verdict is its first failure, and any falsifier before the killer that fails is reported as the first."""
    if kind == "good":
        result = _pytest(SUITE, [PORTS["good_port"]], profile, seed)
        first = re.findall(rf"^(F-[A-Z0-9-]+) {FAILED} on ", result.stdout, flags=re.MULTILINE)
        return {"good_port": Verdict(result.returncode == 0, first[0] if first else None, result.stdout)}
    nodes = [node for port, (_, killer) in KILL_TABLE.items() for node in _node_ids_through(port, killer)]
    result = _pytest(tuple(nodes), [PORTS[port] for port in KILL_TABLE], profile, seed)
    reports = re.split(rf"^(?=F-[A-Z0-9-]+ {FAILED} on )", result.stdout, flags=re.MULTILINE)
    verdicts = {}
    for port in KILL_TABLE:
        label = re.escape(_backend(port).name)  # type: ignore[attr-defined]
        mine = [r for r in reports if re.match(rf"F-[A-Z0-9-]+ {FAILED} on {label} \(", r)]
        first = mine[0].split(" ", 1)[0] if mine else None
        verdicts[port] = Verdict(not mine, first, mine[0][:4000] if mine else "")
    return verdicts


@cache
def verdicts() -> dict[tuple[str, str, int | None], Verdict]:
    """(port, profile, seed) -> verdict, for every port under every run; the runs go side by side."""
    jobs = [(kind, profile, seed) for profile, seed in RUNS for kind in ("bugs", "good")]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda job: _run(*job), jobs))
    return {(port, profile, seed): v for (_, profile, seed), run in zip(jobs, results) for port, v in run.items()}


def _checks() -> dict[str, dict]:
    out = {}
    for path in CONTRACTS:
        for f in yaml.safe_load((ROOT / path).read_text())["falsification_tests"]:
            out[f["id"]] = f
    return out


@pytest.mark.parametrize("run", RUNS, ids=[f"{p}-{s}" for p, s in RUNS])
def test_the_faithful_port_passes_every_falsifier(run: tuple[str, int | None]) -> None:
    verdict = verdicts()[("good_port", *run)]
    assert verdict.passed, verdict.report[-3000:]
    assert re.search(r"\d+ passed", verdict.report) and " failed" not in verdict.report.splitlines()[-1]


@pytest.mark.parametrize("port", sorted(KILL_TABLE))
def test_each_bug_fails_first_at_the_falsifier_the_kill_table_names(port: str) -> None:
    bug, killer = KILL_TABLE[port]
    for run in RUNS:
        verdict = verdicts()[(port, *run)]
        assert not verdict.passed, f"{port} ({bug}) passed every falsifier through {killer} under {run}"
        assert verdict.first_failure == killer, (
            f"{port} ({bug}) under {run}: first failure {verdict.first_failure}, the kill table says {killer}\n"
            + verdict.report
        )
        # the report a porter reads: the ID, the prediction and the diagnosis, no traceback
        assert "prediction:" in verdict.report and "if it fails:" in verdict.report
        assert "Traceback" not in verdict.report


def test_verdicts_do_not_depend_on_the_seed() -> None:
    differing = {
        port: {run: str(verdicts()[(port, *run)]) for run in RUNS}
        for port in PORTS
        if len({str(verdicts()[(port, *run)]) for run in RUNS}) > 1
    }
    assert not differing, f"verdicts differ between hypothesis seeds: {differing}"


def test_every_killer_is_a_reference_free_law() -> None:
    """The first falsifier to fail tells the porter which law broke: none of them compares with ``ref``."""
    checks = _checks()
    for port, (_bug, killer) in KILL_TABLE.items():
        text = yaml.safe_dump(checks[killer]["check"])
        assert "ref." not in text and not killer.startswith("F-PARITY"), f"{port}: {killer} uses the reference"


ELSEWHERE = {
    "bug_triton_missing_rescale": "tests/test_triton_ports.py (it needs the Triton interpreter)",
    "bug_triton_jsd_unshifted_mixture": "tests/test_triton_ports.py (it needs the Triton interpreter)",
    "bug_triton_topk_tail_cancels": "tests/test_triton_ports.py (it needs the Triton interpreter)",
}
"""Bug ports held to their falsifiers by another test, and where."""


def test_every_bug_port_is_in_the_kill_table() -> None:
    modules = {p.stem for p in (ROOT / "tests" / "ports").glob("bug_*.py")} - set(ELSEWHERE)
    assert modules == set(KILL_TABLE), modules ^ set(KILL_TABLE)
    assert all((ROOT / where.split()[0]).is_file() for where in ELSEWHERE.values())
