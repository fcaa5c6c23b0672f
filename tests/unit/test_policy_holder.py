"""PolicyHolder: picks up changed policy files, and never lets a broken one replace a good one."""

from __future__ import annotations

import io
import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.audit import AuditLog
from gateway.core.errors import ConfigError
from gateway.core.model import Identity, Outcome, RequestInfo
from gateway.core.policy import PolicySet
from gateway.policy_holder import PolicyHolder
from gateway.policy_loader import load_policies

SHIPPED = Path(__file__).resolve().parents[2] / "policies"
INTERVAL = 2.0
WHEN = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # a Monday
ALICE = Identity(subject="alice", provider="local", groups=("Intercom-Operators",))
DOORS = RequestInfo(
    host="intercom.site-a.example", path="/doors/", method="GET", client_ip="127.0.0.1"
)
OPERATORS_ON_DOORS = "    path: /doors/\n    allow: [operator, supervisor, admin]\n"
NO_OPERATORS_ON_DOORS = "    path: /doors/\n    allow: [supervisor, admin]\n"


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Events:
    """An AuditLog writing to memory, and the events it wrote."""

    def __init__(self) -> None:
        self.stream = io.StringIO()
        self.log = AuditLog(stream=self.stream)

    def all(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]

    def names(self) -> list[str]:
        return [record["event"] for record in self.all()]


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(SHIPPED, target)
    return target


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def holder(policy_dir: Path, events: Events, clock: FakeClock) -> PolicyHolder:
    return PolicyHolder(policy_dir, events.log, clock=clock, check_interval=INTERVAL)


def rewrite(path: Path, text: str) -> None:
    """Write new content and move the mtime on, so the change is seen whatever the
    file system's timestamp granularity."""
    old = path.stat().st_mtime_ns
    path.write_text(text, encoding="utf-8")
    bumped = max(path.stat().st_mtime_ns, old + 1_000_000_000)
    os.utime(path, ns=(bumped, bumped))


def settle(holder: PolicyHolder, clock: FakeClock) -> None:
    """Two checks one interval apart: a change is loaded once it held still."""
    clock.advance(INTERVAL)
    assert holder.current is not None
    clock.advance(INTERVAL)


def alice_on_doors(policy: PolicySet) -> Outcome:
    return policy.evaluate(ALICE, DOORS, WHEN).outcome


def test_initial_load(holder: PolicyHolder, policy_dir: Path, events: Events) -> None:
    policy = holder.current
    assert isinstance(policy, PolicySet)
    assert alice_on_doors(policy) is Outcome.ALLOW
    assert holder.last_error is None
    assert holder.directory == policy_dir
    assert events.names() == []


def test_initial_policy_can_be_given(policy_dir: Path, events: Events, clock: FakeClock) -> None:
    given = load_policies(policy_dir)
    holder = PolicyHolder(policy_dir, events.log, clock=clock, initial=given)
    assert holder.current is given


def test_a_broken_folder_at_start_is_an_error(tmp_path: Path, events: Events) -> None:
    broken = tmp_path / "policies"
    broken.mkdir()
    (broken / "00-site.yaml").write_text("tiers: [\n", encoding="utf-8")
    with pytest.raises(ConfigError):
        PolicyHolder(broken, events.log, clock=FakeClock())


def test_a_change_is_picked_up_after_the_check_interval(
    holder: PolicyHolder, policy_dir: Path, events: Events, clock: FakeClock
) -> None:
    before = holder.current
    intercom = policy_dir / "10-intercom.yaml"
    text = intercom.read_text(encoding="utf-8")
    assert OPERATORS_ON_DOORS in text
    rewrite(intercom, text.replace(OPERATORS_ON_DOORS, NO_OPERATORS_ON_DOORS))

    clock.advance(INTERVAL / 2)
    assert holder.current is before  # not looked at yet
    assert events.names() == []

    clock.advance(INTERVAL / 2)
    assert holder.current is before  # seen, but it must hold still for one interval
    assert events.names() == []

    clock.advance(INTERVAL)
    after = holder.current
    assert after is not before
    assert alice_on_doors(after) is Outcome.DENY
    assert holder.last_error is None
    assert events.names() == ["policy_reloaded"]
    assert events.all()[0]["directory"] == str(policy_dir)

    clock.advance(INTERVAL)
    assert holder.current is after  # nothing changed since: no reload
    assert events.names() == ["policy_reloaded"]


def test_a_new_file_is_picked_up(holder: PolicyHolder, policy_dir: Path, clock: FakeClock) -> None:
    door_site = RequestInfo(host="door.example", path="/x", method="GET", client_ip="127.0.0.1")
    assert holder.current.evaluate(ALICE, door_site, WHEN).outcome is not Outcome.ALLOW
    (policy_dir / "30-door.yaml").write_text(
        "routes:\n  - name: door\n    hosts: [door.example]\n    path: /\n    allow: [operator]\n",
        encoding="utf-8",
    )
    settle(holder, clock)
    assert holder.current.evaluate(ALICE, door_site, WHEN).outcome is Outcome.ALLOW


def test_other_files_in_the_folder_do_not_trigger_a_reload(
    holder: PolicyHolder, policy_dir: Path, events: Events, clock: FakeClock
) -> None:
    before = holder.current
    (policy_dir / "README.txt").write_text("notes", encoding="utf-8")
    clock.advance(INTERVAL)
    assert holder.current is before
    assert holder.maybe_reload() is False
    assert events.names() == []


