"""LangGraph checkpointers: PostgreSQL in production, SQLite embedded (the Redis saver needs modules
stock Redis lacks, so it is deliberately not offered)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from langgraph.checkpoint.base import BaseCheckpointSaver
from sqlalchemy.engine import make_url

from memory.db import CONNECT_TIMEOUT_S


@dataclass
class Checkpointer:
    saver: BaseCheckpointSaver
    close: Callable[[], None]


def _psycopg_conninfo(url: str) -> str:
    """A libpq URL from a SQLAlchemy one (``postgresql+psycopg://`` → ``postgresql://``)."""
    parsed = make_url(url).set(drivername="postgresql")
    return parsed.render_as_string(hide_password=False)


def open_checkpointer(url: str) -> Checkpointer:
    """A ready (tables created) saver for ``url``: a PostgreSQL URL or a SQLite file path."""
    if url.startswith("postgres"):
        from langgraph.checkpoint.postgres import PostgresSaver
        from psycopg.rows import dict_row
        from psycopg_pool import ConnectionPool

        pool = ConnectionPool(
            _psycopg_conninfo(url),
            min_size=1,
            max_size=8,
            # Recycle idle and old connections so a server-side idle timeout never breaks a thread.
            max_idle=300,
            max_lifetime=1800,
            check=ConnectionPool.check_connection,
            # While PostgreSQL is down a turn is refused (503) after this long, not held for the
            # pool's default 30 s; connections broken by a restart are replaced on checkout (check).
            timeout=CONNECT_TIMEOUT_S,
            kwargs={
                "autocommit": True,
                "prepare_threshold": 0,
                "row_factory": dict_row,
                "connect_timeout": CONNECT_TIMEOUT_S,
            },
            open=True,
        )
        saver = PostgresSaver(pool)
        saver.setup()
        return Checkpointer(saver=saver, close=pool.close)

    from langgraph.checkpoint.sqlite import SqliteSaver

    path = Path(url.removeprefix("sqlite:///"))
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
    saver = SqliteSaver(connection)
    saver.setup()
    return Checkpointer(saver=saver, close=connection.close)
