"""One router per resource; ``ROUTERS`` is the order they are mounted (and listed in the docs)."""

from __future__ import annotations

from fastapi import APIRouter

from serving.api.routes import (
    admin,
    chat,
    consultations,
    feedback,
    fhir,
    health,
    images,
    notifications,
    pacs,
    reads,
    studies,
)

ROUTERS: tuple[APIRouter, ...] = (
    health.router,
    consultations.router,
    chat.router,
    studies.router,
    images.router,
    pacs.router,
    reads.router,
    feedback.router,
    notifications.router,
    admin.router,
    fhir.router,
)