def test_a_broken_file_keeps_the_old_policy_in_force(
    holder: PolicyHolder, policy_dir: Path, events: Events, clock: FakeClock
) -> None:
    good = holder.current
    intercom = policy_dir / "10-intercom.yaml"
    original = intercom.read_text(encoding="utf-8")
    rewrite(intercom, original.replace("allow: [admin]", "allow: [ghost-tier]", 1))

    settle(holder, clock)
    assert holder.current is good
    assert alice_on_doors(holder.current) is Outcome.ALLOW
    assert holder.last_error is not None
    assert "10-intercom.yaml" in holder.last_error
    assert "ghost-tier" in holder.last_error

    (failed,) = events.all()
    assert failed["event"] == "policy_reload_failed"
    assert failed["directory"] == str(policy_dir)
    assert failed["kept"] == "previous policy"
    assert any("10-intercom.yaml" in p and "ghost-tier" in p for p in failed["problems"])

    # the same broken files are not re-parsed (nor re-reported) on every check
    settle(holder, clock)
    assert holder.current is good
    assert events.names() == ["policy_reload_failed"]

    # fixing the file reloads and clears the error
    rewrite(intercom, original.replace(OPERATORS_ON_DOORS, NO_OPERATORS_ON_DOORS))
    settle(holder, clock)
    fixed = holder.current
    assert fixed is not good
    assert alice_on_doors(fixed) is Outcome.DENY
    assert holder.last_error is None
    assert events.names() == ["policy_reload_failed", "policy_reloaded"]


def test_a_yaml_syntax_error_keeps_the_old_policy(
    holder: PolicyHolder, policy_dir: Path, events: Events, clock: FakeClock
) -> None:
    good = holder.current
    site = policy_dir / "00-site.yaml"
    original = site.read_text(encoding="utf-8")
    rewrite(site, original + "\nroutes: [\n")
    settle(holder, clock)
    assert holder.current is good
    assert holder.last_error is not None
    assert events.names() == ["policy_reload_failed"]

    rewrite(site, original)
    settle(holder, clock)
    assert holder.current is not good
    assert holder.last_error is None
    assert events.names() == ["policy_reload_failed", "policy_reloaded"]


def test_removing_every_file_keeps_the_old_policy(
    holder: PolicyHolder, policy_dir: Path, events: Events, clock: FakeClock
) -> None:
    good = holder.current
    for path in policy_dir.glob("*.yaml"):
        path.unlink()
    settle(holder, clock)
    assert holder.current is good
    assert holder.last_error is not None
    assert events.names() == ["policy_reload_failed"]


def test_removing_the_folder_keeps_the_old_policy(
    holder: PolicyHolder, policy_dir: Path, events: Events, clock: FakeClock
) -> None:
    good = holder.current
    shutil.rmtree(policy_dir)
    settle(holder, clock)
    assert holder.current is good
    assert holder.last_error is not None
    assert events.names() == ["policy_reload_failed"]


def test_maybe_reload_checks_at_once(
    holder: PolicyHolder, policy_dir: Path, clock: FakeClock
) -> None:
    intercom = policy_dir / "10-intercom.yaml"
    text = intercom.read_text(encoding="utf-8")
    rewrite(intercom, text.replace(OPERATORS_ON_DOORS, NO_OPERATORS_ON_DOORS))
    assert holder.maybe_reload() is True  # no need to wait for the interval
    assert alice_on_doors(holder.current) is Outcome.DENY
    assert holder.maybe_reload() is False


def test_a_zero_interval_never_checks_on_its_own(
    policy_dir: Path, events: Events, clock: FakeClock
) -> None:
    holder = PolicyHolder(policy_dir, events.log, clock=clock, check_interval=0)
    before = holder.current
    intercom = policy_dir / "10-intercom.yaml"
    text = intercom.read_text(encoding="utf-8")
    rewrite(intercom, text.replace(OPERATORS_ON_DOORS, NO_OPERATORS_ON_DOORS))
    clock.advance(3600)
    assert holder.current is before
    assert holder.maybe_reload() is True
    assert holder.current is not before


def test_a_file_caught_mid_write_is_not_loaded(
    holder: PolicyHolder, policy_dir: Path, events: Events, clock: FakeClock
) -> None:
    """A check that sees a file still changing waits for it to hold still."""
    good = holder.current
    intercom = policy_dir / "10-intercom.yaml"
    text = intercom.read_text(encoding="utf-8")
    # a half-written file that happens to validate: the door-open route without
    # its network condition
    half = text.split("    conditions:\n      networks:")[0] + "\n"
    rewrite(intercom, half)
    clock.advance(INTERVAL)
    assert holder.current is good  # seen once: not loaded
    rewrite(intercom, text)  # the writer finishes: back to the full file
    clock.advance(INTERVAL)
    assert holder.current is good  # changed again since: still waiting
    clock.advance(INTERVAL)
    final = holder.current  # held still: loaded, and it is the complete file
    assert events.names() == ["policy_reloaded"]
    door_open = next(r for r in final.routes if r.name == "intercom-door-open")
    assert door_open.conditions.networks
