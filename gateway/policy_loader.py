"""Read ``policies/*.yaml`` into an immutable :class:`PolicySet`, or list every problem.

Files (``*.yaml`` and ``*.yml``, not starting with ``.``) are read in sorted
filename order.  Each may hold ``timezone``, ``tiers`` (a mapping of tier name
to tier), ``routes`` (a list; lists from all files are concatenated in file
order, and the first matching route wins) and ``workstations`` (a list).

:func:`load_policies` either returns a complete policy set or raises
:class:`ConfigError` carrying every :class:`Problem` found (file, key path such
as ``routes[3].path`` with 0-based indexes, reason).  It changes nothing
anywhere, so a caller that keeps the previous policy on error keeps it intact.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import date, datetime, tzinfo
from functools import partial
from pathlib import Path
from typing import Annotated, Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.core.errors import ConfigError, Problem, key_path
from gateway.core.network import parse_networks
from gateway.core.policy import (
    Conditions,
    PolicySet,
    Route,
    Tier,
    Window,
    Workstation,
    compile_host_globs,
    compile_path,
    deadline,
)

__all__ = ["load_policies", "validate_policies"]

DEFAULT_TIMEZONE = "UTC"
_HHMM = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]")


# -- YAML ------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of silently keeping the last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# -- field checks (raise ValueError; pydantic turns them into located errors) ------


def _cidr(value: str) -> str:
    parse_networks([value])
    return value


def _host_glob(value: str) -> str:
    compile_host_globs([value])
    return value


def _prefix(value: str) -> str:
    compile_path(value, None, case_sensitive=True)
    return value


def _glob(value: str) -> str:
    compile_path(None, value, case_sensitive=True)
    return value


def _method(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z]{1,20}", value):
        raise ValueError(f"not an HTTP method: {value!r}")
    return value.upper()


def _group(value: str) -> str:
    if not value.strip():
        raise ValueError("group identifier is empty")
    return value


def _day(value: str) -> str:
    Window.parse([value], "00:00", "01:00")
    return value


def _time_of_day(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(
            "write times in quotes, e.g. '18:00' (unquoted, YAML reads 18:00 as a number)"
        )
    return value


def _time(value: str) -> str:
    if not _HHMM.fullmatch(value):
        raise ValueError(f"not a time of day (HH:MM, 00:00-23:59): {value!r}")
    return value


def _end_time(value: str) -> str:
    return value if value == "24:00" else _time(value)


Cidr = Annotated[str, AfterValidator(_cidr)]
HostGlob = Annotated[str, AfterValidator(_host_glob)]
Method = Annotated[str, AfterValidator(_method)]
Group = Annotated[str, AfterValidator(_group)]
Day = Annotated[str, AfterValidator(_day)]
Seconds = Annotated[int, Field(gt=0)]


# -- file schema ---------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class WindowModel(_Model):
    days: list[Day] = Field(default_factory=lambda: ["daily"], min_length=1)
    start: Annotated[str, AfterValidator(_time)]
    end: Annotated[str, AfterValidator(_end_time)]

    _times = field_validator("start", "end", mode="before")(_time_of_day)

    @model_validator(mode="after")
    def _span(self) -> WindowModel:
        Window.parse(self.days, self.start, self.end)
        return self


class ConditionsModel(_Model):
    networks: list[Cidr] | None = Field(default=None, min_length=1)
    mfa: bool = False
    amr: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(default_factory=list)
    acrs: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(default_factory=list)
    valid_until: datetime | date | None = None
    windows: list[WindowModel] = Field(default_factory=list)
    max_auth_age: Seconds | None = None

    @field_validator("valid_until", mode="before")
    @classmethod
    def _iso(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                if len(value.strip()) == 10:
                    return date.fromisoformat(value.strip())
                return datetime.fromisoformat(value.strip())
            except ValueError:
                raise ValueError(
                    "valid_until must be a date (2025-12-31) or date and time (2025-12-31T18:00:00)"
                ) from None
        return value


class TierModel(_Model):
    rank: int
    groups: list[Group] = Field(min_length=1)
    idle: Seconds | None = None
    absolute: Seconds | None = None
    description: str = ""
    conditions: ConditionsModel = Field(default_factory=ConditionsModel)


class RouteModel(_Model):
    name: str
    description: str = ""
    hosts: list[HostGlob] = Field(default_factory=lambda: ["*"], min_length=1)
    path: Annotated[str, AfterValidator(_prefix)] | None = None
    glob: Annotated[str, AfterValidator(_glob)] | None = None
    methods: list[Method] = Field(default_factory=list)
    allow: list[str] = Field(default_factory=list)
    public: bool = False
    passive: bool = False
    case_sensitive: bool = False
    conditions: ConditionsModel = Field(default_factory=ConditionsModel)


class WorkstationModel(_Model):
    name: str
    description: str = ""
    networks: list[Cidr] = Field(min_length=1)
    idle: Seconds | None = None
    absolute: Seconds | None = None


class PolicyFileModel(_Model):
    timezone: str | None = None
    tiers: dict[str, TierModel] = Field(default_factory=dict)
    routes: list[RouteModel] = Field(default_factory=list)
    workstations: list[WorkstationModel] = Field(default_factory=list)


# -- reading ------------------------------------------------------------------------


def _reason(error: Any) -> str:
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    message = str(error.get("msg", "invalid value"))
    return message.removeprefix("Value error, ")


def _named(raw: Any, loc: tuple[int | str, ...]) -> str:
    """`` (route 'x')`` when the error sits inside a named list item, for readers."""
    if len(loc) >= 2 and loc[0] in ("routes", "workstations") and isinstance(loc[1], int):
        items = raw.get(loc[0]) if isinstance(raw, dict) else None
        if isinstance(items, list) and loc[1] < len(items) and isinstance(items[loc[1]], dict):
            name = items[loc[1]].get("name")
            if isinstance(name, str):
                return f" ({str(loc[0])[:-1]} {name!r})"
    return ""


@dataclass(frozen=True)
class _Parsed:
    """What one file contributes: every item that passed schema validation,
    with its index in the file (so key paths stay right)."""

    where: str
    timezone: str | None
    tiers: dict[str, TierModel]
    routes: list[tuple[int, RouteModel]]
    workstations: list[tuple[int, WorkstationModel]]


_M = TypeVar("_M", bound=BaseModel)


def _valid(cls: type[_M], item: Any) -> _M | None:
    try:
        return cls.model_validate(item)
    except ValidationError:
        return None


def _salvage(where: str, raw: dict[Any, Any]) -> _Parsed:
    """The valid items of a file that failed validation, so that problems in
    them which only show when building (bad names, path+glob) are reported too."""
    timezone = raw.get("timezone")
    tiers = raw.get("tiers")
    routes = raw.get("routes")
    stations = raw.get("workstations")
    return _Parsed(
        where,
        timezone if isinstance(timezone, str) else None,
        {
            name: model
            for name, item in (tiers.items() if isinstance(tiers, dict) else ())
            if isinstance(name, str) and (model := _valid(TierModel, item)) is not None
        },
        [
            (i, route)
            for i, item in enumerate(routes if isinstance(routes, list) else ())
            if (route := _valid(RouteModel, item)) is not None
        ],
        [
            (i, station)
            for i, item in enumerate(stations if isinstance(stations, list) else ())
            if (station := _valid(WorkstationModel, item)) is not None
        ],
    )


def _read(path: Path, problems: list[Problem]) -> tuple[Any, _Parsed | None]:
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(Problem(where, "", f"cannot read file: {exc}"))
        return None, None
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        detail = str(getattr(exc, "problem", None) or exc)
        if "alphabetic or numeric" in detail or "alias" in detail:
            detail += " (quote values that start with '*' or '&', e.g. \"*.example.com\")"
        problems.append(Problem(where, "", f"YAML syntax error{at}: {detail}"))
        return None, None
    if raw is None:
        problems.append(Problem(where, "", "empty policy file"))
        return None, None
    if not isinstance(raw, dict):
        problems.append(Problem(where, "", "the top level must be a mapping of keys"))
        return None, None
    try:
        model = PolicyFileModel.model_validate(raw)
    except ValidationError as exc:
        for error in exc.errors():
            loc = tuple(error["loc"])
            problems.append(Problem(where, key_path(loc), _reason(error) + _named(raw, loc)))
        return raw, _salvage(where, raw)
    return raw, _Parsed(
        where,
        model.timezone,
        dict(model.tiers),
        list(enumerate(model.routes)),
        list(enumerate(model.workstations)),
    )


def _policy_files(directory: Path, problems: list[Problem]) -> list[Path]:
    if not directory.is_dir():
        problems.append(Problem(str(directory), "", "policy directory not found"))
        return []
    try:
        entries = sorted(directory.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        problems.append(Problem(str(directory), "", f"cannot list directory: {exc}"))
        return []
    files = [
        p
        for p in entries
        if p.suffix in (".yaml", ".yml") and not p.name.startswith(".") and p.is_file()
    ]
    if not files:
        problems.append(Problem(str(directory), "", "no policy files (*.yaml, *.yml)"))
    return files


# -- building -------------------------------------------------------------------------


def _timezone(files: list[_Parsed], problems: list[Problem]) -> tzinfo:
    chosen: tuple[str, str] | None = None
    for parsed in files:
        if parsed.timezone is None:
            continue
        if chosen is not None and chosen[1] != parsed.timezone:
            reason = f"{parsed.timezone!r} contradicts {chosen[1]!r} set in {chosen[0]}"
            problems.append(Problem(parsed.where, "timezone", reason))
        elif chosen is None:
            chosen = (parsed.where, parsed.timezone)
    name = chosen[1] if chosen else DEFAULT_TIMEZONE
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(Problem(chosen[0] if chosen else "", "timezone", f"unknown {name!r}"))
        return ZoneInfo(DEFAULT_TIMEZONE)


def _conditions(model: ConditionsModel, tz: tzinfo) -> Conditions:
    return Conditions(
        networks=parse_networks(model.networks) if model.networks is not None else None,
        mfa=model.mfa,
        valid_until=deadline(model.valid_until, tz) if model.valid_until is not None else None,
        windows=tuple(Window.parse(w.days, w.start, w.end) for w in model.windows),
        max_auth_age=model.max_auth_age,
        amr=tuple(model.amr),
        acrs=tuple(model.acrs),
    )


def _route_shape(rm: RouteModel) -> list[tuple[str, str]]:
    """Problems with how a route's keys combine, as (key, reason)."""
    out: list[tuple[str, str]] = []
    if rm.path is not None and rm.glob is not None:
        out.append(("glob", "give either path or glob, not both"))
    if rm.public and rm.allow:
        out.append(("allow", "a public route needs no tiers; remove allow"))
    if not rm.public and not rm.allow:
        out.append(("allow", "list the tiers that may pass (or '*' for any tier), or set public"))
    if "*" in rm.allow and len(rm.allow) > 1:
        out.append(("allow", "'*' must stand alone"))
    c = rm.conditions
    if rm.public and (c.mfa or c.max_auth_age is not None or c.amr or c.acrs):
        out.append(("conditions", "a public route cannot require mfa, amr, acrs or max_auth_age"))
    return out


