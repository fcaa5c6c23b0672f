"""The ``sso-gateway`` command, driven in-process through ``gateway.cli.main``."""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from gateway import _secret_key
from gateway.cli import main
from gateway.core.model import Identity
from gateway.providers.local import add_user, list_users, load_users_file
from gateway.sessions.file_store import FileStore
from gateway.sessions.manager import SessionManager
from gateway.settings import load_settings

SHIPPED = Path(__file__).resolve().parents[2] / "policies"
COMMANDS = ("serve", "check", "explain", "users", "keys", "sessions", "demo")
USER_ACTIONS = ("add", "passwd", "remove", "disable", "enable", "list")
SESSION_ACTIONS = ("list", "revoke")
PASSWORD = "correct-horse-battery"
# cheap argon2id parameters for users the tests write directly (the CLI uses its own)
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


@dataclass
class Result:
    code: int
    out: str
    err: str


Runner = Callable[..., Result]


@dataclass
class Site:
    root: Path
    config: Path
    policies: Path
    users: Path
    audit: Path


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command reads the process environment: start every test without our variables."""
    for name in list(os.environ):
        if name.upper().startswith("SSO_GATEWAY"):
            monkeypatch.delenv(name)


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Runner:
    def invoke(*argv: str) -> Result:
        capsys.readouterr()
        code = main(list(argv))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return invoke


@pytest.fixture
def site(tmp_path: Path) -> Site:
    """A config file with everything it names inside tmp_path."""
    root = tmp_path / "site"
    root.mkdir()
    policies = root / "policies"
    shutil.copytree(SHIPPED, policies)
    users = root / "users.yaml"
    add_user(
        users,
        "alice",
        PASSWORD,
        name="Alice Operator",
        groups=["Intercom-Operators", "UC-Users"],
        hasher=FAST_HASHER,
    )
    audit = tmp_path / "logs" / "audit.log"
    config = root / "config.yaml"
    config.write_text(
        "site_name: Test site\n"
        "data_dir: var\n"
        "policies_dir: policies\n"
        "providers:\n  local:\n    users_file: users.yaml\n"
        "session:\n  store: file\n"
        f"audit:\n  destination: {audit}\n",
        encoding="utf-8",
    )
    return Site(root, config, policies, users, audit)


# -- check ---------------------------------------------------------------------------


def test_check_ok(run: Runner, site: Site) -> None:
    result = run("check", "--config", str(site.config))
    assert result.code == 0
    assert result.out.startswith("ok")
    assert str(site.config) in result.out
    assert result.err == ""


def test_config_option_before_or_after_the_command(run: Runner, site: Site) -> None:
    assert run("--config", str(site.config), "check").code == 0
    assert run("check", "--config", str(site.config)).code == 0
    assert "alice" in run("--config", str(site.config), "users", "list").out
    assert "alice" in run("users", "--config", str(site.config), "list").out
    assert "alice" in run("users", "list", "--config", str(site.config)).out


def test_config_from_the_environment(
    run,
    site: Site,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SSO_GATEWAY_CONFIG", str(site.config))
    result = run("check")
    assert result.code == 0
    assert str(site.config) in result.out


def break_policy_and_users(site: Site) -> None:
    (site.policies / "30-broken.yaml").write_text(
        "routes:\n"
        "  - name: broken\n"
        "    hosts: ['intercom.*']\n"
        "    path: no-leading-slash\n"
        "    allow: [ghost-tier]\n",
        encoding="utf-8",
    )
    site.users.write_text(
        "users:\n  mallory:\n    password_hash: '{SSHA}not-argon2'\n    colour: blue\n",
        encoding="utf-8",
    )


def test_keys_generate_writes_a_private_key_once(run: Runner, tmp_path: Path) -> None:
    path = tmp_path / "keys" / "jwt-next.json"
    made = run("keys", "generate", str(path))
    assert made.code == 0, made.err
    data = json.loads(path.read_text(encoding="utf-8"))
    assert (data["kty"], data["crv"]) == ("EC", "P-256") and "d" in data
    assert made.out.strip() == f"wrote a P-256 signing key to {path} (kid {data['kid']})"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    content = path.read_bytes()

    again = run("keys", "generate", str(path))
    assert again.code == 1
    assert "never overwritten" in again.err
    assert path.read_bytes() == content
    link = tmp_path / "dangling.json"
    link.symlink_to(tmp_path / "nowhere.json")
    assert run("keys", "generate", str(link)).code == 1  # not even through a dangling link
    assert not (tmp_path / "nowhere.json").exists()


def test_check_and_serve_name_a_bad_published_jwt_key(
    run: Runner, site: Site, tmp_path: Path
) -> None:
    nxt = site.root / "jwt-next.json"
    assert run("keys", "generate", str(nxt)).code == 0
    bad = site.root / "jwt-old.json"
    bad.write_text('{"kty": "RSA"}', encoding="utf-8")
    text = site.config.read_text(encoding="utf-8")
    site.config.write_text(
        text + "jwt:\n  published_key_files: [jwt-next.json, jwt-old.json, jwt-next.json]\n",
        encoding="utf-8",
    )
    result = run("check", "--config", str(site.config))
    assert result.code == 1
    assert "jwt.published_key_files[1]" in result.err and "not a P-256" in result.err
    assert "jwt.published_key_files[2]" in result.err and "already published" in result.err
    assert "jwt.published_key_files[0]" not in result.err
    assert "2 problem(s) found" in result.err
    served = run("--config", str(site.config), "serve")
    assert served.code == 1
    assert "jwt.published_key_files[1]" in served.err

    site.config.write_text(text + "jwt:\n  published_key_files: [jwt-next.json]\n")
    assert run("check", "--config", str(site.config)).code == 0


def test_check_warns_when_trusted_proxies_cover_a_network_the_policy_trusts(
    run: Runner, site: Site
) -> None:
    """Security review: with trusted_proxies 10.0.0.0/8, a client at 10.0.5.7
    sending X-Forwarded-For: 10.20.30.5 is taken for the security room."""
    assert "warning" not in run("check", "--config", str(site.config)).err
    text = site.config.read_text(encoding="utf-8")
    site.config.write_text(text + "network:\n  trusted_proxies: [10.0.0.0/8]\n")
    result = run("check", "--config", str(site.config))
    assert result.code == 0  # a warning, not an error: the site may mean it
    assert "warning: network.trusted_proxies entry 10.0.0.0/8 overlaps 10.20.30.0/24" in result.err
    assert "workstation 'security-room'" in result.err


def test_check_lists_every_policy_and_users_problem(run: Runner, site: Site) -> None:
    break_policy_and_users(site)
    result = run("check", "--config", str(site.config))
    assert result.code == 1
    assert result.out == ""
    policy_file = str(site.policies / "30-broken.yaml")
    users_file = str(site.users)
    assert f"{policy_file}: routes[0].path: " in result.err
    assert f"{policy_file}: routes[0].allow[0]: " in result.err
    assert "ghost-tier" in result.err
    assert f"{users_file}: users.mallory.password_hash: " in result.err
    assert f"{users_file}: users.mallory.colour: unknown key" in result.err
    errors = [line for line in result.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 4
    assert "4 problem(s) found" in result.err


def test_check_lists_every_config_problem(run: Runner, site: Site) -> None:
    site.config.write_text(
        site.config.read_text(encoding="utf-8") + "cookie:\n  secrets: [a]\nlisten:\n  port: 0\n",
        encoding="utf-8",
    )
    result = run("check", "--config", str(site.config))
    assert result.code == 1
    assert f"{site.config}: cookie.secrets: unknown key" in result.err
    assert f"{site.config}: listen.port: " in result.err
    assert "2 problem(s) found" in result.err


def test_check_lists_config_policy_and_users_problems_together(run: Runner, site: Site) -> None:
    break_policy_and_users(site)
    site.config.write_text(
        site.config.read_text(encoding="utf-8") + "cookie:\n  secrets: [a]\n", encoding="utf-8"
    )
    result = run("check", "--config", str(site.config))
    assert result.code == 1
    assert f"{site.config}: cookie.secrets: unknown key" in result.err
    assert str(site.policies / "30-broken.yaml") in result.err
    assert str(site.users) in result.err


def test_check_of_a_missing_config_file(run: Runner, tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    result = run("check", "--config", str(missing))
    assert result.code == 1
    assert str(missing) in result.err
    assert "cannot read" in result.err


# -- explain -------------------------------------------------------------------------


def explain(run: Runner, site: Site, *extra: str) -> Result:
    return run("explain", "--config", str(site.config), *extra)


def outcome_line(result: Result) -> str:
    (line,) = [x for x in result.out.splitlines() if x.startswith("outcome:")]
    return line


def test_explain_allows_an_operator_on_the_doors(run: Runner, site: Site) -> None:
    result = explain(
        run,
        site,
        "--user",
        "alice",
        "--groups",
        "Intercom-Operators",
        "--url",
        "https://intercom.site-a.example/doors/",
    )
    assert result.code == 0
    assert "ALLOW as tier operator" in outcome_line(result)
    assert "route:    intercom-doors" in result.out
    assert "tier:operator" in result.out


def test_explain_denies_an_operator_on_admin_with_reasons(run: Runner, site: Site) -> None:
    result = explain(
        run,
        site,
        "--user",
        "alice",
        "--groups",
        "Intercom-Operators",
        "--url",
        "https://intercom.site-a.example/admin/",
    )
    assert result.code == 0
    assert "DENY" in outcome_line(result)
    reasons = result.out.split("reasons:", 1)[1]
    assert "route:intercom-admin" in reasons
    assert "admin" in reasons


def test_explain_contractor_outside_the_window(run: Runner, site: Site) -> None:
    args = ("--user", "dave", "--groups", "Contractors")
    url = ("--url", "https://intercom.site-a.example/maintenance/")
    sunday = explain(run, site, *args, *url, "--at", "2026-03-01T12:00")  # Sunday
    assert sunday.code == 0
    assert "DENY" in outcome_line(sunday)
    assert "outside-window" in sunday.out

    monday = explain(run, site, *args, *url, "--at", "2026-03-02T12:00")
    assert "ALLOW as tier contractor" in outcome_line(monday)

    monday_night = explain(run, site, *args, *url, "--at", "2026-03-02T22:30:00+01:00")
    assert "DENY" in outcome_line(monday_night)
    assert "outside-window" in monday_night.out


def test_explain_old_login_on_admin_means_step_up(run: Runner, site: Site) -> None:
    args = ("--user", "bob", "--groups", "Intercom-Admins")
    url = ("--url", "https://intercom.site-a.example/admin/")
    fresh = explain(run, site, *args, *url, "--auth-age", "60")
    assert "ALLOW as tier admin" in outcome_line(fresh)

    stale = explain(run, site, *args, *url, "--auth-age", "7200")
    assert stale.code == 0
    line = outcome_line(stale)
    assert "LOGIN" in line
    assert "step-up" in line
    assert "max-auth-age" in stale.out


@pytest.mark.parametrize("path", ["/%2e%2e/admin", "/a%2Fb", "/admin;x=1/", "/%252e%252e/"])
def test_explain_refuses_ambiguous_paths(run: Runner, site: Site, path: str) -> None:
    result = explain(
        run,
        site,
        "--user",
        "bob",
        "--groups",
        "Intercom-Admins",
        "--url",
        f"https://intercom.site-a.example{path}",
    )
    assert result.code == 0
    assert result.out.startswith("decision: DENY (ambiguous path")
    assert "ALLOW" not in result.out


def test_explain_with_a_policy_folder_and_no_config(run: Runner, site: Site) -> None:
    result = run(
        "explain",
        "--policies",
        str(site.policies),
        "--user",
        "carol",
        "--groups",
        "UC-Supervisors",
        "--url",
        "https://pbx.example/reports/",
    )
    assert result.code == 0
    assert "ALLOW as tier supervisor" in outcome_line(result)


def test_explain_needs_an_absolute_url(run: Runner, site: Site) -> None:
    result = explain(run, site, "--user", "alice", "--url", "/doors/")
    assert result.code == 2
    assert "absolute" in result.err


def test_explain_with_a_broken_policy_folder(run: Runner, site: Site) -> None:
    (site.policies / "10-intercom.yaml").write_text("routes: [\n", encoding="utf-8")
    result = explain(run, site, "--user", "alice", "--url", "https://intercom.site-a.example/")
    assert result.code == 1
    assert "10-intercom.yaml" in result.err


# -- users ---------------------------------------------------------------------------


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    return tmp_path / "managed-users.yaml"  # not there yet: `users add` creates it


def test_users_lifecycle(
    run,
    users_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    uf = ("users", "--users-file", str(users_file))
    monkeypatch.setenv("SSO_GATEWAY_PASSWORD", PASSWORD)

    added = run(
        *uf,
        "add",
        "Eve",
        "--name",
        "Eve Example",
        "--email",
        "eve@example.test",
        "--groups",
        "Intercom-Operators, UC-Users",
        "--attr",
        "ipPhone=4711",
        "--attr",
        "department=Security",
    )
    assert added.code == 0, added.err
    assert "added Eve" in added.out
    assert stat.S_IMODE(users_file.stat().st_mode) == 0o600
    (entry,) = list_users(users_file)
    assert entry.username == "eve"
    assert entry.groups == ("Intercom-Operators", "UC-Users")
    assert dict(entry.attributes) == {"ipPhone": "4711", "department": "Security"}
    first_hash = load_users_file(users_file).users["eve"].password_hash
    assert first_hash.startswith("$argon2id$")
    assert PASSWORD not in users_file.read_text(encoding="utf-8")

    listed = run(*uf, "list")
    assert listed.code == 0
    assert listed.out == "eve\tEve Example\teve@example.test\tIntercom-Operators,UC-Users\n"

    new_password = "another-long-password"
    monkeypatch.setenv("SSO_GATEWAY_PASSWORD", new_password)
    changed = run(*uf, "passwd", "eve")
    assert changed.code == 0, changed.err
    second_hash = load_users_file(users_file).users["eve"].password_hash
    assert second_hash != first_hash
    assert PasswordHasher().verify(second_hash, new_password)

    assert run(*uf, "disable", "eve").code == 0
    assert run(*uf, "list").out.rstrip("\n").endswith("(disabled)")
    assert list_users(users_file)[0].disabled is True

    assert run(*uf, "enable", "EVE").code == 0
    assert "(disabled)" not in run(*uf, "list").out
    assert list_users(users_file)[0].disabled is False

    removed = run(*uf, "remove", "eve")
    assert removed.code == 0
    assert "removed eve" in removed.out
    assert list_users(users_file) == []
    assert run(*uf, "list").out == ""


def test_users_add_in_a_missing_folder(
    run: Runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSO_GATEWAY_PASSWORD", PASSWORD)
    target = tmp_path / "no-such-folder" / "users.yaml"
    result = run("users", "--users-file", str(target), "add", "eve")
    assert result.code in (0, 1)
    if result.code == 1:
        assert str(target.parent) in result.err


def test_users_file_defaults_to_the_config(
    run,
    site: Site,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SSO_GATEWAY_PASSWORD", PASSWORD)
    result = run("users", "--config", str(site.config), "add", "frank", "--groups", "Contractors")
    assert result.code == 0, result.err
    assert str(site.users) in result.out
    assert [u.username for u in list_users(site.users)] == ["alice", "frank"]


def test_users_errors(
    run,
    site: Site,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    uf = ("users", "--users-file", str(site.users))
    before = site.users.read_bytes()

    monkeypatch.setenv("SSO_GATEWAY_PASSWORD", PASSWORD)
    duplicate = run(*uf, "add", "ALICE")
    assert duplicate.code == 1
    assert "already exists" in duplicate.err
    assert duplicate.out == ""

    for action in ("passwd", "remove", "disable", "enable"):
        unknown = run(*uf, action, "nobody")
        assert unknown.code == 1, action
        assert "no user 'nobody'" in unknown.err, action

    bad_name = run(*uf, "add", "bad name!")
    assert bad_name.code == 1
    assert "invalid username" in bad_name.err

    bad_attr = run(*uf, "add", "gina", "--attr", "no-equals-sign")
    assert bad_attr.code == 1
    assert "KEY=VALUE" in bad_attr.err

    monkeypatch.setenv("SSO_GATEWAY_PASSWORD", "short")
    short = run(*uf, "add", "gina")
    assert short.code == 1
    assert "at least 8 characters" in short.err
    short_passwd = run(*uf, "passwd", "alice")
    assert short_passwd.code == 1
    assert "at least 8 characters" in short_passwd.err

    assert site.users.read_bytes() == before  # nothing changed by any failure


# -- sessions ------------------------------------------------------------------------


def open_manager(site: Site) -> SessionManager:
    """The session manager the CLI opens: same store folder, same secret key source."""
    settings = load_settings(site.config, environ={})
    data_dir = settings.resolve_path(settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    return SessionManager(FileStore(settings.sessions_dir), _secret_key(settings, data_dir))


def login(manager: SessionManager, user: str, groups: tuple[str, ...], tier: str) -> str:
    now = time.time()
    identity = Identity(subject=user, provider="local", groups=groups, auth_time=now)
    cookie, session = manager.create(
        identity, tier=tier, idle=600, absolute=3600, client_ip="10.20.30.5", now=now
    )
    assert manager.key_from_cookie(cookie) == session.key
    return cookie


def audit_records(site: Site) -> list[dict[str, object]]:
    if not site.audit.exists():
        return []
    return [json.loads(x) for x in site.audit.read_text(encoding="utf-8").splitlines()]


def test_sessions_list_and_revoke(run: Runner, site: Site) -> None:
    manager = open_manager(site)
    alice_cookies = [
        login(manager, "alice", ("Intercom-Operators",), "operator"),
        login(manager, "alice", ("Intercom-Operators",), "operator"),
    ]
    bob_cookie = login(manager, "bob", ("Intercom-Admins",), "admin")
    cfg = ("--config", str(site.config))

    listed = run("sessions", "list", *cfg)
    assert listed.code == 0
    rows = [line.split("\t") for line in listed.out.splitlines()]
    assert sorted(r[1] for r in rows) == ["alice", "alice", "bob"]
    assert "3 session(s)" in listed.err
    for row in rows:
        assert len(row[0]) == 12  # a short handle, never the cookie
        assert row[2] in ("operator", "admin")
        assert row[4] == "10.20.30.5"
    for cookie in [*alice_cookies, bob_cookie]:
        assert cookie not in listed.out

    only_alice = run("sessions", "list", "--user", "alice", *cfg)
    assert [line.split("\t")[1] for line in only_alice.out.splitlines()] == ["alice", "alice"]

    revoked = run("sessions", "revoke", "--user", "alice", *cfg)
    assert revoked.code == 0
    assert "revoked 2 session(s) of alice" in revoked.out

    after = run("sessions", "list", *cfg)
    assert [line.split("\t")[1] for line in after.out.splitlines()] == ["bob"]
    assert run("sessions", "list", "--user", "alice", *cfg).out == ""

    # the revoked cookies lead nowhere any more; bob's still does
    for cookie in alice_cookies:
        key = manager.key_from_cookie(cookie)
        assert key is not None
        assert manager.load(key, time.time()) is None
    bob_key = manager.key_from_cookie(bob_cookie)
    assert bob_key is not None
    assert manager.load(bob_key, time.time()) is not None

    (record,) = [r for r in audit_records(site) if r["event"] == "sessions_revoked"]
    assert record["user"] == "alice"
    assert record["count"] == 2
    assert record["by"] == "cli"
    short_ids = {row[0] for row in rows if row[1] == "alice"}
    assert isinstance(record["sessions"], list)
    assert set(record["sessions"]) == short_ids
    log_text = site.audit.read_text(encoding="utf-8")
    for cookie in alice_cookies:
        assert cookie not in log_text


def test_revoking_a_user_without_sessions(run: Runner, site: Site) -> None:
    result = run("sessions", "revoke", "--user", "nobody", "--config", str(site.config))
    assert result.code == 0
    assert "revoked 0 session(s) of nobody" in result.out
    (record,) = [r for r in audit_records(site) if r["event"] == "sessions_revoked"]
    assert record["count"] == 0


def test_revoking_one_session_by_its_id(run: Runner, site: Site) -> None:
    manager = open_manager(site)
    workstation = login(manager, "alice", ("Intercom-Operators",), "operator")
    laptop = login(manager, "alice", ("Intercom-Operators",), "operator")
    bob_cookie = login(manager, "bob", ("Intercom-Admins",), "admin")
    cfg = ("--config", str(site.config))
    key = manager.key_from_cookie(workstation)
    assert key is not None
    handle = key[:12]

    revoked = run("sessions", "revoke", "--id", handle.upper(), *cfg)  # as typed
    assert revoked.code == 0, revoked.err
    assert revoked.out.strip() == f"revoked session {handle} of alice"

    now = time.time()
    assert manager.load(key, now) is None
    for other in (laptop, bob_cookie):  # nobody else's session, not alice's other one
        other_key = manager.key_from_cookie(other)
        assert other_key is not None
        assert manager.load(other_key, now) is not None
    (record,) = [r for r in audit_records(site) if r["event"] == "sessions_revoked"]
    assert record == {**record, "user": "alice", "count": 1, "sessions": [handle], "by": "cli"}

    again = run("sessions", "revoke", "--id", handle, *cfg)
    assert again.code == 1
    assert f"no session has the id {handle}" in again.err
    assert len([r for r in audit_records(site) if r["event"] == "sessions_revoked"]) == 1


@pytest.mark.parametrize(
    "handle",
    [
        "",
        "abc",  # a prefix short enough to match by chance is never taken
        "0123456789a",
        "0123456789abc",
        "0123456789ag",
        "*",
        "../../../etc",
        "0123456789a\n",
    ],
)
def test_revoking_by_an_id_that_is_not_one_changes_nothing(
    run: Runner, site: Site, handle: str
) -> None:
    manager = open_manager(site)
    cookie = login(manager, "alice", ("Intercom-Operators",), "operator")
    result = run("sessions", "revoke", "--id", handle, "--config", str(site.config))
    assert result.code == 2
    assert "12 hexadecimal characters" in result.err
    key = manager.key_from_cookie(cookie)
    assert key is not None
    assert manager.load(key, time.time()) is not None
    assert not [r for r in audit_records(site) if r["event"] == "sessions_revoked"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ((), "one of the arguments --user --id is required"),
        (("--user", "alice", "--id", "0" * 12), "not allowed with"),
    ],
)
def test_revoke_wants_a_user_or_an_id_not_both(
    site: Site, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], message: str
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["sessions", "revoke", *argv, "--config", str(site.config)])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_sessions_with_a_store_outside_a_missing_data_dir(
    run: Runner, site: Site, tmp_path: Path
) -> None:
    site.config.write_text(
        site.config.read_text(encoding="utf-8").replace(
            "session:\n  store: file\n", f"session:\n  store: file\n  file_dir: {tmp_path}/s\n"
        ),
        encoding="utf-8",
    )
    assert not (site.root / "var").exists()
    result = run("sessions", "list", "--config", str(site.config))
    assert result.code == 0
    assert "0 session(s)" in result.err


# -- demo ----------------------------------------------------------------------------


def test_demo_writes_a_config_that_passes_check(
    run,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    demo_password = "demo-password-for-tests"
    monkeypatch.setenv("SSO_GATEWAY_DEMO_PASSWORD", demo_password)
    monkeypatch.setenv("SSO_GATEWAY_DEMO_PORT", "8181")
    demo_dir = tmp_path / "demo"

    result = run("demo", "--no-serve", "--dir", str(demo_dir), "--policies", str(SHIPPED))
    assert result.code == 0, result.err
    assert "http://127.0.0.1:8181/.sso/login" in result.out
    for user in ("alice", "bob", "carol", "dave"):
        (line,) = [x for x in result.out.splitlines() if x.split()[:1] == [user]]
        assert demo_password in line

    config = demo_dir / "config.yaml"
    assert config.is_file()
    assert stat.S_IMODE((demo_dir / "users.yaml").stat().st_mode) == 0o600
    groups = {u.username: u.groups for u in list_users(demo_dir / "users.yaml")}
    assert groups == {
        "alice": ("Intercom-Operators", "UC-Users"),
        "bob": ("Intercom-Admins", "UC-Admins"),
        "carol": ("UC-Supervisors", "UC-Users"),
        "dave": ("Contractors",),
    }
    settings = load_settings(config, environ={})
    assert settings.cookie.secure is False
    assert settings.listen.port == 8181
    (dashboard,) = settings.proxy.upstreams  # the demo dashboard, behind the reverse proxy
    assert dashboard.url.startswith("http://127.0.0.1:")

    checked = run("check", "--config", str(config))
    assert checked.code == 0, checked.err
    assert checked.out.startswith("ok")


def test_demo_needs_the_policy_folder(run: Runner, tmp_path: Path) -> None:
    result = run(
        "demo", "--no-serve", "--dir", str(tmp_path / "d"), "--policies", str(tmp_path / "none")
    )
    assert result.code == 1
    assert "not found" in result.err


# -- help ----------------------------------------------------------------------------


def help_of(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


def test_top_level_help_mentions_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_of(capsys)
    for command in COMMANDS:
        assert command in text
    assert "SSO_GATEWAY_CONFIG" in text


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(capsys: pytest.CaptureFixture[str], command: str) -> None:
    text = help_of(capsys, command)
    assert f"sso-gateway {command}" in text
    assert "--config" in text


def test_users_and_sessions_help_mention_their_actions(
    capsys: pytest.CaptureFixture[str],
) -> None:
    users = help_of(capsys, "users")
    for action in USER_ACTIONS:
        assert action in users
    sessions = help_of(capsys, "sessions")
    for action in SESSION_ACTIONS:
        assert action in sessions
    for action in USER_ACTIONS:
        assert f"sso-gateway users {action}" in help_of(capsys, "users", action)
    for action in SESSION_ACTIONS:
        assert f"sso-gateway sessions {action}" in help_of(capsys, "sessions", action)
    assert "generate" in help_of(capsys, "keys")
    assert "sso-gateway keys generate" in help_of(capsys, "keys", "generate")


def test_no_command_prints_help(run: Runner) -> None:
    result = run()
    assert result.code == 2
    for command in COMMANDS:
        assert command in result.out


def test_serve_refuses_the_memory_store_with_several_workers(run: Runner, site: Site) -> None:
    """Each worker would keep its own replay caches: an assertion or a nonce
    could be used once per worker."""
    text = site.config.read_text(encoding="utf-8")
    site.config.write_text(text.replace("session:\n  store: file\n", "session:\n  store: memory\n"))
    result = run("--config", str(site.config), "serve")
    assert result.code == 1
    assert "session.store" in result.err and "one worker" in result.err
    result = run("--config", str(site.config), "serve", "--workers", "3")
    assert result.code == 1


def test_serve_refuses_to_start_on_a_broken_policy(run: Runner, site: Site) -> None:
    (site.policies / "99-broken.yaml").write_text("routes: [", encoding="utf-8")
    result = run("--config", str(site.config), "serve")
    assert result.code == 1
    assert "99-broken.yaml" in result.err


def test_explain_with_amr_and_acrs(run: Runner, site: Site, tmp_path: Path) -> None:
    policies = tmp_path / "ctx-policies"
    policies.mkdir()
    (policies / "p.yaml").write_text(
        "tiers: {admin: {rank: 1, groups: [Admins]}}\n"
        "routes:\n"
        "  - {name: doors, hosts: [x.test], path: /, allow: [admin],"
        " conditions: {amr: [mfa], acrs: [c1]}}\n",
        encoding="utf-8",
    )
    base = ("--user", "a", "--groups", "Admins", "--url", "https://x.test/", "--policies")
    ok = explain(run, site, *base, str(policies), "--amr", "pwd,mfa", "--acrs", "c1")
    assert "ALLOW" in outcome_line(ok)
    no_ctx = explain(run, site, *base, str(policies), "--amr", "pwd,mfa")
    assert "DENY" in outcome_line(no_ctx)
    assert "condition-failed:acrs" in no_ctx.out
