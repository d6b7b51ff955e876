"""Bearer-token authentication: every route but health and the API docs needs a valid token."""

from __future__ import annotations

from fastapi import Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from memory.users import Principal, authenticate
from serving.problems import Problem

bearer_scheme = HTTPBearer(auto_error=False, description="An API token (`ha_…`).")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def principal_from_request(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise Problem(401, "missing bearer token (Authorization: Bearer <token>)", headers=_CHALLENGE)
    services = request.app.state.services
    with services.sessions() as session:
        principal = authenticate(session, credentials.credentials)
    if principal is None:
        raise Problem(401, "invalid, revoked or disabled token", headers=_CHALLENGE)
    return principal
