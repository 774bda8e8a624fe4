"""Policy test cases in YAML, for ``gateway policy test``: change the policy, run the cases.

Like ``opa test``, but no programming is needed to add a case. A case file holds a
list under ``cases:``; each case names a request and what the policy must decide::

    cases:
      - name: an HR system is refused, whatever it declares
        request:
          client: ats
          purpose: sales                       # optional: the client's default
          upstream: klout
          route: /v2/user.json/{kloutId}/score # or path: /v2/user.json/5001/score
          outcome: missing                     # optional: found, missing, pending, ...
          attributes: {jurisdiction: EU}       # optional
        expect:
          decision: deny                       # allow, deny or neutralize
          rules: [deny-hr-clients, limit-klout-terms]   # optional: exactly these matched
          denied_by: deny-hr-clients           # optional
          coarsen: false                       # optional
          redact: [scoreDelta]                 # optional: exactly these fields
          limits: [limit-klout-terms]          # optional: exactly these limit rules

``decision: neutralize`` means allowed with the neutral score; ``allow`` means
allowed with the real one. The order of ``rules`` does not matter.

A policy names its own cases (``settings.tests``, directories relative to the
policy file; the shipped policy's are in ``policy-tests/``). A running gateway
puts a changed file live only if they pass (``require_tests``), and ``pytest`` runs
the shipped ones too, so a change that breaks a case fails the build as well.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl

import msgspec

from gateway.policies.compile import POLICY_RULES, CompiledPolicy
from gateway.policies.evaluate import evaluate
from gateway.policies.loader import check_shape, problem_from_msgspec
from gateway.policies.model import Decision, LookupContext, Outcome
from gateway.policies.yamlsource import Problem, YamlSourceError, read_yaml

__all__ = [
    "CaseResult",
    "decision_kind",
    "route_template",
    "run_cases",
    "uncovered",
]


class _Strict(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class CaseRequest(_Strict, frozen=True, kw_only=True):
    """The lookup of a case. ``route`` is a route template; ``path`` a concrete path."""

    client: str
    upstream: str
    purpose: str | None = None
    client_kind: str | None = None
    route: str | None = None
    path: str | None = None
    outcome: Outcome | None = None
    attributes: dict[str, str] = {}


class CaseExpect(_Strict, frozen=True, kw_only=True):
    """What the policy must decide. Fields left out are not checked."""

    decision: Literal["allow", "deny", "neutralize"]
    rules: list[str] | None = None
    denied_by: str | None = None
    coarsen: bool | None = None
    redact: list[str] | None = None
    limits: list[str] | None = None


class Case(_Strict, frozen=True, kw_only=True):
    name: str
    request: CaseRequest
    expect: CaseExpect


class CaseFile(_Strict, frozen=True, kw_only=True):
    cases: list[Case]


@dataclass(frozen=True)
class CaseResult:
    """One case's verdict. ``failures`` say what differed, in plain words."""

    name: str
    file: str
    line: int
    failures: tuple[str, ...] = ()
    decision: Decision | None = field(default=None, compare=False)
    col: int = 1

    @property
    def passed(self) -> bool:
        return not self.failures

    def render(self) -> str:
        head = f"{self.file}:{self.line}: {'PASS' if self.passed else 'FAIL'}: {self.name}"
        return "\n".join([head, *(f"    {f}" for f in self.failures)])


def decision_kind(decision: Decision) -> str:
    """``deny``, ``neutralize`` (allowed, neutral score) or ``allow``."""
    if not decision.allowed:
        return "deny"
    return "neutralize" if decision.neutralize else "allow"


def route_template(policy: CompiledPolicy, upstream: str, path: str) -> str:
    """The route template the upstream's adapter gives ``path`` (``/v2/user.json/5001``
    -> ``/v2/user.json/{kloutId}``); the path itself if no adapter can tell."""
    raw_path, _, raw_query = path.partition("?")
    query = parse_qsl(raw_query, keep_blank_values=True)
    entry = policy.upstreams.get(upstream)
    if entry is None:
        return raw_path
    adapter: Any = None
    try:
        # Imported by name so this module works (and type-checks) without the adapters.
        # The key only signs the gateway's own neutral ids; any key gives the same
        # route templates.
        registry = importlib.import_module("gateway.upstreams.registry")
        adapter = registry.build_adapter(entry, bytes(32))
    except Exception:  # noqa: BLE001 - any failure means "no adapter": use the path
        adapter = None
    if adapter is None:
        return raw_path
    try:
        match = adapter.match("GET", raw_path, query)
    except Exception:  # noqa: BLE001 - an invalid subject still names no route
        return raw_path
    template = getattr(match, "template", None)
    return template if isinstance(template, str) else raw_path


