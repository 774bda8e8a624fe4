"""Shared pieces of the fault tests: a roomy policy, real store faults, audit exports.

Faults are injected into real parts only: the SQLite file of the running gateway's
audit store (a trigger that aborts inserts, as a full disk would: ``chmod`` means
nothing to root), small ASGI upstreams on loopback, and the policy file on disk.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec

from gateway.app import GatewayState, create_app
from gateway.audit.record import AuditRecord, joined_lookup
from gateway.audit.store import AuditStore
from gateway.audit.verify import VerifyResult, verify_export
from gateway.settings import Limits, Settings
from tests.support.gateway import SHIPPED_POLICY
from tests.support.servers import serve_asgi

CRM = {"key": "demo-crm-key"}
ADMIN = {"Authorization": "Bearer demo-admin-token"}
SCORE_PATH = "/klout/v2/user.json/5001/score"
ALICE_SCORE = "71.3"

# The shipped policy holds Klout to 9 calls/s (rule and terms); load tests need room.
_TIGHT_LIMITS = (
    ("    terms:\n      calls_per_second: 10\n      calls_per_day: 10000\n",
     "    terms:\n      calls_per_second: 100000\n      calls_per_day: 1000000000\n"),
    ("      calls_per_second: 9\n      calls_per_day: 10000\n",
     "      calls_per_second: 100000\n      calls_per_day: 1000000000\n"),
)  # fmt: skip


def roomy_policy_text() -> str:
    """The shipped policy with Klout's rate limits raised out of the way."""
    text = SHIPPED_POLICY.read_text()
    for tight, roomy in _TIGHT_LIMITS:
        assert tight in text, f"the shipped policy no longer reads {tight!r}"
        text = text.replace(tight, roomy)
    return text


def roomy_policy(directory: Path) -> Path:
    path = directory / "policies.yaml"
    path.write_text(roomy_policy_text())
    return path


# -- the audit store ----------------------------------------------------------------


def sqlite_path(store: AuditStore | None) -> str:
    assert store is not None
    path = store.engine.url.database
    assert path, "these faults need the embedded SQLite store"
    return path


@contextlib.contextmanager
def store_refuses_inserts(
    store: AuditStore | None, *, only_kind: str | None = None
) -> Iterator[None]:
    """The audit database aborts inserts (all, or of one record ``kind``) until exit.

    Installed from a second connection, like an operator or a full disk would
    affect it: the gateway's own connections see only that their writes fail.
    """
    condition = "" if only_kind is None else f"WHEN NEW.kind = '{only_kind}' "
    triggers = {
        "fault_records": f"BEFORE INSERT ON audit_record {condition}",
    }
    if only_kind is None:  # a full disk refuses checkpoints and head updates too
        triggers["fault_checkpoints"] = "BEFORE INSERT ON audit_checkpoint "
        triggers["fault_head"] = "BEFORE UPDATE ON audit_head "
    conn = sqlite3.connect(sqlite_path(store), timeout=10, isolation_level=None)
    try:
        for name, when in triggers.items():
            conn.execute(f"CREATE TRIGGER {name} {when}BEGIN SELECT RAISE(ABORT, 'disk full'); END")
        yield
    finally:
        for name in triggers:
            conn.execute(f"DROP TRIGGER IF EXISTS {name}")
        conn.close()


class ExportedLog(msgspec.Struct, frozen=True):
    result: VerifyResult
    records: list[AuditRecord]

    def by_request(self, request_id: str) -> list[AuditRecord]:
        return [r for r in self.records if r.request_id == request_id]

    def kinds_of(self, request_id: str) -> list[str]:
        return [r.kind for r in self.by_request(request_id)]

    def lookup(self, request_id: str) -> AuditRecord:
        """The lookup as one record: its outcome joined to its intent, if it has one."""
        records = self.by_request(request_id)
        if len(records) == 2 and records[0].kind == "lookup.intent":
            return joined_lookup(records[0], records[1])
        (record,) = records
        return record


class _Line(msgspec.Struct):
    type: str
    record: AuditRecord | None = None


