"""Sign in and out in a real headless Chromium (Debian's, driven by playwright), with
the keyboard only, against the gateway under gunicorn."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.integration.conftest import ALICE, GatewayProcess
from tests.peers import require_binary

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SITE_NAME = "Building A Door Stations"
IDLE_TIMEOUT = 600


def test_keyboard_sign_in_shows_identity_then_sign_out(
    gateway_factory: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    chromium = require_binary("chromium", "the browser test drives Debian's Chromium")
    gateway = gateway_factory(
        site_name=SITE_NAME,
        settings={"session": {"idle_timeout": IDLE_TIMEOUT, "absolute_lifetime": 3600}},
    )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(gateway.url + "/.sso/login")
            expect(page).to_have_title(f"Sign in — {SITE_NAME}")
            expect(page.get_by_text(SITE_NAME, exact=True)).to_be_visible()

            # every input has a <label>: found by its label text
            username = page.get_by_label("User name")
            password = page.get_by_label("Password")
            expect(username).to_be_editable()
            expect(password).to_have_attribute("type", "password")

            # keyboard only: type, Tab to the password, Enter submits
            username.focus()
            page.keyboard.type(ALICE.username)
            page.keyboard.press("Tab")
            expect(password).to_be_focused()
            page.keyboard.type(ALICE.password)
            page.screenshot(path=str(tmp_path / "login-form.png"))
            page.keyboard.press("Enter")

            page.wait_for_url(re.compile(r"/\.sso/userinfo$"))
            expect(page.locator("#user")).to_have_text(ALICE.username)
            expect(page.locator("#tier")).to_have_text("operator")
            expect(page.locator("#groups")).to_have_text(", ".join(ALICE.groups))
            for element in ("#idle", "#absolute"):
                expect(page.locator(element)).to_have_text(re.compile(r"^[0-9]+$"))
            idle = int(page.locator("#idle").inner_text())
            absolute = int(page.locator("#absolute").inner_text())
            assert 0 < idle <= IDLE_TIMEOUT
            assert idle <= absolute <= 3600
            shot = tmp_path / "identity-page.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 0

            page.get_by_role("button", name="Sign out").click()
            expect(page.get_by_role("heading", name="You are signed out")).to_be_visible()
            page.screenshot(path=str(tmp_path / "signed-out.png"))

            # the session is gone on the server: the identity page asks for a login
            page.goto(gateway.url + "/.sso/userinfo")
            expect(page).to_have_url(re.compile(r"/\.sso/login\?rd="))
            expect(page.get_by_label("User name")).to_be_visible()
        finally:
            browser.close()

    assert [e["user"] for e in gateway.audit_events("login")] == [ALICE.username]
    assert [e["user"] for e in gateway.audit_events("logout")] == [ALICE.username]
