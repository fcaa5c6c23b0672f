"""The policy engine: tiers, routes, conditions, decisions and session limits."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from gateway.core.model import Identity, Outcome, RequestInfo
from gateway.core.network import parse_networks
from gateway.core.policy import (
    Conditions,
    PolicySet,
    Route,
    Tier,
    Window,
    Workstation,
    compile_path,
    deadline,
    format_explanation,
    group_key,
    name_key,
    normalise_host,
)

BERLIN = ZoneInfo("Europe/Berlin")
# Wednesday 2026-03-04 10:00 in Berlin (09:00 UTC)
NOW = datetime(2026, 3, 4, 9, 0, tzinfo=UTC)
SECURITY_ROOM = parse_networks(["10.20.30.0/24"])

ADMIN_DN = "CN=Intercom-Admins,OU=Groups,DC=corp,DC=example"
ADMIN_SID = "S-1-5-21-3623811015-3361044348-30300820-1013"
ADMIN_GUID = "{0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0}"


def contractor_conditions(valid_until: datetime | None = None) -> Conditions:
    return Conditions(
        valid_until=valid_until or deadline(date(2026, 12, 31), BERLIN),
        windows=(Window.parse(["weekdays"], "07:00", "18:00"),),
    )


TIERS = (
    Tier("admin", 50, ("UC-Admins", ADMIN_DN, ADMIN_SID, ADMIN_GUID), idle=900, absolute=28800),
    Tier("supervisor", 40, ("UC-Supervisors",)),
    Tier("operator", 30, ("Intercom-Operators",)),
    Tier("user", 10, ("UC-Users",)),
    Tier(
        "contractor",
        20,
        ("Contractors",),
        idle=600,
        absolute=14400,
        conditions=contractor_conditions(),
    ),
    Tier("alpha", 30, ("Alpha",)),
)

ROUTES = (
    Route(
        "intercom-health",
        hosts=("intercom.*",),
        path="/health",
        methods=("get", "HEAD"),
        public=True,
    ),
    Route(
        "intercom-admin",
        ("admin",),
        hosts=("intercom.*",),
        path="/admin/",
        conditions=Conditions(max_auth_age=3600),
    ),
    Route(
        "intercom-events",
        ("operator", "supervisor", "admin"),
        hosts=("intercom.*",),
        path="/api/events",
        methods=("GET",),
        passive=True,
    ),
    Route(
        "door-open",
        ("operator", "admin"),
        hosts=("intercom.*",),
        glob="/api/doors/*/open",
        methods=("POST",),
        conditions=Conditions(networks=SECURITY_ROOM),
    ),
    Route("maintenance", ("contractor", "operator"), hosts=("intercom.*",), path="/maintenance"),
    Route(
        "pbx-admin",
        ("admin",),
        hosts=("pbx.*",),
        path="/admin",
        conditions=Conditions(mfa=True, max_auth_age=900),
    ),
    Route("pbx-files", ("user", "admin"), hosts=("pbx.*",), glob="/files/**/report.pdf"),
    Route("pbx-sensitive", ("admin",), hosts=("pbx.*",), path="/Secret", case_sensitive=True),
    Route("intercom-console", ("operator", "supervisor", "admin"), hosts=("intercom.*",)),
    Route("any-tier", ("*",), hosts=("127.0.0.1", "localhost"), path="/"),
)

WORKSTATIONS = (Workstation("security-room", SECURITY_ROOM, idle=300, absolute=3600),)

POLICY = PolicySet(TIERS, ROUTES, WORKSTATIONS, BERLIN)


def person(*groups: str, mfa: bool = True, age: float = 60, ids: tuple[str, ...] = ()) -> Identity:
    return Identity(
        subject="p",
        provider="local",
        groups=groups,
        group_ids=ids,
        mfa=mfa,
        auth_time=NOW.timestamp() - age,
    )


def req(host: str, path: str, method: str = "GET", ip: str = "192.0.2.10") -> RequestInfo:
    return RequestInfo(host=host, path=path, method=method, client_ip=ip)


# -- group identifiers --------------------------------------------------------


ADMIN_TIERS = PolicySet(
    tiers=(Tier("admin", 50, ("UC-Admins", "Intercom-Admins", ADMIN_DN, ADMIN_SID, ADMIN_GUID)),),
    routes=(),
)


@pytest.mark.parametrize(
    "name",
    [
        ADMIN_SID,  # a group *named* like the admins' SID (anyone who may create groups)
        ADMIN_SID.lower(),
        ADMIN_GUID,
        ADMIN_GUID.strip("{}"),
        ADMIN_DN,
        "UC-Admin\u017f",  # long s: Unicode case folding makes it "uc-admins"
        "UC-ADMIN\u017f",
        "Intercom-Admins ",  # no trimming: another group
        " UC-Admins",
        "UC-Admins\u200b",
        "Intercom\u2011Admins",  # non-breaking hyphen
    ],
)
def test_a_group_name_never_passes_for_another_group(name: str) -> None:
    """Security review: names were classified by their look, so a group named
    like a SID matched that SID, and 'UC-Admin' + long s casefolded to 'uc-admins'."""
    assert ADMIN_TIERS.tiers_of(Identity(subject="mallory", provider="ldap", groups=(name,))) == ()


@pytest.mark.parametrize(
    "ids", [(ADMIN_SID,), (ADMIN_SID.lower(),), (ADMIN_GUID.strip("{}"),), (ADMIN_DN.lower(),)]
)
def test_identifiers_from_the_provider_match_by_kind(ids: tuple[str, ...]) -> None:
    held = ADMIN_TIERS.tiers_of(
        Identity(subject="bob", provider="ldap", groups=("Door-Team",), group_ids=ids)
    )
    assert [t.name for t in held] == ["admin"]


@pytest.mark.parametrize("name", ["UC-Admins", "uc-admins", "UC-ADMINS", "intercom-ADMINS"])
def test_names_match_with_ascii_case_ignored(name: str) -> None:
    held = ADMIN_TIERS.tiers_of(Identity(subject="bob", provider="ldap", groups=(name,)))
    assert [t.name for t in held] == ["admin"]


def test_other_letters_of_a_name_must_match_exactly() -> None:
    tiers = PolicySet(tiers=(Tier("door", 10, ("Türöffner",)),), routes=())
    assert tiers.tiers_of(
        Identity(subject="a", provider="ldap", groups=("türöffner",))
    )  # only T differs
    assert not tiers.tiers_of(Identity(subject="a", provider="ldap", groups=("TÜRÖFFNER",)))
    assert name_key("Türöffner") == "name:türöffner"
    assert name_key("K") == "name:k" and name_key("\u212a") == "name:\u212a"  # Kelvin sign


def test_group_keys() -> None:
    assert group_key("UC-Admins") == group_key("uc-admins") == group_key(" UC-ADMINS ")
    assert group_key(ADMIN_DN) == group_key("cn=intercom-admins , ou=Groups,dc=CORP, DC = example")
    assert group_key(ADMIN_SID) == group_key(ADMIN_SID.lower())
    assert group_key(ADMIN_GUID) == group_key(ADMIN_GUID.strip("{}").lower())
    assert group_key("CN=Smith\\, John,OU=People") != group_key("CN=Smith,John,OU=People")
    # no partial matching and no crossing between kinds
    assert group_key("Intercom-Admins") != group_key(ADMIN_DN)
    assert group_key("{0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0") != group_key(ADMIN_GUID)


def test_tiers_of_matches_every_identifier_kind() -> None:
    admin = POLICY.tier("admin")
    assert POLICY.tiers_of(person("uc-admins")) == (admin,)
    assert POLICY.tiers_of(person(ids=("cn=INTERCOM-admins, ou=groups, dc=corp, dc=example",))) == (
        admin,
    )
    assert POLICY.tiers_of(person(ids=(ADMIN_SID.lower(),))) == (admin,)
    assert POLICY.tiers_of(person(ids=("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",))) == (admin,)
    # the CN of a DN is not the group name
    assert POLICY.tiers_of(person("Intercom-Admins")) == ()
    assert POLICY.tiers_of(person("CN=UC-Admins,OU=Groups,DC=corp,DC=example")) == ()
    assert POLICY.tiers_of(person("UC-Admin")) == ()
    assert POLICY.tiers_of(person("UC-Admins-Old")) == ()


def test_tiers_of_is_ranked_with_name_tiebreak() -> None:
    held = POLICY.tiers_of(person("UC-Users", "Contractors", "Intercom-Operators", "Alpha"))
    assert [t.name for t in held] == ["alpha", "operator", "contractor", "user"]


# -- route matching -------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "path", "method", "route"),
    [
        ("intercom.example.com", "/admin/", "GET", "intercom-admin"),
        ("intercom.example.com", "/admin", "GET", "intercom-admin"),
        ("intercom.example.com", "/admin/x/y", "POST", "intercom-admin"),
        ("INTERCOM.Example.com:8443", "/ADMIN/x", "GET", "intercom-admin"),
        ("intercom.example.com.", "/Admin", "GET", "intercom-admin"),
        ("intercom.example.com", "/administrator", "GET", "intercom-console"),
        ("intercom.example.com", "/admin-tools/", "GET", "intercom-console"),
        ("intercom.example.com", "/health", "get", "intercom-health"),
        ("intercom.example.com", "/health", "HEAD", "intercom-health"),
        ("intercom.example.com", "/health", "POST", "intercom-console"),
        ("intercom.example.com", "/api/events", "GET", "intercom-events"),
        ("intercom.example.com", "/api/events/", "GET", "intercom-events"),
        ("intercom.example.com", "/api/eventsX", "GET", "intercom-console"),
        ("intercom.example.com", "/api/doors/3/open", "POST", "door-open"),
        ("intercom.example.com", "/api/doors/3/open/", "POST", "door-open"),
        ("intercom.example.com", "/api/doors/3/4/open", "POST", "intercom-console"),
        ("intercom.example.com", "/api/doors/3/open", "GET", "intercom-console"),
        ("intercom.example.com", "/maintenance", "GET", "maintenance"),
        ("pbx.example.com", "/files/report.pdf", "GET", "pbx-files"),
        ("pbx.example.com", "/files/2026/03/report.pdf", "GET", "pbx-files"),
        ("pbx.example.com", "/Secret/x", "GET", "pbx-sensitive"),
        ("pbx.example.com", "/secret/x", "GET", None),
        ("pbx.example.com", "/files/2026/other.pdf", "GET", None),
        ("127.0.0.1:8080", "/", "GET", "any-tier"),
        ("localhost", "/anything", "PUT", "any-tier"),
        ("intercom", "/admin/", "GET", None),
        ("evil.com", "/admin/", "GET", None),
        ("[::1]:8080", "/", "GET", None),
    ],
)
def test_first_matching_route(host: str, path: str, method: str, route: str | None) -> None:
    found = POLICY.match_route(req(host, path, method))
    assert (found.name if found else None) == route


def test_normalise_host() -> None:
    assert normalise_host("Intercom.Example.COM:443") == "intercom.example.com"
    assert normalise_host("intercom.example.com.") == "intercom.example.com"
    assert normalise_host("[2001:DB8::1]:8443") == "2001:db8::1"
    assert normalise_host("2001:db8::1") == "2001:db8::1"


@pytest.mark.parametrize(
    ("glob", "yes", "no"),
    [
        ("/api/*/status", ["/api/x/status", "/api/x/status/"], ["/api/x/y/status", "/api/status"]),
        ("/api/**", ["/api", "/api/", "/api/x/y"], ["/apix", "/ap"]),
        ("/a/**/b", ["/a/b", "/a/x/b", "/a/x/y/b"], ["/a/xb", "/ab"]),
        ("/**", ["/", "/x", "/x/y"], []),
        ("/*.js", ["/app.js"], ["/static/app.js"]),
        ("/v*/users", ["/v1/users", "/v/users"], ["/v1/x/users"]),
    ],
)
def test_globs(glob: str, yes: list[str], no: list[str]) -> None:
    pattern = compile_path(None, glob, case_sensitive=True)
    for path in yes:
        assert pattern.fullmatch(path), path
    for path in no:
        assert not pattern.fullmatch(path), path


@pytest.mark.parametrize(
    ("prefix", "glob"),
    [
        ("admin", None),
        ("/admin//x", None),
        ("/admin/../x", None),
        ("/admin/*", None),
        ("/admin;x", None),
        ("/a%2Fb", None),
        ("/a\\b", None),
        ("/admin./x", None),
        (None, "/api/*./x"),
        (None, "api/*"),
        (None, "/api/***"),
        (None, "/api/./x"),
        ("/a", "/b"),
    ],
)
def test_bad_path_patterns(prefix: str | None, glob: str | None) -> None:
    with pytest.raises(ValueError):
        compile_path(prefix, glob, case_sensitive=False)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "bad name"},
        {"name": "x", "allow": ()},
        {"name": "x", "allow": ("admin",), "public": True},
        {"name": "x", "allow": ("*", "admin")},
        {"name": "x", "public": True, "conditions": Conditions(mfa=True)},
        {"name": "x", "allow": ("admin",), "methods": ("GET POST",)},
        {"name": "x", "allow": ("admin",), "hosts": ("intercom/x",)},
        {"name": "x", "allow": ("admin",), "hosts": ("**.example.com",)},
        {"name": "x", "allow": ("admin",), "hosts": ()},
    ],
)
def test_bad_routes(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Route(**kwargs)  # type: ignore[arg-type]


_SEGMENT = st.text(alphabet="abcdXYZ09-_.~", min_size=1, max_size=6).filter(
    lambda s: not s.endswith(".")
)


@given(
    prefix=st.lists(_SEGMENT, min_size=1, max_size=3).map(lambda s: "/" + "/".join(s)),
    trailing=st.booleans(),
    suffix=st.text(alphabet="abcXY/-._", max_size=10),
)
@example(prefix="/admin", trailing=False, suffix="istrator")
@example(prefix="/admin", trailing=True, suffix="X/y")
@example(prefix="/admin", trailing=False, suffix="/")
def test_prefix_route_stays_inside_its_prefix(prefix: str, trailing: bool, suffix: str) -> None:
    route = Route("r", ("*",), path=prefix + ("/" if trailing else ""))
    path = re.sub("/+", "/", prefix + suffix)
    inside = path.lower() == prefix.lower() or path.lower().startswith(prefix.lower() + "/")
    assert route.matches("any.host", path, "GET") == inside


@given(st.text(alphabet="ab/X", max_size=12))
def test_single_star_never_crosses_a_slash(middle: str) -> None:
    assume("//" not in "/api/" + middle + "/status")
    route = Route("r", ("*",), glob="/api/*/status")
    path = "/api/" + middle + "/status"
    assert route.matches("h", path, "GET") == ("/" not in middle)


# -- evaluation -------------------------------------------------------------------


def test_no_route() -> None:
    anon = POLICY.evaluate(None, req("evil.com", "/"), NOW)
    assert anon.outcome is Outcome.LOGIN and anon.reasons == ("no-session",)
    known = POLICY.evaluate(person("UC-Admins"), req("evil.com", "/"), NOW)
    assert known.outcome is Outcome.DENY and known.reasons == ("no-route: default deny",)


def test_public_route_needs_no_session() -> None:
    decision = POLICY.evaluate(None, req("intercom.x", "/health"), NOW)
    assert decision.outcome is Outcome.PUBLIC
    assert decision.allowed and decision.route == "intercom-health"


def test_public_route_conditions() -> None:
    policy = PolicySet(
        TIERS,
        (
            Route(
                "metrics",
                public=True,
                path="/metrics",
                conditions=Conditions(networks=SECURITY_ROOM),
            ),
        ),
    )
    assert (
        policy.evaluate(None, req("h", "/metrics", ip="10.20.30.1"), NOW).outcome is Outcome.PUBLIC
    )
    outside = policy.evaluate(None, req("h", "/metrics"), NOW)
    assert outside.outcome is Outcome.DENY
    assert "condition-failed:outside-network" in outside.reasons


def test_login_needed() -> None:
    decision = POLICY.evaluate(None, req("intercom.x", "/admin/"), NOW)
    assert decision.outcome is Outcome.LOGIN
    assert decision.reasons == ("route:intercom-admin", "no-session")
    assert not decision.step_up
    assert decision.required_tiers == ("admin",)


def test_allow_carries_tier_and_reasons() -> None:
    decision = POLICY.evaluate(person("UC-Admins"), req("intercom.x", "/admin/"), NOW)
    assert decision.outcome is Outcome.ALLOW
    assert decision.tier == "admin"
    assert decision.route == "intercom-admin"
    assert decision.reasons == ("route:intercom-admin", "tier:admin")
    assert decision.required_tiers == ("admin",)
    assert not decision.passive


def test_passive_route() -> None:
    decision = POLICY.evaluate(person("Intercom-Operators"), req("intercom.x", "/api/events"), NOW)
    assert decision.outcome is Outcome.ALLOW and decision.passive


def test_no_tier_allowed() -> None:
    decision = POLICY.evaluate(person("Intercom-Operators"), req("intercom.x", "/admin/"), NOW)
    assert decision.outcome is Outcome.DENY
    assert decision.reasons[-1] == "no-tier-allowed:needs admin"
    nobody = POLICY.evaluate(person("Marketing"), req("localhost", "/"), NOW)
    assert nobody.outcome is Outcome.DENY
    assert nobody.reasons[-1] == "no-tier-allowed:needs any tier"


def test_wildcard_route_allows_any_held_tier() -> None:
    decision = POLICY.evaluate(person("UC-Users"), req("localhost", "/"), NOW)
    assert decision.outcome is Outcome.ALLOW and decision.tier == "user"


def test_highest_allowed_passing_tier_judges() -> None:
    # operator outranks contractor; both allowed on maintenance
    both = person("Contractors", "Intercom-Operators")
    decision = POLICY.evaluate(both, req("intercom.x", "/maintenance"), NOW)
    assert decision.tier == "operator"
    # admin is held but not allowed on maintenance: judged as contractor
    admin_contractor = person("UC-Admins", "Contractors")
    decision = POLICY.evaluate(admin_contractor, req("intercom.x", "/maintenance"), NOW)
    assert decision.outcome is Outcome.ALLOW and decision.tier == "contractor"


def test_contractor_outside_window_is_skipped() -> None:
    saturday = datetime(2026, 3, 7, 10, 0, tzinfo=UTC)
    decision = POLICY.evaluate(person("Contractors"), req("intercom.x", "/maintenance"), saturday)
    assert decision.outcome is Outcome.DENY
    assert "tier-skipped:contractor:outside-window" in decision.reasons
    # someone who also holds operator still gets in, as operator
    both = person("Contractors", "Intercom-Operators")
    decision = POLICY.evaluate(both, req("intercom.x", "/maintenance"), saturday)
    assert decision.outcome is Outcome.ALLOW and decision.tier == "operator"
    # evening: 18:00 Berlin is outside the [07:00, 18:00) window
    evening = datetime(2026, 3, 4, 17, 0, tzinfo=UTC)
    assert (
        POLICY.evaluate(person("Contractors"), req("intercom.x", "/maintenance"), evening).outcome
        is Outcome.DENY
    )
    before_six = datetime(2026, 3, 4, 16, 59, tzinfo=UTC)
    assert POLICY.evaluate(
        person("Contractors"), req("intercom.x", "/maintenance"), before_six
    ).allowed


def test_contractor_expiry_is_end_of_day_in_policy_timezone() -> None:
    last_moment = datetime(2026, 12, 31, 16, 59, tzinfo=UTC)  # 17:59 Berlin, a Thursday
    assert POLICY.evaluate(
        person("Contractors"), req("intercom.x", "/maintenance"), last_moment
    ).allowed
    tier = POLICY.tier("contractor")
    assert tier is not None and tier.conditions.valid_until is not None
    assert tier.conditions.valid_until == datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=BERLIN)
    after = datetime(2026, 12, 31, 23, 0, tzinfo=UTC)  # 00:00 Berlin on Jan 1st
    assert tier.conditions.failures(None, "", after, BERLIN) == ("expired", "outside-window")
    assert "expired" not in tier.conditions.failures(None, "", after - timedelta(seconds=1), BERLIN)


def test_step_up_when_only_auth_age_fails() -> None:
    stale = person("UC-Admins", age=7200)
    decision = POLICY.evaluate(stale, req("intercom.x", "/admin/"), NOW)
    assert decision.outcome is Outcome.LOGIN and decision.step_up
    assert "condition-failed:max-auth-age" in decision.reasons
    never = Identity("p", "local", groups=("UC-Admins",), mfa=True)  # auth_time 0
    assert POLICY.evaluate(never, req("intercom.x", "/admin/"), NOW).step_up


def test_no_step_up_when_something_else_fails() -> None:
    stale_no_mfa = person("UC-Admins", age=7200, mfa=False)
    decision = POLICY.evaluate(stale_no_mfa, req("pbx.x", "/admin"), NOW)
    assert decision.outcome is Outcome.DENY and not decision.step_up
    assert "condition-failed:mfa" in decision.reasons
    fresh_no_mfa = person("UC-Admins", mfa=False)
    assert POLICY.evaluate(fresh_no_mfa, req("pbx.x", "/admin"), NOW).reasons[-2:] == (
        "condition-failed:mfa",
        "no-tier-passed",
    )


def test_auth_time_in_the_future_is_denied_not_stepped_up() -> None:
    future = person("UC-Admins", age=-3600)
    decision = POLICY.evaluate(future, req("intercom.x", "/admin/"), NOW)
    assert decision.outcome is Outcome.DENY
    assert "condition-failed:auth-time-in-future" in decision.reasons
    skewed = person("UC-Admins", age=-30)
    assert POLICY.evaluate(skewed, req("intercom.x", "/admin/"), NOW).allowed


def test_step_up_from_tier_condition() -> None:
    policy = PolicySet(
        (Tier("admin", 1, ("A",), conditions=Conditions(max_auth_age=60)),),
        (Route("all", ("admin",)),),
    )
    decision = policy.evaluate(person("A", age=120), req("h", "/"), NOW)
    assert decision.outcome is Outcome.LOGIN and decision.step_up
    assert "tier-skipped:admin:max-auth-age" in decision.reasons


def test_network_condition_on_route() -> None:
    op = person("Intercom-Operators")
    inside = POLICY.evaluate(op, req("intercom.x", "/api/doors/1/open", "POST", "10.20.30.7"), NOW)
    assert inside.allowed
    mapped = req("intercom.x", "/api/doors/1/open", "POST", "::ffff:10.20.30.7")
    assert POLICY.evaluate(op, mapped, NOW).allowed
    outside = POLICY.evaluate(op, req("intercom.x", "/api/doors/1/open", "POST"), NOW)
    assert outside.outcome is Outcome.DENY
    assert "condition-failed:outside-network" in outside.reasons
    garbage = POLICY.evaluate(op, req("intercom.x", "/api/doors/1/open", "POST", "nope"), NOW)
    assert garbage.outcome is Outcome.DENY


def test_evaluate_refuses_naive_time_and_bad_paths() -> None:
    with pytest.raises(ValueError):
        POLICY.evaluate(None, req("h", "/"), datetime(2026, 1, 1))
    assert POLICY.evaluate(None, req("h", "admin"), NOW).outcome is Outcome.ERROR


def test_primary_tier() -> None:
    both = person("Contractors", "UC-Users", "UC-Admins")
    assert POLICY.primary_tier(both, "192.0.2.1", NOW) == POLICY.tier("admin")
    saturday = datetime(2026, 3, 7, 10, 0, tzinfo=UTC)
    contractor_user = person("Contractors", "UC-Users")
    assert POLICY.primary_tier(contractor_user, "192.0.2.1", NOW) == POLICY.tier("contractor")
    assert POLICY.primary_tier(contractor_user, req("h", "/"), saturday) == POLICY.tier("user")
    assert POLICY.primary_tier(person("Contractors"), "192.0.2.1", saturday) is None


# -- windows ----------------------------------------------------------------------


def test_window_wraps_past_midnight() -> None:
    night = Window.parse(["fri"], "22:00", "06:00")
    fri_23 = datetime(2026, 3, 6, 23, 0, tzinfo=BERLIN)
    sat_05 = datetime(2026, 3, 7, 5, 59, tzinfo=BERLIN)
    sat_06 = datetime(2026, 3, 7, 6, 0, tzinfo=BERLIN)
    fri_05 = datetime(2026, 3, 6, 5, 0, tzinfo=BERLIN)
    fri_21 = datetime(2026, 3, 6, 21, 59, tzinfo=BERLIN)
    assert night.contains(fri_23) and night.contains(sat_05)
    assert not night.contains(sat_06) and not night.contains(fri_05) and not night.contains(fri_21)
    sunday_night = Window.parse(["sun"], "20:00", "02:00")
    assert sunday_night.contains(datetime(2026, 3, 9, 1, 0, tzinfo=BERLIN))  # Monday 01:00


def test_window_parsing() -> None:
    assert Window.parse(["weekdays"], "07:00", "18:00").days == frozenset(range(5))
    assert Window.parse(["Saturday", "SUN"], "00:00", "24:00").days == frozenset({5, 6})
    assert Window.parse(["daily"], "00:00", "24:00").describe().endswith("00:00-24:00")
    for days, start, end in [
        (["someday"], "07:00", "18:00"),
        ([], "07:00", "18:00"),
        (["mon"], "7:00", "18:00"),
        (["mon"], "24:00", "18:00"),
        (["mon"], "07:00", "07:00"),
        (["mon"], "07:60", "08:00"),
    ]:
        with pytest.raises(ValueError):
            Window.parse(days, start, end)


def test_windows_use_policy_timezone_across_dst() -> None:
    cond = Conditions(windows=(Window.parse(["daily"], "07:00", "18:00"),))
    # 2026-03-29 is the spring-forward day in Berlin: 06:30 UTC is 08:30 CEST
    assert cond.failures(None, "", datetime(2026, 3, 29, 6, 30, tzinfo=UTC), BERLIN) == ()
    assert cond.failures(None, "", datetime(2026, 3, 28, 5, 30, tzinfo=UTC), BERLIN) == (
        "outside-window",
    )


# -- session limits -------------------------------------------------------------


def test_session_limits_most_restrictive_wins() -> None:
    plain = POLICY.session_limits(person("UC-Users"), "192.0.2.1", 1800, 28800)
    assert (plain.idle, plain.absolute) == (1800, 28800)
    assert plain.reasons == ("idle:default", "absolute:default")
    admin = POLICY.session_limits(person("UC-Admins"), "192.0.2.1", 1800, 28800)
    assert (admin.idle, admin.absolute) == (900, 28800)
    assert admin.reasons == ("idle:tier:admin", "absolute:default")
    both = POLICY.session_limits(person("UC-Admins", "Contractors"), "192.0.2.1", 1800, 28800)
    assert (both.idle, both.absolute) == (600, 14400)
    room = POLICY.session_limits(person("UC-Admins"), "10.20.30.9", 1800, 28800)
    assert (room.idle, room.absolute) == (300, 3600)
    assert room.reasons == ("idle:workstation:security-room", "absolute:workstation:security-room")
    capped = POLICY.session_limits(person("UC-Users"), "192.0.2.1", 900, 600)
    assert (capped.idle, capped.absolute) == (600, 600)


# -- construction errors and explanation ---------------------------------------------


def test_policy_set_refuses_inconsistencies() -> None:
    with pytest.raises(ValueError, match="duplicate tier"):
        PolicySet((Tier("a", 1, ("A",)), Tier("a", 2, ("B",))), ())
    with pytest.raises(ValueError, match="unknown tier"):
        PolicySet((Tier("a", 1, ("A",)),), (Route("r", ("b",)),))
    with pytest.raises(ValueError):
        Tier("a", 1, ())
    with pytest.raises(ValueError):
        Tier("a", 1, ("A",), idle=0)
    with pytest.raises(ValueError):
        Workstation("w", SECURITY_ROOM)
    with pytest.raises(ValueError):
        Conditions(valid_until=datetime(2026, 1, 1))
    with pytest.raises(ValueError):
        Conditions(networks=())


def test_format_explanation() -> None:
    who = person("UC-Admins", ids=(ADMIN_SID,))
    request = req("intercom.x", "/admin/")
    text = format_explanation(POLICY.evaluate(who, request, NOW), who, request)
    assert "GET https://intercom.x/admin/ from 192.0.2.10" in text
    assert "route:    intercom-admin" in text
    assert "outcome:  ALLOW as tier admin" in text
    assert "  - tier:admin" in text
    assert ADMIN_SID in text
    anon = format_explanation(POLICY.evaluate(None, request, NOW), None, request)
    assert "identity: none" in anon and "LOGIN" in anon
    stale = person("UC-Admins", age=99999)
    assert "step-up" in format_explanation(POLICY.evaluate(stale, request, NOW), stale, request)


def test_amr_and_acrs_conditions() -> None:
    """OIDC facts: every listed authentication method / context must be present."""
    conditions = Conditions(amr=("mfa", "hwk"), acrs=("c1",))
    base = Identity("p", "oidc", amr=("pwd", "mfa", "hwk"), acrs=("c1", "c2"))
    assert conditions.failures(base, "", NOW, BERLIN) == ()
    no_key = Identity("p", "oidc", amr=("pwd", "mfa"), acrs=("c1",))
    assert conditions.failures(no_key, "", NOW, BERLIN) == ("amr",)
    no_context = Identity("p", "oidc", amr=("mfa", "hwk"))
    assert conditions.failures(no_context, "", NOW, BERLIN) == ("acrs",)
    assert conditions.failures(None, "", NOW, BERLIN) == ("amr", "acrs")
    assert conditions.needs_identity
    with pytest.raises(ValueError, match="public route cannot require"):
        Route("x", (), public=True, conditions=Conditions(acrs=("c1",)))
