"""Telemetry: Prometheus metrics and OpenTelemetry traces, with no personal data.

Metric labels and span attributes carry client ids, purposes, upstream names,
route templates, rule ids and outcomes; never a subject identifier, a pseudonym
or a score. Traces are off unless an OTLP endpoint is configured; then spans are
exported in the background through a bounded queue, so a collector that is down
drops spans, never requests (reliability.md catalogue 2 #20).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

SERVICE_NAME = "score-gateway"


def make_tracer(otlp_endpoint: str | None) -> tuple[trace.Tracer, TracerProvider | None]:
    """A real tracer exporting to ``otlp_endpoint``, or a no-op one."""
    if not otlp_endpoint:
        return trace.NoOpTracer(), None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
    provider.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(endpoint=otlp_endpoint, timeout=2),
            max_queue_size=2048,
            export_timeout_millis=2000,
        )
    )
    return provider.get_tracer("gateway"), provider


class Metrics:
    """The gateway's metrics in a registry of its own (no process-global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.lookups = Counter(
            "gateway_lookups_total",
            "Lookups by decision, purpose, upstream, client and outcome.",
            ["decision", "purpose", "upstream", "client", "outcome", "status"],
            registry=r,
        )
        self.rule_matches = Counter(
            "gateway_rule_matches_total", "Lookups each policy rule matched.", ["rule"], registry=r
        )
        self.lookup_seconds = Histogram(
            "gateway_lookup_seconds", "Time to answer a lookup.", ["upstream"], registry=r
        )
        self.upstream_seconds = Histogram(
            "gateway_upstream_seconds", "Upstream round-trip time.", ["upstream"], registry=r
        )
        self.audit_commit_seconds = Gauge(
            "gateway_audit_commit_seconds", "Duration of the last audit group commit.", registry=r
        )
        self.audit_queue_depth = Gauge(
            "gateway_audit_queue_depth", "Audit records waiting for their commit.", registry=r
        )
        self._lookup_children: dict[tuple[str, str, str, str, str, int], Any] = {}
        self._rule_children: dict[str, Any] = {}
        self._latency_children: dict[str, Any] = {}
        self._upstream_children: dict[str, Any] = {}
        self.policy_reloads = Counter(
            "gateway_policy_reloads_total", "Policy reloads by result.", ["result"], registry=r
        )
        self.data_dir_free_bytes = Gauge(
            "gateway_data_dir_free_bytes",
            "Free bytes on the filesystem of the data directory (audit store, keys).",
            registry=r,
        )
        self.data_dir_low_space = Gauge(
            "gateway_data_dir_low_space",
            "1 while the data directory's free space is under the watermark (min_free_disk).",
            registry=r,
        )

    def lookup(self, lookup: Any, seconds: float) -> None:
        upstream = lookup.upstream or "-"
        key = (
            lookup.decision or "error",
            lookup.purpose or "-",
            upstream,
            lookup.client or "-",
            lookup.outcome or "-",
            lookup.status or 0,
        )
        # Label children are looked up once per combination: labels() per request
        # cost more than the increment (bench/README.md). Every label value comes
        # from the policy or the gateway, so the combinations are bounded.
        counter = self._lookup_children.get(key)
        if counter is None:
            counter = self.lookups.labels(*key[:5], str(key[5]))
            self._lookup_children[key] = counter
        counter.inc()
        for rule in lookup.rules:
            child = self._rule_children.get(rule)
            if child is None:
                child = self._rule_children[rule] = self.rule_matches.labels(rule)
            child.inc()
        histogram = self._latency_children.get(upstream)
        if histogram is None:
            histogram = self._latency_children[upstream] = self.lookup_seconds.labels(upstream)
        histogram.observe(seconds)

    def upstream_latency(self, upstream: str, seconds: float) -> None:
        histogram = self._upstream_children.get(upstream)
        if histogram is None:
            histogram = self._upstream_children[upstream] = self.upstream_seconds.labels(upstream)
        histogram.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line; control characters escaped by the encoder, fields
    capped, so no caller-supplied byte can forge a log line (uvicorn CVE-2020-7694)."""

    MAX_FIELD = 2000

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage()[: self.MAX_FIELD],
        }
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            entry["request_id"] = str(request_id)[:64]
        if record.exc_info and record.exc_info[0] is not None:
            entry["error"] = record.exc_info[0].__name__
        return json.dumps(entry, ensure_ascii=True)


def configure_logging(level: str) -> None:
    """JSON lines on stderr for the gateway and the server it runs in."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter())
    handler.formatter.converter = time.gmtime  # type: ignore[union-attr]
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
