"""Read ``policies.yaml`` into the model, reporting every mistake with its line and column.

Reading is four steps, and every step reports all the problems it finds before
the next one runs, so one ``gateway policy check`` lists everything to fix:

1. YAML: syntax errors, duplicate keys (which PyYAML would otherwise silently
   resolve to the last one), merge keys (``yamlsource.read_yaml``);
2. shape: unknown fields (with "did you mean ...?"), missing fields, values of the
   wrong kind, walked against the msgspec model;
3. decode: ``msgspec.convert(data, Policy)``; decoding is validation, and any error
   it still finds is mapped from its path (``$.rules[3].when``) back to line:col;
4. meaning: purposes outside the vocabulary, rules naming unknown clients or
   upstreams, duplicate ids, bad durations, actions missing their fields, ...

The policy **version** is ``sha256:`` + the hex digest of the canonical JSON
encoding of the decoded policy (msgspec, ``order="deterministic"``). It depends
only on what the policy says: comments, blank lines, indentation, key order and
quoting style do not change it.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin
from urllib.parse import urlsplit

import msgspec

from gateway.policies.model import Client, Policy, Rule, Upstream
from gateway.policies.yamlsource import Located, Problem, YamlSourceError, child_path, read_yaml

__all__ = [
    "KNOWN_ADAPTERS",
    "PURPOSE_PATTERN",
    "PolicyError",
    "PolicySource",
    "Problem",
    "parse_duration",
    "parse_policy",
    "policy_version",
    "read_policy",
    "read_policy_bytes",
]

#: Purpose identifiers are lowercase dotted words, exactly: ``employment.recruitment``.
PURPOSE_PATTERN = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)*")
_DURATION = re.compile(r"([1-9][0-9]*)([dhms])")
_DURATION_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_RULE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_UPSTREAM_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
_KEY_HASH = re.compile(r"sha256:[0-9a-f]{64}")
#: Rule ids the gateway makes itself (vendor terms, unknown callers); not for the file.
RESERVED_RULE_PREFIXES = ("terms.", "policy.")

#: Adapters this gateway ships. ``generic`` is configured by the upstream's ``generic:``.
KNOWN_ADAPTERS = ("klout", "generic")

_version_encoder = msgspec.json.Encoder(order="deterministic")


class PolicyError(Exception):
    """A policy file that cannot be used; ``problems`` lists every mistake found."""

    def __init__(self, problems: list[Problem], filename: str = "policies.yaml") -> None:
        # The policy file's own problems first, then those in its test case files.
        self.problems = sorted(problems, key=lambda p: (p.file or "", p.line, p.col))
        self.filename = filename
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        """Each problem as ``FILE:LINE:COL: message``."""
        return [p.render(self.filename) for p in self.problems]


@dataclass(frozen=True)
class PolicySource:
    """A decoded policy plus what it takes to explain it: version and source lines."""

    policy: Policy
    version: str
    path: str
    # rule id -> line of the rule in the file (1-based)
    rule_lines: Mapping[str, int] = field(default_factory=dict)
    # upstream name -> line of its ``terms.banned_purposes`` (for implicit rules)
    terms_lines: Mapping[str, int] = field(default_factory=dict)
    # (line, col) of ``settings.tests`` (or the nearest thing written), for the
    # problems of the policy's own test cases
    tests_at: tuple[int, int] = (1, 1)


def policy_version(policy: Policy) -> str:
    """``sha256:<hex>`` of the canonical encoding: the same policy always has the same
    version, however it is formatted or commented."""
    return "sha256:" + hashlib.sha256(_version_encoder.encode(policy)).hexdigest()


def parse_duration(text: str) -> int | None:
    """Seconds in ``7d``, ``24h``, ``30m`` or ``60s``; ``None`` if not of that form."""
    match = _DURATION.fullmatch(text)
    if match is None:
        return None
    return int(match.group(1)) * _DURATION_SECONDS[match.group(2)]


def read_policy(path: str | Path) -> PolicySource:
    """Read and check a policy file; raise :class:`PolicyError` listing every problem."""
    return parse_policy(read_policy_bytes(path), filename=str(path))


def read_policy_bytes(path: str | Path) -> bytes:
    """The bytes of a policy file; a missing or unreadable file is a :class:`PolicyError`."""
    filename = str(path)
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise PolicyError(
            [Problem("file.missing", "the policy file does not exist; check the path", 1, 1)],
            filename,
        ) from None
    except OSError as exc:
        raise PolicyError(
            [Problem("file.unreadable", f"the policy file cannot be read ({exc.strerror})", 1, 1)],
            filename,
        ) from None


def parse_policy(text: str | bytes, *, filename: str = "policies.yaml") -> PolicySource:
    """Check policy text; return it decoded, or raise :class:`PolicyError` with all problems."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PolicyError(
                [
                    Problem(
                        "file.encoding",
                        f"the file is not UTF-8 text (byte {exc.start}); save it as UTF-8",
                        1,
                        1,
                    )
                ],
                filename,
            ) from None
    try:
        located = read_yaml(text)
    except YamlSourceError as exc:
        raise PolicyError(exc.problems, filename) from None

    if not isinstance(located.data, dict):
        got = "an empty file" if located.data is None else _describe_value(located.data)
        line, col = located.where("$")
        raise PolicyError(
            [
                Problem(
                    "policy.shape",
                    f"the policy must be a mapping with 'purposes', 'upstreams' and "
                    f"'rules', but it is {got}",
                    line,
                    col,
                )
            ],
            filename,
        )

    problems: list[Problem] = list(located.problems)
    check_shape(located.data, Policy, "$", located, problems)
    checker = _Meaning(located, problems)
    checker.run()

    policy: Policy | None = None
    if not problems:
        try:
            policy = msgspec.convert(located.data, Policy)
        except msgspec.ValidationError as exc:
            problems.append(problem_from_msgspec(exc, located))
    if problems or policy is None:
        raise PolicyError(problems, filename)

    rule_lines = {rule.id: located.where(f"$.rules[{i}]")[0] for i, rule in enumerate(policy.rules)}
    terms_lines = {
        up.name: located.where(f"$.upstreams[{i}].terms.banned_purposes", key=True)[0]
        for i, up in enumerate(policy.upstreams)
    }
    return PolicySource(
        policy=policy,
        version=policy_version(policy),
        path=filename,
        rule_lines=rule_lines,
        terms_lines=terms_lines,
        tests_at=located.where("$.settings.tests", key=True),
    )


