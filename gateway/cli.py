"""The ``gateway`` command: serve, demo-upstream, clients, admin-token, policy, audit, keys."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import msgspec

from gateway import __version__
from gateway.settings import Settings, from_env, parse_upstream_overrides

SETTINGS_ENV = "GATEWAY__SETTINGS_JSON"  # hands settings to uvicorn worker processes


def _serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    env = from_env()
    p = sub.add_parser("serve", help="run the gateway")
    p.add_argument(
        "--demo",
        action="store_true",
        default=env.get("demo", False),
        help="add the bundled Klout simulator and the demo clients",
    )
    p.add_argument("--host", default=env.get("host", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(str(env.get("port", 8080))))
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path(str(env.get("data_dir", "var"))),
        help="keys and the embedded audit store (default ./var)",
    )
    p.add_argument("--policies", type=Path, default=Path(str(env.get("policies", "policies.yaml"))))
    p.add_argument(
        "--database-url",
        default=env.get("database_url"),
        help="PostgreSQL URL for an audit store shared by several replicas",
    )
    p.add_argument(
        "--redis-url",
        default=env.get("redis_url"),
        help="Redis URL for quotas shared by several replicas",
    )
    p.add_argument(
        "--upstream",
        action="append",
        default=list(env.get("upstream", [])),  # type: ignore[call-overload]
        metavar="NAME=URL",
        help="point a configured upstream at another base URL",
    )
    p.add_argument(
        "--demo-upstream-port",
        type=int,
        default=0,
        help="port of the bundled simulator in demo mode (default: any free port)",
    )
    p.add_argument("--workers", type=int, default=int(str(env.get("workers", 1))))
    p.add_argument(
        "--audit-sequencer",
        choices=("auto", "thread", "process"),
        default=str(env.get("audit_sequencer", "auto")),
        help="commit audit records in a writer thread of each worker, or in one sequencer "
        "process for all of them (auto: a process when --workers > 1)",
    )
    p.add_argument(
        "--otlp-endpoint",
        default=env.get("otlp_endpoint"),
        help="OTLP/HTTP traces endpoint, e.g. http://127.0.0.1:4318/v1/traces",
    )
    p.add_argument("--log-level", default=env.get("log_level", "info"))
    p.add_argument(
        "--cache-entries",
        type=int,
        default=int(str(env.get("cache_entries", 0))),
        help="keep up to N upstream answers for reuse, never past the terms' max cache age "
        "(default 0: no cache)",
    )
    p.add_argument(
        "--cache-max-age",
        type=float,
        default=float(str(env.get("cache_max_age", 86400))),
        help="seconds an answer may be reused, at most (default 86400)",
    )
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    try:
        overrides = parse_upstream_overrides(args.upstream)
    except ValueError as exc:
        print(f"gateway serve: {exc}", file=sys.stderr)
        return 2
    settings = Settings(
        demo=args.demo,
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        policies=args.policies,
        database_url=args.database_url,
        redis_url=args.redis_url,
        upstream_overrides=overrides,
        demo_upstream_port=args.demo_upstream_port,
        workers=args.workers,
        audit_sequencer=args.audit_sequencer,
        otlp_endpoint=args.otlp_endpoint,
        log_level=args.log_level,
        cache_entries=args.cache_entries,
        cache_max_age=args.cache_max_age,
    )
    problem = _preflight(settings)
    if problem:
        print(f"gateway serve: {problem}", file=sys.stderr)
        return 1
    from gateway.telemetry import configure_logging

    configure_logging(settings.log_level)
    from gateway.server import uvicorn_options

    common = {
        "host": settings.host,
        "port": settings.port,
        **uvicorn_options(log_level=settings.log_level),
    }
    with _audit_sequencer(settings) as settings:
        if settings.workers > 1:
            os.environ[SETTINGS_ENV] = msgspec.json.encode(settings, enc_hook=_encode_path).decode()
            uvicorn.run(
                "gateway.cli:app_from_env", factory=True, workers=settings.workers, **common
            )
        else:
            from gateway.app import create_app

            uvicorn.run(create_app(settings), **common)
    return 0


@contextlib.contextmanager
def _audit_sequencer(settings: Settings) -> Iterator[Settings]:
    """Run the audit sequencer process for the workers, when settings ask for one.

    It is started before the workers and stopped after them, so that every record
    a worker sends has a writer; workers fail closed while it is away.
    """
    mode = settings.audit_sequencer
    if mode == "thread" or (mode == "auto" and settings.workers <= 1):
        yield settings
        return
    from gateway.audit.sequencer import socket_path

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    socket = socket_path(settings.data_dir)
    command = [sys.executable, "-m", "gateway", "sequencer", "--data-dir", str(settings.data_dir)]
    if settings.database_url:
        command += ["--database-url", settings.database_url]
    command += ["--socket", str(socket), "--log-level", settings.log_level]
    supervisor = _SequencerSupervisor(command)
    supervisor.start()
    try:
        yield msgspec.structs.replace(settings, sequencer_socket=socket)
    finally:
        supervisor.stop()


class _SequencerSupervisor(threading.Thread):
    """Keeps one sequencer process running while the workers serve.

    If it dies (a crash, an OOM kill), workers fail closed (503, no score) until a
    new one listens; it is restarted after a short pause, and recovers the log
    and closes the lookups left open before it takes records again.
    """

    def __init__(self, command: list[str]) -> None:
        super().__init__(name="sequencer-supervisor", daemon=True)
        self._command = command
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._process = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        # Its own session: a signal to the gateway's process group (Ctrl-C, killpg)
        # reaches the workers first; the sequencer is stopped after they are done.
        # It exits by itself if this process dies (--parent-pid).
        return subprocess.Popen(  # noqa: S603 (our own interpreter and module)
            [*self._command, "--parent-pid", str(os.getpid())], start_new_session=True
        )

    def run(self) -> None:
        import logging

        log = logging.getLogger("gateway")
        while not self._stopping.wait(0.2):
            with self._lock:
                code = self._process.poll()
                if code is None or self._stopping.is_set():
                    continue
                log.error("the audit sequencer exited (%s); restarting it", code)
                self._process = self._spawn()

    def stop(self) -> None:
        with self._lock:
            self._stopping.set()
            process = self._process
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _sequencer_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    env = from_env()
    p = sub.add_parser(
        "sequencer",
        help="run the audit sequencer alone (serve starts it for its workers)",
    )
    p.add_argument("--data-dir", type=Path, default=Path(str(env.get("data_dir", "var"))))
    p.add_argument("--database-url", default=env.get("database_url"))
    p.add_argument("--socket", type=Path, help="unix socket path (default: in the data dir)")
    p.add_argument("--log-level", default=str(env.get("log_level", "info")))
    p.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
    p.set_defaults(func=cmd_sequencer)


def cmd_sequencer(args: argparse.Namespace) -> int:
    from gateway.audit.sequencer import run_sequencer, socket_path
    from gateway.telemetry import configure_logging

    configure_logging(args.log_level)
    socket = args.socket or socket_path(args.data_dir)
    asyncio.run(run_sequencer(args.data_dir, args.database_url, socket, parent_pid=args.parent_pid))
    return 0


def _encode_path(value: object) -> str:
    if isinstance(value, Path):
        return str(value)
    raise NotImplementedError(f"cannot encode {type(value).__name__}")


def _decode_path(kind: type, value: object) -> object:
    if kind is Path and isinstance(value, str):
        return Path(value)
    raise NotImplementedError(f"cannot decode {kind.__name__}")


def app_from_env() -> object:
    """The app for a uvicorn worker process, from settings the parent serialised."""
    from gateway.app import create_app

    settings = msgspec.json.decode(
        os.environ[SETTINGS_ENV].encode(), type=Settings, dec_hook=_decode_path
    )
    return create_app(settings)


def _preflight(settings: Settings) -> str | None:
    """Problems that must stop the start, with a message an operator can act on."""
    from gateway.app import policy_path
    from gateway.audit.signing import KeyRing, SigningKeyError
    from gateway.policies.loader import PolicyError, read_policy

    path = policy_path(settings)
    if not path.exists():
        return f"{path}: no such policy file (use --policies, or --demo for the bundled one)"
    try:
        read_policy(path)
    except PolicyError as exc:
        return "the policy file has errors:\n" + "\n".join(exc.lines())
    try:
        KeyRing.load_or_create(settings.data_dir)
    except SigningKeyError as exc:
        return f"{exc.code}: {exc.detail}"
    except OSError as exc:
        return (
            f"audit.signing_key_invalid: cannot read the signing keys in {settings.data_dir}: {exc}"
        )
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
    add = csub.add_parser("add", help="declare a client (if new) and print a new key once")
    add.add_argument("id")
    add.add_argument("--kind", required=True, help="hr, crm, support, marketing, ...")
    add.add_argument(
        "--purpose",
        action="append",
        required=True,
        dest="purposes",
        help="a purpose it is registered for (repeat for several)",
    )
    add.add_argument("--default-purpose")
    add.add_argument("--policies", type=Path, default=Path("policies.yaml"))
    add.add_argument("--data-dir", type=Path, default=Path("var"))
    add.set_defaults(func=cmd_clients_add)


def cmd_clients_add(args: argparse.Namespace) -> int:
    from gateway.clients import declare_client, issue_client_key
    from gateway.policies.loader import PolicyError

    try:
        declared = declare_client(
            args.policies, args.id, args.kind, args.purposes, args.default_purpose
        )
    except PolicyError as exc:
        print("gateway clients add: the policy would not be valid:", file=sys.stderr)
        for line in exc.lines():
            print(f"  {line}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"gateway clients add: {exc}", file=sys.stderr)
        return 1
    key = issue_client_key(args.data_dir, args.id)
    if declared:
        print(f"declared client {args.id!r} in {args.policies}")
    print(f"key for {args.id!r} (shown once; only its hash is stored in {args.data_dir}):")
    print(key)
    return 0


def _objections_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("objections", help="record a person's objection to scoring (GDPR Art. 21)")
    osub = p.add_subparsers(dest="objections_command", required=True)
    add = osub.add_parser(
        "add", help="add a person to the objection list (stored as keyed pseudonyms only)"
    )
    add.add_argument("--upstream", required=True, help="the upstream they are known at, e.g. klout")
    add.add_argument("--subject", required=True, help="their identifier there (name or id)")
    add.add_argument("--policies", type=Path, default=Path("policies.yaml"))
    add.add_argument("--data-dir", type=Path, default=Path("var"))
    add.set_defaults(func=cmd_objections_add)


def cmd_objections_add(args: argparse.Namespace) -> int:
    from gateway.audit.pseudonym import Pseudonymizer
    from gateway.policies.edit import append_to_list, write_checked
    from gateway.policies.loader import PolicyError, parse_policy
    from gateway.upstreams.registry import build_adapter

    try:
        text = args.policies.read_text(encoding="utf-8")
        policy = parse_policy(text, filename=str(args.policies)).policy
    except (OSError, PolicyError) as exc:
        print(f"gateway objections add: {exc}", file=sys.stderr)
        return 1
    upstream = next((u for u in policy.upstreams if u.name == args.upstream), None)
    if upstream is None:
        names = ", ".join(u.name for u in policy.upstreams)
        print(
            f"gateway objections add: no upstream {args.upstream!r} (have: {names})",
            file=sys.stderr,
        )
        return 1
    subjects = build_adapter(upstream, bytes(32)).subjects_for(args.subject)
    if not subjects:
        print("gateway objections add: that identifier is not one this API uses", file=sys.stderr)
        return 1
    pseudonyms = Pseudonymizer.load_or_create(args.data_dir)
    new = [pseudonyms.pseudonym(s.namespace, s.identifier) for s in subjects]
    new = [p for p in new if p not in policy.objections]
    if new:
        write_checked(args.policies, append_to_list(text, "objections", new))
    # The raw identifier is not echoed: terminals and CI logs keep scrollback.
    print(f"{len(new)} pseudonym(s) added to the objection list in {args.policies}")
    return 0


def _admin_token_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("admin-token", help="create an admin token for /admin (shown once)")
    p.add_argument("--data-dir", type=Path, default=Path("var"))
    p.set_defaults(func=cmd_admin_token)


def cmd_admin_token(args: argparse.Namespace) -> int:
    from gateway.clients import issue_admin_token

    token = issue_admin_token(args.data_dir)
    print(f"admin token (shown once; only its hash is stored in {args.data_dir}):")
    print(token)
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
    from gateway.audit import commands as audit_commands
    from gateway.policies import commands as policy_commands

    policy_commands.register(sub)
    audit_commands.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code
