"""Loading policies/*.yaml: the shipped example, and every broken-file problem at once."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core.errors import ConfigError, Problem
from gateway.core.model import Identity, Outcome, RequestInfo
from gateway.core.policy import PolicySet
from gateway.policy_loader import load_policies, validate_policies

SHIPPED = Path(__file__).resolve().parents[2] / "policies"

TIERS = """\
timezone: Europe/Berlin
tiers:
  admin:
    rank: 50
    groups: [UC-Admins]
  operator:
    rank: 30
    groups: [Intercom-Operators]
    idle: 600
"""

ROUTES = """\
routes:
  - name: console
    hosts: ["intercom.*"]
    path: /
    allow: [operator, admin]
"""


def write(directory: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    return directory


def problems_of(directory: Path) -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        load_policies(directory)
    assert validate_policies(directory) == info.value.problems
    return info.value.problems


def keyed(problems: list[Problem]) -> dict[tuple[str, str], str]:
    return {(Path(p.file).name, p.key_path): p.reason for p in problems}


# -- the shipped example -------------------------------------------------------------


def test_shipped_policies_are_valid() -> None:
    assert validate_policies(SHIPPED) == []
    policy = load_policies(SHIPPED)
    assert {t.name for t in policy.tiers} >= {
        "user",
        "operator",
        "supervisor",
        "admin",
        "international",
        "contractor",
    }
    assert [w.name for w in policy.workstations] == ["security-room"]


def _ask(
    policy: PolicySet,
    who: Identity | None,
    host: str,
    path: str,
    when: datetime,
    method: str = "GET",
    ip: str = "192.0.2.10",
) -> tuple[Outcome, str | None]:
    decision = policy.evaluate(who, RequestInfo(host, path, method, ip), when)
    return decision.outcome, decision.tier


def test_shipped_policies_behave() -> None:
    policy = load_policies(SHIPPED)
    wednesday = datetime(2026, 3, 4, 9, 0, tzinfo=UTC)
    saturday = datetime(2026, 3, 7, 9, 0, tzinfo=UTC)
    fresh = wednesday.timestamp() - 60
    bob = Identity("bob", "local", groups=("Intercom-Admins", "UC-Admins"), auth_time=fresh)
    alice = Identity("alice", "local", groups=("Intercom-Operators", "UC-Users"), auth_time=fresh)
    dave = Identity("dave", "local", groups=("Contractors",), auth_time=fresh)
    by_sid = Identity(
        "eve", "adfs", group_ids=("s-1-5-21-3623811015-3361044348-30300820-1013",), auth_time=fresh
    )
    intercom = "intercom.site-a.example"
    assert _ask(policy, bob, intercom, "/admin/", wednesday) == (Outcome.ALLOW, "admin")
    assert _ask(policy, by_sid, intercom, "/admin/", wednesday) == (Outcome.ALLOW, "admin")
    assert _ask(policy, alice, intercom, "/admin/", wednesday) == (Outcome.DENY, None)
    assert _ask(policy, alice, intercom, "/doors/", wednesday) == (Outcome.ALLOW, "operator")
    assert _ask(policy, None, intercom, "/health", wednesday) == (Outcome.PUBLIC, None)
    assert _ask(policy, dave, intercom, "/maintenance/x", wednesday) == (
        Outcome.ALLOW,
        "contractor",
    )
    assert _ask(policy, dave, intercom, "/maintenance/x", saturday) == (Outcome.DENY, None)
    assert _ask(policy, dave, intercom, "/doors/", wednesday) == (Outcome.DENY, None)
    events = policy.evaluate(
        alice, RequestInfo(intercom, "/api/events", "GET", "10.20.30.5"), wednesday
    )
    assert events.allowed and events.passive
    # PBX admin needs MFA
    assert _ask(policy, bob, "pbx.example", "/admin/", wednesday) == (Outcome.DENY, None)
    # the demo host lets any tier in
    for who in (bob, alice, dave):
        outcome, _ = _ask(policy, who, "127.0.0.1:8080", "/", wednesday)
        assert outcome is Outcome.ALLOW
    limits = policy.session_limits(alice, "10.20.30.5", 900, 28800)
    assert (limits.idle, limits.absolute) == (300, 3600)


# -- broken files ------------------------------------------------------------------


def test_every_problem_reported_at_once(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "00-tiers.yaml": TIERS,
            "05-more-tiers.yaml": "tiers:\n  admin:\n    rank: 1\n    groups: [Other]\n",
            "10-syntax.yaml": "routes:\n  - name: x\n    path: [unclosed\n",
            "20-routes.yaml": """\
