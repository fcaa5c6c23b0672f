"""The policy engine: identity + request -> :class:`Decision` with reasons.

A :class:`PolicySet` is immutable and built once (by
:mod:`gateway.policy_loader` from ``policies/*.yaml``, or directly in tests).
Every matcher is compiled when the set is built; evaluating a request does no
parsing.

Tiers
    A tier is *held* when any of its group identifiers matches any of the
    identity's ``groups`` or ``group_ids``.  A policy entry's kind is read from
    its text: a SID (``S-1-...``), a GUID, a distinguished name (anything with
    ``=``) or else a name.  An identity's kinds come from where they came from:
    everything in ``groups`` is a name, whatever it looks like (a group *named*
    ``S-1-5-21-...-512`` is no SID, and anyone allowed to create groups could
    name one so); only ``group_ids``, which providers fill from the directory's
    or the token's identifiers, are read as SIDs, GUIDs or DNs.  Names match
    with ASCII letters case-insensitive and every other character exact (no
    Unicode case folding, which turns a long s (U+017F) into ``s``; no trimming, so
    ``Intercom-Admins `` is another group); DNs match case-insensitively with
    whitespace around ``,``, ``=`` and ``+`` ignored; SIDs match uppercase;
    GUIDs lowercase without braces.  Kinds never cross: the name ``UC-Admins``
    does not match ``CN=UC-Admins,OU=Groups,DC=corp,DC=example``.

Routes
    The first route whose hosts, path and methods match wins; no match is a
    default deny (or a login when there is no session).  Hosts are globs
    compared lowercase with the port and one trailing dot dropped (``*`` alone
    is any host; elsewhere ``*`` is one or more characters, dots included).  A
    ``path`` prefix ``/admin`` or ``/admin/`` matches ``/admin``, ``/admin/`` and
    everything below, never ``/administrator``.  A ``glob`` uses ``*`` within one
    segment and ``**`` across segments (``/a/**`` also matches ``/a``); a trailing
    slash on the request path is ignored.  Paths compare case-insensitively
    unless the route says ``case_sensitive`` (an upstream on Windows serves
    ``/ADMIN/`` as ``/admin/``; with first-match-wins ordering the restrictive
    routes then catch every spelling).

Multiple tiers
    A person holding several tiers is judged by the highest-ranked of their
    tiers that the route allows and whose conditions pass; headers/session show
    the primary tier (highest-ranked held tier whose conditions pass).  Ties in
    rank are broken by tier name.  If no allowed tier passes and every failure
    that stands in the way of some allowed tier is ``max_auth_age`` (on the
    route, the tier or both), the answer is LOGIN with ``step_up`` set: a fresh
    login would let the person in.  Anything else is DENY.

Session limits
    The idle timeout and absolute lifetime of a session are the minimum over the
    configured defaults, every held tier's own limits and every workstation
    network that contains the client address: the most restrictive wins.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, tzinfo
from types import MappingProxyType

from gateway.core.model import Decision, Identity, Outcome, RequestInfo
from gateway.core.network import Networks, ip_in

__all__ = [
    "ACRS",
    "AMR",
    "AUTH_AGE",
    "AUTH_IN_FUTURE",
    "EXPIRED",
    "MFA",
    "OUTSIDE_NETWORK",
    "OUTSIDE_WINDOW",
    "Conditions",
    "PolicySet",
    "Route",
    "SessionLimits",
    "Tier",
    "Window",
    "Workstation",
    "deadline",
    "format_explanation",
    "group_key",
    "name_key",
    "normalise_host",
]

# Condition failure codes, as they appear in reasons.
OUTSIDE_NETWORK = "outside-network"
MFA = "mfa"
AMR = "amr"
ACRS = "acrs"
EXPIRED = "expired"
OUTSIDE_WINDOW = "outside-window"
AUTH_AGE = "max-auth-age"
AUTH_IN_FUTURE = "auth-time-in-future"

AUTH_TIME_SKEW = 60  # seconds an auth_time may lie in the future (clock skew)
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_ALIASES: Mapping[str, tuple[int, ...]] = MappingProxyType(
    {
        **{d: (i,) for i, d in enumerate(WEEKDAYS)},
        **{
            d: (i,)
            for i, d in enumerate(
                ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
            )
        },
        "weekdays": (0, 1, 2, 3, 4),
        "weekend": (5, 6),
        "daily": tuple(range(7)),
    }
)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_HHMM = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
_METHOD = re.compile(r"[A-Z]{1,20}")
_HOST_GLOB = re.compile(r"[a-z0-9*_.-]+|[0-9a-f:.]+")
_SID = re.compile(r"S-1-[0-9]+(?:-[0-9]+)+", re.IGNORECASE)
_GUID = re.compile(
    r"\{(?P<a>[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12})\}"
    r"|(?P<b>[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12})",
    re.IGNORECASE,
)
_PATTERN_FORBIDDEN = frozenset("\\%;?#")


# -- group identifiers ---------------------------------------------------------


def group_key(identifier: str) -> str:
    """The comparison key of a group identifier whose kind is read from its
    text (a policy entry, an identity's ``group_ids``): ``kind:normalised-text``."""
    text = identifier.strip()
    if _SID.fullmatch(text):
        return "sid:" + text.upper()
    guid = _GUID.fullmatch(text)
    if guid:
        return "guid:" + (guid.group("a") or guid.group("b")).lower()
    if "=" in text:
        return "dn:" + _normalise_dn(text)
    return name_key(text)


def name_key(name: str) -> str:
    """The comparison key of a group *name*, whatever it looks like: ASCII
    letters lower-cased, every other character kept exactly as it is."""
    return "name:" + (name.lower() if name.isascii() else name.translate(_ASCII_LOWER))


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _normalise_dn(dn: str) -> str:
    """Casefold a DN and drop whitespace around unescaped ``,``, ``=`` and ``+``."""
    tokens: list[str] = []
    current: list[str] = []
    chars = iter(dn)
    for char in chars:
        if char == "\\":
            current.append(char + next(chars, ""))
        elif char in ",=+":
            tokens.append("".join(current).strip())
            tokens.append(char)
            current = []
        else:
            current.append(char)
    tokens.append("".join(current).strip())
    return "".join(tokens).casefold()


def _policy_keys(groups: Iterable[str]) -> frozenset[str]:
    return frozenset(group_key(g) for g in groups if g.strip())


def _identity_keys(groups: Iterable[str], group_ids: Iterable[str]) -> frozenset[str]:
    """An identity's keys: its ``groups`` as names (never read as identifiers,
    whatever they look like), its ``group_ids`` by their text."""
    keys = {name_key(g) for g in groups if g}
    keys.update(group_key(g) for g in group_ids if g.strip())
    return frozenset(keys)


# -- conditions ----------------------------------------------------------------


def _minutes(text: str, *, allow_24: bool) -> int:
    if allow_24 and text == "24:00":
        return 1440
    match = _HHMM.fullmatch(text)
    if not match:
        raise ValueError(f"not a time of day (HH:MM, 00:00-23:59): {text!r}")
    return int(match.group(1)) * 60 + int(match.group(2))


def _format_minutes(value: int) -> str:
    return f"{value // 60:02d}:{value % 60:02d}"


@dataclass(frozen=True)
class Window:
    """Days of the week (0 = Monday) and a half-open time span ``[start, end)``.

    Times are minutes since midnight in the policy timezone.  When ``end`` is
    not after ``start`` the window wraps past midnight: the part after midnight
    belongs to the listed day, so ``fri 22:00-06:00`` includes Saturday 05:00.
    """

    days: frozenset[int]
    start: int
    end: int

    def __post_init__(self) -> None:
        if not self.days or not self.days <= frozenset(range(7)):
            raise ValueError("a window needs at least one day of the week")
        if not 0 <= self.start < 1440 or not 0 <= self.end <= 1440:
            raise ValueError("window times must lie within one day")
        if self.start == self.end:
            raise ValueError("window start and end are equal (empty or whole day?)")

    @classmethod
    def parse(cls, days: Sequence[str], start: str, end: str) -> Window:
        """Build from day names (``mon``, ``monday``, ``weekdays``, ``weekend``,
        ``daily``) and ``HH:MM`` times; ``end`` may be ``24:00``."""
        numbers: set[int] = set()
        for day in days:
            found = _DAY_ALIASES.get(day.strip().lower())
            if found is None:
                raise ValueError(f"unknown day {day!r} (use mon..sun, weekdays, weekend, daily)")
            numbers.update(found)
        first, last = _minutes(start, allow_24=False), _minutes(end, allow_24=True)
        return cls(frozenset(numbers), first, last)

    def contains(self, local: datetime) -> bool:
        """True if the local time ``local`` lies in the window."""
        minute = local.hour * 60 + local.minute
        weekday = local.weekday()
        if self.start < self.end:
            return weekday in self.days and self.start <= minute < self.end
        if weekday in self.days and minute >= self.start:
            return True
        return (weekday - 1) % 7 in self.days and minute < self.end

    def describe(self) -> str:
        days = ",".join(WEEKDAYS[d] for d in sorted(self.days))
        return f"{days} {_format_minutes(self.start)}-{_format_minutes(self.end)}"


def deadline(value: date | datetime, tz: tzinfo) -> datetime:
    """An aware instant for ``valid_until``: a date means the end of that day in
    ``tz``; a naive datetime is read in ``tz``."""
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=tz)
    return datetime.combine(value, time.max, tzinfo=tz)


