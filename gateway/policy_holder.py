"""Keeps the policy in force and reloads it when the files change.

A broken policy file never replaces a working policy: the old one stays in
force, the problems go to the audit log, and ``/.sso/readyz`` keeps answering
from the last good set.  A change is loaded only when the files have not changed
between two checks (one interval apart).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from gateway.audit import AuditLog
from gateway.core.errors import ConfigError
from gateway.core.policy import PolicySet
from gateway.policy_loader import load_policies


def _fingerprint(directory: Path) -> tuple[tuple[str, int, int], ...]:
    try:
        entries = sorted(directory.iterdir())
    except OSError:
        return ()
    out = []
    for entry in entries:
        if entry.suffix in (".yaml", ".yml"):
            try:
                st = entry.stat()
            except OSError:
                continue
            out.append((entry.name, st.st_mtime_ns, st.st_size))
    return tuple(out)


class PolicyHolder:
    def __init__(
        self,
        directory: Path,
        audit: AuditLog,
        *,
        clock: Callable[[], float],
        check_interval: float = 2.0,
        initial: PolicySet | None = None,
    ) -> None:
        self.directory = directory
        self._audit = audit
        self._clock = clock
        self._interval = check_interval
        self._lock = threading.Lock()
        self._fingerprint = _fingerprint(directory)
        self._policy = initial if initial is not None else load_policies(directory)
        self._next_check = clock() + check_interval
        self._pending: tuple[tuple[str, int, int], ...] | None = None
        self.last_error: str | None = None

    @property
    def current(self) -> PolicySet:
        """The policy in force; looks for changed files at most every few seconds."""
        if self._interval > 0 and self._clock() >= self._next_check:
            self.maybe_reload(wait_until_stable=True)
        return self._policy

    def maybe_reload(self, *, wait_until_stable: bool = False) -> bool:
        """Load the files if they changed; True if a new policy is in force.
        With ``wait_until_stable`` a change must also have held still since the
        previous check."""
        with self._lock:
            self._next_check = self._clock() + self._interval
            fingerprint = _fingerprint(self.directory)
            if fingerprint == self._fingerprint:
                self._pending = None
                return False
            if wait_until_stable and fingerprint != self._pending:
                # changed since the last look: wait until it holds still for one
                # interval, so a file caught half-written is not loaded
                self._pending = fingerprint
                return False
            self._pending = None
            self._fingerprint = fingerprint
            try:
                policy = load_policies(self.directory)
            except ConfigError as exc:
                self.last_error = str(exc)
                self._audit.emit(
                    "policy_reload_failed",
                    directory=str(self.directory),
                    problems=[str(p) for p in exc.problems],
                    kept="previous policy",
                )
                return False
            self._policy = policy
            self.last_error = None
            self._audit.emit("policy_reloaded", directory=str(self.directory))
            return True
