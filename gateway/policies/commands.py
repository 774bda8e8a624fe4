"""``gateway policy check|test|explain|schema``: what compliance staff run before a change.

- ``check [FILE]``: every mistake in the file, one per line, as
  ``FILE:LINE:COL: message``, and every failing case of its own tests when it
  requires them; exit 0 when a running gateway would put the file live, 1
  otherwise (the same check as the reload and ``POST /admin/policy/validate``).
- ``test [FILE] [--cases DIR]``: run the YAML cases (default: the directories the
  policy names in ``settings.tests``); list failures with their case file and
  line; exit 1 on any failure. Rules that no case exercises are listed as a warning.
- ``explain --client ID [--purpose P] --upstream NAME (--route R | --path P)
  [--outcome O] [FILE]``: the decision for one lookup, and every rule that matched
  with its line in the file, its reason and its source.
- ``schema``: the JSON Schema of the policy file, for editors.

``FILE`` defaults to the policy file of the settings (``GATEWAY_POLICIES``, else
``policies.yaml`` in the current directory). The main CLI calls
:func:`register` with its subparsers; each subcommand sets ``func`` (args -> exit code).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from gateway.policies.admission import admit_policy, case_dirs
from gateway.policies.compile import CompiledPolicy, compile_policy
from gateway.policies.evaluate import evaluate
from gateway.policies.loader import PolicyError, PolicySource, read_policy, read_policy_bytes
from gateway.policies.model import OUTCOMES, Decision, LookupContext
from gateway.policies.schema import schema_json
from gateway.policies.testing import (
    CaseResult,
    decision_kind,
    route_template,
    run_cases,
    uncovered,
)

__all__ = ["SHIPPED_POLICY", "explain_text", "register"]

#: The policy shipped in the package, beside the cases it names (policy-tests/).
SHIPPED_POLICY = Path(__file__).resolve().parent.parent / "demo" / "policies.yaml"


def _default_policy_file() -> str:
    from gateway.settings import resolve

    return str(resolve().policies)


def _shipped_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shipped",
        action="store_true",
        help="use the policy shipped inside the package (with its test cases), "
        "e.g. to check an installation",
    )


def _policy_file(args: argparse.Namespace) -> str:
    if getattr(args, "shipped", False):
        return str(SHIPPED_POLICY)
    return str(args.file or _default_policy_file())


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``policy`` and its subcommands to the main CLI."""
    policy = subparsers.add_parser(
        "policy",
        help="check, test and explain the policy file",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    policy.set_defaults(func=lambda args: _usage(policy))
    sub = policy.add_subparsers(
        dest="policy_command", metavar="{check,test,explain,schema,replay,apply,ropa}"
    )

    check = sub.add_parser("check", help="list every mistake in the policy file")
    check.add_argument("file", nargs="?", default=None, help="policy file")
    _shipped_flag(check)
    check.set_defaults(func=cmd_check)

    test = sub.add_parser("test", help="run the YAML policy test cases")
    test.add_argument("file", nargs="?", default=None, help="policy file")
    test.add_argument(
        "--cases",
        type=Path,
        default=None,
        help="directory of case files (default: those the policy names in settings.tests)",
    )
    test.add_argument("-v", "--verbose", action="store_true", help="list passing cases too")
    _shipped_flag(test)
    test.set_defaults(func=cmd_test)

    explain = sub.add_parser("explain", help="show how one lookup would be decided, and why")
    explain.add_argument("file", nargs="?", default=None, help="policy file")
    explain.add_argument("--client", required=True, help="client id, e.g. crm")
    explain.add_argument("--purpose", help="purpose (default: the client's default purpose)")
    explain.add_argument("--upstream", required=True, help="upstream name, e.g. klout")
    where = explain.add_mutually_exclusive_group(required=True)
    where.add_argument("--route", help="route template, e.g. /v2/user.json/{kloutId}/score")
    where.add_argument("--path", help="request path, e.g. /v2/user.json/5001/score")
    explain.add_argument("--outcome", choices=OUTCOMES, help="what the upstream said")
    explain.add_argument(
        "--attribute",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="request attribute (repeatable)",
    )
    explain.set_defaults(func=cmd_explain)

    schema = sub.add_parser("schema", help="print the JSON Schema of the policy file")
    schema.set_defaults(func=cmd_schema)

    from gateway.policies import change_commands

    change_commands.register(sub)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _load(file: str | None, err: TextIO) -> CompiledPolicy | None:
    file = file or _default_policy_file()
    try:
        return compile_policy(read_policy(file))
    except PolicyError as exc:
        _print_problems(exc, file, err)
        return None


def _print_problems(exc: PolicyError, file: str, err: TextIO) -> None:
    for line in exc.lines():
        print(line, file=err)
    count = len(exc.problems)
    print(f"{count} problem{'s' if count != 1 else ''} in {file}; nothing was changed", file=err)


def cmd_check(args: argparse.Namespace) -> int:
    file = _policy_file(args)
    try:
        admitted = admit_policy(read_policy_bytes(file), file)
    except PolicyError as exc:
        _print_problems(exc, file, sys.stderr)
        return 1
    policy = admitted.policy
    tested = (
        f", {admitted.cases_passed} test cases pass"
        if policy.policy.settings.require_tests
        else " (require_tests is off: its cases were not run)"
    )
    print(f"{file}: OK, version {policy.version}, {len(policy.rules)} rules{tested}")
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    file = _policy_file(args)
    try:
        source = read_policy(file)
        policy = compile_policy(source)
    except PolicyError as exc:
        _print_problems(exc, file, sys.stderr)
        return 1
    if args.cases is not None:
        if not args.cases.is_dir():
            print(f"no case directory at {args.cases}", file=sys.stderr)
            return 1
        dirs: list[Path] = [args.cases]
    else:
        named = _named_dirs(source, file)
        if named is None:
            return 1
        dirs = named
    results: list[CaseResult] = []
    for directory in dirs:
        results.extend(run_cases(policy, directory))
    if not results:
        print(f"no cases found in {', '.join(str(d) for d in dirs)}", file=sys.stderr)
        return 1
    failed = [r for r in results if not r.passed]
    for result in results:
        if args.verbose or not result.passed:
            print(result.render())
    missing = uncovered(policy, results)
    if missing:
        print("warning: no case exercises these rules: " + ", ".join(missing))
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed ({policy.version})")
    return 1 if failed else 0


def _named_dirs(source: PolicySource, file: str) -> list[Path] | None:
    if not source.policy.settings.tests:
        print(
            f"{file} names no test cases (settings.tests); give a directory with --cases DIR",
            file=sys.stderr,
        )
        return None
    dirs, problems = case_dirs(source, Path(file).parent)
    for problem in problems:
        print(problem.render(file), file=sys.stderr)
    return None if problems else dirs


def cmd_explain(args: argparse.Namespace) -> int:
    policy = _load(args.file, sys.stderr)
    if policy is None:
        return 1
    client = policy.clients.get(args.client)
    purpose = args.purpose or (client.default_purpose if client else None)
    if purpose is None:
        print(
            f"give --purpose: the client '{args.client}' has no default purpose",
            file=sys.stderr,
        )
        return 1
    attributes: dict[str, str] = {}
    for item in args.attribute:
        name, sep, value = item.partition("=")
        if not sep:
            print(f"--attribute takes NAME=VALUE, got '{item}'", file=sys.stderr)
            return 1
        attributes[name] = value
    route = args.route or route_template(policy, args.upstream, args.path)
    context = LookupContext(
        client=args.client,
        client_kind=client.kind if client else "",
        purpose=purpose,
        upstream=args.upstream,
        route=route,
        attributes=attributes,
        outcome=args.outcome,
    )
    print(explain_text(context, evaluate(context, policy), policy))
    return 0


def explain_text(context: LookupContext, decision: Decision, policy: CompiledPolicy) -> str:
    """The decision and every matched rule, with its file line, reason and source."""
    outcome = context.outcome or "not yet asked"
    lines = [
        f"lookup:   client {context.client} ({context.client_kind or 'unknown kind'}), "
        f"purpose {context.purpose}, upstream {context.upstream}, route {context.route}, "
        f"outcome {outcome}",
        f"decision: {decision_kind(decision).upper()}"
        + (f" by {decision.deny.id}" if decision.deny else ""),
        f"policy:   {policy.path} version {decision.policy_version}",
    ]
    effects = []
    if decision.coarsen:
        effects.append("score shown as its band only")
    if decision.redact:
        effects.append("fields removed: " + ", ".join(decision.redact))
    for rule_id, limit in decision.limits:
        parts = []
        if limit.calls_per_second is not None:
            parts.append(f"{limit.calls_per_second:g}/s")
        if limit.calls_per_day is not None:
            parts.append(f"{limit.calls_per_day}/day")
        effects.append(f"limit {' and '.join(parts)} per {limit.per} ({rule_id})")
    if effects and decision.allowed:
        lines.append("effects:  " + "; ".join(effects))
    if not decision.matched:
        lines.append("matched:  no rule; the lookup is allowed as asked")
        return "\n".join(lines)
    lines.append("matched rules, in file order:")
    for rule in decision.matched:
        where = f"{policy.path}:{rule.line}" if rule.line else "built in"
        lines.append(f"  {rule.id} [{rule.action}] ({where})")
        lines.append(f"      reason: {rule.reason}")
        lines.append(f"      source: {rule.source}")
    return "\n".join(lines)


def cmd_schema(args: argparse.Namespace) -> int:
    sys.stdout.write(schema_json())
    return 0