# -- step 2: shape ---------------------------------------------------------------------

_THING: dict[type, str] = {
    Policy: "the policy file",
    Client: "a client",
    Upstream: "an upstream",
    Rule: "a rule",
}


def _thing(cls: type) -> str:
    if cls in _THING:
        return _THING[cls]
    return f"'{cls.__name__.lower()}'"


_MSGSPEC_PATH = re.compile(r" - at `(\$[^`]*)`$")


def problem_from_msgspec(exc: msgspec.ValidationError, located: Located) -> Problem:
    """A msgspec error (``Expected `str`, got `int` - at `$.rules[3].when```) at its
    line:col."""
    message = str(exc)
    match = _MSGSPEC_PATH.search(message)
    path = match.group(1) if match else "$"
    text = message[: match.start()] if match else message
    line, col = located.where(path)
    return Problem("policy.invalid", f"{text} (at {path})", line, col)


def check_shape(value: Any, tp: Any, path: str, located: Located, problems: list[Problem]) -> None:
    """Walk ``value`` against the type ``tp`` and report every mismatch, not just the first.

    msgspec stops at its first error; this walker reports all of them, in plain words.
    """
    origin = get_origin(tp)
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        _check_struct(value, tp, path, located, problems)
    elif origin in (types.UnionType, typing.Union):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(get_args(tp)):
            return
        for arg in args:
            if (get_origin(arg) is list and isinstance(value, list)) or (
                get_origin(arg) is dict and isinstance(value, dict)
            ):
                check_shape(value, arg, path, located, problems)
                return
            if (
                isinstance(arg, type)
                and issubclass(arg, msgspec.Struct)
                and isinstance(value, dict)
            ):
                check_shape(value, arg, path, located, problems)
                return
        for arg in args:
            if _leaf_ok(value, arg):
                return
        _wrong(value, tp, path, located, problems)
    elif origin is list:
        if not isinstance(value, list):
            _wrong(value, tp, path, located, problems)
            return
        (item_type,) = get_args(tp)
        for i, item in enumerate(value):
            check_shape(item, item_type, f"{path}[{i}]", located, problems)
    elif origin is dict:
        if not isinstance(value, dict):
            _wrong(value, tp, path, located, problems)
            return
        _, value_type = get_args(tp)
        for key, item in value.items():
            check_shape(item, value_type, child_path(path, key), located, problems)
    elif not _leaf_ok(value, tp):
        _wrong(value, tp, path, located, problems)


