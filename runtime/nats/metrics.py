"""Prometheus metrics and readiness on a loopback HTTP port (off unless --metrics-port).

GET /metrics: Prometheus text format. GET /ready: 200 "ready" while serving, 503 otherwise
(starting or draining). Counters are kept even when the endpoint is off (cheap, and the
daemon's shutdown log reports them).
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Generic, Protocol, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from task_ingress.runtime.driver import RuntimeStatistics

MAX_CACHED_CHILDREN = 4096
"""Labelled children kept per metric; their labels come from closed sets (actions, reasons,
trust states, envelope kinds), so the bound is never reached in practice."""

M = TypeVar("M", Counter, Histogram)

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)


class HasStatistics(Protocol):
    """What the metrics read of a runtime (an IngressRuntime)."""

    def statistics(self) -> RuntimeStatistics:
        """A snapshot of the runtime's queues."""
        ...


class DispatchTotals:
    """The runtime's dispatch totals (`RuntimeStatistics`) as two counters, read at scrape
    time: their ratio is the mean batch each group commit spreads its fsync over."""

    def __init__(self, runtime: HasStatistics) -> None:
        self.runtime = runtime

    def collect(self) -> list[CounterMetricFamily]:
        """Both counters as the runtime reports them now."""
        stats = self.runtime.statistics()
        return [
            CounterMetricFamily(
                "task_ingress_runtime_dispatched_calls", "Requests and presence changes the "
                "runtime handed to its actors.", value=stats.calls_dispatched),
            CounterMetricFamily(
                "task_ingress_runtime_dispatched_batches", "The hand-offs they went in "
                "(calls / batches = the mean batch; small under load: each request pays "
                "more of its group commit).", value=stats.batches_dispatched),
        ]


class Children(Generic[M]):
    """A metric's labelled children by label values: `labels()` validates and locks on
    every call (~4 per request on the event loop); a child, once made, never changes."""

    def __init__(self, metric: M) -> None:
        self.metric: M = metric
        self._children: dict[tuple[str, ...], M] = {}

    def get(self, *values: str) -> M:
        """The child for `values`, as `metric.labels(*values)` returns it."""
        child = self._children.get(values)
        if child is None:
            child = self.metric.labels(*values)
            if len(self._children) < MAX_CACHED_CHILDREN:
                self._children[values] = child
        return child