def _items(raw: Any, section: str) -> list[tuple[int, dict[Any, Any]]]:
    items = raw.get(section) if isinstance(raw, dict) else None
    if not isinstance(items, list):
        return []
    return [(i, item) for i, item in enumerate(items) if isinstance(item, dict)]


def _cross_checks(raws: list[tuple[str, Any]], problems: list[Problem]) -> None:
    """Checks across files, run on the raw data so that a file with other
    problems is still checked: duplicate names and routes naming unknown tiers."""
    tiers: dict[str, str] = {}
    for where, raw in raws:
        section = raw.get("tiers") if isinstance(raw, dict) else None
        for name in section if isinstance(section, dict) else ():
            if name in tiers:
                reason = f"tier {name!r} is already defined in {tiers[name]}"
                problems.append(Problem(where, f"tiers.{name}", reason))
            else:
                tiers[str(name)] = where
    for kind, section in (("route", "routes"), ("workstation", "workstations")):
        seen: dict[str, str] = {}
        for where, raw in raws:
            for i, item in _items(raw, section):
                name = item.get("name")
                if not isinstance(name, str):
                    continue
                if name in seen:
                    reason = f"{kind} {name!r} is already defined in {seen[name]}"
                    problems.append(Problem(where, f"{section}[{i}].name", reason))
                else:
                    seen[name] = where
    for where, raw in raws:
        for i, item in _items(raw, "routes"):
            allow = item.get("allow")
            for j, tier_name in enumerate(allow if isinstance(allow, list) else ()):
                if isinstance(tier_name, str) and tier_name != "*" and tier_name not in tiers:
                    reason = f"unknown tier {tier_name!r}"
                    problems.append(Problem(where, f"routes[{i}].allow[{j}]", reason))


