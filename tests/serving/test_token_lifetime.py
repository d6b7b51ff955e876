"""Token expiry and revocation are honoured at the very next request (issue 13, security): the bearer API
checks every token on every request, so neither an expired nor a revoked token gets one more answer."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from memory.records import AccessDenied, InvalidInput, Records
from memory.schema import ApiToken, TokenKind, User, utcnow
from memory.users import Principal, add_token, authenticate, hash_token, revoke_token
from tests.agents.scenarios.conftest import auth


def _user_id(services, token: str) -> int:
    with services.sessions() as session:
        return session.scalar(select(ApiToken.user_id).where(ApiToken.token_sha256 == hash_token(token)))


def _expire(services, token: str) -> None:
    with services.sessions() as session, session.begin():
        session.execute(
            update(ApiToken)
            .where(ApiToken.token_sha256 == hash_token(token))
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )


def test_an_expired_token_is_refused_at_the_next_request(edge_api) -> None:
    client, people = edge_api
    services = client.app.state.services
    with services.sessions() as session, session.begin():
        _, token = add_token(session, _user_id(services, people.pam), expires_in=timedelta(hours=1))
    assert client.get("/v1/notifications", headers=auth(token)).status_code == 200
    _expire(services, token)
    refused = client.get("/v1/notifications", headers=auth(token))
    assert refused.status_code == 401 and "expired" in refused.json()["detail"]
    assert refused.headers["WWW-Authenticate"] == "Bearer"
    # The user's other token is untouched.
    assert client.get("/v1/notifications", headers=auth(people.pam)).status_code == 200


def test_revoking_one_token_leaves_the_others(edge_api) -> None:
    client, people = edge_api
    services = client.app.state.services
    with services.sessions() as session, session.begin():
        _, second = add_token(session, _user_id(services, people.dr_doe), label="laptop")
    assert client.get("/v1/notifications", headers=auth(second)).status_code == 200
    with services.sessions() as session, session.begin():
        assert revoke_token(session, second) is True
        assert revoke_token(session, second) is False, "revoking twice reports nothing to revoke"
        assert revoke_token(session, "ha_never_issued") is False
    assert client.get("/v1/notifications", headers=auth(second)).status_code == 401
    assert client.get("/v1/notifications", headers=auth(people.dr_doe)).status_code == 200


def test_token_lifetimes_are_validated(sqlite_api) -> None:
    client, people = sqlite_api
    services = client.app.state.services
    user_id = _user_id(services, people.pam)
    with services.sessions() as session:
        with pytest.raises(ValueError, match="positive"):
            add_token(session, user_id, expires_in=timedelta(0))
        with pytest.raises(ValueError, match="session token needs an expiry"):
            add_token(session, user_id, kind=TokenKind.session)
        row, token = add_token(session, user_id, kind=TokenKind.session, expires_in=timedelta(minutes=5))
        assert row.kind is TokenKind.session and authenticate(session, token).user_id == user_id
        session.rollback()


def test_only_admins_issue_tokens_and_never_for_disabled_users(sqlite_api) -> None:
    client, people = sqlite_api
    services = client.app.state.services
    pam_id, pete_id = _user_id(services, people.pam), _user_id(services, people.pete)
    with services.sessions() as session:
        pam = authenticate(session, people.pam)
        admin = authenticate(session, people.admin)
        assert isinstance(pam, Principal) and isinstance(admin, Principal)
        with pytest.raises(AccessDenied):
            Records(session, pam).issue_token(pete_id)
        token = Records(session, admin).issue_token(pam_id, "phone", expires_in=timedelta(days=30))
        assert authenticate(session, token).user_id == pam_id
        session.get(User, pete_id).disabled = True
        with pytest.raises(InvalidInput, match="disabled"):
            Records(session, admin).issue_token(pete_id)
        session.rollback()
