"""The FastAPI application: middleware, problem+json handlers, and one router per resource.

Resources: consultations (= LangGraph threads) and their messages, studies (de-identified DICOM),
reads (AI drafts a physician signs), feedback, admin summaries. Every error is problem+json; another
patient's record answers 404, as if it did not exist.
"""

from __future__ import annotations

from fastapi import FastAPI

from serving.api.bodies import document_bodies, max_body_bytes
from serving.api.routes import ROUTERS
from serving.limits import BodySizeLimit
from serving.problems import install_problem_handlers
from serving.services import GatewayServices

DESCRIPTION = (
    "Consultations, second reads and image tasks around HealthGPT. Every model output carries "
    "provenance; AI reads stay preliminary until a physician signs; answers are not medical advice."
)


def create_app(services: GatewayServices) -> FastAPI:
    """The API over ``services`` (kept in ``app.state.services`` for the dependencies)."""
    app = FastAPI(title="Health Agent", version="0.1.0", description=DESCRIPTION)
    app.state.services = services
    install_problem_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes(services.settings))
    for router in ROUTERS:
        app.include_router(router)
    document_bodies(app)
    return app
