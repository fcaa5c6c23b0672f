"""Local users: a YAML file of argon2id password hashes, for small sites and the demo.

File format (operator-owned; the gateway never writes it during logins)::

    users:
      alice:
        name: Alice Example
        email: alice@example.test
        password_hash: $argon2id$v=19$m=65536,t=3,p=4$...
        groups: [Intercom-Operators, UC-Users]
        attributes: {ipPhone: "4711", department: Security}
        disabled: false

Only ``password_hash`` is required.  Usernames are 1-64 characters of
``[A-Za-z0-9._@-]`` and are looked up case-insensitively (kept lowercase).

Logins spend the same work whatever the outcome: an unknown or disabled user is
verified against a dummy argon2id hash made with the hasher's own parameters, so
the answer time does not tell whether a name exists.  The reason of a failure
(``empty-password``, ``unknown-user``, ``bad-password``, ``disabled``) is for the
audit log only.

The management functions (``add_user``, ``set_password``, ``set_disabled``,
``remove_user``, ``list_users``) back the ``sso-gateway users`` command.  They
rewrite the whole file atomically (temporary file + rename, mode 0600); comments
are not preserved.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import secrets
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml
from argon2 import PasswordHasher, Type, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictStr,
    ValidationError,
    field_validator,
)

from gateway.core.errors import AuthenticationFailed, ConfigError, GatewayError, Problem
from gateway.core.model import Identity

__all__ = [
    "MAX_PASSWORD_BYTES",
    "MIN_PASSWORD_LENGTH",
    "PROVIDER_NAME",
    "DuplicateUser",
    "InvalidUsername",
    "LocalUsersProvider",
    "PasswordPolicyError",
    "UnknownUser",
    "UserEntry",
    "UserRecord",
    "UsersFile",
    "UsersFileError",
    "add_user",
    "hash_password",
    "list_users",
    "load_users_file",
    "normalize_username",
    "remove_user",
    "set_disabled",
    "set_password",
    "validate_users_file",
]

log = logging.getLogger(__name__)

PROVIDER_NAME = "local"
MAX_PASSWORD_BYTES = 1024
MIN_PASSWORD_LENGTH = 8
_USERNAME_RE = re.compile(r"[A-Za-z0-9._@-]{1,64}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_ARGON2ID_PREFIX = "$argon2id$"
_FILE_HEADER = (
    "# Local users of the intercom SSO gateway.\n"
    "# Rewritten by `sso-gateway users ...`; comments are not preserved.\n"
)


# ---------------------------------------------------------------------------
# errors of the management functions
# ---------------------------------------------------------------------------


class UsersFileError(GatewayError, ValueError):
    """A users-file management request that cannot be carried out."""


class InvalidUsername(UsersFileError):
    pass


class DuplicateUser(UsersFileError):
    pass


class UnknownUser(UsersFileError):
    pass


class PasswordPolicyError(UsersFileError):
    pass


# ---------------------------------------------------------------------------
# file model
# ---------------------------------------------------------------------------


def normalize_username(username: str) -> str:
    """The stored (lowercase) form of ``username``; InvalidUsername if malformed."""
    if not isinstance(username, str) or not _USERNAME_RE.fullmatch(username):
        raise InvalidUsername(
            "invalid username: use 1-64 characters of letters, digits and . _ @ -"
        )
    return username.lower()


def _username_key(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("username must be a string (quote names such as '4711')")
    if not _USERNAME_RE.fullmatch(value):
        raise ValueError("invalid username: use 1-64 characters of letters, digits and . _ @ -")
    return value.lower()


Username = Annotated[str, PlainValidator(_username_key)]
_Text = Annotated[StrictStr, Field(max_length=256)]
_GroupName = Annotated[StrictStr, Field(min_length=1, max_length=256)]
_AttrName = Annotated[StrictStr, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
_AttrValue = Annotated[StrictStr, Field(max_length=1024)]


def _no_control_chars(value: str) -> str:
    if _CONTROL_RE.search(value):
        raise ValueError("control characters are not allowed")
    return value


class UserRecord(BaseModel):
    """One user as written in the file (the username is the mapping key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    password_hash: StrictStr
    name: _Text = ""
    email: _Text = ""
    groups: tuple[_GroupName, ...] = ()
    attributes: dict[_AttrName, _AttrValue] = Field(default_factory=dict)
    disabled: StrictBool = False

    @field_validator("password_hash")
    @classmethod
    def _argon2id_only(cls, value: str) -> str:
        check_password_hash(value)
        return value

    @field_validator("name", "email")
    @classmethod
    def _plain_text(cls, value: str) -> str:
        return _no_control_chars(value)

    @field_validator("groups")
    @classmethod
    def _plain_groups(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for group in value:
            _no_control_chars(group)
        return value

    @field_validator("attributes")
    @classmethod
    def _plain_attributes(cls, value: dict[str, str]) -> dict[str, str]:
        for item in value.values():
            _no_control_chars(item)
        return value


class UsersFile(BaseModel):
    """The whole users file.  Keys of ``users`` are lowercase usernames."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    users: dict[Username, UserRecord]

    @field_validator("users", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return {} if value is None else value


@dataclass(frozen=True)
class UserEntry:
    """A user as listed by :func:`list_users` (no password hash)."""

    username: str
    name: str = ""
    email: str = ""
    groups: tuple[str, ...] = ()
    attributes: Mapping[str, str] = field(default_factory=dict)
    disabled: bool = False


def check_password_hash(value: str) -> None:
    """ValueError unless ``value`` is a well-formed argon2id PHC string."""
    if not value.startswith(_ARGON2ID_PREFIX):
        scheme = value.split("$")[1] if value.startswith("$") and value.count("$") >= 2 else ""
        what = f"'{scheme[:16]}' hashes are" if scheme else "this hash format is"
        raise ValueError(
            f"only argon2id hashes ($argon2id$...) are accepted; {what} not "
            "(set a new password with `sso-gateway users passwd`)"
        )
    try:
        params = extract_parameters(value)
    except (InvalidHashError, ValueError):
        raise ValueError("malformed argon2id hash") from None
    if params.type is not Type.ID:
        raise ValueError("malformed argon2id hash")


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------


def _key_path(loc: Sequence[int | str]) -> str:
    out = ""
    for index, part in enumerate(loc):
        if part == "[key]":
            continue
        if isinstance(part, int) and index != 1:  # list index; loc[1] is a username
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


_REASONS = {
    "extra_forbidden": "unknown key",
    "missing": "required key is missing",
    "bool_type": "must be true or false",
    "string_type": 'must be a string (quote values such as "4711")',
    "tuple_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping of user settings",
    "string_pattern_mismatch": "invalid name: use letters, digits, '_' and '-'",
}


def _reason(err: Mapping[str, Any]) -> str:
    known = _REASONS.get(str(err.get("type")))
    if known is not None:
        return known
    return str(err.get("msg", "invalid value")).removeprefix("Value error, ")


def _duplicate_keys(node: yaml.Node, path: str, out: list[tuple[str, int]]) -> None:
    """Find keys given twice in one mapping (PyYAML would silently keep the last)."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            sub = f"{path}.{key}" if path else key
            if isinstance(key_node, yaml.ScalarNode):
                if key in seen:
                    out.append((sub, key_node.start_mark.line + 1))
                seen.add(key)
            _duplicate_keys(value_node, sub, out)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _duplicate_keys(item, f"{path}[{index}]", out)


def parse_users_text(text: str, source: str) -> UsersFile:
    """Parse users-file text; ConfigError listing every problem found."""
    problems: list[Problem] = []
    try:
        data = yaml.safe_load(text)
        tree = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "cannot parse"
        raise ConfigError([Problem(source, where, f"YAML syntax error: {problem}")]) from None
    if data is None:
        raise ConfigError([Problem(source, "", "the file is empty; expected a 'users' mapping")])
    if not isinstance(data, dict):
        raise ConfigError([Problem(source, "", "the top level must be a mapping")])

    duplicates: list[tuple[str, int]] = []
    if tree is not None:
        _duplicate_keys(tree, "", duplicates)
    for path, line in duplicates:
        problems.append(Problem(source, path, f"key given twice (again at line {line})"))

    raw_users = data.get("users")
    if isinstance(raw_users, dict):
        first: dict[str, str] = {}
        for key in raw_users:
            if isinstance(key, str) and _USERNAME_RE.fullmatch(key):
                lower = key.lower()
                if lower in first:
                    problems.append(
                        Problem(
                            source,
                            f"users.{key}",
                            f"same user as '{first[lower]}' (usernames are case-insensitive)",
                        )
                    )
                else:
                    first[lower] = key

    try:
        users = UsersFile.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors(include_url=False, include_input=False):
            problems.append(Problem(source, _key_path(err["loc"]), _reason(err)))
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    return users


def load_users_file(path: Path) -> UsersFile:
    """Read and validate a users file; ConfigError with every problem."""
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError([Problem(source, "", f"cannot read: {exc.strerror or exc}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem(source, "", f"not UTF-8 text (byte {exc.start})")]) from None
    return parse_users_text(text, source)


def validate_users_file(path: Path) -> list[Problem]:
    """Every problem of a users file (empty when it loads), for `sso-gateway check`."""
    try:
        load_users_file(path)
    except ConfigError as exc:
        return list(exc.problems)
    return []


def _file_signature(path: Path) -> tuple[int, int, int, int]:
    st = path.stat()
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


# ---------------------------------------------------------------------------
# the provider
# ---------------------------------------------------------------------------


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


class LocalUsersProvider:
    """Checks usernames and passwords against a local users file."""

    name = PROVIDER_NAME

    def __init__(
        self,
        users_file: Path,
        hasher: PasswordHasher | None = None,
        *,
        run: Callable[..., Any] | None = None,
    ) -> None:
        """``run(fn, *args)`` executes the password verification; the app passes
        one that keeps it off the event loop (see gateway.offload)."""
        self.users_file = Path(users_file)
        self._run: Callable[..., Any] = run if run is not None else _call
        self._hasher = hasher if hasher is not None else PasswordHasher()
        if self._hasher.type is not Type.ID:
            raise ValueError("the local users provider needs an argon2id PasswordHasher")
        self._lock = threading.Lock()
        # Verified against for unknown and disabled users: same parameters as the
        # hasher, so it costs what a real verification costs.
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(32))
        try:
            signature = _file_signature(self.users_file)
        except OSError as exc:
            raise ConfigError(
                [Problem(str(self.users_file), "", f"cannot read: {exc.strerror or exc}")]
            ) from None
        self._users: Mapping[str, UserRecord] = self._load()
        self._signature: tuple[int, int, int, int] | None = signature

    # -- loading -------------------------------------------------------------

    def _load(self) -> Mapping[str, UserRecord]:
        users = load_users_file(self.users_file).users
        self._warn_about(users)
        return dict(users)

    def _warn_about(self, users: Mapping[str, UserRecord]) -> None:
        try:
            mode = self.users_file.stat().st_mode
        except OSError:
            mode = 0
        if mode & (stat.S_IRWXG | stat.S_IRWXO) & ~stat.S_IRGRP:
            log.warning(
                "users file %s is accessible to other users (mode %o); use 0600 or 0640",
                self.users_file,
                stat.S_IMODE(mode),
            )
        stale = sorted(
            u for u, r in users.items() if self._hasher.check_needs_rehash(r.password_hash)
        )
        if stale:
            # Different cost parameters make those logins measurably slower or
            # faster than the dummy verification of unknown names.
            log.warning(
                "users file %s: %d password hash(es) use other argon2 parameters than "
                "configured (%s); reset them with `sso-gateway users passwd`",
                self.users_file,
                len(stale),
                ", ".join(stale[:10]) + (" ..." if len(stale) > 10 else ""),
            )

    def reload(self) -> bool:
        """Re-read the users file if it changed.  True when new users were loaded.

        A broken or unreadable file is logged and the users loaded before stay in
        force; the same broken version is not re-parsed on every call.
        """
        with self._lock:
            try:
                signature = _file_signature(self.users_file)
            except OSError as exc:
                if self._signature is not None:  # log once, not on every call
                    log.error(
                        "users file %s cannot be read (%s); keeping the %d users loaded before",
                        self.users_file,
                        exc.strerror or exc,
                        len(self._users),
                    )
                self._signature = None
                return False
            if signature == self._signature:
                return False
            self._signature = signature
            try:
                users = self._load()
            except ConfigError as exc:
                log.error(
                    "users file %s is invalid; keeping the %d users loaded before:\n%s",
                    self.users_file,
                    len(self._users),
                    exc,
                )
                return False
            self._users = users
            log.info("users file %s reloaded: %d users", self.users_file, len(users))
            return True

    @property
    def usernames(self) -> tuple[str, ...]:
        return tuple(sorted(self._users))

    # -- authentication ------------------------------------------------------

    def _verify(self, password_hash: str, secret: bytes) -> bool:
        try:
            return bool(self._run(self._hasher.verify, password_hash, secret))
        except VerificationError:
            return False
        except InvalidHashError:
            log.error("users file %s holds an unusable password hash", self.users_file)
            return False

    def authenticate(self, username: str, password: str, *, now: float) -> Identity:
        """The identity of ``username`` if ``password`` is right.

        Raises AuthenticationFailed whose ``reason`` is one of ``empty-password``,
        ``unknown-user``, ``bad-password`` or ``disabled``; exactly one argon2
        verification is spent on every attempt with a non-empty password.
        """
        if not password:
            raise AuthenticationFailed("empty-password")
        users = self._users  # one consistent snapshot, even across a reload
        record: UserRecord | None = None
        key = ""
        # Check the name as typed: lower() maps some non-ASCII letters to ASCII
        # (KELVIN SIGN -> "k"), and such spellings are not valid usernames.
        if isinstance(username, str) and _USERNAME_RE.fullmatch(username):
            key = username.lower()
            record = users.get(key)

        secret = password.encode("utf-8", "surrogatepass")
        too_long = len(secret) > MAX_PASSWORD_BYTES
        if record is None or record.disabled or too_long:
            # Same cost as a real check; the result does not matter.
            self._verify(self._dummy_hash, secret[:MAX_PASSWORD_BYTES])
            if too_long:
                raise AuthenticationFailed("bad-password")
            if record is None:
                raise AuthenticationFailed("unknown-user")
            raise AuthenticationFailed("disabled")

        if not self._verify(record.password_hash, secret):
            raise AuthenticationFailed("bad-password")
        # A hash with outdated parameters is NOT rewritten here: the file is
        # operator-owned (see the load-time warning).
        return Identity(
            subject=key,
            provider=PROVIDER_NAME,
            name=record.name,
            email=record.email,
            groups=record.groups,
            auth_time=now,
            mfa=False,
            attributes=dict(record.attributes),
        )


# ---------------------------------------------------------------------------
# management (the `sso-gateway users` command)
# ---------------------------------------------------------------------------

_default_hasher: PasswordHasher | None = None


def _hasher_or_default(hasher: PasswordHasher | None) -> PasswordHasher:
    global _default_hasher
    if hasher is not None:
        return hasher
    if _default_hasher is None:
        _default_hasher = PasswordHasher()
    return _default_hasher


def hash_password(password: str, hasher: PasswordHasher | None = None) -> str:
    """An argon2id PHC string for ``password`` (argon2-cffi's PasswordHasher)."""
    ph = _hasher_or_default(hasher)
    if ph.type is not Type.ID:
        raise ValueError("only argon2id hashes are supported")
    return ph.hash(password)


def check_password_policy(password: str, min_length: int = MIN_PASSWORD_LENGTH) -> None:
    """PasswordPolicyError unless ``password`` is acceptable for a new password."""
    if not isinstance(password, str):
        raise PasswordPolicyError("the password must be text")
    if len(password) < min_length:
        raise PasswordPolicyError(f"the password must be at least {min_length} characters long")
    try:
        size = len(password.encode("utf-8"))
    except UnicodeEncodeError:
        raise PasswordPolicyError("the password is not valid Unicode text") from None
    if size > MAX_PASSWORD_BYTES:
        raise PasswordPolicyError(f"the password must not exceed {MAX_PASSWORD_BYTES} bytes")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise concurrent `users` commands on the same file (advisory lock)."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise UsersFileError(
            f"cannot use the users file in {path.parent}: {exc.strerror or exc}"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _target(path: Path) -> Path:
    # Write through a symlink to its target instead of replacing the link.
    return Path(os.path.realpath(path))


def _read_for_update(path: Path) -> dict[str, UserRecord]:
    if not path.exists():
        return {}
    return dict(load_users_file(path).users)


def _write_users(path: Path, users: Mapping[str, UserRecord]) -> None:
    document = {
        "users": {name: record.model_dump(mode="json") for name, record in sorted(users.items())}
    }
    text = _FILE_HEADER + yaml.safe_dump(
        document, sort_keys=False, default_flow_style=False, allow_unicode=True
    )
    # What we write must load again; never leave an unusable file behind.
    parse_users_text(text, str(path))

    old: os.stat_result | None
    try:
        old = path.stat()
    except FileNotFoundError:
        old = None
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), 0o600)
            if old is not None and (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
                # keep the file readable by the service account it belonged to
                with contextlib.suppress(OSError):
                    os.fchown(fh.fileno(), old.st_uid, old.st_gid)
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def add_user(
    path: Path,
    username: str,
    password: str,
    *,
    name: str = "",
    email: str = "",
    groups: Sequence[str] = (),
    attributes: Mapping[str, str] | None = None,
    disabled: bool = False,
    min_length: int = MIN_PASSWORD_LENGTH,
    hasher: PasswordHasher | None = None,
) -> UserEntry:
    """Add a user (creating the file if missing).  DuplicateUser if it exists."""
    key = normalize_username(username)
    check_password_policy(password, min_length)
    target = _target(Path(path))
    with _locked(target):
        users = _read_for_update(target)
        if key in users:
            raise DuplicateUser(f"user '{key}' already exists")
        try:
            record = UserRecord(
                password_hash=hash_password(password, hasher),
                name=name,
                email=email,
                groups=tuple(groups),
                attributes=dict(attributes or {}),
                disabled=disabled,
            )
        except ValidationError as exc:
            raise UsersFileError(_validation_summary(exc)) from None
        users[key] = record
        _write_users(target, users)
    return _entry(key, record)


def set_password(
    path: Path,
    username: str,
    password: str,
    *,
    min_length: int = MIN_PASSWORD_LENGTH,
    hasher: PasswordHasher | None = None,
) -> None:
    """Replace a user's password hash.  UnknownUser if there is no such user."""
    key = normalize_username(username)
    check_password_policy(password, min_length)
    new_hash = hash_password(password, hasher)
    _update(Path(path), key, {"password_hash": new_hash})


def set_disabled(path: Path, username: str, disabled: bool) -> None:
    """Disable or enable a user.  UnknownUser if there is no such user."""
    _update(Path(path), normalize_username(username), {"disabled": bool(disabled)})


def remove_user(path: Path, username: str) -> None:
    """Remove a user.  UnknownUser if there is no such user."""
    key = normalize_username(username)
    target = _target(Path(path))
    with _locked(target):
        users = _read_for_update(target)
        if key not in users:
            raise UnknownUser(f"no user '{key}'")
        del users[key]
        _write_users(target, users)


def list_users(path: Path) -> list[UserEntry]:
    """Every user, sorted by username; an empty list when the file does not exist."""
    target = Path(path)
    if not target.exists():
        return []
    users = load_users_file(target).users
    return [_entry(key, record) for key, record in sorted(users.items())]


def _update(path: Path, key: str, changes: dict[str, Any]) -> None:
    target = _target(path)
    with _locked(target):
        users = _read_for_update(target)
        record = users.get(key)
        if record is None:
            raise UnknownUser(f"no user '{key}'")
        users[key] = record.model_copy(update=changes)
        _write_users(target, users)


def _entry(key: str, record: UserRecord) -> UserEntry:
    return UserEntry(
        username=key,
        name=record.name,
        email=record.email,
        groups=record.groups,
        attributes=dict(record.attributes),
        disabled=record.disabled,
    )


def _validation_summary(exc: ValidationError) -> str:
    return "; ".join(
        f"{_key_path(err['loc']) or 'value'}: {_reason(err)}"
        for err in exc.errors(include_url=False, include_input=False)
    )
