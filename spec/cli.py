"""Command line: ``python -m spec {validate,generate,list,check,replay}``.

Exit codes: 0 success, 1 the contracts (or the backends under test) fail, 2 a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from spec import profiles
from spec.diagnostics import summary_line, to_json
from spec.validate import RULES, UsageError, Validation, scanned_directories, validate

DEFAULT_CONTRACTS = "contracts"
SHIPPED_CONTRACTS = Path(__file__).resolve().parent.parent / "contracts"
"""The contracts installed with the project (package data), used when the current folder has none: so
``python -m spec check --backend mypkg.mod:BACKEND`` works from a port's own repository."""


def default_contracts() -> str:
    """``contracts/`` in the current folder when there is one, else the contracts installed with spec."""
    return DEFAULT_CONTRACTS if Path(DEFAULT_CONTRACTS).is_dir() else str(SHIPPED_CONTRACTS)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no traceback
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _suite_dir(paths: list[str], out: str | None) -> Path:
    if out:
        suite = Path(out)
    else:
        first = Path(paths[0])
        base = first if first.is_dir() else first.parent
        suite = base.resolve().parent / "falsifiers"
    if suite.exists() and not suite.is_dir():
        raise UsageError(f"{suite} is a file, not a directory for the generated suite")
    return suite


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m spec", description="Validate contracts, generate and run their falsifiers."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    v = sub.add_parser(
        "validate",
        help="check contracts against the schema and the semantic rules",
        description="Check contracts against the schema and every semantic rule. "
        "Output: path:line:col: SEVERITY RULE-ID message, then a summary line. "
        "Exit 0 valid, 1 invalid, 2 usage error.",
    )
    v.add_argument(
        "paths",
        nargs="*",
        default=None,
        metavar="PATH",
        help="contract files or directories (default: contracts/ here, else the installed contracts)",
    )
    v.add_argument("--format", choices=("text", "json"), default="text", help="output format (default text)")
    v.add_argument(
        "--suite",
        metavar="DIR",
        help="generated suite to check for staleness (default: falsifiers/ beside the contracts directory)",
    )
    v.add_argument("--no-suite-check", action="store_true", help="skip the generated-suite staleness check")
    v.add_argument("--rules", action="store_true", help="list every rule ID and what it catches, then exit")

    g = sub.add_parser(
        "generate",
        help="write the pytest falsifier suite (one test file per contract)",
        description="Write falsifiers/test_<contract>.py for every contract, deterministically. "
        "With --check, write nothing: exit 1 and list the files that are stale or missing.",
    )
    g.add_argument("paths", nargs="*", default=None, metavar="PATH")
    g.add_argument(
        "--out", metavar="DIR", help="output directory (default: falsifiers/ beside the contracts)"
    )
    g.add_argument("--check", action="store_true", help="only report stale or missing files (exit 1 if any)")

    lst = sub.add_parser(
        "list",
        help="list contracts, equations and falsifiers",
        description="List every contract with its equations and falsifiers (ID, scope, rule).",
    )
    lst.add_argument("paths", nargs="*", default=None, metavar="PATH")
    lst.add_argument("--format", choices=("text", "json"), default="text")

    c = sub.add_parser(
        "check",
        help="validate, check freshness, run the falsifiers, print a conformance table",
        description="The main job: validate the contracts, check the generated suite is fresh, "
        "run every falsifier against the chosen backends and print a conformance table. "
        "Exit 0 when everything passes, 1 otherwise.",
    )
    c.add_argument(
        "--backend",
        default="all",
        metavar="NAMES",
        help="comma-separated backends (numpy, torch, torch-cuda, cupy, package.module:attribute), "
        "'cuda' for every CUDA backend, 'all' (default) for every backend that loads here",
    )
    c.add_argument("--contracts", default=None, metavar="DIR",
                   help="contracts directory (default: contracts/ here, else the contracts installed with spec)")
    c.add_argument(
        "--suite", metavar="DIR", help="generated suite (default: falsifiers/ beside the contracts)"
    )
    c.add_argument("--report", metavar="FILE",
                   help="also write a report to FILE (.json or .md): the table, run facts, and every failure "
                   "with its diagnosis, counterexample file and reproduction command")
    c.add_argument(
        "--hypothesis-profile",
        choices=profiles.PROFILES,
        help="how hard hypothesis searches (default: ci when CI=true, else dev; interpreter: few examples, for "
        "kernels run by an interpreter); see docs/porting.md",
    )
    c.add_argument("-k", dest="keyword", metavar="EXPR",
                   help="run only the falsifiers matching EXPR, e.g. -k F-KD-GRAD-001 or -k 'kd_loss and not GRAD'")
    c.add_argument("-x", "--exitfirst", action="store_true", help="stop at the first failure")
    c.add_argument("--max-examples", type=_positive, metavar="N",
                   help="at most N hypothesis examples per falsifier (fewer shapes: faster for ports that compile)")
    c.add_argument("--seed", type=int, metavar="N", help="hypothesis seed (default: a fresh one, printed; "
                   "the ci profile is derandomized)")
    c.add_argument("--once", action="store_true",
                   help="also run the falsifiers of scope 'once' (the project's own pipeline); they run by "
                   "default only with --backend all")
    c.add_argument("--failures-dir", metavar="DIR",
                   help="where counterexample files go (default: $KD_CONTRACTS_FAILURES or .kd-contracts/failures)")

    r = sub.add_parser(
        "replay",
        help="run one failed falsifier again on its saved counterexample",
        description="Run the falsifier a counterexample file names, on the exact values it failed on (no "
        "search), against the backend it failed on, and print the same report. Exit 0 when it now passes.",
    )
    r.add_argument("file", metavar="FILE", help="a counterexample file (.npz) a failed falsifier wrote")
    r.add_argument("--backend", metavar="NAMES", help="replay against this backend instead of the one it failed on")
    r.add_argument("--suite", metavar="DIR", help="generated suite (default: the one it failed in)")
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if hasattr(args, "paths") and not args.paths:
            args.paths = [default_contracts()]
        commands = {"validate": _validate, "generate": _generate, "list": _list, "check": _check, "replay": _replay}
        return commands[args.command](args)
    except UsageError as exc:
        print(f"python -m spec {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `| head`: stop quietly
        sys.stderr.close()
        return 1


def _print_validation(result: Validation, fmt: str = "text") -> None:
    if fmt == "json":
        print(to_json(len(result.contracts), result.n_falsifiers, result.diagnostics))
        return
    for d in result.diagnostics:
        print(d.format())
    print(summary_line(len(result.contracts), result.n_falsifiers, result.diagnostics))


def _validate(args: argparse.Namespace) -> int:
    if args.rules:
        for rule, what in RULES.items():
            print(f"{rule:26} {what}")
        return 0
    suite = None if args.no_suite_check else _suite_dir(args.paths, args.suite)
    result = validate(args.paths, generated_dir=suite)
    _print_validation(result, args.format)
    return 1 if result.errors else 0


def _generate(args: argparse.Namespace) -> int:
    from spec.generate import stale_files, write

    result = validate(args.paths)
    if result.errors:
        _print_validation(result)
        print("nothing generated: fix the errors above first", file=sys.stderr)
        return 1
    out = _suite_dir(args.paths, args.out)
    if args.check:
        stale = stale_files(result.contracts, out, scanned_directories(args.paths))
        for path, problem in stale:
            print(f"{path}: {problem}")
        if stale:
            print(f"{len(stale)} generated file(s) out of date: run `python -m spec generate`")
            return 1
        print(
            f"{len(result.contracts)} contracts, {result.n_falsifiers} falsifiers: the generated suite is fresh"
        )
        return 0
    written = write(result.contracts, out, scanned_directories(args.paths))
    for path in written:
        print(f"wrote {path}" if path.exists() else f"removed {path}")
    print(
        f"{len(result.contracts)} contracts, {result.n_falsifiers} falsifiers: "
        f"{len(written)} file(s) changed in {out}"
    )
    return 0


def _list(args: argparse.Namespace) -> int:
    result = validate(args.paths)
    if result.errors:
        _print_validation(result)
        return 1
    rows = []
    for c in result.contracts:
        rows.append(
            {
                "contract": c.name,
                "version": c.version,
                "path": c.doc.path,
                "equations": {
                    name: (eq or {}).get("formula") for name, eq in (c.data.get("equations") or {}).items()
                },
                "falsifiers": [
                    {
                        "id": f.id,
                        "scope": f.check.scope if f.check else ("once" if f.test else None),
                        "dtypes": list(f.check.dtypes) if f.check else [],
                        "rule": f.rule,
                        "test": f.test,
                        "requires": list(f.requires),
                    }
                    for f in c.falsifiers
                ],
            }
        )
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print(f"{row['contract']} (v{row['version']}, {row['path']})")
        for name, formula in row["equations"].items():
            print(f"  equation {name}: {' '.join(str(formula).split())}")
        for f in row["falsifiers"]:
            scope = "per backend" if f["scope"] == "per_backend" else ("test" if f["test"] else "once")
            if f["scope"] == "per_backend" and f["dtypes"] != ["float64"]:
                scope += f" ({', '.join(f['dtypes'])})"
            print(f"  {f['id']:<28} {scope:<14} {f['rule']}")
    print(f"{len(rows)} contracts, {result.n_falsifiers} falsifiers")
    return 0


def _check_args(args: argparse.Namespace) -> tuple[list[str], str]:
    """The pytest arguments ``spec check`` passes on, and a description of the search (profile, seed)."""
    import random

    from spec import profiles

    extra = ["--hypothesis-profile", args.hypothesis_profile] if args.hypothesis_profile else []
    if args.keyword:
        extra += ["-k", args.keyword.replace("-", "_")]  # test names spell F-KD-GRAD-001 as F_KD_GRAD_001
    if args.exitfirst:
        extra.append("-x")
    if args.max_examples:
        extra += ["--max-examples", str(args.max_examples)]
    try:
        profile = args.hypothesis_profile or profiles.default_profile()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    seed = args.seed
    if seed is None and profile != "ci":
        seed = random.randrange(2**32)
    if seed is not None:
        extra += ["--hypothesis-seed", str(seed)]
    if not args.once and "all" not in [t.strip() for t in args.backend.split(",")]:
        extra.append("--skip-once")
    if args.failures_dir:
        extra += ["--failures-dir", args.failures_dir]
    search = f"profile {profile}, " + (f"seed {seed}" if seed is not None else "derandomized")
    return extra, search


def _check(args: argparse.Namespace) -> int:
    from spec.conformance import run_suite, write_report

    if args.report and Path(args.report).suffix not in (".json", ".md"):
        raise UsageError(f"--report {args.report}: name a .json or .md file")
    contracts = args.contracts or default_contracts()
    suite = _suite_dir([contracts], args.suite)
    print(f"== validate {contracts}")
    result = validate([contracts], generated_dir=suite)
    _print_validation(result)
    if result.errors:
        print("Conformance: FAIL (the contracts or the generated suite are not valid; nothing was run)")
        return 1
    extra, search = _check_args(args)
    print(f"== run the falsifiers in {suite} (--backend {args.backend}; {search})")
    facts = {
        "command": " ".join(["python -m spec check", *sys.argv[2:]]) if sys.argv[1:2] == ["check"] else None,
        "contracts": {c.name: {"version": c.version, "sha256": c.doc.sha256} for c in result.contracts},
    }
    conformance = run_suite(suite, args.backend, extra, facts)
    if conformance.exit_code in (2, 3, 4) and not conformance.cells:
        print("Conformance: FAIL (the suite could not run: see the error above)")
        return 2 if conformance.exit_code == 4 else 1
    print("\n== conformance")
    print(conformance.table())
    if args.report:
        write_report(conformance, Path(args.report))
        print(f"report written to {args.report}")
    return 0 if conformance.ok else 1


def _replay(args: argparse.Namespace) -> int:
    import pytest

    from spec import replay

    path = Path(args.file)
    try:
        meta, _ = replay.load(path)
    except replay.ReplayError as exc:
        raise UsageError(str(exc)) from None
    suite = Path(args.suite or meta.get("suite") or _suite_dir([default_contracts()], None))
    if not suite.is_dir():
        raise UsageError(f"the suite {suite} that {path} failed in is gone: name one with --suite DIR")
    backend = args.backend or meta.get("backend")
    pytest_args = [str(suite), "-q", "-p", "no:cacheprovider", "--no-header", "-rfE", "--replay", str(path),
                   "--failures-dir", str(path.parent), "-W", "ignore::pytest.PytestAssertRewriteWarning"]
    if backend:
        pytest_args += ["--backend", backend]
    print(f"== replay {meta.get('falsifier')} on {meta.get('subject')} from {path}")
    code = int(pytest.main(pytest_args))
    if code == 5:
        print(f"nothing ran: {meta.get('falsifier')} on {meta.get('subject')} is not in {suite}", file=sys.stderr)
        return 1
    print(f"{meta.get('falsifier')} {'passes on' if code == 0 else 'still fails on'} the saved counterexample")
    return 0 if code == 0 else 1
