"""Small file helpers: secrets kept on disk, and where a log writes."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TextIO

STANDARD_STREAMS = ("stdout", "stderr")


def open_destination(destination: str) -> tuple[TextIO, bool]:
    """The stream a log ``destination`` names (``stdout``, ``stderr`` or a file
    path, appended to, its folder created) and whether the caller owns it (a
    file: close it when done; the standard streams are left open)."""
    if destination == "stdout":
        return sys.stdout, False
    if destination == "stderr":
        return sys.stderr, False
    path = Path(destination)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("a", encoding="utf-8"), True


def create_secret_file(path: Path, content: str) -> None:
    """Write ``content`` to ``path`` with mode 0600, unless the file exists.

    Several gunicorn workers may start at once: each writes a private temporary
    file and links it into place; the first link wins and the others keep it,
    so every worker ends up reading the same secret.
    """
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
