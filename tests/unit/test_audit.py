"""The audit log: one JSON object per line, and nothing that could be a credential."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.audit import AuditLog

FORBIDDEN = ("password", "token", "cookie", "secret", "jwt", "csrf", "session_id")


def lines_of(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    return tmp_path / "logs" / "audit.log"  # the folder does not exist yet


@pytest.fixture
def file_audit(log_file: Path) -> Iterator[AuditLog]:
    audit = AuditLog(str(log_file))
    yield audit
    audit.close()


def test_file_gets_one_json_object_per_line(file_audit: AuditLog, log_file: Path) -> None:
    before = time.time()
    file_audit.emit("login", user="alice", tier="operator", client_ip="10.20.30.5")
    file_audit.emit("logout", user="alice")
    file_audit.emit("denied", user="bob", route="intercom-admin", status=403)
    after = time.time()

    records = lines_of(log_file)
    assert [r["event"] for r in records] == ["login", "logout", "denied"]
    for record in records:
        assert record["type"] == "audit"
        assert isinstance(record["ts"], float)
        assert before - 1 <= record["ts"] <= after + 1
        assert list(record)[:3] == ["ts", "type", "event"]
    assert records[0]["user"] == "alice"
    assert records[0]["tier"] == "operator"
    assert records[0]["client_ip"] == "10.20.30.5"
    assert records[2]["status"] == 403


def test_emit_returns_the_record_it_wrote(file_audit: AuditLog, log_file: Path) -> None:
    record = file_audit.emit("login", user="alice")
    assert lines_of(log_file) == [record]


def test_forbidden_keys_are_never_written(file_audit: AuditLog, log_file: Path) -> None:
    leaked = {key: f"LEAK-{key}" for key in FORBIDDEN}
    leaked.update({"assertion": "LEAK-assertion", "code": "LEAK-code"})
    upper = {key.upper(): f"LEAK-upper-{key}" for key in FORBIDDEN}
    record = file_audit.emit("login_failed", user="alice", reason="bad-password", **leaked, **upper)

    text = log_file.read_text(encoding="utf-8")
    assert "LEAK" not in text
    assert "LEAK" not in json.dumps(record)
    (written,) = lines_of(log_file)
    assert written["user"] == "alice"
    assert written["reason"] == "bad-password"
    for key in (*FORBIDDEN, "assertion", "code"):
        assert key not in {k.lower() for k in written}


def test_none_values_are_left_out(file_audit: AuditLog, log_file: Path) -> None:
    file_audit.emit("logout", user="alice", tier=None)
    (written,) = lines_of(log_file)
    assert "tier" not in written


def test_tuples_become_lists_and_other_values_are_stringified(
    file_audit: AuditLog, log_file: Path
) -> None:
    record = file_audit.emit(
        "login", groups=("Intercom-Operators", "UC-Users"), path=Path("/srv/policies")
    )
    assert record["groups"] == ["Intercom-Operators", "UC-Users"]
    (written,) = lines_of(log_file)
    assert written["groups"] == ["Intercom-Operators", "UC-Users"]
    assert written["path"] == "/srv/policies"


def test_file_destination_appends(log_file: Path) -> None:
    first = AuditLog(str(log_file))
    first.emit("one")
    first.close()
    second = AuditLog(str(log_file))
    second.emit("two")
    second.close()
    assert [r["event"] for r in lines_of(log_file)] == ["one", "two"]


def test_listeners_get_every_record(file_audit: AuditLog, log_file: Path) -> None:
    seen: list[dict[str, Any]] = []
    also: list[str] = []
    file_audit.add_listener(seen.append)
    file_audit.add_listener(lambda record: also.append(record["event"]))

    returned = file_audit.emit("login", user="alice", password="hunter2hunter2")
    file_audit.emit("logout", user="alice")

    assert [r["event"] for r in seen] == ["login", "logout"]
    assert also == ["login", "logout"]
    assert seen[0] == returned
    assert "password" not in seen[0]  # listeners see the filtered record
    assert seen == lines_of(log_file)


def test_stream_destination() -> None:
    stream = io.StringIO()
    audit = AuditLog(stream=stream)
    audit.emit("policy_reloaded", directory="/etc/sso/policies")
    audit.emit("login", user="carol", token="LEAK")
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [r["event"] for r in records] == ["policy_reloaded", "login"]
    assert "LEAK" not in stream.getvalue()


def test_stdout_and_stderr_destinations(capsys: pytest.CaptureFixture[str]) -> None:
    out = AuditLog("stdout")
    err = AuditLog("stderr")
    out.emit("to_stdout", user="alice")
    err.emit("to_stderr", user="bob")
    captured = capsys.readouterr()
    assert json.loads(captured.out)["event"] == "to_stdout"
    assert json.loads(captured.err)["event"] == "to_stderr"


def test_two_logs_do_not_share_handlers() -> None:
    first_stream, second_stream = io.StringIO(), io.StringIO()
    first = AuditLog(stream=first_stream)
    second = AuditLog(stream=second_stream)
    first.emit("first")
    second.emit("second")
    assert [json.loads(x)["event"] for x in first_stream.getvalue().splitlines()] == ["first"]
    assert [json.loads(x)["event"] for x in second_stream.getvalue().splitlines()] == ["second"]


def test_close_stops_writing(log_file: Path) -> None:
    audit = AuditLog(str(log_file))
    audit.emit("before")
    audit.close()
    audit.emit("after")  # no handler left: dropped, no error
    assert [r["event"] for r in lines_of(log_file)] == ["before"]


def test_audit_limiter_allows_one_line_per_key_per_interval() -> None:
    from gateway.audit import AuditLimiter

    limiter = AuditLimiter(interval=60.0, max_keys=2)
    assert limiter.allow("a", 0.0) is True
    assert limiter.allow("a", 59.0) is False
    assert limiter.allow("b", 59.0) is True
    assert limiter.allow("a", 60.0) is True
    assert limiter.allow("c", 61.0) is True  # bounded: the table starts over when full