def _load_cases(path: Path) -> tuple[list[tuple[Case, tuple[int, int]]], list[Problem]]:
    try:
        located = read_yaml(path.read_text(encoding="utf-8"))
    except YamlSourceError as exc:
        return [], exc.problems
    except (OSError, UnicodeDecodeError) as exc:
        return [], [Problem("file.unreadable", f"cannot read the case file ({exc})", 1, 1)]
    problems = list(located.problems)
    if located.data is None:
        return [], problems
    check_shape(located.data, CaseFile, "$", located, problems)
    if problems:
        return [], problems
    try:
        case_file = msgspec.convert(located.data, CaseFile)
    except msgspec.ValidationError as exc:
        return [], [problem_from_msgspec(exc, located)]
    return [(case, located.where(f"$.cases[{i}]")) for i, case in enumerate(case_file.cases)], []


def case_files(cases_dir: Path) -> list[Path]:
    """Every ``*.yaml``/``*.yml`` under ``cases_dir``, in a stable order."""
    return sorted(p for p in cases_dir.rglob("*") if p.suffix in (".yaml", ".yml"))


def run_cases(policy: CompiledPolicy, cases_dir: str | Path) -> list[CaseResult]:
    """Run every case under ``cases_dir`` against ``policy``; one result per case.

    A case file that cannot be read gives one failing result per problem, at its line.
    """
    results: list[CaseResult] = []
    for path in case_files(Path(cases_dir)):
        cases, problems = _load_cases(path)
        for problem in problems:
            results.append(
                CaseResult(
                    name="(case file)",
                    file=str(path),
                    line=problem.line,
                    failures=(f"{path}:{problem.line}:{problem.col}: {problem.message}",),
                    col=problem.col,
                )
            )
        for case, (line, col) in cases:
            results.append(run_case(policy, case, str(path), line, col))
    return results


def run_case(policy: CompiledPolicy, case: Case, file: str, line: int, col: int = 1) -> CaseResult:
    """Decide one case and compare with what it expects."""
    request = case.request
    failures: list[str] = []
    # An unknown client is a legitimate case (it must be refused); it only needs
    # an explicit purpose, as it has no default.
    client = policy.clients.get(request.client)
    purpose = request.purpose or (client.default_purpose if client else None)
    if purpose is None:
        failures.append("the case gives no purpose and the client has no default_purpose")
    if (request.route is None) == (request.path is None):
        failures.append("the request needs exactly one of 'route' or 'path'")
    if failures or purpose is None:
        return CaseResult(case.name, file, line, tuple(failures), col=col)
    route = request.route or route_template(policy, request.upstream, request.path or "")
    context = LookupContext(
        client=request.client,
        client_kind=request.client_kind or (client.kind if client else ""),
        purpose=purpose,
        upstream=request.upstream,
        route=route,
        attributes=dict(request.attributes),
        outcome=request.outcome,
    )
    decision = evaluate(context, policy)
    expect = case.expect
    got = decision_kind(decision)
    if got != expect.decision:
        failures.append(f"expected {expect.decision}, got {got}")
    matched = list(decision.rule_ids)
    if expect.rules is not None and sorted(expect.rules) != sorted(matched):
        missing = [r for r in expect.rules if r not in matched]
        extra = [r for r in matched if r not in expect.rules]
        detail = []
        if missing:
            detail.append("did not match " + ", ".join(missing))
        if extra:
            detail.append("also matched " + ", ".join(extra))
        failures.append("rules differ: " + "; ".join(detail))
    if expect.denied_by is not None:
        denied_by = decision.deny.id if decision.deny else None
        if denied_by != expect.denied_by:
            failures.append(f"expected denial by {expect.denied_by}, got {denied_by or 'none'}")
    if expect.coarsen is not None and expect.coarsen != decision.coarsen:
        failures.append(
            f"expected coarsen {str(expect.coarsen).lower()}, got {str(decision.coarsen).lower()}"
        )
    if expect.redact is not None and sorted(expect.redact) != sorted(decision.redact):
        failures.append(
            f"expected redact [{', '.join(expect.redact)}], got [{', '.join(decision.redact)}]"
        )
    limits = [rule_id for rule_id, _ in decision.limits]
    if expect.limits is not None and sorted(expect.limits) != sorted(limits):
        failures.append(f"expected limits [{', '.join(expect.limits)}], got [{', '.join(limits)}]")
    if failures:
        failures.append("matched: " + (", ".join(matched) or "no rule"))
    return CaseResult(case.name, file, line, tuple(failures), decision, col)


def uncovered(policy: CompiledPolicy, results: Iterable[CaseResult]) -> list[str]:
    """Rules of the policy (file rules and vendor-terms rules) that no passing case matched."""
    seen = {
        rule_id
        for result in results
        if result.passed and result.decision is not None
        for rule_id in result.decision.rule_ids
    }
    return [r.id for r in policy.rules if r.id not in seen and r.id not in POLICY_RULES]
