"""The signed identity assertion: key handling, claims, caching, and forged tokens refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OctKey

from gateway.assertion import (
    AssertionSigner,
    KeyFileError,
    generate_key_file,
    key_file_problems,
    verify,
)
from gateway.core.model import Identity

ISSUER = "https://sso.site-a.example"
AUDIENCE = "intercom-upstreams"
LIFETIME = 60

ALICE = Identity(
    subject="alice",
    provider="local",
    name="Alice Operator",
    email="alice@example.test",
    groups=("Intercom-Operators", "UC-Users"),
    auth_time=1_700_000_000.0,
)


def make_signer(
    key_file: Path, *, issuer: str = ISSUER, audience: str = AUDIENCE
) -> AssertionSigner:
    return AssertionSigner(key_file, issuer=issuer, audience=audience, lifetime=LIFETIME)


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    return tmp_path / "data" / "jwt-signing-key.json"


@pytest.fixture
def signer(key_file: Path) -> AssertionSigner:
    return make_signer(key_file)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_json(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode("utf-8"))


def valid_claims(now: float, **changes: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "iat": int(now),
        "nbf": int(now) - 5,
        "exp": int(now) + LIFETIME,
        "groups": ["Intercom-Admins"],
        "tier": "admin",
    }
    claims.update(changes)
    return claims


def unverified(token: str, part: int) -> dict[str, Any]:
    """The header (0) or the claims (1) of a token, read without any check."""
    text = token.split(".")[part]
    value: dict[str, Any] = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    return value


def check(token: str, signer: AssertionSigner) -> dict[str, Any]:
    return verify(token, signer.jwks(), audience=AUDIENCE, issuer=ISSUER)


# -- the key -------------------------------------------------------------------------


def test_key_file_is_created_private_and_reused(key_file: Path) -> None:
    first = make_signer(key_file)
    assert key_file.is_file()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert not [p.name for p in key_file.parent.iterdir() if p.name != key_file.name]
    content = key_file.read_bytes()

    second = make_signer(key_file)
    assert second.kid == first.kid
    assert second.jwks() == first.jwks()
    assert key_file.read_bytes() == content  # read, not regenerated


def test_a_token_of_one_signer_verifies_with_the_keys_of_the_next(key_file: Path) -> None:
    now = time.time()
    token = make_signer(key_file).sign(ALICE, "operator", "s1", now)
    assert check(token, make_signer(key_file))["sub"] == "alice"


def test_jwks_publishes_one_public_p256_key(signer: AssertionSigner) -> None:
    jwks = signer.jwks()
    assert list(jwks) == ["keys"]
    assert len(jwks["keys"]) == 1
    key = jwks["keys"][0]
    assert key["kty"] == "EC"
    assert key["crv"] == "P-256"
    assert key["alg"] == "ES256"
    assert key["use"] == "sig"
    assert key["kid"] == signer.kid
    assert "d" not in key
    assert {"x", "y"} <= set(key)
    json.dumps(jwks)  # serialisable as /.sso/jwks.json
    # the published key is the public half of the signing key
    assert not ECKey.import_key(key).is_private


def test_a_key_file_without_a_private_key_is_refused(
    tmp_path: Path, signer: AssertionSigner
) -> None:
    public_only = tmp_path / "public.json"
    public_only.write_text(json.dumps(signer.jwks()["keys"][0]), encoding="utf-8")
    with pytest.raises(ValueError):
        make_signer(public_only)


# -- rotation: keys published beside the signing key ----------------------------------


def rotation_signer(key_file: Path, published: list[Path]) -> AssertionSigner:
    return AssertionSigner(
        key_file,
        issuer=ISSUER,
        audience=AUDIENCE,
        lifetime=LIFETIME,
        published_key_files=published,
    )


def test_a_rotation_keeps_every_assertion_verifiable(tmp_path: Path) -> None:
    """Publish the next key, sign with it while the old one is still published:
    an upstream holding either key set verifies what it is given."""
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    generate_key_file(old)
    generate_key_file(new)
    now = time.time()

    before = rotation_signer(old, [])
    announcing = rotation_signer(old, [new])  # step 1: the next key is published
    switched = rotation_signer(new, [old])  # step 2: it signs, the old one stays published
    after = rotation_signer(new, [])  # step 3: once old assertions have expired

    assert [k["kid"] for k in announcing.jwks()["keys"]] == [before.kid, after.kid]
    assert [k["kid"] for k in switched.jwks()["keys"]] == [after.kid, before.kid]
    assert switched.kid == after.kid != before.kid  # only the signing key signs
    old_token = before.sign(ALICE, "operator", "s1", now)
    new_token = switched.sign(ALICE, "operator", "s1", now)
    assert unverified(new_token, 0)["kid"] == after.kid
    # an upstream that fetched the key set while the next key was announced
    assert verify(new_token, announcing.jwks(), audience=AUDIENCE, issuer=ISSUER)
    # an upstream that fetched it after the switch still takes the old assertions
    assert verify(old_token, switched.jwks(), audience=AUDIENCE, issuer=ISSUER)
    with pytest.raises(JoseError):  # and once the old key is gone, no more
        verify(old_token, after.jwks(), audience=AUDIENCE, issuer=ISSUER)


def test_a_published_key_never_shows_its_private_half(tmp_path: Path, key_file: Path) -> None:
    other = tmp_path / "next.json"
    generate_key_file(other)
    assert ECKey.import_key(json.loads(other.read_text())).is_private
    for key in rotation_signer(key_file, [other]).jwks()["keys"]:
        assert "d" not in key
        assert not ECKey.import_key(key).is_private
        assert (key["alg"], key["use"], key["crv"]) == ("ES256", "sig", "P-256")


def test_a_public_key_may_be_published(tmp_path: Path, key_file: Path) -> None:
    other = tmp_path / "next.json"
    generate_key_file(other)
    public = tmp_path / "next-public.json"
    public.write_text(json.dumps(rotation_signer(other, []).jwks()["keys"][0]))
    keys = rotation_signer(key_file, [public]).jwks()["keys"]
    assert keys[1]["kid"] == json.loads(other.read_text())["kid"]


def test_a_generated_key_file_is_private_and_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "next.json"
    kid = generate_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    content = path.read_bytes()
    assert json.loads(content)["kid"] == kid
    assert generate_key_file(path) == kid  # the file there is kept, and named
    assert path.read_bytes() == content


BAD_KEYS = {
    "not JSON": b"-----BEGIN PRIVATE KEY-----\n",
    "not UTF-8": b"\xff\xfe{}",
    "a list": b"[]",
    "an RSA key": json.dumps({"kty": "RSA", "n": "AQAB", "e": "AQAB"}).encode(),
    "P-384": json.dumps(ECKey.generate_key("P-384").as_dict(private=False)).encode(),
    "a point off the curve": json.dumps(
        {"kty": "EC", "crv": "P-256", "x": b64url(b"\x01" * 32), "y": b64url(b"\x02" * 32)}
    ).encode(),
    "no coordinates": json.dumps({"kty": "EC", "crv": "P-256"}).encode(),
    "coordinates that are no base64url": json.dumps(
        {"kty": "EC", "crv": "P-256", "x": "!!", "y": "AA"}
    ).encode(),
    "coordinates that are numbers": json.dumps(
        {"kty": "EC", "crv": "P-256", "x": 1, "y": 2}
    ).encode(),
    "an empty kid": json.dumps(
        {**ECKey.generate_key("P-256").as_dict(private=False), "kid": " "}
    ).encode(),
    "a kid that is no string": json.dumps(
        {**ECKey.generate_key("P-256").as_dict(private=False), "kid": 7}
    ).encode(),
}


@pytest.mark.parametrize("what", sorted(BAD_KEYS))
def test_a_bad_published_key_is_refused_with_its_file_named(
    tmp_path: Path, key_file: Path, what: str
) -> None:
    bad = tmp_path / "published.json"
    bad.write_bytes(BAD_KEYS[what])
    with pytest.raises(KeyFileError, match=r"published\.json"):
        rotation_signer(key_file, [bad])
    ((index, reason),) = key_file_problems(key_file, [bad])
    assert index == 0
    assert reason.startswith(f"{bad}: ")


def test_a_key_published_twice_is_refused(tmp_path: Path, key_file: Path) -> None:
    other = tmp_path / "next.json"
    generate_key_file(other)
    signing_kid = make_signer(key_file).kid
    with pytest.raises(KeyFileError, match=f"key id {signing_kid} is already published"):
        rotation_signer(key_file, [key_file])  # the signing key itself
    with pytest.raises(KeyFileError, match="already published"):
        rotation_signer(key_file, [other, other])
    problems = key_file_problems(key_file, [key_file, other, other, tmp_path / "missing.json"])
    assert [index for index, _ in problems] == [0, 2, 3]
    assert "missing.json" in problems[2][1]


def test_a_missing_signing_key_is_no_problem_before_the_first_start(tmp_path: Path) -> None:
    assert key_file_problems(tmp_path / "not-yet.json", []) == []


# -- signing and verifying -----------------------------------------------------------


def test_signed_token_verifies_and_carries_the_identity(signer: AssertionSigner) -> None:
    now = time.time()
    token = signer.sign(ALICE, "operator", "session-1", now)

    header = unverified(token, 0)
    assert header["alg"] == "ES256"
    assert header["kid"] == signer.kid

    claims = check(token, signer)
    assert claims["sub"] == "alice"
    assert claims["email"] == "alice@example.test"
    assert claims["name"] == "Alice Operator"
    assert claims["groups"] == ["Intercom-Operators", "UC-Users"]
    assert claims["tier"] == "operator"
    assert claims["aud"] == AUDIENCE
    assert claims["iss"] == ISSUER
    assert claims["idp"] == "local"
    assert claims["auth_time"] == 1_700_000_000
    assert claims["exp"] == int(now) + LIFETIME
    assert claims["iat"] == int(now)


def test_an_unknown_login_time_is_left_out_not_sent_as_1970(signer: AssertionSigner) -> None:
    """An OIDC login whose provider did not say when the person signed in keeps
    auth_time 0 (unknown); the assertion then carries no auth_time at all."""
    now = time.time()
    unknown = Identity(subject="alice", provider="oidc", groups=("Intercom-Operators",))
    claims = check(signer.sign(unknown, "operator", "s-unknown", now), signer)
    assert "auth_time" not in claims
    assert check(signer.sign(ALICE, "operator", "s-known", now), signer)["auth_time"] == int(
        ALICE.auth_time
    )


def test_a_session_without_a_tier_gets_a_null_tier(signer: AssertionSigner) -> None:
    claims = check(signer.sign(ALICE, None, "session-1", time.time()), signer)
    assert claims["tier"] is None


def test_token_is_cached_per_session_and_tier(signer: AssertionSigner) -> None:
    now = time.time()
    first = signer.sign(ALICE, "operator", "session-1", now)
    assert signer.sign(ALICE, "operator", "session-1", now + 1) == first
    assert signer.sign(ALICE, "supervisor", "session-1", now + 1) != first
    assert signer.sign(ALICE, "operator", "session-2", now + 1) != first
    # reused for half its lifetime only
    renewed = signer.sign(ALICE, "operator", "session-1", now + LIFETIME / 2 + 1)
    assert renewed != first
    assert unverified(renewed, 1)["iat"] == int(now + LIFETIME / 2 + 1)


def test_forget_drops_the_cached_tokens_of_that_session_only(signer: AssertionSigner) -> None:
    now = time.time()
    mine = signer.sign(ALICE, "operator", "session-1", now)
    mine_other_tier = signer.sign(ALICE, "user", "session-1", now)
    theirs = signer.sign(ALICE, "operator", "session-2", now)

    signer.forget("session-1")

    assert signer.sign(ALICE, "operator", "session-1", now + 1) != mine
    assert signer.sign(ALICE, "user", "session-1", now + 1) != mine_other_tier
    assert signer.sign(ALICE, "operator", "session-2", now + 1) == theirs
    signer.forget("no-such-session")  # harmless


def test_cache_size_is_bounded(key_file: Path) -> None:
    small = AssertionSigner(
        key_file, issuer=ISSUER, audience=AUDIENCE, lifetime=LIFETIME, cache_size=2
    )
    now = time.time()
    first = small.sign(ALICE, "operator", "s1", now)
    small.sign(ALICE, "operator", "s2", now)
    small.sign(ALICE, "operator", "s3", now)  # evicts s1
    assert small.sign(ALICE, "operator", "s1", now + 1) != first


# -- hostile tokens: every one must be refused ---------------------------------------


def test_token_signed_with_another_key_is_rejected(signer: AssertionSigner) -> None:
    now = time.time()
    other = ECKey.generate_key("P-256", private=True)
    forged = jwt.encode(
        {"alg": "ES256", "kid": signer.kid, "typ": "JWT"},
        valid_claims(now),
        other,
        algorithms=["ES256"],
    )
    with pytest.raises(JoseError):
        check(forged, signer)


def test_token_with_a_changed_payload_is_rejected(signer: AssertionSigner) -> None:
    now = time.time()
    header, _, signature = signer.sign(ALICE, "operator", "s1", now).split(".")
    payload = b64url_json(valid_claims(now, sub="alice", tier="admin"))
    with pytest.raises(JoseError):
        check(f"{header}.{payload}.{signature}", signer)


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_unsigned_alg_none_token_is_rejected(signer: AssertionSigner, alg: str) -> None:
    header = b64url_json({"alg": alg, "typ": "JWT", "kid": signer.kid})
    payload = b64url_json(valid_claims(time.time()))
    with pytest.raises(JoseError):
        check(f"{header}.{payload}.", signer)


def test_hs256_signed_with_the_public_key_pem_is_rejected(signer: AssertionSigner) -> None:
    """The classic algorithm confusion: HMAC keyed with the published public key."""
    public_pem = ECKey.import_key(signer.jwks()["keys"][0]).as_pem(private=False)
    header = b64url_json({"alg": "HS256", "typ": "JWT", "kid": signer.kid})
    payload = b64url_json(valid_claims(time.time()))
    signing_input = f"{header}.{payload}".encode("ascii")
    mac = hmac.new(public_pem, signing_input, hashlib.sha256).digest()
    with pytest.raises(JoseError):
        check(f"{header}.{payload}.{b64url(mac)}", signer)


def test_hs256_signed_with_the_published_jwk_is_rejected(signer: AssertionSigner) -> None:
    secret = json.dumps(signer.jwks()["keys"][0], sort_keys=True).encode("utf-8")
    forged = jwt.encode(
        {"alg": "HS256", "kid": signer.kid, "typ": "JWT"},
        valid_claims(time.time()),
        OctKey.import_key(secret),
        algorithms=["HS256"],
    )
    with pytest.raises(JoseError):
        check(forged, signer)


def test_wrong_audience_is_rejected(key_file: Path, signer: AssertionSigner) -> None:
    for_the_pbx = make_signer(key_file, audience="pbx-portal")  # same key, other audience
    token = for_the_pbx.sign(ALICE, "operator", "s1", time.time())
    with pytest.raises(JoseError):
        check(token, signer)
    good = signer.sign(ALICE, "operator", "s1", time.time())
    with pytest.raises(JoseError):
        verify(good, signer.jwks(), audience="pbx-portal", issuer=ISSUER)


def test_wrong_issuer_is_rejected(key_file: Path, signer: AssertionSigner) -> None:
    elsewhere = make_signer(key_file, issuer="https://sso.evil.example")
    token = elsewhere.sign(ALICE, "operator", "s1", time.time())
    with pytest.raises(JoseError):
        check(token, signer)


def test_expired_token_is_rejected(signer: AssertionSigner) -> None:
    long_ago = time.time() - 86_400
    token = signer.sign(ALICE, "operator", "s1", long_ago)
    with pytest.raises(JoseError):
        check(token, signer)


def test_token_without_exp_is_rejected(key_file: Path, signer: AssertionSigner) -> None:
    """Signed with the real key: only the missing expiry is wrong."""
    claims = valid_claims(time.time())
    del claims["exp"]
    key = ECKey.import_key(json.loads(key_file.read_text(encoding="utf-8")))
    token = jwt.encode(
        {"alg": "ES256", "kid": signer.kid, "typ": "JWT"}, claims, key, algorithms=["ES256"]
    )
    with pytest.raises(JoseError):
        check(token, signer)


def test_garbage_is_rejected(signer: AssertionSigner) -> None:
    for junk in ["", "a.b.c", "not-a-token", "..", "eyJhbGciOiJFUzI1NiJ9.e30"]:
        with pytest.raises(JoseError):
            check(junk, signer)