routes:
  - name: console
    allow: [operator]
    colour: blue
  - name: doors
    path: /doors/
    allow: [operator, janitor]
workstations:
  - name: room
    networks: [10.20.30.0/33]
    idle: 300
""",
        },
    )
    found = keyed(problems_of(tmp_path))
    assert found[("05-more-tiers.yaml", "tiers.admin")].startswith(
        "tier 'admin' is already defined"
    )
    assert "00-tiers.yaml" in found[("05-more-tiers.yaml", "tiers.admin")]
    syntax = found[("10-syntax.yaml", "")]
    assert syntax.startswith("YAML syntax error at line 4")
    assert found[("20-routes.yaml", "routes[0].colour")] == "unknown key (route 'console')"
    assert found[("20-routes.yaml", "workstations[0].networks[0]")].startswith(
        "not a valid network '10.20.30.0/33'"
    )
    # an unknown tier is reported even while another file of the same set is broken
    assert found == {**found, ("20-routes.yaml", "routes[1].allow[1]"): "unknown tier 'janitor'"}


def test_unknown_tier_in_route(tmp_path: Path) -> None:
    write(tmp_path, {"a.yaml": TIERS, "b.yaml": ROUTES.replace("operator, admin", "admin, boss")})
    problems = problems_of(tmp_path)
    assert [(Path(p.file).name, p.key_path, p.reason) for p in problems] == [
        ("b.yaml", "routes[0].allow[1]", "unknown tier 'boss'")
    ]
    assert str(problems[0]).endswith("b.yaml: routes[0].allow[1]: unknown tier 'boss'")


def test_bad_cidr_in_conditions(tmp_path: Path) -> None:
    bad = TIERS.replace("    idle: 600\n", "    conditions:\n      networks: [10.0.0.1/8, x]\n")
    write(tmp_path, {"a.yaml": bad + ROUTES})
    found = keyed(problems_of(tmp_path))
    assert set(found) == {
        ("a.yaml", "tiers.operator.conditions.networks[0]"),
        ("a.yaml", "tiers.operator.conditions.networks[1]"),
    }
    assert "host bits set" in found[("a.yaml", "tiers.operator.conditions.networks[0]")]


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    text = TIERS + ROUTES + "  - name: bad: colon\n    allow: [admin]\n"
    write(tmp_path, {"a.yaml": text})
    (problem,) = problems_of(tmp_path)
    assert problem.key_path == ""
    line = len((TIERS + ROUTES).splitlines()) + 1
    assert problem.reason.startswith(f"YAML syntax error at line {line}, column")
    assert "mapping values are not allowed" in problem.reason


def test_duplicate_yaml_key(tmp_path: Path) -> None:
    doubled = TIERS + "  admin:\n    rank: 99\n    groups: [Everyone]\n" + ROUTES
    write(tmp_path, {"a.yaml": doubled})
    (problem,) = problems_of(tmp_path)
    assert "duplicate key 'admin'" in problem.reason and "line 10" in problem.reason


def test_duplicate_tier_across_files(tmp_path: Path) -> None:
    write(
        tmp_path,
        {"a.yaml": TIERS + ROUTES, "b.yml": "tiers:\n  operator:\n    rank: 1\n    groups: [X]\n"},
    )
    assert keyed(problems_of(tmp_path)) == {
        ("b.yml", "tiers.operator"): f"tier 'operator' is already defined in {tmp_path / 'a.yaml'}"
    }


@pytest.mark.parametrize(
    ("route_yaml", "key", "needle"),
    [
        ("path: /a\n    glob: /b/*", "routes[0].glob", "either path or glob"),
        ("path: admin", "routes[0].path", "must start with '/'"),
        ("path: /admin/*", "routes[0].path", "use glob"),
        ("glob: /api/***", "routes[0].glob", "'***'"),
        ("path: /a//b", "routes[0].path", "'//'"),
        ("hosts: [intercom/x]", "routes[0].hosts[0]", "not a host glob"),
        ("methods: [GET, 'NO PE']", "routes[0].methods[1]", "not an HTTP method"),
        ("public: true\n    allow: [admin]", "routes[0].allow", "public route needs no tiers"),
        ("allow: ['*', admin]", "routes[0].allow", "stand alone"),
        ("allow: []", "routes[0].allow", "or set public"),
        ("public: true\n    conditions: {mfa: true}", "routes[0].conditions", "public route"),
        ("public: true\n    conditions: {acrs: [c1]}", "routes[0].conditions", "public route"),
        ("conditions: {amr: ['']}", "routes[0].conditions.amr[0]", "at least 1"),
        ("conditions: {acrs: c1}", "routes[0].conditions.acrs", "valid list"),
        ("conditions: {max_auth_age: 0}", "routes[0].conditions.max_auth_age", "greater than 0"),
        ("conditions: {mfa: 'yes'}", "routes[0].conditions.mfa", "valid boolean"),
        ("conditions: {valid_until: soon}", "routes[0].conditions.valid_until", "valid_until must"),
        ("conditions: {networks: []}", "routes[0].conditions.networks", "at least 1"),
        ("name: 'bad name'", "routes[0]", "route name"),
        ("name: 7", "routes[0].name", "valid string"),
        (
            "conditions:\n      windows: [{days: [mon], start: '07:00', end: 18:00}]",
            "routes[0].conditions.windows[0].end",
            "write times in quotes",
        ),
        (
            "conditions:\n      windows: [{days: [someday], start: '07:00', end: '18:00'}]",
            "routes[0].conditions.windows[0].days[0]",
            "unknown day",
        ),
        (
            "conditions:\n      windows: [{start: '07:00', end: '07:00'}]",
            "routes[0].conditions.windows[0]",
            "equal",
        ),
        (
            "conditions:\n      windows: [{start: '7:00', end: '24:01'}]",
            "routes[0].conditions.windows[0].end",
            "not a time of day",
        ),
    ],
)
def test_route_problems(tmp_path: Path, route_yaml: str, key: str, needle: str) -> None:
    fields = {"name": "console", "allow": "[admin]"}
    for line in route_yaml.split("\n    "):
        fields.pop(line.split(":", 1)[0], None)
    body = "".join(f"    {k}: {v}\n" for k, v in fields.items())
    route = "routes:\n  - " + (body + "    " + route_yaml + "\n").lstrip()
    write(tmp_path, {"a.yaml": TIERS + route})
    found = keyed(problems_of(tmp_path))
    assert ("a.yaml", key) in found, found
    assert needle in found[("a.yaml", key)]


def test_tier_problems(tmp_path: Path) -> None:
    text = """\
