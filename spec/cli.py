"""Command line: ``python -m spec {validate,generate,list,check}``.

Exit codes: 0 success, 1 the contracts (or the backends under test) fail, 2 a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from spec.diagnostics import summary_line, to_json
from spec.validate import RULES, UsageError, Validation, scanned_directories, validate

DEFAULT_CONTRACTS = "contracts"


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
        default=[DEFAULT_CONTRACTS],
        metavar="PATH",
        help="contract files or directories (default: contracts/)",
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
    g.add_argument("paths", nargs="*", default=[DEFAULT_CONTRACTS], metavar="PATH")
    g.add_argument(
        "--out", metavar="DIR", help="output directory (default: falsifiers/ beside the contracts)"
    )
    g.add_argument("--check", action="store_true", help="only report stale or missing files (exit 1 if any)")

    lst = sub.add_parser(
        "list",
        help="list contracts, equations and falsifiers",
        description="List every contract with its equations and falsifiers (ID, scope, rule).",
    )
    lst.add_argument("paths", nargs="*", default=[DEFAULT_CONTRACTS], metavar="PATH")
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
    c.add_argument("--contracts", default=DEFAULT_CONTRACTS, metavar="DIR", help="contracts directory")
    c.add_argument(
        "--suite", metavar="DIR", help="generated suite (default: falsifiers/ beside the contracts)"
    )
    c.add_argument("--report", metavar="FILE", help="also write the table to FILE (.json or .md)")
    c.add_argument(
        "--hypothesis-profile",
        choices=("ci", "dev", "thorough"),
        help="how hard hypothesis searches (default: ci when CI=true, else dev)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"validate": _validate, "generate": _generate, "list": _list, "check": _check}[args.command](
            args
        )
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
                        "scope": f.check.scope if f.check else None,
                        "dtypes": list(f.check.dtypes) if f.check else [],
                        "rule": f.rule,
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
            scope = "per backend" if f["scope"] == "per_backend" else "once"
            if f["scope"] == "per_backend" and f["dtypes"] != ["float64"]:
                scope += f" ({', '.join(f['dtypes'])})"
            print(f"  {f['id']:<28} {scope:<14} {f['rule']}")
    print(f"{len(rows)} contracts, {result.n_falsifiers} falsifiers")
    return 0


def _check(args: argparse.Namespace) -> int:
    from spec.conformance import run_suite, write_report

    if args.report and Path(args.report).suffix not in (".json", ".md"):
        raise UsageError(f"--report {args.report}: name a .json or .md file")
    suite = _suite_dir([args.contracts], args.suite)
    print(f"== validate {args.contracts}")
    result = validate([args.contracts], generated_dir=suite)
    _print_validation(result)
    if result.errors:
        print("Conformance: FAIL (the contracts or the generated suite are not valid; nothing was run)")
        return 1
    print(f"== run the falsifiers in {suite} (--backend {args.backend})")
    extra = ["--hypothesis-profile", args.hypothesis_profile] if args.hypothesis_profile else []
    conformance = run_suite(suite, args.backend, extra)
    if conformance.exit_code in (2, 3, 4) and not conformance.cells:
        print("Conformance: FAIL (the suite could not run: see the error above)")
        return 2 if conformance.exit_code == 4 else 1
    if not conformance.cells:
        conformance.failures.append("no falsifier ran")
    print("\n== conformance")
    print(conformance.table())
    if args.report:
        write_report(conformance, Path(args.report))
        print(f"report written to {args.report}")
    return 0 if conformance.ok else 1
