"""The FastAPI application: middleware, problem+json handlers, and one router per resource.

Resources: consultations (= LangGraph threads) and their messages, studies (de-identified DICOM),
reads (AI drafts a physician signs), feedback, admin summaries. Every error is problem+json; a record
the caller may not see answers 404, as if it did not exist. ``/docs`` and ``/redoc`` load their
scripts from this server (fastapi-offline ships them), so they work without internet access.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import Response
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from serving.api.bodies import document_bodies, max_body_bytes
from serving.api.routes import ROUTERS
from serving.limits import BodySizeLimit
from serving.observability import (
    EngineCollector,
    JobsCollector,
    RequestObservability,
    configure_logging,
    metrics_text,
)
from serving.problems import install_problem_handlers
from serving.services import GatewayServices
from serving.web import WEB_PATHS, mount_web

DESCRIPTION = (
    "Consultations, second reads and image tasks around HealthGPT. Every model output carries "
    "provenance; AI reads stay preliminary until a physician signs; answers are not medical advice."
)
DOCS_STATIC = "/docs-static"
# Pages and assets that run in a browser (their security headers allow the docs' own scripts).
DOCS_PATHS = ("/docs", "/redoc", DOCS_STATIC)


def create_app(services: GatewayServices) -> FastAPI:
    """The API over ``services`` (kept in ``app.state.services`` for the dependencies)."""
    configure_logging()
    app = FastAPIOffline(
        title="Health Agent", version="0.1.0", description=DESCRIPTION, static_url=DOCS_STATIC
    )
    app.state.services = services
    install_problem_handlers(app)
    # Added last = outermost: the request id and headers cover every answer, the 413s included.
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes(services.settings))
    app.add_middleware(RequestObservability, docs_paths=DOCS_PATHS, web_paths=WEB_PATHS)
    for router in ROUTERS:
        app.include_router(router)
    mount_web(app)  # the pages for patients, physicians and admins (serving/web), outside the schema
    _add_metrics(app, services)
    document_bodies(app)
    return app


def _add_metrics(app: FastAPI, services: GatewayServices) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(services))
    registry.register(JobsCollector(services))

    # Open like /healthz (no token) and carries no patient data: route templates, statuses, counts.
    # Each gateway replica serves its own figures; scrape them all.
    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(metrics_text(registry), media_type=CONTENT_TYPE_LATEST)