_line = msgspec.json.Decoder(_Line)


def records_in(export: bytes) -> list[AuditRecord]:
    out: list[AuditRecord] = []
    for raw in export.splitlines():
        line = _line.decode(raw)
        if line.type == "record" and line.record is not None:
            out.append(line.record)
    return out


def export_and_verify(base_url: str) -> ExportedLog:
    """``GET /admin/audit/export``, verified with the keys from ``/admin/audit/public-key``."""
    with httpx.Client(base_url=base_url, headers=ADMIN, timeout=30) as admin:
        pem = admin.get("/admin/audit/public-key").json()["pem"].encode()
        export = admin.get("/admin/audit/export")
        assert export.status_code == 200, export.text
    return ExportedLog(
        result=verify_export([export.content], pem), records=records_in(export.content)
    )


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


# -- load ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    request_id: str
    body: str
    code: str | None
    at: float


@dataclass
class LookupLoad:
    """Threads doing lookups against ``base_url`` until stopped; every answer is kept."""

    base_url: str
    threads: int = 4
    path: str = SCORE_PATH
    params: dict[str, str] = field(default_factory=lambda: dict(CRM))
    answers: list[Answer] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> LookupLoad:
        for _ in range(self.threads):
            worker = threading.Thread(target=self._run, daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=15)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=10) as client:
            while not self._stop.is_set():
                try:
                    r = client.get(self.path, params=self.params)
                except httpx.HTTPError as exc:
                    with self._lock:
                        self.errors.append(type(exc).__name__)
                    time.sleep(0.01)
                    continue
                code = None
                if r.headers.get("content-type") == "application/problem+json":
                    code = r.json().get("code")
                answer = Answer(
                    r.status_code, r.headers.get("x-request-id", ""), r.text, code, time.monotonic()
                )
                with self._lock:
                    self.answers.append(answer)

    def snapshot(self) -> list[Answer]:
        with self._lock:
            return list(self.answers)


# -- a gateway in front of any upstream --------------------------------------------


@dataclass
class Gateway:
    url: str
    state: GatewayState
    upstream_url: str


@contextlib.contextmanager
def gateway_at(
    upstream_url: str,
    data_dir: Path,
    *,
    policies: Path = SHIPPED_POLICY,
    limits: Limits | None = None,
    **settings: Any,
) -> Iterator[Gateway]:
    """The demo gateway with its Klout upstream at ``upstream_url``."""
    config = Settings(
        demo=True,
        data_dir=data_dir,
        policies=policies,
        upstream_overrides={"klout": upstream_url},
        limits=limits or Limits(local_answer_delay=0.005),
        policy_reload_interval=0.1,
        **settings,
    )
    app = create_app(config)
    with serve_asgi(app) as url:
        yield Gateway(url=url, state=app.state["gateway"], upstream_url=upstream_url)


@contextlib.contextmanager
def gateway_in_front_of(
    upstream: Any,
    data_dir: Path,
    *,
    upstream_serve_options: dict[str, Any] | None = None,
    upstream_scheme: str = "http",
    **options: Any,
) -> Iterator[Gateway]:
    """The demo gateway pointed at ``upstream`` (any ASGI app) served on loopback."""
    with serve_asgi(upstream, **(upstream_serve_options or {})) as upstream_url:
        upstream_url = upstream_url.replace("http://", f"{upstream_scheme}://", 1)
        with gateway_at(upstream_url, data_dir, **options) as gateway:
            yield gateway


Scope = dict[str, Any]


class FixedAnswer:
    """An upstream that gives every request the same status, headers and body."""

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body
        self.received = 0

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.received += 1
        headers = [*self.headers, (b"content-length", str(len(self.body)).encode())]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


class Switchable:
    """Wraps an upstream; while ``failing`` it answers 503 instead (Klout's overload)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.failing = False
        self.received = 0

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.received += 1
            if self.failing:
                body = b"Service too busy"
                await send(
                    {
                        "type": "http.response.start",
                        "status": 503,
                        "headers": [
                            (b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.inner(scope, receive, send)
