"""Traces and metrics name clients, purposes, rules and outcomes, never a person."""

from __future__ import annotations

import re
import time

import httpx
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.support.gateway import RunningGateway

CRM = {"key": "demo-crm-key"}
IDENTIFIERS = ("alice_example", "1001", "5001", "nobody_example", "1999")


def test_a_lookup_is_a_span_with_an_upstream_child_and_no_subject(
    gateway: RunningGateway, client: httpx.Client
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    runtime = gateway.state.runtime
    assert runtime is not None
    runtime.tracer, runtime.tracing = provider.get_tracer("test"), True

    r = client.get("/klout/v2/identity.json/twitter", params={**CRM, "screenName": "alice_example"})
    assert r.status_code == 200
    # The lookup span ends just after the answer is sent: give it a moment.
    deadline = time.monotonic() + 2
    while len(exporter.get_finished_spans()) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"gateway.lookup", "gateway.upstream"}
    lookup, upstream = spans["gateway.lookup"], spans["gateway.upstream"]
    assert upstream.parent is not None
    assert upstream.parent.span_id == lookup.context.span_id
    assert lookup.attributes is not None
    assert lookup.attributes["gateway.client"] == "crm"
    assert lookup.attributes["gateway.request_id"] == r.headers["x-request-id"]
    assert lookup.attributes["gateway.route"] == "/v2/identity.json/twitter"
    for span in spans.values():
        # The request id is random hex and may contain "1001" by chance; it is ours.
        attributes = {k: v for k, v in (span.attributes or {}).items() if k != "gateway.request_id"}
        text = repr(attributes)
        assert not any(identifier in text for identifier in IDENTIFIERS)


def test_metrics_count_decisions_by_rule_without_identifiers(client: httpx.Client) -> None:
    client.get("/klout/v2/user.json/5001/score", params=CRM)
    client.get("/klout/v2/user.json/5001/score", params={"key": "demo-hr-key"})
    client.get("/klout/v2/identity.json/tw/1999", params=CRM)
    text = client.get("/metrics", headers={"Authorization": "Bearer demo-admin-token"}).text
    assert 'gateway_lookups_total{client="crm",decision="allow"' in text
    assert 'gateway_rule_matches_total{rule="deny-hr-clients"} 1.0' in text
    assert 'decision="neutralize"' in text
    assert "gateway_audit_queue_depth" in text
    assert "gateway_policy_reloads_total" in text
    # Identifiers would show in label values; sample values are numbers that may
    # contain "1001" by chance (a latency sum of 0.0010012 s).
    labels = " ".join(re.findall(r"\{[^}]*\}", text))
    assert not any(identifier in labels for identifier in IDENTIFIERS)
