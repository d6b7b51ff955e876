"""The in-process API with its people (as tests/agents/scenarios builds it), for the edge tests here."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.services import prepare_database
from serving.settings import Settings
from tests.agents.scenarios.conftest import make_people, start


def open_api(data_dir: Path, database_url: str, model, **overrides):
    settings = Settings(
        data_dir=data_dir,
        database_url=database_url,
        max_new_tokens=4,
        rate_limit={"burst": 100_000, "per_minute": 6_000_000},
        **overrides,
    )
    prepare_database(settings).dispose()
    client, services = start(settings, model)
    return client, services, make_people(services)


@pytest.fixture
def edge_api(tmp_path: Path, database_url: str, tiny_model):
    """(client, people) on SQLite and on PostgreSQL."""
    client, services, people = open_api(tmp_path, database_url, tiny_model)
    yield client, people
    client.__exit__(None, None, None)
    services.close()


@pytest.fixture
def sqlite_api(tmp_path: Path, tiny_model):
    """(client, people) on SQLite only, for what does not depend on the database."""
    client, services, people = open_api(tmp_path, f"sqlite:///{tmp_path / 'edge.db'}", tiny_model)
    yield client, people
    client.__exit__(None, None, None)
    services.close()


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory: pytest.TempPathFactory):
    """A local Ray with Serve for one test module, and a data dir whose tiny model is built once before
    any replica loads it."""
    ray = pytest.importorskip("ray")
    serve = pytest.importorskip("ray.serve")
    from models.tiny import resolve_spec

    data_dir = tmp_path_factory.mktemp("ray")
    resolve_spec("tiny", Settings(data_dir=data_dir).model_dir, 0)
    ray.init(num_cpus=4, include_dashboard=False, logging_level="WARNING")
    serve.start()
    yield data_dir
    serve.shutdown()
    ray.shutdown()