class _Builder:
    """Turns validated files into core objects, collecting what the core refuses."""

    def __init__(self, tz: tzinfo, problems: list[Problem]) -> None:
        self.tz = tz
        self.problems = problems
        self.tiers: list[Tier] = []
        self.routes: list[Route] = []
        self.workstations: list[Workstation] = []

    def add_file(self, parsed: _Parsed) -> None:
        where = parsed.where
        for name, tm in parsed.tiers.items():
            self._build(where, f"tiers.{name}", self.tiers, partial(self._tier, name, tm))
        for i, rm in parsed.routes:
            shape = _route_shape(rm)
            for key, reason in shape:
                detail = f"{reason} (route {rm.name!r})"
                self.problems.append(Problem(where, f"routes[{i}].{key}", detail))
            if not shape:
                self._build(where, f"routes[{i}]", self.routes, partial(self._route, rm))
        for i, wm in parsed.workstations:
            make = partial(self._station, wm)
            self._build(where, f"workstations[{i}]", self.workstations, make)

    def _build(self, where: str, key: str, into: list[Any], make: Callable[[], Any]) -> None:
        try:
            into.append(make())
        except ValueError as exc:
            self.problems.append(Problem(where, key, str(exc)))

    def _tier(self, name: str, tm: TierModel) -> Tier:
        return Tier(
            name=name,
            rank=tm.rank,
            groups=tuple(tm.groups),
            idle=tm.idle,
            absolute=tm.absolute,
            conditions=_conditions(tm.conditions, self.tz),
            description=tm.description,
        )

    def _route(self, rm: RouteModel) -> Route:
        try:
            return Route(
                name=rm.name,
                allow=tuple(rm.allow),
                hosts=tuple(rm.hosts),
                path=rm.path,
                glob=rm.glob,
                methods=tuple(rm.methods),
                public=rm.public,
                passive=rm.passive,
                conditions=_conditions(rm.conditions, self.tz),
                case_sensitive=rm.case_sensitive,
                description=rm.description,
            )
        except ValueError as exc:
            raise ValueError(f"{exc} (route {rm.name!r})") from exc

    def _station(self, wm: WorkstationModel) -> Workstation:
        return Workstation(
            name=wm.name,
            networks=parse_networks(wm.networks),
            idle=wm.idle,
            absolute=wm.absolute,
        )


