"""Prometheus metrics of the service, in a registry of its own (one per app).

=========================================  ==================================================
``athena_runs_total``                      runs by ``language``, ``mode``, ``outcome``
``athena_run_duration_seconds``            run wall time (histogram) by ``language``, ``mode``
``athena_http_request_duration_seconds``   request latency by ``method``, ``route``, ``status``
``athena_violations_total``                violations by ``category``
``athena_warm_pool_ready``                 ready warm sandboxes by ``mode``, ``language``
``athena_queue_depth``                     runs waiting for a place in a sandbox
``athena_runs_in_flight``                  runs in flight by ``tenant`` (the scraper's own only)
``athena_draining``                        1 while the server drains for shutdown
``athena_sessions_open``                   open sessions (all tenants, every front end)
=========================================  ==================================================

Outcomes: ``success``, ``failure`` (the code ran and failed), ``timeout``, ``rejected`` (the
validator refused the code), ``cancelled``, ``error`` (the run could not happen). Runs are
counted by an orchestrator result listener, so every run is, whichever front end started it
(a route, a stream, a batch, an MCP tool call) and however it ended (a client that left and a
drain that killed it included).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from orchestrator.models import ExecutionResult
from orchestrator.orchestrator import Orchestrator
from orchestrator.results import VALIDATION_FAILED

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_RUN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0)


def outcome_of(result: ExecutionResult) -> str:
    """The ``outcome`` label of a result."""
    if result.success:
        return "success"
    if result.error_type == "RunCancelledError":
        return "cancelled"
    if any(v.category == "timeout" for v in result.violations):
        return "timeout"
    if result.error == VALIDATION_FAILED:
        return "rejected"
    return "error" if result.error_type else "failure"


class _LiveCollector(Collector):
    """Figures read when scraped: pools, queue, in-flight runs, draining."""

    def __init__(
        self,
        orchestrator: Orchestrator,
        in_flight: Callable[[], Mapping[str, int]],
        draining: Callable[[], bool],
    ) -> None:
        self._orchestrator = orchestrator
        self._in_flight = in_flight
        self._draining = draining

    def collect(self) -> Iterator[Metric]:
        """Yield the live gauges."""
        pools = GaugeMetricFamily(
            "athena_warm_pool_ready", "Ready warm sandboxes.", labels=["mode", "language"]
        )
        for (mode, language), ready in sorted(self._orchestrator.pool_sizes().items()):
            pools.add_metric([mode, language], ready)
        yield pools
        yield GaugeMetricFamily(
            "athena_queue_depth",
            "Runs waiting for a place in a sandbox.",
            value=self._orchestrator.queue_depth(),
        )
        flight = GaugeMetricFamily(
            "athena_runs_in_flight", "Runs in flight per tenant.", labels=["tenant"]
        )
        for tenant, count in sorted(self._in_flight().items()):
            flight.add_metric([tenant], count)
        yield flight
        yield GaugeMetricFamily(
            "athena_sessions_open",
            "Open sessions, all tenants together.",
            value=len(self._orchestrator.sessions()),
        )
        yield GaugeMetricFamily(
            "athena_draining",
            "1 while the server drains for shutdown.",
            value=int(self._draining()),
        )


class ServiceMetrics:
    """The service's metrics and the registry they live in.

    Args:
        orchestrator: read for pool sizes and queue depth when scraped.
        in_flight: each tenant's runs in flight, read when scraped.
        draining: whether the server drains, read when scraped.
    """

    def __init__(
        self,
        orchestrator: Orchestrator,
        in_flight: Callable[[], Mapping[str, int]],
        draining: Callable[[], bool],
    ) -> None:
        self.registry = CollectorRegistry()
        self.runs = Counter(
            "athena_runs",
            "Runs by language, isolation mode and outcome.",
            ["language", "mode", "outcome"],
            registry=self.registry,
        )
        self.run_seconds = Histogram(
            "athena_run_duration_seconds",
            "Wall time of runs, from the request to the result.",
            ["language", "mode"],
            buckets=_RUN_BUCKETS,
            registry=self.registry,
        )
        self.http_seconds = Histogram(
            "athena_http_request_duration_seconds",
            "HTTP request latency, to the end of the response.",
            ["method", "route", "status"],
            buckets=_HTTP_BUCKETS,
            registry=self.registry,
        )
        self.violations = Counter(
            "athena_violations",
            "Violations by category.",
            ["category"],
            registry=self.registry,
        )
        self.registry.register(_LiveCollector(orchestrator, in_flight, draining))
        self._stop_listening = orchestrator.add_result_listener(self.observe_run)

    def observe_run(self, result: ExecutionResult) -> None:
        """Count one run (an orchestrator result listener: every run of every front end)."""
        language, mode = result.language, result.sandbox_mode or "none"
        self.runs.labels(language, mode, outcome_of(result)).inc()
        total_ms = result.total_time_ms or result.execution_time_ms
        self.run_seconds.labels(language, mode).observe(total_ms / 1000.0)
        for violation in result.violations:
            self.violations.labels(violation.category).inc()

    def close(self) -> None:
        """Stop counting the orchestrator's runs."""
        self._stop_listening()

    def observe_http(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one HTTP request."""
        self.http_seconds.labels(method, route, str(status)).observe(seconds)

    def render(self, tenant: str | None = None) -> bytes:
        """The Prometheus text exposition of every metric.

        Args:
            tenant: show only this tenant's row of ``athena_runs_in_flight`` (a tenant that
                scrapes learns nothing of the others, not even their names); None: every row.
        """
        if tenant is None:
            return generate_latest(self.registry)
        return generate_latest(_OneTenant(self.registry, tenant))


class _OneTenant(Collector):
    """A registry's metrics, with the per-tenant rows of one tenant only."""

    def __init__(self, registry: CollectorRegistry, tenant: str) -> None:
        self._registry = registry
        self._tenant = tenant

    def collect(self) -> Iterator[Metric]:
        """Yield the registry's metrics, other tenants' samples left out."""
        for metric in self._registry.collect():
            if any("tenant" in sample.labels for sample in metric.samples):
                kept = Metric(metric.name, metric.documentation, metric.type, metric.unit)
                kept.samples = [s for s in metric.samples if s.labels.get("tenant") == self._tenant]
                yield kept
            else:
                yield metric