tiers:
  "bad tier":
    rank: 1
    groups: [A]
  norank:
    groups: [A]
  nogroups:
    rank: 1
    groups: []
  flagrank:
    rank: true
    groups: ['  ']
"""
    write(tmp_path, {"a.yaml": text + ROUTES.replace("operator, admin", "norank")})
    found = keyed(problems_of(tmp_path))
    assert found[("a.yaml", "tiers.norank.rank")] == "required key is missing"
    assert ("a.yaml", "tiers.nogroups.groups") in found
    assert ("a.yaml", "tiers.flagrank.rank") in found
    assert found[("a.yaml", "tiers.flagrank.groups[0]")] == "group identifier is empty"
    assert "tier name" in found[("a.yaml", "tiers.bad tier")]


def test_directory_problems(tmp_path: Path) -> None:
    assert [p.reason for p in problems_of(tmp_path)] == ["no policy files (*.yaml, *.yml)"]
    assert [p.reason for p in problems_of(tmp_path / "missing")] == ["policy directory not found"]
    write(tmp_path, {"notes.txt": "hello", ".#a.yaml": "junk: ["})
    assert [p.reason for p in problems_of(tmp_path)] == ["no policy files (*.yaml, *.yml)"]


def test_file_level_problems(tmp_path: Path) -> None:
    write(tmp_path, {"a.yaml": "# nothing yet\n", "b.yaml": "- a list\n", "c.yaml": TIERS + ROUTES})
    (tmp_path / "d.yaml").write_bytes(b"tiers: \xff\n")
    found = keyed(problems_of(tmp_path))
    assert found[("a.yaml", "")] == "empty policy file"
    assert found[("b.yaml", "")] == "the top level must be a mapping of keys"
    assert found[("d.yaml", "")].startswith("cannot read file")


def test_set_level_problems(tmp_path: Path) -> None:
    write(tmp_path, {"a.yaml": TIERS})
    assert keyed(problems_of(tmp_path)) == {
        (tmp_path.name, "routes"): "no routes defined in any file"
    }


def test_timezone_problems(tmp_path: Path) -> None:
    write(tmp_path, {"a.yaml": TIERS + ROUTES, "b.yaml": "timezone: Mars/Olympus\n"})
    found = keyed(problems_of(tmp_path))
    assert "contradicts 'Europe/Berlin'" in found[("b.yaml", "timezone")]
    write(tmp_path, {"b.yaml": "timezone: Europe/Berlin\n"})
    assert load_policies(tmp_path).timezone.tzname(datetime(2026, 7, 1)) == "CEST"
    write(
        tmp_path,
        {
            "a.yaml": TIERS.replace("Europe/Berlin", "Mars/Olympus") + ROUTES,
            "b.yaml": "timezone: Mars/Olympus\n",
        },
    )
    assert keyed(problems_of(tmp_path)) == {("a.yaml", "timezone"): "unknown 'Mars/Olympus'"}


def test_duplicate_route_and_workstation_names(tmp_path: Path) -> None:
    room = "workstations:\n  - {name: room, networks: [10.0.0.0/8], idle: 60}\n"
    write(tmp_path, {"a.yaml": TIERS + ROUTES + room, "b.yaml": ROUTES + room})
    found = keyed(problems_of(tmp_path))
    assert set(found) == {("b.yaml", "routes[0].name"), ("b.yaml", "workstations[0].name")}


def test_valid_until_forms(tmp_path: Path) -> None:
    contractor = """\
  contractor:
    rank: 5
    groups: [Contractors]
    conditions:
      valid_until: {value}
