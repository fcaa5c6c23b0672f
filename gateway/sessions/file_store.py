"""The embedded on-disk :class:`~gateway.sessions.store.SessionStore`.

For a single machine without Redis, where several gunicorn worker processes share
one directory::

    <directory>/            0700
      .lock                 fcntl.flock() lock taken by every read-modify-write
      sessions/<h>.json     {"key", "user", "expires", "record"}
      users/<h>.json        {"user", "sessions": {key: expires}}   (per-user index)
      counters/<h>.json     {"key", "expires", "value": int}
      values/<h>.json       {"key", "expires", "value": {...}}
      once/<h>.json         {"key", "expires"}

``<h>`` is the SHA-256 of the caller's key (or user name), so no key, however
hostile, names a file outside the directory; the original key is kept inside the
file.  Every file is written 0600 to a temporary name and renamed into place, so
readers never see half a file and the hot path (``get_session``) takes no lock.
``pop_value`` claims a file by renaming it to a unique name first, which only one
process can win.  Times are wall-clock (``time.time()``) so entries keep their
expiry across restarts.

Expired entries read as absent and are removed lazily (and by
:meth:`FileStore.purge_expired`).  A corrupt file is logged and read as absent,
except a replay marker, which fails closed (``add_once`` answers False).  A
directory that cannot be read or written raises
:class:`~gateway.core.errors.StoreUnavailable`.  Files are not fsync'ed: entries
survive a process restart, not necessarily a power cut (a file torn by one reads
as corrupt, i.e. absent).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from gateway.core.errors import StoreUnavailable

log = logging.getLogger(__name__)

_KINDS = ("sessions", "users", "counters", "values", "once")
# Fields (besides "key" and "expires") each kind of entry must carry, with their types.
_FIELDS: dict[str, tuple[tuple[str, type], ...]] = {
    "sessions": (("user", str), ("record", dict)),
    "counters": (("value", int),),
    "values": (("value", dict),),
    "once": (),
}
_STALE_TEMP = 60.0  # seconds after which a leftover temp/claim file is garbage

_Status = Literal["absent", "corrupt", "expired", "live"]


class _Corrupt(Exception):
    """A file that is not something this store wrote."""


def _file_name(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest() + ".json"


def _check_ttl(ttl: float) -> None:
    if not (math.isfinite(ttl) and ttl > 0):
        raise ValueError(f"ttl must be a positive, finite number of seconds, not {ttl!r}")


def _encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode("ascii")


class FileStore:
    """Sessions, counters and short-lived values as JSON files under ``directory``.

    ``lock_timeout`` bounds how long a writer waits for the directory lock before
    giving up with StoreUnavailable.
    """

    def __init__(self, directory: Path | str, *, lock_timeout: float = 5.0) -> None:
        self._root = Path(directory)
        self._lock_timeout = lock_timeout
        self._thread_lock = threading.Lock()
        self._ensure_dirs()

    # -- sessions ---------------------------------------------------------------
    def put_session(self, key: str, record: dict[str, Any], ttl: float, user: str) -> None:
        _check_ttl(ttl)
        _encode(record)  # refuse what cannot be stored before touching anything
        with self._locked():
            old, _ = self._load("sessions", key)
            expires = time.time() + ttl
            # Index first: a crash in between leaves a dangling index entry (harmless),
            # never a session that revoke-all cannot find.
            self._index_update(user, add=(key, expires))
            doc = {"key": key, "user": user, "expires": expires, "record": record}
            self._write(self._path("sessions", key), _encode(doc))
            if old is not None and old["user"] != user:
                self._index_update(old["user"], remove=key)

    def get_session(self, key: str) -> dict[str, Any] | None:
        doc, status = self._load("sessions", key)
        if status == "live" and doc is not None:
            record: dict[str, Any] = doc["record"]
            return record
        if status != "absent":
            self._discard("sessions", key)
        return None

    def touch_session(self, key: str, record: dict[str, Any], ttl: float, user: str) -> bool:
        del user  # the stored user is authoritative here
        _check_ttl(ttl)
        _encode(record)
        with self._locked():
            old, status = self._load("sessions", key)
            if status != "live" or old is None:
                return False  # never resurrect a session deleted or expired meanwhile
            user, expires = old["user"], time.time() + ttl
            self._index_update(user, add=(key, expires))
            doc = {"key": key, "user": user, "expires": expires, "record": record}
            self._write(self._path("sessions", key), _encode(doc))
        return True

    def delete_session(self, key: str) -> dict[str, Any] | None:
        with self._locked():
            doc, status = self._load("sessions", key)
            if status == "absent":
                return None
            self._unlink(self._path("sessions", key))
            if doc is not None:
                self._index_update(doc["user"], remove=key)
        if status == "live" and doc is not None:
            record: dict[str, Any] = doc["record"]
            return record
        return None

    def user_sessions(self, user: str) -> list[str]:
        now = time.time()
        try:
            entries = self._index_entries(user)
        except _Corrupt as exc:
            log.warning("session store: rebuilding corrupt user index: %s", exc)
            entries = None
        if entries is None or any(exp <= now for exp in entries.values()):
            with self._locked():
                entries = self._index_update(user)
        live = sorted((exp, key) for key, exp in entries.items() if exp > now)
        return [key for _, key in live]

    def iter_sessions(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for path in self._entry_files("sessions"):
            try:
                doc = self._entry("sessions", path, None)
            except _Corrupt as exc:
                log.warning("session store: skipping corrupt session file %s: %s", path, exc)
                continue
            if doc is not None and doc["expires"] > time.time():
                yield doc["key"], doc["record"]

    # -- counters ---------------------------------------------------------------
    def incr(self, key: str, window: float) -> int:
        _check_ttl(window)
        path = self._path("counters", key)
        with self._locked():
            doc, status = self._load("counters", key)
            if status == "live" and doc is not None:
                value, expires = doc["value"] + 1, doc["expires"]
            else:
                value, expires = 1, time.time() + window
            self._write(path, _encode({"key": key, "expires": expires, "value": value}))
        return int(value)

    def get_counter(self, key: str) -> int:
        doc, status = self._load("counters", key)
        if status == "live" and doc is not None:
            return int(doc["value"])
        if status != "absent":
            self._discard("counters", key)
        return 0

    def reset_counter(self, key: str) -> None:
        with self._locked():
            self._unlink(self._path("counters", key))

    # -- short-lived values -----------------------------------------------------
    def put_value(self, key: str, value: dict[str, Any], ttl: float) -> None:
        _check_ttl(ttl)
        _encode(value)
        with self._locked():
            doc = {"key": key, "expires": time.time() + ttl, "value": value}
            self._write(self._path("values", key), _encode(doc))

    def pop_value(self, key: str) -> dict[str, Any] | None:
        path = self._path("values", key)
        claim = path.with_name(f".pop-{secrets.token_hex(8)}")
        try:
            os.rename(path, claim)  # atomic: exactly one process wins the file
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._unavailable("claim a value", exc) from exc
        try:
            doc = self._entry("values", claim, key)
        except _Corrupt as exc:
            log.warning("session store: dropping corrupt value file %s: %s", path, exc)
            doc = None
        finally:
            self._unlink(claim)
        if doc is None or doc["expires"] <= time.time():
            return None
        value: dict[str, Any] = doc["value"]
        return value

    def add_once(self, key: str, ttl: float) -> bool:
        _check_ttl(ttl)
        with self._locked():
            _, status = self._load("once", key)
            if status == "live":
                return False
            doc = {"key": key, "expires": time.time() + ttl}
            self._write(self._path("once", key), _encode(doc))
        # A corrupt marker may hide a key already seen: fail closed, keep the new one.
        return status != "corrupt"

    # -- health and housekeeping -------------------------------------------------
    def ping(self) -> None:
        """Check that every sub-directory can be written (recreating missing ones)."""
        self._ensure_dirs()
        for directory in (self._root, *(self._root / kind for kind in _KINDS)):
            probe = directory / f".ping-{secrets.token_hex(8)}"
            try:
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
                os.close(os.open(probe, flags, 0o600))
                os.unlink(probe)
            except OSError as exc:
                raise self._unavailable("write a probe file", exc) from exc

    def close(self) -> None:
        """Nothing to release: no file stays open between calls."""

    def purge_expired(self) -> int:
        """Remove expired and corrupt entries, prune user indexes and drop leftover
        temporary files; return how many entries were removed."""
        removed = 0
        for kind in ("sessions", "counters", "values", "once"):
            for path in self._entry_files(kind, temp_too=True):
                if path.name.startswith("."):
                    self._drop_stale_temp(path)
                elif path.suffix == ".json" and self._dead(kind, path):
                    with self._locked():
                        if self._dead(kind, path):
                            removed += self._remove_file(kind, path)
        for path in self._entry_files("users"):
            try:
                doc = self._read(path)
            except _Corrupt:
                continue  # rebuilt from the sessions by the next user_sessions() call
            user = doc.get("user") if doc else None
            if isinstance(user, str) and path.name == _file_name(user):
                self.user_sessions(user)  # prunes and rewrites (or removes) the index
        return removed

    # -- entries -----------------------------------------------------------------
    def _path(self, kind: str, key: str) -> Path:
        return self._root / kind / _file_name(key)

    def _entry(self, kind: str, path: Path, key: str | None) -> dict[str, Any] | None:
        """The entry stored at ``path`` (None when absent); _Corrupt when malformed.
        With ``key`` None the file name must match the key recorded inside."""
        doc = self._read(path)
        if doc is None:
            return None
        stored = doc.get("key")
        if not isinstance(stored, str) or not isinstance(doc.get("expires"), int | float):
            raise _Corrupt("no key or expiry")
        if (stored != key) if key is not None else (path.name != _file_name(stored)):
            raise _Corrupt("the file belongs to another key")
        for field, kind_type in _FIELDS[kind]:
            if not isinstance(doc.get(field), kind_type):
                raise _Corrupt(f"{field!r} missing or of the wrong type")
        return doc

    def _load(self, kind: str, key: str) -> tuple[dict[str, Any] | None, _Status]:
        path = self._path(kind, key)
        try:
            doc = self._entry(kind, path, key)
        except _Corrupt as exc:
            log.warning("session store: treating corrupt %s file %s as absent: %s", kind, path, exc)
            return None, "corrupt"
        if doc is None:
            return None, "absent"
        return doc, "live" if doc["expires"] > time.time() else "expired"

    def _discard(self, kind: str, key: str) -> None:
        """Lazily remove a dead (expired or corrupt) entry, re-checked under the lock."""
        with self._locked():
            doc, status = self._load(kind, key)
            if status in ("expired", "corrupt"):
                self._unlink(self._path(kind, key))
                if kind == "sessions" and doc is not None:
                    self._index_update(doc["user"], remove=key)

    def _dead(self, kind: str, path: Path) -> bool:
        try:
            doc = self._entry(kind, path, None)
        except _Corrupt:
            return True
        return doc is not None and doc["expires"] <= time.time()

    def _remove_file(self, kind: str, path: Path) -> int:
        """Remove the (lock-holder checked) dead entry at ``path``; 1 when removed."""
        try:
            doc = self._entry(kind, path, None)
        except _Corrupt as exc:
            log.warning("session store: removing corrupt %s file %s: %s", kind, path, exc)
            doc = None
        self._unlink(path)
        if kind == "sessions" and doc is not None:
            self._index_update(doc["user"], remove=doc["key"])
        return 1

    # -- the per-user index (mutations only with the lock held) -----------------------
    def _index_entries(self, user: str) -> dict[str, float] | None:
        """{key: expires} from the user's index file ({} when none); _Corrupt if bad."""
        doc = self._read(self._path("users", user))
        if doc is None:
            return {}
        sessions = doc.get("sessions")
        if doc.get("user") != user or not isinstance(sessions, dict):
            raise _Corrupt("not an index of this user")
        if not all(isinstance(exp, int | float) for exp in sessions.values()):
            raise _Corrupt("an expiry is not a number")
        entries: dict[str, float] = sessions
        return entries

    def _index_update(
        self, user: str, *, add: tuple[str, float] | None = None, remove: str | None = None
    ) -> dict[str, float]:
        """Prune, add to and remove from the index of ``user``; return what is live."""
        try:
            stored = self._index_entries(user)
        except _Corrupt as exc:
            log.warning("session store: rebuilding corrupt user index: %s", exc)
            stored = None
        if stored is None:
            stored = self._rebuild_index(user)
            changed = True
        else:
            changed = False
        now = time.time()
        entries = {key: exp for key, exp in stored.items() if exp > now}
        changed = changed or len(entries) != len(stored)
        if add is not None:
            entries[add[0]] = add[1]
            changed = True
        if remove is not None and entries.pop(remove, None) is not None:
            changed = True
        path = self._path("users", user)
        if not entries:
            self._unlink(path)
        elif changed:
            self._write(path, _encode({"user": user, "sessions": entries}))
        return entries

    def _rebuild_index(self, user: str) -> dict[str, float]:
        entries: dict[str, float] = {}
        for path in self._entry_files("sessions"):
            try:
                doc = self._entry("sessions", path, None)
            except _Corrupt:
                continue
            if doc is not None and doc["user"] == user:
                entries[doc["key"]] = doc["expires"]
        return entries

    # -- files and locking ------------------------------------------------------
    def _ensure_dirs(self) -> None:
        try:
            self._root.mkdir(mode=0o700, parents=True, exist_ok=True)
            if self._root.stat().st_mode & 0o077:
                log.warning("session store: tightening permissions of %s to 0700", self._root)
                os.chmod(self._root, 0o700)
            for kind in _KINDS:
                (self._root / kind).mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise self._unavailable("prepare the directory", exc) from exc

    def _unavailable(self, action: str, exc: OSError) -> StoreUnavailable:
        return StoreUnavailable(f"file session store {self._root}: cannot {action}: {exc}")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive access across threads (a thread lock) and processes (flock)."""
        deadline = time.monotonic() + self._lock_timeout
        if not self._thread_lock.acquire(timeout=self._lock_timeout):
            raise StoreUnavailable(f"file session store {self._root}: lock timed out")
        try:
            fd = self._open_lock_file()
            try:
                delay = 0.0005
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            raise StoreUnavailable(
                                f"file session store {self._root}: lock timed out"
                            ) from None
                        time.sleep(delay)
                        delay = min(delay * 2, 0.01)
                    except OSError as exc:
                        raise self._unavailable("lock", exc) from exc
                yield
            finally:
                os.close(fd)  # releases the flock
        finally:
            self._thread_lock.release()

    def _open_lock_file(self) -> int:
        path = self._root / ".lock"
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            return os.open(path, flags, 0o600)
        except FileNotFoundError:
            self._ensure_dirs()
        try:
            return os.open(path, flags, 0o600)
        except OSError as exc:
            raise self._unavailable("open the lock file", exc) from exc

    def _read(self, path: Path) -> dict[str, Any] | None:
        """The JSON object in ``path``; None when absent; _Corrupt when not one."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _Corrupt("a symbolic link") from exc
            raise self._unavailable("read", exc) from exc
        try:
            with os.fdopen(fd, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise self._unavailable("read", exc) from exc
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise _Corrupt(f"not JSON ({exc})") from exc
        if not isinstance(doc, dict):
            raise _Corrupt("not a JSON object")
        return doc

    def _write(self, path: Path, data: bytes) -> None:
        """Atomically replace ``path`` (0600) with ``data``."""
        for attempt in (1, 2):
            temp = path.with_name(f".tmp-{secrets.token_hex(8)}")
            try:
                fd = os.open(
                    temp,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
                    0o600,
                )
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                finally:
                    os.close(fd)
                os.replace(temp, path)
                return
            except FileNotFoundError as exc:
                if attempt == 2:
                    raise self._unavailable("write", exc) from exc
                self._ensure_dirs()  # someone removed a sub-directory: recreate it once
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                raise self._unavailable("write", exc) from exc

    def _unlink(self, path: Path) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise self._unavailable("remove a file", exc) from exc

    def _entry_files(self, kind: str, *, temp_too: bool = False) -> list[Path]:
        directory = self._root / kind
        try:
            names = os.listdir(directory)
        except OSError as exc:
            raise self._unavailable(f"list {kind}", exc) from exc
        return [
            directory / name
            for name in names
            if temp_too or (not name.startswith(".") and name.endswith(".json"))
        ]

    def _drop_stale_temp(self, path: Path) -> None:
        try:
            if time.time() - path.stat().st_mtime > _STALE_TEMP:
                path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise self._unavailable("remove a temporary file", exc) from exc
