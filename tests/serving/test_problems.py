"""Model-side refusals become the right HTTP answers, wherever they are raised."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from ray.serve.exceptions import BackPressureError

from models.engine import EngineClosed, InvalidRequest, QueueFull, RequestTimedOut
from serving.problems import install_problem_handlers


@pytest.mark.parametrize(
    ("error", "status", "retry_after"),
    [
        (QueueFull(64, retry_after_s=8), 503, "8"),
        (EngineClosed("shutting down"), 503, "5"),
        (RequestTimedOut("slow"), 504, None),
        (InvalidRequest("max_new_tokens must be between 1 and 1024"), 422, None),
        (BackPressureError(num_queued_requests=300, max_queued_requests=256), 503, "5"),
    ],
)
def test_engine_refusals_map_to_http(error: Exception, status: int, retry_after: str | None) -> None:
    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/boom")
    def boom() -> None:
        raise error

    response = TestClient(app, raise_server_exceptions=False).get("/boom")
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers.get("Retry-After") == retry_after
