"""Users and their API tokens. Tokens are shown once at creation and stored only as hashes."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from memory.schema import ApiToken, Role, TokenKind, User, utcnow

BOOTSTRAP_ADMIN = "bootstrap-admin"
BOOTSTRAP_LABEL = "bootstrap"
# The actor of `healthagent` commands run from the shell: an admin with no token, so nobody can log in
# as it, and the audit log tells shell changes apart from API calls.
CLI_OPERATOR = "cli-operator"


@dataclass(frozen=True)
class Principal:
    """Who is calling: what authentication hands to the rest of the system."""

    user_id: int
    name: str
    role: Role


def new_token() -> str:
    return "ha_" + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def is_live(token: ApiToken, now: datetime | None = None) -> bool:
    """Neither revoked nor expired (the user's state is checked apart)."""
    if token.revoked_at is not None:
        return False
    if token.expires_at is None:
        return True
    expires = token.expires_at
    if expires.tzinfo is None:  # SQLite hands back naive datetimes; they were written in UTC
        expires = expires.replace(tzinfo=UTC)
    return expires > (now or utcnow())


def add_token(
    session: Session,
    user_id: int,
    *,
    label: str = "",
    expires_in: timedelta | None = None,
    kind: TokenKind = TokenKind.api,
) -> tuple[ApiToken, str]:
    """A new token for a user: the row and the token itself (returned once; only its hash is kept).
    A session token always expires."""
    if expires_in is not None and expires_in <= timedelta(0):
        raise ValueError("a token's lifetime must be positive")
    if kind is TokenKind.session and expires_in is None:
        raise ValueError("a session token needs an expiry")
    token = new_token()
    row = ApiToken(
        user_id=user_id,
        token_sha256=hash_token(token),
        label=label[:100],
        kind=kind,
        expires_at=None if expires_in is None else utcnow() + expires_in,
    )
    session.add(row)
    session.flush()
    return row, token


def revoke_token(session: Session, token: str) -> bool:
    """Revoke one token by its value (sign-out); whether a live token was revoked."""
    row = session.scalar(select(ApiToken).where(ApiToken.token_sha256 == hash_token(token)))
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = utcnow()
    session.flush()
    return True


def authenticate(session: Session, token: str) -> Principal | None:
    """The principal owning ``token``, or None when it is unknown, revoked, expired or its user disabled."""
    if not token:
        return None
    digest = hash_token(token)
    row = session.execute(
        select(ApiToken, User).join(User, ApiToken.user_id == User.id).where(ApiToken.token_sha256 == digest)
    ).first()
    if row is None:
        return None
    api_token, user = row
    # The lookup is by digest; compare again in constant time so timing says nothing of near misses.
    if not hmac.compare_digest(api_token.token_sha256, digest):
        return None
    if not is_live(api_token) or user.disabled:
        return None
    return Principal(user_id=user.id, name=user.name, role=user.role)


def cli_operator(session: Session) -> Principal:
    """The CLI operator's principal, created on first use (a migrated database needs nothing else)."""
    user = session.scalar(select(User).where(User.name == CLI_OPERATOR))
    if user is None:
        user = User(name=CLI_OPERATOR, role=Role.admin, disabled=True)
        session.add(user)
        session.flush()
    return Principal(user_id=user.id, name=user.name, role=user.role)


def set_bootstrap_token(session: Session, token: str) -> Principal:
    """Make ``token`` the one valid bootstrap-admin token, creating the admin on first use."""
    user = session.scalar(select(User).where(User.name == BOOTSTRAP_ADMIN))
    if user is None:
        user = User(name=BOOTSTRAP_ADMIN, role=Role.admin, disabled=False)
        session.add(user)
        session.flush()
    now = utcnow()
    for old in session.scalars(
        select(ApiToken).where(
            ApiToken.user_id == user.id,
            ApiToken.label == BOOTSTRAP_LABEL,
            ApiToken.revoked_at.is_(None),
        )
    ):
        old.revoked_at = now
    digest = hash_token(token)
    existing = session.scalar(select(ApiToken).where(ApiToken.token_sha256 == digest))
    if existing is not None:
        if existing.user_id != user.id:
            raise ValueError("the bootstrap token is already in use by another user")
        existing.revoked_at = None
    else:
        session.add(ApiToken(user_id=user.id, token_sha256=digest, label=BOOTSTRAP_LABEL))
    session.flush()
    return Principal(user_id=user.id, name=user.name, role=user.role)