class Metrics:
    """The daemon's counters, histogram and gauges in a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "task_ingress_requests", "Task requests answered, by action, outcome and reason.",
            ["action", "outcome", "reason"], registry=self.registry)
        self.latency = Histogram(
            "task_ingress_request_seconds", "Arrival to reply published, per action.",
            ["action"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.by_trust = Counter(
            "task_ingress_requests_by_trust", "Task requests answered, by the sender's "
            "RFC 004 trust state and outcome.", ["trust", "outcome"], registry=self.registry)
        self.greets = Counter(
            "task_ingress_greets", "Greets received (never audited one by one), by result "
            "(applied, stale, duplicate, full, rejected, failed) and trust state.",
            ["result", "trust"],
            registry=self.registry)
        self.trust = Counter(
            "task_ingress_envelopes", "Envelopes that passed AGH's rules and were judged "
            "(greet, whois, task say, or 'compact'), by kind and RFC 004 trust state.",
            ["kind", "trust"], registry=self.registry)
        self.malformed = Counter(
            "task_ingress_malformed_envelopes", "Messages AGH's parser would refuse "
            "(audited invalid_request).", registry=self.registry)
        self.whois = Counter(
            "task_ingress_whois_answered", "whois requests the daemon answered.",
            registry=self.registry)
        self.own_greets = Counter(
            "task_ingress_own_greets", "Greets the daemon published.", registry=self.registry)
        self.unsendable = Counter(
            "task_ingress_unsendable_envelopes", "Envelopes the daemon built but AGH's rules "
            "refused, so never published (a bug if non-zero).", registry=self.registry)
        self.ignored = Counter(
            "task_ingress_ignored_envelopes", "Valid AGH envelopes not for task ingress.",
            ["kind"], registry=self.registry)
        self.handling = Gauge(
            "task_ingress_messages_in_flight", "NATS messages being judged (at most "
            "max_in_flight_messages; beyond it NATS's pending limits push back).",
            registry=self.registry)
        self.handling_peak = Gauge(
            "task_ingress_messages_in_flight_peak", "The most NATS messages judged at once "
            "since the daemon started.", registry=self.registry)
        self.dropped = Counter(
            "task_ingress_dropped", "Messages dropped before they were judged, by cause: "
            "'unproven' (the unproven budget was spent) or 'slow-consumer' (NATS's pending "
            "limit was full); audited in aggregate per subject and interval.", ["cause"],
            registry=self.registry)
        self.replies_refused = Counter(
            "task_ingress_replies_refused", "Answers not sent to a NATS reply subject that "
            "is an AGH subject, or not an _INBOX. subject for an unproven sender.",
            registry=self.registry)
        self.in_flight = Gauge(
            "task_ingress_in_flight", "Requests received and not yet answered.",
            registry=self.registry)
        self.pending_presence = Gauge(
            "task_ingress_pending_presence", "Greets and rejections waiting for a worker.",
            registry=self.registry)
        self.ready = Gauge("task_ingress_ready", "1 while serving, else 0.",
                           registry=self.registry)
        self.runtime_queue = Gauge(
            "task_ingress_runtime_queue", "Calls waiting for the runtime's driver thread.",
            registry=self.registry)
        self.runtime_admitted = Gauge(
            "task_ingress_runtime_admitted", "Requests admitted by the runtime, unanswered.",
            registry=self.registry)
        self._requests = Children(self.requests)
        self._by_trust = Children(self.by_trust)
        self._latency = Children(self.latency)
        self._trust = Children(self.trust)
        self.is_ready = False
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def watch_runtime(self, runtime: HasStatistics) -> None:
        """Read the runtime's queue depths (`IngressRuntime.statistics()`) at scrape time."""
        self.runtime_queue.set_function(lambda: runtime.statistics().calls_waiting)
        self.runtime_admitted.set_function(lambda: runtime.statistics().requests_in_flight)
        self.registry.register(DispatchTotals(runtime))

    def set_ready(self, ready: bool) -> None:
        """Readiness for /ready and the task_ingress_ready gauge."""
        self.is_ready = ready
        self.ready.set(1 if ready else 0)

    def observe_request(self, action: str, accepted: bool, reason: str | None, trust: str,
                        seconds: float) -> None:
        """Count one answered request."""
        outcome = "accepted" if accepted else "rejected"
        self._requests.get(action, outcome, reason or "").inc()
        self._by_trust.get(trust, outcome).inc()
        self._latency.get(action).observe(seconds)

    def judged(self, kind: str, trust: str) -> None:
        """Count one envelope that passed AGH's rules and was judged."""
        self._trust.get(kind, trust).inc()

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return bytes(generate_latest(self.registry))

    def serve(self, port: int) -> int:
        """Serve /metrics and /ready on 127.0.0.1:`port` in a thread; returns the port."""
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/metrics"):
                    body, status, ctype = metrics.exposition(), 200, CONTENT_TYPE_LATEST
                elif self.path.startswith("/ready"):
                    ok = metrics.is_ready
                    body = b"ready\n" if ok else b"not ready\n"
                    status, ctype = (200 if ok else 503), "text/plain"
                else:
                    body, status, ctype = b"not found\n", 404, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return  # scrapes are not worth a log line

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="task-ingress-metrics", daemon=True)
        self._thread.start()
        return int(self._server.server_address[1])

    def close(self) -> None:
        """Stop the HTTP endpoint, if any."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