"""
    expected = {
        "2026-12-31": datetime(2026, 12, 31, 22, 59, 59, 999999, tzinfo=UTC),
        "'2026-12-31'": datetime(2026, 12, 31, 22, 59, 59, 999999, tzinfo=UTC),
        "2026-12-31 18:00:00": datetime(2026, 12, 31, 17, 0, tzinfo=UTC),
        "'2026-12-31T18:00'": datetime(2026, 12, 31, 17, 0, tzinfo=UTC),
        "2026-12-31T18:00:00+00:00": datetime(2026, 12, 31, 18, 0, tzinfo=UTC),
    }
    for value, instant in expected.items():
        write(tmp_path, {"a.yaml": TIERS + contractor.replace("{value}", value) + ROUTES})
        tier = load_policies(tmp_path).tier("contractor")
        assert tier is not None and tier.conditions.valid_until == instant, value


def test_failed_load_leaves_previous_policy_usable(tmp_path: Path) -> None:
    write(tmp_path, {"a.yaml": TIERS + ROUTES})
    before = load_policies(tmp_path)
    write(tmp_path, {"a.yaml": TIERS + ROUTES + "surprise: 1\n"})
    with pytest.raises(ConfigError):
        load_policies(tmp_path)
    who = Identity("a", "local", groups=("UC-Admins",))
    now = datetime(2026, 3, 4, 9, 0, tzinfo=UTC)
    assert before.evaluate(who, RequestInfo("intercom.x", "/", "GET", "192.0.2.1"), now).allowed


_yaml_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.sampled_from(["admin", "/", "/admin/", "*", "10.0.0.0/8", "07:00", "mon", "UC-Admins"]),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "tiers",
                    "routes",
                    "workstations",
                    "timezone",
                    "admin",
                    "rank",
                    "groups",
                    "name",
                    "path",
                    "glob",
                    "allow",
                    "public",
                    "conditions",
                    "networks",
                    "windows",
                    "days",
                    "start",
                    "end",
                    "idle",
                    "absolute",
                    "hosts",
                    "methods",
                    "valid_until",
                ]
            ),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["tiers", "routes", "workstations", "timezone"]), _yaml_values, max_size=4
    )
)
def test_loader_only_raises_config_error(document: dict[str, object]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "p.yaml").write_text(yaml.safe_dump(document), encoding="utf-8")
        try:
            load_policies(Path(tmp))
        except ConfigError as exc:
            assert exc.problems
