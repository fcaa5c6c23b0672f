"""Local users provider: logins, users-file validation, reload, management."""

from __future__ import annotations

import logging
import os
import stat
import textwrap
from pathlib import Path

import pytest
from argon2 import PasswordHasher, Type, extract_parameters

from gateway.core.errors import AuthenticationFailed, ConfigError, GatewayError
from gateway.core.model import Identity
from gateway.providers.local import (
    MAX_PASSWORD_BYTES,
    DuplicateUser,
    InvalidUsername,
    LocalUsersProvider,
    PasswordPolicyError,
    UnknownUser,
    UserEntry,
    add_user,
    hash_password,
    list_users,
    load_users_file,
    remove_user,
    set_disabled,
    set_password,
    validate_users_file,
)

PASSWORD = "correct horse battery"
NOW = 1_700_000_000.0


class CountingHasher(PasswordHasher):
    """A real (cheap) argon2id hasher that records every verification."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self.verified: list[str] = []

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:  # type: ignore[override]
        self.verified.append(hash if isinstance(hash, str) else hash.decode())
        return super().verify(hash, password)


@pytest.fixture
def hasher() -> CountingHasher:
    return CountingHasher()


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.fixture
def users_file(tmp_path: Path, hasher: CountingHasher) -> Path:
    good = hasher.hash(PASSWORD)
    return write(
        tmp_path / "users.yaml",
        f"""\
        users:
          alice:
            name: Alice Example
            email: alice@example.test
            password_hash: {good}
            groups: [Intercom-Operators, UC-Users]
            attributes: {{ipPhone: "4711", department: Security}}
            disabled: false
          Carol.Admin@site:
            password_hash: {good}
          bob:
            name: Bob Disabled
            password_hash: {good}
            disabled: true
        """,
    )


@pytest.fixture
def provider(users_file: Path, hasher: CountingHasher) -> LocalUsersProvider:
    p = LocalUsersProvider(users_file, hasher=hasher)
    hasher.verified.clear()  # ignore anything done while loading
    return p


def failure_reason(provider: LocalUsersProvider, username: str, password: str) -> str:
    with pytest.raises(AuthenticationFailed) as info:
        provider.authenticate(username, password, now=NOW)
    return info.value.reason


# -- logins -------------------------------------------------------------------


def test_good_login_returns_identity(provider: LocalUsersProvider, hasher: CountingHasher) -> None:
    identity = provider.authenticate("alice", PASSWORD, now=NOW)
    assert identity == Identity(
        subject="alice",
        provider="local",
        name="Alice Example",
        email="alice@example.test",
        groups=("Intercom-Operators", "UC-Users"),
        auth_time=NOW,
        mfa=False,
        attributes={"ipPhone": "4711", "department": "Security"},
    )
    assert len(hasher.verified) == 1


def test_minimal_user_gets_empty_defaults(provider: LocalUsersProvider) -> None:
    identity = provider.authenticate("carol.admin@site", PASSWORD, now=NOW)
    assert identity.subject == "carol.admin@site"
    assert (identity.name, identity.email, identity.groups) == ("", "", ())
    assert dict(identity.attributes) == {}


def test_username_lookup_is_case_insensitive(provider: LocalUsersProvider) -> None:
    assert provider.authenticate("ALICE", PASSWORD, now=NOW).subject == "alice"
    assert provider.authenticate("Alice", PASSWORD, now=NOW).subject == "alice"
    assert provider.authenticate("CAROL.ADMIN@SITE", PASSWORD, now=NOW).subject == (
        "carol.admin@site"
    )


def test_wrong_password_costs_one_verification(
    provider: LocalUsersProvider, hasher: CountingHasher, users_file: Path
) -> None:
    assert failure_reason(provider, "alice", "not the password") == "bad-password"
    stored = load_users_file(users_file).users["alice"].password_hash
    assert hasher.verified == [stored]


def test_unknown_user_costs_one_verification_with_same_parameters(
    provider: LocalUsersProvider, hasher: CountingHasher, users_file: Path
) -> None:
    assert failure_reason(provider, "mallory", PASSWORD) == "unknown-user"
    assert len(hasher.verified) == 1
    dummy = hasher.verified[0]
    stored = load_users_file(users_file).users["alice"].password_hash
    assert dummy != stored
    assert extract_parameters(dummy) == extract_parameters(stored)
    assert extract_parameters(dummy).type is Type.ID


def test_malformed_username_is_treated_as_unknown(
    provider: LocalUsersProvider, hasher: CountingHasher
) -> None:
    assert failure_reason(provider, "a" * 65, PASSWORD) == "unknown-user"
    assert failure_reason(provider, "alice\n", PASSWORD) == "unknown-user"
    assert failure_reason(provider, "", PASSWORD) == "unknown-user"
    assert len(hasher.verified) == 3


def test_non_ascii_lookalike_does_not_match(tmp_path: Path, hasher: CountingHasher) -> None:
    path = write(
        tmp_path / "users.yaml", f"users:\n  kim:\n    password_hash: {hasher.hash(PASSWORD)}\n"
    )
    provider = LocalUsersProvider(path, hasher=hasher)
    assert provider.authenticate("KIM", PASSWORD, now=NOW).subject == "kim"
    # "\u212a".lower() == "k" (KELVIN SIGN): not a valid username, so not kim
    assert failure_reason(provider, "\u212aim", PASSWORD) == "unknown-user"


def test_unencodable_password_is_just_wrong(
    provider: LocalUsersProvider, hasher: CountingHasher
) -> None:
    assert failure_reason(provider, "alice", "\ud800 lone surrogate") == "bad-password"
    assert len(hasher.verified) == 1


def test_disabled_user_is_refused_even_with_right_password(
    provider: LocalUsersProvider, hasher: CountingHasher, users_file: Path
) -> None:
    assert failure_reason(provider, "bob", PASSWORD) == "disabled"
    assert failure_reason(provider, "bob", "wrong password") == "disabled"
    stored = load_users_file(users_file).users["bob"].password_hash
    assert len(hasher.verified) == 2
    assert stored not in hasher.verified  # the dummy hash, not bob's


def test_empty_password_is_refused_before_hashing(
    provider: LocalUsersProvider, hasher: CountingHasher
) -> None:
    assert failure_reason(provider, "alice", "") == "empty-password"
    assert failure_reason(provider, "nobody", "") == "empty-password"
    assert hasher.verified == []


def test_very_long_password_is_refused_after_dummy_verification(
    provider: LocalUsersProvider, hasher: CountingHasher, users_file: Path
) -> None:
    too_long = PASSWORD + "x" * MAX_PASSWORD_BYTES
    assert failure_reason(provider, "alice", too_long) == "bad-password"
    assert failure_reason(provider, "nobody", too_long) == "bad-password"
    # multi-byte characters count in bytes, not characters
    assert failure_reason(provider, "alice", "é" * (MAX_PASSWORD_BYTES // 2 + 1)) == (
        "bad-password"
    )
    stored = load_users_file(users_file).users["alice"].password_hash
    assert len(hasher.verified) == 3
    assert stored not in hasher.verified


def test_password_at_the_byte_limit_is_checked(tmp_path: Path, hasher: CountingHasher) -> None:
    longest = "p" * MAX_PASSWORD_BYTES
    path = write(
        tmp_path / "users.yaml",
        f"users:\n  dave:\n    password_hash: {hasher.hash(longest)}\n",
    )
    provider = LocalUsersProvider(path, hasher=hasher)
    assert provider.authenticate("dave", longest, now=NOW).subject == "dave"


def test_same_message_for_every_failure(provider: LocalUsersProvider) -> None:
    # Only `reason` differs; nothing else on the exception tells the cases apart.
    errors = []
    for username, password in [("alice", "wrong pw"), ("nobody", PASSWORD), ("bob", PASSWORD)]:
        with pytest.raises(AuthenticationFailed) as info:
            provider.authenticate(username, password, now=NOW)
        errors.append(info.value)
    assert {type(e) for e in errors} == {AuthenticationFailed}


def test_provider_refuses_non_argon2id_hasher(users_file: Path) -> None:
    with pytest.raises(ValueError):
        LocalUsersProvider(
            users_file,
            hasher=PasswordHasher(time_cost=1, memory_cost=8, parallelism=1, type=Type.I),
        )


# -- broken users files ---------------------------------------------------------


def problems_of(path: Path) -> list[tuple[str, str, str]]:
    with pytest.raises(ConfigError) as info:
        load_users_file(path)
    return [(p.file, p.key_path, p.reason) for p in info.value.problems]


def test_every_problem_is_reported_at_once(tmp_path: Path, hasher: CountingHasher) -> None:
    good = hasher.hash(PASSWORD)
    path = write(
        tmp_path / "users.yaml",
        f"""\
        users:
          alice:
            password_hash: {good}
            shell: /bin/sh
          bcrypt-user:
            password_hash: $2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW
          "bad name":
            password_hash: {good}
          argon2i-user:
            password_hash: $argon2i$v=19$m=8,t=1,p=1$c29tZXNhbHQ$Y2hlY2tzdW0
        version: 2
        """,
    )
    problems = problems_of(path)
    by_key = {key: reason for _, key, reason in problems}
    assert all(file == str(path) for file, _, _ in problems)
    assert by_key["users.alice.shell"] == "unknown key"
    assert "argon2id" in by_key["users.bcrypt-user.password_hash"]
    assert "'2b'" in by_key["users.bcrypt-user.password_hash"]
    assert "argon2id" in by_key["users.argon2i-user.password_hash"]
    assert "invalid username" in by_key["users.bad name"]
    assert by_key["version"] == "unknown key"
    assert len(problems) == 5
    # a hash never ends up in a message
    assert all("R9h/cIPz0gi" not in reason for _, _, reason in problems)


def test_validate_users_file_returns_problems(tmp_path: Path, users_file: Path) -> None:
    assert validate_users_file(users_file) == []
    bad = write(tmp_path / "bad.yaml", "users:\n  alice:\n    password_hash: x\n    x: 1\n")
    assert [p.key_path for p in validate_users_file(bad)] == [
        "users.alice.password_hash",
        "users.alice.x",
    ]
    [missing] = validate_users_file(tmp_path / "missing.yaml")
    assert missing.file == str(tmp_path / "missing.yaml")


def test_yaml_syntax_error_is_reported_with_position(tmp_path: Path) -> None:
    path = write(tmp_path / "users.yaml", "users:\n  alice: {password_hash: [unclosed\n")
    [(file, key, reason)] = problems_of(path)
    assert file == str(path)
    assert key.startswith("line ")
    assert reason.startswith("YAML syntax error")


def test_error_message_names_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path / "users.yaml", "users:\n  alice:\n    password_hash: plain\n")
    with pytest.raises(ConfigError) as info:
        load_users_file(path)
    assert f"{path}: users.alice.password_hash: only argon2id" in str(info.value)


@pytest.mark.parametrize(
    ("text", "key", "reason_part"),
    [
        ("", "", "empty"),
        ("- alice\n", "", "mapping"),
        ("other: 1\n", "users", "missing"),
        ("users:\n  alice: {}\n", "users.alice.password_hash", "missing"),
        ("users:\n  4711:\n    password_hash: x\n", "users.4711", "quote"),
        ("users:\n  alice:\n    password_hash: $argon2id$garbage\n", "", "malformed"),
        (
            "users:\n  alice:\n    password_hash: $argon2id$x\n    disabled: 'no'\n",
            "users.alice.disabled",
            "true or false",
        ),
        (
            "users:\n  alice:\n    password_hash: $argon2id$x\n    groups: Ops\n",
            "users.alice.groups",
            "must be a list",
        ),
        (
            "users:\n  alice:\n    password_hash: $argon2id$x\n    attributes: {ipPhone: 4711}\n",
            "users.alice.attributes.ipPhone",
            "string",
        ),
        (
            'users:\n  alice:\n    password_hash: $argon2id$x\n    name: "A\\r\\nX-Evil: 1"\n',
            "users.alice.name",
            "control",
        ),
    ],
)
def test_single_problems(tmp_path: Path, text: str, key: str, reason_part: str) -> None:
    path = write(tmp_path / "users.yaml", text)
    problems = problems_of(path)
    assert any(
        (not key or k == key) and reason_part in reason.lower() for _, k, reason in problems
    ), problems


def test_duplicate_and_case_colliding_usernames(tmp_path: Path, hasher: CountingHasher) -> None:
    good = hasher.hash(PASSWORD)
    path = write(
        tmp_path / "users.yaml",
        f"""\
        users:
          alice:
            password_hash: {good}
          Alice:
            password_hash: {good}
          bob:
            password_hash: {good}
          bob:
            password_hash: {good}
        """,
    )
    keys = {key: reason for _, key, reason in problems_of(path)}
    assert "case-insensitive" in keys["users.Alice"]
    assert "twice" in keys["users.bob"]


def test_empty_users_mapping_is_valid(tmp_path: Path) -> None:
    assert load_users_file(write(tmp_path / "u.yaml", "users: {}\n")).users == {}
    assert load_users_file(write(tmp_path / "v.yaml", "users:\n")).users == {}


def test_missing_file_is_a_config_error(tmp_path: Path, hasher: CountingHasher) -> None:
    with pytest.raises(ConfigError) as info:
        LocalUsersProvider(tmp_path / "nope.yaml", hasher=hasher)
    assert info.value.problems[0].file == str(tmp_path / "nope.yaml")


def test_broken_file_at_startup_fails(tmp_path: Path, hasher: CountingHasher) -> None:
    path = write(tmp_path / "users.yaml", "users:\n  alice:\n    password_hash: nope\n")
    with pytest.raises(ConfigError):
        LocalUsersProvider(path, hasher=hasher)


# -- reload -------------------------------------------------------------------------


def bump_mtime(path: Path, seconds: int) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))


def test_reload_without_change_does_nothing(provider: LocalUsersProvider) -> None:
    assert provider.reload() is False


def test_reload_keeps_old_users_on_broken_file(
    provider: LocalUsersProvider,
    users_file: Path,
    hasher: CountingHasher,
    caplog: pytest.LogCaptureFixture,
) -> None:
    good_text = users_file.read_text()
    write(users_file, "users:\n  alice: [broken\n")
    bump_mtime(users_file, 5)
    with caplog.at_level(logging.ERROR, logger="gateway.providers.local"):
        assert provider.reload() is False
    assert "invalid" in caplog.text
    assert provider.authenticate("alice", PASSWORD, now=NOW).subject == "alice"

    # the same broken version is not re-parsed (or re-logged) on every call
    caplog.clear()
    assert provider.reload() is False
    assert caplog.text == ""

    # a fixed file is picked up
    new_hash = hasher.hash("another password")
    write(users_file, good_text + f"  erin:\n    password_hash: {new_hash}\n")
    bump_mtime(users_file, 10)
    assert provider.reload() is True
    assert provider.authenticate("erin", "another password", now=NOW).subject == "erin"


def test_reload_keeps_old_users_when_file_disappears(
    provider: LocalUsersProvider, users_file: Path
) -> None:
    text = users_file.read_text()
    users_file.unlink()
    assert provider.reload() is False
    assert provider.reload() is False
    assert provider.authenticate("alice", PASSWORD, now=NOW).subject == "alice"
    users_file.write_text(text)
    assert provider.reload() is True


def test_reload_sees_removed_user(
    provider: LocalUsersProvider, users_file: Path, hasher: CountingHasher
) -> None:
    remove_user(users_file, "alice")
    bump_mtime(users_file, 5)
    assert provider.reload() is True
    assert failure_reason(provider, "alice", PASSWORD) == "unknown-user"


# -- management ---------------------------------------------------------------------


def test_management_round_trip(tmp_path: Path, hasher: CountingHasher) -> None:
    path = tmp_path / "etc" / "users.yaml"
    path.parent.mkdir()
    assert list_users(path) == []

    entry = add_user(
        path,
        "Alice",
        "first password",
        name="Alice Example",
        email="alice@example.test",
        groups=["Intercom-Operators"],
        attributes={"ipPhone": "4711"},
        hasher=hasher,
    )
    assert entry == UserEntry(
        username="alice",
        name="Alice Example",
        email="alice@example.test",
        groups=("Intercom-Operators",),
        attributes={"ipPhone": "4711"},
    )
    add_user(path, "4711", "door password", hasher=hasher)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [u.username for u in list_users(path)] == ["4711", "alice"]
    assert "first password" not in path.read_text()

    provider = LocalUsersProvider(path, hasher=hasher)
    assert provider.authenticate("alice", "first password", now=NOW).groups == (
        "Intercom-Operators",
    )
    assert provider.authenticate("4711", "door password", now=NOW).subject == "4711"

    set_password(path, "ALICE", "second password", hasher=hasher)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    bump_mtime(path, 5)
    assert provider.reload() is True
    assert failure_reason(provider, "alice", "first password") == "bad-password"
    assert provider.authenticate("alice", "second password", now=NOW).name == "Alice Example"

    set_disabled(path, "alice", True)
    assert [u.disabled for u in list_users(path)] == [False, True]
    bump_mtime(path, 10)
    provider.reload()
    assert failure_reason(provider, "alice", "second password") == "disabled"

    set_disabled(path, "alice", False)
    assert [u.disabled for u in list_users(path)] == [False, False]

    remove_user(path, "alice")
    assert [u.username for u in list_users(path)] == ["4711"]
    remove_user(path, "4711")
    assert list_users(path) == []
    assert load_users_file(path).users == {}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # no temporary files left behind
    assert sorted(p.name for p in path.parent.iterdir()) == ["users.yaml", "users.yaml.lock"]


def test_management_errors(tmp_path: Path, hasher: CountingHasher) -> None:
    path = tmp_path / "users.yaml"
    add_user(path, "alice", "long enough", hasher=hasher)
    with pytest.raises(DuplicateUser):
        add_user(path, "ALICE", "long enough", hasher=hasher)
    with pytest.raises(UnknownUser):
        set_password(path, "nobody", "long enough", hasher=hasher)
    with pytest.raises(UnknownUser):
        set_disabled(path, "nobody", True)
    with pytest.raises(UnknownUser):
        remove_user(path, "nobody")
    for bad in ["", "a b", "x" * 65, "alice/../x", "ümlaut"]:
        with pytest.raises(InvalidUsername):
            add_user(path, bad, "long enough", hasher=hasher)
    with pytest.raises(PasswordPolicyError):
        add_user(path, "bob", "short", hasher=hasher)
    with pytest.raises(PasswordPolicyError):
        set_password(path, "alice", "1234567", hasher=hasher)
    with pytest.raises(PasswordPolicyError):
        add_user(path, "bob", "x" * (MAX_PASSWORD_BYTES + 1), hasher=hasher)
    add_user(path, "bob", "four", min_length=4, hasher=hasher)
    with pytest.raises(GatewayError):  # bad attribute name, refused before writing
        add_user(path, "carol", "long enough", attributes={"bad name": "x"}, hasher=hasher)
    with pytest.raises(ValueError):  # also a ValueError, for plain CLI handling
        add_user(path, "alice", "long enough", hasher=hasher)
    assert [u.username for u in list_users(path)] == ["alice", "bob"]


def test_management_refuses_to_overwrite_broken_file(
    tmp_path: Path, hasher: CountingHasher
) -> None:
    path = write(tmp_path / "users.yaml", "users:\n  alice: [broken\n")
    before = path.read_text()
    with pytest.raises(ConfigError):
        add_user(path, "bob", "long enough", hasher=hasher)
    assert path.read_text() == before


def test_management_writes_through_symlink(tmp_path: Path, hasher: CountingHasher) -> None:
    real = tmp_path / "real.yaml"
    link = tmp_path / "users.yaml"
    add_user(real, "alice", "long enough", hasher=hasher)
    link.symlink_to(real)
    add_user(link, "bob", "long enough", hasher=hasher)
    assert link.is_symlink()
    assert [u.username for u in list_users(real)] == ["alice", "bob"]


def test_hash_password_makes_argon2id(hasher: CountingHasher) -> None:
    hashed = hash_password("some password", hasher)
    assert hashed.startswith("$argon2id$")
    assert hasher.verify(hashed, "some password")
