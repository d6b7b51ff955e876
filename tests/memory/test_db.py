"""Schema migrations and token authentication, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, select

from memory.db import make_engine, make_session_factory, ping, transaction
from memory.migrate import SchemaOutOfDate, current_revision, head_revision, require_up_to_date, upgrade
from memory.schema import ApiToken, Role, User
from memory.users import BOOTSTRAP_ADMIN, authenticate, new_token, set_bootstrap_token


@pytest.fixture
def engine(database_url: str):
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def test_fresh_database_is_refused_until_migrated(engine) -> None:
    ping(engine)
    assert current_revision(engine) is None
    with pytest.raises(SchemaOutOfDate, match="healthagent db upgrade"):
        require_up_to_date(engine)
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    require_up_to_date(engine)
    assert {"users", "api_tokens", "alembic_version"} <= set(inspect(engine).get_table_names())
    upgrade(engine)  # idempotent
    assert current_revision(engine) == head_revision()


def test_bootstrap_token_authenticates_and_rotates(engine) -> None:
    upgrade(engine)
    sessions = make_session_factory(engine)
    first, second = new_token(), new_token()
    assert first != second and first.startswith("ha_")

    with transaction(sessions) as session:
        principal = set_bootstrap_token(session, first)
    assert principal.role is Role.admin and principal.name == BOOTSTRAP_ADMIN

    with sessions() as session:
        assert authenticate(session, first) == principal
        assert authenticate(session, second) is None
        assert authenticate(session, "") is None
        # Only the hash is stored.
        stored = session.scalars(select(ApiToken.token_sha256)).all()
        assert first not in stored and len(stored) == 1

    with transaction(sessions) as session:  # the next start replaces the token, same admin
        assert set_bootstrap_token(session, second).user_id == principal.user_id
    with sessions() as session:
        assert authenticate(session, first) is None
        assert authenticate(session, second) == principal
        assert session.scalar(select(User).where(User.name == BOOTSTRAP_ADMIN)) is not None


def test_disabled_user_cannot_authenticate(engine) -> None:
    upgrade(engine)
    sessions = make_session_factory(engine)
    token = new_token()
    with transaction(sessions) as session:
        set_bootstrap_token(session, token)
    with transaction(sessions) as session:
        session.scalar(select(User).where(User.name == BOOTSTRAP_ADMIN)).disabled = True
    with sessions() as session:
        assert authenticate(session, token) is None


def test_failed_transaction_leaves_nothing(engine) -> None:
    upgrade(engine)
    sessions = make_session_factory(engine)
    with pytest.raises(RuntimeError), transaction(sessions) as session:
        set_bootstrap_token(session, new_token())
        raise RuntimeError("boom")
    with sessions() as session:
        assert session.scalars(select(User)).all() == []


def test_unsupported_database_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="PostgreSQL or SQLite"):
        make_engine("mysql://root@localhost/test")


def test_migrations_match_the_models(engine) -> None:
    """No model change without its migration: autogenerate finds nothing to add at head."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from memory.schema import Base

    upgrade(engine)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []
