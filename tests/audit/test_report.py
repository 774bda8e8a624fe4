"""``gateway audit report``, the lookup CSV and ``GET /admin/report`` on a generated month.

The log holds over 10,000 lookups covering every decision and outcome, written
through the real AuditLog; every figure is checked against counts taken from the
plan of that traffic, not from the readers under test.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from gateway.audit.lookup_csv import iter_csv_chunks
from gateway.audit.lookups import Lookup, iter_events, iter_store_records
from gateway.audit.report import anchor
from gateway.audit.signing import KeyRing
from gateway.audit.store import AuditStore
from gateway.cli import main
from gateway.policies.compile import load_policy
from tests.audit.traffic import (
    OBJECTIONS,
    Planned,
    aggregates,
    as_logged,
    build_log,
    fill_store,
    format_1,
    plan,
)
from tests.support import browser
from tests.support.gateway import SHIPPED_POLICY, running_gateway
from tests.support.servers import serve_asgi

COUNT = 10_600


@pytest.fixture(scope="module")
def month(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Planned], int]:
    data_dir = tmp_path_factory.mktemp("month") / "data"
    planned = plan(COUNT)
    records = build_log(data_dir, planned)
    return data_dir, planned, records


def identified(planned: list[Planned]) -> list[Planned]:
    return [p for p in planned if p.client is not None]


def expected_figures(planned: list[Planned]) -> dict[str, Any]:
    """The report's figures, counted from the plan."""
    lookups = [as_logged(p) for p in identified(planned)]
    denied = [p for p in lookups if p.decision == "deny"]
    by_rule: Counter[str] = Counter()
    for p in denied:
        if p.error == "limit.exceeded":
            by_rule["limit-klout-terms"] += 1
        for rule in p.rules:
            if rule.startswith(("deny-", "terms.", "policy.")):
                by_rule[rule] += 1
    return {
        "lookups": len(lookups),
        "people": sum(p.people for p in lookups),
        "refused_unidentified": len(planned) - len(lookups),
        "unfinished": sum(p.unfinished for p in lookups),
        "by_decision": dict(Counter(p.decision for p in lookups)),
        "hiring_blocked": sum(
            p.client_kind == "hr" or (p.purpose or "").split(".")[0] == "employment" for p in denied
        ),
        "neutralized": dict(Counter(p.outcome for p in lookups if p.decision == "neutralize")),
        "denials_by_rule": dict(by_rule),
        "denials_by_client": dict(Counter(p.client for p in denied)),
        "denials_by_purpose": dict(Counter(p.purpose for p in denied)),
        "throttled_by_vendor": {"klout": sum(p.outcome == "throttled" for p in lookups)},
        "limit_refusals": {"klout": sum(p.error == "limit.exceeded" for p in lookups)},
        "objected": sum(p.outcome == "objected" for p in lookups),
        # Staff recorded them on 8 Dec, inside every window the tests use.
        "objections_added": OBJECTIONS,
        "versions": dict(Counter(p.policy_version for p in lookups)),
    }


def check_figures(report: dict[str, Any], want: dict[str, Any]) -> None:
    assert report["lookups"] == want["lookups"]
    assert report["people"] == want["people"]
    assert report["refused_unidentified"] == want["refused_unidentified"]
    assert report["unfinished"] == want["unfinished"]
    assert {k: v for k, v in report["by_decision"].items() if v} == want["by_decision"]
    assert report["hiring_blocked"] == want["hiring_blocked"]
    assert {k: v for k, v in report["neutralized"].items() if v} == want["neutralized"]
    assert report["denials_by_rule"] == want["denials_by_rule"]
    assert report["denials_by_client"] == want["denials_by_client"]
    assert report["denials_by_purpose"] == want["denials_by_purpose"]
    assert report["throttled_by_vendor"] == want["throttled_by_vendor"]
    assert report["limit_refusals"] == want["limit_refusals"]
    assert report["objections"]["lookups"] == want["objected"]
    assert report["objections"]["added"] == want["objections_added"]
    assert {v["version"]: v["lookups"] for v in report["policy_versions"]} == want["versions"]
    assert sum(b["counts"][d] for b in report["timeline"] for d in b["counts"]) == want["lookups"]


