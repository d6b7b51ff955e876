"""Schemathesis over the OpenAPI document: every operation, as each role and with no token, with valid
and invalid data, on made-up ids and on ids of real records. No answer may be a 5xx, and every answer
must be one the document describes (status, content type, body schema). Bounded and seeded: the same
cases on every run (derandomized), about a minute on two cores."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from memory.ratelimit import InProcessTokenBucket
from tests.agents.scenarios.conftest import auth, new_consultation
from tests.agents.scenarios.test_physician import upload_study
from tests.serving.conftest import open_api
from tests.serving.test_api_paths import RECORDED

# Requests per operation, caller, mode (valid / invalid data) and ids (made up / real).
MAX_EXAMPLES = 25
# Operations that run the model's image generation (a whole VQ grid, seconds each on two cores): fewer
# cases, and room for each to finish. Every role and mode still reaches them, on made-up and real ids.
SLOW_OPERATIONS = {"POST /v1/studies/{study_id}/images": (3, 180.0)}
FAST_CALL_TIMEOUT_S = 10.0
ROLES = ("patient", "physician", "admin", "anonymous")


def not_a_server_error(ctx, response, case) -> None:
    if response.status_code >= 500:
        raise AssertionError(f"{response.status_code}: {response.text[:300]}")


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory, tiny_model):
    data_dir: Path = tmp_path_factory.mktemp("schemathesis")
    # Fine-tune jobs the fuzzer asks for are refused for want of feedback (422): the contract is checked
    # without training piling up. The one real job, for its id, is cancelled at once.
    client, services, people = open_api(
        data_dir, f"sqlite:///{data_dir / 'api.db'}", tiny_model, finetune={"executor": "thread"}
    )
    # Generated requests send made-up tokens on purpose; the throttle has its own tests.
    services.auth_failures = InProcessTokenBucket(1_000_000, 1_000_000)
    study = upload_study(client, people.dr_doe, people.pam_patient_id).json()["id"]
    read = client.post(f"/v1/studies/{study}/reads", headers=auth(people.dr_doe)).json()["read_id"]
    from tests.serving.test_finetune_jobs import correct_reads

    correct_reads(services, people)
    job = client.post("/v1/admin/finetunes", json={"plugin": "comprehension"}, headers=auth(people.admin))
    assert job.status_code == 202, job.text
    client.post(f"/v1/admin/finetunes/{job.json()['id']}/cancel", headers=auth(people.admin))
    services.finetunes.wait(job.json()["id"], 120)
    image = client.post(
        f"/v1/studies/{study}/images", json={"task": "reconstruction"}, headers=auth(people.dr_doe)
    )
    assert image.status_code == 201, image.text
    real_ids = {
        "consultation_id": new_consultation(client, people.pam),
        "study_id": study,
        "read_id": read,
        "job_id": job.json()["id"],
        "image_id": image.json()["id"],
        "plugin": "comprehension",
        "version": services.model.info().adapter_versions["comprehension"],
    }
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    tokens = {"patient": people.pam, "physician": people.dr_doe, "admin": people.admin, "anonymous": None}
    yield schema, tokens, real_ids
    client.__exit__(None, None, None)
    services.close()


def _fuzz(
    strategy,
    token: str | None,
    label: str,
    statuses: Counter[int],
    failures: list[str],
    examples: int = MAX_EXAMPLES,
    timeout_s: float = FAST_CALL_TIMEOUT_S,
) -> None:
    """Send ``examples`` cases drawn from ``strategy``; count statuses, collect failed checks."""

    @given(case=strategy)
    @settings(
        max_examples=examples,
        derandomize=True,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case) -> None:
        if token is not None:  # the role's own token, whatever header was generated
            case.headers = {**(case.headers or {}), **auth(token)}
        response = case.call(timeout=timeout_s)
        statuses[response.status_code] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except (AssertionError, BaseExceptionGroup) as exc:  # collected, reported together by the test
            failures.append(f"{label} {case.formatted_path} -> {response.status_code}: {str(exc)[:400]}")

    run()


@pytest.mark.parametrize("role", ROLES)
def test_no_operation_answers_5xx_or_off_schema(fuzzed, role: str) -> None:
    schema, tokens, real_ids = fuzzed
    token = tokens[role]
    failures: list[str] = []
    statuses: Counter[int] = Counter()
    started = time.perf_counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == len(RECORDED), "every recorded API operation is fuzzed"
    for operation in operations:
        names = {p.name for p in operation.path_parameters}
        examples, timeout_s = SLOW_OPERATIONS.get(operation.label, (MAX_EXAMPLES, FAST_CALL_TIMEOUT_S))
        for ids in [None] + ([{n: real_ids[n] for n in names}] if names else []):
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                strategy = operation.as_strategy(generation_mode=mode, path_parameters=ids)
                label = f"{operation.label} ({mode}, {'real' if ids else 'generated'} ids)"
                try:
                    _fuzz(strategy, token, label, statuses, failures, examples, timeout_s)
                except Unsatisfiable:
                    assert mode is GenerationMode.NEGATIVE  # nothing to get wrong: no parameters, no body
    elapsed = time.perf_counter() - started
    print(f"\n{role}: {sum(statuses.values())} requests in {elapsed:.1f} s, statuses {dict(statuses)}")
    assert not failures, f"{len(failures)} failing cases as {role}:\n" + "\n".join(failures[:20])
    if token is not None:
        assert any(200 <= s < 300 for s in statuses), "no request got through: check the token"