def load_policies(directory: Path) -> PolicySet:
    """Load every policy file in ``directory``; raise :class:`ConfigError` listing all problems."""
    directory = Path(directory)
    problems: list[Problem] = []
    raws: list[tuple[str, Any]] = []
    files: list[_Parsed] = []
    for path in _policy_files(directory, problems):
        raw, parsed = _read(path, problems)
        raws.append((str(path), raw))
        if parsed is not None:
            files.append(parsed)
    tz = _timezone(files, problems)
    _cross_checks(raws, problems)
    builder = _Builder(tz, problems)
    for parsed in files:
        builder.add_file(parsed)
    if not problems:
        if not builder.tiers:
            problems.append(Problem(str(directory), "tiers", "no tiers defined in any file"))
        if not builder.routes:
            problems.append(Problem(str(directory), "routes", "no routes defined in any file"))
    if problems:
        raise ConfigError(sorted(problems, key=lambda p: p.file))
    try:
        return PolicySet(
            tiers=tuple(builder.tiers),
            routes=tuple(builder.routes),
            workstations=tuple(builder.workstations),
            timezone=tz,
        )
    except ValueError as exc:
        raise ConfigError([Problem(str(directory), "", str(exc))]) from exc


def validate_policies(directory: Path) -> list[Problem]:
    """Every problem with the policy files in ``directory`` (empty list: valid)."""
    try:
        load_policies(directory)
    except ConfigError as exc:
        return list(exc.problems)
    return []
