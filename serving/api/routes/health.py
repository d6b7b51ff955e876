"""Liveness and readiness: open to all, no token, no rate limit."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from serving.api.deps import Services
from serving.api.schemas import HealthOut, ReadyOut
from serving.problems import Problem

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthOut)
async def healthz() -> HealthOut:
    """The process is alive."""
    return HealthOut(status="ok")


@router.get("/readyz", response_model=ReadyOut, responses={503: {"description": "not ready"}})
async def readyz(services: Services) -> ReadyOut:
    """The model deployment answers and the database (and Redis, if configured) is reachable."""
    checks = await run_in_threadpool(services.readiness)
    failing = {name for name, state in checks.items() if state.startswith("error")}
    if failing:
        raise Problem(503, "not ready: " + ", ".join(sorted(failing)), headers={"Retry-After": "5"})
    return ReadyOut(status="ready", checks=checks)
