"""The API's routes, as recorded from the single-module gateway before it became serving/api/: the
package must answer on exactly these paths and methods, and document a response model for each."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from serving.api.app import create_app
from serving.settings import Settings

RECORDED = [
    # issue 17: the FHIR R4 facade over the reads
    ("/fhir/r4/DiagnosticReport", "GET"),
    ("/fhir/r4/DiagnosticReport/{read_id}", "GET"),
    ("/healthz", "GET"),
    ("/readyz", "GET"),
    ("/v1/admin/adapters", "GET"),
    # issue 14: promotion and rollback of adapter versions, fine-tune jobs
    ("/v1/admin/adapters/{plugin}/rollback", "POST"),
    ("/v1/admin/adapters/{version}/promote", "POST"),
    # issue 14: curated datasets a fine-tune trains on besides feedback
    ("/v1/admin/datasets", "GET"),
    ("/v1/admin/datasets", "POST"),
    ("/v1/admin/feedback/summary", "GET"),
    ("/v1/admin/finetunes", "GET"),
    ("/v1/admin/finetunes", "POST"),
    ("/v1/admin/finetunes/{job_id}", "GET"),
    ("/v1/admin/finetunes/{job_id}/cancel", "POST"),
    ("/v1/admin/finetunes/{job_id}/events", "GET"),
    ("/v1/chat", "POST"),
    ("/v1/consultations", "GET"),  # issue 15: the caller's consultations, for the pages and clients
    ("/v1/consultations", "POST"),
    ("/v1/consultations/{consultation_id}", "GET"),
    ("/v1/consultations/{consultation_id}/messages", "POST"),
    ("/v1/feedback", "POST"),
    ("/v1/notifications", "GET"),
    ("/v1/pacs/studies", "GET"),  # issue 17: QIDO search of the PACS
    ("/v1/reads/{read_id}", "GET"),
    ("/v1/reads/{read_id}/signoff", "POST"),
    ("/v1/studies", "POST"),
    ("/v1/studies/import", "POST"),  # issue 17: import a study from the PACS
    # issue 17: images generated from a study, reviewed, and (accepted) sent back to the PACS
    ("/v1/studies/{study_id}/images", "POST"),
    ("/v1/studies/{study_id}/images/{image_id}", "GET"),
    ("/v1/studies/{study_id}/images/{image_id}/review", "POST"),
    ("/v1/studies/{study_id}/reads", "POST"),
]


@pytest.fixture(scope="module")
def spec() -> dict:
    # Building the app and its OpenAPI touches only the settings, so no database or model is needed.
    return create_app(SimpleNamespace(settings=Settings())).openapi()  # type: ignore[arg-type]


def test_paths_and_methods_are_unchanged(spec: dict) -> None:
    found = sorted((path, method.upper()) for path, ops in spec["paths"].items() for method in ops)
    assert found == RECORDED


def test_every_route_documents_a_response_model(spec: dict) -> None:
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            success = next(code for code in op["responses"] if code.startswith("2"))
            schema = op["responses"][success]["content"]["application/json"]["schema"]
            assert "$ref" in schema or "$ref" in schema.get("items", {}), f"{method} {path}: {schema}"


def test_every_schema_reference_resolves(spec: dict) -> None:
    # The JSON-or-multipart routes name their JSON body by reference; it must be in the components.
    refs: set[str] = set()

    def collect(node: object) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                refs.add(ref.removeprefix("#/components/schemas/"))
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(spec)
    assert refs <= set(spec["components"]["schemas"]), refs - set(spec["components"]["schemas"])


# Served but deliberately outside the OpenAPI document: the document itself, the docs pages and their
# local assets, the Prometheus scrape endpoint (plain text, no token, no patient data), and the web
# application's start redirect and assets (its pages, under /app, are outside the document too).
UNDOCUMENTED = {
    "/openapi.json",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
    "/docs-static",
    "/metrics",
    "/",
    "/app/static",
}


def test_routes_outside_the_document_are_deliberate(spec: dict) -> None:
    app = create_app(SimpleNamespace(settings=Settings()))  # type: ignore[arg-type]
    served = {route.path for route in app.routes if getattr(route, "path", None)}
    assert served - set(spec["paths"]) == UNDOCUMENTED