def test_the_generated_month_covers_every_decision_and_outcome(
    month: tuple[Path, list[Planned], int],
) -> None:
    """The traffic has every decision, every outcome, batches, cache hits and refusals."""
    _, planned, _ = month
    lookups = identified(planned)
    assert len(lookups) >= 10_000
    assert {p.decision for p in lookups} == {"allow", "deny", "neutralize", "error"}
    assert {p.outcome for p in lookups} >= {
        "found", "missing", "pending", "throttled", "error", "objected"
    }  # fmt: skip
    assert any(p.people == 5 for p in lookups)
    assert any(p.unfinished for p in lookups)


def test_report_figures_equal_the_traffic(
    month: tuple[Path, list[Planned], int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every figure of the JSON report equals the count taken from the plan, and the
    verification names the whole tree, its last checkpoint and the key id."""
    data_dir, planned, records = month
    out = tmp_path / "report.json"
    code = main(["audit", "report", "--data-dir", str(data_dir), "--json", str(out),
                 "--policies", str(SHIPPED_POLICY)])  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    for key in ("lookups", "by_decision", "hiring_blocked", "neutralized", "denials_by_rule",
                "denials_by_client", "policy_versions", "verification"):  # fmt: skip
        assert key in report
    want = expected_figures(planned)
    assert want["lookups"] >= 10_000
    check_figures(report, want)
    verification = report["verification"]
    assert verification["ok"] is True
    assert verification["tree_size"] == verification["records"] == records
    assert verification["last_checkpoint"]["size"] == records
    assert verification["key_ids"] == [KeyRing.load(data_dir).key_id]
    loads = [ld for v in report["policy_versions"] for ld in v["loads"]]
    assert [ld["status"] for ld in loads] == ["ok", "ok"]
    printed = capsys.readouterr().out
    assert f"lookups {len(identified(planned)):,}" in printed


def test_request_ids_behind_a_figure_are_exactly_its_lookups(
    month: tuple[Path, list[Planned], int], tmp_path: Path
) -> None:
    """The ids listed behind "hiring lookups blocked" are the planned hiring denials."""
    data_dir, planned, _ = month
    out = tmp_path / "report.json"
    assert main(["audit", "report", "--data-dir", str(data_dir), "--json", str(out)]) == 0
    ids = json.loads(out.read_text())["request_ids"]["hiring"]
    want = [p.request_id for p in planned if p.decision == "deny" and (
        p.client_kind == "hr" or (p.purpose or "").startswith("employment"))]  # fmt: skip
    assert ids["count"] == len(want)
    assert set(ids["ids"]) <= set(want)
    assert len(ids["ids"]) + ids["more"] == len(want)


def test_report_from_an_export_equals_the_store_and_windows_select_by_time(
    month: tuple[Path, list[Planned], int], tmp_path: Path
) -> None:
    """A report of an export (verified with the pinned key) for a window counts exactly
    the planned lookups that started in it."""
    data_dir, planned, _ = month
    export, pem, out = tmp_path / "a.jsonl", tmp_path / "k.pem", tmp_path / "r.json"
    assert main(["audit", "export", "--data-dir", str(data_dir), "--out", str(export)]) == 0
    pem.write_bytes(KeyRing.load(data_dir).public_pems())
    since, until = "2026-12-03T00:00:00Z", "2026-12-09T12:00:00Z"
    code = main(["audit", "report", "--export", str(export), "--public-key", str(pem),
                 "--since", since, "--until", until, "--json", str(out)])  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    inside = [p for p in planned if since <= p.time < until.replace("Z", ".000000Z")]
    want = expected_figures(inside)
    # A format-2 aggregate counts its refusals at its start: one that begins inside the
    # window is counted whole, one that begins before it not at all.
    want["refused_unidentified"] = sum(1 for p in inside if p.client is None and format_1(p)) + sum(
        a.count or 0 for a in aggregates(planned) if since <= a.time < until[:-1] + ".000000Z"
    )
    check_figures(report, want)
    assert report["verification"]["ok"] is True


def test_report_of_a_tampered_export_says_so_and_exits_1(
    month: tuple[Path, list[Planned], int], tmp_path: Path
) -> None:
    """One changed byte in the export turns the verification red and the exit code to 1."""
    data_dir, _, _ = month
    export, pem, out = tmp_path / "a.jsonl", tmp_path / "k.pem", tmp_path / "r.json"
    assert main(["audit", "export", "--data-dir", str(data_dir), "--out", str(export)]) == 0
    pem.write_bytes(KeyRing.load(data_dir).public_pems())
    data = bytearray(export.read_bytes())
    at = data.index(b'"client":"crm"') + len(b'"client":"c')
    data[at] = ord("x")
    export.write_bytes(bytes(data))
    code = main(["audit", "report", "--export", str(export), "--public-key", str(pem),
                 "--json", str(out)])  # fmt: skip
    assert code == 1
    verification = json.loads(out.read_text())["verification"]
    assert verification["ok"] is False
    assert "modified" in verification["message"]


def test_csv_has_one_row_per_lookup_and_records_on_request(
    month: tuple[Path, list[Planned], int], tmp_path: Path
) -> None:
    """The CSV has one row per request id (intent and outcome joined); ``--records``
    has one row per record."""
    data_dir, planned, records = month
    out = tmp_path / "lookups.csv"
    assert main(["audit", "export", "--data-dir", str(data_dir), "--format", "csv",
                 "--out", str(out)]) == 0  # fmt: skip
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    # Format-2 refusals before a client is known are aggregates, not lookups: no rows.
    requests = [p for p in planned if p.client is not None or format_1(p)]
    assert len(rows) == len(requests)
    assert len({r["request_id"] for r in rows}) == len(requests)
    by_id = {p.request_id: p for p in planned}
    for row in rows[:2000]:
        p = as_logged(by_id[row["request_id"]])
        assert (row["client"] or None, row["decision"], row["outcome"] or None) == (
            p.client,
            p.decision,
            p.outcome,
        )
        assert row["people"] == str(p.people if p.client else 0)
    raw = tmp_path / "records.csv"
    assert main(["audit", "export", "--data-dir", str(data_dir), "--format", "csv",
                 "--records", "--out", str(raw)]) == 0  # fmt: skip
    assert sum(1 for _ in csv.DictReader(io.StringIO(raw.read_text(encoding="utf-8")))) == records


def test_csv_streams_before_reading_the_whole_log(month: tuple[Path, list[Planned], int]) -> None:
    """The first chunk of the CSV leaves before most records are read: it streams."""
    data_dir, _, records = month
    store = AuditStore.open(data_dir=data_dir)
    read = 0

    def counted() -> Iterator[tuple[int, bytes]]:
        nonlocal read
        for item in iter_store_records(store):
            read += 1
            yield item

    try:
        chunks = iter_csv_chunks(counted(), chunk_size=16 * 1024)
        first = next(chunks)
        assert first.startswith(b"request_id,time,")
        assert read < records // 10
        assert sum(len(c) for c in chunks) > 100 * len(first) // 16
    finally:
        store.close()


V2_RECORDS = [
    # An intent and its outcome (which repeats nothing of the intent), a batch of three.
    {"v": 2, "kind": "lookup.intent", "time": "2026-12-02T10:00:00.000000Z",
     "request_id": "a" * 32, "client": "crm", "client_kind": "crm", "purpose": "sales",
     "upstream": "klout", "route": "/1/klout.json",
     "people": [{"c": "1" * 32, "r": "asked"}, {"c": "2" * 32, "r": "asked"},
                {"c": "3" * 32, "r": "asked"}],
     "decision": "allow", "rules": ["limit-klout-terms"], "policy_version": "sha256:x"},
    {"v": 2, "kind": "refusal.aggregate", "time": "2026-12-02T10:00:00.500000Z",
     "request_id": "c" * 32, "source": "hmac-sha256:" + "f" * 64, "error": "auth.invalid_key", "status": 401,
     "count": 3, "request_ids": ["c" * 32, "d" * 32, "e" * 32],
     "until": "2026-12-02T10:00:10.000000Z"},
    {"v": 2, "kind": "lookup", "time": "2026-12-02T10:00:01.000000Z", "request_id": "a" * 32,
     "outcome": "found", "upstream_status": 200, "status": 200, "latency_ms": 80.5,
     "people": [{"c": "4" * 32, "r": "disclosed", "o": "found"},
                {"c": "5" * 32, "r": "withheld", "o": "objected"}]},
    # A denial: one record with everything.
    {"v": 2, "kind": "lookup", "time": "2026-12-02T10:00:02.000000Z", "request_id": "b" * 32,
     "client": "ats", "client_kind": "hr", "purpose": "employment.recruitment",
     "upstream": "klout", "route": "/v2/user.json/{kloutId}/score",
     "people": [{"c": "6" * 32, "r": "asked"}], "decision": "deny",
     "rules": ["deny-employment", "deny-hr-clients"], "policy_version": "sha256:x",
     "status": 403, "error": "policy.denied"},
    {"v": 2, "kind": "policy.load", "time": "2026-12-02T10:00:03.000000Z",
     "request_id": "f" * 32, "decision": "loaded", "policy_version": "sha256:y",
     "detail": "1 rule changed", "actor": "cli:dana", "role": "policy", "loosening": True},
    {"v": 2, "kind": "objection.add", "time": "2026-12-02T10:00:04.000000Z",
     "request_id": "9" * 32, "actor": "cli:dana", "role": "policy",
     "people": [{"c": "7" * 32, "r": "asked", "o": "objected"}], "count": 2},
]  # fmt: skip


def test_format_2_records_join_into_lookups() -> None:
    """A format-2 outcome joins its intent by request id; people are counted apart from
    lookups; aggregated refusals, objections and policy loads are read."""
    from gateway.audit.report import build_report

    bodies = [(i, msgspec.json.encode(r)) for i, r in enumerate(V2_RECORDS)]
    lookups = [e for e in iter_events(bodies) if isinstance(e, Lookup)]
    assert [(lk.request_id[0], lk.client, lk.decision, lk.outcome, lk.people, lk.withheld)
            for lk in lookups] == [("a", "crm", "allow", "found", 3, 1),
                                   ("b", "ats", "deny", None, 1, 0)]  # fmt: skip
    report = build_report(iter_events(bodies), source="fixture")
    assert report.lookups == 2
    assert report.people == 4
    assert report.refused_unidentified == 3
    assert report.hiring_blocked == 1
    assert report.objections.people_withheld == 1
    assert report.objections.added == 1
    [load] = [ld for v in report.policy_versions for ld in v.loads]
    assert (load.status, load.actor, load.loosening) == ("ok", "cli:dana", True)


def test_a_window_does_not_count_an_outcome_whose_intent_is_before_it() -> None:
    """An intent before ``since`` and its outcome inside: the lookup started before the
    window, so it is neither a lookup nor a refusal of the window."""
    from gateway.audit.report import build_report

    bodies = [(i, msgspec.json.encode(r)) for i, r in enumerate(V2_RECORDS)]
    since = "2026-12-02T10:00:00.100000Z"  # after the intent, before its outcome
    report = build_report(iter_events(bodies, since=since), source="fixture", since=since)
    assert report.lookups == 1  # the denial only
    assert report.refused_unidentified == 3  # the aggregate, which starts inside


def test_report_of_a_postgres_store(pg_store: AuditStore, keyring: KeyRing) -> None:
    """The shared PostgreSQL store gives the same figures as the plan."""
    from gateway.audit.report import report_from_store

    planned = plan(1_200, seed=13)
    records = fill_store(pg_store, keyring, planned)
    report = report_from_store(pg_store, keyring, policy=load_policy(SHIPPED_POLICY))
    want = expected_figures(planned)
    assert report.lookups == want["lookups"]
    assert {k: v for k, v in report.by_decision.items() if v} == want["by_decision"]
    assert report.hiring_blocked == want["hiring_blocked"]
    assert report.denials_by_rule == want["denials_by_rule"]
    assert report.verification is not None
    assert report.verification.ok
    assert report.verification.tree_size == records


def _chart_sizes(dom: str) -> list[tuple[int, int]]:
    return [(int(w), int(h)) for w, h in re.findall(r'data-rendered="(\d+)x(\d+)"', dom)]


def test_html_report_renders_in_a_real_browser(
    month: tuple[Path, list[Planned], int], tmp_path: Path
) -> None:
    """Headless Chromium draws every chart with a non-zero size, shows the key figures,
    and each figure's link leads to a list of request ids; a screenshot is kept."""
    browser.chromium()
    data_dir, planned, _ = month
    html_file = tmp_path / "report.html"
    assert main(["audit", "report", "--data-dir", str(data_dir), "--html", str(html_file),
                 "--policies", str(SHIPPED_POLICY)]) == 0  # fmt: skip
    page = html_file.read_text()
    assert "http://" not in page.split("<body>")[0]
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    dom = browser.dump_dom(html_file.as_uri(), tmp_path / "profile")
    sizes = _chart_sizes(dom)
    assert len(sizes) == 4
    assert all(w > 100 and h > 50 for w, h in sizes)
    want = expected_figures(planned)
    for figure in (want["lookups"], want["hiring_blocked"], want["by_decision"]["deny"]):
        assert f"{figure:,}" in dom
    assert f'href="#{anchor("hiring")}"' in dom
    assert f'id="{anchor("hiring")}"' in dom
    shot = browser.screenshot(
        html_file.as_uri(), tmp_path / "profile", browser.ARTIFACTS / "report.png"
    )
    assert shot.stat().st_size > 10_000


def test_admin_report_in_a_real_browser(
    month: tuple[Path, list[Planned], int], tmp_path: Path
) -> None:
    """``GET /admin/report`` needs the admin token, serves the same figures as JSON and a
    self-contained page that Chromium renders with its charts."""
    browser.chromium()
    source, planned, _ = month
    data_dir = tmp_path / "data"
    shutil.copytree(source, data_dir)
    with running_gateway(data_dir) as gw:
        admin = {"Authorization": "Bearer demo-admin-token"}
        assert httpx.get(f"{gw.url}/admin/report").status_code == 401
        r = httpx.get(f"{gw.url}/admin/report.json", headers=admin, timeout=60)
        assert r.status_code == 200
        report = r.json()
        assert report["lookups"] == len(identified(planned))
        assert report["verification"]["ok"] is True

        async def with_token(scope: Any, receive: Any, send: Any) -> None:
            """The browser's way in: this loopback hop adds the admin token."""
            assert scope["type"] == "http"
            async with httpx.AsyncClient(timeout=60) as http:
                upstream = await http.get(f"{gw.url}{scope['path']}", headers=admin)
            headers = [(k.encode(), v.encode()) for k, v in upstream.headers.items()
                       if k.lower() in ("content-type", "content-security-policy")]  # fmt: skip
            await send({"type": "http.response.start", "status": upstream.status_code,
                        "headers": headers})  # fmt: skip
            await send({"type": "http.response.body", "body": upstream.content})

        page = httpx.get(f"{gw.url}/admin/report", headers=admin, timeout=60)
        assert page.headers["content-security-policy"].startswith("default-src 'none'")
        with serve_asgi(with_token) as hop:
            dom = browser.dump_dom(f"{hop}/admin/report", tmp_path / "profile")
            browser.screenshot(
                f"{hop}/admin/report", tmp_path / "profile", browser.ARTIFACTS / "admin-report.png"
            )
    sizes = _chart_sizes(dom)
    assert len(sizes) == 4
    assert all(w > 100 and h > 50 for w, h in sizes)
    assert f"{len(identified(planned)):,}" in dom
    assert "intact" in dom


def test_window_arguments_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    """A window that is not a time is refused with what was expected."""
    with pytest.raises(SystemExit):
        main(["audit", "report", "--since", "last month"])
    assert "expected 30d, 24h" in capsys.readouterr().err


def test_report_csv_matches_export_csv(
    month: tuple[Path, list[Planned], int], tmp_path: Path
) -> None:
    """``report --csv`` writes the same lookup rows as ``export --format csv``."""
    data_dir, _, _ = month
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert main(["audit", "report", "--data-dir", str(data_dir), "--csv", str(a)]) == 0
    assert main(["audit", "export", "--data-dir", str(data_dir), "--format", "csv",
                 "--out", str(b)]) == 0  # fmt: skip
    assert a.read_bytes() == b.read_bytes()
    assert io.StringIO(a.read_text()).readline().startswith("request_id,")


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_export_shows_a_progress_bar_only_when_asked_or_on_a_terminal(
    month: tuple[Path, list[Planned], int],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    fmt: str,
) -> None:
    """Not a terminal (as here): no bar. ``--progress always``: a bar that reaches 100%."""
    data_dir, _, _ = month
    out = tmp_path / f"a.{fmt}"
    base = ["audit", "export", "--data-dir", str(data_dir), "--format", fmt, "--out", str(out)]
    assert main(base) == 0
    assert "exporting [" not in capsys.readouterr().err
    assert main([*base, "--progress", "always"]) == 0
    err = capsys.readouterr().err
    assert "exporting [" in err
    assert "100%" in err


def test_verify_shows_a_progress_bar_only_when_asked_or_on_a_terminal(
    month: tuple[Path, list[Planned], int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``gateway audit verify``: no bar off a terminal; ``--progress always`` draws one."""
    data_dir, _, _ = month
    export, pem = tmp_path / "a.jsonl", tmp_path / "k.pem"
    assert main(["audit", "export", "--data-dir", str(data_dir), "--out", str(export)]) == 0
    pem.write_bytes(KeyRing.load(data_dir).public_pems())
    capsys.readouterr()
    assert main(["audit", "verify", str(export), "--public-key", str(pem)]) == 0
    assert "verifying [" not in capsys.readouterr().err
    assert main(["audit", "verify", str(export), "--public-key", str(pem),
                 "--progress", "always"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert "verifying [" in captured.err
    assert "100%" in captured.err
    assert captured.out.startswith("OK:")
