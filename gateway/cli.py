"""The ``gateway`` command: serve, demo-upstream, clients, admin-token, policy, audit, keys."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec

from gateway import __version__
from gateway.settings import Settings, SettingsError, resolve

_DEFAULTS = Settings()


def _serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # Every default is None: the value comes from settings.resolve (flag, then
    # GATEWAY_*, then the default in Settings), the one place defaults are written.
    p = sub.add_parser("serve", help="run the gateway")
    p.add_argument(
        "--demo",
        action="store_true",
        default=None,
        help="add the bundled Klout simulator and the demo clients ($GATEWAY_DEMO)",
    )
    p.add_argument("--host", help=f"address to listen on (default {_DEFAULTS.host})")
    p.add_argument("--port", type=int, help=f"port to listen on (default {_DEFAULTS.port})")
    _data_dir_flag(p)
    _policies_flag(p)
    p.add_argument(
        "--database-url",
        help="PostgreSQL URL for an audit store shared by several replicas",
    )
    p.add_argument(
        "--redis-url",
        help="Redis URL for quotas shared by several replicas",
    )
    p.add_argument(
        "--upstream",
        action="append",
        default=None,
        dest="upstream_override",
        metavar="NAME=URL",
        help="point a configured upstream at another base URL ($GATEWAY_UPSTREAMS, comma list)",
    )
    p.add_argument(
        "--witness",
        action="append",
        default=None,
        dest="witnesses",
        metavar="URL=VKEYFILE",
        help="push each checkpoint to this C2SP witness, pinned by its vkey (repeatable; "
        "or GATEWAY_WITNESSES=URL=FILE,...)",
    )
    p.add_argument(
        "--demo-upstream-port",
        type=int,
        help="port of the bundled simulator in demo mode (default: any free port)",
    )
    p.add_argument(
        "--pseudonym-secret-file",
        type=Path,
        help="a file holding the pseudonym secret shared by every replica "
        "($GATEWAY_PSEUDONYM_SECRET_FILE, or the secret itself in GATEWAY_PSEUDONYM_SECRET); "
        "default: a key generated in the data dir",
    )
    p.add_argument("--workers", type=int, help=f"worker processes (default {_DEFAULTS.workers})")
    p.add_argument(
        "--audit-sequencer",
        choices=("auto", "thread", "process"),
        help="commit audit records in one sequencer process for all workers (process; "
        "auto, the default, is the same), or in a writer thread of each worker (thread) "
        "($GATEWAY_AUDIT_SEQUENCER)",
    )
    p.add_argument(
        "--otlp-endpoint",
        help="OTLP/HTTP traces endpoint, e.g. http://127.0.0.1:4318/v1/traces",
    )
    p.add_argument("--log-level", help=f"default {_DEFAULTS.log_level}")
    p.add_argument(
        "--cache-entries",
        type=int,
        help="keep up to N upstream answers for reuse, never past the terms' max cache age "
        f"(default {_DEFAULTS.cache_entries}: no cache)",
    )
    p.add_argument(
        "--cache-max-age",
        type=float,
        help=f"seconds an answer may be reused, at most (default {_DEFAULTS.cache_max_age:g})",
    )
    p.set_defaults(func=cmd_serve)


def _data_dir_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        help=f"keys, issued-key hashes and the embedded audit store "
        f"($GATEWAY_DATA_DIR, default ./{_DEFAULTS.data_dir})",
    )


def _policies_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policies",
        type=Path,
        help=f"the policy file ($GATEWAY_POLICIES, default ./{_DEFAULTS.policies})",
    )


def cmd_serve(args: argparse.Namespace) -> int:
    settings: Settings = args.settings
    problem = _preflight(settings)
    if problem:
        print(f"gateway serve: {problem}", file=sys.stderr)
        return 1
    from gateway.telemetry import configure_logging

    configure_logging(settings.log_level)
    from gateway.server import BindError, StartError, bind, serve

    try:
        # The port first: a taken port is said before anything else starts.
        sock = bind(settings.host, settings.port)
        settings, sequencer = _audit_sequencer(settings)
        serve(settings, sock, sequencer)
    except (BindError, StartError) as exc:
        print(f"gateway serve: {exc}", file=sys.stderr)
        return 1
    return 0


def _audit_sequencer(settings: Settings) -> tuple[Settings, Callable[[], int] | None]:
    """The settings the workers run with, and the body of the audit sequencer
    process when the settings ask for one (``serve`` forks it before the workers and
    stops it after them, so that every record a worker sends has a writer; workers
    fail closed while it is away)."""
    mode = settings.audit_sequencer
    if mode == "thread":
        return settings, None
    from gateway.audit.sequencer import socket_path

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    socket = socket_path(settings.data_dir)
    parent = os.getpid()

    def sequencer() -> int:
        # Its own session: a signal to the gateway's process group (Ctrl-C, killpg)
        # reaches the workers first; the sequencer is stopped after they are done,
        # and stops by itself if the gateway dies (parent_pid).
        os.setsid()
        # The log's one writer pushes its checkpoints to the witnesses.
        _run_sequencer(settings.data_dir, settings.database_url, socket, parent, settings.witnesses)
        return 0

    return msgspec.structs.replace(settings, sequencer_socket=socket), sequencer


def _sequencer_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "sequencer",
        help="run the audit sequencer alone (serve starts it for its workers)",
    )
    _data_dir_flag(p)
    p.add_argument("--database-url", help="PostgreSQL URL of a shared audit store")
    p.add_argument("--socket", type=Path, help="unix socket path (default: in the data dir)")
    p.add_argument("--log-level", help=f"default {_DEFAULTS.log_level}")
    p.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
    p.add_argument(
        "--witness",
        action="append",
        default=[],
        metavar="URL=VKEYFILE",
        help="push each checkpoint to this C2SP witness (repeatable)",
    )
    p.set_defaults(func=cmd_sequencer)


def cmd_sequencer(args: argparse.Namespace) -> int:
    from gateway.audit.sequencer import socket_path
    from gateway.telemetry import configure_logging

    configure_logging(args.log_level)
    socket = args.socket or socket_path(args.data_dir)
    _run_sequencer(args.data_dir, args.database_url, socket, args.parent_pid, args.witness)
    return 0


def _run_sequencer(
    data_dir: Path,
    database_url: str | None,
    socket: Path,
    parent_pid: int | None,
    witnesses: Sequence[str],
) -> None:
    """The sequencer until it is stopped, on uvloop when it is installed (uvicorn's
    workers use it too): its socket reads and writes cost less CPU per frame."""
    from gateway.audit.sequencer import run_sequencer

    try:
        import uvloop
    except ImportError:  # pragma: no cover - installed with uvicorn[standard]
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(
            run_sequencer(
                data_dir, database_url, socket, parent_pid=parent_pid, witnesses=witnesses
            )
        )


def _preflight(settings: Settings) -> str | None:
    """Problems that must stop the start, with a message an operator can act on."""
    from gateway.app import policy_path
    from gateway.audit.signing import KeyRing, SigningKeyError
    from gateway.policies.admission import admit_policy
    from gateway.policies.loader import PolicyError, read_policy_bytes

    path = policy_path(settings)
    if not path.exists():
        return f"{path}: no such policy file (use --policies, or --demo for the bundled one)"
    try:
        # The same check as a reload: a file whose own cases fail never goes live.
        admit_policy(read_policy_bytes(path), path)
    except PolicyError as exc:
        return "the policy cannot go live:\n" + "\n".join(exc.lines())
    from gateway.audit.witnessing import parse_witness_options

    try:
        parse_witness_options(settings.witnesses)
    except ValueError as exc:
        return str(exc)
    try:
        KeyRing.load_or_create(settings.data_dir)
    except SigningKeyError as exc:
        return f"{exc.code}: {exc.detail}"
    except OSError as exc:
        return (
            f"audit.signing_key_invalid: cannot read the signing keys in {settings.data_dir}: {exc}"
        )
    return _pseudonym_key_problem(settings)


def _pseudonym_key_problem(settings: Settings) -> str | None:
    """The pseudonym key must load and match the one the store was written under."""
    from gateway.audit.graph import IdentityStore, PseudonymKeyMismatch
    from gateway.audit.pseudonym import PseudonymKeyError, load_pseudonymizer
    from gateway.audit.store import AuditStore, StoreError

    try:
        pseudonyms = load_pseudonymizer(settings.data_dir, settings.pseudonym_secret_file)
    except PseudonymKeyError as exc:
        return f"audit.pseudonym_key_invalid: {exc}"
    try:
        store = AuditStore.open(data_dir=settings.data_dir, url=settings.database_url)
    except StoreError as exc:
        return f"audit.unavailable: {exc}"
    try:
        graph = IdentityStore(store.engine)
        graph.create()
        graph.bind_key(pseudonyms.check_value())
    except PseudonymKeyMismatch as exc:
        return f"audit.pseudonym_key_mismatch: {exc}"
    except StoreError as exc:
        return f"audit.unavailable: {exc}"
    finally:
        store.close()
    return None


def _demo_upstream_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo-upstream", help="run the simulated Klout API alone")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8081)
    p.add_argument("--v1-missing-status", type=int, choices=(200, 404), default=200)
    p.set_defaults(func=cmd_demo_upstream)


def cmd_demo_upstream(args: argparse.Namespace) -> int:
    from gateway.demo.upstream import DemoUpstreamConfig, run_demo_upstream

    config = DemoUpstreamConfig(v1_missing_status=args.v1_missing_status)
    print(f"demo Klout upstream on http://{args.host}:{args.port} (key: demo-klout-upstream-key)")
    asyncio.run(run_demo_upstream(args.host, args.port, config))
    return 0


def _clients_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("clients", help="manage client systems and their keys")
    csub = p.add_subparsers(dest="clients_command", required=True)
    add = csub.add_parser("add", help="declare a client (if new) and print its first key once")
    add.add_argument("id")
    add.add_argument("--kind", required=True, help="hr, crm, support, marketing, ...")
    add.add_argument(
        "--purpose",
        action="append",
        required=True,
        dest="purposes",
        help="a purpose it is registered for (repeat for several)",
    )
    add.add_argument(
        "--default-purpose",
        help="the purpose of calls that send no X-Purpose (default: the only --purpose, "
        "when there is one)",
    )
    _policies_flag(add)
    _data_dir_flag(add)
    add.set_defaults(func=cmd_clients_add)

    listing = csub.add_parser("list", help="every client, its purposes and its keys (never a key)")
    _policies_flag(listing)
    _data_dir_flag(listing)
    listing.set_defaults(func=cmd_clients_list)

    revoke = csub.add_parser("revoke", help="make every key of a client stop working")
    revoke.add_argument("id")
    _data_dir_flag(revoke)
    revoke.set_defaults(func=cmd_clients_revoke)

    rotate = csub.add_parser(
        "rotate-key", help="print a new key for a client once; its old keys stop working"
    )
    rotate.add_argument("id")
    _policies_flag(rotate)
    _data_dir_flag(rotate)
    rotate.set_defaults(func=cmd_clients_rotate_key)


#: How soon a running gateway sees a changed key file (clients.ClientKeys' refresh).
PICKED_UP = "a running gateway picks this up within a second"


def cmd_clients_add(args: argparse.Namespace) -> int:
    from gateway.clients import ClientKeyExists, declare_client, issue_client_key
    from gateway.policies.loader import PolicyError

    try:
        declared = declare_client(
            args.policies, args.id, args.kind, args.purposes, args.default_purpose
        )
        key = issue_client_key(args.data_dir, args.id)
    except PolicyError as exc:
        print("gateway clients add: the policy would not be valid:", file=sys.stderr)
        for line in exc.lines():
            print(f"  {line}", file=sys.stderr)
        return 1
    except (ClientKeyExists, ValueError) as exc:
        print(f"gateway clients add: {exc}", file=sys.stderr)
        return 1
    if declared:
        print(f"declared client {args.id!r} in {args.policies}")
    print(f"key for {args.id!r} (shown once; only its hash is stored in {args.data_dir}):")
    print(key)
    return 0


def cmd_clients_list(args: argparse.Namespace) -> int:
    from gateway.clients import fingerprint, load_issued_keys
    from gateway.policies.loader import PolicyError, parse_policy

    try:
        text = args.policies.read_text(encoding="utf-8")
        clients = parse_policy(text, filename=str(args.policies)).policy.clients
        issued = load_issued_keys(args.data_dir)
    except (OSError, PolicyError, ValueError) as exc:
        print(f"gateway clients list: {exc}", file=sys.stderr)
        return 1
    rows = [("CLIENT", "KIND", "PURPOSES", "KEY", "STATE", "SINCE")]
    for client in clients:
        purposes = ",".join(f"{p}*" if p == client.default_purpose else p for p in client.purposes)
        keys = [k for k in issued.keys if k.client == client.id]
        if client.key_hash:
            rows.append((client.id, client.kind, purposes, fingerprint(client.key_hash),
                         "in-policy", "-"))  # fmt: skip
        for k in keys:
            state, since = ("revoked", k.revoked) if k.revoked else ("active", k.created)
            rows.append((client.id, client.kind, purposes, fingerprint(k.key_hash), state, since))
        if not keys and not client.key_hash:
            rows.append((client.id, client.kind, purposes, "-", "no-key", "-"))
    declared = {c.id for c in clients}
    for k in issued.keys:
        if k.client not in declared:
            rows.append((k.client, "?", "(not in the policy)", fingerprint(k.key_hash),
                         "revoked" if k.revoked else "orphan", k.revoked or k.created))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    print("(* default purpose; KEY is the start of the key's SHA-256, never the key)")
    return 0


def cmd_clients_revoke(args: argparse.Namespace) -> int:
    from gateway.clients import fingerprint, revoke_client_keys

    revoked = revoke_client_keys(args.data_dir, args.id)
    if not revoked:
        print(f"gateway clients revoke: client {args.id!r} has no working key", file=sys.stderr)
        return 1
    for k in revoked:
        print(f"revoked key {fingerprint(k.key_hash)} of {args.id!r}")
    print(f"({PICKED_UP})")
    return 0


def cmd_clients_rotate_key(args: argparse.Namespace) -> int:
    from gateway.clients import fingerprint, rotate_client_key
    from gateway.policies.loader import PolicyError, parse_policy

    try:
        text = args.policies.read_text(encoding="utf-8")
        clients = parse_policy(text, filename=str(args.policies)).policy.clients
    except (OSError, PolicyError) as exc:
        print(f"gateway clients rotate-key: {exc}", file=sys.stderr)
        return 1
    if all(c.id != args.id for c in clients):
        print(
            f"gateway clients rotate-key: no client {args.id!r} in {args.policies} "
            "(declare it with `gateway clients add`)",
            file=sys.stderr,
        )
        return 1
    key, revoked = rotate_client_key(args.data_dir, args.id)
    for k in revoked:
        print(f"revoked key {fingerprint(k.key_hash)} of {args.id!r}")
    print(f"new key for {args.id!r} (shown once; only its hash is stored in {args.data_dir};")
    print(f"{PICKED_UP}):")
    print(key)
    return 0


def _objections_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "objections",
        help="people who objected to scoring (GDPR Art. 21), kept in the store as pseudonyms",
    )
    osub = p.add_subparsers(dest="objections_command", required=True)
    add = osub.add_parser(
        "add", help="object one person, named by one or more of their identifiers"
    )
    remove = osub.add_parser(
        "remove", help="withdraw a person's objection (any one of their identifiers will do)"
    )
    for q in (add, remove):
        q.add_argument("--upstream", required=True, help="where they are known, e.g. klout")
        q.add_argument(
            "--subject",
            required=True,
            action="append",
            dest="subjects",
            help="an identifier of the person there (repeat for several; "
            "NAMESPACE:ID such as twitter_id:1002 narrows a bare number)",
        )
        _policies_flag(q)
    add.set_defaults(func=cmd_objections_add)
    remove.set_defaults(func=cmd_objections_remove)
    listing = osub.add_parser("list", help="objected people: pseudonyms, since when, how many ids")
    listing.set_defaults(func=cmd_objections_list)
    for q in (add, remove, listing):
        _identity_store_arguments(q)


def _identity_store_arguments(parser: argparse.ArgumentParser) -> None:
    _data_dir_flag(parser)
    parser.add_argument(
        "--database-url",
        help="the shared PostgreSQL store of the replicas ($GATEWAY_DATABASE_URL; "
        "default: SQLite in the data dir)",
    )
    parser.add_argument(
        "--pseudonym-secret-file",
        type=Path,
        help="the replicas' pseudonym secret ($GATEWAY_PSEUDONYM_SECRET_FILE, or the "
        "secret itself in GATEWAY_PSEUDONYM_SECRET)",
    )


def _actor() -> str:
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def cmd_objections_add(args: argparse.Namespace) -> int:
    return _objections(args, "add")


def cmd_objections_remove(args: argparse.Namespace) -> int:
    return _objections(args, "remove")


def _objections(args: argparse.Namespace, act: str) -> int:
    from gateway import objections
    from gateway.audit.graph import PseudonymKeyMismatch
    from gateway.audit.pseudonym import PseudonymKeyError
    from gateway.audit.signing import SigningKeyError
    from gateway.audit.store import StoreError
    from gateway.errors import GatewayError
    from gateway.policies.loader import PolicyError, read_policy

    name = f"gateway objections {act}"
    try:
        policy = read_policy(args.policies).policy
    except (OSError, PolicyError) as exc:
        return _fail(f"{name}: {exc}")
    upstream = next((u for u in policy.upstreams if u.name == args.upstream), None)
    if upstream is None:
        names = ", ".join(u.name for u in policy.upstreams)
        return _fail(f"{name}: no upstream {args.upstream!r} (have: {names})")
    try:
        with objections.StaffSession.open(
            args.data_dir, args.database_url, args.pseudonym_secret_file, actor=_actor()
        ) as staff:
            pseudonyms = objections.pseudonyms_of(upstream, staff.pseudonymizer, args.subjects)
            if act == "add":
                added = staff.add(args.upstream, pseudonyms)
                lines = objections.describe_added(added, len(args.subjects))
            else:
                people, named = staff.remove(args.upstream, pseudonyms)
                lines = [objections.describe_removed(people, named)]
    except objections.ObjectionError as exc:
        return _fail(f"{name}: {exc}")
    except (PseudonymKeyError, PseudonymKeyMismatch, SigningKeyError) as exc:
        return _fail(f"{name}: {exc}")
    except (StoreError, GatewayError, OSError) as exc:
        return _fail(f"{name}: audit.unavailable: {exc}")
    # The raw identifiers are not echoed: terminals and CI logs keep scrollback.
    for line in lines:
        print(line)
    return 0


def cmd_objections_list(args: argparse.Namespace) -> int:
    from gateway import objections
    from gateway.audit.graph import PseudonymKeyMismatch
    from gateway.audit.pseudonym import PseudonymKeyError
    from gateway.audit.store import StoreError

    try:
        with objections.StaffSession.open(
            args.data_dir, args.database_url, args.pseudonym_secret_file, actor=_actor(), log=False
        ) as staff:
            people = staff.listing()
    except (PseudonymKeyError, PseudonymKeyMismatch) as exc:
        return _fail(f"gateway objections list: {exc}")
    except (StoreError, OSError) as exc:
        return _fail(f"gateway objections list: audit.unavailable: {exc}")
    for person in people:
        given = ", ".join(objections.short(p) for p in person.given)
        print(
            f"{person.since}  {person.identifiers} identifier(s) linked  by {person.actor}  "
            f"given: {given}"
        )
    print(f"{len(people)} objected person(s) in the store", file=sys.stderr)
    return 0


def _fail(message: str) -> int:
    print(message, file=sys.stderr)
    return 1


def _admin_token_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from gateway.clients import DEFAULT_ROLE, ROLES

    p = sub.add_parser("admin-token", help="create an admin token for /admin (shown once)")
    p.add_argument(
        "--role",
        choices=ROLES,
        default=DEFAULT_ROLE,
        help="auditor: export, subject access, reports; policy: validate, explain, replay, "
        f"apply; operator: everything (default: {DEFAULT_ROLE})",
    )
    p.add_argument(
        "--revoke", metavar="ID", help="make the token ID (adm-...) stop working instead"
    )
    p.add_argument("--list", action="store_true", help="list token ids and roles instead")
    _data_dir_flag(p)
    p.set_defaults(func=cmd_admin_token)


def cmd_admin_token(args: argparse.Namespace) -> int:
    from gateway.clients import issue_admin_token, load_admin_tokens, revoke_admin_token

    if args.list:
        for t in load_admin_tokens(args.data_dir).tokens:
            state = f"revoked {t.revoked}" if t.revoked else f"active since {t.created or '-'}"
            print(f"{t.id}  {t.role:<8}  {state}")
        return 0
    if args.revoke:
        if revoke_admin_token(args.data_dir, args.revoke) is None:
            print(f"gateway admin-token: no working token {args.revoke!r}", file=sys.stderr)
            return 1
        print(f"revoked admin token {args.revoke} ({PICKED_UP})")
        return 0
    entry, token = issue_admin_token(args.data_dir, args.role)
    print(
        f"admin token {entry.id}, role {entry.role} (shown once; only its hash is stored in "
        f"{args.data_dir};\n{PICKED_UP}):"
    )
    print(token)
    return 0


def _witness_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "witness", help="run an independent C2SP tlog-witness that cosigns a log's checkpoints"
    )
    p.add_argument("--name", required=True, help="the witness's key name, e.g. audit.example/w1")
    p.add_argument(
        "--log-key",
        type=Path,
        action="append",
        required=True,
        help="a log's vkey file (gateway keys public --vkey), repeatable",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path("witness"),
        help="its key, vkey, state and alerts (default ./witness)",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=cmd_witness)


def cmd_witness(args: argparse.Namespace) -> int:
    from gateway.audit.witness import (
        Witness,
        WitnessSetupError,
        load_log_keys,
        load_or_create_key,
        serve_witness,
    )
    from gateway.telemetry import configure_logging

    try:
        texts = [path.read_text(encoding="utf-8") for path in args.log_key]
        logs = load_log_keys(texts)
        private, public = load_or_create_key(args.data_dir, args.name)
        witness = Witness(args.name, private, logs, args.data_dir)
    except (OSError, UnicodeDecodeError, WitnessSetupError) as exc:
        print(f"gateway witness: {exc}", file=sys.stderr)
        return 1
    configure_logging(args.log_level)
    print(f"witness key {public.vkey()} (in {args.data_dir}/witness.vkey)", flush=True)
    print(f"following {', '.join(sorted(logs))}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_witness(witness, args.host, args.port))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="A privacy-preserving gateway for people-scoring APIs.",
    )
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _demo_upstream_parser(sub)
    _sequencer_parser(sub)
    _clients_parser(sub)
    _objections_parser(sub)
    _admin_token_parser(sub)
    _witness_parser(sub)
    from gateway.audit import commands as audit_commands
    from gateway.policies import commands as policy_commands

    policy_commands.register(sub)
    audit_commands.register(sub)
    return parser


#: Flags that are settings: a command that has one and was not given it gets the
#: resolved value (GATEWAY_*, else the default), so every command agrees.
SETTING_FLAGS = (
    "data_dir",
    "policies",
    "database_url",
    "redis_url",
    "log_level",
    "pseudonym_secret_file",
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.settings = resolve(vars(args))
    except SettingsError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    for name in SETTING_FLAGS:
        if getattr(args, name, False) is None:
            setattr(args, name, getattr(args.settings, name))
    code: int = args.func(args)
    return code