def _check_struct(
    value: Any, cls: type[msgspec.Struct], path: str, located: Located, problems: list[Problem]
) -> None:
    if not isinstance(value, dict):
        _wrong(value, cls, path, located, problems)
        return
    fields = {f.encode_name: f for f in msgspec.structs.fields(cls)}
    suggested: set[str] = set()
    for key in value:
        if key not in fields:
            line, col = located.where(child_path(path, key), key=True)
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            suggested.update(close)
            hint = f"did you mean '{close[0]}'? " if close else ""
            problems.append(
                Problem(
                    "policy.unknown_field",
                    f"unknown field '{key}' in {_thing(cls)}; {hint}"
                    f"expected one of: {', '.join(fields)}",
                    line,
                    col,
                )
            )
    for name, info in fields.items():
        if name in value:
            check_shape(value[name], info.type, child_path(path, name), located, problems)
        elif info.required and name not in suggested:
            # (A misspelling of a required field is reported once, as the misspelling.)
            line, col = located.where(path)
            problems.append(
                Problem(
                    "policy.missing_field",
                    f"{_thing(cls)} is missing the field '{name}' ({describe_type(info.type)})",
                    line,
                    col,
                )
            )


def _leaf_ok(value: Any, tp: Any) -> bool:
    if get_origin(tp) is Literal:
        return value in get_args(tp) and isinstance(value, str)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if tp is bool:
        return isinstance(value, bool)
    if get_origin(tp) in (list, dict):
        return False
    try:
        msgspec.convert(value, tp)
    except msgspec.ValidationError:
        return False
    return True


def _wrong(value: Any, tp: Any, path: str, located: Located, problems: list[Problem]) -> None:
    line, col = located.where(path)
    hint = ""
    literals = _literals(tp)
    if literals and isinstance(value, str):
        close = difflib.get_close_matches(value, literals, n=1, cutoff=0.6)
        if close:
            hint = f"; did you mean '{close[0]}'?"
    problems.append(
        Problem(
            "policy.wrong_type",
            f"'{path.rsplit('.', 1)[-1]}' is {_describe_value(value)}, but it must be "
            f"{describe_type(tp)}{hint}",
            line,
            col,
        )
    )


def _literals(tp: Any) -> list[str]:
    if get_origin(tp) is Literal:
        return [str(a) for a in get_args(tp)]
    if get_origin(tp) in (types.UnionType, typing.Union, list):
        return [lit for arg in get_args(tp) for lit in _literals(arg)]
    return []


def describe_type(tp: Any) -> str:
    """A type in plain words: ``text or a list of text``."""
    origin = get_origin(tp)
    if tp is str:
        return "text"
    if tp is int:
        return "a whole number"
    if tp is float:
        return "a number"
    if tp is bool:
        return "true or false"
    if tp is type(None):
        return "empty"
    if origin is Literal:
        return "one of: " + ", ".join(str(a) for a in get_args(tp))
    if origin is list:
        return f"a list of {_plural(describe_type(get_args(tp)[0]))}"
    if origin is dict:
        return f"a mapping of names to {_plural(describe_type(get_args(tp)[1]))}"
    if origin in (types.UnionType, typing.Union):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 2 and get_origin(args[1]) is list and get_args(args[1])[0] == args[0]:
            return f"{describe_type(args[0])}, or a list of them"
        return " or ".join(describe_type(a) for a in args)
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        names = ", ".join(f.encode_name for f in msgspec.structs.fields(tp))
        return f"a mapping with the fields {names}"
    return str(tp)  # pragma: no cover - every model type is handled above