@dataclass(frozen=True)
class Conditions:
    """Extra requirements on a tier or a route; the default requires nothing."""

    networks: Networks | None = None
    mfa: bool = False
    valid_until: datetime | None = None
    windows: tuple[Window, ...] = ()
    max_auth_age: int | None = None
    # authentication methods (OIDC amr, e.g. "mfa", "hwk") and Entra ID
    # authentication contexts (acrs, e.g. "c1") the login must carry, every one
    amr: tuple[str, ...] = ()
    acrs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.networks is not None and not self.networks:
            raise ValueError("networks, when given, must list at least one network")
        if self.valid_until is not None and self.valid_until.tzinfo is None:
            raise ValueError("valid_until must be timezone-aware (see deadline())")
        if self.max_auth_age is not None and self.max_auth_age <= 0:
            raise ValueError("max_auth_age must be a positive number of seconds")

    @property
    def needs_identity(self) -> bool:
        return self.mfa or self.max_auth_age is not None or bool(self.amr or self.acrs)

    def failures(
        self, identity: Identity | None, client_ip: str, now: datetime, tz: tzinfo
    ) -> tuple[str, ...]:
        """The codes of every condition that does not hold (empty: all pass)."""
        failed: list[str] = []
        if self.networks is not None and not ip_in(client_ip, self.networks):
            failed.append(OUTSIDE_NETWORK)
        if self.mfa and (identity is None or not identity.mfa):
            failed.append(MFA)
        if self.amr and (identity is None or not set(self.amr) <= set(identity.amr)):
            failed.append(AMR)
        if self.acrs and (identity is None or not set(self.acrs) <= set(identity.acrs)):
            failed.append(ACRS)
        if self.valid_until is not None and now > self.valid_until:
            failed.append(EXPIRED)
        if self.windows:
            local = now.astimezone(tz)
            if not any(w.contains(local) for w in self.windows):
                failed.append(OUTSIDE_WINDOW)
        if self.max_auth_age is not None:
            if identity is None:
                failed.append(AUTH_AGE)
            else:
                age = now.timestamp() - identity.auth_time
                if age < -AUTH_TIME_SKEW:
                    failed.append(AUTH_IN_FUTURE)
                elif age > self.max_auth_age:
                    failed.append(AUTH_AGE)
        return tuple(failed)


