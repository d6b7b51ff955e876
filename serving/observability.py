"""What operators see of the gateway: request ids, structured logs, Prometheus metrics, security headers.

- Each request gets an id: the caller's ``X-Request-ID`` when it is a sane token, Ray Serve's when the
  request came through its proxy (so Serve's logs and the model replicas' logs carry the same id), or a
  new one. It is echoed in ``X-Request-ID``, in every problem answer, in each log line written while the
  request runs, and in the detail of each audit row it writes.
- Logs are one JSON object per line (time, level, logger, message, request_id, and for the access line
  method, route, status, duration_ms). The access line names the route template, never the path or the
  body, so no names or message text reach the logs.
- ``/metrics`` serves this process's series (prefix ``healthagent_``). Each gateway replica is its own
  process: scrape every replica (Ray Serve's own ``ray_serve_*`` series come from Ray's metrics port).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from memory.audit import REQUEST_ID
from serving.problems import problem_response

PREFIX = "healthagent"
access_log = logging.getLogger("healthagent.access")
log = logging.getLogger(__name__)


# -- request ids ------------------------------------------------------------------------------------
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def current_request_id() -> str | None:
    return REQUEST_ID.get()


def _serve_request_id() -> str:
    """The id Ray Serve gave this request ("" outside a Serve replica): its proxy reads or makes
    ``X-Request-ID``, logs with it, sends it back, and passes it on with every handle call."""
    try:
        from ray.serve import context

        ctx = context._serve_request_context.get()
    except (ImportError, AttributeError, LookupError):  # pragma: no cover - Ray is a dependency
        return ""
    return (ctx.request_id or "") if ctx is not None else ""


def _incoming_id(headers: MutableHeaders) -> str | None:
    given = headers.get("x-request-id")
    return given if given is not None and _SAFE_ID.match(given) else None


# -- logs -------------------------------------------------------------------------------------------
_ACCESS_FIELDS = ("method", "route", "status", "duration_ms")


class JsonFormatter(logging.Formatter):
    """One JSON object per line; the request id comes from the context the record was written in."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or REQUEST_ID.get(),
        }
        for field in _ACCESS_FIELDS:
            if hasattr(record, field):
                out[field] = getattr(record, field)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class _JsonHandler(logging.StreamHandler):
    """Marks the handler this module installed, so installing twice is a no-op."""

    def __init__(self) -> None:
        # The process's own stderr: a Serve replica may point sys.stderr at its logger, which would wrap
        # each JSON line in its own format.
        super().__init__(sys.__stderr__ or sys.stderr)
        self.setFormatter(JsonFormatter())


def configure_logging(level: int = logging.INFO) -> None:
    """JSON lines on stderr from every logger that reaches the root (idempotent)."""
    root = logging.getLogger()
    if not any(isinstance(h, _JsonHandler) for h in root.handlers):
        root.addHandler(_JsonHandler())
    if root.level == logging.NOTSET or root.level > level:
        root.setLevel(level)
    access_log.setLevel(logging.INFO)


