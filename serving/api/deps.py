"""What routes declare they need: the services, the caller (authenticated and rate-limited), a
records transaction in the caller's view, and role requirements."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials

from memory.records import Records
from memory.schema import Role
from memory.users import Principal
from serving.auth import bearer_scheme, principal_from_request
from serving.problems import Problem
from serving.services import GatewayServices
from serving.turns import records_for


def get_services(request: Request) -> GatewayServices:
    return request.app.state.services


Services = Annotated[GatewayServices, Depends(get_services)]


def current_principal(
    request: Request,
    services: Services,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Principal:
    """The authenticated caller, charged one request against their rate limit.

    FastAPI caches a dependency per request, so a route that needs the caller several times (directly,
    through a role requirement, through a records session) is still charged once."""
    return charge_request(services, principal_from_request(request, credentials))


def charge_request(services: GatewayServices, principal: Principal) -> Principal:
    """One request against the caller's rate limit (the API's and the web pages' alike); 429 past it."""
    decision = services.backends.rate_limiter.acquire(f"user:{principal.user_id}")
    if not decision.allowed:
        retry_after = max(1, math.ceil(decision.retry_after_s))
        limits = services.settings.rate_limit
        raise Problem(
            429,
            f"rate limit exceeded ({limits.per_minute:g} requests per minute, bursts "
            f"of {limits.burst}); retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )
    return principal


Caller = Annotated[Principal, Depends(current_principal)]


def require_role(*roles: Role) -> Callable[[Principal], Principal]:
    """A dependency: the caller, if their role is one of ``roles``; 403 otherwise."""

    def caller_with_role(principal: Caller) -> Principal:
        if principal.role not in roles:
            raise Problem(403, f"this needs the {' or '.join(str(r) for r in roles)} role")
        return principal

    return caller_with_role


Physician = Annotated[Principal, Depends(require_role(Role.physician))]
Admin = Annotated[Principal, Depends(require_role(Role.admin))]


def records_session(services: Services, principal: Caller) -> Iterator[Records]:
    """One transaction over the records as the caller may see them, committed when the route returns.

    Only for routes that do all their work in it: a route that hands off to a turn (which opens its
    own transactions) uses ``records_for`` around each step instead, so no two overlap."""
    with records_for(services, principal) as records:
        yield records


RecordsSession = Annotated[Records, Depends(records_session, scope="function")]
