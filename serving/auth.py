"""Token authentication: every route but health, metrics and the API docs needs a valid token.

The JSON API takes it as a bearer token. The web pages (serving/web) take it from the session cookie
that signing in sets; both go through :func:`authenticate_token`, so the same throttle, revocation,
expiry and disabled-user checks apply whichever way the token came.

Invalid tokens are throttled per client address: each one costs a token from that address's bucket, and
an address whose bucket is empty is answered 429 before its token is even looked up, so a flood of
guesses neither reaches the database nor slows down real users.
"""

from __future__ import annotations

import ipaddress
import math
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from fastapi import Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from memory.users import Principal, authenticate
from serving.observability import AUTH_FAILURES, AUTH_THROTTLED
from serving.problems import Problem

bearer_scheme = HTTPBearer(auto_error=False, description="An API token (`ha_…`).")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}
# The browser session's cookie: a session token (memory.users, TokenKind.session) set at sign-in.
SESSION_COOKIE = "ha_session"


def client_address(request: Request) -> str:
    """The client a request is counted against: the peer as the server saw it (behind Ray Serve's proxy,
    the proxy's client), or — when that peer is one of ``trusted_proxies`` — the nearest address in
    X-Forwarded-For that is not a trusted proxy. Hops further left are the client's own claims."""
    peer = request.client.host if request.client is not None else "unknown"
    trusted = request.app.state.services.settings.trusted_proxies
    if not trusted or not _is_trusted(peer, trusted):
        return peer
    forwarded = ",".join(request.headers.getlist("x-forwarded-for"))
    hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            return "unknown"  # not an address: nothing further left can be trusted either
        if not _is_trusted(address, trusted):
            return hop
    return peer  # every hop is a proxy of ours: the request started inside


def _address(text: str) -> IPv4Address | IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _is_trusted(
    address: str | IPv4Address | IPv6Address | None, trusted: list[IPv4Network | IPv6Network]
) -> bool:
    ip = _address(address) if isinstance(address, str) else address
    return ip is not None and any(ip.version == net.version and ip in net for net in trusted)


def principal_from_request(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise Problem(401, "missing bearer token (Authorization: Bearer <token>)", headers=_CHALLENGE)
    return authenticate_token(request, credentials.credentials, challenge=_CHALLENGE)


def session_token(request: Request) -> str | None:
    """The browser session's token from its cookie, if any."""
    return request.cookies.get(SESSION_COOKIE) or None


def principal_from_session(request: Request) -> Principal:
    """The signed-in browser user. Only the pages call this: the JSON API never reads the cookie, so a
    cross-site request cannot borrow a browser's session to call it."""
    token = session_token(request)
    if token is None:
        raise Problem(401, "not signed in")
    return authenticate_token(request, token)


def authenticate_token(request: Request, token: str, *, challenge: dict[str, str] | None = None) -> Principal:
    """The principal owning ``token``; 429 while this address is throttled, 401 for a bad token."""
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
        principal = authenticate(session, token)
    if principal is None:
        AUTH_FAILURES.inc()
        if failures is not None:
            failures.acquire(key)
        raise Problem(401, "invalid, expired, revoked or disabled token", headers=challenge)
    return principal
