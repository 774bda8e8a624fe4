"""A simulated Klout API (v1 and v2 behind Mashery) for demo mode and the tests.

The real service is shut down; this is built from the surviving evidence in
``reference/upstream-apis.md`` §1 ([V] verified there, [I] inferred, [B] only in
the founding blog post). It is a raw ASGI application, so every status, header
and byte is under our control, and each request passes the same layers the real
one did:

1. **Mashery, key check** (§1.0, §1.4.1): ``?key=`` is the only credential. A
   missing or unknown key gets the v2 JSON 403 ``Invalid or unprovided API key.
   All calls must have a key.`` [V], or on ``/1/`` paths a Mashery 403 with
   ``X-Mashery-Error-Code: ERR_403_NOT_AUTHORIZED`` [V code; body text I].
2. **Mashery, quotas** (§1.3): a token bucket per key, 10 calls/s, answers
   ``ERR_403_DEVELOPER_OVER_QPS`` with ``Retry-After: 1``; a counter per key and
   UTC day, 10,000 calls, answers ``ERR_403_DEVELOPER_OVER_RATE`` with
   ``Retry-After`` = seconds to UTC midnight. HTTP 403, not 429 [V]. Only calls
   that pass reach the quota; rejected calls cost nothing.
3. **Klout, overload** (§1.0, §1.3): a configurable fraction of calls gets 503
   with the configurable ``overload_body``; its default ``Service too busy`` is
   the blog post's wording and unverified [B].
4. **Klout, routes**:

   - v1 (§1.1): ``/1/klout.json``, ``/1/users/show.json``, ``/1/users/topics.json``,
     ``/1/soi/influenced_by.json``, ``/1/soi/influencer_of.json`` with
     ``users=a,b`` (at most 5 [V]). Known users come back wrapped as
     ``{"status":200,"users":[...]}`` [V]; unknown ones are left out [I]; if none
     is known the body is ``{"status":200,"headers":[],"body":{"error":"No users"}}``
     [V] with HTTP 200 (default) or 404 (``v1_missing_status``) [I]. More than
     5 names get HTTP 400 with a synthetic body in the "No users" shape.
   - v2 (§1.2): the nine I/O Docs methods plus the reverse ``/gp`` lookup. Ids
     are JSON strings [I], ``user.json`` has ``scoreDeltas`` but ``/score`` has
     ``scoreDelta`` [V], ``bucket`` is a decile string [V], topics are a bare
     array [V]. Unknown ids get 404 [V status; body synthetic]; an unknown
     network name gets a 5xx [V status; body synthetic].

Opted-out people are indexed like everyone else and then answered exactly as if
they had never existed: same status, same headers, same bytes (§1.4.5). They
never appear in anyone's influencer lists either. A ``queued`` person answers
202 "queued for processing" [V text; body shape synthetic] on every v2 lookup
about them, and on v1 when no other named user can be served (a served user
wins, as a partial answer). Non-GET methods get a synthetic 405.

Paths outside ``/1/`` and ``/v2/`` get 404 before any key check (Mashery's
``596`` for an unknown service [V] is not simulated).

The app adds no ``Date`` or ``Server`` header itself; :func:`run_demo_upstream`
turns uvicorn's off, so two identical requests get byte-identical answers.

Fault knobs (``DemoUpstreamConfig.fault``) distort Klout's own answers for
tests of a proxy; Mashery's key and quota answers stay intact, except that
``set_cookie`` decorates every answer. State (quotas, the random source, the
log of received requests) lives in the app instance; there are no globals.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from functools import partial
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote_plus

import msgspec
import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

Fault = Literal[
    "malformed_json",  # JSON answers cut in half
    "wrong_types",  # digit strings become numbers, numbers become strings
    "endless_body",  # a chunked JSON body that never ends
    "huge_body",  # a valid JSON body padded to ``huge_body_bytes``
    "redirect",  # 302 to the cloud metadata address
    "stall_headers",  # never send the status line
    "set_cookie",  # Set-Cookie and hop-by-hop headers on every answer
]

DEMO_UPSTREAM_KEY = "demo-klout-upstream-key"
#: Where the ``redirect`` fault points: the link-local cloud metadata service.
REDIRECT_TARGET = "http://169.254.169.254/"
V1_MAX_USERS = 5  # "per Klout, you can only use upto 5 users at a time" [V]


class DemoPerson(msgspec.Struct, frozen=True, kw_only=True):
    """A fictional person the simulated Klout knows.

    ``state`` decides how the API answers about them: ``active`` people are
    served, ``opted_out`` people look exactly like people who never existed, and
    ``queued`` people answer 202. ``influencers`` and ``influencees`` are screen
    names; only active people among them are ever shown.
    """

    screen_name: str
    twitter_id: str
    klout_id: str
    state: Literal["active", "opted_out", "queued"] = "active"
    score: float | None = None
    google_id: str | None = None
    instagram_id: str | None = None
    day_change: float = 0.0
    week_change: float = 0.0
    month_change: float = 0.0
    kclass_id: int = 1
    kclass: str = "Observer"
    kclass_description: str = ""
    network_score: float = 0.0
    amplification_score: float = 0.0
    true_reach: int = 0
    topics: tuple[str, ...] = ()
    influencers: tuple[str, ...] = ()
    influencees: tuple[str, ...] = ()


DEMO_PEOPLE: tuple[DemoPerson, ...] = (
    DemoPerson(
        screen_name="alice_example",
        twitter_id="1001",
        klout_id="5001",
        score=71.3,
        google_id="2001",
        instagram_id="3001",
        day_change=0.11,
        week_change=0.42,
        month_change=1.87,
        kclass_id=9,
        kclass="Explorer",
        kclass_description="You actively engage in the social web, trying out new ways to connect.",
        network_score=72.5,
        amplification_score=38.0,
        true_reach=1250,
        topics=("Privacy", "Open Source", "Cycling"),
        influencers=("bob_example",),
        # carol is listed but opted out: she must never show up in alice's lists.
        influencees=("bob_example", "carol_optedout"),
    ),
    DemoPerson(
        screen_name="bob_example",
        twitter_id="1002",
        klout_id="5002",
        score=23.4,
        instagram_id="3002",
        day_change=-0.07,
        week_change=-0.34,
        month_change=0.25,
        kclass_id=1,
        kclass="Observer",
        kclass_description="You don't share very much, but you follow the social web.",
        network_score=24.1,
        amplification_score=4.0,
        true_reach=31,
        topics=("Coffee", "Jazz"),
        influencers=("alice_example",),
    ),
    DemoPerson(
        screen_name="carol_optedout",
        twitter_id="1003",
        klout_id="5003",
        state="opted_out",
        score=55.0,
        google_id="2003",
        instagram_id="3003",
        topics=("Gardening",),
    ),
    DemoPerson(screen_name="dave_queued", twitter_id="1004", klout_id="5004", state="queued"),
)


class DemoUpstreamConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the simulated Klout behaves; the defaults are the documented ones."""

    keys: tuple[str, ...] = (DEMO_UPSTREAM_KEY,)
    calls_per_second: float = 10.0  # free-key default [V]
    calls_per_day: int = 10_000  # free-key default [V]
    v1_missing_status: Literal[200, 404] = 200  # "No users" served with 200 or 404 [I]
    overload_rate: float = 0.0  # fraction of calls answered 503
    overload_body: str = "Service too busy"  # [B] unverified; blog post wording
    delay_seconds: float = 0.0  # wait this long before every answer (the median)
    # Spread of that wait: a log-normal with this sigma around delay_seconds, as
    # real API latencies are (0: always exactly delay_seconds).
    delay_sigma: float = 0.0
    fault: Fault | None = None
    huge_body_bytes: int = 8 * 1024 * 1024
    seed: int = 0  # for the random overload
    received_log_size: int = 1024
    people: tuple[DemoPerson, ...] = DEMO_PEOPLE

    def __post_init__(self) -> None:
        if not self.calls_per_second > 0:
            raise ValueError(f"calls_per_second must be > 0, got {self.calls_per_second!r}")
        if self.calls_per_day < 1:
            raise ValueError(f"calls_per_day must be >= 1, got {self.calls_per_day!r}")
        if not 0.0 <= self.overload_rate <= 1.0:
            raise ValueError(f"overload_rate must be in [0, 1], got {self.overload_rate!r}")
        if not self.delay_seconds >= 0:
            raise ValueError(f"delay_seconds must be >= 0, got {self.delay_seconds!r}")
        if not 0 <= self.delay_sigma <= 3:
            raise ValueError(f"delay_sigma must be in [0, 3], got {self.delay_sigma!r}")
        if self.huge_body_bytes < 0:
            raise ValueError(f"huge_body_bytes must be >= 0, got {self.huge_body_bytes!r}")
        if self.received_log_size < 1:
            raise ValueError(f"received_log_size must be >= 1, got {self.received_log_size!r}")


class ReceivedRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One request as it reached the simulated upstream, before any check."""

    method: str
    path: str  # the raw, still percent-encoded path
    query_string: str
    headers: tuple[tuple[str, str], ...]  # names lower-cased, in arrival order

    def mentions(self, text: str) -> bool:
        """Whether ``text`` occurs anywhere in the request, raw or percent-decoded."""
        places = (self.path, self.query_string, *(value for _, value in self.headers))
        return any(text in place or text in unquote_plus(place) for place in places)


# --- fixed answers ---------------------------------------------------------------

_JSON = (b"content-type", b"application/json; charset=utf-8")
_XML = (b"content-type", b"text/xml")  # Mashery's own answers [V]
_V1_NO_USERS = {"status": 200, "headers": [], "body": {"error": "No users"}}  # [V] verbatim
_V1_TOO_MANY = {  # synthetic, in the shape of "No users"
    "status": 400,
    "headers": [],
    "body": {"error": f"Too many users: at most {V1_MAX_USERS} per call"},
}
_V2_BAD_KEY = {  # [V] jKlout2 error.json
    "error": 403,
    "description": "Invalid or unprovided API key. All calls must have a key.",
}
# Synthetic: no source recorded a v2 404 body; the text is node_klout's for 404.
_NOT_FOUND = {"error": 404, "description": "Resource or user not found."}
# Synthetic body; the 5xx for an invalid network name is [V] (klout-sdk-php test).
_BAD_NETWORK = {"error": 500, "description": "Klout internal server error."}
# Synthetic shape; the sentence is the documented meaning of 202 [V].
_QUEUED = {
    "status": 202,
    "description": "Your request was accepted and the user was queued for processing.",
}
_NOT_ALLOWED = {"error": 405, "description": "Method not allowed."}  # synthetic
_LEAKY_HEADERS = [  # what a proxy must strip (RFC 9110 §7.6.1 for the hop-by-hop ones)
    (b"set-cookie", b"klout_session=demo-upstream-session; Path=/; HttpOnly"),
    (b"connection", b"keep-alive, x-klout-backend"),
    (b"keep-alive", b"timeout=5, max=100"),
    (b"x-klout-backend", b"api-7.internal"),  # hop-by-hop because Connection names it
    (b"proxy-authenticate", b'Basic realm="klout-internal"'),
]
_ENDLESS_CHUNK = b'{"twitter_screen_name":"alice_example","kscore":71.3},' * 1024
# A safety net so a test that forgets to disconnect cannot hold the server forever.
_ENDLESS_BODY_CAP = 1 << 30
_V1_ROUTES = frozenset(
    {
        "/1/klout.json",
        "/1/users/show.json",
        "/1/users/topics.json",
        "/1/soi/influenced_by.json",
        "/1/soi/influencer_of.json",
    }
)


class _Answer(msgspec.Struct, frozen=True):
    status: int
    headers: list[tuple[bytes, bytes]]  # without Content-Length, which send adds
    body: bytes


def _mashery_403(code: bytes, detail: bytes, body: bytes, retry_after: int | None) -> _Answer:
    headers = [_XML]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    headers += [(b"x-error-detail-header", detail), (b"x-mashery-error-code", code)]
    return _Answer(403, headers, body)


class _Quota:
    """Mashery's per-key limits: a token bucket per second and a count per UTC day."""

    __slots__ = ("day", "last", "tokens", "used")

    def __init__(self, capacity: float, now: float) -> None:
        self.tokens = capacity
        self.last = now
        self.day = int(now // 86_400)
        self.used = 0


class DemoUpstream:
    """The simulated Klout as an ASGI callable; ``received`` logs what arrived."""

    def __init__(self, config: DemoUpstreamConfig, clock: Callable[[], float]) -> None:
        self.config = config
        self.received: deque[ReceivedRequest] = deque(maxlen=config.received_log_size)
        self._clock = clock
        self._random = random.Random(config.seed)
        self._keys = frozenset(config.keys)
        self._quotas: dict[str, _Quota] = {}
        self._by_screen_name = _index(config.people, "screen_name", lambda p: p.screen_name.lower())
        self._by_id: dict[str, dict[str, DemoPerson]] = {
            "tw": _index(config.people, "twitter_id", lambda p: p.twitter_id),
            "gp": _index(config.people, "google_id", lambda p: p.google_id),
            "ig": _index(config.people, "instagram_id", lambda p: p.instagram_id),
            "klout": _index(config.people, "klout_id", lambda p: p.klout_id),
        }
        for person in config.people:
            if person.state == "active" and person.score is None:
                raise ValueError(f"active person {person.screen_name!r} has no score")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # no websockets; uvicorn refuses the handshake
        self.received.append(_received(scope))
        while (await receive()).get("more_body", False):
            pass  # the API reads no request bodies
        config = self.config
        delay = config.delay_seconds
        if delay and config.delay_sigma:
            delay *= math.exp(config.delay_sigma * self._random.gauss(0.0, 1.0))
        if delay and await _client_gone_within(receive, delay):
            return
        answer = self._mashery(scope) or self._klout_refusal(scope)
        if answer is None and config.fault == "stall_headers":
            await _client_gone_within(receive, None)
            return
        if answer is None and config.fault == "endless_body":
            await self._send_endless(receive, send)
            return
        answer = answer or self._klout(scope)
        headers = [*answer.headers, (b"content-length", str(len(answer.body)).encode())]
        if config.fault == "set_cookie":
            headers += _LEAKY_HEADERS
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": answer.body})

    # --- Mashery -------------------------------------------------------------------

    def _mashery(self, scope: Scope) -> _Answer | None:
        """Mashery's verdict on the call, or ``None`` if it passes to Klout."""
        path: str = scope["path"]
        if not path.startswith(("/1/", "/v2/")):
            return _json(404, _NOT_FOUND)
        key = _query(scope).get("key")
        if key is None or key not in self._keys:
            if path.startswith("/1/"):
                return _mashery_403(
                    b"ERR_403_NOT_AUTHORIZED", b"Not Authorized", b"<h1>Not Authorized</h1>", None
                )
            return _json(403, _V2_BAD_KEY)
        return self._spend(key)

    def _spend(self, key: str) -> _Answer | None:
        now = self._clock()
        rate = self.config.calls_per_second
        quota = self._quotas.get(key)
        if quota is None:
            quota = self._quotas[key] = _Quota(rate, now)
        quota.tokens = min(rate, quota.tokens + max(0.0, now - quota.last) * rate)
        quota.last = now
        today = int(now // 86_400)
        if today != quota.day:
            quota.day, quota.used = today, 0
        if quota.used >= self.config.calls_per_day:
            # The daily quota resets at midnight UTC; Retry-After says when [I].
            to_midnight = max(1, math.ceil(86_400 - now % 86_400))
            return _mashery_403(
                b"ERR_403_DEVELOPER_OVER_RATE",
                b"Account Over Rate Limit",
                b"<h1>Developer Over Rate</h1>",
                to_midnight,
            )
        if quota.tokens < 1.0:
            return _mashery_403(
                b"ERR_403_DEVELOPER_OVER_QPS",
                b"Account Over Queries Per Second Limit",
                b"<h1>Developer Over Qps</h1>",
                1,
            )
        quota.tokens -= 1.0
        quota.used += 1
        return None

    # --- Klout ---------------------------------------------------------------------

    def _klout_refusal(self, scope: Scope) -> _Answer | None:
        """Klout's refusal to serve the call at all (wrong method, overload), if any."""
        if scope["method"] != "GET":
            return _Answer(405, [_JSON, (b"allow", b"GET")], msgspec.json.encode(_NOT_ALLOWED))
        rate = self.config.overload_rate
        if rate and self._random.random() < rate:
            body = self.config.overload_body.encode()
            return _Answer(503, [(b"content-type", b"text/plain; charset=utf-8")], body)
        return None

    def _klout(self, scope: Scope) -> _Answer:
        config = self.config
        if config.fault == "redirect":
            return _Answer(302, [(b"location", REDIRECT_TARGET.encode())], b"")
        path: str = scope["path"]
        query = _query(scope)
        status, payload = self._v1(path, query) if path.startswith("/1/") else self._v2(path, query)
        if config.fault == "wrong_types":
            payload = _wrong_types(payload)
        body = msgspec.json.encode(payload)
        if config.fault == "malformed_json":
            body = body[: len(body) // 2]
        elif config.fault == "huge_body":
            body = _padded(body, config.huge_body_bytes)
        return _Answer(status, [_JSON], body)

    def _v1(self, path: str, query: dict[str, str]) -> tuple[int, object]:
        if path not in _V1_ROUTES:
            return 404, _NOT_FOUND
        names = [name.strip() for name in query.get("users", "").split(",") if name.strip()]
        if len(names) > V1_MAX_USERS:
            return 400, _V1_TOO_MANY
        users: list[object] = []
        queued = False
        seen: set[str] = set()
        for name in names:
            person = self._by_screen_name.get(name.lower())
            if person is None or person.screen_name in seen:
                continue
            seen.add(person.screen_name)
            if person.state == "active":
                users.append(self._v1_user(path, person))
            queued = queued or person.state == "queued"
        if users:
            return 200, {"status": 200, "users": users}
        if queued:  # a queued user is still news when nobody else was found
            return 202, _QUEUED
        return self.config.v1_missing_status, _V1_NO_USERS

    def _v1_user(self, path: str, p: DemoPerson) -> dict[str, object]:
        if path == "/1/klout.json":
            return {"twitter_screen_name": p.screen_name, "kscore": p.score}
        if path == "/1/users/show.json":
            score = {
                "kscore": p.score,
                "slope": p.day_change,
                "description": "",
                "kclass_id": p.kclass_id,
                "kclass": p.kclass,
                "kclass_description": p.kclass_description,
                "kscore_description": "",
                "network_score": p.network_score,
                "amplification_score": p.amplification_score,
                "true_reach": p.true_reach,
                "delta_1day": p.day_change,
                "delta_5day": p.week_change,
            }
            return {
                "twitter_id": p.twitter_id,
                "twitter_screen_name": p.screen_name,
                "score": score,
            }
        if path == "/1/users/topics.json":
            return {"twitter_screen_name": p.screen_name, "topics": [t.lower() for t in p.topics]}
        field, names = (
            ("influencers", p.influencers)
            if path == "/1/soi/influenced_by.json"
            else ("influencees", p.influencees)
        )
        pairs = [
            {"twitter_screen_name": q.screen_name, "kscore": q.score} for q in self._shown(names)
        ]
        return {"twitter_screen_name": p.screen_name, field: pairs}

    def _v2(self, path: str, query: dict[str, str]) -> tuple[int, object]:
        match path.removeprefix("/v2/").split("/"):
            case ["identity.json", "twitter"]:
                person = self._by_screen_name.get(query.get("screenName", "").lower())
                return _v2_about(person, lambda p: (200, {"id": p.klout_id, "network": "ks"}))
            case ["identity.json", ("tw" | "gp" | "ig") as network, network_id]:
                person = self._by_id[network].get(network_id)
                return _v2_about(person, lambda p: (200, {"id": p.klout_id, "network": "ks"}))
            case ["identity.json", "klout", klout_id, ("tw" | "gp") as network]:
                return _v2_about(self._by_id["klout"].get(klout_id), partial(_reverse, network))
            case ["identity.json", _, _] | ["identity.json", "klout", _, _]:
                # Includes "ks", which the official docs named but "doesn't work" [V].
                return 500, _BAD_NETWORK
            case ["user.json", klout_id]:
                return _v2_about(self._by_id["klout"].get(klout_id), self._v2_user)
            case ["user.json", klout_id, ("score" | "topics" | "influence") as part]:
                render = partial(self._v2_user, part=part)
                return _v2_about(self._by_id["klout"].get(klout_id), render)
        return 404, _NOT_FOUND

    def _v2_user(self, p: DemoPerson, part: str | None = None) -> tuple[int, object]:
        if part == "score":
            return 200, {"score": p.score, "scoreDelta": _deltas(p), "bucket": _bucket(p)}
        if part == "topics":
            return 200, [_v2_topic(name) for name in p.topics]
        if part == "influence":
            influencers = [self._v2_entity(q) for q in self._shown(p.influencers)]
            influencees = [self._v2_entity(q) for q in self._shown(p.influencees)]
            return 200, {
                "myInfluencers": influencers,
                "myInfluencees": influencees,
                "myInfluencersCount": len(influencers),
                "myInfluenceesCount": len(influencees),
            }
        return 200, self._v2_payload(p)

    def _v2_payload(self, p: DemoPerson) -> dict[str, object]:
        return {
            "kloutId": p.klout_id,
            "nick": p.screen_name,
            "score": {"score": p.score, "bucket": _bucket(p)},
            "scoreDeltas": _deltas(p),
        }

    def _v2_entity(self, p: DemoPerson) -> dict[str, object]:
        return {"entity": {"id": p.klout_id, "payload": self._v2_payload(p)}}

    def _shown(self, screen_names: tuple[str, ...]) -> Iterator[DemoPerson]:
        """The active people among ``screen_names``; opted-out ones never appear."""
        for name in screen_names:
            person = self._by_screen_name.get(name.lower())
            if person is not None and person.state == "active":
                yield person

    async def _send_endless(self, receive: Receive, send: Send) -> None:
        """Stream a JSON body that never closes, until the client hangs up."""
        gone = asyncio.create_task(_client_gone_within(receive, None))
        await send({"type": "http.response.start", "status": 200, "headers": [_JSON]})
        await send(
            {"type": "http.response.body", "body": b'{"status":200,"users":[', "more_body": True}
        )
        sent = 0
        while not gone.done() and sent < _ENDLESS_BODY_CAP:
            await send({"type": "http.response.body", "body": _ENDLESS_CHUNK, "more_body": True})
            sent += len(_ENDLESS_CHUNK)
            await asyncio.sleep(0)  # let the disconnect be noticed
        gone.cancel()
        await asyncio.wait({gone})
        await send({"type": "http.response.body", "body": b""})  # a no-op once disconnected


def create_demo_upstream(
    config: DemoUpstreamConfig | None = None, *, clock: Callable[[], float] = time.time
) -> DemoUpstream:
    """A fresh simulated Klout; ``clock`` (seconds since the epoch) drives the quotas."""
    return DemoUpstream(config or DemoUpstreamConfig(), clock)


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the host process owns the signals
        yield


async def run_demo_upstream(host: str, port: int, config: DemoUpstreamConfig | None = None) -> None:
    """Serve the simulated Klout with uvicorn until cancelled, then shut down cleanly."""
    server = _EmbeddedServer(
        uvicorn.Config(
            create_demo_upstream(config),
            host=host,
            port=port,
            lifespan="on",
            log_level="warning",
            date_header=False,  # identical requests must get identical bytes
            server_header=False,
            timeout_graceful_shutdown=1,
        )
    )
    serving = asyncio.create_task(server.serve())
    try:
        await asyncio.shield(serving)
    except asyncio.CancelledError:
        server.should_exit = True
        await serving
        raise


# --- helpers -----------------------------------------------------------------------


def _index(
    people: tuple[DemoPerson, ...], field: str, key: Callable[[DemoPerson], str | None]
) -> dict[str, DemoPerson]:
    index: dict[str, DemoPerson] = {}
    for person in people:
        value = key(person)
        if value is None:
            continue
        if value in index:
            raise ValueError(f"two demo people share {field} {value!r}")
        index[value] = person
    return index


def _query(scope: Scope) -> dict[str, str]:
    """The query parameters; the first occurrence of a name wins."""
    params: dict[str, str] = {}
    for name, value in parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True):
        params.setdefault(name, value)
    return params


def _received(scope: Scope) -> ReceivedRequest:
    raw_path: bytes | None = scope.get("raw_path")
    return ReceivedRequest(
        method=scope["method"],
        path=raw_path.decode("latin-1") if raw_path is not None else scope["path"],
        query_string=scope["query_string"].decode("latin-1"),
        headers=tuple((n.decode("latin-1"), v.decode("latin-1")) for n, v in scope["headers"]),
    )


def _json(status: int, payload: object) -> _Answer:
    return _Answer(status, [_JSON], msgspec.json.encode(payload))


def _v2_about(
    person: DemoPerson | None, render: Callable[[DemoPerson], tuple[int, object]]
) -> tuple[int, object]:
    """The v2 answer about ``person``: rendered if active, else 404 or 202."""
    if person is None or person.state == "opted_out":
        return 404, _NOT_FOUND  # identical for both: the caller cannot tell them apart
    if person.state == "queued":
        return 202, _QUEUED
    return render(person)


def _reverse(network: str, p: DemoPerson) -> tuple[int, object]:
    """kloutId → network id; a person without an id on that network is not found."""
    network_id = p.twitter_id if network == "tw" else p.google_id
    return (
        (404, _NOT_FOUND) if network_id is None else (200, {"id": network_id, "network": network})
    )


def _bucket(p: DemoPerson) -> str:
    """The decile string: "10-19" ... "80-89", and "90-100" at the top [V]."""
    decile = min(9, int((p.score or 0.0) // 10))
    return "90-100" if decile == 9 else f"{decile * 10}-{decile * 10 + 9}"


def _deltas(p: DemoPerson) -> dict[str, float]:
    return {"dayChange": p.day_change, "weekChange": p.week_change, "monthChange": p.month_change}


def _v2_topic(name: str) -> dict[str, str]:
    slug = name.lower().replace(" ", "-")
    # Stable 19-digit ids, above 2**53 like the real ones, so they must stay strings.
    topic_id = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") >> 1
    return {
        "id": str(topic_id),
        "displayName": name,
        "name": name,
        "slug": slug,
        "imageUrl": f"http://kcdn3.klout.com/static/images/{slug}.png",
        "topicType": "sub",
    }


def _wrong_types(value: object) -> object:
    """Swap JSON types: strings of digits become numbers, numbers become strings."""
    if isinstance(value, dict):
        return {name: _wrong_types(item) for name, item in value.items()}
    if isinstance(value, list):
        return [_wrong_types(item) for item in value]
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return value


def _padded(body: bytes, size: int) -> bytes:
    """``body`` still valid JSON of the same shape, padded past ``size`` bytes."""
    padding = b'"' + b"x" * size + b'"'
    if body.startswith(b"{"):
        return b'{"padding":' + padding + (b"," + body[1:] if body != b"{}" else b"}")
    return b"[" + padding + (b"," + body[1:] if body != b"[]" else b"]")


async def _client_gone_within(receive: Receive, seconds: float | None) -> bool:
    """Wait up to ``seconds`` (``None``: forever) for a disconnect; whether it came."""
    try:
        async with asyncio.timeout(seconds):
            while (await receive())["type"] != "http.disconnect":
                pass
    except TimeoutError:
        return False
    return True


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