# -- metrics ----------------------------------------------------------------------------------------
# One registry per process (a gateway replica), shared by every app built in it; series about the
# engine are read from the app's services at scrape time (see EngineCollector).
REGISTRY = CollectorRegistry(auto_describe=True)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
HTTP_LATENCY = Histogram(
    f"{PREFIX}_http_request_duration_seconds",
    "HTTP request latency by method, route template and status (streams: until the last byte).",
    ["method", "route", "status"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
IN_FLIGHT = Gauge(f"{PREFIX}_http_requests_in_flight", "HTTP requests being served.", registry=REGISTRY)
TURNS = Counter(f"{PREFIX}_turns", "Agent turns answered, by agent route.", ["route"], registry=REGISTRY)
TRIAGE = Counter(f"{PREFIX}_triage", "Triage levels of answered turns.", ["level"], registry=REGISTRY)
ESCALATIONS = Counter(
    f"{PREFIX}_escalations", "Turns escalated to emergency guidance and the care team.", registry=REGISTRY
)
MODEL_ANSWERS = Counter(
    f"{PREFIX}_model_answers",
    "Turns answered by the model, by plugin and adapter version (which versions are being served).",
    ["plugin", "adapter_version"],
    registry=REGISTRY,
)
STREAM_FIRST_TOKEN = Histogram(
    f"{PREFIX}_stream_time_to_first_token_seconds",
    "Streamed turns: from the request to the first model token sent to the caller.",
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
AUTH_FAILURES = Counter(f"{PREFIX}_auth_failures", "Requests with an invalid token.", registry=REGISTRY)
AUTH_THROTTLED = Counter(
    f"{PREFIX}_auth_throttled",
    "Requests refused (429) because their address sent too many invalid tokens.",
    registry=REGISTRY,
)

# Bounded label values: whatever a turn says, the series stay few.
_TRIAGE_LEVELS = {"emergency", "urgent", "routine", "self_care"}
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
_TURN_ROUTES = {"consult", "second_read", "image_task", "history", "admin", "escalate", "refuse"}


def observe_turn(outcome: dict[str, Any]) -> None:
    """Count one turn's outcome (as the API returns it)."""
    route = outcome.get("route")
    TURNS.labels(route if route in _TURN_ROUTES else "other").inc()
    level = (outcome.get("triage") or {}).get("level")
    if level is not None:
        TRIAGE.labels(level if level in _TRIAGE_LEVELS else "other").inc()
    if outcome.get("escalated"):
        ESCALATIONS.inc()
    provenance = outcome.get("provenance") or {}
    if not isinstance(provenance, dict):
        provenance = provenance.model_dump()
    if provenance.get("plugin") and provenance.get("adapter_version"):
        MODEL_ANSWERS.labels(str(provenance["plugin"])[:64], str(provenance["adapter_version"])[:64]).inc()


def observe_stream(
    events: Iterator[tuple[str, dict[str, Any]]], started: float
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Pass a turn's events through, timing the first token and counting the outcome."""
    first = True
    for event, data in events:
        if event == "token" and first:
            STREAM_FIRST_TOKEN.observe(time.perf_counter() - started)
            first = False
        elif event == "done":
            observe_turn(data)
        yield event, data


class EngineCollector:
    """The batching engine's own running totals, read at scrape time where the engine runs in this
    process (embedded, tests). Behind Ray Serve the engine lives in the model replicas: each publishes
    the same figures through Ray's metrics (serving.replica_metrics), served on Ray's metrics port."""

    def __init__(self, services: Any) -> None:
        self.services = services

    def describe(self) -> list[Metric]:
        return []  # the series depend on the model at scrape time

    def collect(self) -> Iterable[Metric]:
        engines = list(_engines(getattr(self.services, "model", None)))
        if not engines:
            return
        labels = ["model"]
        queue = GaugeMetricFamily(
            f"{PREFIX}_engine_queue_depth", "Requests waiting for a batch slot.", labels=labels
        )
        rows = GaugeMetricFamily(
            f"{PREFIX}_engine_active_rows", "Rows in the running batch now.", labels=labels
        )
        tokens = CounterMetricFamily(
            f"{PREFIX}_engine_tokens_generated", "Tokens generated (rate() gives tokens/s).", labels=labels
        )
        batch = SummaryMetricFamily(
            f"{PREFIX}_engine_batch_size", "Rows per forward pass (sum/count is the mean).", labels=labels
        )
        ttft = SummaryMetricFamily(
            f"{PREFIX}_engine_time_to_first_token_seconds",
            "From admission to a request's first token, inside the engine.",
            labels=labels,
        )
        adapters = GaugeMetricFamily(
            f"{PREFIX}_engine_adapter_info",
            "Adapter version serving new requests, per plugin (value 1).",
            labels=["model", "plugin", "adapter_version"],
        )
        for name, engine in engines:
            figures = engine.figures()
            queue.add_metric([name], figures.queue_length)
            rows.add_metric([name], figures.active_rows)
            tokens.add_metric([name], figures.tokens_generated)
            batch.add_metric([name], figures.forward_passes, figures.batch_rows)
            ttft.add_metric([name], figures.first_tokens, figures.first_token_s)
            for plugin, version in figures.plugins.items():
                adapters.add_metric([name, plugin, version], 1)
        yield from (queue, rows, tokens, batch, ttft, adapters)


class JobsCollector:
    """Fine-tune jobs by status, counted in the database at scrape time (no patient data). Every replica
    reports the same shared figure: aggregate with max, not sum."""

    def __init__(self, services: Any) -> None:
        self.services = services

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        from sqlalchemy import func, select

        from memory.schema import FineTuneJob, JobStatus

        sessions = getattr(self.services, "sessions", None)
        if sessions is None:
            return
        try:
            with sessions() as session:
                rows = session.execute(select(FineTuneJob.status, func.count()).group_by(FineTuneJob.status))
                counts = {JobStatus(status).value: n for status, n in rows}
        except Exception:  # a scrape must not fail with the database; /readyz reports it
            log.warning("fine-tune job counts unavailable", exc_info=True)
            return
        jobs = GaugeMetricFamily(f"{PREFIX}_finetune_jobs", "Fine-tune jobs by status.", labels=["status"])
        for status in JobStatus:
            jobs.add_metric([status.value], counts.get(status.value, 0))
        yield jobs


def _engines(model: Any) -> Iterator[tuple[str, Any]]:
    """(model name, engine) for each in-process engine behind a client (a cascade has two)."""
    if model is None:
        return
    engine = getattr(model, "engine", None)
    if engine is not None and hasattr(engine, "figures"):
        yield model.model.spec.name, engine
    for part in ("primary", "escalation"):
        yield from _engines(getattr(model, part, None))


def metrics_text(app_registry: CollectorRegistry) -> bytes:
    return generate_latest(REGISTRY) + generate_latest(app_registry)


# -- the middleware ---------------------------------------------------------------------------------
_API_CSP = b"default-src 'none'; frame-ancestors 'none'"
# The docs pages run Swagger UI / ReDoc from this server: no further limits than not being framed.
_DOCS_CSP = b"frame-ancestors 'none'"
# The web pages (serving/web): their own scripts, styles and pictures only, nothing inline, no framing;
# blob: lets a chosen picture be previewed before it is sent (it never leaves the browser until then).
_WEB_CSP = (
    b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    b"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)
_HSTS = b"max-age=31536000; includeSubDomains"


class RequestObservability:
    """Outermost middleware: request id, security headers, latency and in-flight metrics, the access
    log line, and a problem answer (never a trace) for any error nothing else handled."""

    def __init__(
        self, app: ASGIApp, docs_paths: tuple[str, ...] = (), web_paths: tuple[str, ...] = ()
    ) -> None:
        self.app = app
        self.docs_paths = docs_paths
        self.web_paths = web_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        serve_id = _serve_request_id()
        request_id = (
            serve_id if _SAFE_ID.match(serve_id) else _incoming_id(MutableHeaders(scope=scope))
        ) or uuid.uuid4().hex
        token = REQUEST_ID.set(request_id)
        started = time.perf_counter()
        status = 500
        response_started = False
        path = scope.get("path", "")
        docs = any(path == p or path.startswith(p + "/") for p in self.docs_paths)
        web = any(path == p or path.startswith(p + "/") for p in self.web_paths)
        tls = scope.get("scheme") == "https" or (
            MutableHeaders(scope=scope).get("x-forwarded-proto", "").lower() == "https"
        )

        async def send_with_headers(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = MutableHeaders(scope=message)
                if request_id != serve_id:  # behind Serve, its proxy sends its id back itself
                    headers["X-Request-ID"] = request_id
                _secure(headers, docs=docs, tls=tls, web=web)
            await send(message)

        IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            log.exception("unhandled error")
            if not response_started:
                response = problem_response(500, "internal error; the incident was logged")
                await response(scope, receive, send_with_headers)
        finally:
            IN_FLIGHT.dec()
            elapsed = time.perf_counter() - started
            route = _route_template(scope)
            method = scope.get("method", "")
            method = method if method in _METHODS else "other"  # any word can arrive as a method
            HTTP_LATENCY.labels(method, route, str(status)).observe(elapsed)
            access_log.info(
                "request",
                extra={
                    "method": method,
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                },
            )
            REQUEST_ID.reset(token)


def _route_template(scope: Scope) -> str:
    """The matched route's template (``/v1/reads/{read_id}``), never the raw path: ids stay out of
    labels and logs, and the series stay few."""
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


def _secure(headers: MutableHeaders, *, docs: bool, tls: bool, web: bool = False) -> None:
    def default(name: str, value: bytes) -> None:
        if name not in headers:
            headers.append(name, value.decode())

    default("x-content-type-options", b"nosniff")
    default("x-frame-options", b"DENY")
    default("referrer-policy", b"no-referrer")
    default("content-security-policy", _DOCS_CSP if docs else _WEB_CSP if web else _API_CSP)
    if not docs:
        # API answers carry patient data: no browser or proxy may keep a copy.
        default("cache-control", b"no-store")
    if tls:
        default("strict-transport-security", _HSTS)
