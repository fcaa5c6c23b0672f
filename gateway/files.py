"""Small file helpers shared by the parts that keep secrets on disk."""

from __future__ import annotations

import os
from pathlib import Path


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