def _check_name(kind: str, name: str) -> None:
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"{kind} name {name!r} must be 1-64 letters, digits, '_', '.' or '-'"
            " and start with a letter or digit"
        )


def _check_limit(what: str, value: int | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{what} must be a positive number of seconds")


# -- tiers and workstations ----------------------------------------------------


@dataclass(frozen=True)
class Tier:
    """A level of access, held through directory groups."""

    name: str
    rank: int
    groups: tuple[str, ...]
    idle: int | None = None
    absolute: int | None = None
    conditions: Conditions = field(default_factory=Conditions)
    description: str = ""
    keys: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_name("tier", self.name)
        if not self.groups or any(not g.strip() for g in self.groups):
            raise ValueError(f"tier {self.name!r} needs at least one non-empty group")
        _check_limit("idle", self.idle)
        _check_limit("absolute", self.absolute)
        object.__setattr__(self, "keys", _policy_keys(self.groups))


@dataclass(frozen=True)
class Workstation:
    """Shared machines (a security room) whose sessions are capped shorter."""

    name: str
    networks: Networks
    idle: int | None = None
    absolute: int | None = None

    def __post_init__(self) -> None:
        _check_name("workstation", self.name)
        if not self.networks:
            raise ValueError(f"workstation {self.name!r} needs at least one network")
        if self.idle is None and self.absolute is None:
            raise ValueError(f"workstation {self.name!r} sets neither idle nor absolute")
        _check_limit("idle", self.idle)
        _check_limit("absolute", self.absolute)


# -- routes --------------------------------------------------------------------


def normalise_host(host: str) -> str:
    """Lowercase host without port, brackets or one trailing dot."""
    text = host.strip().lower()
    if text.startswith("["):
        end = text.find("]")
        return text[1:end] if end > 0 else text
    if text.count(":") == 1:
        text = text.partition(":")[0]
    return text[:-1] if text.endswith(".") else text


def compile_host_globs(globs: Sequence[str]) -> re.Pattern[str]:
    """One regex for a list of host globs; raises ValueError for a bad glob."""
    parts: list[str] = []
    for raw in globs:
        glob = normalise_host(raw) if raw.strip() != "*" else "*"
        if glob == "*":
            parts.append(".*")
            continue
        if not glob or not _HOST_GLOB.fullmatch(glob) or "**" in glob:
            raise ValueError(f"not a host glob: {raw!r} (letters, digits, '.', '-', '*')")
        parts.append(".+".join(re.escape(piece) for piece in glob.split("*")))
    if not parts:
        raise ValueError("a route needs at least one host glob")
    return re.compile("|".join(f"(?:{p})" for p in parts), re.DOTALL)


def _check_pattern_path(text: str, *, glob: bool) -> None:
    kind = "glob" if glob else "path prefix"
    if not text.startswith("/"):
        raise ValueError(f"{kind} {text!r} must start with '/'")
    if any(c in _PATTERN_FORBIDDEN or c < " " or c == "\x7f" for c in text):
        raise ValueError(f"{kind} {text!r} contains a character no request path can have")
    if "//" in text:
        raise ValueError(f"{kind} {text!r} contains '//'")
    segments = text.split("/")
    if any(s in (".", "..") for s in segments):
        raise ValueError(f"{kind} {text!r} contains a '.' or '..' segment")
    if any(s.endswith((".", " ")) for s in segments):
        raise ValueError(f"{kind} {text!r} has a segment ending in '.' or ' ' (never matches)")
    if glob and "***" in text:
        raise ValueError(f"glob {text!r} contains '***'")
    if not glob and "*" in text:
        raise ValueError(f"path prefix {text!r} contains '*'; use glob instead")


def compile_path(prefix: str | None, glob: str | None, *, case_sensitive: bool) -> re.Pattern[str]:
    """Compile a path prefix or a glob (at most one given; neither means ``/``)."""
    if prefix is not None and glob is not None:
        raise ValueError("a route takes either path or glob, not both")
    flags = re.DOTALL if case_sensitive else re.DOTALL | re.IGNORECASE
    if glob is None:
        text = "/" if prefix is None else prefix
        _check_pattern_path(text, glob=False)
        core = text.rstrip("/")
        return re.compile(re.escape(core) + "(?:/.*)?" if core else "/.*", flags)
    _check_pattern_path(glob, glob=True)
    text = glob.rstrip("/") if glob != "/" else glob
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("/**/", i):
            out.append("/(?:.*/)?")
            i += 4
        elif text.startswith("/**", i) and i + 3 == len(text):
            out.append("(?:/.*)?")
            i += 3
        elif text.startswith("**", i):
            out.append(".*")
            i += 2
        elif text[i] == "*":
            out.append("[^/]*")
            i += 1
        else:
            out.append(re.escape(text[i]))
            i += 1
    if text != "/" and not text.endswith("/**"):
        out.append("/?")
    return re.compile("".join(out), flags)


@dataclass(frozen=True)
class Route:
    """Which tiers may reach a host/path/method, and on what conditions.

    ``allow`` names tiers, or is ``("*",)`` for any tier.  A ``public`` route
    needs no login (it may only carry conditions that need no identity:
    networks, windows, valid_until).  A ``passive`` route does not extend the idle
    timer (status polling).  ``methods`` empty means every method.
    """

    name: str
    allow: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ("*",)
    path: str | None = None
    glob: str | None = None
    methods: tuple[str, ...] = ()
    public: bool = False
    passive: bool = False
    conditions: Conditions = field(default_factory=Conditions)
    case_sensitive: bool = False
    description: str = ""
    host_re: re.Pattern[str] = field(init=False, repr=False, compare=False)
    path_re: re.Pattern[str] = field(init=False, repr=False, compare=False)
    method_set: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_name("route", self.name)
        if self.public and self.allow:
            raise ValueError("a public route needs no tiers; remove allow")
        if not self.public and not self.allow:
            raise ValueError("a route needs allow (tier names or '*') unless it is public")
        if "*" in self.allow and self.allow != ("*",):
            raise ValueError("'*' in allow must stand alone")
        if self.public and self.conditions.needs_identity:
            raise ValueError("a public route cannot require mfa, amr, acrs or max_auth_age")
        methods = tuple(m.upper() for m in self.methods)
        for method in methods:
            if not _METHOD.fullmatch(method):
                raise ValueError(f"not an HTTP method: {method!r}")
        object.__setattr__(self, "methods", methods)
        object.__setattr__(self, "host_re", compile_host_globs(self.hosts))
        object.__setattr__(
            self, "path_re", compile_path(self.path, self.glob, case_sensitive=self.case_sensitive)
        )
        object.__setattr__(self, "method_set", frozenset(methods))

    def matches(self, host: str, path: str, method: str) -> bool:
        """``host`` as from :func:`normalise_host`, ``path`` normalised, ``method`` uppercase."""
        if self.method_set and method not in self.method_set:
            return False
        return self.host_re.fullmatch(host) is not None and self.path_re.fullmatch(path) is not None


# -- the policy set --------------------------------------------------------------


@dataclass(frozen=True)
class SessionLimits:
    """Idle timeout and absolute lifetime in seconds, with where each came from."""

    idle: int
    absolute: int
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class PolicySet:
    """Tiers, ordered routes and workstations, judged in ``timezone``."""

    tiers: tuple[Tier, ...]
    routes: tuple[Route, ...]
    workstations: tuple[Workstation, ...] = ()
    timezone: tzinfo = UTC
    _ranked: tuple[Tier, ...] = field(init=False, repr=False, compare=False)
    _held: Callable[[tuple[str, ...], tuple[str, ...]], tuple[Tier, ...]] = field(
        init=False, repr=False, compare=False
    )
    _route_for: Callable[[str, str, str], Route | None] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        problems: list[str] = []
        for kind, names in (
            ("tier", [t.name for t in self.tiers]),
            ("route", [r.name for r in self.routes]),
            ("workstation", [w.name for w in self.workstations]),
        ):
            dupes = sorted({n for n in names if names.count(n) > 1})
            problems.extend(f"duplicate {kind} name {n!r}" for n in dupes)
        known = {t.name for t in self.tiers}
        for route in self.routes:
            for name in route.allow:
                if name != "*" and name not in known:
                    problems.append(f"route {route.name!r} allows unknown tier {name!r}")
        if problems:
            raise ValueError("; ".join(problems))
        ranked = tuple(sorted(self.tiers, key=lambda t: (-t.rank, t.name)))
        object.__setattr__(self, "_ranked", ranked)
        object.__setattr__(self, "_held", functools.lru_cache(maxsize=2048)(self._compute_held))
        object.__setattr__(
            self, "_route_for", functools.lru_cache(maxsize=4096)(self._compute_route)
        )

    def _compute_held(
        self, groups: tuple[str, ...], group_ids: tuple[str, ...]
    ) -> tuple[Tier, ...]:
        keys = _identity_keys(groups, group_ids)
        return tuple(t for t in self._ranked if not t.keys.isdisjoint(keys))

    def networks_in_use(self) -> tuple[tuple[str, Networks], ...]:
        """Every network the policy decides by, with where it is named
        (``route X``, ``tier X``, ``workstation X``)."""
        found: list[tuple[str, Networks]] = []
        for route in self.routes:
            if route.conditions.networks:
                found.append((f"route {route.name!r}", route.conditions.networks))
        for tier in self.tiers:
            if tier.conditions.networks:
                found.append((f"tier {tier.name!r}", tier.conditions.networks))
        for ws in self.workstations:
            found.append((f"workstation {ws.name!r}", ws.networks))
        return tuple(found)

    def tier(self, name: str) -> Tier | None:
        return next((t for t in self.tiers if t.name == name), None)

    def tiers_of(self, identity: Identity) -> tuple[Tier, ...]:
        """Every tier the identity holds, highest rank first (name breaks ties)."""
        return self._held(tuple(identity.groups), tuple(identity.group_ids))

    def primary_tier(
        self, identity: Identity, where: RequestInfo | str, now: datetime
    ) -> Tier | None:
        """The highest-ranked held tier whose own conditions pass; None if none does."""
        _require_aware(now)
        client_ip = where.client_ip if isinstance(where, RequestInfo) else where
        for tier in self.tiers_of(identity):
            if not tier.conditions.failures(identity, client_ip, now, self.timezone):
                return tier
        return None

    def match_route(self, req: RequestInfo) -> Route | None:
        """The first route matching the request's host, path and method."""
        if len(req.path) > 512:  # not worth a cache slot
            return self._compute_route(req.host, req.path, req.method)
        route: Route | None = self._route_for(req.host, req.path, req.method)
        return route

    def _compute_route(self, host: str, path: str, method: str) -> Route | None:
        host = normalise_host(host)
        method = method.upper()
        for route in self.routes:
            if route.matches(host, path, method):
                return route
        return None

    def evaluate(self, identity: Identity | None, req: RequestInfo, now: datetime) -> Decision:
        """Judge one request; see the module docstring for the rules."""
        _require_aware(now)
        if not req.path.startswith("/"):
            return Decision(Outcome.ERROR, reasons=("bad-path: not normalised",))
        route = self.match_route(req)
        if route is None:
            if identity is None:
                return Decision(Outcome.LOGIN, reasons=("no-session",))
            return Decision(Outcome.DENY, reasons=("no-route: default deny",))
        reasons = [f"route:{route.name}"]

        def decide(outcome: Outcome, *extra: str, tier: str | None = None) -> Decision:
            return Decision(
                outcome,
                route=route.name,
                tier=tier,
                reasons=(*reasons, *extra),
                passive=route.passive,
                step_up=outcome is Outcome.LOGIN and "step-up:max-auth-age" in extra,
                required_tiers=route.allow,
            )

        tz = self.timezone
        if route.public or identity is None:
            if not route.public:
                return decide(Outcome.LOGIN, "no-session")
            public_failed = route.conditions.failures(None, req.client_ip, now, tz)
            if public_failed:
                return decide(Outcome.DENY, *(f"condition-failed:{f}" for f in public_failed))
            return decide(Outcome.PUBLIC, "public")
        route_failed = route.conditions.failures(identity, req.client_ip, now, tz)
        reasons.extend(f"condition-failed:{f}" for f in route_failed)
        held = self.tiers_of(identity)
        if route.allow != ("*",):
            held = tuple(t for t in held if t.name in route.allow)
        if not held:
            needs = "any tier" if route.allow == ("*",) else "|".join(route.allow)
            return decide(Outcome.DENY, f"no-tier-allowed:needs {needs}")
        only_age = {AUTH_AGE}
        step_up = False
        for tier in held:
            tier_failed = tier.conditions.failures(identity, req.client_ip, now, tz)
            if not tier_failed and not route_failed:
                return decide(Outcome.ALLOW, f"tier:{tier.name}", tier=tier.name)
            reasons.extend(f"tier-skipped:{tier.name}:{f}" for f in tier_failed)
            if set(route_failed) <= only_age and set(tier_failed) <= only_age:
                step_up = True
        if step_up:
            return decide(Outcome.LOGIN, "step-up:max-auth-age")
        return decide(Outcome.DENY, "no-tier-passed")

    def session_limits(
        self, identity: Identity, client_ip: str, default_idle: int, default_absolute: int
    ) -> SessionLimits:
        """The most restrictive idle/absolute over defaults, held tiers and workstations.

        The idle timeout never exceeds the absolute lifetime.
        """
        idle, idle_from = default_idle, "default"
        absolute, absolute_from = default_absolute, "default"
        sources: list[tuple[str, int | None, int | None]] = [
            (f"tier:{t.name}", t.idle, t.absolute) for t in self.tiers_of(identity)
        ]
        sources.extend(
            (f"workstation:{w.name}", w.idle, w.absolute)
            for w in self.workstations
            if ip_in(client_ip, w.networks)
        )
        for source, tier_idle, tier_absolute in sources:
            if tier_idle is not None and tier_idle < idle:
                idle, idle_from = tier_idle, source
            if tier_absolute is not None and tier_absolute < absolute:
                absolute, absolute_from = tier_absolute, source
        if idle > absolute:
            idle, idle_from = absolute, absolute_from
        return SessionLimits(idle, absolute, (f"idle:{idle_from}", f"absolute:{absolute_from}"))


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None:
        raise ValueError("now must be a timezone-aware datetime")


# -- explanation ---------------------------------------------------------------------


def format_explanation(decision: Decision, identity: Identity | None, req: RequestInfo) -> str:
    """A human-readable, multi-line account of a decision (``sso-gateway explain``)."""
    lines = [f"request:  {req.method} {req.scheme}://{req.host}{req.path} from {req.client_ip}"]
    if identity is None:
        lines.append("identity: none (no session)")
    else:
        lines.append(f"identity: {identity.subject} via {identity.provider}, mfa={identity.mfa}")
        lines.append("groups:   " + (", ".join(identity.groups) or "(none)"))
        if identity.group_ids:
            lines.append("group ids: " + ", ".join(identity.group_ids))
    lines.append(f"route:    {decision.route or '(none matched)'}")
    if decision.required_tiers:
        lines.append("requires: " + " or ".join(decision.required_tiers))
    verdict = decision.outcome.value.upper()
    if decision.tier:
        verdict += f" as tier {decision.tier}"
    if decision.step_up:
        verdict += " (step-up: log in again)"
    if decision.passive:
        verdict += " [passive: idle timer not extended]"
    lines.append(f"outcome:  {verdict}")
    lines.append("reasons:")
    lines.extend(f"  - {reason}" for reason in decision.reasons)
    return "\n".join(lines)
