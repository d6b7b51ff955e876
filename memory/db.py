"""Engines and sessions for the two supported databases: PostgreSQL (production) and SQLite (embedded)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from sqlalchemy import Engine, create_engine, event, exc, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

# Seconds to wait for PostgreSQL to accept a connection: a server that is down or restarting answers a
# request with 503 in about this long at the most, instead of holding it.
CONNECT_TIMEOUT_S = 5


def normalise_url(url: str) -> str:
    """Use psycopg 3 for PostgreSQL whatever driver the URL names (``postgresql://`` means psycopg2)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() != "psycopg":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite files get their folder, WAL and enforced foreign keys."""
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"unsupported database {parsed.get_backend_name()!r}: use PostgreSQL or SQLite")
    # pre_ping: a connection dropped by the server (idle timeout, restart) is replaced instead of failing
    # the next request. pool_timeout: a request waits this long for a pooled connection, then is refused.
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_recycle=1800,
        pool_timeout=CONNECT_TIMEOUT_S,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_S},
    )


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits on success and rolls back on any error."""
    with factory() as session, session.begin():
        yield session


def ping(engine: Engine) -> None:
    """Raise if the database cannot answer a trivial query."""
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def database_unavailable(error: BaseException) -> bool:
    """Whether ``error`` says the database could not be reached or went away (down, restarting, a cut
    connection, no pooled connection in time), not that the request was wrong: a retry later succeeds."""
    if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, exc.TimeoutError):  # no pooled connection in time
        return True
    cause = error.orig if isinstance(error, exc.DBAPIError) else error
    # psycopg's OperationalError covers refused and cut connections, "shutting down", "starting up" and
    # the connection pools' timeouts; InterfaceError a connection already closed under us.
    if isinstance(cause, psycopg.OperationalError | psycopg.InterfaceError):
        return True
    # SQLite's only transient failure: another writer held the file past busy_timeout.
    return isinstance(cause, sqlite3.OperationalError) and "locked" in str(cause)