def _plural(words: str) -> str:
    for article in ("a ", "an "):
        if words.startswith(article):
            return words[len(article) :] + "s"
    return words


def _describe_value(value: Any) -> str:
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return f"{str(value).lower()} (true/false)"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the text '{value}'"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__  # pragma: no cover


# -- step 4: meaning ---------------------------------------------------------------------


class _Meaning:
    """Checks that need the whole file: references, uniqueness, formats."""

    def __init__(self, located: Located, problems: list[Problem]) -> None:
        self.located = located
        self.problems = problems
        self.data: dict[str, Any] = located.data
        self.vocabulary: set[str] = set()
        self.client_ids: set[str] = set()
        self.upstream_names: set[str] = set()

    def add(self, code: str, message: str, path: str, *, key: bool = False) -> None:
        line, col = self.located.where(path, key=key)
        self.problems.append(Problem(code, message, line, col))

    def items(self, section: str, cls: type[Any]) -> Iterable[tuple[int, Any]]:
        """The entries of a section that decode on their own (others are already reported)."""
        entries = self.data.get(section)
        if not isinstance(entries, list):
            return []
        good = []
        for i, entry in enumerate(entries):
            decoded = _lenient_convert(entry, cls)
            if decoded is not None:
                good.append((i, decoded))
        return good

    def run(self) -> None:
        self.check_vocabulary()
        clients = list(self.items("clients", Client))
        upstreams = list(self.items("upstreams", Upstream))
        self.client_ids = {c.id for _, c in clients}
        self.upstream_names = {u.name for _, u in upstreams}
        # Rules may name clients and upstreams whose entries are broken; those are
        # reported once, where they are broken, not again at every reference.
        for section, key in (("clients", "id"), ("upstreams", "name")):
            for entry in self.data.get(section) or []:
                if isinstance(entry, dict) and isinstance(entry.get(key), str):
                    (self.client_ids if section == "clients" else self.upstream_names).add(
                        entry[key]
                    )
        self.check_clients(clients)
        self.check_upstreams(upstreams)
        self.check_rules(list(self.items("rules", Rule)))
        self.check_objections()
        self.check_audit()

    def check_audit(self) -> None:
        audit = self.data.get("audit")
        retention = audit.get("retention") if isinstance(audit, dict) else None
        if isinstance(retention, str) and parse_duration(retention) is None:
            self.add(
                "duration.invalid",
                f"'{retention}' is not a duration; write a whole number and a unit, "
                "such as '400d' (days)",
                "$.audit.retention",
            )

    def check_vocabulary(self) -> None:
        purposes = self.data.get("purposes")
        if not isinstance(purposes, dict):
            return
        for name in purposes:
            path = child_path("$.purposes", name)
            if not isinstance(name, str) or not PURPOSE_PATTERN.fullmatch(name):
                self.add(
                    "purpose.invalid_name",
                    f"'{name}' is not a valid purpose name; use lowercase words joined by "
                    "dots, such as 'employment.recruitment'",
                    path,
                    key=True,
                )
                continue
            self.vocabulary.add(name)
        for name in sorted(self.vocabulary):
            parent = name.rpartition(".")[0]
            if parent and parent not in self.vocabulary:
                path = child_path("$.purposes", name)
                self.add(
                    "purpose.missing_parent",
                    f"the purpose '{name}' is listed but its parent '{parent}' is not; "
                    f"add '{parent}' to 'purposes' so rules on it cover '{name}'",
                    path,
                    key=True,
                )

    def check_purpose(self, purpose: str, path: str) -> None:
        if not PURPOSE_PATTERN.fullmatch(purpose):
            self.add(
                "purpose.invalid_name",
                f"'{purpose}' is not a valid purpose name; use lowercase words joined by "
                "dots exactly as listed under 'purposes', such as 'employment.recruitment'",
                path,
            )
        elif purpose not in self.vocabulary:
            close = difflib.get_close_matches(purpose, sorted(self.vocabulary), n=1, cutoff=0.7)
            hint = f"did you mean '{close[0]}'? " if close else ""
            self.add(
                "purpose.unknown",
                f"the purpose '{purpose}' is not listed under 'purposes'; {hint}"
                "add it there with a one-line meaning, or use a listed one",
                path,
            )

    def check_clients(self, clients: list[tuple[int, Client]]) -> None:
        seen: dict[str, int] = {}
        for i, client in clients:
            path = f"$.clients[{i}]"
            if client.id in seen:
                self.add(
                    "client.duplicate",
                    f"the client id '{client.id}' is used twice (first at line {seen[client.id]}); "
                    "give each client its own id",
                    f"{path}.id",
                )
            else:
                seen[client.id] = self.located.where(f"{path}.id")[0]
            if not client.id.strip():
                self.add("client.invalid_id", "a client id must not be empty", f"{path}.id")
            if not client.purposes:
                self.add(
                    "client.no_purposes",
                    f"the client '{client.id}' has no purposes; list at least one",
                    f"{path}.purposes",
                )
            for j, purpose in enumerate(client.purposes):
                self.check_purpose(purpose, f"{path}.purposes[{j}]")
            if client.default_purpose is not None and client.default_purpose not in client.purposes:
                self.add(
                    "client.default_purpose",
                    f"the default purpose '{client.default_purpose}' is not among the "
                    f"purposes of '{client.id}' ({', '.join(client.purposes)}); add it there "
                    "or choose one of them",
                    f"{path}.default_purpose",
                )
            if client.key_hash is not None and not _KEY_HASH.fullmatch(client.key_hash):
                self.add(
                    "client.key_hash",
                    "key_hash must be 'sha256:' followed by 64 lowercase hex digits; "
                    "issue keys with 'gateway clients add' instead of writing them here",
                    f"{path}.key_hash",
                )

    def check_upstreams(self, upstreams: list[tuple[int, Upstream]]) -> None:
        seen: dict[str, int] = {}
        for i, up in upstreams:
            path = f"$.upstreams[{i}]"
            if up.name in seen:
                self.add(
                    "upstream.duplicate",
                    f"the upstream name '{up.name}' is used twice (first at line "
                    f"{seen[up.name]}); give each upstream its own name",
                    f"{path}.name",
                )
            else:
                seen[up.name] = self.located.where(f"{path}.name")[0]
            if not _UPSTREAM_NAME.fullmatch(up.name):
                self.add(
                    "upstream.invalid_name",
                    f"the upstream name '{up.name}' becomes part of the URL; use lowercase "
                    "letters, digits, '-' and '_' only",
                    f"{path}.name",
                )
            if up.adapter not in KNOWN_ADAPTERS:
                close = difflib.get_close_matches(up.adapter, KNOWN_ADAPTERS, n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                self.add(
                    "upstream.unknown_adapter",
                    f"unknown adapter '{up.adapter}'; {hint}expected one of: "
                    + ", ".join(KNOWN_ADAPTERS),
                    f"{path}.adapter",
                )
            if up.adapter == "generic" and up.generic is None:
                self.add(
                    "upstream.generic_missing",
                    f"the upstream '{up.name}' uses the generic adapter, which needs a "
                    "'generic:' block saying where the subject and the score are",
                    f"{path}.adapter",
                )
            if up.adapter != "generic" and up.generic is not None:
                self.add(
                    "upstream.generic_unused",
                    f"the 'generic:' block only applies to adapter 'generic', not "
                    f"'{up.adapter}'; remove it or change the adapter",
                    f"{path}.generic",
                    key=True,
                )
            url = urlsplit(up.base_url)
            if url.scheme not in ("http", "https") or not url.hostname or url.query or url.fragment:
                self.add(
                    "upstream.base_url",
                    f"base_url '{up.base_url}' must be an http:// or https:// address with a "
                    "host and no '?' or '#' part, such as 'http://api.klout.com'",
                    f"{path}.base_url",
                )
            if "credential" in (self.data["upstreams"][i] or {}):
                cred = up.credential
                given = [k for k in ("query_param", "header") if getattr(cred, k)]
                if len(given) != 1:
                    self.add(
                        "credential.place",
                        "the credential needs exactly one of 'query_param' (the key goes in "
                        "the URL, like Klout's ?key=) or 'header' (the key goes in a header)"
                        + (", not both" if len(given) == 2 else ""),
                        f"{path}.credential",
                    )
                if not cred.env:
                    self.add(
                        "credential.env",
                        "the credential needs 'env': the name of the environment variable "
                        "that holds the upstream's key (keys are never written in this file)",
                        f"{path}.credential",
                    )
            terms = up.terms
            if terms.max_cache_age is not None and parse_duration(terms.max_cache_age) is None:
                self.add(
                    "duration.invalid",
                    f"'{terms.max_cache_age}' is not a duration; write a whole number and a "
                    "unit: '7d' (days), '24h' (hours), '30m' (minutes) or '60s' (seconds)",
                    f"{path}.terms.max_cache_age",
                )
            self.check_positive(terms.calls_per_second, f"{path}.terms.calls_per_second")
            self.check_positive(terms.calls_per_day, f"{path}.terms.calls_per_day")
            for j, purpose in enumerate(terms.banned_purposes):
                self.check_purpose(purpose, f"{path}.terms.banned_purposes[{j}]")
            if terms.banned_purposes and not terms.source:
                self.add(
                    "terms.source",
                    "banned purposes need a 'source' in the terms (a link to the clause), "
                    "so that every denial can say where it comes from",
                    f"{path}.terms",
                )
            if not math.isfinite(up.neutral.score):
                self.add(
                    "neutral.score",
                    "the neutral score must be an ordinary number, such as 40",
                    f"{path}.neutral.score",
                )

    def check_positive(self, value: float | None, path: str) -> None:
        if value is not None and not (value > 0 and math.isfinite(value)):
            self.add("limit.invalid", "a limit must be a number above zero", path)

    def check_rules(self, rules: list[tuple[int, Rule]]) -> None:
        seen: dict[str, int] = {}
        for i, rule in rules:
            path = f"$.rules[{i}]"
            if rule.id in seen:
                self.add(
                    "rule.duplicate",
                    f"the rule id '{rule.id}' is used twice (first at line {seen[rule.id]}); "
                    "give each rule its own id",
                    f"{path}.id",
                )
            else:
                seen[rule.id] = self.located.where(path)[0]
            if not _RULE_ID.fullmatch(rule.id):
                self.add(
                    "rule.invalid_id",
                    f"the rule id '{rule.id}' may use letters, digits, '.', '-' and '_' only",
                    f"{path}.id",
                )
            elif rule.id.startswith(RESERVED_RULE_PREFIXES):
                self.add(
                    "rule.reserved_id",
                    f"rule ids starting with {' or '.join(RESERVED_RULE_PREFIXES)} are "
                    "made by the gateway itself; choose another id",
                    f"{path}.id",
                )
            for name in ("reason", "source"):
                if not getattr(rule, name).strip():
                    self.add(
                        f"rule.{name}",
                        f"the rule '{rule.id}' needs a non-empty '{name}'",
                        f"{path}.{name}",
                    )
            self.check_when(rule, path)
            self.check_action(rule, path)

    def check_when(self, rule: Rule, path: str) -> None:
        when = rule.when
        for j, client in enumerate(_as_list(when.client)):
            if client not in self.client_ids:
                close = difflib.get_close_matches(client, sorted(self.client_ids), n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                self.add(
                    "rule.unknown_client",
                    f"the rule names the client '{client}', which is not listed under "
                    f"'clients'; {hint}expected one of: {', '.join(sorted(self.client_ids))}",
                    _item_path(f"{path}.when.client", when.client, j),
                )
        for j, upstream in enumerate(_as_list(when.upstream)):
            if upstream not in self.upstream_names:
                close = difflib.get_close_matches(upstream, sorted(self.upstream_names), n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                self.add(
                    "rule.unknown_upstream",
                    f"the rule names the upstream '{upstream}', which is not listed under "
                    f"'upstreams'; {hint}expected one of: "
                    + ", ".join(sorted(self.upstream_names)),
                    _item_path(f"{path}.when.upstream", when.upstream, j),
                )
        for j, purpose in enumerate(_as_list(when.purpose)):
            self.check_purpose(purpose, _item_path(f"{path}.when.purpose", when.purpose, j))
        for j, kind in enumerate(_as_list(when.client_kind)):
            if not kind.strip():
                self.add(
                    "rule.client_kind",
                    "client_kind must not be empty",
                    _item_path(f"{path}.when.client_kind", when.client_kind, j),
                )
        for j, route in enumerate(_as_list(when.route)):
            if not route.startswith("/"):
                self.add(
                    "rule.route",
                    f"the route '{route}' must start with '/', like '/v2/user.json/*' or "
                    "'/v2/user.json/{kloutId}/score'",
                    _item_path(f"{path}.when.route", when.route, j),
                )

    def check_action(self, rule: Rule, path: str) -> None:
        if rule.action == "redact" and not rule.fields:
            self.add(
                "rule.redact_fields",
                f"the rule '{rule.id}' redacts, so it needs 'fields': the list of fields to "
                "remove from answers, such as ['score.bucket']",
                f"{path}.action",
            )
        if rule.action != "redact" and rule.fields is not None:
            self.add(
                "rule.fields_unused",
                f"'fields' only applies to action 'redact', not '{rule.action}'; remove it",
                f"{path}.fields",
                key=True,
            )
        if rule.action == "limit":
            if rule.limit is None:
                self.add(
                    "rule.limit_missing",
                    f"the rule '{rule.id}' limits, so it needs 'limit:' with "
                    "'calls_per_second' and/or 'calls_per_day'",
                    f"{path}.action",
                )
            elif rule.limit.calls_per_second is None and rule.limit.calls_per_day is None:
                self.add(
                    "rule.limit_empty",
                    "'limit' needs 'calls_per_second' and/or 'calls_per_day'",
                    f"{path}.limit",
                )
            else:
                self.check_positive(rule.limit.calls_per_second, f"{path}.limit.calls_per_second")
                self.check_positive(rule.limit.calls_per_day, f"{path}.limit.calls_per_day")
        elif rule.limit is not None:
            self.add(
                "rule.limit_unused",
                f"'limit' only applies to action 'limit', not '{rule.action}'; remove it",
                f"{path}.limit",
                key=True,
            )

    def check_objections(self) -> None:
        objections = self.data.get("objections")
        if not isinstance(objections, list):
            return
        seen: set[str] = set()
        for i, item in enumerate(objections):
            if not isinstance(item, str):
                continue
            if not re.fullmatch(r"hmac-sha256:[0-9a-f]{64}", item):
                self.add(
                    "objection.invalid",
                    "an objection must be a pseudonym 'hmac-sha256:' followed by 64 hex "
                    "digits; add people with 'gateway objections add', never by name",
                    f"$.objections[{i}]",
                )
            elif item in seen:
                self.add(
                    "objection.duplicate", "this pseudonym is listed twice", f"$.objections[{i}]"
                )
            seen.add(item)


_UNKNOWN_FIELD = re.compile(r"Object contains unknown field `([^`]*)`")


def _lenient_convert(entry: Any, cls: type[Any], attempts: int = 20) -> Any:
    """Decode ``entry``, dropping the optional fields that are wrong (already reported),
    so the checks of meaning still run on the rest of it; ``None`` if it cannot be."""
    work = copy.deepcopy(entry)
    for _ in range(attempts):
        try:
            return msgspec.convert(work, cls)
        except msgspec.ValidationError as exc:
            message = str(exc)
            match = _MSGSPEC_PATH.search(message)
            steps = re.findall(r"\.([^.\[]+)|\[(\d+)\]", match.group(1)[1:] if match else "")
            keys: list[Any] = [int(index) if index else name for name, index in steps]
            unknown = _UNKNOWN_FIELD.match(message)
            if unknown:
                keys.append(unknown.group(1))
            if not keys:
                return None
            parent = work
            for key in keys[:-1]:
                parent = parent[key]
            if (isinstance(parent, dict) and keys[-1] in parent) or (
                isinstance(parent, list) and isinstance(keys[-1], int)
            ):
                del parent[keys[-1]]
            else:
                return None
    return None


def _as_list(value: str | list[Any] | None) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list):
        return value
    return [value]


def _item_path(path: str, value: object, index: int) -> str:
    return f"{path}[{index}]" if isinstance(value, list) else path
