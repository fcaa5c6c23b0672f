"""Hostile Single Logout messages (HTTP-Redirect binding) at ``/.sso/saml/slo``:
parameter pollution, replays and stale or future ``IssueInstant``s, deflate
bombs.  They start from real messages of the test IdP and, where the attack needs
a validly signed message, are signed again with the IdP's own key."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest

from gateway.providers import saml as saml_provider
from gateway.providers.saml import MAX_INFLATED
from tests.flows.conftest import Gateway
from tests.saml import forge
from tests.saml.conftest import saml_login
from tests.saml_idp import SamlIdp

LIFETIME = 600  # request_lifetime's default
SKEW = 60  # clock_skew's default


def _path(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + ("?" + parts.query if parts.query else "")


def _browser(gw: Gateway) -> Gateway:
    """Another browser on the same gateway (its own cookie jar)."""
    return Gateway(gw.app, gw.app.test_client(), gw.clock, gw.audit_stream, gw.root)


def _refused(gw: Gateway, status: int, reason: str) -> None:
    assert status == 400, (status, gw.events("saml_logout_refused"))
    refused = gw.events("saml_logout_refused")
    assert refused, "no saml_logout_refused audit line"
    assert reason.lower() in refused[-1]["reason"].lower(), refused[-1]["reason"]


@pytest.fixture
def idp_key(saml_idp: SamlIdp) -> Path:
    return saml_idp.key_files("a")[0]


# -- 1. parameter pollution ----------------------------------------------------------


def _alice_and_mallory(gw: Gateway, idp: SamlIdp) -> tuple[Gateway, list[str], bytes]:
    """alice and mallory (UPN alice@corp.test.evil) signed in from two browsers;
    mallory's browser holds the IdP's signed LogoutRequest for her own session.
    Returns her browser, that URL's raw query parts and a LogoutRequest made from
    it for alice (every session: no SessionIndex)."""
    assert saml_login(_browser(gw), idp, "alice").status_code == 303
    mallory = _browser(gw)
    assert saml_login(mallory, idp, "mallory").status_code == 303
    captured = idp.logout_request_url("mallory")
    xml = forge.inflate_b64(forge.raw_value(captured, "SAMLRequest"))
    forged = re.sub(rb"<(\w+:)?SessionIndex>[^<]*</(\w+:)?SessionIndex>", b"", xml)
    forged = forged.replace(b">alice@corp.test.evil<", b">alice@corp.test<")
    assert b"SessionIndex" not in forged and b">alice@corp.test<" in forged
    return mallory, forge.raw_parts(captured), forged


def _assert_nobody_logged_out(gw: Gateway) -> None:
    assert len(gw.services.sessions.list("alice@corp.test")) == 1
    assert len(gw.services.sessions.list("alice@corp.test.evil")) == 1
    assert gw.events("logout") == []


@pytest.mark.parametrize(
    ("pollute", "reason"),
    [
        # the review's attack: werkzeug reads the forged value, python3-saml's
        # signed-octets rebuild only sees the literally named genuine part
        (lambda parts, evil: ["%53AMLRequest=" + evil, *parts], "percent-encoded"),
        (lambda parts, evil: [*parts, "SAML%52equest=" + evil], "percent-encoded"),
        (lambda parts, evil: ["SAMLRequest=" + evil, *parts], "twice"),
        (lambda parts, evil: [*parts, "SAMLRequest=" + evil], "twice"),
        # a RelayState or SigAlg outside what the signature covers
        (lambda parts, evil: [*parts, "%52elayState=https%3A%2F%2Fevil.example%2F"], "encoded"),
        (lambda parts, evil: [*parts, "RelayState=a", "RelayState=b"], "twice"),
        (lambda parts, evil: ["Sig%41lg=x", *parts], "percent-encoded"),
        (lambda parts, evil: [*parts, "Signature=" + parts[-1].split("=", 1)[1]], "twice"),
        (lambda parts, evil: [*parts, "SAMLResponse=" + evil], "both"),
        (lambda parts, evil: [*parts, "SAMLRequest"], "twice"),
        (lambda parts, evil: [*parts, "RelayState"], "no value"),
        (
            lambda parts, evil: [p.split("=")[0] if p.startswith("SigAlg=") else p for p in parts],
            "no value",
        ),
        (lambda parts, evil: [*parts, "x=%C3%A9", "\u00e9=1"], "not ascii"),
    ],
    ids=[
        "encoded-name-first",
        "encoded-name-last",
        "duplicate-first",
        "duplicate-last",
        "encoded-relaystate",
        "duplicate-relaystate",
        "encoded-sigalg",
        "duplicate-signature",
        "request-and-response",
        "duplicate-without-value",
        "bare-relaystate",
        "sigalg-without-value",
        "non-ascii",
    ],
)
def test_polluted_logout_request_is_refused(
    make_saml_gateway: Callable[..., Gateway],
    saml_idp: SamlIdp,
    pollute: Callable[[list[str], str], list[str]],
    reason: str,
) -> None:
    gw = make_saml_gateway()
    mallory, parts, forged = _alice_and_mallory(gw, saml_idp)
    evil = quote(forge.deflate_b64(forged), safe="")
    query = "&".join(pollute(parts, evil))
    r = mallory.client.get("/.sso/saml/slo?" + query, base_url="https://localhost")
    _refused(gw, r.status_code, reason)
    _assert_nobody_logged_out(gw)


def test_the_genuine_logout_request_of_the_attacker_only_ends_her_own_session(
    make_saml_gateway: Callable[..., Gateway], saml_idp: SamlIdp
) -> None:
    """The same captured URL sent as it is: only mallory is logged out (and
    extra plain parameters the binding does not know are ignored)."""
    gw = make_saml_gateway()
    mallory, parts, _forged = _alice_and_mallory(gw, saml_idp)
    r = mallory.get("/.sso/saml/slo?" + "&".join([*parts, "utm_source=mail", ""]))
    assert r.status_code == 302, gw.events("saml_logout_refused")
    assert len(gw.services.sessions.list("alice@corp.test")) == 1
    assert gw.services.sessions.list("alice@corp.test.evil") == []
    assert [e["user"] for e in gw.events("logout")] == ["alice@corp.test.evil"]


@pytest.mark.parametrize("relay_state", ["", "https://intercom.test/bye?a=1&b=2"])
def test_logout_request_with_a_relay_state_is_accepted(
    sgw: Gateway, saml_idp: SamlIdp, idp_key: Path, relay_state: str
) -> None:
    """A RelayState (also an empty one) is part of what the signature covers,
    and it is handed back to the IdP with the LogoutResponse."""
    assert saml_login(sgw, saml_idp, "alice").status_code == 303
    xml = forge.inflate_b64(forge.raw_value(saml_idp.logout_request_url("alice"), "SAMLRequest"))
    query = forge.redirect_query("SAMLRequest", xml, idp_key, relay_state=relay_state)
    r = sgw.get("/.sso/saml/slo?" + query)
    assert r.status_code == 302, sgw.events("saml_logout_refused")
    assert forge.raw_value(r.headers["Location"], "RelayState") == relay_state
    assert sgw.services.sessions.list("alice@corp.test") == []


def test_polluted_logout_response_is_refused(sgw: Gateway, saml_idp: SamlIdp) -> None:
    """The IdP's LogoutResponse comes back with a second, percent-encoded
    SAMLResponse in front: the signed genuine one is not what would be read."""
    browser = saml_idp.browser()
    assert saml_login(sgw, saml_idp, "alice", browser=browser).status_code == 303
    to_idp = sgw.logout().headers["Location"]
    back = browser.get(to_idp, allow_redirects=False, timeout=10).headers["Location"]
    xml = forge.inflate_b64(forge.raw_value(back, "SAMLResponse"))
    other = re.sub(rb'ID="[^"]+"', b'ID="_forged"', xml, count=1)
    evil = quote(forge.deflate_b64(other), safe="")
    r = sgw.get("/.sso/saml/slo?" + "&".join(["%53AMLResponse=" + evil, *forge.raw_parts(back)]))
    _refused(sgw, r.status_code, "percent-encoded")
    assert sgw.events("saml_logout_completed") == []
    # the genuine answer still completes the logout it belongs to
    assert sgw.get(_path(back)).status_code == 200
    assert sgw.events("saml_logout_completed")


# -- 2. replay and IssueInstant --------------------------------------------------------


def test_logout_request_is_accepted_once(
    make_saml_gateway: Callable[..., Gateway], saml_idp: SamlIdp
) -> None:
    gw = make_saml_gateway()
    assert saml_login(gw, saml_idp, "alice").status_code == 303
    url = saml_idp.logout_request_url("alice")
    assert gw.get(_path(url)).status_code == 302
    assert gw.services.sessions.list("alice@corp.test") == []
    # alice signs in again; the captured request must not end the new session
    assert saml_login(gw, saml_idp, "alice").status_code == 303
    _refused(gw, gw.get(_path(url)).status_code, "replayed logout request")
    assert len(gw.services.sessions.list("alice@corp.test")) == 1
    assert len(gw.events("logout")) == 1


@pytest.mark.parametrize(
    ("advance", "reason"),
    [
        (LIFETIME + SKEW + 30, "too old"),
        (5 * 3600, "too old"),
        (-(SKEW + 30), "in the future"),
    ],
    ids=["older-than-lifetime", "hours-old", "ahead-of-skew"],
)
def test_stale_or_future_logout_request_is_refused(
    make_saml_gateway: Callable[..., Gateway], saml_idp: SamlIdp, advance: int, reason: str
) -> None:
    gw = make_saml_gateway()
    assert saml_login(gw, saml_idp, "alice").status_code == 303
    url = saml_idp.logout_request_url("alice")
    gw.clock.advance(advance)
    _refused(gw, gw.get(_path(url)).status_code, reason)
    assert len(gw.services.sessions.list("alice@corp.test")) == 1


@pytest.mark.parametrize("advance", [LIFETIME, -SKEW // 2], ids=["late", "ahead-within-skew"])
def test_logout_request_within_its_lifetime_is_accepted(
    make_saml_gateway: Callable[..., Gateway], saml_idp: SamlIdp, advance: int
) -> None:
    gw = make_saml_gateway()
    assert saml_login(gw, saml_idp, "alice").status_code == 303
    url = saml_idp.logout_request_url("alice")
    gw.clock.advance(advance)
    assert gw.get(_path(url)).status_code == 302, gw.events("saml_logout_refused")
    assert gw.services.sessions.list("alice@corp.test") == []


# -- 3. deflate bombs ------------------------------------------------------------------

SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"


def test_unverified_logout_message_is_not_inflated(
    sgw: Gateway, saml_idp: SamlIdp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Megabytes of XML (with a DTD the screen would name) deflated into a
    small URL, with a made-up signature: refused on the signature, which covers
    the deflated value, before anything is inflated or parsed.  As a
    LogoutRequest, and as the answer to a logout in progress."""
    inflated: list[str] = []
    real = saml_provider._inflate

    def spy(value: str, what: str) -> bytes:
        inflated.append(what)
        return real(value, what)

    monkeypatch.setattr(saml_provider, "_inflate", spy)
    bomb = b'<!DOCTYPE r [<!ENTITY x "x">]><r>' + b" " * (4 * 1024 * 1024) + b"</r>"
    value = quote(forge.deflate_b64(bomb), safe="")
    assert len(value) < 8000  # fits in a URL
    tail = f"SigAlg={quote(SHA256, safe='')}&Signature=eHh4eA%3D%3D"
    _refused(sgw, sgw.get(f"/.sso/saml/slo?SAMLRequest={value}&{tail}").status_code, "signature")
    # a logout in progress: the RelayState names it
    assert saml_login(sgw, saml_idp, "alice").status_code == 303
    handle = forge.raw_value(sgw.logout().headers["Location"], "RelayState")
    query = f"SAMLResponse={value}&RelayState={quote(handle, safe='')}&{tail}"
    _refused(sgw, sgw.get("/.sso/saml/slo?" + query).status_code, "signature")
    assert all("DTD" not in e["reason"] for e in sgw.events("saml_logout_refused"))
    assert inflated == []


