"""Signing in and out, the session cookie, CSRF, focus, and the Chinese interface — in chromium."""

from __future__ import annotations

import re

import httpx
import pytest

from memory.users import authenticate
from tests.serving.web.conftest import shot, sign_in

pytestmark = pytest.mark.browser


def test_signed_out_pages_redirect_to_sign_in_and_a_session_cookie_is_strict(context, web_app) -> None:
    page = context.new_page()
    page.goto("/app/patient")
    assert re.search(r"/app/sign-in\?next=/app/patient$", page.url)
    shot(page, "sign-in")
    page.get_by_test_id("login-token").fill("ha_not_a_token")
    page.get_by_test_id("login-submit").click()
    assert page.get_by_role("alert").inner_text().startswith("That token is invalid")

    page.get_by_test_id("login-token").fill(web_app.people.pam)
    page.get_by_test_id("login-submit").click()
    page.wait_for_url("**/app/patient")
    (cookie,) = [c for c in context.cookies() if c["name"] == "ha_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/app"
    assert cookie["expires"] > 0, "a session cookie expires"
    assert cookie["value"] != web_app.people.pam, "the API token is exchanged, never kept in the browser"
    headers = page.request.get("/app/patient").headers
    assert "script-src 'self'" in headers["content-security-policy"]

    page.get_by_test_id("sign-out").click()
    page.wait_for_url("**/app/sign-in?out=1")
    assert not [c for c in context.cookies() if c["name"] == "ha_session"]
    with web_app.services.sessions() as session:
        assert authenticate(session, cookie["value"]) is None, "signing out revokes the session server-side"
    page.goto("/app/patient")
    assert "/app/sign-in" in page.url


def test_the_cookie_is_secure_behind_tls(web_app) -> None:
    with httpx.Client(base_url=web_app.url) as http:
        form = http.get("/app/sign-in")
        nonce = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
        answer = http.post(
            "/app/sign-in",
            data={"csrf": nonce, "token": web_app.people.pam},
            headers={"X-Forwarded-Proto": "https"},
        )
    assert answer.status_code == 303
    cookie = answer.headers["set-cookie"]
    assert re.search(r"ha_session=[^;]+;.*HttpOnly;.*SameSite=strict; Secure", cookie, re.I)


def test_the_session_cookie_is_not_a_key_to_the_json_api(context, web_app) -> None:
    page = sign_in(context, web_app.people.pam)
    # The API reads bearer tokens only: a page's cookie does not authenticate it (so no CSRF there).
    assert page.request.get("/v1/notifications").status == 401


def test_a_form_without_its_csrf_token_is_refused_in_words(context, web_app) -> None:
    page = sign_in(context, web_app.people.pam)
    page.eval_on_selector_all('input[name="csrf"]', "fields => fields.forEach(f => f.value = 'forged')")
    page.get_by_test_id("consultation-new").click()
    page.wait_for_load_state()
    detail = page.get_by_test_id("problem-detail").inner_text()
    assert "security token" in detail and "Traceback" not in page.content()
    assert page.get_by_text("Error 403").is_visible()
    shot(page, "csrf-refused")
    # A script's request without the header is refused too.
    refused = page.request.post("/app/patient/consultations", form={})
    assert refused.status == 403


def test_keyboard_focus_is_visible(context) -> None:
    page = context.new_page()
    page.goto("/app/sign-in")
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.dataset.testid") == "login-token":
            break
    else:
        pytest.fail("the token field cannot be reached with the keyboard")
    outline = page.evaluate(
        "(() => { const s = getComputedStyle(document.activeElement);"
        " return [s.outlineStyle, parseFloat(s.outlineWidth), s.boxShadow]; })()"
    )
    assert outline[0] != "none" and outline[1] >= 2 and outline[2] != "none", outline
    page.keyboard.press("Shift+Tab")
    assert page.evaluate("document.activeElement.tagName") in ("A", "INPUT", "BUTTON")


def test_the_interface_speaks_chinese(browser, web_app) -> None:
    phone = {"width": 390, "height": 844}
    context = browser.new_context(base_url=web_app.url, locale="zh-CN", viewport=phone)
    try:
        page = sign_in(context, web_app.people.pam)
        assert page.locator("html").get_attribute("lang") == "zh-CN"
        assert page.get_by_role("heading", level=1).inner_text() == "您的问诊"
        shot(page, "patient-zh-phone")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, "the page fits a phone's width"
        page.get_by_test_id("lang-toggle").click()
        page.wait_for_load_state()
        assert page.get_by_role("heading", level=1).inner_text() == "Your consultations"
    finally:
        context.close()
