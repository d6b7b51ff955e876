"""The HTTP API (FastAPI): it authenticates, validates and limits; the agent does the rest."""