def _padded_logout_request(gw: Gateway, idp: SamlIdp, padding: int) -> bytes:
    """The IdP's LogoutRequest for alice with ``padding`` bytes of whitespace
    inside (still a valid message)."""
    assert saml_login(gw, idp, "alice").status_code == 303
    xml = forge.inflate_b64(forge.raw_value(idp.logout_request_url("alice"), "SAMLRequest"))
    head, sep, tail = xml.rpartition(b"</")
    return head + b" " * padding + sep + tail


def test_signed_logout_request_inflating_past_the_cap_is_refused(
    sgw: Gateway, saml_idp: SamlIdp, idp_key: Path
) -> None:
    xml = _padded_logout_request(sgw, saml_idp, MAX_INFLATED + 1)
    query = forge.redirect_query("SAMLRequest", xml, idp_key)
    _refused(sgw, sgw.get("/.sso/saml/slo?" + query).status_code, "inflates to more than")
    assert len(sgw.services.sessions.list("alice@corp.test")) == 1


def test_signed_logout_request_under_the_cap_is_accepted(
    sgw: Gateway, saml_idp: SamlIdp, idp_key: Path
) -> None:
    xml = _padded_logout_request(sgw, saml_idp, MAX_INFLATED - 4096)
    query = forge.redirect_query("SAMLRequest", xml, idp_key)
    assert sgw.get("/.sso/saml/slo?" + query).status_code == 302, sgw.events("saml_logout_refused")
    assert sgw.services.sessions.list("alice@corp.test") == []


def test_signed_logout_request_with_trailing_data_is_refused(
    sgw: Gateway, saml_idp: SamlIdp, idp_key: Path
) -> None:
    """Bytes after the end of the DEFLATE stream (zlib would ignore them; the
    gateway does not read a message two ways)."""
    xml = _padded_logout_request(sgw, saml_idp, 0)
    deflated = base64.b64decode(forge.deflate_b64(xml)) + b"trailing"
    value = quote(base64.b64encode(deflated).decode("ascii"), safe="")
    query = forge.sign_redirect("SAMLRequest=" + value, idp_key)
    _refused(sgw, sgw.get("/.sso/saml/slo?" + query).status_code, "trailing")
    assert len(sgw.services.sessions.list("alice@corp.test")) == 1
