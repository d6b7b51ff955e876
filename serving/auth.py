"""Bearer-token authentication: every route but health, metrics and the API docs needs a valid token.

Invalid tokens are throttled per client address: each one costs a token from that address's bucket, and
an address whose bucket is empty is answered 429 before its token is even looked up, so a flood of
guesses neither reaches the database nor slows down real users.
"""

from __future__ import annotations

import math

from fastapi import Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from memory.users import Principal, authenticate
from serving.observability import AUTH_FAILURES, AUTH_THROTTLED
from serving.problems import Problem

bearer_scheme = HTTPBearer(auto_error=False, description="An API token (`ha_…`).")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def client_address(request: Request) -> str:
    # The peer as the server saw it; behind Ray Serve's proxy it is the proxy's client.
    return request.client.host if request.client is not None else "unknown"


def principal_from_request(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise Problem(401, "missing bearer token (Authorization: Bearer <token>)", headers=_CHALLENGE)
    services = request.app.state.services
    failures = services.auth_failures
    key = f"authfail:{client_address(request)}"
    if failures is not None:
        waiting = failures.peek(key)
        if not waiting.allowed:
            AUTH_THROTTLED.inc()
            retry_after = max(1, math.ceil(min(waiting.retry_after_s, 3600)))
            raise Problem(
                429,
                f"too many invalid tokens from this address; retry in {retry_after} s",
                headers={"Retry-After": str(retry_after)},
            )
    with services.sessions() as session:
        principal = authenticate(session, credentials.credentials)
    if principal is None:
        AUTH_FAILURES.inc()
        if failures is not None:
            failures.acquire(key)
        raise Problem(401, "invalid, expired, revoked or disabled token", headers=_CHALLENGE)
    return principal
