"""Alembic migrations for the schema in ``memory.schema``."""
